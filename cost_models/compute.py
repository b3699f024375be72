"""FLOPs and bytes per operator of one transformer block, timed by a roofline per operator.

Decides: for one micro-batch on one device (after TP/CP/EP splitting), the forward and
backward time of a block's GEMMs, attention core and memory-bound elementwise kernels, and
the hardware FLOPs they execute. Each operator takes max(FLOPs / achievable FLOP/s,
bytes / achievable bandwidth, kernel floor). Does not decide communication or scheduling.

Operator list and shapes: Megatron-LM's block (Shoeybi et al. 2019 Sec. 3, Fig. 3):
column-parallel QKV and MLP-up GEMMs, row-parallel output and MLP-down GEMMs. Backward of a
GEMM is two GEMMs of the same FLOPs (input and weight gradients: Narayanan et al. 2021 Sec.
5.1, "the backward pass is twice the forward"). Elementwise traffic per token follows the
tensors Korthikanti et al. 2022 (Sec. 4.1) list for the block: two LayerNorms, two
bias-dropout-residual adds, the activation function, and (without fused attention) the
softmax and attention dropout over a*s scores.
FlashAttention (Dao et al. 2022) computes only the causal half of the scores (a layer with a
sliding window only its band: ModelSpec.causal_keys_per_query), stores none of
them, and recomputes them in the backward pass (backward = 2.5x forward matmul FLOPs:
Dao 2023, FlashAttention-2 Sec. 3.1.2).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

from dataclasses import dataclass

from cost_models.efficiency import (DeviceEfficiency, grouped_rows_computed, matmul_rate,
                                     shape_efficiency)
from planner.hardware import DeviceSpec
from planner.model import NVFP4_BYTES, DType, ModelSpec
from planner.plan import Attention, LossKernel

ELEMENTWISE_H_TENSORS = 10.0
"""Reads + writes of h-wide tensors per token in a block's forward elementwise kernels: two
norms (read x, write y: 2 each) and two residual adds (read two, write one: 3 each), the
operators of Megatron-LM's block (Shoeybi et al. 2019 Fig. 2). Split-width tensors are
counted separately: the Q/K/V split into contiguous heads (read and write q + 2kv), RoPE
(read and write q + k), the activation (read f or 2f, write f). The backward pass moves
about twice the forward bytes (it reads the saved input and the incoming gradient, writes
the outgoing one, and accumulates the residual gradients)."""

FP8_CAST_BYTES_PER_ELEMENT = 4.0
"""FP8 training quantises every GEMM operand that is not already FP8 before the GEMM
(Transformer Engine: activations in the forward, the incoming gradient in the backward; the
weights once per step, cached over micro-batches with `is_first_microbatch`, so not counted).
Each quantisation reads the bf16 tensor (2 bytes) and writes two 1-byte copies: MXFP8 scales
blocks of 32 along one dimension, so the forward (row-wise) and the weight-gradient GEMM
(column-wise) need separately quantised copies (Transformer Engine docs, "Using FP8 with
Transformer Engine", MXFP8: "both rowwise and columnwise usages"; on Hopper the per-tensor FP8
GEMMs take only the TN layout, so TE's fused cast-transpose writes the same two copies).
The E8M0 scales add 1 byte per 32 elements per copy (OCP Microscaling spec v1.0), ~0.06:
2 + 1 + 1 (+0.06) = 4 bytes per element, at memory bandwidth (the casts are elementwise)."""

NVFP4_CAST_BYTES_PER_ELEMENT = 2.0 + 2.0 + 2 * NVFP4_BYTES
"""NVFP4 training quantises the same operands as FP8 (FP8_CAST_BYTES_PER_ELEMENT), with two
differences (Transformer Engine, `NVFP4BlockScaling` and its NVFP4 docs). Its two-level scaling
multiplies each 16-element block's E4M3 scale by one FP32 scale per tensor, taken from the
tensor's amax, so the amax must be known before any block is written: one more read of the
bf16 tensor (the GEMM profiling tutorial names "the extra memory pass for per-tensor amax
computation"; the column-wise copy's amax, over the random-Hadamard-transformed values, comes
from the same pass). Then one pass reads the tensor and writes the row-wise copy and the
column-wise copy for the weight-gradient GEMM (random Hadamard transform applied, "RHT is
currently only applied to column-wise usage so that it can be used for wgrad GEMM"; the
incoming gradient with stochastic rounding), each 0.5625 bytes per element
(planner.model.NVFP4_BYTES): 2 + 2 + 2 x 0.5625 = 5.125 bytes per element."""


def cast_bytes_per_element(dtype: DType) -> float:
    """Memory traffic per element of quantising one GEMM operand in `dtype` training."""
    return NVFP4_CAST_BYTES_PER_ELEMENT if dtype == DType.FP4 else FP8_CAST_BYTES_PER_ELEMENT


WGRAD_ACCUMULATOR_BYTES = 8.0
"""Memory traffic per weight element of a weight-gradient GEMM: every micro-batch adds its
gradient into an fp32 accumulator, read and written once (4 + 4 bytes), not a 2-byte write.
Megatron-Core fuses the accumulation into the GEMM (`--gradient-accumulation-fusion`, on by
default: TE Linear `fuse_wgrad_accumulation=True` writes the wgrad GEMM's fp32 output into
`main_grad` with beta = 1); PyTorch autograd and FSDP accumulate into `.grad` with the same
read and write, in a separate kernel. It matters where the GEMM's depth is short (an expert's
few tokens): then the weight-gradient GEMM is bound by this traffic, not by its FLOPs."""

SCORE_BYTES_PER_ELEMENT = 9.0
"""Unfused attention: scale-mask-softmax reads and writes each score (2+2 bytes), dropout
reads it and writes output and a 1-byte mask (2+2+1): Korthikanti et al. 2022 Sec. 4.1."""
SCORE_BYTES_NO_DROPOUT = 4.0
"""The same without dropout (ModelSpec.dropout false): only the softmax's read and write."""


