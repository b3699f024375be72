"""What a model is: `ModelSpec` and the quantities derived from its dimensions.

Decides: parameter counts (total and activated per token), forward FLOPs per token, bytes of
weights / gradients / optimizer states, KV-cache bytes per token. Does not decide how any of
that is split across devices (that is the cost model's job).

Conventions (sources next to each formula):
- A "matmul parameter" costs 2 FLOPs per token in the forward pass (one multiply, one add).
  Narayanan et al. 2021 (SC'21) Sec. 5.1 / Eq. 3 and Kaplan et al. 2020 Sec. 2.1.
- The attention-score term per layer and token is 2*s*n_heads*(d_qk + d_v) forward FLOPs
  (Q.K^T and scores.V over the whole sequence of s tokens, no causal halving), which for
  MHA with d_head*n_heads = h is 4*s*h: Narayanan et al. 2021 Eq. 3 (the s/6h term).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from planner.errors import SpecError


class Spec(BaseModel):
    """Base of every spec: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Activation(StrEnum):
    """MLP activation. Gated ones (SwiGLU, GeGLU) have three matrices instead of two."""

    GELU = "gelu"
    RELU = "relu"
    SQUARED_RELU = "squared_relu"
    SWIGLU = "swiglu"
    GEGLU = "geglu"

    @property
    def gated(self) -> bool:
        return self in (Activation.SWIGLU, Activation.GEGLU)


class Positional(StrEnum):
    """Positional scheme. `learned` adds max_position_embeddings * hidden parameters;
    `relative` is Transformer-XL's (Dai et al. 2019, Sec. 3.3; used by Gopher), which adds a
    position-key projection W_R of hidden x (heads*d_head) and two bias vectors per layer."""

    LEARNED = "learned"
    ROPE = "rope"
    ALIBI = "alibi"
    RELATIVE = "relative"
    NONE = "none"


class Norm(StrEnum):
    """Normalisation layer: LayerNorm has a scale and a bias, RMSNorm only a scale."""

    LAYERNORM = "layernorm"
    RMSNORM = "rmsnorm"


GIB = 2**30
"""Bytes in a GiB: memory is reported in GiB everywhere."""


class DType(StrEnum):
    """Numeric formats of weights and math."""

    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP4 = "fp4"

    @property
    def bytes(self) -> float:
        """Storage bytes per element (tf32 is stored as fp32; fp4 with its block scales)."""
        return _DTYPE_BYTES[self.value]

    @property
    def quantised(self) -> bool:
        """Whether the GEMMs run quantised (fp8, fp4) around 16-bit activations and weights
        (Transformer Engine's FP8 and NVFP4 recipes)."""
        return self in (DType.FP8, DType.FP4)


NVFP4_BYTES = 0.5 + 1 / 16
"""Bytes per NVFP4 element: a 4-bit E2M1 value plus one 1-byte E4M3 scale per block of 16
(Transformer Engine, `NVFP4BlockScaling`: "each group of 16 consecutive values is scaled
together using their own scaling factor. The type of the scaling factor is E4M3"; the one FP32
per-tensor scale is negligible)."""

_DTYPE_BYTES: dict[str, float] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1,
                                  "fp4": NVFP4_BYTES}


class Optimizer(StrEnum):
    """Optimizer, which decides the bytes of optimizer state per parameter."""

    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


