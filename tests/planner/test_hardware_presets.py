"""The device and cluster presets: every file loads, is sourced, and is physically plausible."""

from __future__ import annotations

import math
import re
import tomllib
from importlib import resources

import pytest

from planner.errors import SpecError
from planner.hardware import ClusterSpec, Topology
from planner.model import DType
from planner.presets import list_presets, load_cluster, load_device

GiB = 2**30

REQUIRED_DEVICES = {
    "v100-sxm2-32gb", "a100-sxm4-40gb", "a100-sxm4-80gb", "h100-sxm5-80gb", "h200", "b200",
    "gb200", "b300", "gb300", "mi300x", "mi325x", "mi355x", "tpu-v3", "tpu-v4", "tpu-v5p",
    "tpu-v5e", "tpu-v6e", "tpu7x", "h800-sxm5-80gb", "a800-sxm4-80gb", "mi250x-gcd",
}
REQUIRED_CLUSTERS = {
    "dgx-a100", "dgx-h100", "dgx-h200", "dgx-b200", "gb200-nvl72", "dgx-b300", "gb300-nvl72",
    "dgx2-v100", "v100x4", "mi300x-platform", "mi325x-platform", "mi355x-platform",
    "tpu-v3-pod", "tpu-v4-pod", "tpu-v5p-pod", "tpu-v5e-pod", "tpu-v6e-pod", "tpu7x-pod", "hgx-h800", "hgx-a800",
    "frontier-mi250x",
}
FP8_DEVICES = {"h100-sxm5-80gb", "h800-sxm5-80gb", "h200", "b200", "gb200", "b300", "gb300", "mi300x", "mi325x",
               "mi355x", "tpu-v5p", "tpu7x"}

UNPUBLISHED_POWER = {"tpu-v5p", "tpu-v5e", "tpu-v6e", "tpu7x",
                     "mi250x-gcd"}   # the board power is the package's, two GCDs (devices)
UNPUBLISHED_CACHE = {"tpu-v5p", "tpu-v6e", "tpu7x"}

DEVICES = list_presets("device")
CLUSTERS = list_presets("cluster")


def _raw(kind: str, name: str) -> str:
    path = resources.files("planner") / "presets" / f"{kind}s" / f"{name}.toml"
    return path.read_text(encoding="utf-8")


def test_required_presets_exist() -> None:
    assert REQUIRED_DEVICES <= set(DEVICES), REQUIRED_DEVICES - set(DEVICES)
    assert REQUIRED_CLUSTERS <= set(CLUSTERS), REQUIRED_CLUSTERS - set(CLUSTERS)


@pytest.mark.parametrize("kind,name", [("device", n) for n in DEVICES]
                         + [("cluster", n) for n in CLUSTERS])
def test_every_number_is_sourced(kind: str, name: str) -> None:
    """Each file has `description` and `source`, and every numeric line a `# source:` comment."""
    text = _raw(kind, name)
    data = tomllib.loads(text)
    assert data.get("description", "").strip(), f"{name}: empty description"
    assert data.get("source", "").strip(), f"{name}: empty source"
    numeric = re.compile(r"^\s*[A-Za-z0-9_]+\s*=\s*[\[\d+\-.]")
    for line in text.splitlines():
        if numeric.match(line):
            assert "# source:" in line, f"{kind} preset '{name}': unsourced number: {line!r}"


@pytest.mark.parametrize("name", DEVICES)
def test_device_loads_and_is_plausible(name: str) -> None:
    d = load_device(name)
    assert d.name == name
    assert d.source.strip() and d.description.strip()
    assert 50e12 <= d.peak_flops(DType.BF16) <= 1e16
    assert 8 * GiB <= d.memory_bytes <= 512 * GiB
    assert 100e9 <= d.memory_bandwidth_bytes_per_s <= 2e13
    # Google publishes neither figure for its newest TPUs; every other vendor does
    if d.onchip_cache_bytes is not None or name not in UNPUBLISHED_CACHE:
        assert 1 * 2**20 <= d.onchip_cache_bytes <= 1 * GiB
    if d.power_w is not None or name not in UNPUBLISHED_POWER:
        assert 100 <= d.power_w <= 2000
    t = d.peak_flops_per_s
    # Lower precision is never slower where both are listed.
    for slow, fast in [(DType.FP32, DType.TF32), (DType.TF32, DType.BF16), (DType.BF16, DType.FP8),
                       (DType.FP32, DType.BF16), (DType.FP32, DType.FP16)]:
        if slow in t and fast in t:
            assert t[slow] <= t[fast], f"{name}: {slow.value} faster than {fast.value}"
    assert (DType.FP8 in t) == (name in FP8_DEVICES), f"{name}: fp8 only where fp8 tensor cores exist"


