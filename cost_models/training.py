"""The training cost model: one plan in, one `Estimate` out.

Composes compute (roofline per operator), communication (alpha-beta on the links each group
spans), memory (Korthikanti) and the pipeline schedule into a step time whose breakdown
adds up exactly.

Schedule (Narayanan et al. 2021 Sec. 2.2): with m micro-batches and per-micro-batch stage
times C_k, 1F1B takes (m-1)*max_k C_k + sum_k C_k, which is (m + p - 1) * C for equal stages
(bubble fraction (p-1)/m) and handles uneven stages (the same expression as Alpa's
inter-operator DP objective, Zheng et al. 2022 Eq. 2). Interleaved 1F1B with v chunks per
device takes m*max C + (p-1)*max C / v (bubble (p-1)/(v*m), Narayanan Sec. 2.2.2). DualPipe
(schedule=dualpipe, DeepSeek-V3 report Sec. 3.2.1 and Table 2) pairs stage r with stage p-1-r
on one rank and takes m x the slowest rank's mean chunk + (p/2-1)(F&B + B - 3W):
`dualpipe_ranks`.

Overlap rules:
- TP communication is on the critical path (no overlap is modelled); so is EP communication
  unless the plan sets ep_overlap (Megatron-Core's combined 1F1B: each MoE block's
  all-to-alls hide behind the adjacent micro-batch's compute, tables.ep_overlap_exposed).
- Pipeline point-to-point: the 1F1B schedule exchanges activations and gradients blocking,
  so every exchange is exposed. The interleaved schedule overlaps its steady-state exchanges
  with the next chunk's compute (Megatron-Core `overlap_p2p_comm`, on by default for
  interleaving: megatron/training/arguments.py turns it off only without virtual stages, and
  Megatron-Bridge's CommOverlapConfig sets it whenever pp > 1 and vpp > 1), leaving what a
  transfer outlasts its chunk; the warmup and cooldown exchanges stay blocking (unless
  --overlap-p2p-communication-warmup-flush, not modelled): `p2p_sync_s`.
- Context-parallel K/V exchange overlaps the attention core; only the excess is exposed.
- Data-parallel gradient reduction overlaps the backward pass of the last micro-batch
  (Megatron-Core --overlap-grad-reduce, PyTorch DDP buckets); the last block's bucket
  cannot overlap. ZeRO-1/2's parameter all-gather overlaps the next step's first forward
  (--overlap-param-gather). With the plan's dp_overlap=off nothing overlaps: the reduction
  runs after the last backward and the gather after the optimizer step, as in Megatron-LM
  before Megatron-Core (its default local DDP: train_step calls allreduce_gradients after
  forward_backward_func returns, megatron/training.py, 2020-22) and DeepSpeed's pipeline
  engine (TrainSchedule appends ReduceGrads after the batch's last backward,
  deepspeed/runtime/pipe/schedule.py); with ZeRO-3 each gather and reduce-scatter then
  runs alone, every micro-batch.
- ZeRO-3 gathers each block's weights before its forward and backward and reduce-scatters
  its gradients, every micro-batch, prefetching one block ahead (FSDP): per micro-batch the
  exposed part is what exceeds the compute it hides behind, plus the first block's gather.
- Overlap is not free: while a data-parallel collective runs beside compute, its NCCL blocks
  hold `collective_sms` of the device's compute units, so the overlapped compute runs that
  much slower; the lost time is counted in dp_comm (efficiency.py, `overlap_slowdown`).
- The passes data-parallel traffic hides behind are their compute plus their exposed
  context-parallel exchange (the DP stream keeps running while compute waits on it), so a
  faster attention core never exposes more in total.
- The optimizer step streams each local parameter's states through memory once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cost_models import comm
from cost_models.compute import BlockCompute, Roofline, Shard, roof_bytes
from cost_models.efficiency import device_efficiency, precision_warning
from cost_models.memory import GIB
from cost_models.tables import STEP_KINDS, StageTables, build_tables, interleaved_warmup_chunks
from planner.errors import SpecError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Dispatcher, Plan, Recompute, Schedule
from planner.result import BREAKDOWN_KEYS, Estimate, StageEstimate
from planner.workload import TrainingWorkload


@dataclass(frozen=True, slots=True)
class Context:
    """Everything that is fixed for one evaluation."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainingWorkload
    plan: Plan
    roof: Roofline
    shard: Shard
    tp_links: comm.GroupLinks
    cp_links: comm.GroupLinks
    dp_links: comm.GroupLinks
    ep_links: comm.GroupLinks
    pp_crosses_nodes: bool