@dataclass(frozen=True, slots=True)
class Shard:
    """How one block's work is split on a device for one micro-batch."""

    mbs: int
    seq_len: int
    tp: int = 1
    cp: int = 1
    sp: bool = False
    ep: int = 1
    etp: int = 1
    attn: Attention = Attention.FLASH
    dtype: DType = DType.BF16
    loss: LossKernel = LossKernel.UNFUSED

    @property
    def tokens(self) -> int:
        """Tokens of the micro-batch on this device (the sequence is split over cp)."""
        return self.mbs * self.seq_len // self.cp

    @property
    def moe_tokens(self) -> float:
        """Tokens each device routes in an MoE layer. Megatron-Core's parallel folding (Liu
        et al. 2025, "MoE Parallel Folding", Sec. 3; Megatron-Core MoE docs) regroups the
        attention's tp x cp x dp ranks into etp x ep x edp for the experts: each tp rank
        holds the 1/tp sequence-parallel slice of the tokens (Megatron requires sequence
        parallelism for MoE with tp > 1) and an expert-tensor-parallel group of etp ranks
        gathers its members' slices, so tokens x etp / tp (all of them when etp = tp)."""
        return self.tokens * self.etp / self.tp


@dataclass(frozen=True, slots=True)
class BlockCompute:
    """Compute of one block, one micro-batch, one device (seconds and FLOPs)."""

    fwd_s: float
    bwd_s: float
    attn_core_fwd_s: float     # the part selective recomputation repeats (unfused attention)
    attention_fwd_s: float     # attention core (Q.K^T, softmax, scores.V), fused or not
    attention_bwd_s: float
    fwd_flops: float           # hardware FLOPs executed in the forward pass
    bwd_flops: float
    attn_core_fwd_flops: float
    # the expert MLP (routed experts' GEMMs, casts and activation, shared experts' GEMMs) of
    # an MoE block, inside fwd_s/bwd_s: the piece Megatron-Core's combined 1F1B pairs with the
    # other micro-batch's dispatch (tables.ep_overlap_exposed); 0 for a dense block
    mlp_fwd_s: float = 0.0
    mlp_bwd_s: float = 0.0
    # the weight-gradient GEMMs inside bwd_s (Roofline.linear_passes): DualPipe's W
    wgrad_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Op:
    """One operator's share of a block (`block_ops`): seconds and hardware FLOPs of one
    micro-batch on one device in each pass, what it works on, and the fraction of the peak
    FLOP/s of its precision its forward reaches (None for the memory-bound ones)."""

    name: str
    fwd_s: float
    bwd_s: float
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    work: str = ""                  # "m x n x k" of a GEMM, or the bytes a kernel moves
    fraction: float | None = None


