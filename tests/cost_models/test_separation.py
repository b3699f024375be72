"""Attention/expert separation cost model: transfers by hand, the ping-pong closed form
against an event simulation, monotonicity in bandwidth, memory by hand, plan checks."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY as EFF_X
from cost_models.efficiency import INTRA_NODE_LINK_EFFICIENCY as EFF_I
from cost_models.separation import (
    SeparatedPlan,
    estimate_separated_inference,
    estimate_separated_training,
    forward_backward_layer,
    make_setup,
    ping_pong_s,
    transfer_s,
)
from planner import ClusterSpec, DeviceSpec, LinkSpec, ModelSpec
from planner.errors import PlanError
from planner.presets import load_cluster, load_model
from planner.workload import InferenceWorkload, TrainingWorkload


def moe_model(**kw: object) -> ModelSpec:
    base = dict(name="tiny-moe", num_layers=4, hidden_size=64, num_attention_heads=4,
                ffn_hidden_size=256, vocab_size=1000,
                moe={"num_experts": 4, "top_k": 2, "expert_ffn_hidden_size": 128})
    return ModelSpec(**{**base, **kw})


def cluster(intra: float = 100e9, inter: float = 10e9) -> ClusterSpec:
    dev = DeviceSpec(name="toy", peak_flops_per_s={"bf16": 100e12, "fp32": 10e12},
                     memory_bytes=16 * 2**30, memory_bandwidth_bytes_per_s=1e12,
                     onchip_cache_bytes=32 * 2**20, power_w=300)
    return ClusterSpec(name="toy-cluster", device=dev, devices_per_node=2,
                       intra_node=LinkSpec(name="fast", bandwidth_bytes_per_s=intra, latency_s=1e-6),
                       inter_node=LinkSpec(name="slow", bandwidth_bytes_per_s=inter, latency_s=5e-6))


# ----- transfers ---------------------------------------------------------------------------
def test_transfer_whole_nodes_by_hand() -> None:
    """A = node 0, E = node 1: each attention device sends half of 1 MB over its NIC."""
    got = transfer_s(cluster(), 2, 2, 1e6)
    assert got == pytest.approx(0.5e6 / (10e9 * EFF_X) + 2 * 5e-6)


def test_transfer_shared_node_by_hand() -> None:
    """A = rank 0; E = ranks 1, 2, 3 (rank 1 shares node 0). Rank 0 sends 1/3 intra, 2/3
    inter; ranks 2, 3 receive 1/3 each over the NIC: the slowest is rank 0's 2/3 MB."""
    got = transfer_s(cluster(), 1, 3, 1e6)
    sender = max((1e6 / 3) / (100e9 * EFF_I), (2e6 / 3) / (10e9 * EFF_X))
    receiver = (1e6 / 3) / (10e9 * EFF_X)
    assert got == pytest.approx(max(sender, receiver) + 3 * 5e-6)


def test_transfer_inside_one_node_uses_nvlink() -> None:
    c = cluster()
    assert transfer_s(c, 1, 1, 1e6) == pytest.approx(1e6 / (100e9 * EFF_I) + 1e-6)


def test_dispatch_bytes_are_tokens_topk_hidden() -> None:
    """Dispatch of one micro-batch = dp x mbs x seq tokens x top_k x hidden x 2 bytes."""
    m, c = moe_model(), cluster()
    plan = SeparatedPlan(attn_tp=1, attn_dp=2, ep=2, etp=1, microbatches=2, mbs=3)
    fwd, bwd = forward_backward_layer(make_setup(m, c, plan, "bf16"), 3, 128, "bf16")
    nbytes = 2 * 3 * 128 * 2 * 64 * 2
    assert fwd.dispatch == fwd.combine == bwd.dispatch == transfer_s(c, 2, 2, nbytes)
    assert fwd.dispatch == pytest.approx(nbytes / 2 / (10e9 * EFF_X) + 2 * 5e-6)


# ----- the ping-pong schedule -----------------------------------------------------------
def simulate(times: tuple[float, ...], m: int, layers: int) -> float:
    """Event simulation: m micro-batches each visit the resources in order, `layers` times
    round; every resource serves one at a time, first come first served (ties by index)."""
    k, free, done = len(times), [0.0] * len(times), 0.0
    ready = [(0.0, j, 0) for j in range(m)]
    heapq.heapify(ready)
    while ready:
        t, j, r = heapq.heappop(ready)
        s = r % k
        free[s] = max(t, free[s]) + times[s]
        if r + 1 < k * layers:
            heapq.heappush(ready, (free[s], j, r + 1))
        else:
            done = max(done, free[s])
    return done


@settings(max_examples=300, deadline=None)
@given(times=st.tuples(*[st.floats(0.01, 10.0) for _ in range(4)]),
       m=st.integers(1, 8), layers=st.integers(1, 6))
def test_ping_pong_closed_form_equals_simulation(times: tuple[float, ...], m: int, layers: int) -> None:
    assert ping_pong_s(times, m, layers) == pytest.approx(simulate(times, m, layers), rel=1e-9)


