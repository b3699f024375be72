"""Stage tables: the cost of any contiguous range of blocks on any pipeline stage.

Decides: per-layer arrays (time by kind, activation bytes, parameters) and, from their prefix
sums, the per-micro-batch time, the peak memory and the data-parallel/optimizer tail of
stage k holding blocks i..j, for scalar or numpy-array i and j. This is the only place those
stage formulas live: `training.estimate_training` reads them at a plan's ranges and the
search's partition DP reads them as whole L x L arrays, so both always agree (the role of
Alpa's compute_cost tensor, Zheng et al. 2022 Sec. 5.2).

Does not decide the schedule (training.py) or the partition (search/layer_partition.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cost_models import comm
from cost_models.compute import (block_compute, embedding_compute, head_compute,
                                  module_recompute, roof_bytes)
from cost_models.memory import (
    FRAGMENTATION,
    FRAMEWORK_OVERHEAD_BYTES,
    StageParams,
    block_activation_bytes,
    head_activation_bytes,
    in_flight_microbatches,
    offload_resident,
    state_bytes,
)
from planner.model import ModelSpec, weight_bytes_per_param
from planner.plan import Plan, Recompute, Schedule

Arr = Any  # a float or a numpy array of floats (broadcast over stage ranges)

OPTIMIZER_BYTES_PER_PARAM = 4 + 4 + 4 + 4 + 4 + 4
"""Adam step traffic per parameter beyond the gradient and weight: read and write the fp32
master weight, momentum and variance (6 x 4 bytes)."""
KINDS = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm")
STEP_KINDS = (*KINDS, "pp_comm", "offload")
"""Everything of a stage's time per micro-batch (StageTables.time)."""