class Roofline:
    """Times operators on one device: FLOPs at the GEMM efficiency, bytes at memory speed."""

    def __init__(self, device: DeviceSpec, eff: DeviceEfficiency, dtype: DType) -> None:
        dtype = DType(dtype)
        self.device = device
        self.peak, self.matmul_fraction = matmul_rate(device, eff, dtype)
        # the large-GEMM fraction at the sustained clock: what shape_efficiency scales down
        self.large_gemm_fraction = self.matmul_fraction * eff.sustained_clock
        # Non-tensor-core fp32 rate (softmax arithmetic inside fused attention); None when the
        # device file lists none (then fused attention is not scaled by head dimension).
        self.vector_peak = device.peak_flops_per_s.get(DType.FP32)
        self.bw = device.memory_bandwidth_bytes_per_s * eff.memory
        self.eff = eff
        self.dtype = dtype
        self.elem_bytes = 2 if dtype in (DType.FP8, DType.FP4, DType.BF16, DType.FP16) else 4

    def efficiency(self, m: float, n: float, k: float, m_sd: float = 0.0) -> float:
        """Fraction of this roofline's peak an m x n x k GEMM reaches: its large-GEMM
        fraction at the sustained clock, shaped by efficiency.shape_efficiency (`m_sd`: the
        standard deviation of a random row count)."""
        return shape_efficiency(self.eff, self.large_gemm_fraction, m, n, k, m_sd=m_sd)

    def high_precision(self) -> Roofline:
        """The roofline of the operators FP8 and NVFP4 training leave in bf16: Transformer
        Engine's autocast quantises only its Linear/LayerNormLinear/GroupedLinear GEMMs; the
        attention core stays bf16 unless FP8 dot-product attention is asked for (TE `fp8_dpa`,
        Megatron `--fp8-dot-product-attention`, off by default; TE's NVFP4BlockScaling recipe:
        "Not applying quantization to attention for now"), Megatron's output layer is its own
        ColumnParallelLinear outside TE, and the MoE router multiplies in bf16/fp32
        (TopKRouter, `--moe-router-dtype`). Any other dtype is its own high precision."""
        if not self.dtype.quantised:
            return self
        return Roofline(self.device, self.eff, DType.BF16)

    def gemm(self, m: float, n: float, k: float, batch: float = 1.0,
             out_bytes: float | None = None, m_sd: float = 0.0) -> tuple[float, float]:
        """(seconds, FLOPs) of `batch` GEMMs of m x k times k x n; `out_bytes` is the memory
        traffic per output element when it is not one write in the GEMM's dtype; `m_sd` the
        standard deviation of m when it is a random row count (shape_efficiency)."""
        if m <= 0 or n <= 0 or k <= 0:
            return 0.0, 0.0
        flops = 2.0 * m * n * k * batch
        t_math = flops / (self.peak * self.efficiency(m * batch, n, k, m_sd))
        ob = self.elem_bytes if out_bytes is None else out_bytes
        t_mem = ((m * k + k * n) * self.elem_bytes + m * n * ob) * batch / self.bw
        return max(t_math, t_mem, self.eff.kernel_floor_s), flops

    def gemm_fwd_bwd(self, m: float, n: float, k: float,
                     m_sd: float = 0.0) -> tuple[float, float, float, float]:
        """Forward and backward (data and weight gradient) of one linear layer of m rows (a
        random count of standard deviation `m_sd`: it sets the output rows of the forward and
        data-gradient GEMMs; the weight gradient reduces over them)."""
        return self.linear_passes(m, n, k, m_sd)[:4]

    def linear_passes(self, m: float, n: float, k: float,
                      m_sd: float = 0.0) -> tuple[float, float, float, float, float]:
        """gemm_fwd_bwd's (forward s, forward FLOPs, backward s, backward FLOPs) and, last, the
        seconds of the backward's weight-gradient GEMM alone (the W that a zero-bubble or
        DualPipe schedule runs apart: Qi et al. 2024, "Zero Bubble Pipeline Parallelism")."""
        tf, ff = self.gemm(m, n, k, m_sd=m_sd)
        t_dgrad, f_dgrad = self.gemm(m, k, n, m_sd=m_sd)
        t_wgrad, f_wgrad = self.gemm(k, n, m, out_bytes=WGRAD_ACCUMULATOR_BYTES)
        return tf, ff, t_dgrad + t_wgrad, f_dgrad + f_wgrad, t_wgrad

    def stream(self, nbytes: float) -> float:
        """Seconds to stream `nbytes` through memory (elementwise kernels)."""
        return max(nbytes / self.bw, self.eff.kernel_floor_s) if nbytes > 0 else 0.0


def _linear_shapes(model: ModelSpec, sh: Shard) -> list[tuple[float, float]]:
    """(n, k) of the attention block's linear layers on one TP rank (m = tokens)."""
    h, a, t = model.hidden_size, model.num_attention_heads, sh.tp
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        shapes = [(m.kv_lora_rank_dim + m.qk_rope_head_dim, h),          # kv down (replicated)
                  (a * (m.qk_nope_head_dim + m.v_head_dim) / t, m.kv_lora_rank_dim)]
        if m.q_lora_rank_dim:
            shapes += [(m.q_lora_rank_dim, h), (a * qk / t, m.q_lora_rank_dim)]
        else:
            shapes.append((a * qk / t, h))
        return shapes + [(h, a * m.v_head_dim / t)]
    q, kv = a * model.d_head, model.kv_heads * model.d_head
    return [((q + 2 * kv) / t, h), (h, q / t)]


def _linear_names(model: ModelSpec) -> list[str]:
    """Names of `_linear_shapes`' entries, in its order."""
    if model.mla is not None:
        q = (["q down-projection", "q up-projection"] if model.mla.q_lora_rank_dim
             else ["q projection"])
        return ["kv down-projection", "kv up-projection", *q, "output projection"]
    return ["qkv projection", "output projection"]


def _mlp_names(model: ModelSpec, what: str) -> list[str]:
    """Names of `_mlp_shapes`' two entries."""
    return [f"{what} up{' (gate and up)' if model.activation.gated else ''}", f"{what} down"]


def _mlp_shapes(model: ModelSpec, ffn: float, split: int) -> list[tuple[float, float]]:
    """(n, k) of an MLP's up and down projections, split `split` ways."""
    up = ffn * (2 if model.activation.gated else 1) / split
    return [(up, model.hidden_size), (model.hidden_size, ffn / split)]


def attention_dims(model: ModelSpec) -> tuple[int, int]:
    """(d_qk, d_v) per head."""
    if model.mla is not None:
        return model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim, model.mla.v_head_dim
    return model.d_head, model.d_head


_BLOCK_MEMO: dict[tuple, tuple[ModelSpec, DeviceSpec, BlockCompute]] | None = None
"""block_compute results by (model, device, efficiency, dtype, shard, moe) while a
`memoised_blocks()` context is open (a search scores the same shard for many degrees and
layouts); None (off) otherwise, so a caller that changes a module constant sees it."""


