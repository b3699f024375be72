"""Properties of the training cost model on small random dense models and plans.

- more bandwidth (intra-node, inter-node, memory) or more peak FLOP/s is never slower;
- ZeRO shards add back up to the unsharded states;
- memory per device never grows when tp or pp grows (the other degrees fixed);
- the step-time breakdown adds up to the step time, with no negative part.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cost_models.memory import StageParams, state_bytes
from cost_models.training import estimate_training
from planner import (
    Attention,
    ClusterSpec,
    DeviceSpec,
    DType,
    LinkSpec,
    ModelSpec,
    Optimizer,
    Plan,
    Recompute,
    Schedule,
    TrainingWorkload,
    load_cluster,
)
from planner.result import BREAKDOWN_KEYS, Estimate
from planner.validate import divisors, plan_problems, valid_tp

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TOY_DEVICE = DeviceSpec(name="toy", peak_flops_per_s={"bf16": 100e12, "fp32": 10e12},
                        memory_bytes=16 * 2**30, memory_bandwidth_bytes_per_s=1e12,
                        onchip_cache_bytes=32 * 2**20, power_w=300)
TOY_CLUSTER = ClusterSpec(   # the tiny_cluster fixture of conftest.py, at module scope
    name="toy-cluster", device=TOY_DEVICE, devices_per_node=2,
    intra_node=LinkSpec(name="fast", bandwidth_bytes_per_s=100e9, latency_s=1e-6),
    inter_node=LinkSpec(name="slow", bandwidth_bytes_per_s=10e9, latency_s=5e-6),
)
CLUSTERS = [TOY_CLUSTER, load_cluster("dgx-a100"), load_cluster("dgx-h100")]


@dataclass(frozen=True)
class Case:
    model: ModelSpec
    workload: TrainingWorkload
    plan: Plan


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    heads = draw(st.sampled_from([4, 8, 16]))
    d_head = draw(st.sampled_from([16, 32, 64, 128]))
    h = heads * d_head
    gated = draw(st.booleans())
    return ModelSpec(
        name="random", num_layers=draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12])), hidden_size=h,
        num_attention_heads=heads,
        num_kv_heads=draw(st.sampled_from([d for d in divisors(heads)])),
        ffn_hidden_size=draw(st.sampled_from([2 * h, 4 * h, 8 * h // 3 // 8 * 8])),
        activation="swiglu" if gated else "gelu",
        vocab_size=draw(st.sampled_from([0, 1000, 32000, 51200])),
        positional=draw(st.sampled_from(["rope", "learned"])),
        tied_embeddings=draw(st.booleans()), linear_bias=not gated,
        norm="rmsnorm" if gated else "layernorm",
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    model = draw(models())
    tp = draw(st.sampled_from(valid_tp(model)))
    pp = draw(st.sampled_from(divisors(model.num_layers)))
    dp = draw(st.sampled_from([1, 2, 4]))
    cp = draw(st.sampled_from([1, 1, 2]))
    mbs = draw(st.sampled_from([1, 2, 4]))
    per_stage = model.num_layers // pp
    vpp = draw(st.sampled_from([v for v in divisors(per_stage) if v <= 4])) if pp > 1 else 1
    micro = draw(st.integers(1, 8)) * (pp if vpp > 1 else 1)
    zero = draw(st.integers(0, 1 if pp > 1 else 3))
    plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, mbs=mbs, vpp=vpp, zero=zero,
                sp=draw(st.booleans()) and tp > 1,
                recompute=draw(st.sampled_from(list(Recompute))),
                attn=draw(st.sampled_from(list(Attention))))
    workload = TrainingWorkload(global_batch_size=dp * mbs * micro,
                                seq_len=draw(st.sampled_from([128, 512, 2048])),
                                dtype=draw(st.sampled_from([DType.BF16, DType.BF16, DType.FP32])),
                                optimizer=draw(st.sampled_from(list(Optimizer))))
    case = Case(model, workload, plan)
    assert plan_problems(model, workload, plan, plan.devices) == [], case
    return case


@st.composite
def dualpipe_cases(draw: st.DrawFn) -> Case:
    """A case of `cases()` turned into DualPipe where its pipeline allows it (pp even: one
    virtual stage, an even number of at least 2 pp micro-batches); the case unchanged where
    it does not."""
    case = draw(cases())
    plan = case.plan
    if plan.pp % 2:
        return case
    plan = plan.model_copy(update={"vpp": 1, "schedule": Schedule.DUALPIPE})
    micro = 2 * plan.pp * draw(st.integers(1, 3))
    workload = case.workload.model_copy(update={"global_batch_size": plan.dp * plan.mbs * micro})
    out = Case(case.model, workload, plan)
    assert plan_problems(case.model, workload, plan, plan.devices) == [], out
    return out


def run(case: Case, cluster: ClusterSpec, plan: Plan | None = None) -> Estimate:
    return estimate_training(case.model, cluster, case.workload, plan or case.plan)


def scaled(cluster: ClusterSpec, what: str, factor: float) -> ClusterSpec:
    if what in ("intra_node", "inter_node"):
        link = getattr(cluster, what)
        return cluster.model_copy(update={what: link.model_copy(
            update={"bandwidth_bytes_per_s": link.bandwidth_bytes_per_s * factor})})
    dev = cluster.device
    if what == "memory":
        dev = dev.model_copy(update={"memory_bandwidth_bytes_per_s":
                                     dev.memory_bandwidth_bytes_per_s * factor})
    else:
        dev = dev.model_copy(update={"peak_flops_per_s":
                                     {k: v * factor for k, v in dev.peak_flops_per_s.items()}})
    return cluster.model_copy(update={"device": dev})


# ----- faster hardware is never slower ----------------------------------------------------
@SETTINGS
@given(case=st.one_of(cases(), dualpipe_cases()), cluster=st.sampled_from(CLUSTERS),
       what=st.sampled_from(["intra_node", "inter_node", "memory", "flops"]),
       factor=st.sampled_from([1.01, 1.5, 2.0, 10.0]))
def test_faster_hardware_is_never_slower(case: Case, cluster: ClusterSpec, what: str,
                                         factor: float) -> None:
    base = run(case, cluster)
    fast = run(case, scaled(cluster, what, factor))
    assert fast.step_time_s <= base.step_time_s * (1 + 1e-12), (what, factor, base.breakdown,
                                                                fast.breakdown)


@SETTINGS
@given(case=st.one_of(cases(), dualpipe_cases()), cluster=st.sampled_from(CLUSTERS))
def test_hardware_changes_never_change_memory(case: Case, cluster: ClusterSpec) -> None:
    base = run(case, cluster)
    for what in ("intra_node", "inter_node", "memory", "flops"):
        assert run(case, scaled(cluster, what, 3.0)).peak_memory_gib == base.peak_memory_gib


# ----- ZeRO ------------------------------------------------------------------------------
@SETTINGS
@given(dense=st.floats(1e3, 1e12), dp=st.integers(1, 512), cp=st.sampled_from([1, 2, 4]),
       zero=st.integers(1, 3), dtype=st.sampled_from(list(DType)),
       optimizer=st.sampled_from(list(Optimizer)))
def test_zero_shards_add_back_up(dense: float, dp: int, cp: int, zero: int, dtype: DType,
                                 optimizer: Optimizer) -> None:
    """Stage z shards optimizer (z>=1), gradients (z>=2), weights (z>=3) over dp*cp; the
    shards times the group are the unsharded bytes, the unsharded kinds are untouched."""
    params = StageParams(dense=dense, expert=0.0, edp=dp * cp)
    full = state_bytes(params, Plan(dp=dp, cp=cp, zero=0), dtype, optimizer)
    part = state_bytes(params, Plan(dp=dp, cp=cp, zero=zero), dtype, optimizer)
    for kind, stage, f, p in zip(("weights", "grads", "optimizer"), (3, 2, 1), full, part):
        group = dp * cp if zero >= stage else 1
        assert abs(p * group - f) <= 1e-12 * f, kind


@SETTINGS
@given(case=cases(), cluster=st.sampled_from(CLUSTERS))
def test_zero_shards_add_back_up_in_the_estimate(case: Case, cluster: ClusterSpec) -> None:
    """One stage (with pp > 1 the most loaded stage, whose kinds Estimate.memory_gib reports,
    can change with the ZeRO stage; ZeRO-2/3 need pp = 1 anyway)."""
    plan = case.plan.model_copy(update={"pp": 1, "vpp": 1})
    assume(plan.dp * plan.cp > 1)
    case = Case(case.model, case.workload, plan)
    full = run(case, cluster, plan.model_copy(update={"zero": 0})).memory_gib
    for zero in (1, 2, 3):
        part = run(case, cluster, plan.model_copy(update={"zero": zero})).memory_gib
        g = plan.dp * plan.cp
        for kind, stage in (("weights", 3), ("grads", 2), ("optimizer", 1)):
            want = full[kind] / (g if zero >= stage else 1)
            assert abs(part[kind] - want) <= 1e-9 * full[kind], (zero, kind)


# ----- memory never grows with tp or pp --------------------------------------------------
@SETTINGS
@given(case=cases(), cluster=st.sampled_from(CLUSTERS), data=st.data())
def test_memory_never_grows_with_tp(case: Case, cluster: ClusterSpec, data: st.DataObject) -> None:
    plan, model = case.plan, case.model
    bigger = [t for t in valid_tp(model) if t > plan.tp]
    assume(bigger)
    tp = data.draw(st.sampled_from(bigger))
    wider = plan.model_copy(update={"tp": tp})
    assume(not plan_problems(model, case.workload, wider, wider.devices))
    a, b = run(case, cluster), run(case, cluster, wider)
    assert b.peak_memory_gib <= a.peak_memory_gib * (1 + 1e-12), (a.memory_gib, b.memory_gib)


@SETTINGS
@given(case=cases(), cluster=st.sampled_from(CLUSTERS), data=st.data())
def test_memory_never_grows_with_pp(case: Case, cluster: ClusterSpec, data: st.DataObject) -> None:
    plan, model = case.plan, case.model
    bigger = [p for p in divisors(model.num_layers) if p > plan.pp]
    assume(bigger)
    pp = data.draw(st.sampled_from(bigger))
    deeper = plan.model_copy(update={"pp": pp, "zero": min(plan.zero, 1), "vpp": 1})
    shallow = plan.model_copy(update={"zero": min(plan.zero, 1), "vpp": 1})
    assume(not plan_problems(model, case.workload, deeper, deeper.devices))
    a, b = run(case, cluster, shallow), run(case, cluster, deeper)
    # Going from pp=1 to pp>1 adds the stage-boundary send/receive buffers (2 x mbs*s/cp*h
    # 16-bit activations), which a tiny model's halved weights need not outweigh; beyond
    # pp=2 they stay the same. With pp dividing the layers, the first stage's p in-flight
    # micro-batches of L/p blocks never exceed the L blocks of one micro-batch at pp=1.
    s_local = case.workload.seq_len / plan.cp
    p2p = 2 * plan.mbs * s_local * model.hidden_size * 2 / 2**30 if plan.pp == 1 else 0.0
    assert b.peak_memory_gib <= (a.peak_memory_gib + p2p) * (1 + 1e-12), (a.memory_gib,
                                                                          b.memory_gib)


# ----- the breakdown ---------------------------------------------------------------------
@SETTINGS
@given(case=st.one_of(cases(), dualpipe_cases()), cluster=st.sampled_from(CLUSTERS))
def test_breakdown_adds_up_to_the_step_time(case: Case, cluster: ClusterSpec) -> None:
    est = run(case, cluster)
    assert tuple(est.breakdown) == BREAKDOWN_KEYS
    assert all(v >= 0 for v in est.breakdown.values()), est.breakdown
    assert abs(sum(est.breakdown.values()) - est.step_time_s) <= 1e-9 * est.step_time_s
    assert est.step_time_s > 0
    assert abs(sum(est.memory_gib.values()) - est.peak_memory_gib) <= 1e-9 * est.peak_memory_gib
    assert est.fits == (est.over_memory_gib == 0)
