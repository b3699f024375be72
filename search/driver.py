"""The search loop: enumerate, bound, partition, score, keep the k best.

Exactness: candidates are grouped by (degrees, micro-batch, recomputation, SP); each group
gets a lower bound on its step time, m * (compute + recompute of all blocks, embedding and
head) / pp, which no plan of the group can beat (the pipeline takes at least m times its
slowest stage, which is at least the average stage, and every other term is >= 0). Groups are
visited in increasing bound order and a group is skipped only when its bound exceeds the
k-th best step time found so far, so the k best plans of the whole space are returned.
Within a group, every ZeRO stage, virtual-stage count and layout class is scored, and the
stage split is the DP optimum (search/layer_partition.py) under each device's memory.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from cost_models.compute import memoised_blocks
from cost_models.memory import in_flight_microbatches
from cost_models.tables import StageTables, build_memory_tables, build_tables
from cost_models.training import dualpipe_ranks, make_context, p2p_sync_s, step_from_stages
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Plan, Recompute, Schedule
from planner.validate import plan_problems
from planner.workload import TrainingWorkload
from search import space
from search.layer_partition import partition_layers
from search.space import Degrees, Limits, held


@dataclass(order=True, frozen=True)
class Found:
    """A scored plan, ordered by step time, then peak memory, then plan string (determinism)."""

    step_time_s: float
    peak_memory_bytes: float
    key: str
    plan: Plan = field(compare=False)

    @property
    def family(self) -> tuple[object, ...]:
        """Plans that differ only in ZeRO stage, recomputation or layout order."""
        p = self.plan
        return (p.tp, p.pp, p.dp, p.cp, p.ep, p.etp, p.mbs, p.vpp, p.sp, p.stage_layers)


@dataclass
class SearchState:
    """Mutable bookkeeping of one search run (local to `run_search`)."""

    top_k: int
    best: list[Found] = field(default_factory=list)
    pruned: Counter[str] = field(default_factory=Counter)
    candidates: int = 0
    cut: bool = False
    orders: dict[Degrees, list[tuple[str, ...]]] = field(default_factory=dict)  # per search
    # smallest micro-batch size at which a group (its degrees, ep, sp and recomputation)
    # was found not to fit: _expand prunes the same group at that size or larger unchecked
    unfit_mbs: dict[tuple[Degrees, int, bool, Recompute], int] = field(default_factory=dict)

    def kth(self) -> float:
        return self.best[-1].step_time_s if len(self.best) >= self.top_k else np.inf

    def offer(self, found: Found) -> None:
        """Keep the k best; of an exact tie within one family, only the least memory."""
        for f in self.best:
            if f.key == found.key:
                return
            if f.family == found.family and f.step_time_s == found.step_time_s:
                if found.peak_memory_bytes >= f.peak_memory_bytes:
                    return
                self.best.remove(f)
                break
        self.best.append(found)
        self.best.sort()
        del self.best[self.top_k:]


@dataclass(frozen=True)
class Group:
    degrees: Degrees
    mbs: int
    recompute: Recompute
    sp: bool
    bound_s: float
    ep: int = 1


def _base_plan(d: Degrees, g_mbs: int, rc: Recompute, sp: bool, limits: Limits, ep: int) -> Plan:
    return Plan(tp=d.tp, cp=d.cp, pp=d.pp, dp=d.dp, ep=ep, mbs=g_mbs, recompute=rc, sp=sp,
                **held(limits))  # type: ignore[arg-type]


def _work_per_microbatch(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload,
                         tp: int, cp: int, sp: bool, mbs: int, attn: object, ep: int = 1,
                         etp: int = 1, loss: object = None,
                         modules: tuple[str, ...] = ("core_attn",)) -> dict[Recompute, float]:
    """Per recomputation mode, a lower bound on sum_k C_k for one micro-batch: compute and
    recompute of every block, embedding and head (with the plan's own shard, ep and etp
    included: they change the expert GEMMs), plus TP all-reduces on the best links a tp
    group can have. Communication of other kinds is >= 0 and left out."""
    from cost_models.comm import GroupLinks, all_reduce_s, intra_bandwidth
    from cost_models.compute import (Roofline, Shard, block_compute, embedding_compute,
                                     head_compute, module_recompute, roof_bytes)
    from cost_models.efficiency import device_efficiency

    eff, _ = device_efficiency(cluster.device)
    roof = Roofline(cluster.device, eff, wl.dtype)
    sh = Shard(mbs=mbs, seq_len=wl.seq_len, tp=tp, cp=cp, sp=sp, ep=ep, etp=etp, attn=attn,  # type: ignore[arg-type]
               dtype=wl.dtype, loss=loss if loss is not None else Plan().loss)  # type: ignore[arg-type]
    n_moe = model.num_moe_layers
    comp = rec_full = rec_sel = 0.0
    for moe, count in ((False, model.num_layers - n_moe), (True, n_moe)):
        if count:
            bc = block_compute(model, roof, sh, moe=moe)
            comp += count * (bc.fwd_s + bc.bwd_s)
            rec_full += count * bc.fwd_s
            rec_sel += count * module_recompute(model, roof, sh, modules, moe=moe)[0]
    ef, eb = embedding_compute(model, roof, sh)
    hf, hb, _ = head_compute(model, roof, sh)
    comp += ef + eb + hf + hb
    # The layout order decides the tp group's links (comm.group_links): inside a node the
    # intra-node bandwidth and latency; across nodes at most the intra-node bandwidth, with
    # the inter-node latency. The best of both bounds every order, also on a cluster whose
    # inter-node latency is below its intra-node one; on a full mesh the bandwidth is that of
    # as many members as one node can hold (comm.intra_bandwidth grows with them). Its
    # latency is a tree over tp nodes of one member each at the lower of the two latencies:
    # 2 log2(tp) steps, no more than any layout's ring or tree (comm.ring_tree_latency; a
    # node's chain of k members is k-1 >= log2(k) steps).
    alpha = min(cluster.intra_node.latency_s, cluster.inter_node.latency_s)
    # a pair may be one package's two dies, whose in-package link is the faster (pair=True)
    best = GroupLinks(tp, intra_bandwidth(cluster, min(tp, cluster.devices_per_node), pair=True),
                      alpha, True, 1, alpha)
    ar = 2 * all_reduce_s(best, sh.tokens * model.hidden_size * roof_bytes(wl.dtype)) if tp > 1 else 0.0
    per_pass = model.num_layers * ar
    return {Recompute.NONE: comp + 2 * per_pass,
            Recompute.SELECTIVE: comp + rec_sel + 2 * per_pass,
            Recompute.FULL: comp + rec_full + 3 * per_pass}


def _groups(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, devices: int,
            limits: Limits, state: SearchState) -> list[Group]:
    """All groups with their lower bounds, in increasing bound order. The pipeline takes at
    least (m + (pp-1)/v) * sum_k C_k / pp for the largest allowed v (module docstring)."""
    out = []
    attn = limits.fixed.get("attn", Plan().attn)
    etp = int(limits.fixed.get("etp") or 1)  # type: ignore[call-overload]
    loss = limits.fixed.get("loss", Plan().loss)
    modules = tuple(limits.fixed.get("recompute_modules") or ("core_attn",))  # type: ignore[arg-type]
    cache: dict[tuple[int, int, bool, int, int], dict[Recompute, float]] = {}
    dualpipe = limits.fixed.get("schedule") == Schedule.DUALPIPE
    for d in space.enumerate_degrees(model, wl, devices, cluster, limits, state.pruned):
        for mbs in space.micro_batches(wl, d, limits):
            m = wl.global_batch_size // (d.dp * mbs)
            vmax = max(space.vpp_options(model, d.pp, m, limits))
            for ep in space.ep_options(model, d, limits):
                for sp in space.sp_options(d.tp, limits, state.pruned):
                    key = (d.tp, d.cp, sp, mbs, ep)
                    if key not in cache:
                        cache[key] = _work_per_microbatch(model, cluster, wl, d.tp, d.cp, sp,
                                                          mbs, attn, ep, etp, loss, modules)
                    # DualPipe's ranks each run m chunks of their two stages' mean: no
                    # bubble term bounds it below
                    ramp = 0.0 if dualpipe else (d.pp - 1) / vmax
                    for rc in space.recompute_options(limits):
                        bound = (m + ramp) * cache[key][rc] / d.pp
                        out.append(Group(d, mbs, rc, sp, bound, ep))
    out.sort(key=lambda g: (g.bound_s, g.degrees.tp, g.degrees.cp, g.degrees.pp, g.mbs,
                            g.ep, g.recompute.value, g.sp))
    return out


def score_plan(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, plan: Plan, *,
               cutoff: float = np.inf, tables: StageTables | None = None
               ) -> tuple[float, float, tuple[tuple[int, int], ...]] | str:
    """Best step time of `plan` over its stage splits, or a prune reason ("bound" when even
    its best split could not beat `cutoff`). `tables` may be passed when already built for
    this plan or for one that differs only in its ZeRO stage (see `_with_zero`)."""
    m = wl.global_batch_size // (plan.dp * plan.mbs)
    if tables is None:
        tables = build_tables(make_context(model, cluster, wl, plan)[0], m)
    else:
        tables = _with_zero(tables, plan)
    cap = cluster.device.memory_bytes
    L, pp = model.num_layers, plan.pp
    if _candidate_bound(tables, plan, m) > cutoff:
        return "bound"
    even = tuple(plan.stage_ranges(L))
    if plan.schedule == Schedule.DUALPIPE:
        # DualPipe pairs stage k with stage pp-1-k on one rank: the partition DP (which
        # balances single stages) does not apply; the split stays even or as given
        ranks = dualpipe_ranks(tables, even)
        return (ranks.step(m), ranks.peak(), even) if ranks.peak() <= cap else "memory"
    even_fits = all(tables.memory_total(k, a, b) <= cap for k, (a, b) in enumerate(even))
    if pp == 1 or plan.vpp > 1:
        return _scored(tables, even) if even_fits else "memory"
    weight = float(m - 1)
    width = L - pp + 1
    if weight > 0:
        # 1F1B's step is at least (m-1) x its slowest stage: a stage slower than the even
        # split's whole objective per weight, or than the cutoff per weight (a split slower
        # than the k-th best plan cannot enter the result), is never chosen, which bounds
        # how many blocks a stage can take.
        bound = cutoff / weight
        if even_fits:
            times = [float(tables.time(k, a, b)) for k, (a, b) in enumerate(even)]
            tails = [sum(float(x) for x in tables.tail(k, a, b)) for k, (a, b) in enumerate(even)]
            bound = min(bound, max(times) + max(tails) / weight)
        if np.isfinite(bound):
            per_layer = np.diff(sum(tables.prefix[kind] for kind in
                                    ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm")))
            width = min(width, int(bound / max(float(per_layer.min()), 1e-30)) + 1)
        if width < -(-L // pp):      # no split of L blocks into pp stages is that narrow
            return "bound"
    part = partition_layers(*_band(tables, pp, L, width, cap), num_layers=L,
                            weight=max(weight, 1e-12))
    if part is None:
        return "memory" if width == L - pp + 1 else "bound"
    return _scored(tables, part.ranges)


def _scored(tables: StageTables, ranges: tuple[tuple[int, int], ...]
            ) -> tuple[float, float, tuple[tuple[int, int], ...]]:
    times, tails, mems = tables.stage_profile(ranges)
    return step_from_stages(tables, times, tails), max(mems), ranges


def _band(tables: StageTables, pp: int, L: int, width: int, cap: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[pp, L, width] arrays of stage time, tail and memory feasibility for blocks i..i+w."""
    i = np.arange(L)[:, None]
    j = i + np.arange(width)[None, :]
    valid = j <= L - 1
    jc = np.minimum(j, L - 1)
    span = tables.span(i, jc)
    time_a = np.empty((pp, L, width))
    tail_a = np.empty((pp, L, width))
    ok = np.empty((pp, L, width), dtype=bool)
    # Stages other than the first and last differ only in micro-batches in flight, and
    # memory is affine in that count: evaluate the middle class once.
    mid = 1 if pp > 2 else None
    if mid is not None:
        mid_time = tables.time(mid, i, jc, span)
        mid_tail = sum(tables.tail(mid, i, jc, span))
        base = tables.memory_total(mid, i, jc, span, in_flight=0.0)
        slope = tables.memory_total(mid, i, jc, span, in_flight=1.0) - base
    for k in range(pp):
        if mid is not None and 0 < k < pp - 1:
            time_a[k], tail_a[k] = mid_time, mid_tail
            f = in_flight_microbatches(tables.ctx.plan, k, tables.num_microbatches)
            ok[k] = valid & (base + slope * f <= cap)
            continue
        time_a[k] = tables.time(k, i, jc, span)
        tail_a[k] = sum(tables.tail(k, i, jc, span))
        ok[k] = valid & (tables.memory_total(k, i, jc, span) <= cap)
    return time_a, tail_a, ok