@contextlib.contextmanager
def memoised_blocks() -> Iterator[None]:
    """Within the context, block_compute reuses its result for an identical block."""
    global _BLOCK_MEMO
    outer = _BLOCK_MEMO
    _BLOCK_MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _BLOCK_MEMO = outer


def block_compute(model: ModelSpec, roof: Roofline, sh: Shard, *, moe: bool) -> BlockCompute:
    """Forward/backward time and FLOPs of one block for one micro-batch on one device."""
    if _BLOCK_MEMO is None:
        return _block_compute(model, roof, sh, moe=moe)
    # the model and device objects are kept with the result, so an id is never matched by a
    # new object that happens to reuse it
    key = (id(model), id(roof.device), roof.eff, roof.dtype, sh, moe)
    hit = _BLOCK_MEMO.get(key)
    if hit is not None and hit[0] is model and hit[1] is roof.device:
        return hit[2]
    bc = _block_compute(model, roof, sh, moe=moe)
    _BLOCK_MEMO[key] = (model, roof.device, bc)
    return bc


def block_ops(model: ModelSpec, roof: Roofline, sh: Shard, *, moe: bool
              ) -> tuple[BlockCompute, list[Op]]:
    """`block_compute`'s result and its operators, in the order it adds them: their seconds
    and FLOPs sum, in that order, to its fwd_s, bwd_s, fwd_flops and bwd_flops exactly (the
    same floats; `meshplan evaluate --explain` prints them)."""
    ops: list[Op] = []
    return _block_compute(model, roof, sh, moe=moe, ops=ops), ops


def _gemm_op(name: str, roof: Roofline, shape: str, tf: float, tb: float, ff: float,
             fb: float) -> Op:
    return Op(name, tf, tb, ff, fb, shape, ff / (tf * roof.peak) if tf > 0 else None)


def _block_compute(model: ModelSpec, roof: Roofline, sh: Shard, *, moe: bool,
                   ops: list[Op] | None = None) -> BlockCompute:
    """block_compute's work; `ops`, when given, receives every operator's share (block_ops)."""
    T, h, t = sh.tokens, model.hidden_size, sh.tp
    fwd = bwd = f_fwd = f_bwd = 0.0
    shapes = _linear_shapes(model, sh)
    names = _linear_names(model)
    # The router's GEMM (_moe_shapes' first entry) stays out of FP8: Megatron's TopKRouter
    # multiplies in bf16/fp32 with its own weight, outside Transformer Engine.
    router = None
    if moe and model.moe is not None:
        moe_shapes = _moe_shapes(model, sh)     # the router, then the shared experts
        router, first_shared = moe_shapes[0], len(shapes) + 1
        shapes += moe_shapes
        names += ["router", *_mlp_names(model, "shared experts")]
    else:
        shapes += [(n, k) for n, k in _mlp_shapes(model, model.ffn_hidden_size, t)]
        names += _mlp_names(model, "mlp")
        first_shared = len(shapes)              # no shared experts
    mlp_f = mlp_b = 0.0                     # the expert MLP's share (BlockCompute.mlp_fwd_s)
    wgrad = 0.0                             # the weight-gradient GEMMs (BlockCompute.wgrad_s)
    for i, (n, k) in enumerate(shapes):
        r = roof.high_precision() if (n, k) == router else roof
        tf, ff, tb, fb, tw = r.linear_passes(T, n, k)
        fwd, f_fwd, bwd, f_bwd, wgrad = fwd + tf, f_fwd + ff, bwd + tb, f_bwd + fb, wgrad + tw
        if i >= first_shared:               # the shared experts
            mlp_f, mlp_b = mlp_f + tf, mlp_b + tb
        if ops is not None:
            ops.append(_gemm_op(names[i], r, f"{T:g} x {n:g} x {k:g}", tf, tb, ff, fb))
    quantised = [s for s in shapes if s != router]
    cast_in = sum(T * k for _, k in quantised)      # GEMM inputs (m x k), forward
    cast_grad = sum(T * n for n, _ in quantised)    # incoming gradients (m x n), backward
    moe_f = moe_b = 0.0
    routed_in = routed_grad = 0.0
    if moe and model.moe is not None:
        before_f, before_b = fwd, bwd
        fwd, f_fwd, bwd, f_bwd, expert_w = _add_experts(model, roof, sh, fwd, f_fwd, bwd, f_bwd,
                                                        ops)
        wgrad += expert_w
        mlp_f, mlp_b = mlp_f + fwd - before_f, mlp_b + bwd - before_b
        routed = sh.moe_tokens * model.moe.top_k    # expert assignments on this device
        for n, k in _mlp_shapes(model, model.moe.expert_ffn_hidden_size, sh.etp):
            routed_in, routed_grad = routed_in + routed * k, routed_grad + routed * n
        cast_in, cast_grad = cast_in + routed_in, cast_grad + routed_grad
        moe_f = roof.stream(moe_permute_bytes(model, sh))
        moe_b = moe_f                           # the gradients take the same path back
        act = roof.stream(_expert_activation_bytes(model, sh))
        mlp_f, mlp_b = mlp_f + act, mlp_b + 2 * act
    cast_f = cast_b = 0.0
    if DType(sh.dtype).quantised:
        per = cast_bytes_per_element(DType(sh.dtype))
        cast_f = roof.stream(per * cast_in)
        cast_b = roof.stream(per * cast_grad)
        mlp_f += roof.stream(per * routed_in)
        mlp_b += roof.stream(per * routed_grad)
    attn_t, attn_f, attn_bt, attn_bf = _attention_core(model, roof, sh)
    elem = _elementwise_bytes(model, sh, moe=moe)
    ring_f, ring_b = ring_merge_bytes(model, sh)
    if ops is not None:
        hp = roof.high_precision()
        kind = "fused" if sh.attn.fused else "unfused: Q.K^T, softmax, scores.V"
        ops.append(_gemm_op(f"attention core ({kind})", hp,
                            f"{sh.mbs:g} x {model.num_attention_heads / t:g} heads x "
                            f"{sh.seq_len / sh.cp:g} queries", attn_t, attn_bt, attn_f, attn_bf))
        rope = ", rope" if model.positional == "rope" else ""
        ops.append(Op(f"elementwise (norms, residual adds, activation, q/k/v split{rope})",
                      roof.stream(elem), roof.stream(2 * elem), work=f"{elem:.4g} bytes"))
        if moe_f or moe_b:
            ops.append(Op("token permutations", moe_f, moe_b,
                          work=f"{moe_permute_bytes(model, sh):.4g} bytes"))
        if cast_f or cast_b:
            ops.append(Op(f"{DType(sh.dtype).value} casts of GEMM inputs", cast_f, cast_b,
                          work=f"{cast_bytes_per_element(DType(sh.dtype)) * cast_in:.4g} bytes"))
        if ring_f or ring_b:
            ops.append(Op("ring-attention merges", roof.stream(ring_f), roof.stream(ring_b),
                          work=f"{ring_f:.4g} bytes"))
    return BlockCompute(
        fwd_s=fwd + attn_t + roof.stream(elem) + moe_f + cast_f + roof.stream(ring_f),
        bwd_s=bwd + attn_bt + roof.stream(2 * elem) + moe_b + cast_b + roof.stream(ring_b),
        attn_core_fwd_s=0.0 if sh.attn.fused else attn_t,
        attention_fwd_s=attn_t, attention_bwd_s=attn_bt,
        fwd_flops=f_fwd + attn_f, bwd_flops=f_bwd + attn_bf,
        attn_core_fwd_flops=0.0 if sh.attn.fused else attn_f,
        mlp_fwd_s=mlp_f, mlp_bwd_s=mlp_b,
        wgrad_s=wgrad,
    )


