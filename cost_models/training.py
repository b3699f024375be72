"""The training cost model: one plan in, one `Estimate` out.

Composes compute (roofline per operator), communication (alpha-beta on the links each group
spans), memory (Korthikanti) and the pipeline schedule into a step time whose breakdown
adds up exactly.

Schedule (Narayanan et al. 2021 Sec. 2.2): with m micro-batches and per-micro-batch stage
times C_k, 1F1B takes (m-1)*max_k C_k + sum_k C_k, which is (m + p - 1) * C for equal stages
(bubble fraction (p-1)/m) and handles uneven stages (the same expression as Alpa's
inter-operator DP objective, Zheng et al. 2022 Eq. 2). Interleaved 1F1B with v chunks per
device takes m*max C + (p-1)*max C / v (bubble (p-1)/(v*m), Narayanan Sec. 2.2.2).

Overlap rules:
- TP and EP communication are on the critical path (no overlap is modelled).
- Context-parallel K/V exchange overlaps the attention core; only the excess is exposed.
- Data-parallel gradient reduction overlaps the backward pass of the last micro-batch
  (Megatron-Core --overlap-grad-reduce, PyTorch DDP buckets); the last block's bucket
  cannot overlap. ZeRO-1/2's parameter all-gather overlaps the next step's first forward.
- ZeRO-3 gathers each block's weights before its forward and backward and reduce-scatters
  its gradients, every micro-batch, prefetching one block ahead (FSDP): per micro-batch the
  exposed part is what exceeds the compute it hides behind, plus the first block's gather.
- The optimizer step streams each local parameter's states through memory once.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost_models import comm
from cost_models.compute import (
    BlockCompute,
    Roofline,
    Shard,
    block_compute,
    embedding_compute,
    head_compute,
    roof_bytes,
)
from cost_models.efficiency import device_efficiency
from cost_models.memory import (
    FRAGMENTATION,
    GIB,
    StageMemory,
    block_activation_bytes,
    buffer_bytes,
    head_activation_bytes,
    in_flight_microbatches,
    stage_params,
    state_bytes,
)
from planner.hardware import ClusterSpec
from planner.model import ModelSpec, grad_bytes_per_param, weight_bytes_per_param
from planner.plan import Plan, Recompute
from planner.result import Estimate, StageEstimate
from planner.workload import TrainingWorkload

OPTIMIZER_BYTES_PER_PARAM = 4 + 4 + 4 + 4 + 4 + 4
"""Adam step traffic per parameter beyond the gradient and weight: read and write the fp32
master weight, momentum and variance (6 x 4 bytes)."""


@dataclass(frozen=True, slots=True)
class StageTime:
    """Per-micro-batch seconds of one stage, by kind (critical-path parts only)."""

    compute: float
    recompute: float
    tp_comm: float
    cp_comm: float
    ep_comm: float
    pp_comm: float
    bwd_compute: float      # backward compute alone: the window that hides DP reduction
    fwd_compute: float

    @property
    def total(self) -> float:
        return (self.compute + self.recompute + self.tp_comm + self.cp_comm + self.ep_comm
                + self.pp_comm)


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


def _strides(plan: Plan) -> dict[str, int]:
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    out, acc = {}, 1
    for name in plan.order:
        out[name] = acc
        acc *= sizes[name]
    return out


def make_context(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                 plan: Plan) -> tuple[Context, bool]:
    """Build the evaluation context; also say whether default efficiency data was used."""
    eff, generic = device_efficiency(cluster.device)
    roof = Roofline(cluster.device, eff, workload.dtype)
    shard = Shard(mbs=plan.mbs, seq_len=workload.seq_len, tp=plan.tp, cp=plan.cp, sp=plan.sp,
                  ep=plan.ep, etp=plan.expert_tp, attn=plan.attn, dtype=workload.dtype)
    st = _strides(plan)
    dp_stride = min(st["dp"], st["cp"]) if plan.cp > 1 else st["dp"]
    ctx = Context(
        model=model, cluster=cluster, workload=workload, plan=plan, roof=roof, shard=shard,
        tp_links=comm.group_links(cluster, size=plan.tp, stride=st["tp"]),
        cp_links=comm.group_links(cluster, size=plan.cp, stride=st["cp"]),
        dp_links=comm.group_links(cluster, size=plan.dp * plan.cp, stride=dp_stride),
        ep_links=comm.group_links(cluster, size=plan.ep, stride=plan.expert_tp),
        pp_crosses_nodes=plan.pp > 1 and st["pp"] * plan.pp > cluster.devices_per_node,
    )
    return ctx, generic


def _block_comm(ctx: Context, moe: bool, bc: BlockCompute) -> tuple[float, float, float, float, float, float]:
    """(tp fwd, tp bwd, cp fwd, cp bwd, ep fwd, ep bwd) exposed seconds of one block."""
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
        tokens_out = sh.tokens * m.moe.top_k * m.hidden_size * roof_bytes(sh.dtype)
        ep = 2 * comm.all_to_all_s(ctx.ep_links, ctx.cluster, tokens_out)
    return tp, tp, cp_f, cp_b, ep, ep


def stage_time(ctx: Context, first: int, last: int, *, has_embedding: bool,
               has_head: bool) -> StageTime:
    """Seconds per micro-batch of the stage holding blocks first..last."""
    m, plan = ctx.model, ctx.plan
    fwd = bwd = rec = tp = cp = ep = 0.0
    cache: dict[bool, tuple[BlockCompute, tuple[float, ...]]] = {}
    for layer in range(first, last + 1):
        moe = m.is_moe_layer(layer)
        if moe not in cache:
            bc = block_compute(m, ctx.roof, ctx.shard, moe=moe)
            cache[moe] = (bc, _block_comm(ctx, moe, bc))
        bc, (tpf, tpb, cpf, cpb, epf, epb) = cache[moe]
        fwd, bwd = fwd + bc.fwd_s, bwd + bc.bwd_s
        tp, cp, ep = tp + tpf + tpb, cp + cpf + cpb, ep + epf + epb
        if plan.recompute == Recompute.FULL:
            rec += bc.fwd_s
            tp, cp, ep = tp + tpf, cp + cpf, ep + epf
        elif plan.recompute == Recompute.SELECTIVE:
            rec += bc.attn_core_fwd_s
    if has_embedding:
        ef, eb = embedding_compute(m, ctx.roof, ctx.shard)
        fwd, bwd = fwd + ef, bwd + eb
        if plan.tp > 1 and m.vocab_size:
            act = ctx.shard.tokens * m.hidden_size * roof_bytes(ctx.shard.dtype)
            tp += comm.all_reduce_s(ctx.tp_links, act)
    if has_head:
        hf, hb, _ = head_compute(m, ctx.roof, ctx.shard)
        fwd, bwd = fwd + hf, bwd + hb
    return StageTime(compute=fwd + bwd, recompute=rec, tp_comm=tp, cp_comm=cp, ep_comm=ep,
                     pp_comm=_p2p(ctx), bwd_compute=bwd, fwd_compute=fwd)


def _p2p(ctx: Context) -> float:
    """Exposed activation/gradient exchange per micro-batch between neighbouring stages:
    one exchange after the forward and one after the backward, each chunk boundary
    (x vpp); with SP each TP rank sends its 1/t slice (Narayanan et al. 2021 Sec. 4.1)."""
    plan = ctx.plan
    if plan.pp == 1:
        return 0.0
    nbytes = ctx.shard.tokens * ctx.model.hidden_size * roof_bytes(ctx.shard.dtype)
    if plan.sp or plan.tp > 1:
        nbytes /= plan.tp
    return 2 * plan.vpp * comm.p2p_s(ctx.cluster, nbytes, crosses_nodes=ctx.pp_crosses_nodes)


def _dp_exposed(ctx: Context, params_dense: float, params_expert: float, edp: int,
                crit: StageTime, layers: int, m: int) -> float:
    """Exposed data-parallel (and ZeRO) communication seconds per step on one stage."""
    plan, dtype = ctx.plan, ctx.workload.dtype
    g, w = grad_bytes_per_param(dtype), weight_bytes_per_param(dtype)
    dp_size = plan.dp * plan.cp
    exp_links = comm.group_links(ctx.cluster, size=edp, stride=plan.ep * plan.expert_tp)
    if dp_size == 1 and edp == 1:
        return 0.0

    def both(fn: object, per: int) -> float:
        return (fn(ctx.dp_links, params_dense * per)  # type: ignore[operator]
                + fn(exp_links, params_expert * per))  # type: ignore[operator]

    tail = 1.0 / max(1, layers)
    if plan.zero >= 3:
        ag = both(comm.all_gather_s, w)
        rs = both(comm.reduce_scatter_s, g)
        per_mb = (max(0.0, ag - crit.fwd_compute) + max(0.0, ag + rs - crit.bwd_compute)
                  + ag * tail)
        return m * per_mb
    if plan.zero >= 1:
        reduce = both(comm.reduce_scatter_s, g)
        gather = both(comm.all_gather_s, w)
        return (max(0.0, reduce - crit.bwd_compute) + reduce * tail
                + max(0.0, gather - crit.fwd_compute))
    reduce = both(comm.all_reduce_s, g)
    return max(0.0, reduce - crit.bwd_compute) + reduce * tail


def _optimizer_s(ctx: Context, params_dense: float, params_expert: float, edp: int) -> float:
    """Optimizer step: stream the local (ZeRO-sharded) states through memory once."""
    dtype = ctx.workload.dtype
    local = params_dense / (ctx.plan.dp * ctx.plan.cp if ctx.plan.zero >= 1 else 1)
    local += params_expert / (edp if ctx.plan.zero >= 1 else 1)
    per = OPTIMIZER_BYTES_PER_PARAM + grad_bytes_per_param(dtype) + weight_bytes_per_param(dtype)
    return ctx.roof.stream(local * per)


def _stage_memory(ctx: Context, stage: int, first: int, last: int, m: int) -> tuple[StageMemory, object]:
    model, plan, wl = ctx.model, ctx.plan, ctx.workload
    emb, head = stage == 0, stage == plan.pp - 1
    params = stage_params(model, plan, first, last, has_embedding=emb, has_head=head)
    weights, grads, opt = state_bytes(params, plan, wl.dtype, wl.optimizer)
    per_mb = sum(block_activation_bytes(model, plan, seq_len=wl.seq_len, fused_attention=plan.attn.fused,
                                        moe=model.is_moe_layer(i)) for i in range(first, last + 1))
    act = per_mb * in_flight_microbatches(plan, stage, m)
    if head:
        act += head_activation_bytes(model, plan, seq_len=wl.seq_len)
    buffers = buffer_bytes(model, plan, params, seq_len=wl.seq_len,
                           layers_on_stage=last - first + 1, dtype=wl.dtype)
    buffers += FRAGMENTATION * (weights + grads + opt + act)
    return StageMemory(weights, grads, opt, act, buffers), params


def estimate_training(model: ModelSpec, cluster: ClusterSpec, workload: TrainingWorkload,
                      plan: Plan) -> Estimate:
    """Score one (already validated) training plan."""
    ctx, generic = make_context(model, cluster, workload, plan)
    m = workload.global_batch_size // (plan.dp * plan.mbs)
    ranges = plan.stage_ranges(model.num_layers)
    times, mems, params = [], [], []
    for k, (first, last) in enumerate(ranges):
        times.append(stage_time(ctx, first, last, has_embedding=k == 0,
                                has_head=k == plan.pp - 1))
        mem, par = _stage_memory(ctx, k, first, last, m)
        mems.append(mem)
        params.append(par)
    crit_k = max(range(plan.pp), key=lambda k: (times[k].total, -k))
    crit, cmax = times[crit_k], times[crit_k].total
    if plan.vpp > 1:
        pipe = m * cmax + (plan.pp - 1) * cmax / plan.vpp
    else:
        pipe = (m - 1) * cmax + sum(t.total for t in times)
    dp_k = [_dp_exposed(ctx, p.dense, p.expert, p.edp, times[k], r[1] - r[0] + 1, m)
            for k, (p, r) in enumerate(zip(params, ranges))]
    opt_k = [_optimizer_s(ctx, p.dense, p.expert, p.edp) for p in params]
    tail_k = max(range(plan.pp), key=lambda k: (dp_k[k] + opt_k[k], -k))
    breakdown = {
        "compute": m * crit.compute, "recompute": m * crit.recompute,
        "tp_comm": m * crit.tp_comm, "cp_comm": m * crit.cp_comm, "pp_comm": m * crit.pp_comm,
        "dp_comm": dp_k[tail_k], "ep_comm": m * crit.ep_comm,
        "bubble": pipe - m * cmax, "optimizer": opt_k[tail_k],
    }
    step = sum(breakdown.values())
    return _finish(ctx, plan=plan, m=m, step=step, breakdown=breakdown, times=times,
                   mems=mems, ranges=ranges, generic=generic)


def _finish(ctx: Context, *, plan: Plan, m: int, step: float, breakdown: dict[str, float],
            times: list[StageTime], mems: list[StageMemory], ranges: list[tuple[int, int]],
            generic: bool) -> Estimate:
    model, wl, dev = ctx.model, ctx.workload, ctx.cluster.device
    n = plan.devices
    tokens = wl.global_batch_size * wl.seq_len
    fwd_per_token = model.forward_flops_per_token(wl.seq_len)
    model_flops = 3 * fwd_per_token * tokens
    extra = 0.0
    if plan.recompute == Recompute.FULL:
        head = 2.0 * model.vocab_size * model.hidden_size
        extra = (fwd_per_token - head) * tokens
    elif plan.recompute == Recompute.SELECTIVE and not plan.attn.fused:
        extra = model.attention_score_flops_per_token(wl.seq_len) * tokens
    peak = dev.peak_flops(wl.dtype)
    worst = max(range(len(mems)), key=lambda k: (mems[k].total, -k))
    mem = mems[worst]
    cap = dev.memory_bytes
    warnings = _warnings(ctx, generic)
    return Estimate(
        plan=plan.to_string(), devices=n, num_microbatches=m, step_time_s=step,
        tokens_per_s=tokens / step,
        model_tflops_per_gpu=model_flops / step / n / 1e12,
        hardware_tflops_per_gpu=(model_flops + extra) / step / n / 1e12,
        mfu=model_flops / step / n / peak, hfu=(model_flops + extra) / step / n / peak,
        peak_memory_gib=mem.total / GIB, capacity_gib=cap / GIB, fits=mem.total <= cap,
        over_memory_gib=max(0.0, (mem.total - cap) / GIB),
        breakdown=breakdown,
        memory_gib={"weights": mem.weights / GIB, "grads": mem.grads / GIB,
                    "optimizer": mem.optimizer / GIB, "activations": mem.activations / GIB,
                    "buffers": mem.buffers / GIB},
        stages=[StageEstimate(first_layer=a, last_layer=b, has_embedding=k == 0,
                              has_head=k == plan.pp - 1, time_per_microbatch_s=times[k].total,
                              memory_gib=mems[k].total / GIB)
                for k, (a, b) in enumerate(ranges)],
        warnings=warnings,
    )


def _warnings(ctx: Context, generic: bool) -> list[str]:
    out = []
    if generic:
        out.append(f"no efficiency data for device '{ctx.cluster.device.name}'; generic "
                   "achievable fractions were used (see cost_models/efficiency.py)")
    if ctx.plan.sp and ctx.plan.tp == 1:
        out.append("sp=on has no effect with tp=1")
    if ctx.tp_links.spans_nodes:
        out.append(f"the tp={ctx.plan.tp} group spans nodes: tensor-parallel traffic crosses "
                   "the inter-node network")
    return out
