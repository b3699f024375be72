"""ep_overlap (Megatron-Core's combined 1F1B): each MoE block's dispatch and combine hide
behind the adjacent micro-batch's compute (cost_models/tables.py `ep_overlap_exposed`), at the
price of about one more block of activations (tables.StageTables.memory)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.compute import block_compute
from cost_models.memory import in_flight_microbatches
from cost_models.tables import build_tables, ep_overlap_exposed
from cost_models.training import block_comm, make_context
from planner import ModelSpec, MoESpec, Plan, TrainingWorkload, load_cluster, parse_plan
from planner.api import evaluate, search
from planner.validate import plan_problems
from cost_models.training import estimate_training

from .test_properties import scaled

WL = TrainingWorkload(global_batch_size=64, seq_len=2048)
MOE = ModelSpec(name="ov-moe", num_layers=4, hidden_size=2048, num_attention_heads=16,
                ffn_hidden_size=8192, activation="swiglu", vocab_size=32000, dropout=False,
                moe=MoESpec(num_experts=16, top_k=2, expert_ffn_hidden_size=1024))
CLUSTER = "dgx-h100"


def test_hand_calculation() -> None:
    """schedule_layer_1f1b's pairs: forward dispatch (1.5 ms) beside the backward's expert MLP
    (0.5 ms): 1 ms exposed; forward combine (1.5 ms) beside the backward's attention (1.5 ms):
    hidden; backward dispatch and combine (0.5 ms each) beside the forward's MLP (3 ms) and
    attention (1 ms): hidden. Overlapped: 0.5 + 1.5 + 0.5 + 0.5 ms, each slowing compute by
    the collective's share (0.1)."""
    got = ep_overlap_exposed(0.1, fwd_comm=3e-3, bwd_comm=1e-3, fwd_window=4e-3,
                             bwd_window=2e-3, fwd_mlp=3e-3, bwd_mlp=0.5e-3)
    assert got == pytest.approx(1e-3 + 0.1 * 3e-3, rel=1e-12)
    # the same communication against whole-pass windows would hide entirely: pairing matters
    assert got > 0.1 * (3e-3 + 1e-3)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), *[st.floats(0, 1) for _ in range(4)], st.floats(0, 1), st.floats(0, 1))
def test_overlap_is_never_worse_than_exposing_everything(slow: float, f: float, b: float,
                                                         wf: float, wb: float, mf: float,
                                                         mb: float) -> None:
    """Between hiding behind whole passes (the most any pairing can hide) and exposing all."""
    fm, bm = mf * wf, mb * wb          # the expert MLP is part of its pass
    got = ep_overlap_exposed(slow, fwd_comm=f, bwd_comm=b, fwd_window=wf, bwd_window=wb,
                             fwd_mlp=fm, bwd_mlp=bm)
    assert max(0.0, f - wb) + max(0.0, b - wf) - 1e-12 <= got <= f + b + 1e-12


def test_the_breakdown_uses_the_overlap_rule_per_moe_block() -> None:
    devices, plan_text = 8, "tp=1,dp=8,ep=8,mbs=2"
    off = evaluate(MOE, CLUSTER, WL, plan_text, devices=devices)
    on = evaluate(MOE, CLUSTER, WL, plan_text + ",ep_overlap=on", devices=devices)
    plan = parse_plan(plan_text + ",ep_overlap=on", devices=devices)
    ctx, _ = make_context(MOE, load_cluster(CLUSTER).job_view(devices), WL, plan)
    bc = block_compute(MOE, ctx.roof, ctx.shard, moe=True)
    _, _, _, _, epf, epb = block_comm(ctx, True, bc)
    m = WL.global_batch_size // (plan.dp * plan.mbs)
    per_block = ep_overlap_exposed(ctx.roof.eff.overlap_slowdown, fwd_comm=epf, bwd_comm=epb,
                                   fwd_window=bc.fwd_s, bwd_window=bc.bwd_s,
                                   fwd_mlp=bc.mlp_fwd_s, bwd_mlp=bc.mlp_bwd_s)
    assert 0 < bc.mlp_fwd_s < bc.fwd_s and 0 < bc.mlp_bwd_s < bc.bwd_s
    assert on.breakdown["ep_comm"] == pytest.approx(m * MOE.num_layers * per_block, rel=1e-12)
    assert off.breakdown["ep_comm"] == pytest.approx(m * MOE.num_layers * (epf + epb), rel=1e-12)
    assert on.breakdown["ep_comm"] < off.breakdown["ep_comm"]
    assert on.breakdown["compute"] == off.breakdown["compute"]
    assert on.plan.endswith("ep_overlap=on") and "ep_overlap" not in off.plan