@dataclass(frozen=True)
class StageTables:
    """Prefix sums of per-layer quantities plus the per-stage extras (embedding, head, p2p)."""

    prefix: dict[str, np.ndarray]      # kind -> cumulative sum over layers, length L + 1
    extras: dict[str, float]           # embedding/head/p2p seconds and parameters
    ctx: Any                           # training.Context
    num_microbatches: int

    @property
    def num_layers(self) -> int:
        return len(self.prefix["act"]) - 1

    def sums(self, key: str, i: Arr, j: Arr) -> Arr:
        """Sum of a per-layer quantity over blocks i..j (inclusive)."""
        p = self.prefix[key]
        return p[np.asarray(j) + 1] - p[np.asarray(i)]

    def span(self, i: Arr, j: Arr, keys: tuple[str, ...] | None = None) -> dict[str, Arr]:
        """Per-layer sums over blocks i..j (all of them, or only `keys`), computed once and
        shared by every stage that asks about the same ranges."""
        out = {key: self.sums(key, i, j) for key in (keys or self.prefix)}
        out["layers"] = np.asarray(j) - np.asarray(i) + 1
        return out

    def kinds(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None) -> dict[str, Arr]:
        """Per-micro-batch seconds of stage k by kind, plus fwd/bwd compute windows."""
        sp = span if span is not None else self.span(i, j)
        pp, e = self.ctx.plan.pp, self.extras
        out = {kind: sp[kind] for kind in (*KINDS, "fwd", "bwd")}
        if k == 0:
            for kind in ("compute", "fwd", "bwd", "tp_comm"):
                out[kind] = out[kind] + e[f"emb_{kind}"]
        if k == pp - 1:
            for kind in ("compute", "fwd", "bwd"):
                out[kind] = out[kind] + e[f"head_{kind}"]
            for kind in (*KINDS, "fwd", "bwd"):
                out[kind] = out[kind] + e[f"mtp_{kind}"]
        out["pp_comm"] = steady_p2p_s(self.ctx.plan, self.num_microbatches, e["p2p"],
                                      out["fwd"], out["bwd"])
        out["offload"] = self._offload_exposed(sp, out["fwd"], out["bwd"])
        return out

    def _offload_exposed(self, sp: dict[str, Arr], fwd: Arr, bwd: Arr) -> Arr:
        """Exposed seconds per micro-batch of activation offloading (plan key offload): the
        offloaded layers' activations go to host memory on a copy engine while the forward
        computes and come back while the backward computes (Transformer Engine's CPU offload
        runs its copies on separate CUDA streams, overlapped with compute), over the device's
        host link (ClusterSpec.host_bandwidth_bytes_per_s); what a pass's compute does not
        cover is exposed. Each layer moves the stage's mean activations per layer."""
        plan = self.ctx.plan
        n = plan.offload
        if not n:
            return 0.0 * fwd
        host = self.ctx.cluster.host_bandwidth_bytes_per_s
        assert host is not None and plan.pp == 1      # training.make_context, validate.py
        moved = sp["act"] * n / sp["layers"] / host
        return np.maximum(0.0, moved - fwd) + np.maximum(0.0, moved - bwd)

    def time(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None) -> Arr:
        """Per-micro-batch time of stage k (everything on its critical path)."""
        d = self.kinds(k, i, j, span)
        return sum(d[kind] for kind in STEP_KINDS)

    def stage_profile(self, ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]
                      ) -> tuple[list[float], list[float], list[float]]:
        """Per stage of one split: time per micro-batch, tail (exposed data-parallel
        communication + optimizer step) and peak memory. The middle stages differ only in their
        blocks and micro-batches in flight, so they are taken in one array pass (the same floats
        as one call per stage, element by element); the first and last stages, which hold the
        embedding and the head, one call each."""
        pp, m = len(ranges), self.num_microbatches

        def one(k: int) -> tuple[float, float, float]:      # a stage on its own
            ak, bk = ranges[k]
            return (float(self.time(k, ak, bk)), sum(float(x) for x in self.tail(k, ak, bk)),
                    float(self.memory_total(k, ak, bk)))

        if pp <= 2:
            times, tails, mems = (list(col) for col in zip(*(one(k) for k in range(pp))))
            return times, tails, mems
        a = np.array([r[0] for r in ranges])
        b = np.array([r[1] for r in ranges])
        sp = self.span(a, b)
        flights = np.array([in_flight_microbatches(self.ctx.plan, k, m) for k in range(pp)])
        times = [float(t) for t in self.time(1, a, b, sp)]
        tails = [float(t) for t in sum(self.tail(1, a, b, sp))]
        mems = [float(x) for x in self.memory_total(1, a, b, sp, in_flight=flights)]
        for k in (0, pp - 1):
            times[k], tails[k], mems[k] = one(k)
        return times, tails, mems

    def params(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None) -> tuple[Arr, Arr]:
        """(dense, expert) parameters on one device of stage k."""
        sp = span if span is not None else self.span(i, j)
        e, pp = self.extras, self.ctx.plan.pp
        dense = sp["dense_params"]
        if k == 0:
            dense = dense + e["emb_params"]
        # A tied head is the embedding: its own copy on the last stage when pp > 1, except
        # under DualPipe, whose rank holding the last stage holds the first stage too
        # (training.dualpipe_ranks), and with it the one matrix
        shared = pp == 1 or self.ctx.plan.schedule == Schedule.DUALPIPE
        if k == pp - 1 and not (shared and self.ctx.model.tied_embeddings):
            dense = dense + e["head_params"]
        elif k == pp - 1:
            dense = dense + e["final_norm_params"]
        expert = sp["expert_params"]
        if k == pp - 1:
            dense, expert = dense + e["mtp_dense_params"], expert + e["mtp_expert_params"]
        return dense, expert

    def memory(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None, *,
               in_flight: float | None = None) -> dict[str, Arr]:
        """Peak bytes on one device of stage k by kind (weights, grads, optimizer,
        activations, buffers); see memory.py for the sources. `in_flight` overrides the
        stage's micro-batches in flight (memory is affine in it)."""
        sp = span if span is not None else self.span(i, j, ("dense_params", "expert_params", "act"))
        ctx, plan = self.ctx, self.ctx.plan
        dense, expert = self.params(k, i, j, sp)
        dtype = ctx.workload.dtype
        weights, grads, optim = state_bytes(StageParams(dense, expert, self.extras["edp"]),
                                            plan, dtype, ctx.workload.optimizer,
                                            grad_dtype=ctx.workload.grad_dtype)
        w = weight_bytes_per_param(dtype)
        m = self.num_microbatches
        flight = in_flight_microbatches(plan, k, m) if in_flight is None else in_flight
        act = sp["act"] * flight
        if plan.offload:
            act = act * offload_resident(sp["layers"], plan.offload) / sp["layers"]
        if plan.ep_overlap and m > 1:
            # combined 1F1B builds the next micro-batch's activations block by block while the
            # previous one's backward frees its own in reverse: beyond 1F1B's peak it holds
            # about one more block of one micro-batch
            act = act + sp["act"] / sp["layers"]
        if k == plan.pp - 1:
            act = (act + self.extras["head_act"] + self.extras["mtp_head_act"]
                   + self.extras["mtp_act"] * flight)
        gathered = 2 * (dense + expert) / sp["layers"] * w if plan.zero >= 3 else 0.0
        buffers = (gathered + self.extras["static_buffers"]
                   + FRAGMENTATION * (weights + grads + optim + act))
        return {"weights": weights, "grads": grads, "optimizer": optim, "activations": act,
                "buffers": buffers}

    def memory_total(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None, *,
                     in_flight: float | None = None) -> Arr:
        return sum(self.memory(k, i, j, span, in_flight=in_flight).values())

    def tail(self, k: int, i: Arr, j: Arr, span: dict[str, Arr] | None = None) -> tuple[Arr, Arr]:
        """(exposed data-parallel communication, optimizer step) seconds per step of stage k."""
        sp = span if span is not None else self.span(i, j)
        ctx, plan = self.ctx, self.ctx.plan
        dense, expert = self.params(k, i, j, sp)
        d = self.kinds(k, i, j, sp)
        dtype = ctx.workload.dtype
        g, w = ctx.workload.grad_bytes, weight_bytes_per_param(dtype)
        e = self.extras
        dp_exp = _dp_exposed(ctx, e, dense, expert, fwd=d["fwd"], bwd=d["bwd"],
                             layers=sp["layers"], g=g, w=w, m=self.num_microbatches)
        local = (dense / (plan.dp * plan.cp if plan.zero >= 1 else 1)
                 + expert / (e["edp"] if plan.zero >= 1 else 1))
        per = OPTIMIZER_BYTES_PER_PARAM + g + w
        optimizer = np.maximum(local * per / ctx.roof.bw, ctx.roof.eff.kernel_floor_s)
        return dp_exp, optimizer