def strides(plan: Plan) -> dict[str, int]:
    """Rank distance between consecutive members of each group, from the layout order."""
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    out, acc = {}, 1
    for name in plan.order:
        out[name] = acc
        acc *= sizes[name]
    return out


def make_context(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                 plan: Plan) -> tuple[Context, bool]:
    """Build the evaluation context; also say whether default efficiency data was used."""
    if plan.offload and cluster.host_bandwidth_bytes_per_s is None:
        raise SpecError(f"offload={plan.offload} moves activations over the host link, and "
                        f"cluster '{cluster.name}' states no host bandwidth; add "
                        "host_bandwidth_bytes_per_s (bytes/s per direction per device, with its "
                        "source) to its file, or use offload=0")
    eff, generic = device_efficiency(cluster.device)
    roof = Roofline(cluster.device, eff, workload.dtype)
    shard = Shard(mbs=plan.mbs, seq_len=workload.seq_len, tp=plan.tp, cp=plan.cp, sp=plan.sp,
                  ep=plan.ep, etp=plan.expert_tp, attn=plan.attn, dtype=workload.dtype,
                  loss=plan.loss)
    st = strides(plan)
    ctx = Context(
        model=model, cluster=cluster, workload=workload, plan=plan, roof=roof, shard=shard,
        tp_links=comm.group_links(cluster, size=plan.tp, stride=st["tp"]),
        cp_links=comm.group_links(cluster, size=plan.cp, stride=st["cp"]),
        dp_links=comm.composite_links(cluster, [(plan.cp, st["cp"]), (plan.dp, st["dp"])]),
        ep_links=comm.ep_links(cluster, plan),
        pp_crosses_nodes=plan.pp > 1 and st["pp"] * plan.pp > cluster.devices_per_node,
    )
    return ctx, generic


def block_comm(ctx: Context, moe: bool, bc: BlockCompute) -> tuple[float, ...]:
    """(tp fwd, tp bwd, cp fwd, cp bwd, ep fwd, ep bwd) exposed seconds of one block:
    Megatron's two all-reduces per block per pass (Shoeybi et al. 2019 Sec. 3); with SP an
    all-gather and a reduce-scatter of the same volume (Korthikanti et al. 2022 Sec. 4.2.2)."""
    m, sh = ctx.model, ctx.shard
    act = sh.tokens * m.hidden_size * roof_bytes(sh.dtype)
    tp = 2 * comm.all_reduce_s(ctx.tp_links, act) if ctx.plan.tp > 1 else 0.0
    cp_f = cp_b = 0.0
    if ctx.plan.cp > 1:
        kv = 2 * sh.tokens * m.kv_heads * m.d_head * roof_bytes(sh.dtype) / ctx.plan.tp
        step = kv / ctx.cp_links.bandwidth_bytes_per_s + ctx.cp_links.latency_s
        # Ring attention: cp-1 K/V chunk exchanges hide behind the attention core
        # (Liu et al. 2023, Ring Attention, Sec. 3); the backward also returns dK/dV.
        cp_f = max(0.0, (ctx.plan.cp - 1) * step - bc.attention_fwd_s)
        cp_b = max(0.0, 2 * (ctx.plan.cp - 1) * step - bc.attention_bwd_s)
    ep = 0.0
    if moe and m.moe is not None and ctx.plan.ep > 1:
        # Token dispatch and combine: each token's hidden state to its top-k experts and back
        # (comm.moe_dispatch_s: per expert inside a node; across nodes once per node with the
        # flex dispatcher, per expert with the alltoall one).
        ep = 2 * comm.moe_dispatch_s(ctx.ep_links, ctx.cluster, tokens=sh.moe_tokens,
                                     top_k=m.moe.top_k, experts=m.moe.num_experts,
                                     row_bytes=m.hidden_size * roof_bytes(sh.dtype),
                                     per_node=ctx.plan.dispatcher == Dispatcher.FLEX,
                                     groups=m.moe.route_groups,
                                     group_topk=m.moe.route_group_topk)
    return tp, tp, cp_f, cp_b, ep, ep


