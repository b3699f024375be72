"""Exhaustive enumeration of the search space, for small problems only (tests, `regress`).

Every plan the search considers, without its reductions: both SP settings, all 24 rank
orders, and every split of the layers into stages (vpp = 1; the even one under DualPipe,
whose rank pairs stage k with stage pp-1-k), each scored by the public
`planner.api.evaluate`. Exponential; guarded by `max_plans`.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations, permutations

from planner.api import evaluate
from planner.errors import PlanError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import DEFAULT_ORDER, Plan, Schedule
from planner.workload import TrainingWorkload
from search import space
from search.space import Limits


def splits(num_layers: int, pp: int) -> list[tuple[int, ...]]:
    """Every way to give pp stages at least one block each."""
    out = []
    for cuts in combinations(range(1, num_layers), pp - 1):
        bounds = (0, *cuts, num_layers)
        out.append(tuple(bounds[k + 1] - bounds[k] for k in range(pp)))
    return out


def brute_force_best(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, devices: int,
                     *, limits: Limits | None = None, max_plans: int = 200_000
                     ) -> tuple[float, Plan | None, int]:
    """(best step time, its plan, plans scored); (inf, None, n) when nothing fits."""
    limits = limits or Limits()
    cluster = cluster.job_view(devices)
    best, best_plan, scored = float("inf"), None, 0
    for d in space.enumerate_degrees(model, wl, devices, cluster, limits, Counter()):
        for mbs in space.micro_batches(wl, d, limits):
            m = wl.global_batch_size // (d.dp * mbs)
            for plan in (p for ep in space.ep_options(model, d, limits)
                         for p in _plans(model, d, mbs, m, limits, ep)):
                scored += 1
                if scored > max_plans:
                    raise ValueError(f"more than {max_plans} plans: too large for brute force")
                try:
                    est = evaluate(model, cluster, wl, plan, devices=devices)
                except PlanError:
                    continue
                if est.fits and est.step_time_s < best:
                    best, best_plan = est.step_time_s, plan
    return best, best_plan, scored


def _plans(model: ModelSpec, d: space.Degrees, mbs: int, m: int, limits: Limits, ep: int):  # type: ignore[no-untyped-def]
    sps = [bool(limits.fixed["sp"])] if "sp" in limits.fixed else [False, True]
    orders = [tuple(limits.fixed["order"])] if "order" in limits.fixed else sorted(permutations(DEFAULT_ORDER))  # type: ignore[arg-type]
    for rc in space.recompute_options(limits):
        for sp in sps:
            for zero in space.zero_options(d.pp, limits):
                for vpp in space.vpp_options(model, d.pp, m, limits):
                    layouts = (space.interleaved_layouts(model.num_layers, d.pp, vpp)
                               if vpp > 1 or d.pp == 1 else
                               # DualPipe keeps its split even, in the search as here
                               [None] if limits.fixed.get("schedule") == Schedule.DUALPIPE
                               else splits(model.num_layers, d.pp))
                    overlaps = space.ep_overlap_options(model, d.pp, vpp, ep, rc, limits)
                    for order, layers, overlap in ((o, la, ov) for o in orders for la in layouts
                                                   for ov in overlaps):
                        yield Plan(tp=d.tp, cp=d.cp, pp=d.pp, dp=d.dp, ep=ep, mbs=mbs, recompute=rc,
                                   sp=sp, zero=zero, vpp=vpp, order=order, stage_layers=layers,
                                   ep_overlap=overlap,
                                   **space.held(limits))  # type: ignore[arg-type]