def module_recompute(model: ModelSpec, roof: Roofline, sh: Shard, modules: tuple[str, ...], *,
                     moe: bool) -> tuple[float, float]:
    """(seconds, FLOPs) selective recomputation repeats in one block's backward for one
    micro-batch: the forward of each named module (planner.plan.RECOMPUTE_MODULES, as
    Megatron-Core's --recompute-modules re-runs them):
    - core_attn: the unfused attention core (FlashAttention stores no scores: nothing);
    - layernorm: the two norms (read and write an h-wide tensor each);
    - mla_up_proj: MLA's query and key/value up-projection GEMMs;
    - mlp: a dense block's MLP (its GEMMs and activation); nothing in an MoE block;
    - moe_act: the routed and shared experts' activation function; nothing in a dense block."""
    t_total = f_total = 0.0
    if "core_attn" in modules and not sh.attn.fused:
        t, f, _, _ = _attention_core(model, roof, sh)
        t_total, f_total = t_total + t, f_total + f
    e = roof_bytes(sh.dtype)
    if "layernorm" in modules:
        t_total += roof.stream(2 * 2 * sh.tokens * model.hidden_size * e / (sh.tp if sh.sp else 1))
    if "mla_up_proj" in modules and model.mla is not None:
        shapes = _linear_shapes(model, sh)
        ups = [shapes[1]] + ([shapes[3]] if model.mla.q_lora_rank_dim else [])
        for n, k in ups:
            t, f = roof.gemm(sh.tokens, n, k)
            t_total, f_total = t_total + t, f_total + f
    if "mlp" in modules and not (moe and model.moe is not None):
        for n, k in _mlp_shapes(model, model.ffn_hidden_size, sh.tp):
            t, f = roof.gemm(sh.tokens, n, k)
            t_total, f_total = t_total + t, f_total + f
        width = model.ffn_hidden_size / sh.tp
        t_total += roof.stream((3 if model.activation.gated else 2) * sh.tokens * width * e)
    if "moe_act" in modules and moe and model.moe is not None:
        m = model.moe
        rows = (sh.moe_tokens * m.top_k * m.expert_ffn_hidden_size / sh.etp
                + sh.tokens * m.num_shared_experts * m.shared_ffn / sh.tp)
        t_total += roof.stream((3 if model.activation.gated else 2) * rows * e)
    return t_total, f_total


