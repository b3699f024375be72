"""The inference cost model: one plan in, one `InferenceEstimate` out.

Scores serving a batch of requests: the prefill of the prompts (time to first token, TTFT),
then the decode of the outputs one token per step (time per output token, TPOT), and the
memory of one device (weights + KV cache + workspace), with the largest batch that fits.

Layout and degrees (kept simple, stated here once):
- devices = tp * pp * dp. Each of the dp replicas runs its own attention (no traffic between
  replicas, except the experts' all-to-all when they spread over replicas, below) and serves batch_size / dp sequences of the *global* `InferenceWorkload.batch_size`
  (ceil when dp does not divide it: a warning says so).
- Inside a replica, pp stages of tp devices each (blocks split as `Plan.layers_per_stage`).
- Expert parallelism is folded into the TP group when ep <= tp: ep must divide tp; each of the tp ranks of
  a stage holds E/ep experts, each split over tp/ep ranks. Tokens are replicated in the TP
  group (they are, right after the attention all-reduce), so every rank runs its local
  experts on all tokens and the block's second all-reduce combines the expert outputs too
  (vLLM's TP-style MoE): no extra all-to-all. Per device this holds E*P_expert/tp expert
  weights and executes the same expert FLOPs for every ep dividing tp. In decode the expert
  weights read per step are those of the experts the batch hits; with ep > 1 they are not
  spread evenly, and the busiest rank (which the block's all-reduce waits for) reads the
  most (`busiest_rank_touched_experts`), so at small batch ep > 1 is slower than ep = 1.
  Prefill's expert FLOPs are taken as balanced (many tokens hit every expert).
- Or the experts spread over replicas (ep > tp: ep = tp x g for g dividing dp, "wide" expert
  parallelism with data-parallel attention, as DeepSeek-V3 serves, arXiv:2412.19437 Sec. 3.4:
  attention TP4 x DP8 with MoE EP32 for prefill; SGLang --attn-dp-size, vLLM
  --data-parallel-size with --enable-expert-parallel). Each replica's attention and dense
  layers run its own batch over its tp ranks; each device holds E/ep whole experts
  (`expert_slots`: ceil(E/ep), with redundant copies where ep does not divide E), and the ep ranks of g replicas exchange tokens every MoE block: each tp
  rank dispatches its 1/tp of the replica's tokens to their top_k experts and combines the
  results (fp8 rows with scales out, bf16 back: `dispatch_row_bytes`), then the tp ranks
  all-gather the combined slices. Decode uses DeepEP's low-latency all-to-all
  (`comm.moe_low_latency_s`, checked against DeepEP's measurements), prefill its normal
  kernels (`comm.moe_dispatch_s`, one network crossing per destination node). The experts'
  weight read and FLOPs are those of the g replicas' tokens on the busiest rank; prefill's
  expert GEMMs take training's expected-maximum load over the ep ranks (even, with redundant
  slots). The breakdown key ep_comm holds the all-to-all time that compute does not hide: all
  of it, unless the plan sets ep_overlap=on (two-batch overlap, `_prefill_overlapped`,
  `_decode_overlapped`); it is 0 when ep is folded into tp. DeepEP's communication buffers
  are not counted in memory.
- cp > 1 is rejected (context parallelism is not modelled for inference); etp is ignored.

Time (Pope et al. 2022, "Efficiently Scaling Transformer Inference", Sec. 2-3):
- Prefill: the prompt's forward pass over batch*prompt_len tokens per replica, timed per
  operator by the training roofline (`compute.block_compute`: GEMMs at the achievable
  FLOP/s, causal FlashAttention core, memory-bound elementwise kernels), plus Megatron's
  two TP all-reduces per block of tokens*h activations (Shoeybi et al. 2019 Sec. 3), the LM
  head on the last position of each sequence only, and pp-1 point-to-point sends of each
  rank's 1/tp slice of the activations (Narayanan et al. 2021 Sec. 4.1). One batch passes
  the stages one after the other: TTFT = sum of stage times + p2p.
- Decode: each step, every device streams its weight shard once and the KV cache of its
  sequences (Pope et al. Sec. 2: at small batch decode is memory-bound; its roofline is
  max(bytes / achievable bandwidth, FLOPs / achievable FLOP/s)). The context length used for
  the KV read and the attention FLOPs is the mean over the generation,
  prompt_len + output_len / 2. Plus two TP all-reduces per block of batch*h bytes
  (latency-bound at small batch; inside a node the engines' own one- or two-stage kernels,
  one or two NVLink latencies rather than NCCL's 2(n-1) ring steps:
  `comm.serving_all_reduce_s`), pp-1 p2p sends, and a kernel-launch floor per kernel:
  without CUDA graphs each kernel costs at least `kernel_floor_s` of CPU issue time, and at
  small batch decode is launch-bound (KERNELS_PER_BLOCK kernels per block); the launch term
  is added, not overlapped.
- Pipeline in decode: latency view, one batch in flight: TPOT = sum of stage times + p2p
  (the throughput of pp micro-batches in flight is not modelled).
- Breakdown of TPOT (sums exactly to it): weights_read and kv_read are the memory times,
  compute is the part of the FLOP time beyond the memory time (max(0, C - M): the roofline
  takes the larger of the two), then tp_comm, pp_comm, launch, ep_comm. TTFT: compute,
  tp_comm, pp_comm, ep_comm.
- e2e = TTFT + output_len * TPOT (the brief's convention; the first output token actually
  comes from prefill, so this over-counts one step).

Memory (per device, the most loaded stage):
- weights: the stage's parameters / tp in the workload dtype (fp8 = 1 byte: serving keeps
  no higher-precision master copy); the first stage holds the embedding, the last the LM
  head (a tied head is a second copy when pp > 1, as Megatron keeps it).
- KV cache: ModelSpec.kv_cache_bytes_per_token per token per layer, for batch sequences of
  prompt_len + output_len tokens (a sliding-window layer keeps only its window:
  ModelSpec.attended_context, averaged over the layers), paged in blocks of KV_BLOCK_TOKENS
  tokens (Kwon et al. 2023, vLLM, Sec. 4.2-4.3: the only waste is the last, partly filled
  block of each sequence). MHA/GQA split the KV heads over tp; when tp > kv heads each head is
  replicated tp/kv_heads times (the split is min(tp, kv_heads)). MLA caches one latent per
  token shared by all heads (DeepSeek-V2 Sec. 2.1.2), so it is replicated over tp.
- workspace: prefill's live tensors of one block (inference keeps no activations for a
  backward pass): see `_workspace_bytes`; with `InferenceWorkload.prefill_chunk_tokens` (an
  engine's chunked prefill) those of one chunk. Prefill time is the same either way (the
  same tokens and FLOPs; TTFT is the batch's whole prefill).
- FRAMEWORK_OVERHEAD_BYTES (CUDA context, NCCL buffers), as in training.
Every term is linear in the batch per replica (the chunked workspace up to a full chunk, then
constant), so `max_batch_size` is solved exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cost_models import comm
from cost_models.compute import Roofline, Shard, block_compute, roof_bytes
from cost_models.efficiency import DeviceEfficiency, device_efficiency, precision_warning, tile_fill
from cost_models.memory import FRAMEWORK_OVERHEAD_BYTES, GIB
from cost_models.training import strides
from planner.errors import PlanError
from planner.hardware import ClusterSpec
from planner.model import DType, ModelSpec
from planner.plan import Plan
from planner.validate import divisors, nearest
from planner.workload import InferenceWorkload

KERNELS_PER_BLOCK = 10
"""Kernels one decode step launches per block: two norms, QKV GEMM, RoPE, attention, output
GEMM, two residual adds, MLP up (gate fused) with the activation, MLP down. Engineering
count of an eager (no CUDA graph) Llama block in vLLM/HF; MoE routing kernels not counted."""
HEAD_KERNELS = 3
"""Final norm, LM-head GEMM, sampling, on the last stage."""
EMBEDDING_KERNELS = 1
"""Embedding lookup, on the first stage."""
KV_BLOCK_TOKENS = 16
"""vLLM's default KV block size in tokens (Kwon et al. 2023 Sec. 4.3 and 7.2)."""
LOGIT_BYTES = 4
"""The sampled positions' logits are materialised in fp32."""