def p2p_s(ctx: Context) -> float:
    """Exposed activation/gradient exchange per micro-batch between neighbouring stages:
    one exchange after the forward and one after the backward, each chunk boundary
    (x vpp); with TP each rank sends its 1/t slice (scatter-gather, Narayanan et al. 2021
    Sec. 4.1)."""
    plan = ctx.plan
    if plan.pp == 1:
        return 0.0
    nbytes = ctx.shard.tokens * ctx.model.hidden_size * roof_bytes(ctx.shard.dtype) / plan.tp
    return 2 * plan.vpp * comm.p2p_s(ctx.cluster, nbytes, crosses_nodes=ctx.pp_crosses_nodes)


def p2p_sync_s(plan: Plan, m: int, p2p_per_microbatch: float) -> float:
    """Exposed seconds per step of the interleaved schedule's blocking exchanges: one transfer
    (p2p_s / (2 vpp)) after each warmup forward chunk and each cooldown backward chunk; 0 for
    1F1B, whose exchanges are all in the per-micro-batch time (p2p_s). DualPipe hides the
    exchanges of its paired chunks and blocks on those of the chunks it runs alone: on the
    first rank 3 pp - 2 of them (DualPipe's `step`: pp - 2 forwards, then 2, then pp/2 - 1
    backward-forward pairs of singles before the steady state; pp/2 - 1, 2 and pp/2 - 1
    backwards after it), one transfer (p2p_s / 2) each."""
    if plan.schedule == Schedule.DUALPIPE:
        return (3 * plan.pp - 2) * p2p_per_microbatch / 2 if plan.pp > 1 else 0.0
    if plan.pp == 1 or plan.vpp == 1:
        return 0.0
    return 2 * interleaved_warmup_chunks(plan, m) * p2p_per_microbatch / (2 * plan.vpp)


def pipeline_time(plan: Plan, m: int, stage_times: list[float],
                  chunk_fraction: float | None = None) -> float:
    """1F1B: (m-1)*max C + sum C; interleaved: m*max C + (p-1)*max C/v (module docstring).
    With an uneven per-virtual-stage layout the bubble is (p-1) of the largest chunk:
    `chunk_fraction` is that chunk's share of its stage (Plan.max_chunk_fraction; 1/v when even)."""
    cmax = max(stage_times)
    if plan.vpp > 1:
        frac = 1.0 / plan.vpp if chunk_fraction is None else chunk_fraction
        return m * cmax + (plan.pp - 1) * cmax * frac
    return (m - 1) * cmax + sum(stage_times)


def step_time_of(tables: StageTables, ranges: list[tuple[int, int]]) -> float:
    """Step time of one partition (what the search minimises; equals Estimate.step_time_s)."""
    times, tails, _ = tables.stage_profile(ranges)
    return step_from_stages(tables, times, tails)


def step_from_stages(tables: StageTables, times: list[float], tails: list[float]) -> float:
    """The step time of stages with these per-micro-batch times and tails
    (StageTables.stage_profile): the pipeline schedule plus the slowest tail."""
    plan, m = tables.ctx.plan, tables.num_microbatches
    assert plan.schedule != Schedule.DUALPIPE      # dualpipe_ranks scores those
    frac = plan.max_chunk_fraction(tables.num_layers)
    return (pipeline_time(plan, m, times, frac) + max(tails)
            + p2p_sync_s(plan, m, tables.extras["p2p"]))


