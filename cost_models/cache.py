"""Cache-aware layer-wise partitioning: does each device's decode working set stay in its
on-chip cache (GPU L2, TPU CMEM), and what would that change?

Two different "working sets" are in play, and only one of them is a partitioning constraint:

(a) Resident weights (what this module checks). In decode every step reads every weight the
    device holds (Pope et al. 2022, Sec. 2; `cost_models/inference.py`). If those weights,
    plus the live activations of one step, fit in the part of the cache that can be set aside
    for persisting data, they are read from HBM once and from the cache on every later step:
    the weight reads of decode move from HBM bandwidth to cache bandwidth. Per device of stage
    s (blocks first..last, tp ranks, batch b per replica, dtype bytes e):
        resident_weight_bytes = (sum of the stage's block parameters, all experts
                                 + vocab*h + final norm on the last stage) / tp * e
        activation_bytes      = live tensors of one decode step of one block plus the sampled
                                logits (`inference._workspace_bytes` at one token per sequence)
        working_set_bytes     = resident_weight_bytes + activation_bytes
    The embedding table is not resident: decode looks up b rows of it. The KV cache is not
    resident either: each step reads it once and it grows every step, so it streams through the
    part of the cache that is not set aside (reported as kv_stream_bytes, not counted).
    Feasible when every stage's working set <= PERSISTING_FRACTION * cache bytes.

(b) Tiled GEMM working set (not a constraint). A GEMM keeps tiles of its operands on chip
    (shared memory, L2) while it sweeps them; libraries choose tile sizes to fit, so this
    working set fits by construction on any partition. It does not change HBM traffic: each
    weight byte still comes from HBM once per step unless the whole shard stays resident
    across steps, which is (a). A claim that "the working set fits the cache" because tiles of
    a layer fit says nothing about decode speed.

Effect (decode only; prefill is compute-bound and unchanged). With the plan's own decode
stages (`inference._decode_stage`), the weight-read time of each stage becomes
    t_w' = w / bw_hbm / O + w / bw_cache * (O - 1) / O
(the first of the O output steps fills the cache from HBM, later steps hit it), and the
compute term is re-taken as max(0, t_math - (t_w' + t_kv)): where decode was memory-bound the
math may now show. TPOT' = TPOT - sum over stages of the drop in those two terms; all other
terms (KV read, TP all-reduces, pipeline sends, kernel launches) are unchanged. When the plan
is not feasible the effect is 0 by definition.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from cost_models import comm
from cost_models.compute import Roofline
from cost_models.efficiency import device_efficiency
from cost_models.inference import (
    _decode_stage,
    _layer_params,
    _workspace_bytes,
    ep_links_of,
    estimate_inference,
    kv_split,
)
from cost_models.training import strides
from planner.errors import PlanError, SpecError
from planner.hardware import ClusterSpec, DeviceSpec
from planner.model import ModelSpec
from planner.plan import Plan
from planner.validate import divisors
from planner.workload import InferenceWorkload

PERSISTING_FRACTION = 0.75
"""Share of the cache that may hold resident weights. Source: CUDA C++ Programming Guide,
"L2 Cache Set-Aside for Persisting Accesses": its example sets aside
min(0.75 * l2CacheSize, persistingL2CacheMaxSize), and an A100 reports persistingL2CacheMaxSize
31,457,280 = 0.75 x its 41,943,040-byte L2 (NVIDIA developer forum thread 275542). The other
quarter is left to streaming accesses (KV cache, other kernels). Applied to TPU CMEM too, as
an assumption (no comparable documented limit)."""

CACHE_BANDWIDTH_FRACTION_NOTE = (
    "cache reads are taken at the same achievable fraction of their peak as HBM streaming "
    "(cost_models/efficiency.py 'memory'); no measured L2 fraction was found"
)
"""The assumption behind the achievable cache bandwidth, stated once and reported."""


class StageWorkingSet(BaseModel):
    """The decode working set of one device of one pipeline stage."""

    model_config = ConfigDict(frozen=True)

    stage: int
    first_block: int = Field(description="first block of the stage (0-based)")
    last_block: int = Field(description="last block of the stage (inclusive)")
    resident_weight_bytes: float = Field(description="weights this device reads every step")
    activation_bytes: float = Field(description="live tensors of one decode step + logits")
    working_set_bytes: float = Field(description="resident weights + activations")
    kv_stream_bytes: float = Field(description="KV bytes read per step (streamed, not resident)")
    fits: bool


class Partition(BaseModel):
    """One layer-wise partition (pp stages over the blocks, tp ranks within each) and its fit."""

    model_config = ConfigDict(frozen=True)

    plan: str = Field(description="tp=..,pp=..,dp=..")
    tp: int
    pp: int
    dp: int
    devices: int
    layers_per_stage: tuple[int, ...]
    working_set_bytes: float = Field(description="largest stage working set per device")
    fits: bool
    tpot_s: float | None = Field(None, description="decode TPOT without cache residency")
    tpot_cached_s: float | None = Field(None, description="TPOT with weights read from cache")
    tokens_per_s: float | None = None
    tokens_per_s_cached: float | None = None


class CacheFit(BaseModel):
    """Whether a plan's decode working set stays in cache, and the predicted effect."""

    model_config = ConfigDict(frozen=True)

    plan: str
    device: str
    devices: int
    batch_per_replica: int
    feasible: bool
    cache_bytes: int = Field(description="on-chip cache of one device (DeviceSpec)")
    usable_cache_bytes: float = Field(description="PERSISTING_FRACTION of it")
    reserve_fraction: float = Field(description="share of the cache left to streaming accesses")
    cache_bandwidth_bytes_per_s: float = Field(description="achievable cache read bandwidth")
    hbm_bandwidth_bytes_per_s: float = Field(description="achievable HBM read bandwidth")
    stages: list[StageWorkingSet]
    working_set_bytes: float = Field(description="largest stage working set per device")
    margin_bytes: float = Field(description="usable cache - working set (negative: too big)")
    fill: float = Field(description="working set / usable cache")
    weight_bound_devices: int = Field(description=(
        "fewest devices whose usable caches could hold all resident weights at a perfect split"))
    smallest_fit: Partition | None = Field(description=(
        "fewest devices over layer-wise partitions (tp dividing the heads, pp <= blocks, dp=1) "
        "that fit; None when none does"))
    closest: Partition = Field(description="the partition with the smallest working set")
    tpot_s: float = Field(description="decode TPOT without cache residency (inference model)")
    tpot_cached_s: float = Field(description="TPOT with cache residency (= tpot_s if infeasible)")
    tpot_change_s: float = Field(description="tpot_cached_s - tpot_s (0 when infeasible)")
    tokens_per_s: float
    tokens_per_s_cached: float
    speedup: float = Field(description="tpot_s / tpot_cached_s (1 when infeasible)")
    reasons: list[str]