def test_v100_falls_back_to_fp16_tensor_cores() -> None:
    v100 = load_device("v100-sxm2-32gb")
    assert DType.BF16 not in v100.peak_flops_per_s
    assert DType.TF32 not in v100.peak_flops_per_s
    assert v100.peak_flops(DType.BF16) == v100.peak_flops_per_s[DType.FP16] == 125e12
    assert v100.peak_flops(DType.FP8) == 125e12
    assert v100.peak_flops(DType.TF32) == v100.peak_flops_per_s[DType.FP32] == 15.7e12


def test_known_datasheet_values() -> None:
    """A few headline numbers, so a typo in a preset cannot pass the range checks unnoticed."""
    assert load_device("a100-sxm4-80gb").peak_flops(DType.BF16) == 312e12
    assert load_device("a100-sxm4-80gb").memory_bytes == 80 * GiB
    assert load_device("h100-sxm5-80gb").peak_flops(DType.BF16) == pytest.approx(989e12, rel=1e-3)
    assert load_device("h100-sxm5-80gb").peak_flops(DType.FP8) == pytest.approx(1979e12, rel=1e-3)
    h100, h200 = load_device("h100-sxm5-80gb"), load_device("h200")
    assert h200.peak_flops_per_s == h100.peak_flops_per_s
    assert h200.memory_bandwidth_bytes_per_s > h100.memory_bandwidth_bytes_per_s
    assert load_device("tpu-v4").peak_flops(DType.BF16) == 275e12
    tpu7x = load_device("tpu7x")    # Ironwood: fp8 at twice bf16, 192 GiB per chip
    assert tpu7x.peak_flops(DType.FP8) == 2 * tpu7x.peak_flops(DType.BF16) == 4614e12
    assert tpu7x.memory_bytes == 192 * GiB
    assert load_device("tpu-v3").peak_flops(DType.FP16) == 123e12  # fp16 falls back to bf16
    # AMD: 2100 MHz x 304 CUs x 2048 (CDNA 3), 2400 MHz x 256 CUs x 4096 (CDNA 4) per clock
    assert load_device("mi300x").peak_flops(DType.BF16) == pytest.approx(2100e6 * 304 * 2048, rel=1e-4)
    assert load_device("mi355x").peak_flops(DType.BF16) == pytest.approx(2400e6 * 256 * 4096, rel=1e-4)
    assert load_device("mi355x").peak_flops(DType.TF32) == load_device("mi355x").peak_flops(DType.FP32)
    # MI250X, one GCD: 1700 MHz x 110 CUs x 1024 bf16 FLOPs per clock (CDNA 2), half the package
    gcd = load_device("mi250x-gcd")
    assert gcd.peak_flops(DType.BF16) == pytest.approx(1700e6 * 110 * 1024, rel=1e-3)
    assert 2 * gcd.peak_flops(DType.BF16) == pytest.approx(383.0e12, rel=1e-3)
    assert gcd.peak_flops(DType.FP8) == gcd.peak_flops(DType.BF16)     # no fp8 units
    assert gcd.memory_bytes == 64 * GiB