def moe_permute_bytes(model: ModelSpec, sh: Shard) -> float:
    """Bytes the token permutations of one MoE layer move on one device in the forward pass.

    Megatron-Core's dispatcher (megatron/core/transformer/moe/moe_utils.py `permute` /
    `unpermute`, token_dispatcher.py) copies each routed (token, expert) pair into a buffer
    grouped by destination before the dispatch all-to-all (read and write one h-wide row per
    assignment: 2 T k h), regroups the received rows by local expert when a rank holds more
    than one (`sort_chunks_by_idxs`, 2 T k h, and its inverse before the combine, 2 T k h), and
    after the combine all-to-all multiplies each returned row by its routing probability and
    sums the k rows of a token back into place (read T k h, write T h). Balanced routing: each
    device receives as many assignments as it sends. The backward pass moves the gradients
    along the same path (the same bytes)."""
    assert model.moe is not None
    T, k, h = sh.moe_tokens, model.moe.top_k, model.hidden_size
    e = roof_bytes(sh.dtype)
    local_experts = model.moe.num_experts / sh.ep
    regroup = 4 * T * k * h * e if local_experts > 1 else 0.0
    return 2 * T * k * h * e + regroup + (T * k + T) * h * e


def _moe_shapes(model: ModelSpec, sh: Shard) -> list[tuple[float, float]]:
    """Router and shared experts of an MoE block (m = tokens)."""
    assert model.moe is not None
    m = model.moe
    shapes = [(float(m.num_experts), float(model.hidden_size))]
    if m.num_shared_experts:
        shapes += _mlp_shapes(model, m.num_shared_experts * m.shared_ffn, sh.tp)
    return shapes


def _add_experts(model: ModelSpec, roof: Roofline, sh: Shard, fwd: float, f_fwd: float,
                 bwd: float, f_bwd: float, ops: list[Op] | None = None
                 ) -> tuple[float, float, float, float, float]:
    """(fwd, f_fwd, bwd, f_bwd) with the routed experts added, and their weight-gradient
    seconds (inside bwd; Roofline.linear_passes). Routed experts: this device holds E/ep experts and receives on average
    moe_tokens*top_k*ep/E assignments for each (tokens of its own EP group share). The EP ranks
    meet at the combine all-to-all, so the time is the most loaded rank's: the mean load times
    the expected-maximum factor of random routing over ep ranks (cost_models/moe_balance.py;
    a router trained with a balancing loss, or Megatron's forced balancing, routes like this),
    capped by the capacity factor when the model drops tokens. FLOPs stay the mean's.

    Each expert's rows are a random count (dropless): of the moe_tokens x ep tokens its EP
    group routes, each picks it with probability top_k / E, so binomial with standard deviation
    sqrt(N p (1 - p)). Its GEMMs pay the expected partial last tile of that count
    (efficiency.expected_tiles), about half a tile each, which a mean that happens to be a
    tile multiple would hide. A capacity factor fixes the rows (no spread).

    A device whose MoE kernels pack the experts' rows into one grouped matmul
    (DeviceEfficiency.grouped_row_tile: the TPUs' Megablox) instead computes about one extra
    tile of rows per expert, where a tile straddles two experts' rows
    (efficiency.grouped_rows_computed)."""
    assert model.moe is not None
    m = model.moe
    local_experts = m.num_experts / sh.ep
    per_expert = sh.moe_tokens * m.top_k * sh.ep / m.num_experts
    ranks = round(sh.ep)
    whole = abs(sh.ep - ranks) < 1e-9 and ranks >= 1 and m.num_experts % ranks == 0
    slowest = per_expert * (load_factor(max(1, round(sh.moe_tokens * sh.ep)), m.num_experts,
                                        m.top_k, ranks, m.capacity_factor) if whole else 1.0)
    p = m.top_k / m.num_experts
    row_sd = (math.sqrt(sh.moe_tokens * sh.ep * p * (1 - p))
              if m.capacity_factor is None else 0.0)
    grouped = roof.eff.grouped_row_tile
    rows = (grouped_rows_computed(slowest, grouped, roof.eff.grouped_kernels) if grouped
            else slowest)
    wgrad = 0.0
    names = _mlp_names(model, "routed experts")
    for i, (n, k) in enumerate(_mlp_shapes(model, m.expert_ffn_hidden_size, sh.etp)):
        # a grouped kernel's tile visits are linear in the rows: no spread term
        tf, _, tb, _, tw = roof.linear_passes(rows, n, k, 0.0 if grouped else row_sd)
        _, ff, _, fb = roof.gemm_fwd_bwd(per_expert, n, k)
        fwd += tf * local_experts
        f_fwd += ff * local_experts
        bwd += tb * local_experts
        f_bwd += fb * local_experts
        wgrad += tw * local_experts
        if ops is not None:
            plural = "" if local_experts == 1 else "s"
            ops.append(_gemm_op(names[i], roof, f"{local_experts:g} expert{plural} x "
                                f"{rows:.6g} rows (most loaded rank; mean {per_expert:.6g}) "
                                f"x {n:g} x {k:g}",
                                tf * local_experts, tb * local_experts, ff * local_experts,
                                fb * local_experts))
    return fwd, f_fwd, bwd, f_bwd, wgrad


@functools.lru_cache(maxsize=4096)
def load_factor(tokens: int, experts: int, top_k: int, ranks: int,
                capacity_factor: float | None) -> float:
    """Most loaded EP rank's assignments / the mean (>= 1 dropless; may be < 1 when the
    capacity factor drops tokens)."""
    from cost_models.moe_balance import effective_max_load

    if ranks <= 1 and capacity_factor is None:
        return 1.0
    mean = tokens * top_k / ranks
    return effective_max_load(tokens, experts, top_k, capacity_factor, ranks=ranks) / mean


