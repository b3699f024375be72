"""Device mapping: CP-SAT against exhaustive search, the cost against group_links at the
training model's strides, realisability of the layout, and the Megatron/DP-heavy cases."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter

import pytest

from cost_models import comm
from cost_models.training import strides
from planner import ClusterSpec, DeviceSpec, LinkSpec, Plan, load_cluster
from planner.plan import DEFAULT_ORDER
from search.device_mapping import (
    COST_RESOLUTION_S,
    DIMS,
    DeviceMapping,
    Traffic,
    brute_force_mapping,
    is_feasible,
    map_devices,
    mapping_time_s,
    members_per_node_for_order,
)

TOL = len(DIMS) * COST_RESOLUTION_S     # rounding of each dimension's cost to the grid


def _cluster(device: DeviceSpec, d: int, rng: random.Random) -> ClusterSpec:
    return ClusterSpec(
        name=f"rand-{d}", device=device, devices_per_node=d,
        intra_node=LinkSpec(name="intra", bandwidth_bytes_per_s=rng.uniform(50e9, 900e9),
                            latency_s=rng.uniform(0.5e-6, 4e-6)),
        inter_node=LinkSpec(name="inter", bandwidth_bytes_per_s=rng.uniform(5e9, 100e9),
                            latency_s=rng.uniform(2e-6, 20e-6)),
    )


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


Case = tuple[ClusterSpec, dict[str, int], list[Traffic]]


def _random_case(seed: int, device: DeviceSpec) -> Case:
    rng = random.Random(seed)
    d = rng.choice([2, 4, 8])
    n = rng.randint(1, d) if rng.random() < 0.1 else d * rng.randint(1, 64 // d)
    sizes = dict.fromkeys(DIMS, 1)
    for p in _prime_factors(n):
        sizes[rng.choice(DIMS)] *= p
    kinds = ["all_reduce", "all_gather", "reduce_scatter", "p2p"]
    usual = {"tp": "all_reduce", "dp": "all_reduce", "pp": "p2p", "cp": "all_gather"}
    traffic = []
    for g in DIMS:
        for _ in range(rng.randint(0, 2)):
            kind = usual[g] if rng.random() < 0.6 else rng.choice(kinds)
            traffic.append(Traffic(g, kind, 10 ** rng.uniform(2, 10), rng.randint(1, 500)))
    return _cluster(device, d, rng), sizes, traffic


def _check_layout(m: DeviceMapping, cluster: ClusterSpec, *, all_groups: bool = False) -> None:
    """The layout fills one node exactly, every group has a_g members in each node it
    touches, and the order (or nested radices) realises members_per_node."""
    d, a, n = cluster.devices_per_node, m.members_per_node, m.sizes
    assert is_feasible(cluster, n, a)
    assert math.prod(r for _, r in m.radices) == m.devices
    for g in DIMS:
        ids = m.first_groups[g]
        assert len(set(ids)) == n[g] and ids[0] == 0 and max(ids) < m.devices
        assert set(Counter(i // d for i in ids).values()) == {a[g]}
    partial = [g for g in DIMS if 1 < a[g] < n[g]]
    if m.order is not None:
        assert len(partial) <= 1 and m.nested is None
        assert members_per_node_for_order(cluster, n, m.order) == a
    else:
        assert len(partial) >= 2 and m.nested == m.radices
    if all_groups:   # decode every rank: each g-group has a_g members per node
        coords = []
        for rank in range(m.devices):
            c, rest = dict.fromkeys(DIMS, 0), rank
            scale = dict.fromkeys(DIMS, 1)
            for g, r in m.radices:
                c[g] += (rest % r) * scale[g]
                scale[g] *= r
                rest //= r
            coords.append(c)
        assert len({tuple(c.values()) for c in coords}) == m.devices
        for g in DIMS:
            groups: dict[tuple[int, ...], list[int]] = {}
            for rank, c in enumerate(coords):
                groups.setdefault(tuple(c[h] for h in DIMS if h != g), []).append(rank)
            for members in groups.values():
                assert set(Counter(i // d for i in members).values()) == {a[g]}


# ----------------------------------------------------------------- 1. exhaustive search


@pytest.mark.parametrize("seed", range(50))
def test_cp_sat_matches_brute_force(seed: int, tiny_device: DeviceSpec) -> None:
    cluster, sizes, traffic = _random_case(seed, tiny_device)
    m = map_devices(cluster, sizes=sizes, traffic=traffic)
    best, best_a = brute_force_mapping(cluster, sizes, traffic)
    assert m.status == "OPTIMAL" and m.gap == 0.0
    assert abs(m.objective_s - best) <= TOL
    assert m.time_s <= best + TOL
    assert m.time_s == pytest.approx(mapping_time_s(cluster, sizes, traffic, m.members_per_node))
    assert mapping_time_s(cluster, sizes, traffic, best_a) == pytest.approx(best)
    assert m.time_s <= m.default_order_s + TOL
    _check_layout(m, cluster, all_groups=True)


# ----------------------------------------------------------------- cost = training model's


@pytest.mark.parametrize("sizes", [
    {"tp": 8, "cp": 2, "dp": 4, "pp": 2}, {"tp": 2, "cp": 4, "dp": 4, "pp": 2},
    {"tp": 4, "cp": 1, "dp": 6, "pp": 4}, {"tp": 3, "cp": 1, "dp": 8, "pp": 2},
])
def test_cost_is_group_links_at_order_strides(sizes: dict[str, int]) -> None:
    """For every Plan.order, mapping_time_s of the order's layout is the alpha-beta time of
    group_links at the strides cost_models.training derives from plan.order."""
    cluster = load_cluster("dgx-a100")
    traffic = [Traffic("tp", "all_reduce", 50e6, 100), Traffic("cp", "all_gather", 8e6, 40),
               Traffic("dp", "all_reduce", 2e9, 1), Traffic("dp", "reduce_scatter", 1e9, 2),
               Traffic("pp", "p2p", 6e6, 64)]
    for order in itertools.permutations(DEFAULT_ORDER):
        st = strides(Plan(order=order, **sizes))
        want = 0.0
        for t in traffic:
            links = comm.group_links(cluster, size=sizes[t.dim], stride=st[t.dim])
            if t.kind == "all_reduce":
                want += t.calls * comm.all_reduce_s(links, t.bytes_per_call)
            elif t.kind == "all_gather":
                want += t.calls * comm.all_gather_s(links, t.bytes_per_call)
            elif t.kind == "reduce_scatter":
                want += t.calls * comm.reduce_scatter_s(links, t.bytes_per_call)
            else:
                want += t.calls * comm.p2p_s(cluster, t.bytes_per_call,
                                             crosses_nodes=links.spans_nodes)
        a = members_per_node_for_order(cluster, sizes, order)
        assert mapping_time_s(cluster, sizes, traffic, a) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------- 2. and 3. sanity


def _megatron_traffic() -> list[Traffic]:
    """GPT-3 175B-like, tp=8, pp=8, dp=24, 64 micro-batches of 2048 tokens (hidden 12288):
    TP all-reduces ~50 MB x 4 per layer x 12 layers x 64; DP one ~5.5 GB gradient
    all-reduce; PP 6 MB p2p twice per micro-batch."""
    act = 2048 * 12288 * 2
    return [Traffic("tp", "all_reduce", act, 4 * 12 * 64),
            Traffic("dp", "all_reduce", 175e9 / 64 * 2, 1),
            Traffic("pp", "p2p", act / 8, 2 * 64)]


def test_megatron_keeps_tp_inside_the_node() -> None:
    cluster = load_cluster("dgx-a100")
    sizes = {"tp": 8, "pp": 8, "dp": 24}
    traffic = _megatron_traffic()
    m = map_devices(cluster, sizes=sizes, traffic=traffic)
    t = m.time_by_dim_s
    assert t["tp"] > t["dp"] > t["pp"] > 0
    assert m.members_per_node == {"tp": 8, "cp": 1, "dp": 1, "pp": 1}
    assert m.order is not None and m.order[0] == "tp"
    assert m.order == DEFAULT_ORDER and m.time_s == pytest.approx(m.default_order_s)
    assert m.first_groups["tp"] == tuple(range(8))
    assert m.status == "OPTIMAL" and m.objective_s == pytest.approx(m.time_s, abs=TOL)
    assert m.layout == "order=tp-cp-dp-pp"
    _check_layout(m, cluster)


def test_dp_heavy_puts_dp_inside_the_node() -> None:
    cluster = load_cluster("dgx-a100")
    sizes = {"tp": 2, "cp": 4, "dp": 4, "pp": 2}
    traffic = [Traffic("tp", "all_reduce", 1e5, 10), Traffic("cp", "all_gather", 1e5, 10),
               Traffic("dp", "all_reduce", 4e9, 2), Traffic("pp", "p2p", 1e5, 2)]
    m = map_devices(cluster, sizes=sizes, traffic=traffic)
    assert members_per_node_for_order(cluster, sizes) == {"tp": 2, "cp": 4, "dp": 1, "pp": 1}
    assert m.members_per_node == {"tp": 2, "cp": 1, "dp": 4, "pp": 1}
    assert m.order == ("tp", "dp", "cp", "pp")
    assert m.first_groups["dp"] == (0, 2, 4, 6)
    assert m.time_s < 0.5 * m.default_order_s
    assert m.time_s == pytest.approx(brute_force_mapping(cluster, sizes, traffic)[0])
    _check_layout(m, cluster, all_groups=True)

    sizes = {"tp": 4, "dp": 8, "pp": 2}                # default: tp 4 + half of dp per node
    m = map_devices(cluster, sizes=sizes, traffic=traffic)
    assert m.members_per_node["dp"] == 8 and m.members_per_node["tp"] == 1
    assert m.order is not None and m.order.index("dp") < m.order.index("tp")
    assert m.time_s < m.default_order_s
    _check_layout(m, cluster, all_groups=True)


def test_nested_layout_when_two_dims_split() -> None:
    """4-GPU nodes, tp=4 and dp=4 with equal traffic: 2 of each per node beats either whole,
    and no Plan.order gives that, so the mapping is nested."""
    cluster = load_cluster("a100x4")
    sizes = {"tp": 4, "dp": 4}
    traffic = [Traffic("tp", "all_reduce", 1e9, 10), Traffic("dp", "all_reduce", 1e9, 10)]
    m = map_devices(cluster, sizes=sizes, traffic=traffic)
    assert m.members_per_node == {"tp": 2, "cp": 1, "dp": 2, "pp": 1}
    assert m.order is None and m.nested == (("tp", 2), ("dp", 2), ("tp", 2), ("dp", 2))
    assert m.layout == "nested=tp2.dp2|tp2.dp2"
    assert m.first_groups == {"tp": (0, 1, 4, 5), "cp": (0,), "dp": (0, 2, 8, 10), "pp": (0,)}
    best = min(mapping_time_s(cluster, sizes, traffic,
                              members_per_node_for_order(cluster, sizes, o))
               for o in itertools.permutations(DEFAULT_ORDER))
    assert m.time_s < best
    _check_layout(m, cluster, all_groups=True)


def test_fewer_devices_than_a_node() -> None:
    cluster = load_cluster("dgx-a100")
    m = map_devices(cluster, sizes={"tp": 2, "dp": 3},
                    traffic=[Traffic("dp", "all_reduce", 1e9, 1)])
    assert m.members_per_node == {"tp": 2, "cp": 1, "dp": 3, "pp": 1}
    intra = comm.group_links(cluster, size=2, stride=1).bandwidth_bytes_per_s
    assert m.time_by_dim_s["dp"] == pytest.approx(
        2 * 2 / 3 * 1e9 / intra + 2 * 2 * cluster.intra_node.latency_s)  # 2 x 2 ring steps


def test_rejections() -> None:
    cluster = load_cluster("dgx-a100")
    with pytest.raises(ValueError, match="whole number"):
        map_devices(cluster, sizes={"tp": 4, "dp": 3}, traffic=[])
    with pytest.raises(ValueError, match="unknown dimension"):
        map_devices(cluster, sizes={"ep": 8}, traffic=[])
    with pytest.raises(ValueError, match="kind"):
        Traffic("tp", "broadcast", 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        Traffic("ep", "all_reduce", 1.0, 1.0)
    with pytest.raises(ValueError, match="divide"):
        mapping_time_s(cluster, {"tp": 8}, [], {"tp": 3})


# ----------------------------------------------------------------- 4. report and limits


def _large_case() -> Case:
    """73728 GB200 GPUs (1024 NVL72 racks): tp=8, cp=2, pp=16, dp=288."""
    act = 8192 * 16384 * 2
    return load_cluster("gb200-nvl72"), {"tp": 8, "cp": 2, "pp": 16, "dp": 288}, [
        Traffic("tp", "all_reduce", act / 2, 4 * 8 * 32),
        Traffic("cp", "all_gather", act / 16, 2 * 8 * 32),
        Traffic("dp", "reduce_scatter", 1e12 / 128 * 4, 1),
        Traffic("dp", "all_gather", 1e12 / 128 * 2, 1),
        Traffic("pp", "p2p", act / 16, 2 * 32),
    ]


def test_large_case_with_short_limit() -> None:
    cluster, sizes, traffic = _large_case()
    assert math.prod(sizes.values()) == 73728 == 72 * 1024
    t0 = time.perf_counter()
    m = map_devices(cluster, sizes=sizes, traffic=traffic, time_limit_s=0.5)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0 and m.wall_time_s < 1.0 and m.solve_time_s <= 0.6
    assert m.status in ("OPTIMAL", "FEASIBLE")
    assert m.best_bound_s <= m.objective_s + TOL and 0.0 <= m.gap <= 1.0
    assert is_feasible(cluster, sizes, m.members_per_node)
    assert math.prod(m.members_per_node.values()) == 72
    assert m.time_s <= brute_force_mapping(cluster, sizes, traffic)[0] + TOL
    assert m.time_s <= m.default_order_s + TOL
    _check_layout(m, cluster)


def test_status_and_gap_reported() -> None:
    cluster, sizes, traffic = _large_case()
    m = map_devices(cluster, sizes=sizes, traffic=traffic, num_workers=4, seed=7)
    assert m.status == "OPTIMAL" and m.gap == 0.0
    assert m.best_bound_s == pytest.approx(m.objective_s, abs=TOL)
    one = map_devices(cluster, sizes=sizes, traffic=traffic)
    assert one.objective_s == pytest.approx(m.objective_s, abs=TOL)


def test_no_time_still_returns_a_feasible_layout() -> None:
    """With no time to search, the answer is the (feasible) greedy hint, reported as such."""
    cluster, sizes, traffic = _large_case()
    m = map_devices(cluster, sizes=sizes, traffic=traffic, time_limit_s=0.0)
    assert is_feasible(cluster, sizes, m.members_per_node)
    assert m.status in ("OPTIMAL", "FEASIBLE", "UNKNOWN")
    if m.status == "UNKNOWN":
        assert m.gap == 1.0 and m.best_bound_s == 0.0
    _check_layout(m, cluster)