TPOT_KEYS = ("weights_read", "kv_read", "compute", "tp_comm", "pp_comm", "launch", "ep_comm")
TTFT_KEYS = ("compute", "tp_comm", "pp_comm", "ep_comm")


class InferenceEstimate(BaseModel):
    """The cost model's prediction for serving one batch with one plan."""

    model_config = ConfigDict(frozen=True)

    plan: str = Field(description="the plan, as a --plan string")
    devices: int = Field(description="tp * pp * dp")
    batch_per_replica: int = Field(description="sequences each of the dp replicas serves")
    ttft_s: float = Field(description="prefill of the prompts: time to first token")
    tpot_s: float = Field(description="decode time per output token (latency view over pp)")
    e2e_s: float = Field(description="ttft + output_len * tpot")
    tokens_per_s: float = Field(description="output tokens per second over all replicas while "
                                "decoding: batch per replica x dp / tpot_s")
    e2e_tokens_per_s: float = Field(description="output tokens per second over all replicas "
                                    "for the whole batch, prefill included: batch per replica x "
                                    "dp x output_len / e2e_s")
    prefill_bound: Literal["memory", "compute"]
    decode_bound: Literal["memory", "compute"]
    prefill_flops_per_device: float = Field(description="prefill FLOPs of the busiest stage's device")
    decode_weight_bytes: float = Field(description="weight bytes one device reads per step (busiest stage)")
    decode_kv_bytes: float = Field(description="KV bytes one device reads per step at the mean context")
    ttft_breakdown: dict[str, float] = Field(description="seconds; sums to ttft_s")
    tpot_breakdown: dict[str, float] = Field(description="seconds; sums to tpot_s")
    peak_memory_gib: float = Field(description="memory of the most loaded device")
    capacity_gib: float
    fits: bool
    max_batch_size: int = Field(description="largest batch per replica that fits (0: none)")
    weights_gib: float = Field(description="weights of the most loaded device")
    kv_cache_gib: float = Field(description="KV cache of the most loaded device, full context")
    workspace_gib: float
    overhead_gib: float
    warnings: list[str] = Field(default_factory=list)