def test_about_one_more_block_of_activations() -> None:
    plan = parse_plan("tp=1,dp=8,ep=8,mbs=2,ep_overlap=on", devices=8)
    cluster = load_cluster(CLUSTER).job_view(8)
    t_on = build_tables(make_context(MOE, cluster, WL, plan)[0], 4)
    t_off = build_tables(make_context(MOE, cluster, WL,
                                      plan.model_copy(update={"ep_overlap": False}))[0], 4)
    act_on = t_on.memory(0, 0, 3)["activations"]
    act_off = t_off.memory(0, 0, 3)["activations"]
    head = t_on.extras["head_act"]
    # 1F1B with pp=1 holds one micro-batch (4 blocks): one more block is a quarter of it
    assert act_on - act_off == pytest.approx((act_off - head) / MOE.num_layers, rel=1e-12)
    assert in_flight_microbatches(plan, 0, 4) == in_flight_microbatches(
        plan.model_copy(update={"ep_overlap": False}), 0, 4)


def test_search_tries_both_and_keeps_fixed_values() -> None:
    res = search(MOE, CLUSTER, WL, devices=8, top_k=5, fixed={"ep": 8, "ep_overlap": True})
    assert all(sp.plan.get("ep_overlap") == "on" for sp in res.top)
    res_off = search(MOE, CLUSTER, WL, devices=8, top_k=5, fixed={"ep": 8, "ep_overlap": False})
    assert all("ep_overlap" not in sp.plan for sp in res_off.top)
    free = search(MOE, CLUSTER, WL, devices=8, top_k=1, fixed={"ep": 8})
    assert free.best.estimate.step_time_s <= min(res.best.estimate.step_time_s,
                                                 res_off.best.estimate.step_time_s) * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(what=st.sampled_from(["intra_node", "inter_node", "memory", "flops"]),
       factor=st.sampled_from([1.01, 1.5, 2.0, 10.0]),
       plan_text=st.sampled_from(["tp=1,dp=16,ep=8,mbs=1", "tp=2,dp=8,ep=16,mbs=2,sp=on",
                                  "tp=1,pp=2,vpp=2,dp=8,ep=8,mbs=1",
                                  "tp=1,pp=4,vpp=1,dp=4,ep=4,mbs=2"]),
       overlap=st.booleans(), mtp=st.sampled_from([0, 1]))
def test_faster_hardware_is_never_slower_for_moe(what: str, factor: float, plan_text: str,
                                                 overlap: bool, mtp: int) -> None:
    """The hardware-monotonicity property of test_properties.py on MoE plans, with and
    without ep_overlap and an MTP module (an overlapped all-to-all's exposed time grows by at
    most what its shrinking compute window saves)."""
    plan = parse_plan(plan_text + (",ep_overlap=on" if overlap else ""), devices=16)
    model = MOE.model_copy(update={"mtp_layers": mtp})
    if plan_problems(model, WL, plan, 16):
        return
    cluster = load_cluster(CLUSTER).job_view(16)
    base = estimate_training(model, cluster, WL, plan)
    fast = estimate_training(model, scaled(cluster, what, factor), WL, plan)
    assert fast.step_time_s <= base.step_time_s * (1 + 1e-12), (what, factor, base.breakdown,
                                                                fast.breakdown)