def test_ping_pong_cases_by_hand() -> None:
    assert ping_pong_s((1.0, 0.5, 2.0, 0.5), 1, 3) == pytest.approx(12.0)          # serial
    # m*M = 8 >= S = 4: the experts (2.0) stay busy: 3*4*2 + (4 - 2) = 26
    assert ping_pong_s((1.0, 0.5, 2.0, 0.5), 4, 3) == pytest.approx(26.0)
    # m*M = 4 = S: both terms give 3*4 + 1*2 = 14
    assert ping_pong_s((1.0, 0.5, 2.0, 0.5), 2, 3) == pytest.approx(14.0)


# ----- monotonicity ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(intra=st.floats(1.0, 8.0), inter=st.floats(1.0, 8.0),
       split=st.sampled_from([(2, 2, 1), (2, 1, 2), (3, 1, 1)]),
       m=st.sampled_from([1, 2, 4]), training=st.booleans())
def test_more_bandwidth_never_slower(intra: float, inter: float, split: tuple[int, int, int],
                                     m: int, training: bool) -> None:
    """Faster intra- or inter-node links never make a plan slower (A + E = 4 devices)."""
    model = moe_model()
    slow, fast = cluster(), cluster(100e9 * intra, 10e9 * inter)
    a, ep, etp = split
    plan = SeparatedPlan(attn_tp=1, attn_dp=a, ep=ep, etp=etp, microbatches=m,
                         mbs=1 if training else None)
    if training:
        wl = TrainingWorkload(global_batch_size=24 * a, seq_len=128)
        t0 = estimate_separated_training(model, slow, wl, plan).time_s
        t1 = estimate_separated_training(model, fast, wl, plan).time_s
    else:
        wl2 = InferenceWorkload(batch_size=8 * a, prompt_len=64, output_len=16)
        e0 = estimate_separated_inference(model, slow, wl2, plan)
        e1 = estimate_separated_inference(model, fast, wl2, plan)
        assert e1.ttft_s is not None and e0.ttft_s is not None and e1.ttft_s <= e0.ttft_s * (1 + 1e-12)
        t0, t1 = e0.time_s, e1.time_s
    assert t1 <= t0 * (1 + 1e-12)


# ----- breakdowns and memory ---------------------------------------------------------------
def test_breakdowns_sum_to_the_time() -> None:
    model, c = moe_model(), cluster()
    plan = SeparatedPlan(attn_tp=2, attn_dp=1, ep=2, etp=1, microbatches=2, mbs=2)
    e = estimate_separated_training(model, c, TrainingWorkload(global_batch_size=16, seq_len=128), plan)
    assert sum(e.breakdown.values()) == pytest.approx(e.time_s)
    plan_i = SeparatedPlan(attn_tp=2, attn_dp=1, ep=2, etp=1, microbatches=2)
    ei = estimate_separated_inference(model, c, InferenceWorkload(batch_size=8, prompt_len=64,
                                                                  output_len=8), plan_i)
    assert sum(ei.breakdown.values()) == pytest.approx(ei.time_s)
    assert ei.ttft_breakdown is not None and sum(ei.ttft_breakdown.values()) == pytest.approx(ei.ttft_s)
    assert ei.tokens_per_s == pytest.approx(8 / ei.time_s)


def test_seed004_expert_weights_by_hand() -> None:
    """16 GELU experts of 4096 x 16384 (+ biases) in each of 4 blocks over 8 expert devices."""
    m, c = load_model("seed004-moe-4l"), load_cluster("a100x4")
    plan = SeparatedPlan(attn_tp=4, attn_dp=2, ep=8, etp=1, microbatches=2)
    e = estimate_separated_inference(m, c, InferenceWorkload(batch_size=16, prompt_len=512,
                                                             output_len=64), plan)
    expert = 2 * 4096 * 16384 + 16384 + 4096
    assert e.expert_memory_gib["weights"] * 2**30 == pytest.approx(4 * 16 * expert / 8 * 2)
    assert e.whole_nodes and e.attn_devices == 8 and e.expert_devices == 8


def test_dense_model_and_bad_splits_are_refused() -> None:
    c = cluster()
    dense = ModelSpec(name="dense", num_layers=2, hidden_size=64, num_attention_heads=4,
                      ffn_hidden_size=256, vocab_size=100)
    wl = TrainingWorkload(global_batch_size=8, seq_len=64)
    with pytest.raises(PlanError, match="is dense"):
        estimate_separated_training(dense, c, wl, SeparatedPlan(1, 1, 1, 1, 1, 1))
    with pytest.raises(PlanError, match="does not divide the 4 experts"):
        estimate_separated_training(moe_model(), c, wl, SeparatedPlan(1, 1, 3, 1, 1, 1))
    with pytest.raises(PlanError, match="multiple of attention dp x m x mbs"):
        estimate_separated_training(moe_model(), c, wl, SeparatedPlan(1, 1, 1, 1, 3, 1))
    with pytest.raises(PlanError, match="needs mbs"):
        estimate_separated_training(moe_model(), c, wl, SeparatedPlan(1, 1, 1, 1, 1))
