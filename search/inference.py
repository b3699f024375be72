"""Exhaustive search over inference plans: every tp x pp x dp (x ep) scored by the inference
cost model (`cost_models.inference.estimate_inference`), ranked by output tokens per second.

The space (small; enumerated in full, in a fixed order, so results are deterministic):
- tp * pp * dp = devices; tp at most the devices of one node (unless --fix gives tp), tp
  divides the attention heads; pp at most the blocks; dp at most the batch (an idle replica
  is a plan error in the cost model).
- ep: 1 for a dense model; for an MoE model every divisor of tp that divides the experts
  (ep folded into tp), then every tp x g for g > 1 dividing dp (the experts spread over g
  replicas whose attention stays data-parallel, with redundant expert slots where ep does not
  divide the experts); see
  cost_models/inference.py. Each of the latter also with ep_overlap (two-batch overlap of
  the experts' all-to-all) when a replica serves at least two sequences.
- cp = 1 and the training-only keys (mbs, vpp, zero, recompute, sp) keep their defaults.
Each candidate is scored; those that do not fit in memory are dropped ("memory"), then those
whose TPOT exceeds `max_tpot_ms` ("tpot"), then those whose TTFT exceeds `max_ttft_ms`
("ttft": a serving SLO is usually both). The rest are ranked by tokens/s (descending),
then lower TPOT, then the plan string.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cost_models.inference import (InferenceEstimate, estimate_inference, splits_in_two,
                                   wide_ep_choices)
from planner.errors import InfeasibleError, SpecError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Plan
from planner.validate import divisors
from planner.workload import InferenceWorkload

FIXABLE = ("tp", "pp", "dp", "ep", "ep_overlap")
"""Plan keys --fix may hold for an inference search (cp=1 is accepted and ignored)."""


class ScoredInferencePlan(BaseModel):
    """One plan and its estimate."""

    model_config = ConfigDict(frozen=True)

    plan: dict[str, int | bool] = Field(description="the degrees tp, pp, dp, ep, and ep_overlap "
                                         "(two-batch overlap of the experts' all-to-all)")
    estimate: InferenceEstimate
    max_batch_size: int = Field(description="largest global batch that fits with this plan "
                                            "(estimate.max_batch_size per replica x dp)")


class InferenceSearchStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    candidates: int = Field(description="plans scored by the cost model")
    pruned: dict[str, int] = Field(description="plans dropped, by reason")
    search_time_s: float = Field(description="wall time (the only field that varies between runs)")


class InferenceSearchResult(BaseModel):
    """The best inference plans for one request batch."""

    model_config = ConfigDict(frozen=True)

    best: ScoredInferencePlan
    top: list[ScoredInferencePlan]
    max_batch_size: int = Field(description="largest global batch that fits with the best plan")
    stats: InferenceSearchStats
    notes: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description=(
        "what was searched: model and cluster specs (as data), workload and device count"))


def _check_fixed(fixed: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in fixed.items():
        if key == "cp" and value == 1:
            continue
        if key not in FIXABLE:
            raise SpecError(f"--fix '{key}' is not searched for inference; "
                            f"--mode inference can fix {', '.join(FIXABLE)}")
        out[key] = int(value)  # type: ignore[call-overload]
    return out


def enumerate_plans(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                    devices: int, fixed: dict[str, int], pruned: Counter[str]) -> list[Plan]:
    """Every inference plan of the space (module docstring), in a fixed order; structural
    rejects are counted in `pruned` (fixed-value mismatches are not counted)."""
    plans = []
    for tp in divisors(devices):
        if "tp" in fixed and fixed["tp"] != tp:
            continue
        if "tp" not in fixed and tp > cluster.devices_per_node:
            pruned["tp_beyond_node"] += 1
            continue
        if model.num_attention_heads % tp:
            pruned["tp_heads"] += 1
            continue
        for pp in divisors(devices // tp):
            dp = devices // (tp * pp)
            if ("pp" in fixed and fixed["pp"] != pp) or ("dp" in fixed and fixed["dp"] != dp):
                continue
            if pp > model.num_layers:
                pruned["pp_layers"] += 1
                continue
            if workload.batch_size % dp:
                # Replicas serve whole, equal shares of the batch; a padded share would
                # count sequences that were never requested in tokens/s.
                pruned["dp_batch"] += 1
                continue
            eps = ([e for e in divisors(tp) if model.moe.num_experts % e == 0]
                   + wide_ep_choices(model, tp, dp) if model.moe is not None else [1])
            for ep in eps:
                if "ep" in fixed and fixed["ep"] != ep:
                    continue
                # two-batch overlap: only where the experts' all-to-all exists (ep > tp) and
                # each replica's batch splits in two
                overlaps = ((False, True) if ep > tp and splits_in_two(workload, dp)
                            else (False,))
                for overlap in overlaps:
                    if "ep_overlap" in fixed and bool(fixed["ep_overlap"]) != overlap:
                        continue
                    plans.append(Plan(tp=tp, pp=pp, dp=dp, ep=ep, ep_overlap=overlap))
    return plans


def serving_plan_dict(plan: Plan) -> dict[str, int | bool]:
    """The keys an inference plan searches, as a result's plan object holds them."""
    return {"tp": plan.tp, "pp": plan.pp, "dp": plan.dp, "ep": plan.ep,
            "ep_overlap": plan.ep_overlap}


def _scored(plan: Plan, est: InferenceEstimate) -> ScoredInferencePlan:
    return ScoredInferencePlan(plan=serving_plan_dict(plan), estimate=est,
                               max_batch_size=est.max_batch_size * plan.dp)


