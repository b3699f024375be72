"""Activation offloading (plan key offload): Megatron-Core's layer-level CPU offload.

Memory: the first `offload` blocks' activations leave the device; the rest stay (at least two
blocks, Transformer Engine's reload double buffer). Time: the offloaded bytes cross the host
link during the forward and again during the backward, hidden behind that pass's compute;
only the excess is exposed (breakdown key `offload`).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models.memory import GIB, block_activation_bytes, offload_resident
from planner import DType, Plan, TrainingWorkload, load_cluster, load_model, parse_plan
from planner.api import evaluate

LLAMA = load_model("llama3-8b")                     # 32 blocks
WL = TrainingWorkload(global_batch_size=16, seq_len=8192, dtype=DType.BF16)
H100 = load_cluster("dgx-h100")
RUNNER = cli_runner()


def plan(n: int) -> Plan:
    return Plan(tp=2, sp=True, dp=4, mbs=1, zero=1, offload=n)


def block_bytes() -> float:
    return block_activation_bytes(LLAMA, plan(0), seq_len=8192, moe=False,
                                  fused_attention=True, dtype=DType.BF16)


def test_plan_key_round_trips() -> None:
    p = parse_plan("tp=2,sp=on,zero=1,offload=12", devices=8)
    assert p.offload == 12 and "offload=12" in p.to_string()
    assert parse_plan(p.to_string(), devices=8) == p
    assert "offload" not in parse_plan("tp=2", devices=8).to_string()


@pytest.mark.parametrize("n", [1, 8, 30])
def test_offloaded_blocks_leave_the_device(n: int) -> None:
    """pp = 1 holds one micro-batch: n blocks fewer on the device (never fewer than two)."""
    base = evaluate(LLAMA, H100, WL, plan(0), devices=8).memory_gib["activations"]
    got = evaluate(LLAMA, H100, WL, plan(n), devices=8).memory_gib["activations"]
    assert base - got == pytest.approx(n * block_bytes() / GIB, rel=1e-9)


def test_at_least_two_blocks_stay() -> None:
    assert offload_resident(32, 31) == 2 and offload_resident(32, 30) == 2
    assert offload_resident(32, 10) == 22 and offload_resident(1, 0) == 1


def test_a_fast_host_link_hides_the_copies() -> None:
    """On GB200 (NVLink-C2C) the copies of 16 blocks fit inside each pass's compute; over
    H100's PCIe Gen5 they do not (Transformer Engine's docs: PCIe "limits offloading
    benefits")."""
    gb200 = load_cluster("gb200-nvl72")
    est = evaluate(LLAMA, gb200, WL, plan(16), devices=8)
    base = evaluate(LLAMA, gb200, WL, plan(0), devices=8)
    assert est.breakdown["offload"] == 0.0
    assert est.step_time_s == pytest.approx(base.step_time_s, rel=1e-12)
    assert evaluate(LLAMA, H100, WL, plan(16), devices=8).breakdown["offload"] > 0


def test_a_slow_host_link_exposes_both_copies() -> None:
    """At 1 MB/s the compute hides nothing: each micro-batch moves the offloaded blocks out
    in the forward and back in the backward, 2 x n x block bytes / bandwidth, less the
    forward and backward compute it overlaps."""
    slow = H100.model_copy(update={"host_bandwidth_bytes_per_s": 1e6})
    n, m = 16, WL.global_batch_size // (4 * 1)
    est = evaluate(LLAMA, slow, WL, plan(n), devices=8)
    moved = n * block_bytes() / 1e6
    compute = est.breakdown["compute"] / m
    assert est.breakdown["offload"] / m == pytest.approx(2 * moved - compute, rel=1e-3)
    assert est.step_time_s == pytest.approx(sum(est.breakdown.values()), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 31), bw=st.floats(1e8, 1e12))
def test_more_host_bandwidth_is_never_slower_and_offload_never_adds_memory(n: int,
                                                                           bw: float) -> None:
    slow = H100.model_copy(update={"host_bandwidth_bytes_per_s": bw})
    fast = H100.model_copy(update={"host_bandwidth_bytes_per_s": 2 * bw})
    a = evaluate(LLAMA, slow, WL, plan(n), devices=8)
    b = evaluate(LLAMA, fast, WL, plan(n), devices=8)
    assert b.step_time_s <= a.step_time_s
    assert a.peak_memory_gib <= evaluate(LLAMA, H100, WL, plan(0), devices=8).peak_memory_gib


def test_cluster_without_a_host_link_is_refused() -> None:
    r = RUNNER.invoke(app, ["evaluate", "--model", "llama3-8b", "--cluster", "dgx-b300",
                            "--gpus", "8", "--global-batch", "16", "--seq-len", "8192",
                            "--plan", "tp=2,sp=on,offload=8"])
    assert r.exit_code == 2 and r.stdout == "" and "Traceback" not in r.output
    assert r.stderr == ("error: offload=8 moves activations over the host link, and cluster "
                        "'dgx-b300' states no host bandwidth; add host_bandwidth_bytes_per_s "
                        "(bytes/s per direction per device, with its source) to its file, or "
                        "use offload=0\n")


def test_search_holds_a_fixed_offload() -> None:
    r = RUNNER.invoke(app, ["search", "--model", "llama3-8b", "--cluster", "dgx-h100",
                            "--gpus", "8", "--global-batch", "16", "--seq-len", "8192",
                            "--fix", "offload=16", "--json"])
    assert r.exit_code == 0, r.stderr
    plans = [p["plan"] for p in json.loads(r.stdout)["top"]]
    assert plans and all(p["offload"] == 16 and p["pp"] == 1 and p["recompute"] == "none"
                         for p in plans)


def test_tpu_host_links_follow_the_scaling_book() -> None:
    """TPU v6e moves offloaded activations over PCIe Gen5 at 32 GB/s, twice v4/v5's 15 GB/s
    (JAX scaling book, TPU chapter), so the same offload exposes less on v6e; TPU v3 and TPU7x
    state none and refuse offload, as any cluster without a host link does."""
    v6e, v5p = load_cluster("tpu-v6e-pod"), load_cluster("tpu-v5p-pod")
    assert v6e.host_bandwidth_bytes_per_s == 32e9
    assert {load_cluster(c).host_bandwidth_bytes_per_s
            for c in ("tpu-v4-pod", "tpu-v5e-pod", "tpu-v5p-pod")} == {15e9}
    assert load_cluster("tpu7x-pod").host_bandwidth_bytes_per_s is None
    slow_v6e = v6e.model_copy(update={"host_bandwidth_bytes_per_s": 15e9})
    fast = evaluate(LLAMA, v6e, WL, plan(16), devices=8)
    slow = evaluate(LLAMA, slow_v6e, WL, plan(16), devices=8)
    assert fast.breakdown["offload"] <= slow.breakdown["offload"]
    assert fast.peak_memory_gib < evaluate(LLAMA, v6e, WL, plan(0), devices=8).peak_memory_gib
    assert v5p.host_bandwidth_bytes_per_s < v6e.host_bandwidth_bytes_per_s