# ----- working set -----------------------------------------------------------------------
def usable_cache_bytes(device: DeviceSpec) -> float:
    """Bytes of the device's cache that may hold resident weights."""
    if device.onchip_cache_bytes is None:
        raise SpecError(
            f"device '{device.name}' has no on-chip cache size; add onchip_cache_bytes (bytes, "
            "with its source) to its device file, or pass a cluster file whose device has it"
        )
    return PERSISTING_FRACTION * device.onchip_cache_bytes


def cache_bandwidth(device: DeviceSpec) -> float:
    """Achievable cache read bandwidth (see CACHE_BANDWIDTH_FRACTION_NOTE)."""
    if device.onchip_cache_bandwidth_bytes_per_s is None:
        raise SpecError(
            f"device '{device.name}' has no on-chip cache bandwidth; add "
            "onchip_cache_bandwidth_bytes_per_s (bytes/s, with its source) to its device file, "
            "or pass a cluster file whose device has it"
        )
    eff, _ = device_efficiency(device)
    return device.onchip_cache_bandwidth_bytes_per_s * eff.memory


def _resident_params(model: ModelSpec, plan: Plan, stage: int, first: int, last: int) -> float:
    """Parameters one device of `stage` reads across decode steps (all experts, LM head on the
    last stage; no embedding table: decode looks up a few rows of it)."""
    total = float(sum(sum(_layer_params(model, i)) for i in range(first, last + 1)))
    if stage == plan.pp - 1 and model.vocab_size:
        total += model.vocab_size * model.hidden_size + model.norm_params
    return total / plan.tp


def stage_working_sets(model: ModelSpec, workload: InferenceWorkload, plan: Plan,
                       usable_bytes: float) -> list[StageWorkingSet]:
    """Working set of one device of every stage (module docstring, regime (a))."""
    dt = workload.dtype
    batch = math.ceil(workload.batch_size / plan.dp)
    ctx = model.attended_context(workload.prompt_len + workload.output_len / 2)
    act = _workspace_bytes(model, plan, 1, batch, dt)
    kv_layer = model.kv_cache_bytes_per_token(dt) / model.num_layers
    out = []
    for s, (a, z) in enumerate(plan.stage_ranges(model.num_layers)):
        w = _resident_params(model, plan, s, a, z) * dt.bytes
        kv = batch * ctx * kv_layer * (z - a + 1) / kv_split(model, plan.tp)
        out.append(StageWorkingSet(stage=s, first_block=a, last_block=z,
                                   resident_weight_bytes=w, activation_bytes=act,
                                   working_set_bytes=w + act, kv_stream_bytes=kv,
                                   fits=w + act <= usable_bytes))
    return out


