"""The public entry points that need the cost model (and, later, the search).

Inputs may be specs or preset names/paths; plans may be `Plan` objects or `--plan` strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import LossKernel, Plan, Schedule, parse_plan, parse_plan_fields
from planner.presets import load_cluster, load_model
from planner.errors import InfeasibleError, PlanError, PlannerError, SpecError
from planner.result import (
    BaselineResult,
    Estimate,
    Explanation,
    MappingResult,
    ScoredPlan,
    SearchResult,
    SearchStats,
)
from planner.validate import check_plan
from planner.workload import InferenceWorkload, TrainingWorkload

if TYPE_CHECKING:
    from cost_models.inference import InferenceEstimate


def resolve(model: ModelSpec | str, cluster: ClusterSpec | str) -> tuple[ModelSpec, ClusterSpec]:
    """Specs from specs, preset names or file paths."""
    m = model if isinstance(model, ModelSpec) else load_model(model)
    c = cluster if isinstance(cluster, ClusterSpec) else load_cluster(cluster)
    return m, c


def evaluate(model: ModelSpec | str, cluster: ClusterSpec | str, workload: TrainingWorkload,
             plan: Plan | str, *, devices: int | None = None) -> Estimate:
    """Predict step time, throughput, utilisation and memory of one training plan.

    Args:
        model: a ModelSpec, preset name, model file or HF config.json path.
        cluster: a ClusterSpec, preset name or file.
        workload: the training step (global batch, sequence length, dtype, optimizer).
        plan: a Plan or a `--plan` string (then `devices` fills dp when it is left out).
        devices: the device count the plan must use; defaults to the plan's own product.

    Returns:
        The Estimate; `fits` is false (not an error) when memory is exceeded.

    Raises:
        PlanError: the plan breaks a rule (the message names it and the nearest valid values).
    """
    from cost_models.training import estimate_training

    return estimate_training(*_training_inputs(model, cluster, workload, plan, devices))


def _training_inputs(model: ModelSpec | str, cluster: ClusterSpec | str,
                     workload: TrainingWorkload, plan: Plan | str, devices: int | None
                     ) -> tuple[ModelSpec, ClusterSpec, TrainingWorkload, Plan]:
    """evaluate's and explain's inputs resolved and the plan checked (their Raises)."""
    m, c = resolve(model, cluster)
    if isinstance(plan, str):
        if devices is None:
            raise ValueError("a plan string needs devices= to fill in dp")
        plan = parse_plan(plan, devices=devices)
    n = plan.devices if devices is None else devices
    c.devices_for(gpus=n)
    c = c.job_view(n)
    check_plan(m, workload, plan, n)
    return m, c, workload, plan


def explain(model: ModelSpec | str, cluster: ClusterSpec | str, workload: TrainingWorkload,
            plan: Plan | str, *, devices: int | None = None) -> Explanation:
    """What one micro-batch of a training plan costs one device, operator by operator: each
    block type's GEMMs, attention core and memory-bound kernels (they add up to the block's
    compute exactly), its communication per pass, the LM head and the embedding. Arguments
    and errors as `evaluate`."""
    from cost_models.explain import explain_training

    return explain_training(*_training_inputs(model, cluster, workload, plan, devices))


SERVING_KEYS = ("tp", "pp", "dp", "ep", "ep_overlap", "cp")
"""--plan keys a serving plan takes (cp only as 1; the rest are training-only)."""


def serving_plan_fields(text: str) -> dict[str, object]:
    """The fields of a serving plan's --plan string (`parse_plan_fields`), refusing a
    training-only key with a PlanError that names the serving keys."""
    fields = parse_plan_fields(text)
    extra = [k for k in fields if k not in SERVING_KEYS]
    if extra:
        raise PlanError(f"plan key(s) {', '.join(extra)} apply to training only; a serving "
                        f"plan takes {', '.join(SERVING_KEYS[:5])}")
    return fields


def evaluate_inference(model: ModelSpec | str, cluster: ClusterSpec | str,
                       workload: InferenceWorkload, plan: Plan | str, *,
                       devices: int | None = None) -> InferenceEstimate:
    """Predict TTFT, TPOT, tokens/s and memory of one serving plan
    (`cost_models.inference.estimate_inference`; its docstring has every formula).

    Args:
        model: a ModelSpec, preset name, model file or HF config.json path.
        cluster: a ClusterSpec, preset name or file.
        workload: the request batch (batch, prompt and output lengths, dtype).
        plan: a Plan or a `--plan` string of tp, pp, dp, ep (dp fills the devices when left
            out; ep > tp spreads the experts over ep/tp replicas).
        devices: the device count the plan must use; defaults to the plan's own product.

    Returns:
        The InferenceEstimate; `fits` is false (not an error) when memory is exceeded.

    Raises:
        PlanError: a training-only plan key, a plan whose degrees do not multiply to
            `devices`, or a rule of the inference model (ep layout, cp > 1, idle replicas).
    """
    from cost_models.inference import estimate_inference

    m, c = resolve(model, cluster)
    if isinstance(plan, str):
        if devices is None:
            raise ValueError("a plan string needs devices= to fill in dp")
        serving_plan_fields(plan)
        plan = parse_plan(plan, devices=devices)
    n = plan.devices if devices is None else devices
    if plan.devices != n:
        raise PlanError(f"plan tp={plan.tp},pp={plan.pp},dp={plan.dp} uses {plan.devices} "
                        f"devices but {n} were given; make tp*pp*dp equal the device count "
                        "(or leave dp out to fill it)")
    c.devices_for(gpus=n)
    return estimate_inference(m, c.job_view(n), workload, plan)


def plan_dict(plan: Plan, num_layers: int) -> dict[str, object]:
    """The keys of the --plan string, plus `stages`: the inclusive block range of each stage."""
    d: dict[str, object] = {"tp": plan.tp, "pp": plan.pp, "dp": plan.dp, "cp": plan.cp,
                            "ep": plan.ep, "vpp": plan.vpp, "mbs": plan.mbs,
                            "sp": "on" if plan.sp else "off", "recompute": plan.recompute.value,
                            "zero": plan.zero, "attn": plan.attn.value, "order": "-".join(plan.order)}
    if plan.etp is not None:
        d["etp"] = plan.etp
    if plan.ep_overlap:
        d["ep_overlap"] = "on"
    d["dispatcher"] = plan.dispatcher.value
    if not plan.dp_overlap:
        d["dp_overlap"] = "off"
    if plan.recompute_modules is not None:
        d["recompute_modules"] = "+".join(plan.recompute_modules)
    if plan.loss != LossKernel.UNFUSED:
        d["loss"] = plan.loss.value
    if plan.offload:
        d["offload"] = plan.offload
    if plan.schedule != Schedule.ONE_F_ONE_B:
        d["schedule"] = plan.schedule.value
    d["layers"] = "/".join(str(n) for n in plan.layers_per_stage(num_layers))
    if plan.chunk_layers is not None:
        d["chunk_layers"] = "/".join(str(n) for n in plan.chunk_layers)
    d["stages"] = [list(r) for r in plan.stage_ranges(num_layers)]
    d["plan"] = plan.to_string()
    return d


_FIXED_VALUE_RULES = ("ep_dense", "ep_overlap_dense", "ep_experts", "etp_ffn",
                      "recompute_modules", "ep_overlap_recompute", "ep_overlap_mtp",
                      "offload_layers", "offload_pp", "offload_recompute")
"""Plan rules that held-fixed values break whatever the searched degrees are."""


def _check_fixed(model: ModelSpec, workload: TrainingWorkload, fixed: dict[str, object]) -> None:
    """Raise PlanError when a held-fixed value breaks a rule for every plan (ep on a dense
    model, recompute_modules=mla_up_proj without MLA, ...): a bad --fix, not a full cluster."""
    from planner.plan import Plan, Recompute
    from planner.validate import plan_problems

    fields = {k: v for k, v in fixed.items() if k in Plan.model_fields and k != "order"}
    if "recompute" not in fields:
        fields["recompute"] = (Recompute.SELECTIVE if fields.get("recompute_modules")
                               else Recompute.NONE)
    try:
        probe = Plan(**fields)  # type: ignore[arg-type]
    except (PlanError, ValueError):
        return            # a value that cannot even form a plan is reported by the search
    for key, message in plan_problems(model, workload, probe, probe.devices):
        if key in _FIXED_VALUE_RULES and not (key == "ep_overlap_mtp" and "pp" not in fields):
            raise PlanError(f"--fix {_fixed_text(fixed)}: {message}")


def _fixed_text(fixed: dict[str, object]) -> str:
    """Held-fixed plan values as --plan syntax (tuples joined by '+', booleans on/off)."""
    def text(v: object) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, tuple):
            return ("-" if all(x in ("tp", "cp", "dp", "pp") for x in v) else "+").join(map(str, v))
        return str(getattr(v, "value", v))
    return ",".join(f"{k}={text(v)}" for k, v in fixed.items())


def lower_bound_step_s(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                       devices: int) -> float:
    """Model FLOPs of one step spread over every device at the best matmul rate the cost
    model allows (MAMF x sustained clock): no plan the model scores can be faster."""
    from cost_models.efficiency import device_efficiency, matmul_rate

    eff, _ = device_efficiency(cluster.device)
    peak, fraction = matmul_rate(cluster.device, eff, workload.dtype)
    rate = peak * max(eff.matmul, eff.matmul_fp8, fraction) * eff.sustained_clock
    flops = 3 * model.training_forward_flops_per_token(workload.seq_len) * workload.tokens_per_step
    return flops / (devices * rate)


def search(model: ModelSpec | str, cluster: ClusterSpec | str, workload: TrainingWorkload, *,
           devices: int | None = None, top_k: int = 5, fixed: dict[str, object] | None = None,
           limits: dict[str, int] | None = None, time_limit_s: float | None = None,
           progress: object = None, memory_fraction: float = 1.0) -> SearchResult:
    """Find the best training plans for a model on a cluster.

    Args:
        model, cluster: specs, preset names or file paths.
        workload: the training step.
        devices: device count (default: one node of the cluster).
        top_k: how many plans to return.
        fixed: plan keys to hold fixed, e.g. {"tp": 8, "pp": 8} (as parsed from --fix).
        limits: upper bounds: max_tp, max_cp, max_pp, max_mbs.
        time_limit_s: stop after this many seconds and return the best found so far.
        progress: optional callable(done, total) for a progress bar.
        memory_fraction: plan within this share of each device's memory (0 < f <= 1): the
            search sees devices with that much memory, leaving the rest as headroom for the
            allocator retries near capacity that the step time does not include
            (cost_models/training.py NEAR_CAPACITY); the estimates, baselines and saved
            inputs keep the real devices.

    Returns:
        SearchResult: best and top plans with estimates, the published baselines that match
        the request (scored the same way), a lower bound and search statistics.

    Raises:
        InfeasibleError: no plan fits in memory (exit code 3 at the CLI).
    """
    import time as _time

    from search.driver import run_search
    from search.space import Limits

    start = _time.perf_counter()
    m, c = resolve(model, cluster)
    n = devices if devices is not None else c.devices_per_node
    c.devices_for(gpus=n)
    c = c.job_view(n)
    # the search sees devices with the asked share of their memory; the estimates, baselines
    # and saved inputs keep the real devices, so capacity and fill are reported as they are
    searched = with_memory_fraction(c, memory_fraction)
    _check_fixed(m, workload, dict(fixed or {}))
    lim = Limits(fixed=dict(fixed or {}), **(limits or {}))
    state = run_search(m, searched, workload, n, top_k=top_k, limits=lim,
                       time_limit_s=time_limit_s, progress=progress)  # type: ignore[arg-type]
    if not state.best:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(state.pruned.items()))
        baselines = score_baselines(m, c, workload, n, None)
        within = f" within {memory_fraction:.0%} of its memory" if memory_fraction < 1.0 else ""
        # Memory (and the bound, which only prunes beside a feasible plan) is the only reason
        # more devices could help; without it no split of these devices reached a score.
        if state.pruned.get("memory") or state.pruned.get("memory_group"):
            advice = "add devices, allow recomputation/ZeRO, or lower the micro-batch"
        else:
            advice = ("no tp x cp x pp x dp split of these devices suits the model and batch "
                      "(dp divides the global batch, pp is at most the layers, tp divides the "
                      "heads and is at most --max-tp): use fewer devices or a larger global "
                      "batch" + (", or relax --fix" if fixed else ""))
        raise InfeasibleError(
            f"no plan for {m.name} fits on {n}x {c.device.name}{within} with global batch "
            f"{workload.global_batch_size} (pruned: {reasons}); {advice}"
            + _baselines_summary(baselines), baselines)
    top = [ScoredPlan(plan=plan_dict(f.plan, m.num_layers),
                      estimate=evaluate(m, c, workload, f.plan, devices=n)) for f in state.best]
    best = top[0]
    bound = lower_bound_step_s(m, c, workload, n)
    notes = ["the time limit cut the search: these are the best plans found so far"] if state.cut else []
    if memory_fraction < 1.0:
        notes.append(f"planned within {memory_fraction:.0%} of each device's memory: "
                     f"{searched.device.memory_bytes / 2**30:.1f} GiB of {c.device.name}'s "
                     f"{c.device.memory_bytes / 2**30:.1f} GiB")
    return SearchResult(
        best=best, top=top,
        baselines=score_baselines(m, c, workload, n, best.estimate.step_time_s),
        lower_bound_step_time_s=bound,
        gap_to_lower_bound=best.estimate.step_time_s / bound - 1,
        stats=SearchStats(candidates=state.candidates, pruned=dict(sorted(state.pruned.items())),
                          search_time_s=_time.perf_counter() - start, cut=state.cut),
        device_mapping=map_best(m, c, workload, state.best[0].plan),
        notes=notes,
        inputs=search_inputs(m, c, workload, n),
    )


def with_memory_fraction(cluster: ClusterSpec, fraction: float) -> ClusterSpec:
    """The cluster with each device's memory cut to `fraction` of it (1.0: unchanged).

    Raises:
        SpecError: fraction outside (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise SpecError(f"--memory-fraction {fraction:g} is not in (0, 1]; give e.g. 0.9 to "
                        "keep a tenth of each device's memory free")
    if fraction == 1.0:
        return cluster
    device = cluster.device.model_copy(
        update={"memory_bytes": int(cluster.device.memory_bytes * fraction)})
    return cluster.model_copy(update={"device": device})


def search_inputs(model: ModelSpec, cluster: ClusterSpec, workload: object,
                  devices: int) -> dict[str, object]:
    """The `inputs` block of a search result: enough to rebuild every spec without presets."""
    return {"model": model.model_dump(mode="json"), "cluster": cluster.model_dump(mode="json"),
            "workload": workload.model_dump(mode="json"),  # type: ignore[attr-defined]
            "devices": devices}


def map_best(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
             plan: Plan) -> MappingResult | None:
    """Run the device-mapping program on a plan's per-step traffic by group: TP all-reduces
    of each block's activations (2 per pass), the data-parallel gradient reduction, the
    pipeline's activation exchanges and the context-parallel K/V exchanges."""
    from cost_models.compute import roof_bytes
    from search.device_mapping import Traffic, map_devices

    m = workload.global_batch_size // (plan.dp * plan.mbs)
    tokens = plan.mbs * workload.seq_len / plan.cp
    act = tokens * model.hidden_size * roof_bytes(workload.dtype)
    layers = max(plan.layers_per_stage(model.num_layers))
    passes = 3 if plan.recompute.value == "full" else 2
    grads = model.params / (plan.tp * plan.pp) * workload.grad_bytes
    traffic = [Traffic("tp", "all_reduce", act, 2 * passes * layers * m),
               Traffic("dp", "all_reduce", grads, 1),
               Traffic("pp", "p2p", act / plan.tp, 2 * m * plan.vpp),
               Traffic("cp", "p2p", 2 * tokens * model.kv_heads * model.d_head
                       * roof_bytes(workload.dtype) / plan.tp, 3 * (plan.cp - 1) * layers * m)]
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    try:
        dm = map_devices(cluster, sizes=sizes, traffic=[t for t in traffic if t.calls > 0],
                         time_limit_s=2.0)
    except ValueError:
        return None
    return MappingResult(
        members_per_node=dict(dm.members_per_node),
        order="-".join(dm.order) if dm.order else None,
        nested=dm.layout if dm.order is None else None,
        comm_time_s=dm.time_s, default_order_comm_time_s=dm.default_order_s,
        status=dm.status, gap=dm.gap)


def _baselines_summary(baselines: list[BaselineResult]) -> str:
    """'; the N published configurations ...' clause of the infeasible-search message."""
    scored = [b for b in baselines if b.estimate is not None]
    if not baselines:
        return ""
    if not scored:
        return (f"; its {len(baselines)} published configuration(s) cannot be evaluated as "
                "stated")
    fitting = [b for b in scored if b.estimate.fits]  # type: ignore[union-attr]
    if fitting:
        names = ", ".join(f"'{b.label}'" for b in fitting)
        return f"; published configuration(s) {names} fit but lie outside the searched space"
    least = min(scored, key=lambda b: b.estimate.peak_memory_gib)  # type: ignore[union-attr]
    e = least.estimate
    assert e is not None
    return (f"; its {len(baselines)} published configuration(s) do not fit either (least "
            f"memory: '{least.label}', {e.peak_memory_gib:,.1f} of {e.capacity_gib:.1f} GiB "
            "per device)")


def score_baselines(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                    devices: int, best_s: float | None) -> list[BaselineResult]:
    """The published configurations for this model that match the request, scored (the
    difference to the best plan left empty when there is none)."""
    from planner.baselines import inconsistencies, matching_baselines

    out = []
    for b in matching_baselines(model.name, cluster=cluster.name, gpus=devices,
                                global_batch=workload.global_batch_size, seq_len=workload.seq_len):
        problems = list(inconsistencies(b, model))
        est = None
        try:
            est = evaluate(model, cluster, workload, b.to_plan(), devices=devices)
        except (PlannerError, ValueError) as err:
            problems.append(f"cannot be evaluated as stated: {err}")
        diff = None if est is None or best_s is None else est.step_time_s - best_s
        out.append(BaselineResult(
            label=b.label, source=b.source, plan=b.plan, estimate=est, slower_than_best_s=diff,
            slower_than_best_pct=None if diff is None or best_s is None else 100 * diff / best_s,
            inconsistencies=problems, notes=b.notes))
    return out
