"""Search over attention/expert separated plans, next to the conventional plans.

The space (enumerated in full, in a fixed order, so results are deterministic):
- the split: A attention devices (ranks 0..A-1) and E = N - A expert devices, every A from
  1 to N-1 (on whole nodes or not; `whole_nodes_only` keeps the node-aligned splits);
- attention: tp x dp = A, tp at most one node and dividing the heads;
- experts: ep x etp = E, ep dividing the routed experts, etp at most one node and dividing
  the expert hidden size (every routed expert is held exactly once);
- m, the ping-pong micro-batches, 1..MAX_MICROBATCHES; for training also mbs, the sequences
  per micro-batch, 1..MAX_MBS; dp x m (x mbs) must divide the batch (no padded sequences).
Structural rejects are counted by reason; scored plans that do not fit in memory are counted
as "memory". The rest are ranked by the time the mode is judged by (training: step time;
inference: TPOT, the same order as output tokens/s at a fixed batch), then the plan string.

Conventional plans for the same workload, scored by the existing cost models
(planner.api.evaluate for training, estimate_inference for inference): seed 004's TP=8,
PP=2 and TP=8+PP=2, filled to N devices with data parallelism (TP=8 on 16 devices is
tp=8, dp=2; PP=2 is pp=2, dp=8; TP=8+PP=2 is dp=1), with etp=tp in training as the
project's seed-004 baselines take it (Megatron-Core's default), and the best plan of the
conventional search (`meshplan search`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cost_models.separation import (
    SeparatedEstimate,
    SeparatedPlan,
    estimate_separated_inference,
    estimate_separated_training,
)
from planner.errors import InfeasibleError, PlanError, PlannerError, SpecError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.validate import divisors
from planner.workload import InferenceWorkload, TrainingWorkload

MAX_MICROBATCHES = 8
"""Largest ping-pong micro-batch count tried. MegaScale-Infer (arXiv:2504.02263 Sec. 4)
needs only enough micro-batches to cover the round trip (a few); more re-read the weights
in decode and shrink the GEMMs, which the cost model charges, so 8 bounds the space."""
MAX_MBS = 8
"""Largest training micro-batch (sequences per attention replica) tried."""

Workload = TrainingWorkload | InferenceWorkload


class ScoredSeparatedPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    plan: dict[str, int | None] = Field(description="attn_tp, attn_dp, ep, etp, m, mbs")
    estimate: SeparatedEstimate


class ConventionalResult(BaseModel):
    """A conventional (not separated) plan scored by the project's existing cost model."""

    model_config = ConfigDict(frozen=True)

    label: str
    plan: str
    time_s: float | None = Field(description="step time (training) or TPOT (inference)")
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_gib: float | None = None
    fits: bool | None = None
    vs_best_separated_pct: float | None = Field(
        description="100 * (time - best separated time) / best separated time")
    note: str = ""


class SeparationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: str
    top: list[ScoredSeparatedPlan]
    conventional: list[ConventionalResult]
    stats: dict[str, Any] = Field(description="candidates, pruned by reason, search_time_s")
    inputs: dict[str, Any] = Field(default_factory=dict)


def _batch(workload: Workload) -> int:
    return (workload.global_batch_size if isinstance(workload, TrainingWorkload)
            else workload.batch_size)