def _max_working_set(model: ModelSpec, workload: InferenceWorkload, plan: Plan) -> float:
    return max(s.working_set_bytes for s in stage_working_sets(model, workload, plan, 0.0))


# ----- effect ----------------------------------------------------------------------------
def cached_tpot(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                plan: Plan) -> tuple[float, float, float]:
    """(TPOT without, TPOT with cache-resident weights, the weight-read part of the first),
    from the inference model's own decode stages."""
    dev, dt = cluster.device, workload.dtype
    eff, _ = device_efficiency(dev)
    roof = Roofline(dev, eff, dt)
    bw_cache, out_len = cache_bandwidth(dev), workload.output_len
    tp_links = comm.group_links(cluster, size=plan.tp, stride=strides(plan)["tp"])
    batch = math.ceil(workload.batch_size / plan.dp)
    est = estimate_inference(model, cluster, workload, plan)
    base, saved = est.tpot_s, 0.0
    for s, (a, z) in enumerate(plan.stage_ranges(model.num_layers)):
        d = _decode_stage(model, plan, workload, roof, eff, tp_links,
                          ep_links_of(cluster, plan), cluster, s, a, z, batch)
        w = d["_weight_bytes"]
        t_w = w / roof.bw / out_len + w / bw_cache * (out_len - 1) / out_len
        compute = (max(0.0, d["_gemm_math_s"] - t_w)                  # per-kernel rooflines
                   + max(0.0, d["_attn_math_s"] - d["kv_read"]))
        saved += (d["weights_read"] - t_w) + (d["compute"] - compute)
    return base, base - saved, est.tpot_breakdown["weights_read"]


# ----- partitions ------------------------------------------------------------------------
def _partition(model: ModelSpec, workload: InferenceWorkload, plan: Plan,
               usable: float) -> Partition:
    ws = _max_working_set(model, workload, plan)
    return Partition(plan=f"tp={plan.tp},pp={plan.pp},dp={plan.dp}", tp=plan.tp, pp=plan.pp,
                     dp=plan.dp, devices=plan.tp * plan.pp * plan.dp,
                     layers_per_stage=plan.layers_per_stage(model.num_layers),
                     working_set_bytes=ws, fits=ws <= usable)


def _layerwise(model: ModelSpec) -> list[tuple[int, int]]:
    """(tp, pp) pairs: tp dividing the attention heads (Megatron's split), pp <= blocks."""
    return [(t, p) for t in divisors(model.num_attention_heads)
            for p in range(1, model.num_layers + 1)]


def smallest_fits(model: ModelSpec, workload: InferenceWorkload,
                  usable: float) -> tuple[Partition | None, Partition]:
    """(the fitting partition with the fewest devices, the one with the smallest working set)
    over every layer-wise partition of one replica (dp=1). Ties: smaller working set, then tp."""
    parts = [_partition(model, workload, Plan(tp=t, pp=p), usable) for t, p in _layerwise(model)]
    fitting = [q for q in parts if q.fits]
    best = min(fitting, key=lambda q: (q.devices, q.working_set_bytes, q.tp), default=None)
    closest = min(parts, key=lambda q: (q.working_set_bytes, q.devices, q.tp))
    return best, closest


