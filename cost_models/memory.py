"""Memory of one device per pipeline stage: weights, gradients, optimizer, activations, buffers.

Decides the bytes each pipeline stage's devices hold at their peak. Does not decide time.

Sources:
- States: mixed-precision training holds 2 + 2 + 12 bytes per parameter (16-bit weights and
  gradients; fp32 master, momentum and variance): Rajbhandari et al. 2020 (ZeRO) Sec. 3.1.
  ZeRO stage 1 shards the optimizer states over data parallelism, stage 2 also the
  gradients, stage 3 also the weights (ZeRO Sec. 5, Fig. 1). Megatron's distributed
  optimizer shards over data x context parallel ranks; so does this model.
- Activations: Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 4.1-4.2, Table 2, per block
  in bytes with 16-bit activations: sbh(34 + 5as/h) unparallelised; sbh(10 + 24/t + 5as/(ht))
  with TP; sbh/t (34 + 5as/h) with TP + sequence parallelism; the 5as/h term is removed by
  selective recomputation (and never stored by FlashAttention); full recomputation keeps only
  each block's input, 2sbh (divided by t with sequence parallelism). The 34 and 24 are
  generalised here to any attention width and MLP (GQA, gated MLPs, MoE) from the same
  tensor list: 10sbh stays replicated without SP, the rest is split by t.
- In flight: with 1F1B the first stage holds p micro-batches (Narayanan et al. 2021 Sec.
  2.2.1); interleaving raises that by (1 + (p-1)/(p*v)) (Korthikanti et al. 2022 Sec. 4.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.model import (
    DType,
    ModelSpec,
    Optimizer,
    grad_bytes_per_param,
    optimizer_bytes_per_param,
    weight_bytes_per_param,
)
from planner.plan import Plan, Recompute

GIB = 2**30
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

    dense: float     # split by tp, replicated over dp*cp
    expert: float    # split by ep*etp, replicated over the expert data-parallel size
    edp: int         # expert data-parallel size (dp*cp*tp / (ep*etp))


@dataclass(frozen=True, slots=True)
class StageMemory:
    """Bytes on one device of a stage."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.buffers


def stage_params(model: ModelSpec, plan: Plan, first: int, last: int, *,
                 has_embedding: bool, has_head: bool) -> StageParams:
    """Parameters of blocks first..last (inclusive) on one device."""
    dense = expert = 0.0
    for layer in range(first, last + 1):
        if model.is_moe_layer(layer) and model.moe is not None:
            m = model.moe
            routed = m.num_experts * model.mlp_params(m.expert_ffn_hidden_size)
            expert += routed
            dense += model.moe_layer_params - routed
        else:
            dense += model.dense_layer_params
    dense /= plan.tp
    if has_embedding:
        dense += model.embedding_params / plan.tp
    if has_head and (not model.tied_embeddings or not has_embedding):
        dense += (model.vocab_size * model.hidden_size) / plan.tp + model.norm_params
    edp = max(1, plan.dp * plan.cp * plan.tp // (plan.ep * plan.expert_tp))
    return StageParams(dense, expert / (plan.ep * plan.expert_tp), edp)


def state_bytes(params: StageParams, plan: Plan, dtype: DType,
                optimizer: Optimizer) -> tuple[float, float, float]:
    """(weights, grads, optimizer) bytes after ZeRO sharding."""
    dp = plan.dp * plan.cp
    w, g, o = (weight_bytes_per_param(dtype), grad_bytes_per_param(dtype),
               optimizer_bytes_per_param(optimizer, dtype))

    def shard(count: float, per: int, group: int, stage: int) -> float:
        return count * per / (group if plan.zero >= stage else 1)

    weights = shard(params.dense, w, dp, 3) + shard(params.expert, w, params.edp, 3)
    grads = shard(params.dense, g, dp, 2) + shard(params.expert, g, params.edp, 2)
    opt = shard(params.dense, o, dp, 1) + shard(params.expert, o, params.edp, 1)
    return weights, grads, opt


def block_activation_bytes(model: ModelSpec, plan: Plan, *, seq_len: int, moe: bool,
                           fused_attention: bool) -> float:
    """Activation bytes one block stores for one micro-batch on one device (Korthikanti)."""
    s, b, h, t = seq_len / plan.cp, plan.mbs, model.hidden_size, plan.tp
    sbh = s * b * h
    if plan.recompute == Recompute.FULL:
        return 2 * sbh / (t if plan.sp else 1)
    a = model.num_attention_heads
    d_qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim if model.mla else model.d_head
    d_v = model.mla.v_head_dim if model.mla else model.d_head
    kv_dim = model.kv_heads * d_qk if model.mla is None else a * d_qk
    # Q and K inputs of Q.K^T, V, and the output projection's input (8sbh for MHA).
    attn_split = 2 * s * b * (a * d_qk + kv_dim + a * d_v + a * d_v)
    scores = 0.0 if fused_attention or plan.recompute == Recompute.SELECTIVE else 5 * a * s * s * b
    if moe and model.moe is not None:
        m = model.moe
        mlp_width = m.top_k * m.expert_ffn_hidden_size * t / plan.expert_tp
        mlp_width += m.num_shared_experts * m.shared_ffn
    else:
        mlp_width = model.ffn_hidden_size
    # Up-projection output(s) and activation output: 16sbh for a 4h GELU MLP.
    mlp_split = 2 * s * b * mlp_width * (3 if model.activation.gated else 2)
    replicated = 10 * sbh
    if plan.sp:
        return (replicated + attn_split + mlp_split + scores) / t
    return replicated + (attn_split + mlp_split + scores) / t


def in_flight_microbatches(plan: Plan, stage: int, num_microbatches: int) -> float:
    """Micro-batches whose activations stage `stage` holds at its peak (1F1B/interleaved)."""
    base = plan.pp - stage
    if plan.vpp > 1:
        base = base * (1 + (plan.pp - 1) / (plan.pp * plan.vpp))
    return min(float(num_microbatches), base)


def head_activation_bytes(model: ModelSpec, plan: Plan, *, seq_len: int) -> float:
    """Logits of one micro-batch on the last stage: 16-bit logits plus fp32 softmax."""
    tokens = plan.mbs * seq_len / plan.cp
    return tokens * model.vocab_size / plan.tp * 6


def buffer_bytes(model: ModelSpec, plan: Plan, params: StageParams, *, seq_len: int,
                 layers_on_stage: int, dtype: DType) -> float:
    """Communication and gather buffers: ZeRO-3 keeps two blocks' full weights gathered
    (the current one and the prefetched next, as FSDP does); data-parallel gradient buckets
    (Megatron/DDP default 40M-element buckets, 2 in flight); a p2p activation buffer."""
    w = weight_bytes_per_param(dtype)
    gathered = 0.0
    if plan.zero >= 3 and layers_on_stage:
        per_block = (params.dense + params.expert) / layers_on_stage
        gathered = 2 * per_block * w
    buckets = 2 * 40e6 * grad_bytes_per_param(dtype) if plan.dp * plan.cp > 1 else 0.0
    p2p = 2 * plan.mbs * seq_len / plan.cp * model.hidden_size * 2 if plan.pp > 1 else 0.0
    return gathered + buckets + p2p + FRAMEWORK_OVERHEAD_BYTES