@pytest.mark.parametrize(("export", "full", "export_node", "full_node"), [
    ("h800-sxm5-80gb", "h100-sxm5-80gb", "hgx-h800", "dgx-h100"),
    ("a800-sxm4-80gb", "a100-sxm4-80gb", "hgx-a800", "dgx-a100"),
])
def test_export_parts_differ_from_their_silicon_only_in_nvlink(export: str, full: str,
                                                               export_node: str,
                                                               full_node: str) -> None:
    """H800 and A800 are the H100 SXM5 and A100 80GB dies with NVLink cut to 400 GB/s
    (bidirectional): same math, memory, cache and power; 200 GB/s per direction in the node."""
    a, b = load_device(export), load_device(full)
    assert a.peak_flops_per_s == b.peak_flops_per_s
    for field in ("memory_bytes", "memory_bandwidth_bytes_per_s", "onchip_cache_bytes",
                  "onchip_cache_bandwidth_bytes_per_s", "power_w"):
        assert getattr(a, field) == getattr(b, field), field
    from cost_models.efficiency import device_efficiency
    assert device_efficiency(a) == device_efficiency(b)    # same silicon, same fractions
    node, full_cluster = load_cluster(export_node), load_cluster(full_node)
    assert node.intra_node.bandwidth_bytes_per_s == 200e9
    assert node.intra_node.bandwidth_bytes_per_s < full_cluster.intra_node.bandwidth_bytes_per_s
    assert node.inter_node.bandwidth_bytes_per_s == full_cluster.inter_node.bandwidth_bytes_per_s
    assert node.devices_per_node == full_cluster.devices_per_node == 8


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_loads_and_is_plausible(name: str) -> None:
    c = load_cluster(name)
    assert c.name == name
    assert c.source.strip() and c.description.strip()
    assert c.device.name in DEVICES
    for link in (c.intra_node, c.inter_node):
        assert 1e9 <= link.bandwidth_bytes_per_s <= 2e12, f"{name}: {link.name}"
        assert 0 < link.latency_s < 1e-3, f"{name}: {link.name}"
    assert c.intra_node.bandwidth_bytes_per_s >= c.inter_node.bandwidth_bytes_per_s
    assert c.intra_node.latency_s <= c.inter_node.latency_s
    assert c.devices_for(nodes=1) == c.devices_per_node


@pytest.mark.parametrize("name", CLUSTERS)
def test_torus_shapes_match_the_node(name: str) -> None:
    c = load_cluster(name)
    for link in (c.intra_node, c.inter_node):
        if link.topology in (Topology.TORUS_2D, Topology.TORUS_3D):
            assert link.torus_dims is not None, f"{name}: torus without torus_dims"
            if link is c.intra_node:
                assert math.prod(link.torus_dims) == c.devices_per_node
        else:
            assert link.torus_dims is None


def test_tpu_pods_are_tori() -> None:
    v3, v4 = load_cluster("tpu-v3-pod"), load_cluster("tpu-v4-pod")
    assert v3.intra_node.topology is Topology.TORUS_2D and v3.intra_node.torus_dims == (32, 32)
    assert v4.intra_node.topology is Topology.TORUS_3D
    assert v4.intra_node.torus_dims == (16, 16, 16)
    assert load_cluster("gb200-nvl72").devices_per_node == 72
    assert load_cluster("gb200-nvl72").max_nodes is None


def test_devices_for_nodes_multiplies() -> None:
    c = load_cluster("dgx-a100")
    assert c.devices_for(nodes=1) == 8
    assert c.devices_for(nodes=3) == 24
    assert load_cluster("v100x4").devices_for(nodes=4) == 16
    assert load_cluster("tpu-v3-pod").devices_for(nodes=4) == 4096  # Gopher: 4 pods


def test_devices_for_gpus() -> None:
    c = load_cluster("dgx-a100")
    assert c.devices_for(gpus=16) == 16
    assert c.devices_for(gpus=4) == 4  # part of one node is allowed
    assert c.devices_for(gpus=1) == 1
    assert load_cluster("dgx-h100").devices_for(gpus=16) == 16  # seed 001: 16 H100 = 2 nodes
    assert load_cluster("a100x4").devices_for(gpus=16) == 16  # seed 004: 4 nodes x 4
    assert load_cluster("tpu-v4-3072").devices_for(gpus=6144) == 6144  # PaLM: 2 x 3072