@dataclass(frozen=True)
class DualPipeRanks:
    """One DualPipe split, per pipeline rank r (ranks r and pp-1-r hold the same two stages,
    r and pp-1-r, and get the same values): per-micro-batch seconds by kind (the mean of its
    two stages' chunks: each direction sends half the micro-batches through each), the
    bubble, the tail (data-parallel reduction of both stages, the sum of the two copies'
    gradients, the optimizer steps) and the memory of both stages."""

    kinds: list[dict[str, float]]
    bubble: list[float]
    tails: list[tuple[float, float]]      # (exposed dp reduction of both stages, optimizer)
    mems: list[dict[str, float]]
    sync: float                           # the single chunks' blocking exchanges

    def times(self) -> list[float]:
        return [sum(k[kind] for kind in STEP_KINDS) for k in self.kinds]

    def pipe(self, m: int) -> list[float]:
        return [m * t + b for t, b in zip(self.times(), self.bubble)]

    def step(self, m: int) -> float:
        return max(self.pipe(m)) + self.sync + max(sum(t) for t in self.tails)

    def peak(self) -> float:
        return max(sum(mm.values()) for mm in self.mems)


def dualpipe_ranks(tables: StageTables, ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]
                   ) -> DualPipeRanks:
    """Score a split under DualPipe (DeepSeek-V3 report, arXiv:2412.19437 Sec. 3.2.1 and
    Table 2; github.com/deepseek-ai/DualPipe). Rank r holds stage r of the forward direction
    and stage pp-1-r of the reverse one, so over a step it runs m/2 micro-batches through
    each: m x the mean of its two chunks. Bubble: (pp/2 - 1)(F&B + B - 3W), with F, B and W
    the forward, full backward and weight-gradient seconds of one chunk (the rank's mean) and
    F&B = F + B: the paired chunks overlap their communication, not their computation. W is
    the blocks' weight-gradient GEMMs (Roofline.linear_passes); the embedding's and head's are left
    in B (a slightly larger bubble). Memory: both stages' weights, gradients, optimizer states
    and activations (pp - s micro-batches of stage s: memory.in_flight_microbatches), the
    buffers once. The two copies of each stage sum their gradients: each stage's gradients
    are reduced over both copies' data-parallel ranks (2 x dp x cp, the experts' over 2 x
    their data-parallel group), under the overlap rules of any data-parallel reduction; the
    pair spans nodes when the pipeline group does."""
    ctx, plan = tables.ctx, tables.ctx.plan
    pp = plan.pp
    st = strides(plan)
    pair = (2, ctx.cluster.devices_per_node if ctx.pp_crosses_nodes else 1)
    e = tables.extras
    edp = int(e["edp"])
    summed = replace(tables, ctx=replace(ctx, dp_links=comm.composite_links(
        ctx.cluster, [(plan.cp, st["cp"]), (plan.dp, st["dp"]), pair])),
        extras={**e, "exp_links": comm.composite_links(
            ctx.cluster, [(edp, plan.ep * plan.expert_tp), pair])})
    per = []
    for k, (a, b) in enumerate(ranges):
        kinds = {key: float(v) for key, v in tables.kinds(k, a, b).items()}
        kinds["wgrad"] = float(tables.sums("wgrad", a, b))
        mem = {key: float(v) for key, v in tables.memory(k, a, b).items()}
        dp, opt = (float(x) for x in summed.tail(k, a, b))
        per.append((kinds, mem, dp, opt))
    static = e["static_buffers"]
    out_k, out_b, out_t, out_m = [], [], [], []
    for r in range(pp):
        s = pp - 1 - r
        (kr, mr, dr, orr), (ks, ms, ds, os_) = per[r], per[s]
        kinds = {key: (kr[key] + ks[key]) / 2 for key in kr}
        t = sum(kinds[kind] for kind in STEP_KINDS)
        f, w = kinds["fwd"], kinds["wgrad"]
        bwd = t - f
        out_k.append(kinds)
        out_b.append(max(0.0, (pp / 2 - 1) * ((f + bwd) + bwd - 3 * w)))
        out_t.append((dr + ds, orr + os_))
        mem = {key: mr[key] + ms[key] for key in mr}
        mem["buffers"] -= static          # counted in both stages' buffers; held once
        out_m.append(mem)
    return DualPipeRanks(kinds=out_k, bubble=out_b, tails=out_t, mems=out_m,
                         sync=p2p_sync_s(plan, tables.num_microbatches, tables.extras["p2p"]))


