"""A transformer block as a sharding `OpGraph`: its operators and the strategies each may use.

Decides: the operators of one dense block (LN1 -> QKV -> attention core -> out proj -> add ->
LN2 -> MLP up -> activation -> MLP down -> add), their FLOPs, and the strategies each is
offered over a tp group, with time and per-device memory. `search.sharding` picks among them.
Does not decide the choice itself.

Modelled (activations are [tokens, width]; S(0) splits tokens, S(1) the width):
- matmul (k -> m): replicated (R in, R out); column (weight split on m: R in, S(1) out; its
  input gradient is a partial sum); row (weight split on k: S(1) in, P out); tokens
  (data-parallel style: S(0) in and out, weights whole, their gradient all-reduced in
  backward). Megatron's pairing is column then row (Shoeybi et al. 2019, Sec. 3).
- attention core on the fused QKV tensor (heads laid out so that S(1) gives each device whole
  heads, as Megatron does): replicated; heads (S(1) in and out, needs tp | heads and tp |
  KV heads); tokens (S(0) in and out plus an all-gather of K and V, and in backward a
  reduce-scatter of their gradients; the non-causal s x s FLOPs split evenly).
- norm: R, or S(0) when `sequence_parallel` (statistics are per token, so a token split needs
  no communication; the scale/shift gradients are all-reduced in backward). S(1) is not
  offered: it would need an all-reduce of the statistics.
- residual adds: R, or S(0)/S(1) when `sequence_parallel`; the activation: R, S(0), S(1).
  `sequence_parallel=False` keeps norms and adds replicated, Megatron-LM as first published
  (Shoeybi et al. 2019); True lets them split, which Korthikanti et al. 2022 call sequence
  parallelism.
- the block is closed into a ring: its output feeds the next, identical, block's LN1 and first
  residual add (edges add2 -> ln1 and add2 -> add1), so the steady-state resharding between
  stacked blocks is paid once per block.
- time: FLOPs / (peak_flops * shards) for the forward (x3 with `backward`), plus collectives.
  Memory per device: weights / shards; with `backward`, plus the activations kept for the
  backward pass (the output / shards, a partial sum or replica being full size, and the
  gathered K and V of token-split attention). Forward-only activations are transient and not
  counted; neither are gradients or optimizer state.
- weight gradients that are partial over token shards (token-split matmuls, token-split norms)
  are all-reduced over the group once per graph, i.e. per micro-batch; with gradient
  accumulation they would be reduced once per step, so this overstates them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cost_models import comm
from planner.errors import SpecError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from search.sharding import (
    PARTIAL, REPLICATED, Edge, Layout, OpGraph, OpKind, Operator, Strategy, split,
)

_NORM_FLOPS_PER_ELEMENT = 5   # mean, centre, variance, normalise, scale: engineering estimate
_ACT_FLOPS_PER_ELEMENT = 8    # tanh-GeLU or SiLU-gate per output element: engineering estimate
# Both ops are memory-bound in practice, so FLOPs / peak understates their time. They are
# < 0.1% of a block's FLOPs; only near-ties between plans depend on these two numbers.

_NAMES = {REPLICATED: "replicated", split(0): "tokens", split(1): "features"}


@dataclass(frozen=True, slots=True)
class _Ctx:
    tokens: int
    tp: int
    peak_flops: float
    dtype_bytes: int
    backward: bool
    links: comm.GroupLinks

    def time_s(self, flops: float, shards: int) -> float:
        """Forward FLOPs over `shards` devices; fwd+bwd is 3x (Narayanan et al. 2021 Sec. 5.1)."""
        return flops * (3 if self.backward else 1) / (self.peak_flops * shards)

    def act_bytes(self, width: int) -> int:
        return self.tokens * width * self.dtype_bytes

    def kept_bytes(self, nbytes: int, shards: int) -> int:
        """Activation bytes a device keeps for the backward pass (none in forward only)."""
        return nbytes // shards if self.backward else 0

    def grad_all_reduce_s(self, nbytes: int) -> float:
        """All-reduce of gradients of weights held whole on token-split devices (backward)."""
        return comm.all_reduce_s(self.links, nbytes) if self.backward else 0.0

    def splits(self, width: int) -> bool:
        return width % self.tp == 0


def _matmul(c: _Ctx, name: str, k: int, m: int) -> tuple[Operator, tuple[Strategy, ...]]:
    """A [tokens, k] x [k, m] matmul: 2 FLOPs per multiply-add (Narayanan et al. 2021 Eq. 3)."""
    op = Operator(name, OpKind.MATMUL, (c.tokens, m), 2.0 * c.tokens * k * m, k * m)
    n, w, y = c.tp, k * m * c.dtype_bytes, c.act_bytes(m)
    full, sharded = c.time_s(op.flops, 1), c.time_s(op.flops, n)
    out = [Strategy("replicated", full, w + c.kept_bytes(y, 1), REPLICATED, (REPLICATED,))]
    if c.splits(m):
        out.append(Strategy("column", sharded, w // n + c.kept_bytes(y, n), split(1),
                            (REPLICATED,), input_grad_layouts=(PARTIAL,)))
    if c.splits(k):
        out.append(Strategy("row", sharded, w // n + c.kept_bytes(y, 1), PARTIAL, (split(1),)))
    if c.splits(c.tokens):
        out.append(Strategy("tokens", sharded, w + c.kept_bytes(y, n), split(0), (split(0),),
                            comm_s=c.grad_all_reduce_s(w)))
    return op, tuple(out)


def _attention(c: _Ctx, model: ModelSpec, seq_len: int) -> tuple[Operator, tuple[Strategy, ...]]:
    """Scores and weighted values, per token the model's per-layer s x s term (no causal
    halving, Narayanan et al. 2021 Eq. 3)."""
    q_dim, kv_dim = model.num_attention_heads * model.d_head, model.kv_heads * model.d_head
    flops = c.tokens * model.attention_score_flops_per_token(seq_len) / model.num_layers
    op = Operator("attn", OpKind.ATTENTION, (c.tokens, q_dim), flops)
    n, y, kv = c.tp, c.act_bytes(q_dim), c.act_bytes(2 * kv_dim)
    sharded = c.time_s(flops, n)
    full = c.time_s(flops, 1)
    out = [Strategy("replicated", full, c.kept_bytes(y, 1), REPLICATED, (REPLICATED,))]
    if model.num_attention_heads % n == 0 and model.kv_heads % n == 0:
        out.append(Strategy("heads", sharded, c.kept_bytes(y, n), split(1), (split(1),)))
    if c.splits(c.tokens):
        gather = comm.all_gather_s(c.links, kv) * (2 if c.backward else 1)  # bwd: RS, same time
        mem = c.kept_bytes(y, n) + c.kept_bytes(kv, 1)
        out.append(Strategy("tokens", sharded, mem, split(0), (split(0),), comm_s=gather))
    return op, tuple(out)


def _pointwise(c: _Ctx, op: Operator, layouts: list[Layout], n_inputs: int,
               ) -> tuple[Operator, tuple[Strategy, ...]]:
    """A norm or elementwise op that runs in the layout of its inputs."""
    out = []
    for layout in layouts:
        if layout != REPLICATED and not c.splits(op.out_shape[layout.dim]):
            continue
        n = 1 if layout == REPLICATED else c.tp
        w = op.weight_elems * c.dtype_bytes
        comm_s = c.grad_all_reduce_s(w) if layout == split(0) else 0.0
        mem = w + c.kept_bytes(c.act_bytes(op.out_shape[1]), n)
        out.append(Strategy(_NAMES[layout], c.time_s(op.flops, n), mem, layout,
                            (layout,) * n_inputs, comm_s=comm_s))
    return op, tuple(out)


def _block_ops(c: _Ctx, model: ModelSpec, seq_len: int, sequence_parallel: bool
               ) -> list[tuple[Operator, tuple[Strategy, ...]]]:
    t, h, f = c.tokens, model.hidden_size, model.ffn_hidden_size
    q_dim, kv_dim = model.num_attention_heads * model.d_head, model.kv_heads * model.d_head
    up = f * (2 if model.activation.gated else 1)         # gate and up projections fused
    residual = [REPLICATED, split(0), split(1)] if sequence_parallel else [REPLICATED]
    norm = [REPLICATED, split(0)] if sequence_parallel else [REPLICATED]

    def ln(name: str) -> tuple[Operator, tuple[Strategy, ...]]:
        flops = _NORM_FLOPS_PER_ELEMENT * t * h
        return _pointwise(c, Operator(name, OpKind.NORM, (t, h), flops, model.norm_params), norm, 1)

    def add(name: str) -> tuple[Operator, tuple[Strategy, ...]]:
        return _pointwise(c, Operator(name, OpKind.ELEMENTWISE, (t, h), t * h), residual, 2)

    act = Operator("act", OpKind.ELEMENTWISE, (t, f), _ACT_FLOPS_PER_ELEMENT * t * f)
    return [ln("ln1"), _matmul(c, "qkv", h, q_dim + 2 * kv_dim), _attention(c, model, seq_len),
            _matmul(c, "proj", q_dim, h), add("add1"), ln("ln2"), _matmul(c, "up", h, up),
            _pointwise(c, act, [REPLICATED, split(0), split(1)], 1), _matmul(c, "down", f, h),
            add("add2")]


def transformer_block_graph(model: ModelSpec, *, tokens: int, tp: int, links: comm.GroupLinks,
                            peak_flops: float, dtype_bytes: int = 2, seq_len: int | None = None,
                            backward: bool = False, sequence_parallel: bool = True,
                            cluster: ClusterSpec | None = None) -> OpGraph:
    """One dense block over `tokens` tokens (sequences of `seq_len`, default all of them) on
    a tp group with `links` (e.g. `comm.group_links(cluster, size=tp, stride=1)`).
    `peak_flops` is the FLOP/s one device reaches; see the module docstring for the rest."""
    if model.mla is not None or model.moe is not None:
        raise SpecError(f"model '{model.name}': the sharding block covers dense MHA/GQA blocks "
                        "only; MLA and MoE blocks are not modelled")
    if links.size != tp:
        raise SpecError(f"links describe a group of {links.size}, not tp={tp}: build them "
                        f"with group_links(cluster, size={tp}, stride=1)")
    c = _Ctx(tokens, tp, peak_flops, dtype_bytes, backward, links)
    ops = _block_ops(c, model, seq_len or tokens, sequence_parallel)
    width = {op.name: op.out_shape[1] for op, _ in ops}
    pairs = [("ln1", "qkv", 0), ("qkv", "attn", 0), ("attn", "proj", 0), ("proj", "add1", 0),
             ("add2", "add1", 1), ("add1", "ln2", 0), ("ln2", "up", 0), ("up", "act", 0),
             ("act", "down", 0), ("down", "add2", 0), ("add1", "add2", 1), ("add2", "ln1", 0)]
    edges = tuple(Edge(u, v, c.act_bytes(width[u]), slot) for u, v, slot in pairs)
    return OpGraph(tuple(op for op, _ in ops), edges, {op.name: s for op, s in ops},
                   links, cluster, backward)