def _coll(kind: str, links: comm.GroupLinks, nbytes: Arr) -> Arr:
    """Array-safe collective time (comm.coefficients; 0 for empty buffers)."""
    per_byte, fixed = comm.coefficients(kind, links)
    return np.where(np.asarray(nbytes) > 0, per_byte * nbytes + fixed, 0.0)


def _dp_exposed(ctx: Any, e: dict[str, Any], dense: Arr, expert: Arr, *, fwd: Arr, bwd: Arr,
                layers: Arr, g: int, w: int, m: int) -> Arr:
    """Exposed data-parallel (and ZeRO) seconds per step (overlap rules: training.py)."""
    plan = ctx.plan
    if ctx.dp_links.size == 1 and e["exp_links"].size == 1:     # dp x cp = 1, edp = 1
        return 0.0 * dense

    def both(kind: str, per: int) -> Arr:
        return _coll(kind, ctx.dp_links, dense * per) + _coll(kind, e["exp_links"], expert * per)

    tail = 1.0 / layers
    slow = ctx.roof.eff.overlap_slowdown

    def hidden(comm_s: Arr, window: Arr, alone: Arr | float = 0.0) -> Arr:
        """Exposed seconds of `comm_s` run beside `window` seconds of compute: `alone` of it
        (the last block's gradient bucket, the first block's gather) overlaps nothing; the
        rest overlaps the window, exposing what exceeds it plus the compute the collective's
        SMs slow down while they overlap (efficiency.py). Never more than `comm_s`, which is
        what dp_overlap=off exposes: all of it runs alone (the reduction after the last
        backward, ZeRO-1/2's gather after the optimizer step, ZeRO-3's gathers and
        reduce-scatter without prefetch, every micro-batch)."""
        if not plan.dp_overlap:
            return comm_s
        rest = np.maximum(0.0, comm_s - alone)
        return alone + np.maximum(0.0, rest - window) + slow * np.minimum(rest, window)

    if plan.zero >= 3:
        ag, rs = both("all_gather", w), both("reduce_scatter", g)
        return m * (hidden(ag, fwd, ag * tail) + hidden(ag + rs, bwd))
    if plan.zero >= 1:
        reduce, gather = both("reduce_scatter", g), both("all_gather", w)
        return hidden(reduce, bwd, reduce * tail) + hidden(gather, fwd)
    reduce = both("all_reduce", g)
    return hidden(reduce, bwd, reduce * tail)