SOFTMAX_FLOPS_PER_SCORE = 5.0
"""Non-matmul FLOPs per attention score in a fused kernel's online softmax: running max,
subtract, exp, running sum and rescale (Dao 2023, FlashAttention-2, Sec. 3.1 Algorithm 1),
executed on the fp32 vector units, not the tensor cores."""
FLASH_REFERENCE_HEAD_DIM = 128
"""Head dimension at which the FlashAttention fractions of efficiency.py are quoted (Dao 2023
Fig. 4-6, head dimension 128)."""


def head_dim_factor(roof: Roofline, head_dim: float) -> float:
    """Time of a fused attention kernel at `head_dim` relative to the reference head dim.
    Per score the tensor cores do 4d FLOPs (Q.K^T and P.V) and the vector units the softmax:
    time per score ~ 4d / peak_tensor + SOFTMAX_FLOPS / peak_fp32, so relative to the matmul
    part it is 1 + c/d with c = SOFTMAX_FLOPS * peak_tensor / (4 * peak_fp32) (A100: 20). The
    measured fractions include this overhead at d = 128; smaller heads (64) pay more of it
    (FlashAttention-2 Fig. 4-6: head dim 64 runs below head dim 128), larger ones less."""
    if not roof.vector_peak or roof.vector_peak >= roof.peak:
        return 1.0      # no separate vector rate listed (or no tensor cores): nothing to scale
    c = SOFTMAX_FLOPS_PER_SCORE * roof.peak / (4.0 * roof.vector_peak)
    return (1.0 + c / head_dim) / (1.0 + c / FLASH_REFERENCE_HEAD_DIM)