def test_devices_for_gpus_not_whole_nodes_names_nearest_counts() -> None:
    c = load_cluster("dgx-a100")
    with pytest.raises(SpecError, match=r"--gpus 12 .*use 8 or 16"):
        c.devices_for(gpus=12)
    with pytest.raises(SpecError, match=r"use 192 or 204"):   # 3 racks of 64 or of 68
        load_cluster("gb200-nvl72").devices_for(gpus=200)


@pytest.mark.parametrize("kwargs", [{}, {"gpus": 8, "nodes": 1}, {"gpus": 0}, {"nodes": 0}])
def test_devices_for_rejects_bad_requests(kwargs: dict[str, int]) -> None:
    with pytest.raises(SpecError):
        load_cluster("dgx-a100").devices_for(**kwargs)


def test_nvl72_job_is_spread_evenly_over_the_fewest_racks() -> None:
    from planner.presets import load_cluster

    c = load_cluster("gb200-nvl72")
    assert c.allocation_unit == 4
    assert c.devices_for(gpus=256) == 256
    assert c.job_view(256).devices_per_node == 64      # 4 racks x 64 GPUs (16 trays each)
    assert c.job_view(144).devices_per_node == 72      # whole racks: unchanged
    assert c.job_view(64).devices_per_node == 64      # inside one rack: all NVLink
    assert c.job_view(72) is c
    with pytest.raises(SpecError, match="use 248 or 252"):
        c.devices_for(gpus=250)
    with pytest.raises(SpecError, match="spread evenly"):
        c.devices_for(gpus=100)                        # 2 racks of 50: not whole trays
    with pytest.raises(SpecError, match="use 96 or 104"):
        c.devices_for(gpus=100)


@pytest.mark.parametrize("cluster, devices, message", [
    ("dgx-b200", 12, "use 8 or 16"), ("gb200-nvl72", 102, "use 96 or 104")])
def test_job_view_of_a_count_off_the_allocation_units_says_which_fit(
        cluster: str, devices: int, message: str) -> None:
    """job_view is reached without devices_for from the Python API (search_inference): a count
    that is not whole allocation units used to loop for ever looking for its neighbours."""
    from planner.presets import load_cluster

    with pytest.raises(SpecError, match=message):
        load_cluster(cluster).job_view(devices)


def test_allocation_unit_must_divide_the_node() -> None:
    from planner.presets import load_cluster

    c = load_cluster("gb200-nvl72").model_dump()
    c["allocation_devices"] = 5
    with pytest.raises(SpecError, match="must divide"):
        ClusterSpec.model_validate(c)


def test_256_gpu_gb200_plan_evaluates() -> None:
    import planner
    from planner.api import evaluate

    wl = planner.TrainingWorkload(global_batch_size=256, seq_len=4096)
    est = evaluate("llama3-70b", "gb200-nvl72", wl, "tp=4,pp=1,mbs=1,recompute=full,zero=1",
                   devices=256)
    assert est.devices == 256 and est.step_time_s > 0


@pytest.mark.parametrize(("old", "new"), [("gb200-nvl72", "gb300-nvl72"), ("dgx-b200", "dgx-b300")])
def test_blackwell_ultra_is_never_slower_than_blackwell(old: str, new: str) -> None:
    """B300/GB300 keep Blackwell's FP8/BF16 peaks and raise memory, HBM and NIC bandwidth (and
    B300's measured MAMF), so the same plan is never slower and has more memory left; each has
    its own efficiency entry, not the generic default."""
    import planner
    from cost_models.efficiency import device_efficiency
    from planner.api import evaluate

    assert not device_efficiency(load_cluster(new).device)[1]
    wl = planner.TrainingWorkload(global_batch_size=256, seq_len=4096, dtype="fp8")
    plan = "tp=4,pp=2,mbs=1,recompute=selective,zero=1"
    a = evaluate("llama3-70b", old, wl, plan, devices=64)
    b = evaluate("llama3-70b", new, wl, plan, devices=64)
    assert b.step_time_s <= a.step_time_s * (1 + 1e-9)
    assert b.peak_memory_gib == pytest.approx(a.peak_memory_gib)
    assert load_cluster(new).device.memory_bytes > load_cluster(old).device.memory_bytes
    assert not any("generic" in w or "default" in w for w in b.warnings)