# ----- validation and parameters -------------------------------------------------------------
def _check(model: ModelSpec, workload: InferenceWorkload, plan: Plan) -> None:
    if plan.cp > 1:
        raise PlanError("context parallelism (cp > 1) is not modelled for inference; use cp=1")
    if plan.pp > model.num_layers:
        raise PlanError(f"pp={plan.pp} exceeds the {model.num_layers} blocks of '{model.name}'")
    heads = model.num_attention_heads
    if heads % plan.tp:      # the search's tp_heads rule, for a plan given by hand
        raise PlanError(f"tp={plan.tp} must divide the {heads} attention heads; nearest valid "
                        f"tp: {nearest(plan.tp, divisors(heads))}")
    if plan.ep > 1:
        if model.moe is None:
            raise PlanError(f"ep={plan.ep} needs an MoE model; '{model.name}' is dense")
        e = model.moe.num_experts
        if plan.ep <= plan.tp and (plan.tp % plan.ep or e % plan.ep):
            raise PlanError(
                f"ep={plan.ep} is folded into tp={plan.tp}: it must divide tp and the {e} "
                f"experts (or be tp times a divisor of dp={plan.dp}, experts over replicas)")
        if plan.ep > plan.tp and (plan.ep % plan.tp or plan.dp % (plan.ep // plan.tp)):
            raise PlanError(
                f"ep={plan.ep} spreads the experts over replicas: it must be tp={plan.tp} times "
                f"a divisor of dp={plan.dp}; valid: "
                f"{', '.join(str(x) for x in wide_ep_choices(model, plan.tp, plan.dp)) or 'none'}")
    if workload.batch_size < plan.dp:
        raise PlanError(f"batch {workload.batch_size} leaves some of the dp={plan.dp} replicas idle")
    if plan.ep_overlap:
        if not experts_over_replicas(model, plan):
            raise PlanError(
                f"ep_overlap=on overlaps one half of the batch's expert all-to-all with the "
                f"other half's compute; with ep={plan.ep} <= tp={plan.tp} there is no all-to-all "
                f"(use ep = tp x a divisor of dp on an MoE model, or drop ep_overlap)")
        if not splits_in_two(workload, plan.dp):
            raise PlanError(f"ep_overlap=on splits each replica's batch in two; batch "
                            f"{workload.batch_size} over dp={plan.dp} leaves one sequence per "
                            "replica (raise --batch or drop ep_overlap)")


def experts_over_replicas(model: ModelSpec, plan: Plan) -> bool:
    """Whether a serving plan spreads the experts over replicas (ep > tp on an MoE model:
    data-parallel attention, an all-to-all per MoE block) rather than folding ep into tp."""
    return model.moe is not None and plan.ep > plan.tp


def splits_in_two(workload: InferenceWorkload, dp: int) -> bool:
    """Whether each of dp replicas serves at least two sequences, as two-batch overlap
    (ep_overlap=on) needs."""
    return math.ceil(workload.batch_size / dp) >= 2


def wide_ep_choices(model: ModelSpec, tp: int, dp: int) -> list[int]:
    """The ep values above tp that spread the experts over replicas: tp x g for each divisor
    g > 1 of dp (where ep does not divide the experts, `expert_slots` adds redundant ones)."""
    assert model.moe is not None
    return [tp * g for g in range(2, dp + 1) if dp % g == 0]


def expert_slots(model: ModelSpec, plan: Plan) -> int:
    """Expert copies one device holds per MoE block when the experts spread over replicas
    (ep > tp): ceil(E / ep). Where ep does not divide E, the ep x ceil(E/ep) - E extra slots
    hold redundant copies of heavily loaded experts (DeepSeek-V3, arXiv:2412.19437, Sec. 3.4:
    "redundant experts", placed by its expert-parallel load balancer, EPLB; SGLang
    --ep-num-redundant-experts, vLLM --enable-eplb, whose default is exactly this minimum).
    Their purpose is balance, so the estimate takes such a layout's expert load as even."""
    assert model.moe is not None and experts_over_replicas(model, plan)
    return -(-model.moe.num_experts // plan.ep)


def redundant_experts(model: ModelSpec, plan: Plan) -> int:
    """Redundant expert slots of a serving plan (0 unless ep > tp does not divide E)."""
    if not experts_over_replicas(model, plan):
        return 0
    assert model.moe is not None
    return plan.ep * expert_slots(model, plan) - model.moe.num_experts


def ep_replicas(plan: Plan) -> int:
    """Replicas one expert-parallel group spans: ep / tp when ep > tp (data-parallel
    attention, experts over replicas), else 1 (ep folded into tp)."""
    return plan.ep // plan.tp if plan.ep > plan.tp else 1


def expert_split(plan: Plan) -> int:
    """Ways the routed experts' weights and work are split per device: tp when ep is folded
    into tp (E/ep experts, each over tp/ep ranks), ep when the experts spread over replicas
    (E/ep whole experts per device)."""
    return max(plan.tp, plan.ep)


def _routed_expert_params(model: ModelSpec) -> int:
    """Parameters of one routed expert (0 for a dense model)."""
    return model.mlp_params(model.moe.expert_ffn_hidden_size) if model.moe is not None else 0


def _layer_params(model: ModelSpec, layer: int) -> tuple[int, int]:
    """(parameters every token uses, parameters of all routed experts) of one block."""
    if not model.is_moe_layer(layer):
        return model.dense_layer_params, 0
    assert model.moe is not None
    routed = model.moe.num_experts * _routed_expert_params(model)
    return model.moe_layer_params - routed, routed


def touched_experts(model: ModelSpec, tokens: int) -> float:
    """Expected distinct routed experts hit by `tokens` tokens each picking top_k of E, with
    uniform independent routing: E * (1 - (1 - k/E)^tokens). 1 token: exactly k."""
    assert model.moe is not None
    e, k = model.moe.num_experts, model.moe.top_k
    return e * (1.0 - (1.0 - k / e) ** tokens)


def busiest_rank_touched_experts(model: ModelSpec, tokens: int, ep: int,
                                 slots: int | None = None) -> float:
    """Expected routed experts hit on the busiest of `ep` ranks that each hold E/ep whole
    experts, times ep: the expert count whose weights the slowest rank of the TP group reads,
    in units where ep = 1 gives `touched_experts` (every rank reads 1/tp of every hit expert,
    perfectly balanced). Each expert is hit with q = 1 - (1 - k/E)^tokens; a rank's hits are
    taken as Binomial(E/ep, q) (independent experts: top-k picks are distinct, which makes
    them slightly anti-correlated, so this is a mild upper bound), and the busiest of ep iid
    ranks has E[max] = sum_{x < m} (1 - F(x)^ep). Decode waits for the slowest rank at the
    block's all-reduce, so this, not the mean, sets the weight read. With `slots` copies per
    rank (`expert_slots`, redundant experts included) the ep x slots copies stand for the
    experts, each token's top_k picks spread over them (EPLB splits a replicated expert's
    tokens between its copies)."""
    assert model.moe is not None
    e, k = model.moe.num_experts, model.moe.top_k
    if ep <= 1:
        return touched_experts(model, tokens)
    m = slots if slots is not None else e // ep
    e = m * ep
    q = 1.0 - (1.0 - k / e) ** tokens
    cdf = expect = 0.0
    for x in range(m):
        cdf += math.comb(m, x) * q ** x * (1.0 - q) ** (m - x)
        expect += 1.0 - min(1.0, cdf) ** ep
    return expect * ep


def kv_split(model: ModelSpec, tp: int) -> int:
    """Ways the KV cache is split over tp: KV heads (replicated when tp > kv heads); MLA's
    latent is shared by all heads, so it is not split (DeepSeek-V2 Sec. 2.1.2)."""
    return 1 if model.mla is not None else min(tp, model.kv_heads)


def kv_tokens_per_sequence(workload: InferenceWorkload) -> int:
    """Cached tokens of one finished sequence, rounded up to whole KV blocks (vLLM paging)."""
    n = workload.prompt_len + workload.output_len
    return math.ceil(n / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS


# ----- memory ----------------------------------------------------------------------------
def vocab_weight_bytes(dtype: DType) -> float:
    """Bytes per parameter of the embedding table, the final norm and the LM head when serving
    in `dtype`.
    Quantised checkpoints keep both in 16 bits: NVIDIA ModelOpt's FP8 and NVFP4 exports write
    `"exclude_modules": ["lm_head"]` into hf_quant_config.json (modelopt/torch/export), which
    TensorRT-LLM, vLLM and SGLang honour, and the embedding is a lookup table, not one of the
    Linear layers quantisation replaces. Other dtypes store them in their own width."""
    dtype = DType(dtype)
    return 2.0 if dtype.quantised else dtype.bytes


def _stage_weight_bytes(model: ModelSpec, plan: Plan, stage: int, first: int, last: int,
                        dtype: DType) -> float:
    """Weight bytes one device of `stage` holds: the stage's blocks / tp in `dtype`, the
    embedding on the first stage and the LM head on the last (a second copy of a tied embedding
    when pp > 1) at `vocab_weight_bytes`; of the routed experts 1/tp, or `expert_slots` whole
    experts when they spread over replicas."""
    common = routed = 0
    for i in range(first, last + 1):
        c, r = _layer_params(model, i)
        common, routed = common + c, routed + r
    vocab = 0
    if stage == 0:
        vocab += model.embedding_params
    if stage == plan.pp - 1:
        vocab += model.lm_head_params
        if model.tied_embeddings and plan.pp > 1:
            vocab += model.vocab_size * model.hidden_size
    vocab_bytes = vocab / plan.tp * vocab_weight_bytes(dtype)
    if routed and experts_over_replicas(model, plan):   # whole experts, redundant copies too
        assert model.moe is not None
        body = common / plan.tp + routed // model.moe.num_experts * expert_slots(model, plan)
    else:
        body = common / plan.tp + routed / plan.tp
    return body * DType(dtype).bytes + vocab_bytes


def _workspace_bytes(model: ModelSpec, plan: Plan, prompt_len: int, batch: int,
                     dtype: DType, chunk_tokens: int | None = None) -> float:
    """Prefill's live activations of one block on one device, plus the sampled logits.

    Per token: the residual stream and the norm output (2h), Q/K/V (heads split over tp) and
    the MLP's up projection, activation and gate ((3 if gated else 2) * ffn / tp, ffn the
    routed top_k + shared widths for an MoE model), in the activation dtype; plus
    batch * vocab / tp fp32 logits for the last position of each sequence. An estimate: no
    allocator slack, and no attention scores (FlashAttention stores none, Dao et al. 2022).
    With chunked prefill (`chunk_tokens`) at most one chunk's tokens are live, not the
    batch's batch * prompt_len."""
    h, t, e = model.hidden_size, plan.tp, roof_bytes(dtype)
    if model.mla is not None:
        m = model.mla
        qkv = model.num_attention_heads * (2 * (m.qk_nope_head_dim + m.qk_rope_head_dim)
                                           + m.v_head_dim) / t
    else:
        qkv = (model.num_attention_heads + 2 * model.kv_heads) * model.d_head / t
    if model.moe is not None:
        mo = model.moe
        ffn = max(model.ffn_hidden_size if mo.first_k_dense else 0,
                  mo.top_k * mo.expert_ffn_hidden_size + mo.num_shared_experts * mo.shared_ffn)
    else:
        ffn = model.ffn_hidden_size
    mats = 3 if model.activation.gated else 2
    per_token = (2 * h + qkv + mats * ffn / t) * e
    logits = model.vocab_size / t * LOGIT_BYTES
    live = batch * prompt_len if chunk_tokens is None else min(batch * prompt_len, chunk_tokens)
    return live * per_token + batch * logits


def _stage_memory(model: ModelSpec, plan: Plan, workload: InferenceWorkload, stage: int,
                  first: int, last: int, batch: int) -> dict[str, float]:
    """Bytes of one device of `stage` serving `batch` sequences per replica (linear in batch)."""
    dt = workload.dtype
    kv_per_token_layer = model.kv_cache_bytes_per_token(dt) / model.num_layers
    kv = (batch * model.attended_context(kv_tokens_per_sequence(workload)) * kv_per_token_layer
          * (last - first + 1)
          / kv_split(model, plan.tp))
    return {
        "weights": _stage_weight_bytes(model, plan, stage, first, last, dt),
        "kv_cache": kv,
        "workspace": _workspace_bytes(model, plan, workload.prompt_len, batch, dt,
                                      workload.prefill_chunk_tokens),
        "overhead": float(FRAMEWORK_OVERHEAD_BYTES),
    }


def max_batch_size(model: ModelSpec, plan: Plan, workload: InferenceWorkload,
                   capacity: float) -> int:
    """Largest batch per replica whose memory fits on every stage. Memory is
    fixed + batch * per_sequence on each stage, so batch = floor((cap - fixed) / per_seq) is
    the answer up to rounding; with chunked prefill the workspace stops growing once a chunk
    is full (memory is then concave in the batch, and the slope at one sequence overstates
    it). Either way memory is nondecreasing in the batch, so that estimate only starts a
    search of the same function: stepping up from it (one check when it is exact) or bisecting
    below it, to the last batch that fits."""
    ranges = plan.stage_ranges(model.num_layers)

    def fits(b: int) -> bool:
        return all(sum(_stage_memory(model, plan, workload, s, a, z, b).values()) <= capacity
                   for s, (a, z) in enumerate(ranges))

    best = math.inf
    for s, (a, z) in enumerate(ranges):
        fixed = sum(_stage_memory(model, plan, workload, s, a, z, 0).values())
        per_seq = sum(_stage_memory(model, plan, workload, s, a, z, 1).values()) - fixed
        best = min(best, math.floor((capacity - fixed) / per_seq) if capacity >= fixed else 0)
    b = max(0, int(best))
    if fits(b):                     # gallop up: lo fits, lo + step does not
        lo, step = b, 1
        while fits(lo + step):
            lo, step = lo + step, 2 * step
        hi = lo + step
    elif fits(0):                   # the estimate overshot
        lo, hi = 0, b
    else:
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ----- time ------------------------------------------------------------------------------
def _math_rate(roof: Roofline) -> float:
    """Achievable FLOP/s of large GEMMs on `roof` (its large-GEMM fraction at the sustained
    clock)."""
    return roof.peak * roof.large_gemm_fraction


def dispatch_row_bytes(model: ModelSpec, dtype: DType) -> tuple[float, float]:
    """(dispatch, combine) bytes of one token row in an expert-parallel all-to-all: fp8
    serving dispatches the 1-byte cast with one fp32 scale per 128 channels and combines in
    bf16 (DeepSeek-V3, arXiv:2412.19437, Sec. 3.3.2 and 3.5.2: FP8 dispatch, BF16 combine,
    1 x 128 tile scales; DeepEP's benchmark rows are 7168 + 56 x 4 bytes); otherwise both
    directions carry the activation dtype."""
    h, e = model.hidden_size, roof_bytes(dtype)
    if DType(dtype).quantised:
        return h + math.ceil(h / FP8_SCALE_TILE) * 4, h * e
    return h * e, h * e


FP8_SCALE_TILE = 128
"""Channels per fp32 scaling factor of an fp8 activation row (DeepSeek-V3 Sec. 3.3.2)."""


def ep_links_of(cluster: ClusterSpec, plan: Plan) -> comm.GroupLinks:
    """Links of the expert-parallel group when the experts spread over replicas: the tp ranks
    of a stage in each of `ep_replicas` consecutive replicas (order tp, cp, dp, pp)."""
    st = strides(plan)
    return comm.composite_links(cluster, [(plan.tp, st["tp"]), (ep_replicas(plan), st["dp"])])


def _decode_stage(model: ModelSpec, plan: Plan, workload: InferenceWorkload, roof: Roofline,
                  eff: DeviceEfficiency, tp_links: comm.GroupLinks, ep_links: comm.GroupLinks,
                  cluster: ClusterSpec, stage: int, first: int, last: int,
                  batch: int, *, ends: bool = True) -> dict[str, float]:
    """One decode step of one stage on one device: bytes, FLOPs and seconds by kind
    (`ends=False`: blocks first..last alone, without the first stage's embedding and the last
    stage's head)."""
    dt, h, t = workload.dtype, model.hidden_size, plan.tp
    head, embed = ends and stage == plan.pp - 1, ends and stage == 0
    ctx = workload.prompt_len + workload.output_len / 2          # mean context over decode
    n_layers = last - first + 1
    # Tokens of one expert-parallel group: the replica's batch, times the replicas the group
    # spans when the experts spread over them (each replica's attention runs its own batch).
    group_tokens = batch * ep_replicas(plan)
    split = expert_split(plan)
    # Weights streamed once per step (Pope et al. 2022 Sec. 2); of an MoE block only the
    # experts the group's tokens hit, on the busiest rank (the all-reduce or the combine waits
    # for it). The embedding is a lookup of `batch` rows: not counted.
    common_params = routed_params = 0.0
    n_moe = 0
    for i in range(first, last + 1):
        common, routed = _layer_params(model, i)
        common_params += common
        n_moe += routed > 0
    if n_moe:
        slots = expert_slots(model, plan) if experts_over_replicas(model, plan) else None
        routed_params = (n_moe * busiest_rank_touched_experts(model, group_tokens, plan.ep, slots)
                         * _routed_expert_params(model))
    head_bytes = 0.0
    if head and model.vocab_size:                                    # final norm + LM head
        head_bytes = (model.vocab_size * h + model.norm_params) / t * vocab_weight_bytes(dt)
    weight_bytes = (common_params / t + routed_params / split) * dt.bytes + head_bytes
    kv_ctx = model.attended_context(ctx)     # a sliding-window layer keeps and reads its window
    kv_bytes = (batch * kv_ctx * model.kv_cache_bytes_per_token(dt) / model.num_layers * n_layers
                / kv_split(model, t))
    # FLOPs: 2 per active weight per token (Kaplan et al. 2020 Sec. 2.1) plus the new
    # token's attention over the whole context (no causal halving).
    # The routed experts' FLOPs are the group's tokens' top_k picks over `split` devices
    # (batch x top_k / tp when ep is folded into tp).
    routed_active = (model.moe.top_k * _routed_expert_params(model) if model.moe is not None
                     else 0)
    active = sum(model.moe_layer_active_params - routed_active if model.is_moe_layer(i)
                 else model.dense_layer_params for i in range(first, last + 1))
    if head:
        active += model.vocab_size * h
    score = model.attention_score_flops_per_token(1) * kv_ctx / model.num_layers * n_layers
    dense_flops = batch * 2.0 * active / t
    routed_flops = group_tokens * 2.0 * routed_active * n_moe / split
    gemm_flops = dense_flops + routed_flops
    attn_flops = batch * score / t
    t_weights, t_kv = weight_bytes / roof.bw, kv_bytes / roof.bw
    # A roofline per kernel (Williams et al. 2009), as training times each operator: the
    # GEMMs stream the weights and do the weight FLOPs, the attention kernel (FlashDecoding,
    # TensorRT-LLM's XQA, FlashInfer, FlashMLA) streams the KV cache and does the score FLOPs,
    # one after the other. At large batch the GEMMs turn compute-bound while attention stays
    # bound by its KV reads, so their times add; one roofline over the step's total bytes and
    # FLOPs would let one hide under the other.
    rate = _math_rate(roof)
    # The GEMMs' rows are the step's tokens: `batch` for the blocks' weights, each routed
    # expert's share of the group's tokens for the experts. Past one tile of rows, a partial
    # last tile computes a full one (tile quantization, efficiency.tile_fill: 415 rows cost
    # 512); the weight dimensions are whole tiles.
    routed_rows = (group_tokens * model.moe.top_k / model.moe.num_experts
                   if model.moe is not None else 0.0)
    t_gemm = (dense_flops / (rate * tile_fill(batch, eff.tile))
              + (routed_flops / (rate * tile_fill(routed_rows, eff.tile)) if routed_flops else 0.0))
    t_attn = attn_flops / rate
    act = batch * h * roof_bytes(dt)
    kernels = (n_layers * KERNELS_PER_BLOCK + (HEAD_KERNELS if head else 0)
               + (EMBEDDING_KERNELS if embed else 0))
    return {
        "weights_read": t_weights, "kv_read": t_kv,
        "compute": max(0.0, t_gemm - t_weights) + max(0.0, t_attn - t_kv),
        "tp_comm": _tp_comm(model, plan, tp_links, act, n_layers, n_moe),
        "launch": kernels * eff.kernel_floor_s,
        "ep_comm": n_moe * _ep_decode_s(model, plan, dt, ep_links, cluster, batch),
        "_weight_bytes": weight_bytes, "_kv_bytes": kv_bytes,
        "_gemm_math_s": t_gemm, "_attn_math_s": t_attn,
        "_compute_bound_s": (t_gemm if t_gemm > t_weights else 0.0)
        + (t_attn if t_attn > t_kv else 0.0),
    }


def _tp_comm(model: ModelSpec, plan: Plan, tp_links: comm.GroupLinks, act: float,
             n_layers: int, n_moe: int) -> float:
    """Megatron's two all-reduces per block of `act` bytes (Shoeybi et al. 2019 Sec. 3), run
    by the engines' own all-reduce kernels inside a node (`comm.serving_all_reduce_s`); in an
    MoE block whose experts spread over replicas, the second becomes an all-gather of the
    combined tp slices (each tp rank dispatched its 1/tp of the tokens)."""
    ar = comm.serving_all_reduce_s(tp_links, act)
    if not experts_over_replicas(model, plan):
        return 2 * n_layers * ar
    return (2 * (n_layers - n_moe) + n_moe) * ar + n_moe * comm.all_gather_s(tp_links, act)


def _ep_decode_s(model: ModelSpec, plan: Plan, dtype: DType, ep_links: comm.GroupLinks,
                 cluster: ClusterSpec, batch: int) -> float:
    """One MoE block's dispatch and combine in a decode step when the experts spread over
    replicas (DeepEP low-latency kernels, `comm.moe_low_latency_s`); each tp rank sends its
    1/tp of the replica's batch. 0 when ep is folded into tp (no all-to-all)."""
    if not experts_over_replicas(model, plan):
        return 0.0
    assert model.moe is not None
    d_row, c_row = dispatch_row_bytes(model, dtype)
    tokens, k = batch / plan.tp, model.moe.top_k
    return (comm.moe_low_latency_s(ep_links, cluster, tokens=tokens, top_k=k, row_bytes=d_row)
            + comm.moe_low_latency_s(ep_links, cluster, tokens=tokens, top_k=k, row_bytes=c_row))


def _ep_prefill_s(model: ModelSpec, plan: Plan, dtype: DType, ep_links: comm.GroupLinks,
                  cluster: ClusterSpec, tokens: int) -> float:
    """One MoE block's dispatch and combine of the prompt tokens when the experts spread over
    replicas: DeepEP's normal (throughput) kernels, which cross the network once per
    destination node (`comm.moe_dispatch_s`, as in training's flex dispatcher)."""
    if not experts_over_replicas(model, plan):
        return 0.0
    assert model.moe is not None
    m, (d_row, c_row) = model.moe, dispatch_row_bytes(model, dtype)
    kw = {"tokens": tokens / plan.tp, "top_k": m.top_k, "experts": m.num_experts,
          "groups": m.route_groups, "group_topk": m.route_group_topk}
    return (comm.moe_dispatch_s(ep_links, cluster, row_bytes=d_row, **kw)
            + comm.moe_dispatch_s(ep_links, cluster, row_bytes=c_row, **kw))


def _prefill_stage(model: ModelSpec, plan: Plan, workload: InferenceWorkload, roof: Roofline,
                   eff: DeviceEfficiency, tp_links: comm.GroupLinks, ep_links: comm.GroupLinks,
                   cluster: ClusterSpec, stage: int, first: int, last: int,
                   batch: int, *, ends: bool = True) -> dict[str, float]:
    """The prompt's forward pass through one stage on one device (`ends` as in
    `_decode_stage`)."""
    dt, h, t = workload.dtype, model.hidden_size, plan.tp
    head, embed = ends and stage == plan.pp - 1, ends and stage == 0
    sh = Shard(mbs=batch, seq_len=workload.prompt_len, tp=t, attn=plan.attn, dtype=dt)
    moe_sh = sh
    if experts_over_replicas(model, plan):
        # Experts over replicas: each tp rank routes its 1/tp of the tokens to E/ep whole
        # experts per device, the group's tokens spread over them with the expected maximum
        # load of random routing: training's expert arithmetic with etp = 1
        # (compute._add_experts; Shard.moe_tokens = tokens / tp).
        moe_sh = replace(sh, ep=plan.ep, etp=1)
    elif model.moe is not None:
        # ep is folded into tp (module docstring): per device the routed experts run split tp
        # ways on all T tokens of the replica (the same FLOPs as E/ep experts split tp/ep).
        # Only the U = touched_experts(T) experts that receive tokens run, with T*top_k/U
        # tokens each (>= 1): block_compute's `local = E/ep`, `per_expert = T*k*ep/E` give
        # exactly that with ep = E/U (a real number here, used only in those two products).
        used = touched_experts(model, sh.tokens)
        moe_sh = replace(sh, ep=model.moe.num_experts / used, etp=t)  # type: ignore[arg-type]
    secs = flops = 0.0
    n_moe = 0
    blocks = {}       # every dense block costs the same, and every MoE block: score each once
    for i in range(first, last + 1):
        moe = model.is_moe_layer(i)
        n_moe += moe
        if moe not in blocks:
            blocks[moe] = block_compute(model, roof, moe_sh if moe else sh, moe=moe)
        bc = blocks[moe]
        secs, flops = secs + bc.fwd_s, flops + bc.fwd_flops
    if embed and model.vocab_size:
        secs += roof.stream(2 * sh.tokens * h * roof_bytes(dt))     # embedding lookup
    if head and model.vocab_size:
        th, fh = roof.gemm(batch, model.vocab_size / t, h)            # last position only
        secs, flops = secs + th, flops + fh
    act = sh.tokens * h * roof_bytes(dt)
    weight_bytes = _stage_weight_bytes(model, plan, stage, first, last, dt)
    return {
        "compute": secs,
        "tp_comm": _tp_comm(model, plan, tp_links, act, last - first + 1, n_moe),
        "ep_comm": n_moe * _ep_prefill_s(model, plan, dt, ep_links, cluster, sh.tokens),
        "_flops": flops, "_math_s": flops / _math_rate(roof),
        "_mem_s": weight_bytes / roof.bw,
    }


DEEPEP_NORMAL_SMS = 20
"""Streaming multiprocessors DeepEP's normal (throughput) kernels hold while a dispatch or
combine runs: DeepSeek-V3 (arXiv:2412.19437) Sec. 3.2.2, "only 20 SMs" suffice to use the
bandwidths of InfiniBand and NVLink. The low-latency (decode) kernels receive through a hook
and hold none while the other micro-batch computes (DeepEP README, "hook-based
communication-computation overlapping method that does not occupy any SM resource")."""


def _halves(batch: int) -> tuple[int, int]:
    """The two micro-batches of a replica's batch under two-batch overlap."""
    return (batch + 1) // 2, batch // 2


def _two_halves(stage_fn: Any, args: tuple[Any, ...], stage: int, first: int, last: int,
                batch: int) -> tuple[dict[str, float], list[dict[str, float]], int]:
    """A stage run as two half-batches by `stage_fn` (`_prefill_stage` or `_decode_stage`):
    (the two summed, each half through one MoE block alone, the stage's MoE blocks). MoE blocks
    of one model are identical in the cost model, so one stands for all in the per-block
    overlap."""
    model = args[0]
    halves = [stage_fn(*args, stage, first, last, b) for b in _halves(batch)]
    out = {k: sum(h[k] for h in halves) for k in halves[0]}
    moe = [i for i in range(first, last + 1) if model.is_moe_layer(i)]
    one = ([stage_fn(*args, stage, moe[0], moe[0], b, ends=False) for b in _halves(batch)]
           if moe else [])
    return out, one, len(moe)


def _prefill_overlapped(model: ModelSpec, plan: Plan, workload: InferenceWorkload,
                        roof: Roofline, eff: DeviceEfficiency, tp_links: comm.GroupLinks,
                        ep_links: comm.GroupLinks, cluster: ClusterSpec, stage: int, first: int,
                        last: int, batch: int) -> dict[str, float]:
    """Prefill with two-batch overlap (plan key ep_overlap=on; DeepSeek-V3 Sec. 3.4.1: two
    micro-batches of similar work, the attention and MoE of one overlapping the dispatch and
    combine of the other; SGLang --enable-two-batch-overlap, vLLM --enable-dbo). Each half of
    the batch runs its own forward (`_prefill_stage`). In an MoE block the compute stream does
    both halves' work C and the network both halves' all-to-all E, at the same time: the block
    takes max(C', E), where C' is C slowed while the dispatch kernels hold DEEPEP_NORMAL_SMS of
    the device's compute units for min(C, E) (the training model's overlap slowdown). What the
    compute does not hide is ep_comm; the first dispatch's ramp is not charged (a lower bound,
    as for training's ep_overlap)."""
    args = (model, plan, workload, roof, eff, tp_links, ep_links, cluster)
    out, one, n_moe = _two_halves(_prefill_stage, args, stage, first, last, batch)
    if n_moe:
        c = sum(h["compute"] + h["tp_comm"] for h in one)
        e = sum(h["ep_comm"] for h in one)
        f = DEEPEP_NORMAL_SMS / eff.compute_units if eff.collective_sms else 0.0
        stretched = c + min(c, e) * f / (1.0 - f)
        out["compute"] += n_moe * (stretched - c)
        out["ep_comm"] = n_moe * max(0.0, e - stretched)
    return out


def _decode_overlapped(model: ModelSpec, plan: Plan, workload: InferenceWorkload,
                       roof: Roofline, eff: DeviceEfficiency, tp_links: comm.GroupLinks,
                       ep_links: comm.GroupLinks, cluster: ClusterSpec, stage: int, first: int,
                       last: int, batch: int) -> dict[str, float]:
    """A decode step with two-batch overlap (DeepSeek-V3 Sec. 3.4.2: the attention of one
    micro-batch overlaps the dispatch, MoE and combine of the other). Each half runs its own
    step (`_decode_stage`), so each streams the weights again (the common weights twice, the
    experts each half's tokens hit) and launches its own kernels; the KV cache and FLOPs are
    split. In an MoE block the device's memory-bound work of both halves and the two halves'
    low-latency all-to-alls run at the same time (those kernels hold no SMs while waiting): the
    block takes the larger, and what the device's work does not hide is ep_comm. So the
    overlap pays only where the all-to-all outweighs a second read of the block's weights,
    as at large batch over the network."""
    args = (model, plan, workload, roof, eff, tp_links, ep_links, cluster)
    out, one, n_moe = _two_halves(_decode_stage, args, stage, first, last, batch)
    if n_moe:
        c = sum(h["weights_read"] + h["kv_read"] + h["compute"] + h["tp_comm"] + h["launch"]
                for h in one)
        e = sum(h["ep_comm"] for h in one)
        out["ep_comm"] = n_moe * max(0.0, e - c)
    return out


def estimate_inference(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                       plan: Plan) -> InferenceEstimate:
    """Score one inference plan (see the module docstring for every formula)."""
    _check(model, workload, plan)
    eff, generic = device_efficiency(cluster.device)
    roof = Roofline(cluster.device, eff, workload.dtype)
    st = strides(plan)
    tp_links = comm.group_links(cluster, size=plan.tp, stride=st["tp"])
    ep_links = ep_links_of(cluster, plan)
    pp_crosses = plan.pp > 1 and st["pp"] * plan.pp > cluster.devices_per_node
    batch = math.ceil(workload.batch_size / plan.dp)
    ranges = plan.stage_ranges(model.num_layers)
    args = (model, plan, workload, roof, eff, tp_links, ep_links, cluster)

    # Stage-to-stage sends, each rank its 1/tp slice (Narayanan et al. 2021 Sec. 4.1).
    def p2p(tokens: int) -> float:
        nbytes = tokens * model.hidden_size * roof_bytes(workload.dtype) / plan.tp
        return (plan.pp - 1) * comm.p2p_s(cluster, nbytes, crosses_nodes=pp_crosses)

    prefill, decode = ((_prefill_overlapped, _decode_overlapped) if plan.ep_overlap
                       else (_prefill_stage, _decode_stage))
    pre = [prefill(*args, s, a, z, batch) for s, (a, z) in enumerate(ranges)]
    ttft_bd = {"compute": sum(p["compute"] for p in pre), "tp_comm": sum(p["tp_comm"] for p in pre),
               "pp_comm": p2p(batch * workload.prompt_len) if plan.pp > 1 else 0.0,
               "ep_comm": sum(p["ep_comm"] for p in pre)}
    dec = [decode(*args, s, a, z, batch) for s, (a, z) in enumerate(ranges)]
    tpot_bd = {k: sum(d[k] for d in dec) for k in TPOT_KEYS if k != "pp_comm"}
    tpot_bd["pp_comm"] = p2p(batch) if plan.pp > 1 else 0.0
    tpot_bd = {k: tpot_bd[k] for k in TPOT_KEYS}
    ttft, tpot = sum(ttft_bd.values()), sum(tpot_bd.values())
    e2e = ttft + workload.output_len * tpot

    mems = [_stage_memory(model, plan, workload, s, a, z, batch) for s, (a, z) in enumerate(ranges)]
    worst = max(range(plan.pp), key=lambda s: (sum(mems[s].values()), -s))
    peak, cap = sum(mems[worst].values()), float(cluster.device.memory_bytes)
    busiest = max(range(plan.pp), key=lambda s: (dec[s]["_weight_bytes"] + dec[s]["_kv_bytes"], -s))
    # decode is compute-bound when the kernels that their FLOPs bound take most of the step's
    # kernel time (per-kernel rooflines, _decode_stage)
    dec_math = sum(d["_compute_bound_s"] for d in dec)
    dec_mem = sum(d["weights_read"] + d["kv_read"] + d["compute"] for d in dec) - dec_math
    fits = peak <= cap
    mbs = max_batch_size(model, plan, workload, cap)
    return InferenceEstimate(
        plan=plan.to_string(), devices=plan.tp * plan.pp * plan.dp, batch_per_replica=batch,
        ttft_s=ttft, tpot_s=tpot, e2e_s=e2e,
        tokens_per_s=batch * plan.dp / tpot,
        e2e_tokens_per_s=batch * plan.dp * workload.output_len / e2e,
        prefill_bound="compute" if sum(p["_math_s"] for p in pre) >= sum(p["_mem_s"] for p in pre)
        else "memory",
        decode_bound="compute" if dec_math > dec_mem else "memory",
        prefill_flops_per_device=max(p["_flops"] for p in pre),
        decode_weight_bytes=dec[busiest]["_weight_bytes"],
        decode_kv_bytes=dec[busiest]["_kv_bytes"],
        ttft_breakdown=ttft_bd, tpot_breakdown=tpot_bd,
        peak_memory_gib=peak / GIB, capacity_gib=cap / GIB, fits=fits, max_batch_size=mbs,
        weights_gib=mems[worst]["weights"] / GIB, kv_cache_gib=mems[worst]["kv_cache"] / GIB,
        workspace_gib=mems[worst]["workspace"] / GIB, overhead_gib=mems[worst]["overhead"] / GIB,
        warnings=_warnings(model, cluster, workload, plan, generic, tp_links, fits, mbs),
    )


def _warnings(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload, plan: Plan,
              generic: bool, tp_links: comm.GroupLinks, fits: bool, mbs: int) -> list[str]:
    out = []
    if generic:
        out.append(f"no efficiency data for device '{cluster.device.name}'; generic "
                   "achievable fractions were used (see cost_models/efficiency.py)")
    for text in (precision_warning(cluster.device, workload.dtype, training=False),
                 model.position_warning(workload.prompt_len + workload.output_len)):
        if text:
            out.append(text)
    if workload.batch_size % plan.dp:
        out.append(f"batch {workload.batch_size} is not a multiple of dp={plan.dp}; each "
                   f"replica is scored with {math.ceil(workload.batch_size / plan.dp)} sequences")
    if model.mla is None and plan.tp > model.kv_heads:
        out.append(f"tp={plan.tp} exceeds the {model.kv_heads} KV heads: each KV head (and its "
                   f"cache) is replicated {plan.tp // model.kv_heads} times")
    if model.mla is not None and plan.tp > 1:
        out.append(f"MLA's latent KV cache is shared by all heads: replicated on all {plan.tp} "
                   "tp ranks")
    if tp_links.spans_nodes:
        out.append(f"the tp={plan.tp} group spans nodes: every block's all-reduces cross "
                   "the inter-node network")
    if plan.etp is not None:
        out.append("etp is ignored for inference (experts are split over tp/ep ranks)")
    if redundant_experts(model, plan):
        assert model.moe is not None
        slots = expert_slots(model, plan)
        out.append(f"ep={plan.ep} does not divide the {model.moe.num_experts} experts: each "
                   f"device holds {slots} expert slot{'s' if slots > 1 else ''}, "
                   f"{redundant_experts(model, plan)} of them in all redundant copies that an "
                   "expert-parallel load balancer places (SGLang --ep-num-redundant-experts "
                   "with --enable-eplb, vLLM --enable-eplb); their load is taken as even")
    if not fits:
        out.append(f"does not fit: at most {mbs} sequences per replica fit in memory")
    return out