def estimate_training(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                      plan: Plan) -> Estimate:
    """Score one (already validated) training plan."""
    ctx, generic = make_context(model, cluster, workload, plan)
    m = workload.global_batch_size // (plan.dp * plan.mbs)
    tables = build_tables(ctx, m)
    ranges = plan.stage_ranges(model.num_layers)
    if plan.schedule == Schedule.DUALPIPE:
        return _estimate_dualpipe(ctx, tables, ranges, m, generic)
    kinds = [{k: float(v) for k, v in tables.kinds(s, a, b).items()}
             for s, (a, b) in enumerate(ranges)]
    times = [float(tables.time(s, a, b)) for s, (a, b) in enumerate(ranges)]
    crit_k = max(range(plan.pp), key=lambda s: (times[s], -s))
    crit, cmax = kinds[crit_k], times[crit_k]
    pipe = pipeline_time(plan, m, times, plan.max_chunk_fraction(model.num_layers))
    tails = [tuple(float(x) for x in tables.tail(s, a, b)) for s, (a, b) in enumerate(ranges)]
    tail_k = max(range(plan.pp), key=lambda s: (sum(tails[s]), -s))
    breakdown = {key: m * crit[key] for key in STEP_KINDS}
    breakdown["pp_comm"] += p2p_sync_s(plan, m, tables.extras["p2p"])
    # max(0, .): with no bubble (pp=1) rounding can leave pipe - m*cmax at -1e-20.
    breakdown |= {"dp_comm": tails[tail_k][0], "bubble": max(0.0, pipe - m * cmax),
                  "optimizer": tails[tail_k][1]}
    breakdown = {k: breakdown[k] for k in BREAKDOWN_KEYS}
    mems = [{k: float(v) for k, v in tables.memory(s, a, b).items()}
            for s, (a, b) in enumerate(ranges)]
    return _finish(ctx, plan=plan, m=m, step=sum(breakdown.values()), breakdown=breakdown,
                   times=times, mems=mems, ranges=ranges, generic=generic)


def _estimate_dualpipe(ctx: Context, tables: StageTables, ranges: list[tuple[int, int]], m: int,
                       generic: bool) -> Estimate:
    """estimate_training under DualPipe: the critical rank's kinds x m, its bubble, the
    single chunks' exchanges and the slowest tail; per-stage rows report each rank."""
    plan = ctx.plan
    ranks = dualpipe_ranks(tables, ranges)
    pipe = ranks.pipe(m)
    crit_k = max(range(plan.pp), key=lambda r: (pipe[r], -r))
    crit = ranks.kinds[crit_k]
    tail_k = max(range(plan.pp), key=lambda r: (sum(ranks.tails[r]), -r))
    breakdown = {key: m * crit[key] for key in STEP_KINDS}
    breakdown["pp_comm"] += ranks.sync
    breakdown |= {"dp_comm": ranks.tails[tail_k][0], "bubble": ranks.bubble[crit_k],
                  "optimizer": ranks.tails[tail_k][1]}
    breakdown = {k: breakdown[k] for k in BREAKDOWN_KEYS}
    return _finish(ctx, plan=plan, m=m, step=sum(breakdown.values()), breakdown=breakdown,
                   times=ranks.times(), mems=ranks.mems, ranges=ranges, generic=generic)