def kernel_head_dim(attn: Attention, d: int) -> int:
    """The head dimension a fused attention kernel computes at for heads of `d`: its matrix
    tiles span a fixed set of widths and a narrower head is masked, not skipped.
    - FlashAttention-2 (and FA3 / cuDNN on Hopper and later, the FLASH class): the kernel is
      instantiated for head dims 32, 64, 96, 128, then steps of 64 (Dao-AILab/flash-attention
      csrc/flash_attn/flash_api.cpp: head_size_rounded = round_multiple(head_size,
      head_size <= 128 ? 32 : 64)).
    - FlashAttention-1's Triton port and its CUDA kernels (the FLASH1 class): a power of two,
      at least 16 (flash_attn/flash_attn_triton.py: BLOCK_HEADDIM =
      max(triton.next_power_of_2(d), 16); FlashAttention-1 CUDA supports 16, 32, 64, 128).
    So a head of 112 (MPT-30B) runs as 128 in both; a head of 80 (MPT-3B) as 96 or 128."""
    if attn == Attention.FLASH1:
        return max(16, 1 << (max(1, d) - 1).bit_length())
    step = 32 if d <= 128 else 64
    return -(-d // step) * step


def _attention_core(model: ModelSpec, roof: Roofline, sh: Shard) -> tuple[float, float, float, float]:
    """Q.K^T and scores.V: (fwd s, fwd FLOPs, bwd s, bwd FLOPs) on one device."""
    roof = roof.high_precision()
    heads = model.num_attention_heads / sh.tp
    d_qk, d_v = attention_dims(model)
    s_q, s_k, b = sh.seq_len / sh.cp, sh.seq_len, sh.mbs
    if sh.attn.fused:
        # the causal half of the scores, or a sliding window's band (ModelSpec)
        flops = 2.0 * b * heads * s_q * model.causal_keys_per_query(s_k) * (d_qk + d_v)
        k_qk, k_v = kernel_head_dim(sh.attn, d_qk), kernel_head_dim(sh.attn, d_v)
        executed = flops * (k_qk + k_v) / (d_qk + d_v)               # at the kernel's width
        frac = roof.eff.flash_attention if sh.attn == Attention.FLASH else roof.eff.flash1_attention
        rate = roof.peak * frac * roof.eff.sustained_clock
        t = max(executed / rate * head_dim_factor(roof, (k_qk + k_v) / 2), roof.eff.kernel_floor_s)
        return t, flops, 2.5 * t, 2.5 * flops
    batch = b * heads
    t_qk, f_qk = roof.gemm(s_q, s_k, d_qk, batch)
    t_av, f_av = roof.gemm(s_q, d_v, s_k, batch)
    scores = batch * s_q * s_k
    t_soft = roof.stream(scores * (SCORE_BYTES_PER_ELEMENT if model.dropout
                                   else SCORE_BYTES_NO_DROPOUT))
    fwd = t_qk + t_av + t_soft
    return fwd, f_qk + f_av, 2 * (t_qk + t_av) + 2 * t_soft, 2 * (f_qk + f_av)


def _expert_activation_bytes(model: ModelSpec, sh: Shard) -> float:
    """Forward bytes of the activation function over the routed and shared experts' rows on
    one device (the expert share of `_elementwise_bytes`' activation term)."""
    assert model.moe is not None
    m, T = model.moe, sh.tokens
    # routed rows: moe_tokens x top_k on this device, each 1/etp of the expert wide
    ffn_tokens = (m.top_k * m.expert_ffn_hidden_size / sh.etp * sh.moe_tokens / T
                  + m.num_shared_experts * m.shared_ffn / sh.tp)
    return (3 if model.activation.gated else 2) * T * ffn_tokens * roof_bytes(sh.dtype)


def _elementwise_bytes(model: ModelSpec, sh: Shard, *, moe: bool) -> float:
    """Bytes of the block's memory-bound kernels in the forward pass on one device."""
    T, h, t = sh.tokens, model.hidden_size, sh.tp
    e = roof_bytes(sh.dtype)
    h_part = ELEMENTWISE_H_TENSORS * T * h * e / (t if sh.sp else 1)
    if moe and model.moe is not None:
        act = _expert_activation_bytes(model, sh)
    else:
        act = (3 if model.activation.gated else 2) * T * model.ffn_hidden_size / t * e
    q = model.num_attention_heads * attention_dims(model)[0]
    kv = model.kv_heads * model.d_head if model.mla is None else q
    split = 2 * T * (q + 2 * kv) * e / t
    rope = 2 * T * (q + kv) * e / t if model.positional == "rope" else 0.0
    return h_part + act + split + rope


RING_MERGE_TENSORS = 3.0
"""Context parallelism runs attention as cp ring steps, each an attention kernel over one K/V
chunk, and merges every step after the first into the running result in a fused elementwise
kernel that reads the step's partial result and the running one and writes the running one
(three tensors in the activation dtype): the output, rescaled by its log-sum-exp, in the
forward, and the dQ and dK/dV partial gradients in the backward (Transformer Engine,
attention/dot_product_attention/context_parallel.py: `flash_attn_fwd_out_correction`,
`out.add_(out_per_step * exp(lse_per_step - lse))`; the backward's `dq.add_` and `dkv.add_`
per step). Without context parallelism the single kernel writes its result once, which the
attention kernel's own time covers."""


def ring_merge_bytes(model: ModelSpec, sh: Shard) -> tuple[float, float]:
    """(forward, backward) bytes of the cp - 1 ring-step merges of one block's attention on one
    device (RING_MERGE_TENSORS); none without context parallelism."""
    if sh.cp <= 1:
        return 0.0, 0.0
    d_qk, d_v = attention_dims(model)
    heads = model.num_attention_heads / sh.tp
    kv_heads = (model.kv_heads if model.mla is None else model.num_attention_heads) / sh.tp
    rows = sh.tokens * (sh.cp - 1) * RING_MERGE_TENSORS * roof_bytes(sh.dtype)
    fwd = rows * heads * d_v
    bwd = rows * (heads * d_qk + kv_heads * (d_qk + d_v))
    return fwd, bwd


def roof_bytes(dtype: DType) -> int:
    """Bytes of one activation element (fp8 training keeps activations in bf16)."""
    return 4 if dtype in (DType.FP32, DType.TF32) else 2


def loss_chunk_tokens(tokens: float, vocab: float, hidden: int) -> int:
    """Tokens per chunk of a chunked (fused linear) cross entropy: Liger-Kernel's rule
    (src/liger_kernel/ops/fused_linear_cross_entropy.py: inc_factor = ceil(V / H), chunk_size
    = next_power_of_2(ceil(BT / inc_factor))), which keeps a chunk's chunk x V logits about
    the size of the BT x H input."""
    inc = max(1, math.ceil(vocab / hidden))
    return min(max(1, int(tokens)), 1 << max(0, math.ceil(math.log2(math.ceil(tokens / inc)))))


def head_compute(model: ModelSpec, roof: Roofline, sh: Shard) -> tuple[float, float, float]:
    """LM head and loss for one micro-batch: (fwd s, bwd s, fwd FLOPs). Vocabulary-parallel
    over TP (Megatron), in bf16 under FP8 training (Roofline.high_precision); the unfused
    softmax reads 16-bit logits and writes and re-reads fp32 ones (2 + 4 + 4 bytes per logit);
    a fused loss reads and writes the 16-bit logits in place (2 + 2). A chunked loss does the
    same work as the fused one as ceil(T / chunk) GEMMs of `loss_chunk_tokens` rows (Liger
    computes the input and weight gradients of each chunk in the forward pass; the total, not
    the split between the passes, is what its step time sees)."""
    if model.vocab_size == 0:
        return 0.0, 0.0, 0.0
    T, v = sh.tokens, model.vocab_size / sh.tp
    rows, n = T, 1
    if sh.loss == LossKernel.CHUNKED:
        rows = loss_chunk_tokens(T, v, model.hidden_size)
        n = math.ceil(T / rows)
    tf, ff, tb, _ = roof.high_precision().gemm_fwd_bwd(rows, v, model.hidden_size)
    tf, ff, tb = n * tf, n * ff, n * tb
    logits = T * v * (10.0 if sh.loss == LossKernel.UNFUSED else 4.0)
    return tf + roof.stream(logits), tb + roof.stream(logits), ff


def embedding_compute(model: ModelSpec, roof: Roofline, sh: Shard) -> tuple[float, float]:
    """Embedding lookup (fwd) and gradient scatter (bwd) for one micro-batch: memory-bound."""
    if model.vocab_size == 0:
        return 0.0, 0.0
    nbytes = sh.tokens * model.hidden_size * roof_bytes(sh.dtype)
    return roof.stream(2 * nbytes), roof.stream(3 * nbytes)