def build_tables(ctx: Any, num_microbatches: int) -> StageTables:
    """Per-layer arrays for the plan in `ctx` (training.Context)."""
    from cost_models.training import block_comm, p2p_s

    model, sh = ctx.model, ctx.shard
    prefix, mtp_row = _prefix_sums(model, lambda moe: _layer_row(
        ctx, moe, block_compute(model, ctx.roof, sh, moe=moe), block_comm))
    extras = _extras(ctx, model, p2p_s(ctx)) | _mtp_extras(ctx, model, mtp_row)
    return StageTables(prefix=prefix, extras=extras, ctx=ctx, num_microbatches=num_microbatches)


def _prefix_sums(model: ModelSpec, row_of: Any
                 ) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
    """Prefix sums over the blocks of each key of `row_of(moe)` (one row per block type,
    placed by the model's MoE layer mask), and the row of the MTP block's type (None without
    MTP modules)."""
    mask = np.array(model.moe_layer_mask, dtype=bool)
    per_type = {moe: row_of(moe) for moe in sorted(set(model.moe_layer_mask))}
    dense_row = per_type.get(False, per_type.get(True))
    moe_row = per_type.get(True, dense_row)
    assert dense_row is not None and moe_row is not None
    prefix = {key: np.concatenate(([0.0], np.cumsum(np.where(mask, moe_row[key], dense_row[key]))))
              for key in dense_row}
    return prefix, (per_type.get(model.mtp_moe) if model.mtp_layers else None)


def build_memory_tables(ctx: Any, num_microbatches: int) -> StageTables:
    """The memory part of `build_tables` alone: the per-layer parameters and activations and
    the extras `StageTables.memory` reads, without timing a block (the search's fit check,
    which asks only whether a split fits, builds these; `memory` and `memory_total` give the
    same numbers on either; the time and tail methods need `build_tables`)."""
    model = ctx.model
    prefix, mtp_row = _prefix_sums(model, lambda moe: _memory_row(ctx, moe))
    extras = _memory_extras(ctx, model) | _mtp_memory_extras(ctx, model, mtp_row)
    return StageTables(prefix=prefix, extras=extras, ctx=ctx, num_microbatches=num_microbatches)


def _mtp_memory_extras(ctx: Any, model: ModelSpec, row: dict[str, float] | None
                       ) -> dict[str, float]:
    """The memory part of `_mtp_extras` (its docstring says what the MTP modules hold)."""
    n = model.mtp_layers
    if not n:
        return {f"mtp_{k}": 0.0 for k in ("dense_params", "expert_params", "act", "head_act")}
    plan = ctx.plan
    assert row is not None      # the row of the MTP block's type (`mtp_moe`)
    routed = (model.moe.num_experts * model.mlp_params(model.moe.expert_ffn_hidden_size)
              if model.mtp_moe and model.moe is not None else 0)
    # DualPipe puts the first stage (embedding) and the last (MTP, head) on one rank, which
    # shares one embedding between the model and its MTP modules (DeepSeek-V3 report Sec.
    # 3.2.3, "Shared Embedding and Output Head for Multi-Token Prediction"): no copy
    embedding_copy = (model.embedding_params / plan.tp
                      if plan.pp > 1 and not model.tied_embeddings
                      and plan.schedule != Schedule.DUALPIPE else 0.0)
    return {"mtp_expert_params": n * row["expert_params"],
            # split by tp like every block's dense part (_memory_row), the experts by ep x etp
            "mtp_dense_params": (n * (model.mtp_module_params - routed) / plan.tp
                                 + embedding_copy),
            # the block's activations are held like any block's (x micro-batches in flight);
            # its logits, like the model's, only for the micro-batch whose loss is computed
            "mtp_act": n * row["act"],
            "mtp_head_act": n * head_activation_bytes(model, plan, seq_len=ctx.workload.seq_len)}