def _finish(ctx: Context, *, plan: Plan, m: int, step: float, breakdown: dict[str, float],
            times: list[float], mems: list[dict[str, float]], ranges: list[tuple[int, int]],
            generic: bool) -> Estimate:
    model, wl, dev = ctx.model, ctx.workload, ctx.cluster.device
    n = plan.devices
    tokens = wl.global_batch_size * wl.seq_len
    fwd_per_token = model.training_forward_flops_per_token(wl.seq_len)
    model_flops = 3 * fwd_per_token * tokens
    extra = 0.0
    if plan.recompute == Recompute.FULL:
        extra = full_recompute_flops_per_token(model, wl.seq_len) * tokens
    elif plan.recompute == Recompute.SELECTIVE:
        extra = selective_recompute_flops_per_token(model, plan, wl.seq_len) * tokens
    peak = dev.peak_flops(wl.dtype)
    totals = [sum(mm.values()) for mm in mems]
    worst = max(range(len(mems)), key=lambda k: (totals[k], -k))
    cap = dev.memory_bytes
    return Estimate(
        plan=plan.to_string(), devices=n, num_microbatches=m, step_time_s=step,
        tokens_per_s=tokens / step,
        model_tflops_per_gpu=model_flops / step / n / 1e12,
        hardware_tflops_per_gpu=(model_flops + extra) / step / n / 1e12,
        mfu=model_flops / step / n / peak, hfu=(model_flops + extra) / step / n / peak,
        peak_memory_gib=totals[worst] / GIB, capacity_gib=cap / GIB, fits=totals[worst] <= cap,
        over_memory_gib=max(0.0, (totals[worst] - cap) / GIB),
        breakdown=breakdown,
        memory_gib={k: v / GIB for k, v in mems[worst].items()},
        stages=[StageEstimate(first_layer=a, last_layer=b, has_embedding=k == 0,
                              has_head=k == plan.pp - 1,
                              mtp_modules=model.mtp_layers if k == plan.pp - 1 else 0,
                              time_per_microbatch_s=times[k],
                              memory_gib=totals[k] / GIB)
                for k, (a, b) in enumerate(ranges)],
        warnings=_warnings(ctx, generic, totals[worst] / cap),
    )


def full_recompute_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Hardware FLOPs per token that full recomputation repeats: every block's forward (the
    MTP modules' blocks too), not the output heads or the MTP projections. For GPT it is the
    fourth pass of Narayanan et al. 2021's Eq. 3."""
    h = model.hidden_size
    head = 2.0 * model.vocab_size * h * (1 + model.mtp_layers)
    return (model.training_forward_flops_per_token(seq_len) - head
            - 2.0 * 2 * h * h * model.mtp_layers)


def selective_recompute_flops_per_token(model: ModelSpec, plan: Plan, seq_len: int) -> float:
    """Hardware FLOPs per token that selective recomputation repeats (compute.module_recompute,
    counted over the whole model): the unfused attention core's score FLOPs (Korthikanti et
    al. 2022), MLA's up-projections, the dense blocks' MLPs; norms and activations are not
    matmuls and count none."""
    modules, L = plan.selective_modules, model.num_layers
    out = 0.0
    if "core_attn" in modules and not plan.attn.fused:
        out += model.attention_score_flops_per_token(seq_len)
    if "mla_up_proj" in modules and model.mla is not None:
        m, a = model.mla, model.num_attention_heads
        up = m.kv_lora_rank_dim * a * (m.qk_nope_head_dim + m.v_head_dim)
        if m.q_lora_rank_dim:
            up += m.q_lora_rank_dim * a * (m.qk_nope_head_dim + m.qk_rope_head_dim)
        out += 2.0 * up * L
    if "mlp" in modules:
        mats = 3 if model.activation.gated else 2
        out += 2.0 * mats * model.hidden_size * model.ffn_hidden_size * (L - model.num_moe_layers)
    return out