def cache_partitions(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                     devices: int) -> list[Partition]:
    """Every layer-wise partition tp x pp x dp = devices (tp dividing the heads, pp <= blocks,
    dp <= batch), with its working set, fit and decode TPOT without/with cache residency.
    Order: fitting first, then cached tokens/s (descending), then the plan string."""
    usable = usable_cache_bytes(cluster.device)
    out = []
    for t, p in _layerwise(model):
        if devices % (t * p) or devices // (t * p) > workload.batch_size:
            continue
        plan = Plan(tp=t, pp=p, dp=devices // (t * p))
        part = _partition(model, workload, plan, usable)
        base, cached, _ = cached_tpot(model, cluster, workload, plan)
        cached = cached if part.fits else base
        tok = math.ceil(workload.batch_size / plan.dp) * plan.dp
        out.append(part.model_copy(update={
            "tpot_s": base, "tpot_cached_s": cached,
            "tokens_per_s": tok / base, "tokens_per_s_cached": tok / cached}))
    return sorted(out, key=lambda q: (not q.fits, -(q.tokens_per_s_cached or 0.0), q.plan))


# ----- the verdict -----------------------------------------------------------------------
def cache_fit(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
              plan: Plan) -> CacheFit:
    """Whether `plan` keeps every device's decode working set in its usable cache, and the
    predicted decode effect (module docstring). Raises SpecError when the device has no cache
    size or bandwidth, PlanError when the inference model rejects the plan."""
    if plan.ep_overlap:
        raise PlanError("cache-fit scores one decode step of the whole batch; ep_overlap=on "
                        "splits it in two, each half streaming the weights again: drop "
                        "ep_overlap")
    dev = cluster.device
    usable = usable_cache_bytes(dev)
    bw_cache = cache_bandwidth(dev)
    base, cached, weights_s = cached_tpot(model, cluster, workload, plan)   # validates the plan
    stages = stage_working_sets(model, workload, plan, usable)
    worst = max(stages, key=lambda s: (s.working_set_bytes, -s.stage))
    feasible = all(s.fits for s in stages)
    if not feasible:
        cached = base
    all_weights = sum(s.resident_weight_bytes for s in stage_working_sets(
        model, workload, Plan(pp=plan.pp), usable))
    smallest, closest = smallest_fits(model, workload, usable)
    batch = math.ceil(workload.batch_size / plan.dp)
    eff, _ = device_efficiency(dev)
    fit = dict(
        plan=f"tp={plan.tp},pp={plan.pp},dp={plan.dp}" + (f",ep={plan.ep}" if plan.ep > 1 else ""),
        device=dev.name,
        devices=plan.tp * plan.pp * plan.dp, batch_per_replica=batch, feasible=feasible,
        cache_bytes=dev.onchip_cache_bytes, usable_cache_bytes=usable,
        reserve_fraction=1.0 - PERSISTING_FRACTION, cache_bandwidth_bytes_per_s=bw_cache,
        hbm_bandwidth_bytes_per_s=dev.memory_bandwidth_bytes_per_s * eff.memory,
        stages=stages, working_set_bytes=worst.working_set_bytes,
        margin_bytes=usable - worst.working_set_bytes, fill=worst.working_set_bytes / usable,
        weight_bound_devices=max(1, math.ceil(all_weights / usable)),
        smallest_fit=smallest, closest=closest, tpot_s=base, tpot_cached_s=cached,
        tpot_change_s=cached - base, tokens_per_s=batch * plan.dp / base,
        tokens_per_s_cached=batch * plan.dp / cached, speedup=base / cached)
    return CacheFit(**fit, reasons=_reasons(fit, worst, model, weights_s / base))


def _mb(x: float) -> str:
    """Bytes in decimal units (the seeds and datasheets write MB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.1f} {unit}"
    return f"{x:,.0f} B"


def _reasons(fit: dict, worst: StageWorkingSet, model: ModelSpec,
             weights_share: float) -> list[str]:
    """One line per finding, every number taken from `fit`."""
    usable, cache = fit["usable_cache_bytes"], fit["cache_bytes"]
    out = [f"usable cache {_mb(usable)}: {PERSISTING_FRACTION:.0%} of the {_mb(cache)} "
           f"on-chip cache, the rest left to streaming (KV cache, activations of other kernels)"]
    head = (f"stage {worst.stage} (blocks {worst.first_block}-{worst.last_block}) holds "
            f"{_mb(worst.resident_weight_bytes)} of weights + {_mb(worst.activation_bytes)} of "
            f"activations per device = {_mb(worst.working_set_bytes)}")
    if fit["feasible"]:
        out.append(f"{head}, {fit['fill']:.0%} of the usable cache: fits")
        out.append(f"decode TPOT {fit['tpot_s'] * 1e3:.4f} ms -> {fit['tpot_cached_s'] * 1e3:.4f}"
                   f" ms ({fit['speedup']:.3f}x) with weights read from cache at "
                   f"{fit['cache_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s instead of HBM at "
                   f"{fit['hbm_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s; {CACHE_BANDWIDTH_FRACTION_NOTE}")
        out.append(f"weight reads are {weights_share:.1%} of the baseline TPOT; the rest (KV "
                   "reads, math beyond memory time, TP/PP communication, kernel launches) is "
                   "unchanged")
    else:
        out.append(f"{head}, {fit['fill']:.1f}x the usable cache: does not fit, effect 0")
    n = fit["weight_bound_devices"]
    out.append(f"all resident weights need at least {n:,} device{'s' if n > 1 else ''} at a "
               "perfect split")
    small, close = fit["smallest_fit"], fit["closest"]
    if small is not None:
        out.append(f"fewest devices that fit: {small.plan} ({small.devices} "
                   f"device{'s' if small.devices > 1 else ''}, "
                   f"{'/'.join(map(str, small.layers_per_stage))} blocks per stage), "
                   f"{_mb(small.working_set_bytes)} per device")
    else:
        out.append(f"no layer-wise partition fits (tp must divide the "
                   f"{model.num_attention_heads} heads, pp <= {model.num_layers} blocks): the "
                   f"smallest working set is {close.plan} on {close.devices} devices, "
                   f"{_mb(close.working_set_bytes)} per device")
    out.append("GEMM tiles (weight tiles and activation chunks a kernel keeps on chip) fit by "
               "construction on any partition and do not reduce HBM weight traffic; only a "
               "resident shard does")
    return out
