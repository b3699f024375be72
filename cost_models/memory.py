"""Memory of one device per pipeline stage: weights, gradients, optimizer, activations, buffers.

Decides the bytes each pipeline stage's devices hold at their peak. Does not decide time.

Sources:
- States: mixed-precision training holds 2 + 2 + 12 bytes per parameter (16-bit weights and
  gradients; fp32 master, momentum and variance): Rajbhandari et al. 2020 (ZeRO) Sec. 3.1.
  Gradients take the workload's grad_dtype: by default fp32 in bf16/fp8 training, as
  Megatron-LM, torchtitan and DeepSpeed accumulate and reduce them (2 + 4 + 12 = 18 bytes;
  planner.model.default_grad_dtype), 16-bit in fp16 training.
  ZeRO stage 1 shards the optimizer states over data parallelism, stage 2 also the
  gradients, stage 3 also the weights (ZeRO Sec. 5, Fig. 1). Megatron's distributed
  optimizer shards over data x context parallel ranks; so does this model.
- Activations: Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 4.1-4.2, Table 2, per block
  in bytes with 16-bit activations: sbh(34 + 5as/h) unparallelised; sbh(10 + 24/t + 5as/(ht))
  with TP; sbh/t (34 + 5as/h) with TP + sequence parallelism; the 5as/h term is removed by
  selective recomputation (and never stored by FlashAttention); full recomputation keeps only
  each block's input, 2sbh (divided by t with sequence parallelism). The 34 and 24 are
  generalised here to any attention width and MLP (GQA, gated MLPs, MoE) from the same
  tensor list: 10sbh stays replicated without SP, the rest is split by t. A model trained
  without dropout (ModelSpec.dropout false) stores no masks: 8sbh replicated (32 instead of
  34 unparallelised) and 2 instead of 5 bytes per unfused attention score.
  Attention keeps Q, K, V and the output (the output projection's input): K and V are
  kv_heads wide (GQA/MQA: Transformer Engine's and FlashAttention's kernels take grouped K/V
  without expanding them), so Korthikanti's 8sbh becomes 2sb(2h + 2 kv_heads d_head).
  Element sizes follow the training dtype: 4 bytes in fp32/tf32 (masks stay 1 byte); in fp8
  training (Transformer Engine) activations stay 16-bit, but each linear layer saves its
  input in fp8 for the weight-gradient GEMM instead of in 16 bits (TE `_Linear.forward`
  saves `inputmat`, the fp8 cast, when fp8 is on; `_LayerNormLinear` its fp8 `ln_out`;
  transformer_engine/pytorch/module/linear.py and layernorm_linear.py): the QKV and MLP
  inputs (the norms' outputs) and the MLP activation's output take 1 byte per element, and
  the output projection's input is an extra 1-byte copy beside the attention kernel's 16-bit
  output, which the attention backward needs.
- In flight: with 1F1B the first stage holds p micro-batches (Narayanan et al. 2021 Sec.
  2.2.1); interleaving raises that by (1 + (p-1)/(p*v)) (Korthikanti et al. 2022 Sec. 4.2.3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from cost_models.compute import loss_chunk_tokens, roof_bytes
from planner.model import (
    GIB,
    DType,
    ModelSpec,
    Optimizer,
    grad_bytes_per_param,
    optimizer_bytes_per_param,
    weight_bytes_per_param,
)
from planner.plan import LossKernel, Plan, Recompute, Schedule

FRAMEWORK_OVERHEAD_BYTES = int(1.5 * GIB)
"""CUDA context, NCCL channel buffers and library workspaces: PyTorch's CUDA context alone
takes 0.3-0.7 GiB (PyTorch memory-management notes), NCCL allocates NCCL_BUFFSIZE (4 MiB)
per channel and peer. Engineering estimate; counted once per device."""
FRAGMENTATION = 0.05
"""Allocator fragmentation and caching slack on top of live tensors (engineering estimate,
in line with PyTorch's expandable-segments discussion of 5-10% waste)."""


@dataclass(frozen=True, slots=True)
class StageParams:
    """Parameters held by one device of a pipeline stage, by how they are split."""

    dense: Any       # split by tp, replicated over dp*cp (a float or an array of stages)
    expert: Any      # split by ep*etp, replicated over the expert data-parallel size
    edp: int         # expert data-parallel size (dp*cp*tp / (ep*etp))


def state_bytes(params: StageParams, plan: Plan, dtype: DType, optimizer: Optimizer, *,
                grad_dtype: DType | None = None) -> tuple[Any, Any, Any]:
    """(weights, grads, optimizer) bytes after ZeRO sharding; gradients in `grad_dtype` (None:
    the training dtype's default, planner.model.default_grad_dtype)."""
    w, g, o = _per_param_bytes(dtype, optimizer, grad_dtype)
    dp, edp, z = plan.dp * plan.cp, params.edp, plan.zero
    # ZeRO stage s shards the states it covers over the (expert) data-parallel ranks
    dense, expert = params.dense, params.expert
    weights = dense * w / (dp if z >= 3 else 1) + expert * w / (edp if z >= 3 else 1)
    grads = dense * g / (dp if z >= 2 else 1) + expert * g / (edp if z >= 2 else 1)
    opt = dense * o / (dp if z >= 1 else 1) + expert * o / (edp if z >= 1 else 1)
    return weights, grads, opt


@functools.lru_cache(maxsize=None)
def _per_param_bytes(dtype: DType, optimizer: Optimizer,
                     grad_dtype: DType | None) -> tuple[float, float, float]:
    """(weight, gradient, optimizer-state) bytes per parameter (planner.model)."""
    return (weight_bytes_per_param(dtype), grad_bytes_per_param(dtype, grad_dtype),
            optimizer_bytes_per_param(optimizer, dtype))


def saved_input_bytes(dtype: DType) -> float:
    """Bytes per element of the input a linear layer keeps for its weight gradient: the fp8
    cast in fp8 training (Transformer Engine; module docstring), the column-wise NVFP4 copy
    (0.5625 bytes, planner.model.NVFP4_BYTES) in fp4 training, else the activation's own."""
    dtype = DType(dtype)
    return dtype.bytes if dtype.quantised else roof_bytes(dtype)


def block_activation_bytes(model: ModelSpec, plan: Plan, *, seq_len: int, moe: bool,
                           fused_attention: bool, dtype: DType) -> float:
    """Activation bytes one block stores for one micro-batch on one device (Korthikanti;
    element sizes by `dtype` as the module docstring says)."""
    s, b, h, t = seq_len / plan.cp, plan.mbs, model.hidden_size, plan.tp
    sbh = s * b * h
    e = roof_bytes(dtype)                          # a 16-bit (fp32: 4-byte) activation
    q = saved_input_bytes(dtype)                   # a linear layer's saved input
    if plan.recompute == Recompute.FULL:
        return e * sbh / (t if plan.sp else 1)
    a = model.num_attention_heads
    d_qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim if model.mla else model.d_head
    d_v = model.mla.v_head_dim if model.mla else model.d_head
    # K and V: kv_heads wide (MLA's are per head)
    k_dim = model.kv_heads * d_qk if model.mla is None else a * d_qk
    v_dim = model.kv_heads * d_v if model.mla is None else a * d_v
    # Q and K of Q.K^T, V, the attention output (the output projection's input; in fp8 the
    # projection also keeps its own 1-byte copy).
    proj_copy = q * a * d_v if DType(dtype).quantised else 0.0
    attn_split = s * b * (e * (a * d_qk + k_dim + v_dim + a * d_v) + proj_copy)
    # Softmax output, dropout mask and dropout output: 2e + 1 bytes per score (e without
    # dropout: scores.V then reads the softmax output itself); with cp each device holds its
    # s/cp queries against all seq_len keys (the shape compute.py times).
    modules = plan.selective_modules
    scores = (0.0 if fused_attention or "core_attn" in modules
              else ((2 * e + 1) if model.dropout else e) * a * s * seq_len * b)
    if "mla_up_proj" in modules and model.mla is not None:
        # Q, K and V are recomputed from the latents the up-projections keep for their own
        # backward anyway: only the output projection's input stays
        attn_split = q * s * b * a * d_v
    if moe and model.moe is not None:
        m = model.moe
        # Each device routes tokens x etp / tp tokens (compute.Shard.moe_tokens) through
        # experts 1/etp wide: per token of the block's s*b that is top_k * ffn / tp, the same
        # 1/t as the split tensors below.
        mlp_width = m.top_k * m.expert_ffn_hidden_size
        mlp_width += m.num_shared_experts * m.shared_ffn
        # The routed experts' first grouped GEMM also keeps its input, the dispatched rows (a
        # token's top_k copies, h wide, etp/tp of them per token on this device): Transformer
        # Engine's GroupedLinear saves its inputs like Linear (1 byte each in fp8).
        expert_inputs = s * b * m.top_k * h * plan.expert_tp * q
    else:
        mlp_width = model.ffn_hidden_size
        expert_inputs = 0.0
    # Up-projection output(s), kept for the activation's backward, and the activation's
    # output, the down-projection's saved input: 16sbh for a 4h GELU MLP in 16 bits.
    ups = 2 if model.activation.gated else 1
    mlp_split = s * b * mlp_width * (ups * e + q) + expert_inputs
    is_moe = moe and model.moe is not None
    if "mlp" in modules and not is_moe:
        mlp_split = 0.0          # the whole MLP is recomputed from its (stored) input
    elif "moe_act" in modules and is_moe:
        # the activation output is not kept
        mlp_split = s * b * mlp_width * ups * e + expert_inputs
    # Two norm inputs (4sbh), the QKV and MLP inputs (4sbh in 16 bits, 2sbh in fp8) and, with
    # dropout, the 1-byte masks after attention and after the MLP (2sbh): Korthikanti's
    # replicated 10sbh.
    norm_outputs = 2 * q * sbh
    replicated = 2 * e * sbh + norm_outputs + (2 * sbh if model.dropout else 0.0)
    if "layernorm" in modules:
        replicated -= norm_outputs   # the norms' outputs (the QKV and MLP inputs) are recomputed
    if plan.sp:
        return (replicated + attn_split + mlp_split + scores) / t
    return replicated + (attn_split + mlp_split + scores) / t


def in_flight_microbatches(plan: Plan, stage: int, num_microbatches: int) -> float:
    """Micro-batches whose activations stage `stage` holds at its peak (1F1B/interleaved).
    Under DualPipe each direction carries half the micro-batches and stage s holds pp - s of
    them, as in 1F1B: its schedule (DualPipe's `step`) runs pp - h forward chunks of the
    rank's earlier stage h and h + 1 of its later stage pp-1-h before the first backward of
    each, pp + 1 in all, the "PP+1" of the DeepSeek-V3 report's Table 2."""
    if plan.schedule == Schedule.DUALPIPE:
        return min(num_microbatches / 2, float(plan.pp - stage))
    base = plan.pp - stage
    if plan.vpp > 1:
        base = base * (1 + (plan.pp - 1) / (plan.pp * plan.vpp))
    return min(float(num_microbatches), base)


def offload_resident(layers: Any, offloaded: int) -> Any:
    """Blocks whose activations are on the device at the peak when the first `offloaded` of
    `layers` blocks go to host memory (plan key offload; pp = 1, one micro-batch in flight):
    the blocks not offloaded, held from the end of the forward pass into the backward; at
    least two, the reloaded block and the next one prefetched beside it (Transformer Engine
    reloads with a double buffer: NVIDIA/TransformerEngine PR 1695, "Cpu reload double
    buffer"). Works on arrays of layer counts."""
    return np.minimum(layers, np.maximum(np.asarray(layers) - offloaded, 2))


def head_activation_bytes(model: ModelSpec, plan: Plan, *, seq_len: int) -> float:
    """Logits of one micro-batch on the last stage: 16-bit logits plus the fp32 softmax the
    unfused loss keeps for its backward (6 bytes per logit); a fused loss keeps only the
    16-bit logits, which it overwrites with their gradient (2 bytes). A chunked loss holds one
    chunk's 16-bit logits (`compute.loss_chunk_tokens` rows) and, from the forward pass to the
    backward, the input and output-weight gradients it computed there (Liger-Kernel's
    grad_input, tokens x h, and grad_weight, the head's shard, in the 16-bit dtype)."""
    tokens = plan.mbs * seq_len / plan.cp
    v, h = model.vocab_size / plan.tp, model.hidden_size
    if plan.loss == LossKernel.CHUNKED:
        return 2.0 * (loss_chunk_tokens(tokens, v, h) * v + tokens * h + v * h)
    per_logit = 2 if plan.loss == LossKernel.FUSED else 6
    return tokens * v * per_logit