def test_full_mesh_gives_a_group_one_link_per_other_member() -> None:
    """AMD's 8-GPU platform joins every pair by its own 64 GB/s link: a pair of GPUs has one
    link, all eight have seven (448 GB/s each); a switched fabric gives every group the same."""
    mesh = load_cluster("mi300x-platform").intra_node
    assert mesh.topology == "full_mesh"
    assert [mesh.group_bandwidth(k) for k in (1, 2, 4, 8)] == [64e9, 64e9, 192e9, 448e9]
    nvswitch = load_cluster("dgx-h100").intra_node
    assert {nvswitch.group_bandwidth(k) for k in (1, 2, 8)} == {450e9}


def test_tensor_parallel_pair_is_slower_per_byte_on_a_mesh() -> None:
    """The tp all-reduce of one micro-batch moves 2(t-1)/t of its buffer per device: on the mesh
    tp=2 gets one link and tp=8 seven, so tp=8 finishes the same buffer sooner; through NVSwitch
    tp=2 moves less at the same bandwidth and is the faster of the two."""
    from cost_models import comm

    def ar(cluster: str, tp: int) -> float:
        links = comm.group_links(load_cluster(cluster), size=tp, stride=1)
        return comm.all_reduce_s(links, 1e9)

    assert ar("mi300x-platform", 2) > 3 * ar("mi300x-platform", 8)
    assert ar("dgx-h100", 2) < ar("dgx-h100", 8)


def test_mi250x_pair_uses_its_in_package_link() -> None:
    """An MI250X's two GCDs (ranks 2i, 2i+1) share four Infinity Fabric links, 200 GB/s each
    way; every other group in the node gets its package's five outside links shared by its two
    GCDs, 125 GB/s each. So a tp=2 group inside one package all-reduces 1.6x faster per byte
    than a pair that spans two packages (ranks 0 and 4), and than tp=8's links per byte."""
    from cost_models import comm

    link = load_cluster("frontier-mi250x").intra_node
    assert link.group_bandwidth(2, pair=True) == 200e9
    assert link.group_bandwidth(2) == link.group_bandwidth(8) == 125e9
    cluster = load_cluster("frontier-mi250x")
    inside = comm.group_links(cluster, size=2, stride=1)
    across = comm.group_links(cluster, size=2, stride=4)
    tp8 = comm.group_links(cluster, size=8, stride=1)
    assert not inside.spans_nodes and not across.spans_nodes
    assert inside.bandwidth_bytes_per_s == pytest.approx(200e9 * 0.71)
    assert across.bandwidth_bytes_per_s == tp8.bandwidth_bytes_per_s == pytest.approx(125e9 * 0.71)
    # a switch or a mesh has no pairs: the flag changes nothing there
    assert load_cluster("dgx-h100").intra_node.group_bandwidth(2, pair=True) == 450e9
    assert load_cluster("mi300x-platform").intra_node.group_bandwidth(2, pair=True) == 64e9


def test_pair_link_must_be_the_faster_one() -> None:
    from planner.hardware import LinkSpec

    with pytest.raises(SpecError, match="pair_bandwidth_bytes_per_s .* is below"):
        LinkSpec(name="x", bandwidth_bytes_per_s=100e9, latency_s=1e-6,
                 pair_bandwidth_bytes_per_s=50e9)


def test_frontier_node_shares_each_nic_between_two_gcds() -> None:
    """Four 25 GB/s Slingshot NICs per node of eight GCDs: a data-parallel group with all eight
    GCDs of each node crosses nodes at 8 x 12.5 GB/s (at the inter-node link efficiency), or
    at its members' Infinity Fabric bandwidth inside the node where that is lower (it is:
    125 GB/s x 0.71 = 88.75 GB/s < 90 GB/s)."""
    from cost_models import comm
    from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY

    cluster = load_cluster("frontier-mi250x")
    dp = comm.group_links(cluster, size=32, stride=1)
    assert dp.spans_nodes and dp.members_per_node == 8
    nics = 8 * 12.5e9 * INTER_NODE_LINK_EFFICIENCY
    assert nics == pytest.approx(90e9)
    assert dp.bandwidth_bytes_per_s == pytest.approx(min(nics, 125e9 * 0.71)) == 88.75e9
    # with tp=2 inside each package, the data-parallel group has 4 members per node: its NICs
    dp4 = comm.group_links(cluster, size=16, stride=2)
    assert dp4.members_per_node == 4
    assert dp4.bandwidth_bytes_per_s == pytest.approx(4 * 12.5e9 * INTER_NODE_LINK_EFFICIENCY)