def _candidate_bound(tables: StageTables, plan: Plan, m: int) -> float:
    """Lower bound on the step time of any split: sum_k C_k is split-invariant, and the
    pipeline is at least (m-1) * sum/pp + sum (1F1B) or (m + (pp-1)/v) * sum/pp, plus the
    interleaved schedule's blocking warmup/cooldown exchanges (its steady-state exchanges,
    hidden behind compute, count 0 here: tables.steady_p2p_s never goes below it)."""
    pp = plan.pp
    # all blocks: the last prefix sum (prefix[0] is 0, so this equals span(0, L - 1))
    layers = sum(float(tables.prefix[kind][-1])
                 for kind in ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm"))
    e = tables.extras
    total = layers + e["emb_compute"] + e["emb_tp_comm"] + e["head_compute"]
    if plan.schedule == Schedule.DUALPIPE:
        return m * total / pp + p2p_sync_s(plan, m, e["p2p"])
    if plan.vpp > 1:
        return (m + (pp - 1) / plan.vpp) * total / pp + p2p_sync_s(plan, m, e["p2p"])
    return (m - 1) * (total + pp * e["p2p"]) / pp + total + pp * e["p2p"]


def _with_zero(tables: StageTables, plan: Plan) -> StageTables:
    """The same tables for a plan that differs only in its ZeRO stage: the per-layer prefix
    sums and the stage extras do not depend on it (memory and tails read plan.zero when
    they are evaluated), so nothing is rebuilt."""
    return replace(tables, ctx=replace(tables.ctx, plan=plan))


def _with_vpp(tables: StageTables, plan: Plan) -> StageTables:
    """The same tables for a plan that differs only in its virtual stages (and ZeRO stage):
    the per-layer rows do not depend on vpp; of the extras only the point-to-point time does
    (one exchange per chunk boundary, training.p2p_s), and memory reads the plan's in-flight
    count when it is evaluated."""
    from cost_models.training import p2p_s

    ctx = replace(tables.ctx, plan=plan)
    return replace(tables, ctx=ctx, extras={**tables.extras, "p2p": p2p_s(ctx)})


def _group_can_fit(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, base: Plan,
                   m: int, zeros: list[int]) -> bool:
    """Whether any plan of the group can fit. Memory does not depend on the layout order;
    vpp = 1 holds the fewest micro-batches in flight; for pp > 1 a higher ZeRO stage never
    adds memory (stages 0/1), while for pp = 1 each allowed stage is checked (ZeRO-3's
    gather buffers can exceed what it saves when dp is small). Any stage split counts."""
    L, pp, cap = model.num_layers, base.pp, cluster.device.memory_bytes
    candidates = [max(zeros)] if pp > 1 else zeros
    first = base.model_copy(update={"zero": candidates[0], "vpp": 1})
    built = build_memory_tables(make_context(model, cluster, wl, first)[0], m)
    for zero in candidates:
        tables = _with_zero(built, base.model_copy(update={"zero": zero, "vpp": 1}))
        if pp == 1:
            if tables.memory_total(0, 0, L - 1) <= cap:
                return True
            continue
        if _split_fits(tables, pp, L, cap):
            return True
    return False


def _split_fits(tables: StageTables, pp: int, L: int, cap: float) -> bool:
    """Whether some split of L blocks into pp non-empty stages fits every stage's memory.
    Greedy is exact: a stage's memory only grows when its block range grows, so giving each
    stage the longest range that fits (leaving one block per later stage) ends every stage
    at or after any feasible split's boundary, and the last stage's range is then a
    sub-range of that split's last range."""
    start, js = 0, np.arange(L)
    for k in range(pp):
        if k == pp - 1:
            return bool(tables.memory_total(k, start, L - 1) <= cap)
        last = L - (pp - k)
        ends = js[start:last + 1]
        fits = np.asarray(tables.memory_total(k, start, ends)) <= cap
        if not fits[0]:
            return False
        start = int(ends[np.flatnonzero(fits)[-1]]) + 1
    return True


def _expand(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, g: Group,
            limits: Limits, state: SearchState) -> None:
    d = g.degrees
    m = wl.global_batch_size // (d.dp * g.mbs)
    base = _base_plan(d, g.mbs, g.recompute, g.sp, limits, g.ep)
    zeros = space.zero_options(d.pp, limits)
    if "vpp" not in limits.fixed:
        # Memory grows with the micro-batch size at fixed everything else (vpp = 1, as
        # _group_can_fit checks): a stage holds min(in-flight count, m) micro-batches of mbs
        # samples each, min((pp - k) mbs, global / dp) samples (DualPipe: half the global
        # share), and the rest is linear in mbs or does not depend on it. Combined 1F1B's
        # extra block exists only while m > 1, so such groups are always checked.
        key = (d, g.ep, g.sp, g.recompute)
        floor = state.unfit_mbs.get(key)
        if floor is not None and g.mbs >= floor and not base.ep_overlap:
            state.pruned["memory_group"] += 1
            return
        if not _group_can_fit(model, cluster, wl, base, m, zeros):
            if not base.ep_overlap:
                state.unfit_mbs[key] = g.mbs      # below any earlier floor (else pruned above)
            state.pruned["memory_group"] += 1
            return
    if d not in state.orders:      # groups of the same degrees share their layout classes
        state.orders[d] = space.order_classes(d, cluster, limits)
    for order in state.orders[d]:
        by_overlap: dict[bool, StageTables] = {}    # one build per order and overlap setting
        for vpp, overlap in ((v, o) for v in space.vpp_options(model, d.pp, m, limits)
                             for o in space.ep_overlap_options(model, d.pp, v, g.ep, g.recompute,
                                                                   limits)):
            shared: StageTables | None = None      # one build serves every ZeRO stage
            for chunks, zero in ((c, z) for c in space.interleaved_layouts(model.num_layers,
                                                                            d.pp, vpp)
                                 for z in zeros):
                plan = base.model_copy(update={"order": order, "zero": zero, "vpp": vpp,
                                               "ep_overlap": overlap})
                if chunks is not None:        # Plan's validator turns the counts into chunks
                    plan = Plan(**{**plan.model_dump(exclude={"chunk_layers"}),
                                   "stage_layers": chunks})
                # Held-fixed values (--fix ep/etp/zero/vpp) can break a rule for some degrees;
                # such plans are not in the space (evaluate() would reject them).
                problems = plan_problems(model, wl, plan, plan.devices)
                if problems:
                    state.pruned[problems[0][0]] += 1
                    continue
                if shared is None and overlap in by_overlap:
                    shared = _with_vpp(by_overlap[overlap], plan)
                if shared is None:
                    shared = build_tables(make_context(model, cluster, wl, plan)[0], m)
                    by_overlap[overlap] = shared
                result = score_plan(model, cluster, wl, plan, cutoff=state.kth(), tables=shared)
                state.candidates += 1
                if isinstance(result, str):
                    state.pruned[result] += 1
                    continue
                step, peak, ranges = result
                counts = tuple(b - a + 1 for a, b in ranges)
                if counts != plan.layers_per_stage(model.num_layers):
                    plan = plan.model_copy(update={"stage_layers": counts})
                state.offer(Found(step, peak, plan.to_string(), plan))


def run_search(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, devices: int, *,
               top_k: int, limits: Limits, time_limit_s: float | None,
               progress: Callable[[int, int], None] | None = None) -> SearchState:
    """Search the whole space (or until the time limit) and return the k best plans."""
    with memoised_blocks():
        return _run_search(model, cluster, wl, devices, top_k=top_k, limits=limits,
                           time_limit_s=time_limit_s, progress=progress)


def _run_search(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, devices: int, *,
                top_k: int, limits: Limits, time_limit_s: float | None,
                progress: Callable[[int, int], None] | None) -> SearchState:
    start = time.perf_counter()
    state = SearchState(top_k=top_k)
    groups = _groups(model, cluster, wl, devices, limits, state)
    for n, g in enumerate(groups):
        if progress is not None:
            progress(n, len(groups))
        if g.bound_s > state.kth():
            state.pruned["bound"] += len(groups) - n
            break
        if (time_limit_s is not None and state.best
                and time.perf_counter() - start > time_limit_s):
            state.cut = True
            state.pruned["time_limit"] += len(groups) - n
            break
        _expand(model, cluster, wl, g, limits, state)
    if progress is not None:
        progress(len(groups), len(groups))
    return state