NEAR_CAPACITY = 0.85
"""Memory fill (most loaded device / capacity) from which an estimate that fits warns that the
run is near capacity. Close to it, PyTorch's caching allocator frees its cache and retries
`cudaMalloc` when an allocation fails, which synchronises the device and costs time that
depends on the allocation pattern; the step time has no term for it. In the validation data
(README, "Accuracy against published runs") the MosaicML runs predicted above 85% of memory
are predicted 14.8% too fast on average (8 runs), those below 4.9% (55 runs). The threshold
selects the warning only; it changes no number."""


MANY_LOCAL_EXPERTS = 16
"""Routed experts per device from which an estimate warns that host time is not in it. A GPU
framework that runs each expert as its own GEMM (DeviceEfficiency.grouped_row_tile = 0:
Transformer Engine's GroupedLinear launches one cuBLAS GEMM per expert, and quantises and
allocates per expert, in both passes) issues kernels and Python work per local expert and
micro-batch, and Megatron-Core's dropless all-to-all dispatcher copies the tokens-per-expert
counts to the host every MoE layer and waits for them (token_dispatcher.py,
`_maybe_dtoh_and_synchronize`), so the CPU cannot run ahead of the GPU and that host time
adds to the step. The cost model has no term for it: no published per-expert host cost was
found (the per-launch cost it knows, efficiency.py's 4.2 us floor, explains a tenth to a third
of the gap). In the validation data the published runs at or above this count were predicted
much further too fast than those below it (`benchmarks/validate_moe.py` prints the grouping
under its table; README "Mixture-of-experts runs"). The threshold selects the warning only;
it changes no number."""


def local_experts_warned(model: ModelSpec, plan: Plan, eff_grouped_row_tile: int) -> bool:
    """Whether a plan gets the many-local-experts warning (MANY_LOCAL_EXPERTS)."""
    return (model.moe is not None and eff_grouped_row_tile == 0
            and model.moe.num_experts / plan.ep >= MANY_LOCAL_EXPERTS)


def _warnings(ctx: Context, generic: bool, fill: float = 0.0) -> list[str]:
    out = []
    if local_experts_warned(ctx.model, ctx.plan, ctx.roof.eff.grouped_row_tile):
        assert ctx.model.moe is not None
        local = ctx.model.moe.num_experts / ctx.plan.ep
        out.append(f"{local:g} routed experts per device (ep={ctx.plan.ep}): the host time of "
                   "issuing each expert's kernels, exposed by the dropless dispatcher's "
                   "per-layer host sync, is not in the step time (published runs with "
                   f"{MANY_LOCAL_EXPERTS} or more experts per device were slower than "
                   "predicted); a larger ep, a fused grouped-expert MLP or CUDA graphs lower it")
    if NEAR_CAPACITY <= fill <= 1.0:
        out.append(f"the most loaded device is at {fill:.0%} of its memory: near capacity the "
                   "framework's allocator retries and defragments, which the step time does not "
                   "include (published runs this full were slower than predicted); "
                   "search --memory-fraction 0.85 keeps headroom")
    if generic:
        out.append(f"no efficiency data for device '{ctx.cluster.device.name}'; generic "
                   "achievable fractions were used (see cost_models/efficiency.py)")
    for text in (precision_warning(ctx.cluster.device, ctx.workload.dtype),
                 ctx.model.position_warning(ctx.workload.seq_len)):
        if text:
            out.append(text)
    if ctx.plan.sp and ctx.plan.tp == 1:
        out.append("sp=on has no effect with tp=1")
    if ctx.plan.dispatcher != Dispatcher.FLEX and (
            ctx.model.moe is None or ctx.plan.ep == 1 or not ctx.ep_links.spans_nodes):
        out.append(f"dispatcher={ctx.plan.dispatcher.value} has no effect here: the two "
                   "dispatchers differ only when an expert-parallel group spans nodes")
    if ctx.tp_links.spans_nodes:
        out.append(f"the tp={ctx.plan.tp} group spans nodes: tensor-parallel traffic crosses "
                   "the inter-node network")
    return out