def search_inference(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload, *,
                     devices: int, top_k: int = 5, max_tpot_ms: float | None = None,
                     max_ttft_ms: float | None = None,
                     fixed: dict[str, Any] | None = None) -> InferenceSearchResult:
    """The best inference plans on `devices` devices, ranked by output tokens per second.

    Raises:
        SpecError: a --fix key that is not searched for inference, or top_k < 1.
        InfeasibleError: no plan exists, none fits the batch in memory, or none meets
            max_tpot_ms or max_ttft_ms (the message says which, and the largest batch that
            would fit).
    """
    start = time.perf_counter()
    cluster = cluster.job_view(devices)
    if top_k < 1:
        raise SpecError(f"top_k must be at least 1, got {top_k}")
    fx = _check_fixed(dict(fixed or {}))
    pruned: Counter[str] = Counter(memory=0, tpot=0)
    if max_ttft_ms is not None:
        pruned["ttft"] = 0
    plans = enumerate_plans(model, cluster, workload, devices, fx, pruned)
    if not plans:
        raise InfeasibleError(
            f"no inference plan for {model.name} on {devices}x {cluster.device.name} "
            f"(fixed: {fx or 'none'}; pruned: {_reasons(pruned)}); change --gpus or --fix")
    ok: list[ScoredInferencePlan] = []
    most_batch: ScoredInferencePlan | None = None      # largest global batch that fits anywhere
    fastest_fit: ScoredInferencePlan | None = None     # lowest TPOT among those that fit
    quickest: ScoredInferencePlan | None = None        # lowest TTFT among those within the TPOT
    for plan in plans:
        sp = _scored(plan, estimate_inference(model, cluster, workload, plan))
        if most_batch is None or sp.max_batch_size > most_batch.max_batch_size:
            most_batch = sp
        if not sp.estimate.fits:
            pruned["memory"] += 1
            continue
        if fastest_fit is None or sp.estimate.tpot_s < fastest_fit.estimate.tpot_s:
            fastest_fit = sp
        if max_tpot_ms is not None and sp.estimate.tpot_s * 1e3 > max_tpot_ms:
            pruned["tpot"] += 1
            continue
        if quickest is None or sp.estimate.ttft_s < quickest.estimate.ttft_s:
            quickest = sp
        if max_ttft_ms is not None and sp.estimate.ttft_s * 1e3 > max_ttft_ms:
            pruned["ttft"] += 1
            continue
        ok.append(sp)
    if not ok:
        assert most_batch is not None
        if fastest_fit is None:
            cap = most_batch.max_batch_size
            hint = (f"at most {cap} sequences fit (plan {_plan_str(most_batch)}); lower --batch "
                    "or --prompt-len/--output-len, or add devices" if cap > 0 else
                    "not even one sequence fits with any plan; add devices or use fp8")
            raise InfeasibleError(
                f"batch {workload.batch_size} x {workload.prompt_len + workload.output_len} "
                f"tokens of {model.name} does not fit on {devices}x {cluster.device.name} with "
                f"any of the {len(plans)} plans: {hint}")
        if quickest is None:
            raise InfeasibleError(
                f"no plan meets --max-tpot-ms {max_tpot_ms:g}: the fastest plan that fits "
                f"({_plan_str(fastest_fit)}) takes {fastest_fit.estimate.tpot_s * 1e3:.3f} ms per "
                f"token; raise the limit, lower --batch or add devices")
        within = f" within --max-tpot-ms {max_tpot_ms:g}" if max_tpot_ms is not None else ""
        raise InfeasibleError(
            f"no plan meets --max-ttft-ms {max_ttft_ms:g}: the quickest plan that fits{within} "
            f"({_plan_str(quickest)}) takes {quickest.estimate.ttft_s * 1e3:.1f} ms to the first "
            "token; raise the limit, lower --batch or --prompt-len, or add devices")
    ok.sort(key=lambda s: (-s.estimate.tokens_per_s, s.estimate.tpot_s, s.estimate.plan))
    best = ok[0]
    notes = []
    if best.max_batch_size > workload.batch_size:
        notes.append(f"the best plan fits up to {best.max_batch_size} sequences "
                     f"({best.estimate.max_batch_size} per replica); batch {workload.batch_size} "
                     "was asked")
    if workload.batch_size % best.plan["dp"]:
        notes.append(f"batch {workload.batch_size} is not a multiple of dp={best.plan['dp']}: "
                     f"each replica is scored with {best.estimate.batch_per_replica} sequences")
    return InferenceSearchResult(
        best=best, top=ok[:top_k], max_batch_size=best.max_batch_size,
        stats=InferenceSearchStats(candidates=len(plans), pruned=dict(sorted(pruned.items())),
                                   search_time_s=time.perf_counter() - start),
        notes=notes,
        inputs={"model": model.model_dump(mode="json"), "cluster": cluster.model_dump(mode="json"),
                "workload": workload.model_dump(mode="json"), "devices": devices})


def plan_text(plan: dict[str, int | bool]) -> str:
    """A scored inference plan as a --plan string: the degrees, and ep_overlap=on when set."""
    return ",".join(f"{k}={v}" for k, v in plan.items() if k != "ep_overlap") + (
        ",ep_overlap=on" if plan.get("ep_overlap") else "")


def _plan_str(sp: ScoredInferencePlan) -> str:
    return plan_text(sp.plan)


def _reasons(pruned: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(pruned.items())) or "none"
