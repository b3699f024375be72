"""The search is exact: on random small problems it returns the same best step time as
brute-force enumeration of the same space.

The space is the one search/space.py documents, enumerated here independently and WITHOUT
its reductions:
- every tp x cp x pp x dp = N with tp <= devices per node, tp dividing the heads and the FFN
  size and dividing (or being a multiple of) the KV heads; cp > 1 only when the sequence
  splits into 2*cp chunks; pp <= layers; dp dividing the global batch;
- every micro-batch dividing the per-replica batch; recompute none/selective/full;
- sp off AND on (the search drops sp=off by dominance; the brute force does not);
- ZeRO 0-3 (0-1 when pp > 1); vpp 1, plus the divisors of layers/pp when layers % pp == 0
  and the micro-batches are a multiple of pp (interleaving needs equal chunks: even split);
- all 24 rank-layout orders;
- for vpp == 1, every split of the layers into pp non-empty stages.
Plans that `plan_problems` rejects (what makes `evaluate` raise PlanError) are skipped; of
those that fit in memory the smallest step time is the brute-force optimum.

Speed: `evaluate` costs ~1 ms, and the full space of one case holds up to ~10^5 plans, so
the brute force scores a plan from the same stage tables `evaluate` reads
(cost_models.tables; `estimate_training` is a thin layer over them) and runs the
24 orders through `make_context`, scoring each distinct set of links once: the layout order
reaches the cost model only through the links of make_context, so two orders with the same
links give the same estimate. Both shortcuts are checked literally against `evaluate` below
(`test_brute_force_shortcuts_agree_with_evaluate`), and the brute-force optimum of every case
is re-scored with `evaluate`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from itertools import combinations, permutations
from unittest import mock

import numpy as np
import pytest

from cost_models.compute import block_compute
from cost_models.tables import build_memory_tables, build_tables
from cost_models.training import make_context, p2p_sync_s, pipeline_time, step_time_of
from planner import ClusterSpec, DeviceSpec, LinkSpec, ModelSpec
from planner.api import evaluate, search
from planner.errors import InfeasibleError, PlanError
from planner.hardware import Topology
from planner.model import Activation, DType, MoESpec, Optimizer
from planner.plan import DEFAULT_ORDER, Attention, Dispatcher, Plan, Recompute, parse_plan
from planner.validate import divisors, plan_problems
from planner.workload import TrainingWorkload

GIB = 2**30
Fixed = dict[str, object]
Limits = dict[str, int]
NONE: dict = {}
CHUNKS, PER_CHUNK = 8, 25           # 200 random problems


# ----- random tiny problems ----------------------------------------------------------------

WEIGHT = {1: 2, 2: 3, 3: 2, 4: 2.5, 5: 1, 6: 1, 7: 1, 8: 1}


def random_problem(rng: random.Random) -> tuple[ModelSpec, ClusterSpec, TrainingWorkload, int]:
    hidden = rng.choice([64, 96, 128, 192, 256])
    heads = rng.choice([d for d in divisors(hidden) if d <= 16])
    kv = rng.choice([None, *[d for d in divisors(heads) if d < heads]]) if rng.random() < 0.5 else None
    ffn = rng.choice([2 * hidden, 4 * hidden, 3 * hidden, hidden + 8 * rng.randint(1, 20),
                      rng.randint(hidden, 4 * hidden)])
    # vocab >= 8: a vocabulary smaller than tp gives a sub-unit GEMM width, on which the cost
    # model divides by zero (reported, cost_models/efficiency.shape_efficiency).
    vocab = rng.choice([0, rng.randint(8, 1000), 1000])
    model = ModelSpec(
        name="rand", num_layers=rng.randint(2, 6), hidden_size=hidden,
        num_attention_heads=heads, num_kv_heads=kv, ffn_hidden_size=ffn,
        activation=rng.choice([Activation.GELU, Activation.SWIGLU]), vocab_size=vocab,
        tied_embeddings=rng.random() < 0.3, linear_bias=rng.random() < 0.3)
    per_node = rng.randint(1, 4)
    # Device counts 1-8 (whole nodes), the costly large ones less often.
    counts = [n for n in range(1, 9) if n <= per_node or n % per_node == 0]
    devices = rng.choices(counts, weights=[WEIGHT[n] for n in counts])[0]
    # Memory: the 1.5 GiB framework overhead plus a little, so that it binds sometimes.
    memory = int(1.5 * GIB + rng.choice([0.1, 0.2, 0.4, 20.0]) * GIB * rng.uniform(0.1, 1))
    device = DeviceSpec(
        name=rng.choice(["toy", "a100-sxm4-80gb", "h100-sxm5-80gb"]),
        peak_flops_per_s={"bf16": rng.choice([50e12, 312e12, 989e12]), "fp32": 20e12},
        memory_bytes=memory, memory_bandwidth_bytes_per_s=rng.choice([0.5e12, 2e12]),
        onchip_cache_bytes=40 * 2**20, power_w=400)
    intra = rng.choice([50e9, 300e9])
    if rng.random() < 0.8:
        links = ((intra, rng.choice([1e-6, 5e-6])),
                 (intra / rng.choice([1, 4, 30]), rng.choice([5e-6, 2e-5])))
    else:   # odd but valid clusters: the network faster, or quicker to start, than the node
        links = ((intra, rng.choice([1e-5, 1e-3])),
                 (intra * rng.choice([0.25, 1, 4]), rng.choice([0.0, 1e-6])))
    cluster = ClusterSpec(
        name="rand-cluster", device=device, devices_per_node=per_node,
        intra_node=LinkSpec(name="intra", bandwidth_bytes_per_s=links[0][0], latency_s=links[0][1]),
        inter_node=LinkSpec(name="inter", bandwidth_bytes_per_s=links[1][0], latency_s=links[1][1]))
    wl = TrainingWorkload(global_batch_size=rng.randint(1, 16),
                          seq_len=rng.choice([16, 24, 32, 48, 64, 100, 128, 256]),
                          dtype=rng.choice([DType.BF16, DType.BF16, DType.FP8]),
                          optimizer=rng.choice([Optimizer.ADAM, Optimizer.SGD]))
    if rng.random() < 0.3:   # AMD-style node: one link per pair of devices (drawn last, so the
        # draws above, and the problems of earlier seeds, are unchanged)
        mesh = cluster.intra_node.model_copy(update={"topology": Topology.FULL_MESH})
        cluster = cluster.model_copy(update={"intra_node": mesh})
    if rng.random() < 0.3:   # MI250X-style packages: devices 2i and 2i+1 share a faster link
        pair = cluster.intra_node.bandwidth_bytes_per_s * rng.choice([1, 4])
        cluster = cluster.model_copy(update={"intra_node": cluster.intra_node.model_copy(
            update={"pair_bandwidth_bytes_per_s": pair})})
    return model, cluster, wl, devices


# ----- the brute force ---------------------------------------------------------------------

def factorisations(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, n: int,
                   fixed: Fixed = NONE, limits: Limits = NONE) -> list[tuple[int, int, int, int]]:
    """Every tp x cp x pp x dp = n of the space, honouring held-fixed values and limits."""
    max_tp = limits.get("max_tp") or cluster.devices_per_node
    out = []
    for tp in divisors(n):
        if tp > max_tp or model.num_attention_heads % tp or model.ffn_hidden_size % tp:
            continue
        if model.kv_heads % tp and tp % model.kv_heads:
            continue
        for cp in divisors(n // tp):
            if cp > 1 and wl.seq_len % (2 * cp) or cp > limits.get("max_cp", n):
                continue
            for pp in divisors(n // tp // cp):
                dp = n // tp // cp // pp
                if pp > model.num_layers or pp > limits.get("max_pp", n) or wl.global_batch_size % dp:
                    continue
                degrees = {"tp": tp, "cp": cp, "pp": pp, "dp": dp}
                if all(fixed.get(k, v) == v for k, v in degrees.items()):
                    out.append((tp, cp, pp, dp))
    return out


def splits(L: int, pp: int) -> list[tuple[int, ...]]:
    """Every split of L blocks into pp non-empty stages, as block counts."""
    out = []
    for cuts in combinations(range(1, L), pp - 1):
        b = (0, *cuts, L)
        out.append(tuple(b[k + 1] - b[k] for k in range(pp)))
    return out


def order_classes(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload,
                  degrees: tuple[int, int, int, int]) -> list[tuple[str, ...]]:
    """One order per distinct set of links that make_context gives the 24 orders (the cost
    model's own links, not the search's link classes)."""
    tp, cp, pp, dp = degrees
    classes: dict[tuple, tuple[str, ...]] = {}
    for order in permutations(DEFAULT_ORDER):
        ctx, _ = make_context(model, cluster, wl, Plan(tp=tp, cp=cp, pp=pp, dp=dp, order=order))
        key = (ctx.tp_links, ctx.cp_links, ctx.dp_links, ctx.ep_links, ctx.pp_crosses_nodes)
        classes.setdefault(key, order)
    return list(classes.values())


def space(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, n: int, *,
          all_orders: bool = False, fixed: Fixed = NONE, limits: Limits = NONE):
    """Every plan of the documented space without stage_layers, with its split options
    (one order per link class unless all_orders). A held-fixed value replaces its option
    list, whether or not it suits the degrees (plan_problems sorts that out)."""
    L = model.num_layers
    extra = {k: fixed[k] for k in ("ep", "etp", "attn") if k in fixed}
    for degrees in factorisations(model, cluster, wl, n, fixed, limits):
        tp, cp, pp, dp = degrees
        orders = ([tuple(fixed["order"])] if "order" in fixed  # type: ignore[call-overload]
                  else list(permutations(DEFAULT_ORDER)) if all_orders
                  else order_classes(model, cluster, wl, degrees))
        per = wl.global_batch_size // dp
        for mbs in divisors(per):
            if mbs > limits.get("max_mbs", per) or fixed.get("mbs", mbs) != mbs:
                continue
            m = per // mbs
            vpps = [1]
            if pp > 1 and L % pp == 0 and m % pp == 0:
                vpps += [v for v in divisors(L // pp) if v > 1]
            elif pp > 1 and m % pp == 0:
                # pp does not divide the blocks: per-virtual-stage layouts, vpp dividing
                # ceil(L / pp) (search/space.py)
                vpps += [v for v in divisors(-(-L // pp)) if v > 1 and pp * v <= L]
            for rc in ([Recompute(fixed["recompute"])] if "recompute" in fixed else Recompute):
                for sp in ([fixed["sp"]] if "sp" in fixed else (False, True)):
                    zeros = range(4) if pp == 1 else range(2)
                    for zero in ([fixed["zero"]] if "zero" in fixed else zeros):
                        for vpp in ([fixed["vpp"]] if "vpp" in fixed else vpps):
                            # ep_overlap both ways; plan_problems drops it where it cannot run
                            overlaps = ([fixed["ep_overlap"]] if "ep_overlap" in fixed
                                        else (False, True) if model.moe is not None else (False,))
                            layouts: list = [None]
                            if vpp > 1 and L % pp and pp * vpp <= L:
                                n = pp * vpp
                                q, r = divmod(L, n)
                                layouts = [tuple(q + (c < r) for c in range(n))]
                                full = -(-L // n)       # full chunks, the remainder last
                                fill = (full,) * (n - 1) + (L - full * (n - 1),)
                                if (fill[-1] >= 0 and fill != layouts[0]
                                        and all(sum(fill[r::pp]) for r in range(pp))):
                                    layouts.append(fill)
                            for order, overlap, chunks in ((o, ov, c) for o in orders
                                                           for ov in overlaps for c in layouts):
                                plan = Plan(tp=tp, cp=cp, pp=pp, dp=dp, mbs=mbs, recompute=rc,
                                            sp=sp, zero=zero, vpp=vpp, order=order,
                                            ep_overlap=overlap, stage_layers=chunks, **extra)
                                yield plan, (splits(L, pp) if vpp == 1 else [None])


@dataclass
class BruteForce:
    best: float = math.inf                 # smallest step time of a plan that fits
    plan: Plan | None = None
    best_any: float = math.inf             # the same ignoring memory
    scored: int = 0
    over_memory: int = 0


def brute_force(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, n: int,
                fixed: Fixed = NONE, limits: Limits = NONE) -> BruteForce:
    """Score every plan of the space (all stage splits of a plan at once, as arrays)."""
    out = BruteForce()
    cluster = cluster.job_view(n)   # the cluster as the job sees it, as evaluate() and search do
    with mock.patch("cost_models.tables.block_compute", _memo_block_compute()):
        for plan, options in space(model, cluster, wl, n, fixed=fixed, limits=limits):
            if not plan_problems(model, wl, plan, n):      # else evaluate() raises PlanError
                _score(model, cluster, wl, plan, options, out)
    return out


def _memo_block_compute():
    """block_compute is a pure function of the model, the device/dtype and the shard: the
    brute force computes it once per distinct shard (a speed-up only)."""
    cache: dict[tuple, object] = {}

    def memo(model: ModelSpec, roof: object, sh: object, *, moe: bool) -> object:
        key = (model, roof.peak, roof.bw, roof.eff, roof.dtype, sh, moe)  # type: ignore[attr-defined]
        if key not in cache:
            cache[key] = block_compute(model, roof, sh, moe=moe)
        return cache[key]

    return memo


def _score(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, plan: Plan,
           options: list[tuple[int, ...] | None], out: BruteForce) -> None:
    """Score one plan under each of its stage splits (None = the even split)."""
    L, cap = model.num_layers, cluster.device.memory_bytes
    ctx, _ = make_context(model, cluster, wl, plan)
    m = wl.global_batch_size // (plan.dp * plan.mbs)
    tables = build_tables(ctx, m)
    counts = [plan.layers_per_stage(L) if c is None else c for c in options]
    ends = np.cumsum(np.array(counts), axis=1) - 1
    starts = ends - np.array(counts) + 1
    times, tails, fits = [], [], np.ones(len(counts), dtype=bool)
    for k in range(plan.pp):
        a, b = starts[:, k], ends[:, k]
        span = tables.span(a, b)
        times.append(tables.time(k, a, b, span))
        tails.append(sum(tables.tail(k, a, b, span)))
        fits &= tables.memory_total(k, a, b, span) <= cap
    for s, c in enumerate(counts):
        # cost_models.training.step_time_of, element by element of the arrays
        step = (pipeline_time(plan, m, [float(t[s]) for t in times],
                              plan.max_chunk_fraction(L))
                + max(float(g[s]) for g in tails) + p2p_sync_s(plan, m, tables.extras["p2p"]))
        out.scored += 1
        out.best_any = min(out.best_any, step)
        if not fits[s]:
            out.over_memory += 1
        elif step < out.best:
            out.best = step
            out.plan = plan if options[s] is None else plan.model_copy(update={"stage_layers": c})


def search_best(model: ModelSpec, cluster: ClusterSpec, wl: TrainingWorkload, n: int,
                top_k: int = 3):
    try:
        return search(model, cluster, wl, devices=n, top_k=top_k)
    except InfeasibleError:
        return None


# ----- the claim ---------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_search_matches_brute_force(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The device-mapping program runs on the best plan after the search and cannot change
    # which plan is best; it is left out here for speed (~20 ms a case).
    monkeypatch.setattr("planner.api.map_best", lambda *args, **kwargs: None)
    for seed in range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK):
        model, cluster, wl, n = random_problem(random.Random(seed))
        bf = brute_force(model, cluster, wl, n)
        want, want_plan = bf.best, bf.plan
        result = search_best(model, cluster, wl, n)
        if want == math.inf:
            assert result is None, (seed, "search found a plan the brute force says cannot fit",
                                    result.best.plan if result else None)
            continue
        assert want_plan is not None
        # The brute-force optimum, re-scored by the public evaluate().
        est = evaluate(model, cluster, wl, want_plan, devices=n)
        assert est.fits and est.step_time_s == pytest.approx(want, rel=1e-12), seed
        assert result is not None, (seed, "search says infeasible", want_plan.to_string())
        got = result.best.estimate.step_time_s
        assert got == pytest.approx(want, rel=1e-9), (
            seed, got, want, result.best.estimate.plan, want_plan.to_string())
        assert result.best.estimate.fits
        # The top list is sorted, starts with the best, and every estimate is evaluate()'s.
        times = [sp.estimate.step_time_s for sp in result.top]
        assert times == sorted(times) or all(
            b >= a * (1 - 1e-12) for a, b in zip(times, times[1:])), (seed, times)
        assert result.top[0] == result.best
        for sp in result.top:
            plan = parse_plan(str(sp.plan["plan"]), devices=n)
            assert sp.estimate == evaluate(model, cluster, wl, plan, devices=n), seed
            assert sp.estimate.fits
        assert len({sp.plan["plan"] for sp in result.top}) == len(result.top)


def _check_against_brute_force(seed: int, model: ModelSpec, cluster: ClusterSpec,
                               wl: TrainingWorkload, n: int, fixed: Fixed, limits: Limits) -> bool:
    """search(fixed, limits) == brute force of the same restricted space; True if feasible."""
    bf = brute_force(model, cluster, wl, n, fixed, limits)
    try:
        result = search(model, cluster, wl, devices=n, top_k=2, fixed=fixed, limits=limits)
    except InfeasibleError:
        result = None
    if bf.best == math.inf:
        assert result is None, (seed, fixed, limits, result.best.estimate.plan if result else None)
        return False
    assert bf.plan is not None
    assert result is not None, (seed, fixed, limits, bf.plan.to_string())
    assert result.best.estimate.step_time_s == pytest.approx(bf.best, rel=1e-9), (
        seed, fixed, limits, result.best.estimate.plan, bf.plan.to_string())
    for sp in result.top:
        plan = parse_plan(str(sp.plan["plan"]), devices=n)
        assert all(getattr(plan, k) == (tuple(v) if k == "order" else v)  # type: ignore[arg-type]
                   for k, v in fixed.items()), (seed, fixed, plan.to_string())
        assert plan.tp <= limits.get("max_tp", cluster.devices_per_node)
        assert plan.cp <= limits.get("max_cp", n) and plan.pp <= limits.get("max_pp", n)
        assert plan.mbs <= limits.get("max_mbs", wl.global_batch_size)
    return True


def random_fixed(rng: random.Random, n: int) -> tuple[Fixed, Limits]:
    """1-3 held-fixed plan keys (values that may or may not suit the problem) and limits."""
    choices: dict[str, object] = {
        "tp": rng.choice(divisors(n)), "pp": rng.choice(divisors(n)), "cp": rng.choice(divisors(n)),
        "dp": rng.choice(divisors(n)), "mbs": rng.randint(1, 4), "recompute": rng.choice(list(Recompute)),
        "sp": rng.random() < 0.5, "zero": rng.randint(0, 3), "vpp": rng.randint(1, 3),
        "order": rng.choice(list(permutations(DEFAULT_ORDER))),
        "attn": rng.choice(list(Attention)), "dp_overlap": rng.random() < 0.5,
    }
    fixed = {k: choices[k] for k in rng.sample(sorted(choices), rng.randint(1, 3))}
    limits = {k: rng.choice([1, 2, 4, 8]) for k in ("max_tp", "max_cp", "max_pp", "max_mbs")
              if rng.random() < 0.25}
    return fixed, limits


@pytest.mark.parametrize("chunk", range(2))
def test_search_with_fixed_values_and_limits_matches_brute_force(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """--fix and --max-*: the search over the restricted space equals the brute force of it
    (held-fixed values that break a rule for some degrees leave those plans out)."""
    monkeypatch.setattr("planner.api.map_best", lambda *args, **kwargs: None)
    feasible = 0
    for seed in range(20_000 + 25 * chunk, 20_000 + 25 * (chunk + 1)):
        rng = random.Random(seed)
        model, cluster, wl, n = random_problem(rng)
        fixed, limits = random_fixed(rng, n)
        feasible += _check_against_brute_force(seed, model, cluster, wl, n, fixed, limits)
    assert feasible >= 5


def random_moe_problem(rng: random.Random) -> tuple[ModelSpec, ClusterSpec, TrainingWorkload, int]:
    """A tiny mixture-of-experts model on a random problem (sequences of 64+ tokens: with
    fewer tokens than experts the cost model's expert GEMMs get a sub-unit width)."""
    dense, cluster, wl, n = random_problem(rng)
    experts = rng.choice([2, 4, 8])
    moe = MoESpec(num_experts=experts, top_k=rng.randint(1, 2),
                  expert_ffn_hidden_size=rng.choice([64, 128, 96]),
                  num_shared_experts=rng.choice([0, 0, 1]),
                  first_k_dense=rng.choice([0, 0, 1]))
    model = dense.model_copy(update={"moe": moe.model_dump(), "num_layers": max(2, dense.num_layers - 2)})
    # 16-bit gradients keep enough of these small-memory problems feasible to compare (the
    # dense problems above use the default, fp32 gradients)
    wl = wl.model_copy(update={"seq_len": rng.choice([64, 128, 256]), "grad_dtype": DType.BF16})
    return model, cluster, wl, n


@pytest.mark.parametrize("chunk", range(2))
def test_moe_search_with_fixed_ep_matches_brute_force(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expert parallelism is searched only when held fixed (--fix ep=..., etp=...): the
    search equals the brute force of that space, ep x etp folded into dp x cp x tp."""
    monkeypatch.setattr("planner.api.map_best", lambda *args, **kwargs: None)
    feasible = 0
    for seed in range(30_000 + 15 * chunk, 30_000 + 15 * (chunk + 1)):
        rng = random.Random(seed)
        model, cluster, wl, n = random_moe_problem(rng)
        assert model.moe is not None
        fixed: Fixed = {"ep": rng.choice([d for d in divisors(model.moe.num_experts) if d <= 4])}
        if rng.random() < 0.3:
            fixed["etp"] = rng.choice([1, 2])
        if rng.random() < 0.3:
            fixed["dispatcher"] = Dispatcher.ALLTOALL
        feasible += _check_against_brute_force(seed, model, cluster, wl, n, fixed, NONE)
    assert feasible >= 5


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_the_search_bounds_never_exceed_a_step_time(kind: str) -> None:
    """The two lower bounds the search prunes with are sound on random plans: a group's
    bound (search/driver._groups) and a candidate's bound over its splits
    (driver._candidate_bound) never exceed evaluate()'s step time of a plan they cover."""
    from collections import Counter

    from search.driver import SearchState, _candidate_bound, _groups
    from search.space import Limits as SpaceLimits

    checked = 0
    for seed in range(40_000, 40_060):
        rng = random.Random(seed)
        if kind == "dense":
            model, cluster, wl, n = random_problem(rng)
            fixed: Fixed = {}
        else:
            model, cluster, wl, n = random_moe_problem(rng)
            assert model.moe is not None
            fixed = {"ep": rng.choice([d for d in divisors(model.moe.num_experts) if d <= 4]),
                     "etp": rng.choice([1, 2])}
        cluster = cluster.job_view(n)   # as planner.api.search hands it to the driver
        state = SearchState(top_k=1, pruned=Counter())
        groups = _groups(model, cluster, wl, n, SpaceLimits(fixed=fixed), state)
        for g in rng.sample(groups, min(len(groups), 6)):
            d = g.degrees
            m = wl.global_batch_size // (d.dp * g.mbs)
            vpps = [1] + ([v for v in divisors(model.num_layers // d.pp) if v > 1]
                          if d.pp > 1 and model.num_layers % d.pp == 0 and m % d.pp == 0 else [])
            vpp = rng.choice(vpps)
            plan = Plan(tp=d.tp, cp=d.cp, pp=d.pp, dp=d.dp, mbs=g.mbs, recompute=g.recompute,
                        sp=g.sp, zero=rng.choice(range(4) if d.pp == 1 else range(2)), vpp=vpp,
                        order=rng.choice(list(permutations(DEFAULT_ORDER))),
                        stage_layers=rng.choice(splits(model.num_layers, d.pp)) if vpp == 1 else None,
                        **fixed)  # type: ignore[arg-type]
            if plan_problems(model, wl, plan, n):
                continue
            step = evaluate(model, cluster, wl, plan, devices=n).step_time_s
            assert g.bound_s <= step * (1 + 1e-12), (seed, plan.to_string(), g.bound_s, step)
            ctx, _ = make_context(model, cluster, wl, plan)
            assert _candidate_bound(build_tables(ctx, m), plan, m) <= step * (1 + 1e-12), (
                seed, plan.to_string())
            checked += 1
    assert checked >= 100, checked


def test_the_random_problems_exercise_the_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator reaches tp, cp and pp > 1, vpp > 1, uneven splits, infeasible cases and
    cases where memory changes the answer (otherwise the exactness test would prove little)."""
    monkeypatch.setattr("planner.api.map_best", lambda *args, **kwargs: None)
    seen = {"tp": 0, "cp": 0, "pp": 0, "vpp": 0, "uneven": 0, "infeasible": 0, "memory_binds": 0}
    for seed in range(CHUNKS * PER_CHUNK):
        model, cluster, wl, n = random_problem(random.Random(seed))
        for tp, cp, pp, _ in factorisations(model, cluster, wl, n):
            seen["tp"] += tp > 1
            seen["cp"] += cp > 1
            seen["pp"] += pp > 1
            seen["vpp"] += pp > 1 and model.num_layers % pp == 0
            seen["uneven"] += pp > 1 and model.num_layers % pp != 0
        if seed % 10 == 0:
            r = search_best(model, cluster, wl, n, top_k=1)
            if r is None:
                seen["infeasible"] += 1
                continue
            roomy = cluster.model_copy(update={"device": cluster.device.model_copy(
                update={"memory_bytes": 10**15})})
            free = search_best(model, roomy, wl, n, top_k=1)
            assert free is not None
            seen["memory_binds"] += free.best.estimate.step_time_s < r.best.estimate.step_time_s
    assert all(v >= 2 for v in seen.values()), seen


# ----- the brute force's shortcuts, literally ----------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_brute_force_shortcuts_agree_with_evaluate(seed: int) -> None:
    """On random plans of random problems: the table score equals evaluate(), and every
    layout order whose links equal another's gives the same Estimate numbers."""
    rng = random.Random(1000 + seed)
    checked = 0
    while checked < 8:
        model, cluster, wl, n = random_problem(rng)
        cluster = cluster.job_view(n)   # the cluster as evaluate() sees the job
        plans = [p for p, _ in space(model, cluster, wl, n)]
        if not plans:
            continue
        base = rng.choice(plans).model_copy(update={"order": DEFAULT_ORDER})
        if base.vpp == 1 and base.pp > 1:
            base = base.model_copy(update={"stage_layers": rng.choice(splits(model.num_layers, base.pp))})
        if plan_problems(model, wl, base, n):
            continue
        checked += 1
        by_links: dict[tuple, tuple] = {}
        for order in permutations(DEFAULT_ORDER):
            plan = base.model_copy(update={"order": order})
            est = evaluate(model, cluster, wl, plan, devices=n)
            ctx, _ = make_context(model, cluster, wl, plan)
            m = wl.global_batch_size // (plan.dp * plan.mbs)
            tables = build_tables(ctx, m)
            ranges = plan.stage_ranges(model.num_layers)
            assert step_time_of(tables, ranges) == pytest.approx(est.step_time_s, rel=1e-12)
            cap = cluster.device.memory_bytes
            assert est.fits == all(tables.memory_total(k, a, b) <= cap for k, (a, b) in enumerate(ranges))
            key = (ctx.tp_links, ctx.cp_links, ctx.dp_links, ctx.ep_links, ctx.pp_crosses_nodes)
            numbers = (est.step_time_s, est.peak_memory_gib, est.fits, tuple(est.breakdown.items()))
            assert by_links.setdefault(key, numbers) == numbers, (plan.to_string())


def test_literal_brute_force_on_a_tiny_case() -> None:
    """No shortcuts at all: evaluate() on every plan (all 24 orders, every split) of a tiny
    two-device problem (~500-1,500 plans); the search's best equals the smallest fitting step time."""
    for seed in range(5000, 5400):
        model, cluster, wl, n = random_problem(random.Random(seed))
        if n == 2 and model.num_layers <= 3 and wl.global_batch_size <= 2:
            break
    best, evaluated = math.inf, 0
    for plan, options in space(model, cluster, wl, n, all_orders=True):
        for counts in options:
            p = plan if counts is None else plan.model_copy(update={"stage_layers": counts})
            try:
                est = evaluate(model, cluster, wl, p, devices=n)
            except PlanError:
                continue
            evaluated += 1
            if est.fits:
                best = min(best, est.step_time_s)
    assert evaluated > 500
    assert best < math.inf
    result = search_best(model, cluster, wl, n)
    assert result is not None
    assert result.best.estimate.step_time_s == pytest.approx(best, rel=1e-9)
    assert best == pytest.approx(brute_force(model, cluster, wl, n).best, rel=1e-12)


# ----- determinism -------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["preset", "random"])
def test_search_is_deterministic(which: str) -> None:
    if which == "preset":
        args = ("narayanan-7.5b", "dgx-a100", TrainingWorkload(global_batch_size=512, seq_len=2048), 128)
    else:
        args = next(p for s in range(100) if search_best(*(p := random_problem(random.Random(s)))))
    model, cluster, wl, n = args
    a = search(model, cluster, wl, devices=n, top_k=5)
    b = search(model, cluster, wl, devices=n, top_k=5)
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    da["stats"].pop("search_time_s")
    db["stats"].pop("search_time_s")
    assert da == db
    ja, jb = (re.sub(r'"search_time_s":[^,}]*', '"search_time_s":T', r.model_dump_json())
              for r in (a, b))
    assert ja.count('"search_time_s":T') == 1
    assert ja == jb


# ----- published baselines ----------------------------------------------------------------

# Requests with published baselines that search in well under a second each.
BASELINE_MODELS = ("narayanan-1.7b", "narayanan-3.6b", "narayanan-7.5b", "narayanan-18b",
                   "narayanan-39b", "megatron-gpt-8.3b", "seed001-dense-4l", "seed004-moe-4l")
BASELINE_EXTRA = (("qwen3-30b-a3b", "dgx-b200"),)


def _baseline_requests() -> list[tuple[str, str, int, int, int, object]]:
    from planner.baselines import load_baselines

    out = []
    for model in (*BASELINE_MODELS, *(m for m, _ in BASELINE_EXTRA)):
        for b in load_baselines(model):
            if model not in BASELINE_MODELS and (model, b.cluster) not in BASELINE_EXTRA:
                continue
            key = (model, b.cluster, b.gpus, b.global_batch, b.seq_len, b.dtype)
            if key not in out:
                out.append(key)
    return out


@pytest.mark.parametrize("request_", _baseline_requests(), ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}")
def test_no_published_baseline_beats_the_search(request_: tuple) -> None:
    """Every matching published configuration that runs and fits is at least as slow as the
    best plan, both for the plain request and for a search whose space contains the baseline
    (its attention kernel, ep and etp held fixed, tp allowed up to its tp)."""
    from planner.baselines import matching_baselines
    from planner.plan import parse_plan_fields
    from planner.presets import load_cluster

    model, cluster, gpus, gb, seq, dtype = request_
    wl = TrainingWorkload(global_batch_size=gb, seq_len=seq, dtype=dtype or DType.BF16)
    plain = search(model, cluster, wl, devices=gpus, top_k=1)
    best = plain.best.estimate.step_time_s
    stated = matching_baselines(model, cluster=cluster, gpus=gpus, global_batch=gb, seq_len=seq)
    assert len(plain.baselines) == len(stated) > 0
    compared, inside_best = 0, {}
    for bl, b in zip(plain.baselines, stated):
        assert bl.plan == b.plan
        if bl.estimate is None or not bl.estimate.fits:
            continue
        compared += 1
        assert bl.estimate.step_time_s >= best * (1 - 1e-9), (b.id, bl.estimate.step_time_s, best)
        assert bl.slower_than_best_s == pytest.approx(bl.estimate.step_time_s - best)
        # The same request searched over a space that contains this baseline's plan.
        fields = parse_plan_fields(b.plan)
        fixed = {k: fields[k] for k in ("attn", "ep", "etp") if k in fields}
        max_tp = max(load_cluster(cluster).devices_per_node, int(fields.get("tp", 1)))  # type: ignore[call-overload]
        key = (tuple(sorted(fixed.items())), max_tp)
        if key not in inside_best:
            inside_best[key] = search(model, cluster, wl, devices=gpus, top_k=1, fixed=fixed,
                                      limits={"max_tp": max_tp}).best.estimate.step_time_s
        assert bl.estimate.step_time_s >= inside_best[key] * (1 - 1e-9), b.id
    assert compared > 0


def test_seed000_inconsistency_is_reported_by_the_search() -> None:
    """Seed 000 states MT-NLG 530B as TP=8, PP=35, DP=12 on 17920 GPUs (8*35*12 = 3360): a
    search for that request shows the baseline unscored, with the device-count problem."""
    from planner.baselines import inconsistencies, load_baselines

    wl = TrainingWorkload(global_batch_size=1920, seq_len=2048)
    result = search("mt-nlg-530b", "dgx-a100", wl, devices=17920, top_k=1,
                    fixed={"tp": 8, "pp": 35, "dp": 64})       # fixed: keeps the search short
    seed = [b for b in result.baselines if "Seed 000" in b.label]
    assert len(seed) == 1
    bl = seed[0]
    assert bl.estimate is None and bl.slower_than_best_s is None
    assert any("3360" in p and "17920" in p for p in bl.inconsistencies), bl.inconsistencies
    stated = next(b for b in load_baselines("mt-nlg-530b") if b.id == "seed000")
    assert set(inconsistencies(stated, "mt-nlg-530b")) <= set(bl.inconsistencies)


# ----- the fit check's shortcuts ------------------------------------------------------------

def _random_plans(rng: random.Random, model: ModelSpec, cluster: ClusterSpec,
                  wl: TrainingWorkload, n: int, count: int) -> list[Plan]:
    """Valid plans of a random problem at vpp = 1 (what the search's fit check builds)."""
    out = []
    for tp, cp, pp, dp in factorisations(model, cluster, wl, n):
        for mbs in divisors(wl.global_batch_size // dp):
            plan = Plan(tp=tp, cp=cp, pp=pp, dp=dp, mbs=mbs,
                        recompute=rng.choice(list(Recompute)), sp=tp > 1 and rng.random() < 0.5,
                        zero=rng.choice([0, 1, 2, 3] if pp == 1 else [0, 1]))
            if not plan_problems(model, wl, plan, n):
                out.append(plan)
    rng.shuffle(out)
    return out[:count]


@pytest.mark.parametrize("seed", range(20))
def test_memory_tables_give_the_full_tables_memory(seed: int) -> None:
    """The search's fit check builds memory-only tables (tables.build_memory_tables): every
    stage's memory, by kind, over every block range equals the full tables'."""
    rng = random.Random(1000 + seed)
    model, cluster, wl, n = random_problem(rng)
    if rng.random() < 0.5:       # MoE blocks and an MTP module on some problems
        model = model.model_copy(update={
            "moe": MoESpec(num_experts=4, top_k=2, expert_ffn_hidden_size=model.hidden_size),
            "mtp_layers": rng.choice([0, 1])})
    for plan in _random_plans(rng, model, cluster, wl, n, 6):
        m = wl.global_batch_size // (plan.dp * plan.mbs)
        ctx = make_context(model, cluster, wl, plan)[0]
        full, mem = build_tables(ctx, m), build_memory_tables(ctx, m)
        L = model.num_layers
        for k in range(plan.pp):
            for a in range(L):
                for b in range(a, L):
                    assert mem.memory(k, a, b) == full.memory(k, a, b), (plan, k, a, b)


@pytest.mark.parametrize("seed", range(20))
def test_memory_grows_with_the_micro_batch_size(seed: int) -> None:
    """The search prunes a group unchecked when the same group (degrees, ep, sp,
    recomputation) did not fit at a smaller micro-batch size (driver._expand). That holds
    because at vpp = 1 and without combined 1F1B every stage's memory over every block range
    never falls as mbs grows (the micro-batches in flight fall, the samples they hold do not)."""
    rng = random.Random(2000 + seed)
    model, cluster, wl, n = random_problem(rng)
    for plan in _random_plans(rng, model, cluster, wl, n, 8):
        sizes = [b for b in divisors(wl.global_batch_size // plan.dp) if b >= plan.mbs]
        L = model.num_layers
        previous = None
        for mbs in sizes:
            p = plan.model_copy(update={"mbs": mbs})
            if plan_problems(model, wl, p, n):
                continue
            m = wl.global_batch_size // (p.dp * mbs)
            tables = build_memory_tables(make_context(model, cluster, wl, p)[0], m)
            now = np.array([[tables.memory_total(k, a, b) for a in range(L) for b in range(a, L)]
                            for k in range(p.pp)])
            if previous is not None:
                assert (now >= previous * (1 - 1e-12)).all(), (p, now - previous)
            previous = now


def test_fixed_dp_overlap_reaches_every_candidate() -> None:
    """--fix dp_overlap=off is held in every plan the search returns (it was once dropped
    silently), and costs those plans time: the best is slower than with the overlap."""
    from planner import load_cluster, load_model, search

    model, cluster = load_model("narayanan-1.7b"), load_cluster("dgx-a100")
    wl = TrainingWorkload(global_batch_size=512, seq_len=2048)
    on = search(model, cluster, wl, devices=32, top_k=3)
    off = search(model, cluster, wl, devices=32, top_k=3, fixed={"dp_overlap": False})
    assert all("dp_overlap=off" in str(sp.plan["plan"]) for sp in off.top)
    assert not any("dp_overlap" in str(sp.plan["plan"]) for sp in on.top)
    assert off.best.estimate.step_time_s > on.best.estimate.step_time_s


def test_group_bound_takes_the_in_package_link_of_a_pair() -> None:
    """A tp=2 group inside one package all-reduces over the package's faster link
    (LinkSpec.pair_bandwidth_bytes_per_s), so the group bound's tensor-parallel term must use
    it: on a node whose other links are 100x slower, a bound taking those would exceed the
    plan's own step time and prune the best plan."""
    from collections import Counter

    from search.driver import SearchState, _groups
    from search.space import Limits as SpaceLimits

    model = ModelSpec(name="m", num_layers=2, hidden_size=256, num_attention_heads=8,
                      ffn_hidden_size=1024, vocab_size=1000)
    device = DeviceSpec(name="toy", peak_flops_per_s={"bf16": 989e12, "fp32": 60e12},
                        memory_bytes=80 * GIB, memory_bandwidth_bytes_per_s=3e12)
    cluster = ClusterSpec(
        name="pairs", device=device, devices_per_node=2,
        intra_node=LinkSpec(name="intra", bandwidth_bytes_per_s=1e9, latency_s=1e-6,
                            pair_bandwidth_bytes_per_s=100e9),
        inter_node=LinkSpec(name="inter", bandwidth_bytes_per_s=1e9, latency_s=5e-6))
    wl = TrainingWorkload(global_batch_size=8, seq_len=256)
    state = SearchState(top_k=1, pruned=Counter())
    groups = [g for g in _groups(model, cluster, wl, 2, SpaceLimits(fixed={"tp": 2}), state)
              if g.degrees.tp == 2 and g.degrees.pp == 1]
    assert groups
    for g in groups:
        plan = Plan(tp=2, pp=1, dp=1, cp=g.degrees.cp, mbs=g.mbs, recompute=g.recompute,
                    sp=g.sp)
        step = evaluate(model, cluster, wl, plan, devices=2)
        assert step.breakdown["tp_comm"] > 0
        assert g.bound_s <= step.step_time_s * (1 + 1e-12), (plan.to_string(), g.bound_s)