def _mtp_extras(ctx: Any, model: ModelSpec, row: dict[str, float] | None) -> dict[str, float]:
    """What the model's MTP modules add to the last stage, per micro-batch (DeepSeek-V3 Sec.
    2.2, as Megatron-Core builds them: MultiTokenPredictionLayer): each module looks up the
    next token's embedding, normalises it and the last hidden state, projects their
    concatenation 2h -> h (a column-parallel linear), runs one block of the last layer's
    type, and applies the shared output head and loss again. The block costs what any block
    of its type costs (times, comm, recomputation, activations); the head and embedding what
    the model's own cost. Parameters: the block, the projection and three norms, plus, with
    pp > 1 and untied embeddings, the last stage's copy of the input embedding (the first
    stage holds the original; Megatron keeps the two in sync like tied embeddings; under
    DualPipe both stages are on one rank, which holds one embedding)."""
    keys = (*KINDS, "fwd", "bwd")
    n = model.mtp_layers
    memory = _mtp_memory_extras(ctx, model, row)
    if not n:
        return {f"mtp_{k}": 0.0 for k in keys} | memory
    plan, sh, roof = ctx.plan, ctx.shard, ctx.roof
    assert row is not None      # build_tables' row of the MTP block's type (`mtp_moe`)
    h = model.hidden_size
    pf, _, pb, _ = roof.gemm_fwd_bwd(sh.tokens, h / plan.tp, 2 * h)     # eh_proj
    # enorm and hnorm read and write an h-wide tensor each, the concatenation writes 2h
    e = roof_bytes(sh.dtype)
    norms = roof.stream(6 * sh.tokens * h * e / (plan.tp if plan.sp else 1))
    ef, eb = embedding_compute(model, roof, sh)
    hf, hb, _ = head_compute(model, roof, sh)
    fwd = row["fwd"] + pf + norms + ef + hf
    bwd = row["bwd"] + pb + 2 * norms + eb + hb
    emb_tp = 0.0
    if plan.tp > 1 and model.vocab_size:
        emb_tp = comm.all_reduce_s(ctx.tp_links, sh.tokens * h * roof_bytes(sh.dtype))
    out = {"mtp_compute": n * (fwd + bwd), "mtp_fwd": n * fwd, "mtp_bwd": n * bwd,
           "mtp_recompute": n * row["recompute"], "mtp_tp_comm": n * (row["tp_comm"] + emb_tp),
           "mtp_cp_comm": n * row["cp_comm"], "mtp_ep_comm": n * row["ep_comm"]}
    return out | memory