def enumerate_separated(model: ModelSpec, cluster: ClusterSpec, workload: Workload, devices: int,
                        pruned: Counter[str], *, whole_nodes_only: bool = False) -> Iterator[SeparatedPlan]:
    """Every separated plan of the space (module docstring), in a fixed order."""
    assert model.moe is not None
    node, batch = cluster.devices_per_node, _batch(workload)
    training = isinstance(workload, TrainingWorkload)
    for a in range(1, devices):
        if whole_nodes_only and a % node:
            continue
        for tp in divisors(a):
            if tp > node or model.num_attention_heads % tp:
                pruned["attn_tp"] += 1
                continue
            for ep in divisors(devices - a):
                etp = (devices - a) // ep
                if model.moe.num_experts % ep or etp > node or model.moe.expert_ffn_hidden_size % etp:
                    pruned["expert_split"] += 1
                    continue
                for m in range(1, MAX_MICROBATCHES + 1):
                    for mbs in (range(1, MAX_MBS + 1) if training else (None,)):
                        if batch % ((a // tp) * m * (mbs or 1)):
                            pruned["batch_divisibility"] += 1
                            continue
                        yield SeparatedPlan(attn_tp=tp, attn_dp=a // tp, ep=ep, etp=etp,
                                            microbatches=m, mbs=mbs)


def score(model: ModelSpec, cluster: ClusterSpec, workload: Workload,
          plan: SeparatedPlan) -> SeparatedEstimate:
    if isinstance(workload, TrainingWorkload):
        return estimate_separated_training(model, cluster, workload, plan)
    return estimate_separated_inference(model, cluster, workload, plan)


def rank_key(est: SeparatedEstimate) -> tuple[float, str]:
    return est.time_s, est.plan


def _check(model: ModelSpec, devices: int, top_k: int) -> None:
    if model.moe is None or model.num_moe_layers == 0:
        raise PlanError(f"'{model.name}' is dense: attention/expert separation needs an MoE "
                        "model (experts to separate); use 'meshplan search' for dense models")
    if devices < 2:
        raise SpecError(f"separation needs at least 2 devices (one per group), got {devices}; "
                        "use --gpus 2 or more")
    if top_k < 1:
        raise SpecError(f"--top must be at least 1, got {top_k}")


def best_separated(model: ModelSpec, cluster: ClusterSpec, workload: Workload, devices: int, *,
                   top_k: int = 5, whole_nodes_only: bool = False,
                   stats: dict[str, Any] | None = None) -> list[ScoredSeparatedPlan]:
    """The `top_k` fastest separated plans that fit, fastest first.

    Raises:
        PlanError: a dense model. SpecError: fewer than 2 devices.
        InfeasibleError: no separated plan exists or none fits in memory.
    """
    _check(model, devices, top_k)
    cluster.devices_for(gpus=devices)
    pruned: Counter[str] = Counter(memory=0)
    ok, seen, smallest = [], 0, None
    for plan in enumerate_separated(model, cluster, workload, devices, pruned,
                                    whole_nodes_only=whole_nodes_only):
        seen += 1
        est = score(model, cluster, workload, plan)
        if not est.fits:
            pruned["memory"] += 1
            smallest = est if smallest is None or est.peak_memory_gib < smallest.peak_memory_gib else smallest
            continue
        ok.append((plan, est))
    if stats is not None:
        stats.update(candidates=seen, pruned=dict(sorted(pruned.items())))
    if not ok:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(pruned.items()) if v)
        hint = (f"; the smallest needs {smallest.peak_memory_gib:.1f} GiB ({smallest.plan}) of "
                f"{smallest.capacity_gib:.1f}" if smallest else "")
        raise InfeasibleError(f"no separated plan for {model.name} fits on {devices}x "
                              f"{cluster.device.name} (scored {seen}; pruned: {reasons or 'none'})"
                              f"{hint}; add devices or lower the batch")
    ok.sort(key=lambda pe: rank_key(pe[1]))
    return [ScoredSeparatedPlan(plan={"attn_tp": p.attn_tp, "attn_dp": p.attn_dp, "ep": p.ep,
                                      "etp": p.etp, "m": p.microbatches, "mbs": p.mbs},
                                estimate=e) for p, e in ok[:top_k]]


SEED_BASELINES = (("TP=8", 8, 1), ("PP=2", 1, 2), ("TP=8, PP=2", 8, 2))
"""Seed 004 Sec. 4.3 / 5.1 conventional plans as (label, tp, pp); dp fills the devices."""


def conventional(model: ModelSpec, cluster: ClusterSpec, workload: Workload, devices: int,
                 best_s: float) -> list[ConventionalResult]:
    """The seed's conventional plans and the conventional search's best, scored by the
    existing cost models on the same workload (module docstring)."""
    rows = []
    for label, tp, pp in SEED_BASELINES:
        if devices % (tp * pp):
            rows.append(ConventionalResult(label=label, plan=f"tp={tp},pp={pp}", time_s=None,
                                           vs_best_separated_pct=None,
                                           note=f"tp x pp = {tp * pp} does not divide {devices}"))
            continue
        dp = devices // (tp * pp)
        etp = f",etp={tp}" if isinstance(workload, TrainingWorkload) and tp > 1 else ""
        rows.append(_score_conventional(model, cluster, workload, devices, f"{label} (dp={dp})",
                                        f"tp={tp},pp={pp},dp={dp}{etp}", best_s))
    rows.append(_best_conventional(model, cluster, workload, devices, best_s))
    return rows


def _row(label: str, plan: str, best_s: float, *, time_s: float, tokens: float, mem: float,
         fits: bool, ttft: float | None = None, note: str = "") -> ConventionalResult:
    return ConventionalResult(label=label, plan=plan, time_s=time_s, ttft_s=ttft, tokens_per_s=tokens,
                              peak_memory_gib=mem, fits=fits,
                              vs_best_separated_pct=100 * (time_s - best_s) / best_s, note=note)


def _score_conventional(model: ModelSpec, cluster: ClusterSpec, workload: Workload, devices: int,
                        label: str, plan_text: str, best_s: float) -> ConventionalResult:
    from cost_models.inference import estimate_inference
    from planner.api import evaluate
    from planner.plan import parse_plan

    try:
        if isinstance(workload, TrainingWorkload):
            e = evaluate(model, cluster, workload, plan_text, devices=devices)
            return _row(label, plan_text, best_s, time_s=e.step_time_s, tokens=e.tokens_per_s,
                        mem=e.peak_memory_gib, fits=e.fits)
        ie = estimate_inference(model, cluster, workload, parse_plan(plan_text, devices=devices))
        return _row(label, plan_text, best_s, time_s=ie.tpot_s, tokens=ie.tokens_per_s,
                    mem=ie.peak_memory_gib, fits=ie.fits, ttft=ie.ttft_s)
    except PlannerError as err:
        return ConventionalResult(label=label, plan=plan_text, time_s=None,
                                  vs_best_separated_pct=None, note=f"cannot be evaluated: {err}")


def _best_conventional(model: ModelSpec, cluster: ClusterSpec, workload: Workload, devices: int,
                       best_s: float) -> ConventionalResult:
    label = "best conventional, tp within a node (meshplan search)"
    try:
        if isinstance(workload, TrainingWorkload):
            from planner.api import search

            r = search(model, cluster, workload, devices=devices, top_k=1)
            e = r.best.estimate
            return _row(label, e.plan, best_s, time_s=e.step_time_s, tokens=e.tokens_per_s,
                        mem=e.peak_memory_gib, fits=e.fits)
        from search.inference import search_inference

        ri = search_inference(model, cluster, workload, devices=devices, top_k=1)
        ie = ri.best.estimate
        return _row(label, ie.plan, best_s, time_s=ie.tpot_s, tokens=ie.tokens_per_s,
                    mem=ie.peak_memory_gib, fits=ie.fits, ttft=ie.ttft_s)
    except PlannerError as err:
        return ConventionalResult(label=label, plan="-", time_s=None, vs_best_separated_pct=None,
                                  note=f"no conventional plan: {err}")


def search_separated(model: ModelSpec, cluster: ClusterSpec, workload: Workload, *, devices: int,
                     top_k: int = 5, whole_nodes_only: bool = False) -> SeparationResult:
    """The best separated plans and the conventional plans side by side."""
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    top = best_separated(model, cluster, workload, devices, top_k=top_k,
                         whole_nodes_only=whole_nodes_only, stats=stats)
    base = conventional(model, cluster, workload, devices, top[0].estimate.time_s)
    stats["search_time_s"] = time.perf_counter() - start
    return SeparationResult(
        mode=workload.mode, top=top, conventional=base, stats=stats,
        inputs={"model": model.model_dump(mode="json"), "cluster": cluster.model_dump(mode="json"),
                "workload": workload.model_dump(mode="json"), "devices": devices})