class MLASpec(Spec):
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 Sec. 2.1)."""

    q_lora_rank_dim: int | None = Field(
        None, ge=1, description="rank of the query down-projection; None = queries not compressed"
    )
    kv_lora_rank_dim: PositiveInt = Field(description="rank of the joint key/value latent (cached)")
    qk_nope_head_dim: PositiveInt = Field(description="per-head query/key dims without RoPE")
    qk_rope_head_dim: PositiveInt = Field(description="per-head decoupled RoPE dims (key part cached, shared)")
    v_head_dim: PositiveInt = Field(description="per-head value dims")


class MoESpec(Spec):
    """Mixture of experts replacing the MLP of some layers."""

    num_experts: PositiveInt = Field(description="routed experts per MoE layer")
    top_k: PositiveInt = Field(description="routed experts each token is sent to")
    expert_ffn_hidden_size: PositiveInt = Field(description="hidden size of one routed expert's MLP")
    num_shared_experts: int = Field(0, ge=0, description="always-active shared experts per MoE layer")
    shared_expert_ffn_hidden_size: int | None = Field(
        None, ge=1, description="hidden size of one shared expert; None = expert_ffn_hidden_size"
    )
    first_k_dense: int = Field(0, ge=0, description="the first k layers keep a dense MLP")
    layer_freq: PositiveInt = Field(
        1, description="after the first k dense layers, every n-th layer is MoE (1 = all of them)"
    )
    capacity_factor: float | None = Field(
        None, gt=0, description="expert capacity factor; None = dropless routing"
    )
    route_groups: int | None = Field(
        None, ge=1, description="group-limited routing: the routed experts form this many "
        "equal groups of consecutive experts (DeepSeek-V2/V3 n_group, Megatron-Core "
        "--moe-router-num-groups); None = every expert is open to every token")
    route_group_topk: int | None = Field(
        None, ge=1, description="with route_groups: a token picks its top_k experts inside "
        "this many groups (DeepSeek-V3 topk_group 4: with one group per node, at most 4 nodes; "
        "Megatron-Core --moe-router-group-topk)")

    @property
    def shared_ffn(self) -> int:
        return self.shared_expert_ffn_hidden_size or self.expert_ffn_hidden_size


class ModelSpec(Spec):
    """A decoder (or encoder) transformer described the way Hugging Face configs do."""

    name: str = Field(description="preset name (the file stem) or a free label")
    description: str = Field("", description="one line: what this model is")
    source: str = Field("", description="where the dimensions come from (paper, model card)")
    notes: str = Field("", description="discrepancies between a source's stated and derived numbers")
    num_layers: PositiveInt = Field(description="transformer blocks")
    hidden_size: PositiveInt = Field(description="model width h")
    num_attention_heads: PositiveInt = Field(description="query heads")
    num_kv_heads: int | None = Field(
        None, ge=1, description="key/value heads: None or = heads is MHA, 1 is MQA, else GQA"
    )
    head_dim: int | None = Field(None, ge=1, description="per-head dims; None = hidden / heads")
    ffn_hidden_size: PositiveInt = Field(description="hidden size of the dense MLP")
    activation: Activation = Field(Activation.GELU, description="MLP activation")
    vocab_size: int = Field(
        ge=0, description="vocabulary (embedding rows); 0 = no embedding or LM head (a bare stack)"
    )
    positional: Positional = Field(Positional.ROPE, description="positional scheme")
    max_position_embeddings: int = Field(
        2048, ge=1, description="rows of a learned position embedding (only counted if learned)"
    )
    tied_embeddings: bool = Field(False, description="LM head shares the input embedding")
    linear_bias: bool = Field(False, description="linear layers carry biases (GPT-2/3, BLOOM, OPT)")
    norm: Norm = Field(Norm.RMSNORM, description="normalisation layer")
    embedding_norm: bool = Field(False, description="a norm right after the embedding (BLOOM)")
    dropout: bool = Field(
        True, description="training applies dropout after attention and the MLP (and on the "
        "attention scores when unfused), storing 1-byte masks (Korthikanti et al. 2022 Sec. 4.1); "
        "false for models pre-trained without it (Llama, Mixtral, Qwen, DeepSeek, MPT, PaLM)")
    sliding_window: int | None = Field(
        None, ge=1, description="keys a sliding-window (local) attention layer attends to, the "
        "query's own included (Mistral 7B v0.1: 4096; gpt-oss: 128); None = every layer attends "
        "to the whole causal context")
    global_attention_every: int | None = Field(
        None, ge=1, description="with sliding_window: the k-th, 2k-th, ... layers attend "
        "globally and the others locally (gpt-oss alternates: 2); None = every layer local")
    mla: MLASpec | None = Field(None, description="multi-head latent attention; None = MHA/GQA/MQA")
    moe: MoESpec | None = Field(None, description="mixture of experts; None = dense")
    mtp_layers: int = Field(
        0, ge=0, description="multi-token-prediction modules trained with the model (DeepSeek-V3 "
        "Sec. 2.2; Megatron-Core --mtp-num-layers): each normalises the last hidden state and the "
        "next token's embedding, projects their concatenation (2h -> h), runs one more block of "
        "the last layer's type and the shared output head; on the last pipeline stage. Training "
        "only: serving ignores them, and `params` does not count them (DeepSeek-V3's 671B)")

    def model_copy(self, *, update: dict[str, object] | None = None, deep: bool = False) -> ModelSpec:
        """A validated copy: derived (cached) numbers are recomputed, never carried over."""
        return type(self).model_validate({**self.model_dump(), **(update or {})})

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        h, a = self.hidden_size, self.num_attention_heads
        if self.head_dim is None and self.mla is None and h % a:
            raise SpecError(
                f"model '{self.name}': {a} attention heads do not divide hidden size {h}; "
                "set head_dim explicitly or fix the head count"
            )
        kv = self.num_kv_heads
        if kv is not None and (kv > a or a % kv):
            raise SpecError(
                f"model '{self.name}': {kv} KV heads must divide the {a} attention heads "
                "(MHA: kv = heads, GQA: a divisor, MQA: 1)"
            )
        if self.global_attention_every is not None and self.sliding_window is None:
            raise SpecError(
                f"model '{self.name}': global_attention_every needs sliding_window (the window "
                "of the other layers); set it, or drop global_attention_every"
            )
        if self.moe is not None:
            m = self.moe
            if m.top_k > m.num_experts:
                raise SpecError(
                    f"model '{self.name}': top_k {m.top_k} exceeds the {m.num_experts} experts; "
                    "top_k must be at most num_experts"
                )
            if m.first_k_dense > self.num_layers:
                raise SpecError(
                    f"model '{self.name}': first_k_dense {m.first_k_dense} exceeds the "
                    f"{self.num_layers} layers"
                )
            if (m.route_groups is None) != (m.route_group_topk is None):
                raise SpecError(
                    f"model '{self.name}': group-limited routing needs both moe.route_groups "
                    "and moe.route_group_topk (or neither)")
            if m.route_groups is not None and m.route_group_topk is not None:
                g, t = m.route_groups, m.route_group_topk
                if m.num_experts % g or t > g or m.top_k > t * (m.num_experts // g):
                    raise SpecError(
                        f"model '{self.name}': route_groups {g} must divide the "
                        f"{m.num_experts} experts, route_group_topk {t} be at most {g}, and "
                        f"top_k {m.top_k} fit in {t} groups of {m.num_experts // max(1, g)}")
        return self

    # ----- shape helpers ---------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_attention_heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def attention_kind(self) -> str:
        if self.mla is not None:
            return "MLA"
        if self.kv_heads == self.num_attention_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer` (0-based) has an MoE MLP."""
        m = self.moe
        if m is None or layer < m.first_k_dense:
            return False
        return (layer - m.first_k_dense) % m.layer_freq == 0

    @cached_property
    def moe_layer_mask(self) -> tuple[bool, ...]:
        """is_moe_layer for every block, in order."""
        return tuple(self.is_moe_layer(i) for i in range(self.num_layers))

    @cached_property
    def num_moe_layers(self) -> int:
        return sum(self.moe_layer_mask)

    # ----- parameters ------------------------------------------------------------------
    @cached_property
    def norm_params(self) -> int:
        """Parameters of one normalisation over the hidden size."""
        return 2 * self.hidden_size if self.norm == Norm.LAYERNORM else self.hidden_size

    @cached_property
    def attention_params(self) -> int:
        """Parameters of one attention block (projections and MLA's internal norms)."""
        h, a, b = self.hidden_size, self.num_attention_heads, self.linear_bias
        if self.mla is not None:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            if m.q_lora_rank_dim:
                q = h * m.q_lora_rank_dim + m.q_lora_rank_dim + m.q_lora_rank_dim * a * qk
            else:
                q = h * a * qk
            kv = (h * (m.kv_lora_rank_dim + m.qk_rope_head_dim) + m.kv_lora_rank_dim
                  + m.kv_lora_rank_dim * a * (m.qk_nope_head_dim + m.v_head_dim))
            return q + kv + a * m.v_head_dim * h
        q_dim, kv_dim = a * self.d_head, self.kv_heads * self.d_head
        proj = h * q_dim + 2 * h * kv_dim + q_dim * h + self._relative_position_params
        return proj + ((q_dim + 2 * kv_dim + h) if b else 0)

    @property
    def _relative_position_params(self) -> int:
        """Transformer-XL W_R (h x heads*d_head) plus the u, v bias vectors, per layer."""
        if self.positional != Positional.RELATIVE:
            return 0
        q_dim = self.num_attention_heads * self.d_head
        return self.hidden_size * q_dim + 2 * q_dim

    def mlp_params(self, ffn: int) -> int:
        """Parameters of one MLP of hidden size `ffn` (3 matrices if gated, else 2)."""
        h = self.hidden_size
        mats = 3 if self.activation.gated else 2
        bias = (ffn * (mats - 1) + h) if self.linear_bias else 0
        return mats * h * ffn + bias

    @cached_property
    def dense_layer_params(self) -> int:
        return self.attention_params + self.mlp_params(self.ffn_hidden_size) + 2 * self.norm_params

    @cached_property
    def moe_layer_params(self) -> int:
        """All parameters of one MoE block (every routed expert, shared experts, router)."""
        m = self.moe
        if m is None:
            return self.dense_layer_params
        return (self.attention_params + 2 * self.norm_params + self.hidden_size * m.num_experts
                + m.num_experts * self.mlp_params(m.expert_ffn_hidden_size)
                + m.num_shared_experts * self.mlp_params(m.shared_ffn))

    @cached_property
    def moe_layer_active_params(self) -> int:
        """Parameters one token touches in an MoE block (top-k routed + shared + router)."""
        m = self.moe
        if m is None:
            return self.dense_layer_params
        return (self.attention_params + 2 * self.norm_params + self.hidden_size * m.num_experts
                + m.top_k * self.mlp_params(m.expert_ffn_hidden_size)
                + m.num_shared_experts * self.mlp_params(m.shared_ffn))

    @cached_property
    def embedding_params(self) -> int:
        pos = (self.max_position_embeddings * self.hidden_size
               if self.positional == Positional.LEARNED else 0)
        emb_norm = self.norm_params if self.embedding_norm else 0
        return self.vocab_size * self.hidden_size + pos + emb_norm

    @cached_property
    def lm_head_params(self) -> int:
        """Final norm plus the output projection (zero extra matrix when tied)."""
        if self.vocab_size == 0:
            return 0
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return head + self.norm_params

    @cached_property
    def params(self) -> int:
        """Total parameters."""
        n_moe = self.num_moe_layers
        blocks = (self.num_layers - n_moe) * self.dense_layer_params + n_moe * self.moe_layer_params
        return blocks + self.embedding_params + self.lm_head_params

    @cached_property
    def active_params(self) -> int:
        """Parameters activated per token (= params for a dense model)."""
        n_moe = self.num_moe_layers
        blocks = ((self.num_layers - n_moe) * self.dense_layer_params
                  + n_moe * self.moe_layer_active_params)
        return blocks + self.embedding_params + self.lm_head_params

    # ----- multi-token prediction ------------------------------------------------------
    @property
    def mtp_moe(self) -> bool:
        """Whether an MTP module's block has an MoE MLP: the type of the model's last block
        (DeepSeek-V3's MTP block is an MoE block, as its checkpoint's layer 61 shows)."""
        return self.is_moe_layer(self.num_layers - 1)

    @cached_property
    def mtp_module_params(self) -> int:
        """Parameters of one MTP module beyond what it shares with the model (embedding and
        output head, DeepSeek-V3 Sec. 2.2): its block, the 2h x h projection and three norms
        (the embedding's, the hidden state's and the output norm, Megatron-Core's
        MultiTokenPredictionLayer enorm/hnorm/final_layernorm)."""
        block = self.moe_layer_params if self.mtp_moe else self.dense_layer_params
        return block + 2 * self.hidden_size * self.hidden_size + 3 * self.norm_params

    def position_warning(self, tokens: int) -> str | None:
        """A warning when a sequence of `tokens` is longer than a learned position table: the
        model has no embedding row for the later positions (RoPE, ALiBi and relative positions
        have no table, so any length is scored as asked)."""
        if self.positional != Positional.LEARNED or tokens <= self.max_position_embeddings:
            return None
        return (f"a sequence of {tokens} tokens is longer than the "
                f"{self.max_position_embeddings} rows of {self.name}'s learned position table: "
                "the model as specified cannot run it (the estimate is for the same blocks at "
                "that length)")

    # ----- FLOPs -----------------------------------------------------------------------
    def _block_matmul_params(self, moe: bool) -> int:
        """Weights in the matrix multiplies a token goes through in one block."""
        h, a = self.hidden_size, self.num_attention_heads
        if self.mla is not None:
            attn = self.attention_params - (self.mla.q_lora_rank_dim or 0) - self.mla.kv_lora_rank_dim
        else:
            attn = (2 * h * a * self.d_head + 2 * h * self.kv_heads * self.d_head
                    + h * a * self.d_head * (self.positional == Positional.RELATIVE))
        mats = 3 if self.activation.gated else 2
        if moe and self.moe is not None:
            m = self.moe
            return attn + (h * m.num_experts + m.top_k * mats * h * m.expert_ffn_hidden_size
                           + m.num_shared_experts * mats * h * m.shared_ffn)
        return attn + mats * h * self.ffn_hidden_size

    @cached_property
    def matmul_active_params(self) -> int:
        """Weights in matrix multiplies one token goes through (no embedding lookup, no norms,
        no biases; the LM head counts even when tied). Twice this is the forward FLOPs/token."""
        n_moe = self.num_moe_layers
        total = ((self.num_layers - n_moe) * self._block_matmul_params(False)
                 + n_moe * self._block_matmul_params(True))
        return total + self.vocab_size * self.hidden_size

    @cached_property
    def mtp_matmul_params(self) -> int:
        """Matmul weights a token goes through in the MTP modules: per module its block, the
        2h -> h projection and another pass through the output head (0 without MTP)."""
        h = self.hidden_size
        per = self._block_matmul_params(self.mtp_moe) + 2 * h * h + self.vocab_size * h
        return self.mtp_layers * per

    @property
    def global_attention_layers(self) -> int:
        """Layers that attend to the whole context (all of them without a sliding window)."""
        if self.sliding_window is None:
            return self.num_layers
        k = self.global_attention_every
        return 0 if k is None else self.num_layers // k

    def causal_keys_per_query(self, seq_len: int) -> float:
        """Keys a query attends to under the causal mask, averaged over query positions and
        layers: s/2 in a global layer (the causal half of the s x s scores) and, in a layer
        with a window w < s, w - w(w-1)/(2s) (the first w-1 positions see fewer than w)."""
        s, w = float(seq_len), self.sliding_window
        if w is None:
            return s / 2
        # exact mean for the window; capped at the global layers' s/2 (the convention's causal
        # half, a hair under the exact (s+1)/2), so a window never counts more than none
        local = s / 2 if w >= seq_len else min(s / 2, w - w * (w - 1) / (2 * s))
        return self._layer_mean(s / 2, local)

    def attended_context(self, context: int) -> float:
        """Keys a new token attends to (and KV-cache entries a sequence keeps) at a context of
        `context` tokens, averaged over layers: all of them in a global layer, at most the
        window in a local one (decode: no causal halving)."""
        w = self.sliding_window
        if w is None:
            return float(context)
        return self._layer_mean(float(context), float(min(context, w)))

    def _layer_mean(self, global_value: float, local_value: float) -> float:
        """Mean over the layers of a quantity that is `global_value` in a global-attention
        layer and `local_value` in a sliding-window one."""
        g = self.global_attention_layers
        return (g * global_value + (self.num_layers - g) * local_value) / self.num_layers

    def attention_score_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs of Q.K^T and scores.V per token over all layers, full (non-causal)
        s x s, the convention of Narayanan et al. 2021 Eq. 3: twice the causal work. Layers
        with a sliding window count twice their causal work by the same convention (2w keys
        per query for w much smaller than s), so the convention's ratio holds for every layer."""
        a = self.num_attention_heads
        if self.mla is not None:
            d_qk = self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim
            d_v = self.mla.v_head_dim
        else:
            d_qk = d_v = self.d_head
        keys = 2 * self.causal_keys_per_query(seq_len)     # = s without a window
        return float(self.num_layers * 2 * keys * a * (d_qk + d_v))

    def forward_flops_per_token(self, seq_len: int, *, attention_scores: bool = True) -> float:
        """Forward FLOPs per token: 2 per matmul weight, plus the attention-score term."""
        flops = 2.0 * self.matmul_active_params
        return flops + (self.attention_score_flops_per_token(seq_len) if attention_scores else 0.0)

    def mtp_forward_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the MTP modules, by the same convention (each module's
        block adds one layer's attention-score term); 0 without MTP. Training counts them as
        model FLOPs (Megatron-LM's num_floating_point_operations adds mtp_num_layers blocks
        and output heads); serving does not run them."""
        if not self.mtp_layers:
            return 0.0
        score = self.attention_score_flops_per_token(seq_len) / self.num_layers
        return 2.0 * self.mtp_matmul_params + self.mtp_layers * score

    def training_forward_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of a training step: the model's plus its MTP modules'."""
        return self.forward_flops_per_token(seq_len) + self.mtp_forward_flops_per_token(seq_len)

    # ----- bytes -----------------------------------------------------------------------
    def kv_cache_bytes_per_token(self, dtype: DType = DType.BF16) -> float:
        """KV-cache bytes one token adds over all layers: K and V per KV head (MHA/GQA/MQA);
        the latent plus the shared RoPE key for MLA (DeepSeek-V2 Sec. 2.1.2), in the KV-cache
        dtype of a `dtype` deployment (kv_cache_dtype)."""
        if self.mla is not None:
            per_layer = self.mla.kv_lora_rank_dim + self.mla.qk_rope_head_dim
        else:
            per_layer = 2 * self.kv_heads * self.d_head
        return self.num_layers * per_layer * kv_cache_dtype(dtype).bytes


def kv_cache_dtype(dtype: DType) -> DType:
    """The KV cache's dtype when serving in `dtype`: its own, except fp4, whose checkpoints
    keep an FP8 KV cache (NVIDIA ModelOpt's NVFP4 exports write `"quant_algo": "NVFP4",
    "kv_cache_quant_algo": "FP8"` into hf_quant_config.json, which TensorRT-LLM, vLLM and
    SGLang read)."""
    return DType.FP8 if dtype == DType.FP4 else dtype


def weight_bytes_per_param(dtype: DType) -> float:
    """Bytes of the working copy of each weight in training. FP8 and NVFP4 training keep bf16
    weights and quantise them per GEMM (Transformer Engine, NVIDIA FP8 primer; Megatron-Bridge's
    mixed-precision config: "fp4_param and fp4_param_gather are not supported for now"), so
    both count 2 bytes here."""
    return 2 if dtype.quantised else dtype.bytes


def default_grad_dtype(dtype: DType) -> DType:
    """The dtype gradients are accumulated and reduced in when the workload does not say:
    fp32 for bf16 and fp8 training, as Megatron-LM forces ("bfloat16 requires gradient
    accumulation and all-reduce to be done in fp32": validate_args sets
    accumulate_allreduce_grads_in_fp32, megatron/training/arguments.py), torchtitan's FSDP2
    (MixedPrecisionPolicy reduce_dtype float32, its `mixed_precision_reduce` default) and
    DeepSpeed's bf16 optimizer (fp32 gradient accumulation) do; fp16 in fp16 training
    (Megatron-LM's fp16 path keeps 16-bit gradients, fp32 master weights); fp32 otherwise."""
    return DType.FP16 if dtype == DType.FP16 else DType.FP32


def grad_bytes_per_param(dtype: DType, grad_dtype: DType | None = None) -> float:
    """Bytes of each gradient: `grad_dtype`, or the default for the training dtype
    (`default_grad_dtype`)."""
    return (grad_dtype or default_grad_dtype(dtype)).bytes


def optimizer_bytes_per_param(optimizer: Optimizer, dtype: DType) -> int:
    """Bytes of optimizer state per parameter.

    Mixed-precision Adam keeps an fp32 master copy, momentum and variance: 4+4+4 = 12 bytes
    (Rajbhandari et al. 2020, ZeRO, Sec. 3.1: "K = 12"). In pure fp32 the master copy is the
    weight itself (8). SGD with momentum: master + momentum (8; 4 in fp32). Adafactor's factored
    second moments are O(rows + cols) and counted as zero; master copy 4 (0 in fp32).
    """
    master = 0 if dtype in (DType.FP32, DType.TF32) else 4
    if optimizer in (Optimizer.ADAM, Optimizer.ADAMW):
        return master + 8
    if optimizer == Optimizer.SGD:
        return master + 4
    return master