@pytest.mark.parametrize(("old", "new"), [("mi300x-platform", "mi325x-platform"),
                                          ("mi325x-platform", "mi355x-platform")])
def test_newer_instinct_is_never_slower(old: str, new: str) -> None:
    """MI325X keeps the MI300X's compute and links and raises memory, HBM bandwidth and the
    measured MAMF; MI355X doubles the per-CU rate and widens the links: the same plan is never
    slower, and each device has its own efficiency entry, not the generic default."""
    import planner
    from cost_models.efficiency import device_efficiency
    from planner.api import evaluate

    assert not device_efficiency(load_cluster(new).device)[1]
    for dtype in ("bf16", "fp8"):
        wl = planner.TrainingWorkload(global_batch_size=128, seq_len=4096, dtype=dtype)
        plan = "tp=2,pp=2,mbs=1,recompute=selective,zero=1"
        a = evaluate("llama3-70b", old, wl, plan, devices=16)
        b = evaluate("llama3-70b", new, wl, plan, devices=16)
        assert b.step_time_s <= a.step_time_s * (1 + 1e-9)
        assert not any("generic" in w or "default" in w for w in b.warnings)


def test_h800_node_pays_for_its_nvlink_cut_only_in_communication() -> None:
    """The same tp=8 plan on HGX H800 and DGX H100: the same compute, slower TP collectives
    (they run over NVLink, cut from 450 to 200 GB/s per direction)."""
    from planner import TrainingWorkload, load_model
    from planner.api import evaluate
    from planner.plan import Plan
    model = load_model("llama3-70b")
    work = TrainingWorkload(global_batch_size=16, seq_len=4096)
    plan = Plan.model_validate({"tp": 8, "pp": 2, "dp": 1, "sp": True})
    h100 = evaluate(model, load_cluster("dgx-h100").job_view(16), work, plan)
    h800 = evaluate(model, load_cluster("hgx-h800").job_view(16), work, plan)
    assert h800.breakdown["compute"] == pytest.approx(h100.breakdown["compute"])
    assert h800.breakdown["tp_comm"] > 2 * h100.breakdown["tp_comm"]
    assert h800.step_time_s > h100.step_time_s


def test_tp_pair_inside_an_mi250x_package_reaches_the_estimate() -> None:
    """The in-package link reaches the training estimate: a tp=2 plan on Frontier's nodes spends
    200/125 = 1.6x less on tensor-parallel communication than on the same node without that
    link (every group at 125 GB/s), and nothing else changes."""
    import planner
    from planner.api import evaluate

    cluster = load_cluster("frontier-mi250x")
    flat = cluster.model_copy(update={"intra_node": cluster.intra_node.model_copy(
        update={"pair_bandwidth_bytes_per_s": None})})
    wl = planner.TrainingWorkload(global_batch_size=64, seq_len=2048, dtype="bf16")
    plan = "tp=2,pp=1,mbs=1,recompute=full,zero=1,attn=flash"
    fast = evaluate("llama3-8b", cluster, wl, plan, devices=16)
    slow = evaluate("llama3-8b", flat, wl, plan, devices=16)
    assert 0 < fast.breakdown["tp_comm"] < slow.breakdown["tp_comm"]
    assert fast.breakdown["tp_comm"] == pytest.approx(slow.breakdown["tp_comm"] / 1.6, rel=0.05)
    assert fast.breakdown["compute"] == slow.breakdown["compute"]
    assert fast.peak_memory_gib == slow.peak_memory_gib
