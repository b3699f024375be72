"""DualPipe (plan key schedule=dualpipe): the bubble, rank pairing and memory of the DeepSeek-V3
report's Table 2, the rules of DualPipe's own checks, and the search over it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models.compute import Roofline, Shard, WGRAD_ACCUMULATOR_BYTES, block_compute
from cost_models.efficiency import device_efficiency
from cost_models.tables import build_tables
from cost_models.training import dualpipe_ranks, make_context, p2p_sync_s
from planner import (Attention, DType, LossKernel, ModelSpec, MoESpec, Plan, Schedule,
                     TrainingWorkload, load_cluster, load_model)
from planner.api import evaluate, search
from planner.errors import InfeasibleError
from planner.plan import Recompute, parse_plan
from search.brute_force import brute_force_best
from search.space import Limits

CLUSTER = load_cluster("dgx-h100")
# no vocabulary: every stage's blocks are its only work, so the stages are equal
UNIFORM = ModelSpec(name="uniform", num_layers=8, hidden_size=1024, num_attention_heads=8,
                    ffn_hidden_size=4096, vocab_size=0)
TINY_MOE = ModelSpec(name="tiny-moe", num_layers=8, hidden_size=512, num_attention_heads=8,
                     ffn_hidden_size=2048, vocab_size=1000, activation="swiglu",
                     moe=MoESpec(num_experts=8, top_k=2, expert_ffn_hidden_size=512))


def _tables(model: ModelSpec, plan: Plan, wl: TrainingWorkload):
    ctx, _ = make_context(model, CLUSTER.job_view(plan.devices), wl, plan)
    return build_tables(ctx, wl.global_batch_size // (plan.dp * plan.mbs))


def test_plan_string_round_trip() -> None:
    plan = parse_plan("tp=1,pp=4,ep=2,schedule=dualpipe", devices=8)
    assert plan.schedule == Schedule.DUALPIPE
    assert "schedule=dualpipe" in plan.to_string()
    assert parse_plan(plan.to_string(), devices=8) == plan
    assert "schedule" not in Plan(pp=4).to_string()        # 1F1B, the default, is not written


@pytest.mark.parametrize("pp", [2, 4, 8])
def test_step_is_the_table_2_formula_on_equal_stages(pp: int) -> None:
    """Equal stages: step = m (F + B) + (pp/2 - 1)(F&B + B - 3W) + the single chunks'
    exchanges + the tail, with F&B = F + B, W the blocks' weight-gradient GEMMs."""
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    plan = Plan(pp=pp, dp=8 // pp if pp < 8 else 1, schedule="dualpipe")
    m = 64 // plan.dp
    tables = _tables(UNIFORM, plan, wl)
    est = evaluate(UNIFORM, CLUSTER, wl, plan, devices=plan.devices)
    per = 8 // pp
    a, b = 0, per - 1
    kinds = tables.kinds(0, a, b)
    t = float(tables.time(0, a, b))
    f = float(kinds["fwd"])
    w = float(tables.sums("wgrad", a, b))
    bwd = t - f
    bubble = (pp / 2 - 1) * ((f + bwd) + bwd - 3 * w)
    assert est.breakdown["bubble"] == pytest.approx(bubble, rel=1e-12)
    if pp == 2:
        assert est.breakdown["bubble"] == 0.0
    sync = (3 * pp - 2) * tables.extras["p2p"] / 2
    tail = sum(dualpipe_ranks(tables, plan.stage_ranges(8)).tails[0])
    assert est.step_time_s == pytest.approx(m * t + bubble + sync + tail, rel=1e-12)
    assert sum(est.breakdown.values()) == pytest.approx(est.step_time_s, rel=1e-12)
    assert p2p_sync_s(plan, m, tables.extras["p2p"]) == pytest.approx(sync, rel=1e-12)


def test_weight_gradients_are_the_k_by_n_by_m_gemms() -> None:
    """BlockCompute.wgrad_s: each linear layer's weight-gradient GEMM (k x n over the m tokens,
    fp32 accumulation), by hand for a dense GELU block on one device."""
    eff, _ = device_efficiency(CLUSTER.device)
    roof = Roofline(CLUSTER.device, eff, "bf16")
    sh = Shard(mbs=1, seq_len=2048, tp=1, cp=1, sp=False, ep=1, etp=1, attn=Attention.FLASH,
               dtype=DType.BF16, loss=LossKernel.UNFUSED)
    h, f = 1024, 4096
    shapes = [(3 * h, h), (h, h), (f, h), (h, f)]         # QKV, output, MLP up, MLP down
    want = sum(roof.gemm(k, n, 2048, out_bytes=WGRAD_ACCUMULATOR_BYTES)[0] for n, k in shapes)
    bc = block_compute(UNIFORM, roof, sh, moe=False)
    assert bc.wgrad_s == pytest.approx(want, rel=1e-12)
    assert 0 < bc.wgrad_s < bc.bwd_s


def test_moe_weight_gradients_include_the_local_experts() -> None:
    eff, _ = device_efficiency(CLUSTER.device)
    roof = Roofline(CLUSTER.device, eff, "bf16")
    sh = Shard(mbs=1, seq_len=2048, tp=1, cp=1, sp=False, ep=2, etp=1, attn=Attention.FLASH,
               dtype=DType.BF16, loss=LossKernel.UNFUSED)
    dense = block_compute(TINY_MOE.model_copy(update={"moe": None}), roof, sh, moe=False)
    moe = block_compute(TINY_MOE, roof, sh, moe=True)
    # 4 local experts of 512 each receive 2048 x 2 x 2 / 8 rows (or more: the slowest rank)
    least = 4 * sum(roof.gemm(k, n, 1024, out_bytes=WGRAD_ACCUMULATOR_BYTES)[0]
                    for n, k in ((2 * 512, 512), (512, 512)))
    assert moe.wgrad_s > least


def test_a_rank_holds_two_stages_and_pp_plus_one_micro_batches() -> None:
    """Rank r holds stage r and stage pp-1-r: the sum of their weights, gradients and
    optimizer states, and (pp - r) micro-batches of stage r's activations with (r + 1) of
    stage pp-1-r's, pp + 1 in all (Table 2); the fixed buffers once."""
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    plan = Plan(pp=4, dp=2, schedule="dualpipe")
    tables = _tables(UNIFORM, plan, wl)
    ranges = plan.stage_ranges(8)
    ranks = dualpipe_ranks(tables, ranges)
    one_f_one_b = _tables(UNIFORM, plan.model_copy(update={"schedule": Schedule.ONE_F_ONE_B}), wl)
    act = float(tables.sums("act", 0, 1))                  # one micro-batch of one stage
    for r in range(4):
        s = 3 - r
        mem = ranks.mems[r]
        assert mem["activations"] == pytest.approx((4 - r) * act + (r + 1) * act, rel=1e-12)
        assert mem["activations"] == pytest.approx(5 * act, rel=1e-12)
        for key in ("weights", "grads", "optimizer"):
            want = (float(tables.memory(r, *ranges[r])[key])
                    + float(tables.memory(s, *ranges[s])[key]))
            assert mem[key] == pytest.approx(want, rel=1e-12)
        # the same stage under 1F1B holds as many of its own micro-batches
        assert float(one_f_one_b.memory(r, *ranges[r])["activations"]) == pytest.approx(
            (4 - r) * act, rel=1e-12)
        both = (float(tables.memory(r, *ranges[r])["buffers"])
                + float(tables.memory(s, *ranges[s])["buffers"]))
        assert mem["buffers"] == pytest.approx(both - tables.extras["static_buffers"], rel=1e-12)
    assert ranks.mems[0] == ranks.mems[3] and ranks.mems[1] == ranks.mems[2]


@settings(max_examples=30, deadline=None)
@given(pp=st.sampled_from([2, 4, 8]), mbs=st.sampled_from([1, 2]), gb=st.sampled_from([32, 64, 128]),
       recompute=st.sampled_from(["none", "selective", "full"]))
def test_dualpipe_bubble_is_below_1f1b_and_the_breakdown_adds_up(pp: int, mbs: int, gb: int,
                                                                 recompute: str) -> None:
    """On equal stages (pp/2 - 1)(F + 2B - 3W) < (pp - 1)(F + B) for any W >= 0, so the
    DualPipe bubble is below 1F1B's; the breakdown adds up to the step time."""
    wl = TrainingWorkload(global_batch_size=gb, seq_len=1024)
    dp = 8 // pp
    if (gb // (dp * mbs)) < 2 * pp:
        return
    base = Plan(pp=pp, dp=dp, mbs=mbs, recompute=Recompute(recompute))
    dual = evaluate(UNIFORM, CLUSTER, wl, base.model_copy(update={"schedule": Schedule.DUALPIPE}),
                    devices=8)
    ofob = evaluate(UNIFORM, CLUSTER, wl, base, devices=8)
    assert dual.breakdown["bubble"] < ofob.breakdown["bubble"]
    assert sum(dual.breakdown.values()) == pytest.approx(dual.step_time_s, rel=1e-12)
    assert dual.peak_memory_gib > ofob.peak_memory_gib      # two stages' weights and states


def test_moe_all_to_all_hides_as_under_combined_1f1b() -> None:
    """DualPipe pairs each forward chunk with another micro-batch's backward chunk: the
    dispatch and combine hide by the combined-1F1B rule (tables.ep_overlap_exposed)."""
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    plan = Plan(pp=2, dp=4, ep=4, zero=1)
    ofob = evaluate(TINY_MOE, CLUSTER, wl, plan, devices=8)
    dual = evaluate(TINY_MOE, CLUSTER, wl, plan.model_copy(update={"schedule": Schedule.DUALPIPE}),
                    devices=8)
    assert ofob.breakdown["ep_comm"] > 0
    assert dual.breakdown["ep_comm"] < ofob.breakdown["ep_comm"]


def test_search_with_fixed_dualpipe_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """--fix schedule=dualpipe: every plan the search returns is a DualPipe plan, and its best
    equals the brute force of that space (even splits, as the search keeps them)."""
    monkeypatch.setattr("planner.api.map_best", lambda *args, **kwargs: None)
    rng = random.Random(7)
    compared = 0
    for _ in range(8):
        layers = rng.choice([4, 6, 8])
        model = UNIFORM.model_copy(update={"num_layers": layers,
                                           "vocab_size": rng.choice([0, 1000])})
        if rng.random() < 0.5:
            model = TINY_MOE.model_copy(update={"num_layers": layers})
        wl = TrainingWorkload(global_batch_size=rng.choice([16, 32]), seq_len=rng.choice([256, 512]))
        n = 4
        fixed = {"schedule": Schedule.DUALPIPE}
        if model.moe is not None:
            fixed["ep"] = rng.choice([1, 2])
        best, plan, _ = brute_force_best(model, CLUSTER, wl, n, limits=Limits(fixed=fixed))
        try:
            result = search(model, CLUSTER, wl, devices=n, top_k=3, fixed=fixed)
        except InfeasibleError:
            assert plan is None
            continue
        assert plan is not None
        assert result.best.estimate.step_time_s == pytest.approx(best, rel=1e-9)
        assert all("schedule=dualpipe" in str(p.plan["plan"]) and p.plan["schedule"] == "dualpipe"
                   for p in result.top)
        compared += 1
    assert compared >= 5


def test_search_bounds_hold_for_dualpipe_plans() -> None:
    from collections import Counter

    from search.driver import SearchState, _candidate_bound, _groups

    wl = TrainingWorkload(global_batch_size=64, seq_len=1024)
    state = SearchState(top_k=1, pruned=Counter())
    cluster = CLUSTER.job_view(8)
    fixed = {"schedule": Schedule.DUALPIPE}
    checked = 0
    for g in _groups(UNIFORM, cluster, wl, 8, Limits(fixed=fixed), state):
        d = g.degrees
        plan = Plan(tp=d.tp, cp=d.cp, pp=d.pp, dp=d.dp, mbs=g.mbs, recompute=g.recompute,
                    sp=g.sp, schedule="dualpipe")
        m = 64 // (d.dp * g.mbs)
        if d.pp % 2 or m % 2 or m < 2 * d.pp:
            continue
        step = evaluate(UNIFORM, cluster, wl, plan, devices=8).step_time_s
        assert g.bound_s <= step * (1 + 1e-12)
        ctx, _ = make_context(UNIFORM, cluster, wl, plan)
        assert _candidate_bound(build_tables(ctx, m), plan, m) <= step * (1 + 1e-12)
        checked += 1
    assert checked >= 5


def test_deepseek_v3_dualpipe_evaluates() -> None:
    """DeepSeek-V3's own configuration (report Sec. 3.2: 2048 H800, PP16 DualPipe, EP64, ZeRO-1,
    FP8, RMSNorm and MLA up-projections recomputed) scores, with both stages on each rank."""
    model = load_model("deepseek-v3")
    wl = TrainingWorkload(global_batch_size=15360, seq_len=4096, dtype="fp8")
    plan = parse_plan("tp=1,pp=16,ep=64,zero=1,schedule=dualpipe,recompute=selective,"
                      "recompute_modules=layernorm+mla_up_proj", devices=2048)
    est = evaluate(model, load_cluster("hgx-h800"), wl, plan, devices=2048)
    ofob = evaluate(model, load_cluster("hgx-h800"), wl,
                    plan.model_copy(update={"schedule": Schedule.ONE_F_ONE_B}), devices=2048)
    assert est.step_time_s < ofob.step_time_s
    assert est.breakdown["bubble"] < ofob.breakdown["bubble"]


def test_cli_rejects_an_odd_pipeline() -> None:
    r = cli_runner().invoke(app, ["evaluate", "-m", "narayanan-1.7b", "-c", "dgx-a100",
                                  "--gpus", "8", "--global-batch", "64", "--seq-len", "2048",
                                  "--plan", "pp=8,schedule=dualpipe,mbs=1"])
    assert r.exit_code == 0, r.output
    r = cli_runner().invoke(app, ["evaluate", "-m", "narayanan-1.7b", "-c", "dgx-a100",
                                  "--gpus", "6", "--global-batch", "60", "--seq-len", "2048",
                                  "--plan", "pp=3,schedule=dualpipe"])
    assert r.exit_code == 2
    assert "schedule=dualpipe needs an even pp of at least 2" in r.output
    assert "Traceback" not in r.output


def test_two_rank_dualpipe_holds_the_whole_model_once() -> None:
    """pp=2: each rank holds both stages, so its weights are the whole model's, with a tied
    embedding and head counted once (they are one matrix on one rank; 1F1B at pp=2 keeps a
    copy on each stage)."""
    model = load_model("narayanan-1.7b")                   # GPT: tied embeddings
    assert model.tied_embeddings
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    est = evaluate(model, load_cluster("dgx-a100"), wl,
                   parse_plan("pp=2,dp=4,zero=1,schedule=dualpipe", devices=8), devices=8)
    assert est.memory_gib["weights"] * 2**30 / 2 == pytest.approx(model.params, rel=1e-12)
