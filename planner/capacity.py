"""Capacity questions: the largest model of a shape family that trains on N nodes, the fewest
nodes on which a model trains, and how long a training run takes.

Decides which sizes to try and in what order; never scores a plan itself. The feasibility
oracle is the exact search (`search.driver.run_search`, the engine behind `planner.search`):
a size is feasible iff some plan of the search space fits in memory. Probes run the search
with a time limit of 0 s, which stops at the first plan that fits; proving that nothing fits
still visits the whole space (the time limit only applies once a plan was found), so a probe's
yes/no is exact. Reported plans come from full searches (`planner.api.search`).

Like `planner.api`, this facade imports the search and cost model lazily, inside functions.

Families (`FAMILIES`) are data with their source: `gpt3` is continuous (one member per layer
count), `gpt3-table` and `narayanan` are published rows. Each member is at least as large as
the previous one in every dimension (layers, hidden, heads, MLP width; vocabulary fixed), so
every memory term of a plan (weights, grads, optimizer, activations, buffers) is
non-decreasing along the family, and a plan that fits a larger member fits a smaller one when
it is valid there: its tp divides the heads (the continuous family keeps heads a multiple of
every tp the search may use) and its pp is at most the smaller member's layers. The last
condition fails only for members too shallow to split over the devices at all (dp must divide
the global batch, so pp may have to absorb them); the binary search starts at the first member
that can be split, where feasibility is monotone, and its answer is the checked boundary (the
largest member fits, the next does not). Tests check monotonicity on random cases.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InfeasibleError, PlanError, SpecError
from planner.hardware import MAX_DEVICES, ClusterSpec
from planner.model import (
    GIB,
    ModelSpec,
    optimizer_bytes_per_param,
    weight_bytes_per_param,
)
from planner.plan import Plan, Recompute
from planner.presets import load_model
from planner.workload import TrainingWorkload

MAX_TP_IN_NODE = 8
"""Largest tensor-parallel degree the capacity search uses: Narayanan et al. 2021 (SC'21)
Sec. 3.3 keep tensor parallelism inside a multi-GPU server, up to 8 GPUs (their Table 1 never
goes above tp = 8). Capped at the largest power of two dividing the node size."""

D_HEAD = 128
"""Head dimension of the continuous `gpt3` family: Brown et al. 2020 Table 2.1, the 6.7B, 13B
and 175B rows (d_head 128, n_layers = n_heads)."""

GPT3_TABLE_ROWS: tuple[tuple[str, int, int, int], ...] = (
    # (label, n_layers, d_model, n_heads): Brown et al. 2020 (arXiv:2005.14165) Table 2.1.
    ("gpt3-small", 12, 768, 12),
    ("gpt3-medium", 24, 1024, 16),
    ("gpt3-large", 24, 1536, 16),
    # Table 2.1 prints n_heads 24, d_head 128 for XL, but 24 x 128 = 3072 != d_model 2048 and
    # 2048 / 24 is no integer; 16 heads of 128 keeps d_model and d_head (1.3B as published).
    ("gpt3-xl", 24, 2048, 16),
    ("gpt3-2.7b", 32, 2560, 32),
    ("gpt3-6.7b", 32, 4096, 32),
    # Table 2.1 prints d_model 5140, which 40 heads of 128 do not make; 40 x 128 = 5120.
    ("gpt3-13b", 40, 5120, 40),
    ("gpt3-175b", 96, 12288, 96),
)

NARAYANAN_ROWS = ("narayanan-1.7b", "narayanan-3.6b", "narayanan-7.5b", "narayanan-18b",
                  "narayanan-39b", "narayanan-76b", "narayanan-145b", "narayanan-310b",
                  "narayanan-530b", "narayanan-1t")
"""Narayanan et al. 2021 (SC'21) Table 1 rows, as model presets."""


@dataclass(frozen=True)
class ShapeFamily:
    """An ordered family of models; member(i) for i = 1, 2, ... (up to `size` if set) grows
    in every dimension, so feasibility on fixed devices is monotone in i."""

    name: str
    source: str
    member: Callable[[int], ModelSpec]
    size: int | None = None   # number of members (a table); None = unbounded


def tp_multiple(cluster: ClusterSpec) -> int:
    """Largest power of two dividing the node size, at most MAX_TP_IN_NODE."""
    q = 1
    while q * 2 <= MAX_TP_IN_NODE and cluster.devices_per_node % (q * 2) == 0:
        q *= 2
    return q


def _gpt3_shape(base: ModelSpec, *, name: str, layers: int, hidden: int, heads: int,
                source: str) -> ModelSpec:
    """GPT-3's architecture (the gpt3-175b preset: GPT-2 blocks, 50257 vocabulary, learned
    positions, tied embeddings, biases, LayerNorm) with other dimensions; d_ff = 4 d_model."""
    return base.model_copy(update={
        "name": name, "description": f"GPT-3-shaped decoder, {layers} x {hidden}, {heads} heads",
        "source": source, "notes": "", "num_layers": layers, "hidden_size": hidden,
        "num_attention_heads": heads, "ffn_hidden_size": 4 * hidden, "head_dim": None})


def gpt3_family(q: int) -> ShapeFamily:
    """Continuous GPT-3 family: member L has L layers and k = q * ceil(L / q) heads of 128
    (hidden 128 k), so layers = heads (the GPT-3 aspect) whenever q divides L, and the heads
    are a multiple of every tp <= q."""
    base = load_model("gpt3-175b")
    src = ("Brown et al. 2020 Table 2.1 (6.7B, 13B, 175B rows: n_layers = n_heads, d_head 128, "
           "d_ff = 4 d_model); heads rounded up to a multiple of q = " + str(q))

    def member(layers: int) -> ModelSpec:
        heads = q * math.ceil(layers / q)
        return _gpt3_shape(base, name=f"gpt3-{layers}x{D_HEAD * heads}", layers=layers,
                           hidden=D_HEAD * heads, heads=heads, source=src)

    return ShapeFamily("gpt3", src, member)


def gpt3_table_family() -> ShapeFamily:
    base = load_model("gpt3-175b")
    src = "Brown et al. 2020 Table 2.1, 8 rows (XL: 16 heads; 13B: d_model 5120; see code)"

    def member(i: int) -> ModelSpec:
        label, layers, hidden, heads = GPT3_TABLE_ROWS[i - 1]
        return _gpt3_shape(base, name=label, layers=layers, hidden=hidden, heads=heads, source=src)

    return ShapeFamily("gpt3-table", src, member, size=len(GPT3_TABLE_ROWS))


def narayanan_family() -> ShapeFamily:
    return ShapeFamily("narayanan", "Narayanan et al. 2021 (SC'21) Table 1 rows (presets)",
                       lambda i: load_model(NARAYANAN_ROWS[i - 1]), size=len(NARAYANAN_ROWS))


FAMILIES: dict[str, Callable[[ClusterSpec], ShapeFamily]] = {
    "gpt3": lambda c: gpt3_family(tp_multiple(c)),
    "gpt3-table": lambda c: gpt3_table_family(),
    "narayanan": lambda c: narayanan_family(),
}


def get_family(name: str, cluster: ClusterSpec) -> ShapeFamily:
    if name not in FAMILIES:
        raise SpecError(f"--family '{name}' is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name](cluster)


# ----- results ---------------------------------------------------------------------------
class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelShape(_Result):
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    params: int

    @classmethod
    def of(cls, m: ModelSpec) -> ModelShape:
        return cls(name=m.name, num_layers=m.num_layers, hidden_size=m.hidden_size,
                   num_attention_heads=m.num_attention_heads, params=m.params)


class SizePoint(_Result):
    """The best plan on one device count, or why there is none."""

    nodes: int
    devices: int
    fits: bool
    plan: str | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    model_tflops_per_gpu: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    search_cut: bool = Field(False, description="a time limit stopped the search early")
    reason: str | None = Field(None, description="why nothing fits (when fits is false)")


class MemoryMiss(_Result):
    """How far a size that does not fit is from fitting."""

    nodes: int
    devices: int
    states_gib_per_device: float = Field(description=(
        "weights + grads + optimizer states spread evenly over every device (the least any "
        "plan can hold, fully sharded)"))
    least_memory_plan: str | None = Field(description=(
        "the least-memory plan of the memory-saving ones tried (mbs 1, full recomputation, "
        "every ZeRO stage allowed, even stages), over every factorisation"))
    least_memory_gib: float | None
    capacity_gib: float
    over_gib: float | None = Field(description="least_memory_gib - capacity_gib")
    reason: str


class CapacityResult(_Result):
    family: str
    family_source: str
    cluster: str
    nodes: int
    devices: int
    max_tp: int
    workload: dict[str, object]
    max_params_by_states: int = Field(description="no model with more parameters fits (states bound)")
    largest: ModelShape
    best: SizePoint
    next_up: ModelShape | None
    next_up_miss: MemoryMiss | None
    probes: int = Field(description="feasibility searches run")
    notes: list[str]


class MinDevicesResult(_Result):
    model: ModelShape
    cluster: str
    workload: dict[str, object]
    states_bytes: float = Field(description=("trained params (with the MTP modules) x (weight + "
                                             "grad + optimizer) bytes"))
    lower_bound_nodes: int = Field(description=(
        "ceil(states x (1 + fragmentation) / (devices_per_node x (device memory - framework "
        "overhead))): fewer nodes cannot fit"))
    min_nodes: int
    probes: int
    points: list[SizePoint] = Field(description="min_nodes, 2x and 4x (within the cluster)")
    one_fewer: MemoryMiss | None
    notes: list[str]


class TrainTimeResult(_Result):
    model: ModelShape
    cluster: str
    devices: int
    workload: dict[str, object]
    tokens: float
    best: SizePoint
    steps: int
    days: float
    gpu_hours: float


# ----- bounds and probes -------------------------------------------------------------------
def state_bytes_per_param(workload: TrainingWorkload) -> int:
    """Weight + gradient + optimizer bytes per parameter (planner.model: 2 + 4 + 12 for
    mixed-precision Adam with fp32 gradients, 2 + 2 + 12 with 16-bit ones, ZeRO Sec. 3.1)."""
    dt, opt = workload.dtype, workload.optimizer
    return weight_bytes_per_param(dt) + workload.grad_bytes + optimizer_bytes_per_param(opt, dt)


def trained_params(model: ModelSpec) -> int:
    """Parameters training updates: the model's and its multi-token-prediction modules' (each
    MTP module's block, projection and norms; ModelSpec.params leaves them out, as DeepSeek-V3's
    published 671B does, but training holds their weights, gradients and optimizer states)."""
    return model.params + model.mtp_layers * model.mtp_module_params


def states_bytes(model: ModelSpec, workload: TrainingWorkload) -> float:
    """Weights + gradients + optimizer states of everything training updates."""
    return float(trained_params(model) * state_bytes_per_param(workload))


def _usable_bytes(cluster: ClusterSpec) -> tuple[float, float]:
    """(1 + fragmentation, device memory - framework overhead) of the cost model."""
    from cost_models.memory import FRAGMENTATION, FRAMEWORK_OVERHEAD_BYTES

    usable = cluster.device.memory_bytes - FRAMEWORK_OVERHEAD_BYTES
    if usable <= 0:
        raise SpecError(f"device '{cluster.device.name}' has {cluster.device.memory_bytes / GIB:.2f}"
                        f" GiB, not more than the {FRAMEWORK_OVERHEAD_BYTES / GIB:.2f} GiB framework "
                        "overhead; use a device with more memory")
    return 1 + FRAGMENTATION, float(usable)


def max_params_by_states(cluster: ClusterSpec, workload: TrainingWorkload, devices: int) -> int:
    """No model with more parameters fits on `devices` (the bound of lower_bound_devices)."""
    grow, usable = _usable_bytes(cluster)
    return math.floor(devices * usable / (grow * state_bytes_per_param(workload)))


def lower_bound_devices(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload) -> int:
    """Fewest devices that can hold the model's states, whatever the plan.

    Every parameter's weight, gradient and optimizer state is held by at least one device (ZeRO-3
    holds each exactly once), so the devices together hold >= S = states_bytes. The cost model
    adds FRAGMENTATION x (states + activations) and FRAMEWORK_OVERHEAD_BYTES per device
    (cost_models/memory.py), so the most loaded device holds >= S (1 + f) / n + O, which must
    be <= the capacity C: n >= S (1 + f) / (C - O).
    """
    grow, usable = _usable_bytes(cluster)
    return max(1, math.ceil(states_bytes(model, workload) * grow / usable))


def lower_bound_nodes(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload) -> int:
    return math.ceil(lower_bound_devices(model, cluster, workload) / cluster.devices_per_node)


def fits(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload, devices: int, *,
         max_tp: int | None = None) -> bool:
    """Whether some plan of the search space fits on `devices` (exact; see module docstring)."""
    from search.driver import run_search
    from search.space import Limits

    state = run_search(model, cluster, workload, devices, top_k=1, limits=Limits(max_tp=max_tp),
                       time_limit_s=0.0)
    return bool(state.best)


def _nodes(cluster: ClusterSpec, devices: int) -> int:
    return math.ceil(devices / cluster.devices_per_node)


def best_point(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload, devices: int,
               *, max_tp: int | None = None, time_limit_s: float | None = None) -> SizePoint:
    """The best plan on `devices` from a full search, or why none fits."""
    from planner.api import search

    limits = {"max_tp": max_tp} if max_tp is not None else None
    try:
        r = search(model, cluster, workload, devices=devices, top_k=1, limits=limits,
                   time_limit_s=time_limit_s)
    except InfeasibleError as e:
        return SizePoint(nodes=_nodes(cluster, devices), devices=devices, fits=False, reason=str(e))
    e = r.best.estimate
    return SizePoint(nodes=_nodes(cluster, devices), devices=devices, fits=True, plan=e.plan,
                     step_time_s=e.step_time_s, tokens_per_s=e.tokens_per_s,
                     model_tflops_per_gpu=e.model_tflops_per_gpu, mfu=e.mfu,
                     peak_memory_gib=e.peak_memory_gib, search_cut=r.stats.cut)


def least_memory(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                 devices: int, *, max_tp: int | None = None) -> MemoryMiss:
    """The least peak memory among memory-saving plans (mbs 1, full recomputation, SP, every
    ZeRO stage allowed, even stages) over every factorisation the search allows."""
    from planner.api import evaluate
    from search.space import Limits, enumerate_degrees, zero_options

    cap_gib = cluster.device.memory_bytes / GIB
    states = states_bytes(model, workload) / devices / GIB
    best: tuple[float, str] | None = None
    pruned: Counter[str] = Counter()
    limits = Limits(max_tp=max_tp)
    for d in enumerate_degrees(model, workload, devices, cluster, limits, pruned):
        for zero in zero_options(d.pp, limits):
            plan = Plan(tp=d.tp, cp=d.cp, pp=d.pp, dp=d.dp, mbs=1, recompute=Recompute.FULL,
                        sp=d.tp > 1, zero=zero)
            try:
                est = evaluate(model, cluster, workload, plan, devices=devices)
            except PlanError:
                pruned["plan_rules"] += 1
                continue
            best = min(best or (math.inf, ""), (est.peak_memory_gib, est.plan))
    nodes = _nodes(cluster, devices)
    if best is None:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(pruned.items()))
        return MemoryMiss(nodes=nodes, devices=devices, states_gib_per_device=states,
                          least_memory_plan=None, least_memory_gib=None, capacity_gib=cap_gib,
                          over_gib=None, reason=f"no tp x cp x pp x dp factorisation of {devices} "
                          f"devices is valid ({why})")
    gib, plan_str = best
    reason = (f"the least-memory plan needs {gib:.2f} GiB per device, {gib - cap_gib:.2f} GiB "
              f"over {cap_gib:.2f} GiB (weights + grads + optimizer alone: {states:.2f} GiB)")
    return MemoryMiss(nodes=nodes, devices=devices, states_gib_per_device=states,
                      least_memory_plan=plan_str, least_memory_gib=gib, capacity_gib=cap_gib,
                      over_gib=gib - cap_gib, reason=reason)


# ----- the three questions -----------------------------------------------------------------
def _upper_index(family: ShapeFamily, cluster: ClusterSpec, workload: TrainingWorkload,
                 devices: int) -> tuple[int, bool]:
    """(hi, by_bound): the first member index that lower_bound_devices rules out (doubling),
    or size + 1 for a table whose every row passes the bound."""
    hi = 1
    while family.size is None or hi <= family.size:
        if lower_bound_devices(family.member(hi), cluster, workload) > devices:
            return hi, True
        hi = hi * 2 if family.size is None else hi + 1
    return family.size + 1, False


def _first_splittable(family: ShapeFamily, cluster: ClusterSpec, workload: TrainingWorkload,
                      devices: int, *, max_tp: int, stop: int) -> int:
    """The first member index (< stop) whose search space has any tp x cp x pp x dp
    factorisation of the devices, or `stop`. Smaller members can be infeasible for want of
    layers to pipeline (pp <= layers) when dp cannot absorb the devices (dp must divide the
    global batch), whatever their memory; the monotone range starts here."""
    from search.space import Limits, enumerate_degrees

    for i in range(1, stop):
        if next(enumerate_degrees(family.member(i), workload, devices, cluster,
                                  Limits(max_tp=max_tp), Counter()), None) is not None:
            return i
    return stop


@dataclass(frozen=True)
class Boundary:
    """Where feasibility flips along a family: member `largest` fits, member `largest + 1`
    does not (`by_bound`: ruled out by the states bound without a search)."""

    largest: int
    by_bound: bool
    probes: int


def find_boundary(family: ShapeFamily, cluster: ClusterSpec, workload: TrainingWorkload, *,
                  devices: int, max_tp: int) -> Boundary:
    """Binary search for the largest member that fits (exact probes; monotone family).

    Raises:
        InfeasibleError: not even the first member that can be split over the devices fits.
    """
    probes = 0

    def ok(i: int) -> bool:
        nonlocal probes
        probes += 1
        return fits(family.member(i), cluster, workload, devices, max_tp=max_tp)

    hi, by_bound = _upper_index(family, cluster, workload, devices)
    lo = _first_splittable(family, cluster, workload, devices, max_tp=max_tp, stop=hi)
    if lo >= hi or not ok(lo):
        first = family.member(lo if lo < hi else 1)
        miss = least_memory(first, cluster, workload, devices, max_tp=max_tp)
        raise InfeasibleError(
            f"not even the smallest {family.name} member that can be split over {devices} "
            f"devices ({first.name}, {first.params / 1e9:.3g}B params) trains on {devices}x "
            f"{cluster.device.name}: {miss.reason}; add nodes or shorten --seq-len")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi, by_bound = mid, False
    return Boundary(largest=lo, by_bound=by_bound, probes=probes)


def largest_trainable(family: ShapeFamily, cluster: ClusterSpec, workload: TrainingWorkload, *,
                      devices: int, max_tp: int | None = None,
                      time_limit_s: float | None = None) -> CapacityResult:
    """The largest member of `family` that trains on `devices`, its best plan, and how far
    the next member is from fitting.

    Args:
        family: the shape family (monotone in its index).
        cluster: the cluster; devices: how many of its devices.
        workload: sequence length, global batch, dtype, optimizer.
        max_tp: tp bound of every search (default: tp_multiple(cluster)).
        time_limit_s: time limit of the final search of the answer (probes are exact).

    Raises:
        InfeasibleError: not even the first member fits.
    """
    q = max_tp if max_tp is not None else tp_multiple(cluster)
    edge = find_boundary(family, cluster, workload, devices=devices, max_tp=q)
    largest = family.member(edge.largest)
    notes = [f"tp is at most {q} (heads of the family are multiples of it)"]
    nxt = miss = None
    if family.size is None or edge.largest < family.size:
        nxt = family.member(edge.largest + 1)
        miss = least_memory(nxt, cluster, workload, devices, max_tp=q)
        notes.append(f"{nxt.name} is ruled out by " + (
            "the states lower bound (no search needed)" if edge.by_bound else "the exact search"))
    else:
        notes.append(f"the largest row of {family.name} fits; the continuous 'gpt3' family goes beyond")
    return CapacityResult(
        family=family.name, family_source=family.source, cluster=cluster.name,
        nodes=_nodes(cluster, devices), devices=devices, max_tp=q,
        workload=workload.model_dump(mode="json"),
        max_params_by_states=max_params_by_states(cluster, workload, devices),
        largest=ModelShape.of(largest),
        best=best_point(largest, cluster, workload, devices, max_tp=q, time_limit_s=time_limit_s),
        next_up=None if nxt is None else ModelShape.of(nxt), next_up_miss=miss,
        probes=edge.probes, notes=notes)


SCALE_FACTORS = (1, 2, 4)
"""min-devices reports throughput at the fewest nodes and at these multiples of it."""


def fewest_nodes(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload, *,
                 max_nodes: int | None = None) -> tuple[int, int, int]:
    """(lower bound, fewest nodes that fit, probes). Starts at lower_bound_nodes (fewer cannot
    fit) and steps up one node at a time: with whole nodes, feasibility need not be monotone
    in the node count (dp must divide the global batch, pp at most the layers), so no size
    above the bound is skipped.

    Raises:
        InfeasibleError: nothing fits up to max_nodes (default 4x the lower bound, never above
            the cluster's max_nodes).
    """
    lb = lower_bound_nodes(model, cluster, workload)
    limit = max_nodes if max_nodes is not None else 4 * lb
    if cluster.max_nodes is not None:
        limit = min(limit, cluster.max_nodes)
    ceiling = MAX_DEVICES // cluster.devices_per_node
    limit = min(limit, ceiling)
    if lb > limit:
        raise InfeasibleError(
            f"{model.name} needs at least {lb} nodes of {cluster.name} for its weights, gradients "
            f"and optimizer states alone ({states_bytes(model, workload) / GIB:.1f} GiB); the "
            f"limit is {limit} nodes: "
            + ("raise --max-nodes" if limit < ceiling else
               f"more than the {MAX_DEVICES:,} devices meshplan plans for; check the model's "
               "size (`meshplan show`)"))
    for n in range(lb, limit + 1):
        if fits(model, cluster, workload, n * cluster.devices_per_node):
            return lb, n, n - lb + 1
    raise InfeasibleError(
        f"no plan for {model.name} fits on {lb} to {limit} nodes of {cluster.name} (global "
        f"batch {workload.global_batch_size}, seq {workload.seq_len}); raise --max-nodes or "
        "shorten --seq-len")


def min_devices(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload, *,
                max_nodes: int | None = None, time_limit_s: float | None = None) -> MinDevicesResult:
    """The fewest whole nodes on which some plan fits (fewest_nodes), the best plans there and
    at SCALE_FACTORS times as many nodes, and how far one node fewer is from fitting.

    Raises:
        InfeasibleError: nothing fits up to max_nodes.
    """
    d = cluster.devices_per_node
    lb, found, probes = fewest_nodes(model, cluster, workload, max_nodes=max_nodes)
    points = [best_point(model, cluster, workload, k * found * d, time_limit_s=time_limit_s)
              for k in SCALE_FACTORS if cluster.max_nodes is None or k * found <= cluster.max_nodes]
    skipped = lb - 1
    notes = ([f"{skipped} node count{'' if skipped == 1 else 's'} below the lower bound skipped "
              "without a search"] if skipped else [])
    notes += [f"{p.nodes} nodes: {p.reason}" for p in points if not p.fits]
    return MinDevicesResult(
        model=ModelShape.of(model), cluster=cluster.name, workload=workload.model_dump(mode="json"),
        states_bytes=states_bytes(model, workload), lower_bound_nodes=lb, min_nodes=found,
        probes=probes, points=points,
        one_fewer=least_memory(model, cluster, workload, (found - 1) * d) if found > 1 else None,
        notes=notes)


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_TOKENS = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def parse_tokens(text: str) -> float:
    """'300B' -> 3e11, '1.5T' -> 1.5e12, '2e11' -> 2e11 (K, M, B or G, T; case-insensitive)."""
    match = _TOKENS.match(text)
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()] if match else 0.0
    if not match or not 0 < value < math.inf:
        raise SpecError(f"--tokens '{text}' is not a positive token count; write e.g. 300B, "
                        "1.5T, 450M or 3e11")
    return value


def train_time(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload, *,
               devices: int, tokens: float, time_limit_s: float | None = None) -> TrainTimeResult:
    """Days to train on `tokens` tokens at the best plan's throughput: tokens / tokens_per_s.

    Raises:
        InfeasibleError: no plan fits on `devices`.
    """
    if tokens <= 0:
        raise SpecError(f"tokens must be positive, got {tokens}")
    best = best_point(model, cluster, workload, devices, time_limit_s=time_limit_s)
    if not best.fits or best.tokens_per_s is None:
        raise InfeasibleError(best.reason or f"no plan for {model.name} fits on {devices} devices")
    seconds = tokens / best.tokens_per_s
    return TrainTimeResult(
        model=ModelShape.of(model), cluster=cluster.name, devices=devices,
        workload=workload.model_dump(mode="json"), tokens=tokens, best=best,
        steps=math.ceil(tokens / workload.tokens_per_step), days=seconds / 86400,
        gpu_hours=seconds / 3600 * devices)