def _layer_row(ctx: Any, moe: bool, bc: Any, block_comm: Any) -> dict[str, float]:
    model, plan = ctx.model, ctx.plan
    tpf, tpb, cpf, cpb, epf, epb = block_comm(ctx, moe, bc)
    # fwd/bwd: the windows data-parallel traffic hides behind (training.py): the pass's
    # compute plus its exposed context-parallel exchange, which the DP stream runs through.
    row = {"compute": bc.fwd_s + bc.bwd_s, "recompute": 0.0, "tp_comm": tpf + tpb,
           "cp_comm": cpf + cpb, "ep_comm": epf + epb, "fwd": bc.fwd_s + cpf,
           "bwd": bc.bwd_s + cpb}
    if plan.schedule == Schedule.DUALPIPE:
        # the bubble's W (training.dualpipe_ranks); other plans' tables leave it out, since a
        # span sums every row
        row["wgrad"] = bc.wgrad_s
    if plan.recompute == Recompute.FULL:
        row["recompute"] = bc.fwd_s
        row["tp_comm"] += tpf
        row["cp_comm"] += cpf
        row["ep_comm"] += epf
    elif plan.recompute == Recompute.SELECTIVE and plan.recompute_modules is None:
        row["recompute"] = bc.attn_core_fwd_s
    elif plan.recompute == Recompute.SELECTIVE:
        row["recompute"] = module_recompute(model, ctx.roof, ctx.shard, plan.selective_modules,
                                            moe=moe)[0]
    # DualPipe pairs a forward and a backward chunk of two micro-batches the same way
    # (DeepSeek-V3 report Sec. 3.2.1, Fig. 4: attention, dispatch, MLP and combine of one
    # interleaved with those of the other), so its all-to-alls hide by the same rule.
    if (plan.ep_overlap or plan.schedule == Schedule.DUALPIPE) and moe:
        row["ep_comm"] = ep_overlap_exposed(ctx.roof.eff.overlap_slowdown, fwd_comm=epf,
                                            bwd_comm=epb, fwd_window=bc.fwd_s,
                                            bwd_window=bc.bwd_s, fwd_mlp=bc.mlp_fwd_s,
                                            bwd_mlp=bc.mlp_bwd_s)
        if plan.recompute == Recompute.FULL:
            # (DualPipe only: planner.validate) the recomputed forward dispatches again,
            # outside the pairs: exposed
            row["ep_comm"] += epf
    return row | _memory_row(ctx, moe)


def _memory_row(ctx: Any, moe: bool) -> dict[str, float]:
    """A block's activations (one micro-batch) and its dense and expert parameters on one
    device (the dense part split by tp, the routed experts by ep x etp)."""
    model, plan = ctx.model, ctx.plan
    row = {"act": block_activation_bytes(model, plan, seq_len=ctx.workload.seq_len, moe=moe,
                                         fused_attention=plan.attn.fused,
                                         dtype=ctx.workload.dtype)}
    if moe and model.moe is not None:
        routed = model.moe.num_experts * model.mlp_params(model.moe.expert_ffn_hidden_size)
        row["dense_params"] = (model.moe_layer_params - routed) / plan.tp
        row["expert_params"] = routed / (plan.ep * plan.expert_tp)
    else:
        row["dense_params"] = model.dense_layer_params / plan.tp
        row["expert_params"] = 0.0
    return row


def ep_overlap_exposed(slowdown: float, *, fwd_comm: float, bwd_comm: float,
                       fwd_window: float, bwd_window: float, fwd_mlp: float,
                       bwd_mlp: float) -> float:
    """Exposed seconds of one MoE block's dispatch and combine per micro-batch under
    Megatron-Core's combined 1F1B (`--overlap-moe-expert-parallel-comm`, Megatron-Core MoE
    docs "Combined 1F1B: Expert-Parallel All-to-All Overlap"): the steady state runs the
    forward of one micro-batch with the backward of the adjacent one, layer by layer, and
    `schedule_layer_1f1b` (megatron/core/models/common/model_chunk_schedule_plan.py) pairs each
    all-to-all with one piece of the other pass's compute on the other stream: the backward's
    combine with the forward's attention, the forward's dispatch with the backward's expert
    MLP, the backward's dispatch with the forward's expert MLP, and the forward's combine with
    the backward's attention. Dispatch and combine move the same rows, so each is half of its
    pass's all-to-all time (`fwd_comm`, `bwd_comm`); the expert MLP is BlockCompute.mlp_*_s and
    the attention piece the rest of the pass (`*_window` minus it). What exceeds its piece is
    exposed; while they overlap, the all-to-all kernels hold `collective_sms` of the compute
    units and the overlapped compute runs that much slower (the rule of `_dp_exposed`). The
    warm-up and cool-down passes, which have no partner, are charged like the steady state
    (a lower bound on their EP time)."""
    pairs = ((bwd_comm / 2, fwd_window - fwd_mlp), (fwd_comm / 2, bwd_mlp),
             (bwd_comm / 2, fwd_mlp), (fwd_comm / 2, bwd_window - bwd_mlp))
    exposed = sum(max(0.0, c - w) for c, w in pairs)
    return exposed + slowdown * sum(min(c, w) for c, w in pairs)


def _extras(ctx: Any, model: ModelSpec, p2p: float) -> dict[str, Any]:
    plan, sh, roof = ctx.plan, ctx.shard, ctx.roof
    ef, eb = embedding_compute(model, roof, sh)
    hf, hb, _ = head_compute(model, roof, sh)
    emb_tp = 0.0
    if plan.tp > 1 and model.vocab_size:
        emb_tp = comm.all_reduce_s(ctx.tp_links, sh.tokens * model.hidden_size * roof_bytes(sh.dtype))
    memory = _memory_extras(ctx, model)
    return {
        "emb_compute": ef + eb, "emb_fwd": ef, "emb_bwd": eb, "emb_tp_comm": emb_tp,
        "head_compute": hf + hb, "head_fwd": hf, "head_bwd": hb, "p2p": p2p,
        "exp_links": comm.group_links(ctx.cluster, size=int(memory["edp"]),
                                      stride=plan.ep * plan.expert_tp),
    } | memory


def _memory_extras(ctx: Any, model: ModelSpec) -> dict[str, Any]:
    """The stage extras `StageTables.memory` reads: the embedding's and head's parameters, the
    logits of one micro-batch, the experts' data-parallel size and the static buffers."""
    plan = ctx.plan
    edp = plan.expert_dp
    head_matrix = model.vocab_size * model.hidden_size / plan.tp
    final_norm = model.norm_params if model.vocab_size else 0
    buckets = 2 * 40e6 * ctx.workload.grad_bytes if plan.dp * plan.cp > 1 else 0.0
    p2p_buf = 2 * plan.mbs * ctx.workload.seq_len / plan.cp * model.hidden_size * 2 if plan.pp > 1 else 0.0
    return {
        "emb_params": model.embedding_params / plan.tp,
        "head_params": head_matrix + final_norm, "final_norm_params": final_norm,
        "head_act": head_activation_bytes(model, plan, seq_len=ctx.workload.seq_len),
        "edp": edp,
        # DDP/Megatron gradient buckets (40M elements, 2 in flight), the p2p activation
        # buffer, and the framework's fixed overhead (memory.py).
        "static_buffers": buckets + p2p_buf + FRAMEWORK_OVERHEAD_BYTES,
    }


def interleaved_warmup_chunks(plan: Plan, m: int) -> int:
    """Forward chunks the first pipeline rank runs before the interleaved schedule's steady
    state, as many backward chunks after it (Megatron-Core schedules.get_pp_rank_microbatches:
    2 (pp - rank - 1) + (vpp - 1) x microbatch_group_size_per_vp_stage, that group size
    defaulting to pp), at most every chunk of the step."""
    return min(2 * (plan.pp - 1) + (plan.vpp - 1) * plan.pp, m * plan.vpp)


def steady_p2p_s(plan: Plan, m: int, p2p_per_microbatch: float, fwd: Any, bwd: Any) -> Any:
    """Exposed exchange time per micro-batch of a stage whose forward and backward compute
    windows are `fwd` and `bwd`: all of p2p_s under 1F1B; under interleaving, of the
    steady-state exchanges (the chunks outside warmup and cooldown) only what one transfer
    outlasts the chunk it overlaps (fwd / vpp or bwd / vpp)."""
    if plan.schedule == Schedule.DUALPIPE:
        # the paired chunks' exchanges hide behind their computation (DeepSeek-V3 report Sec.
        # 3.2.1: "both all-to-all and PP communication can be fully hidden"); the single
        # chunks of the ramps are training.p2p_sync_s
        return 0 * fwd
    if plan.pp == 1 or plan.vpp == 1:
        return p2p_per_microbatch + 0 * fwd
    v = plan.vpp
    one = p2p_per_microbatch / (2 * v)
    steady = 1.0 - interleaved_warmup_chunks(plan, m) / (m * v)
    return steady * v * (np.maximum(0.0, one - fwd / v) + np.maximum(0.0, one - bwd / v))
