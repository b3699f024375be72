"""Activation and state memory against Korthikanti et al. 2022 Table 2 and ZeRO.

Table 2 (arXiv:2205.05198), activation bytes per transformer block with 16-bit activations,
for an MHA block with a 4h GELU MLP and unfused attention (the scores are stored):
    no parallelism              sbh(34 + 5as/h)
    tensor parallel (TP)        sbh(10 + 24/t + 5as/(ht))
    TP + sequence parallel      sbh/t (34 + 5as/h)
    TP + selective recompute    sbh(10 + 24/t)
    TP + SP + selective         34 sbh/t
    full recompute              2sbh (2sbh/t with SP)
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cost_models.memory import (
    GIB,
    StageParams,
    block_activation_bytes,
    in_flight_microbatches,
    state_bytes,
)
from planner import ClusterSpec, DType, ModelSpec, Optimizer, Plan, Recompute, TrainingWorkload
from planner.api import evaluate

SHAPES = [  # (s, b, h, a)
    (2048, 1, 12288, 96),
    (2048, 4, 2304, 24),
    (4096, 2, 1024, 16),
    (512, 8, 768, 12),
]
TP = [1, 2, 4, 8]


def gpt_block(h: int, a: int) -> ModelSpec:
    return ModelSpec(name="gpt", num_layers=4, hidden_size=h, num_attention_heads=a,
                     ffn_hidden_size=4 * h, activation="gelu", vocab_size=51200,
                     positional="learned", linear_bias=True, norm="layernorm")


def act(s: int, b: int, h: int, a: int, *, t: int, sp: bool = False,
        recompute: Recompute = Recompute.NONE) -> float:
    plan = Plan(tp=t, sp=sp, mbs=b, recompute=recompute, attn="unfused")
    return block_activation_bytes(gpt_block(h, a), plan, seq_len=s, moe=False,
                                  fused_attention=False,
                                  dtype=DType.BF16)


@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_no_parallelism(s: int, b: int, h: int, a: int) -> None:
    assert act(s, b, h, a, t=1) == pytest.approx(s * b * h * (34 + 5 * a * s / h), rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_tensor_parallel(s: int, b: int, h: int, a: int, t: int) -> None:
    want = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    assert act(s, b, h, a, t=t) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_tensor_and_sequence_parallel(s: int, b: int, h: int, a: int, t: int) -> None:
    want = s * b * h / t * (34 + 5 * a * s / h)
    assert act(s, b, h, a, t=t, sp=True) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_tensor_parallel_selective(s: int, b: int, h: int, a: int, t: int) -> None:
    want = s * b * h * (10 + 24 / t)
    assert act(s, b, h, a, t=t, recompute=Recompute.SELECTIVE) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_tensor_sequence_parallel_selective(s: int, b: int, h: int, a: int, t: int) -> None:
    want = 34 * s * b * h / t
    got = act(s, b, h, a, t=t, sp=True, recompute=Recompute.SELECTIVE)
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_full_recompute(s: int, b: int, h: int, a: int, t: int) -> None:
    assert act(s, b, h, a, t=t, recompute=Recompute.FULL) == pytest.approx(2 * s * b * h, rel=1e-12)
    got = act(s, b, h, a, t=t, sp=True, recompute=Recompute.FULL)
    assert got == pytest.approx(2 * s * b * h / t, rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_fused_attention_stores_no_scores(s: int, b: int, h: int, a: int, t: int) -> None:
    """FlashAttention keeps no s x s scores: the selective-recompute numbers, without
    recomputing anything."""
    plan = Plan(tp=t, mbs=b)
    got = block_activation_bytes(gpt_block(h, a), plan, seq_len=s, moe=False, fused_attention=True,
                                 dtype=DType.BF16)
    assert got == pytest.approx(s * b * h * (10 + 24 / t), rel=1e-12)


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_unfused_scores_are_local_queries_by_all_keys(cp: int) -> None:
    """With cp, each device holds s/cp queries against all s keys (the shape the compute model
    times): the scores take 5*a*(s/cp)*s*b bytes, the rest is Table 2 with s/cp tokens."""
    s, b, h, a = 4096, 1, 1024, 16
    plan = Plan(cp=cp, mbs=b, attn="unfused")
    got = block_activation_bytes(gpt_block(h, a), plan, seq_len=s, moe=False, fused_attention=False,
                                 dtype=DType.BF16)
    sl = s / cp
    assert got == pytest.approx(34 * sl * b * h + 5 * a * sl * s * b, rel=1e-12)


@pytest.mark.parametrize(("pp", "vpp", "m", "want"), [
    (1, 1, 8, [1]), (4, 1, 8, [4, 3, 2, 1]), (4, 1, 2, [2, 2, 2, 1]),
    (4, 2, 16, [4 * (1 + 3 / 8), 3 * (1 + 3 / 8), 2 * (1 + 3 / 8), 1 + 3 / 8]),
])
def test_in_flight_microbatches(pp: int, vpp: int, m: int, want: list[float]) -> None:
    plan = Plan(pp=pp, vpp=vpp)
    assert [in_flight_microbatches(plan, k, m) for k in range(pp)] == pytest.approx(want)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("vocab", [0, 1000])
def test_one_stage_holds_every_parameter(tiny_model: ModelSpec, tiny_cluster: ClusterSpec,
                                         tied: bool, vocab: int) -> None:
    """pp=1, tp=1, no ZeRO: bf16 weights are 2 bytes times ModelSpec.params, final norm
    included (a tied head adds no matrix; a bare stack has neither head nor final norm);
    gradients 4 bytes (fp32, the default in bf16 training), 2 with grad_dtype bf16."""
    m = tiny_model.model_copy(update={"tied_embeddings": tied, "vocab_size": vocab})
    est = evaluate(m, tiny_cluster, TrainingWorkload(global_batch_size=4, seq_len=128), Plan())
    assert est.memory_gib["weights"] * GIB == pytest.approx(2 * m.params, rel=1e-12)
    assert est.memory_gib["grads"] * GIB == pytest.approx(4 * m.params, rel=1e-12)
    half = evaluate(m, tiny_cluster, TrainingWorkload(global_batch_size=4, seq_len=128,
                                                      grad_dtype=DType.BF16), Plan())
    assert half.memory_gib["grads"] * GIB == pytest.approx(2 * m.params, rel=1e-12)
    assert est.memory_gib["optimizer"] * GIB == pytest.approx(12 * m.params, rel=1e-12)


@pytest.mark.parametrize("zero", [1, 2, 3])
@pytest.mark.parametrize("dp", [2, 4, 8, 64])
@pytest.mark.parametrize("dtype", [DType.BF16, DType.FP32, DType.FP8])
@pytest.mark.parametrize("optimizer", [Optimizer.ADAM, Optimizer.SGD])
def test_zero_shards_add_back_up(zero: int, dp: int, dtype: DType, optimizer: Optimizer) -> None:
    params = StageParams(dense=1.234e9, expert=0.0, edp=dp)
    full = state_bytes(params, Plan(dp=dp, zero=0), dtype, optimizer)
    sharded = state_bytes(params, Plan(dp=dp, zero=zero), dtype, optimizer)
    for stage, (f, s) in zip((3, 2, 1), zip(full, sharded)):  # weights, grads, optimizer
        assert s * (dp if zero >= stage else 1) == pytest.approx(f, rel=1e-12)


def test_mixed_precision_adam_is_16_bytes_per_parameter() -> None:
    """Rajbhandari et al. 2020 Sec. 3.1: 2 + 2 + 12 bytes per parameter with 16-bit
    gradients; Megatron-LM's bf16 default (fp32 gradient accumulation and all-reduce) adds 2."""
    params = StageParams(dense=1e9, expert=0.0, edp=1)
    assert state_bytes(params, Plan(), DType.BF16, Optimizer.ADAM,
                       grad_dtype=DType.BF16) == (2e9, 2e9, 12e9)
    assert state_bytes(params, Plan(), DType.BF16, Optimizer.ADAM) == (2e9, 4e9, 12e9)
    assert state_bytes(params, Plan(), DType.FP16, Optimizer.ADAM) == (2e9, 2e9, 12e9)


# ----- models trained without dropout (ModelSpec.dropout false) -------------------------
# Korthikanti's 34 and 10 include two 1-byte dropout masks per token and hidden unit (after
# attention and after the MLP), and the 5as/h term a 1-byte mask plus the 2-byte dropout
# output per score. Without dropout: 32 (8 replicated) and 2as/h (the softmax output).

def act_nodrop(s: int, b: int, h: int, a: int, *, t: int, sp: bool = False,
               recompute: Recompute = Recompute.NONE) -> float:
    plan = Plan(tp=t, sp=sp, mbs=b, recompute=recompute, attn="unfused")
    model = gpt_block(h, a).model_copy(update={"dropout": False})
    return block_activation_bytes(model, plan, seq_len=s, moe=False, fused_attention=False,
                                  dtype=DType.BF16)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_no_dropout_tensor_parallel(s: int, b: int, h: int, a: int, t: int) -> None:
    want = s * b * h * (8 + 24 / t + 2 * a * s / (h * t))
    assert act_nodrop(s, b, h, a, t=t) == pytest.approx(want, rel=1e-12)
    if t == 1:
        assert want == pytest.approx(s * b * h * (32 + 2 * a * s / h), rel=1e-12)


@pytest.mark.parametrize("t", TP)
@pytest.mark.parametrize(("s", "b", "h", "a"), SHAPES)
def test_no_dropout_sequence_parallel_selective(s: int, b: int, h: int, a: int, t: int) -> None:
    got = act_nodrop(s, b, h, a, t=t, sp=True, recompute=Recompute.SELECTIVE)
    assert got == pytest.approx(32 * s * b * h / t, rel=1e-12)
    # full recomputation keeps only the block input either way
    full = act_nodrop(s, b, h, a, t=t, sp=True, recompute=Recompute.FULL)
    assert full == act(s, b, h, a, t=t, sp=True, recompute=Recompute.FULL)


def test_fused_loss_keeps_only_the_16bit_logits() -> None:
    from cost_models.memory import head_activation_bytes
    from planner import LossKernel

    model = gpt_block(1024, 16)
    unfused = head_activation_bytes(model, Plan(mbs=2, tp=2), seq_len=1024)
    fused = head_activation_bytes(model, Plan(mbs=2, tp=2, loss=LossKernel.FUSED), seq_len=1024)
    logits = 2 * 1024 * 51200 / 2
    assert unfused == 6 * logits and fused == 2 * logits


def test_chunked_loss_holds_one_chunk_and_the_gradients_it_made() -> None:
    """Liger's rule: inc = ceil(V/H) = ceil(25600/1024) = 25 (vocab 51200 over tp=2), chunk =
    next_pow2(ceil(2048/25)) = next_pow2(82) = 128 tokens; held: the chunk's 16-bit logits,
    grad_input (tokens x h) and grad_weight (V/tp x h), 2 bytes each."""
    from cost_models.compute import loss_chunk_tokens
    from cost_models.memory import head_activation_bytes
    from planner import LossKernel

    model = gpt_block(1024, 16)
    assert loss_chunk_tokens(2048, 25600, 1024) == 128
    got = head_activation_bytes(model, Plan(mbs=2, tp=2, loss=LossKernel.CHUNKED), seq_len=1024)
    assert got == 2 * (128 * 25600 + 2048 * 1024 + 25600 * 1024)
    fused = head_activation_bytes(model, Plan(mbs=2, tp=2, loss=LossKernel.FUSED), seq_len=1024)
    assert got < fused


@given(st.integers(1, 1 << 20), st.integers(1, 1 << 18), st.integers(64, 16384))
def test_chunk_logits_stay_near_the_input_size(tokens: int, vocab: int, hidden: int) -> None:
    """chunk = next_pow2(ceil(T/inc)) < 2 ceil(T/inc): a chunk's chunk x inc rows stay under
    2 (T + inc), so its logits are at most about twice the T x H input, and never more rows
    than the micro-batch has."""
    from cost_models.compute import loss_chunk_tokens

    chunk = loss_chunk_tokens(tokens, vocab, hidden)
    inc = -(-vocab // hidden)
    assert 1 <= chunk <= tokens and chunk * inc < 2 * (tokens + inc)


def test_chunked_loss_does_the_fused_losss_work() -> None:
    """Same FLOPs as the fused loss (the GEMM split into chunks), same logit traffic."""
    from cost_models.compute import Roofline, Shard, head_compute
    from cost_models.efficiency import device_efficiency
    from planner import LossKernel, load_device

    dev = load_device("h100-sxm5-80gb")
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    model = gpt_block(4096, 32)
    out = {}
    for loss in (LossKernel.FUSED, LossKernel.CHUNKED):
        sh = Shard(mbs=2, seq_len=4096, tp=1, loss=loss)
        out[loss] = head_compute(model, roof, sh)
    assert out[LossKernel.CHUNKED][2] == pytest.approx(out[LossKernel.FUSED][2])
    assert sum(out[LossKernel.CHUNKED][:2]) >= sum(out[LossKernel.FUSED][:2]) * 0.999


def test_fused_loss_and_no_dropout_never_cost_more() -> None:
    """Same plan: a fused loss and a dropout-free model never take longer or hold more."""
    from planner import LossKernel, load_cluster

    cluster = load_cluster("dgx-a100")
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    base_model = gpt_block(2048, 16)
    plan = Plan(tp=2, pp=2, dp=2, mbs=2)
    ref = evaluate(base_model, cluster, wl, plan, devices=8)
    for model, p in ((base_model, plan.model_copy(update={"loss": LossKernel.FUSED})),
                     (base_model.model_copy(update={"dropout": False}), plan)):
        est = evaluate(model, cluster, wl, p, devices=8)
        assert est.step_time_s <= ref.step_time_s
        assert est.peak_memory_gib < ref.peak_memory_gib


def test_fused_attention_head_dim_factor() -> None:
    """c = 5 * peak_bf16 / (4 * peak_fp32) = 5 * 312 / 78 = 20 on A100: head dim 64 takes
    (1 + 20/64) / (1 + 20/128) of the head-dim-128 time; 128 is the reference."""
    from cost_models.compute import Roofline, head_dim_factor
    from cost_models.efficiency import device_efficiency
    from planner import load_device

    dev = load_device("a100-sxm4-80gb")
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    assert head_dim_factor(roof, 128) == pytest.approx(1.0)
    assert head_dim_factor(roof, 64) == pytest.approx((1 + 20 / 64) / (1 + 20 / 128))
    assert head_dim_factor(roof, 64) > 1 > head_dim_factor(roof, 192)
    tpu = load_device("tpu-v4")       # lists no separate fp32 rate: not scaled
    assert head_dim_factor(Roofline(tpu, device_efficiency(tpu)[0], DType.BF16), 64) == 1.0


def test_near_capacity_warning(tiny_model: ModelSpec, tiny_cluster: ClusterSpec) -> None:
    """An estimate that fits but fills NEAR_CAPACITY or more of the most loaded device says
    so; one with room to spare, or one that does not fit (it reports the overflow), does not."""
    from cost_models.training import NEAR_CAPACITY

    wl = TrainingWorkload(global_batch_size=4, seq_len=128)
    peak = evaluate(tiny_model, tiny_cluster, wl, Plan()).peak_memory_gib * GIB

    def warned(capacity: float) -> bool:
        dev = tiny_cluster.device.model_copy(update={"memory_bytes": int(capacity)})
        est = evaluate(tiny_model, tiny_cluster.model_copy(update={"device": dev}), wl, Plan())
        return any("of its memory: near capacity" in w for w in est.warnings)

    assert warned(peak / 0.95) and warned(peak / NEAR_CAPACITY * 0.999)
    assert not warned(peak / 0.80) and not warned(peak * 0.9)


# ----- grouped-query attention and the training dtype ---------------------------------------
# A Llama-style block (SwiGLU, RMSNorm, no dropout, FlashAttention), h = 4096, 32 heads of 128,
# 8 KV heads, ffn 14336, with tp = 4 and sequence parallelism. Per token, in bytes, before the
# division by t: norm inputs 2 x 2h; norm outputs (the QKV and MLP inputs) 2 x 2h; Q, K, V and
# the attention output 2(h + 1024 + 1024 + h) (K and V kv_heads wide); gate and up outputs
# 2 x 2 x ffn and the SwiGLU output 2 x ffn.

def llama_block() -> ModelSpec:
    return ModelSpec(name="llama", num_layers=4, hidden_size=4096, num_attention_heads=32,
                     num_kv_heads=8, ffn_hidden_size=14336, activation="swiglu",
                     vocab_size=128256, positional="rope", norm="rmsnorm", dropout=False)


LLAMA_PLAN = Plan(tp=4, sp=True, mbs=2)
LLAMA_S = 8192


def test_gqa_stores_k_and_v_kv_heads_wide() -> None:
    h, kv, f = 4096, 8 * 128, 14336
    want = LLAMA_S * 2 * (4 * h + 4 * h + 2 * (2 * h + 2 * kv) + 6 * f) / 4
    got = block_activation_bytes(llama_block(), LLAMA_PLAN, seq_len=LLAMA_S, moe=False,
                                 fused_attention=True, dtype=DType.BF16)
    assert got == pytest.approx(want, rel=1e-12)


def test_fp8_saves_linear_inputs_in_one_byte() -> None:
    """Transformer Engine's fp8 linear layers keep their input as the fp8 cast: the norm
    outputs and the SwiGLU output take 1 byte, and the output projection keeps a 1-byte copy
    beside the attention kernel's 16-bit output."""
    h, kv, f = 4096, 8 * 128, 14336
    want = LLAMA_S * 2 * (4 * h + 2 * h + 2 * (2 * h + 2 * kv) + h + 4 * f + f) / 4
    got = block_activation_bytes(llama_block(), LLAMA_PLAN, seq_len=LLAMA_S, moe=False,
                                 fused_attention=True, dtype=DType.FP8)
    assert got == pytest.approx(want, rel=1e-12)
    bf16 = block_activation_bytes(llama_block(), LLAMA_PLAN, seq_len=LLAMA_S, moe=False,
                                  fused_attention=True, dtype=DType.BF16)
    assert got < bf16


@pytest.mark.parametrize("recompute", [Recompute.NONE, Recompute.FULL])
def test_fp32_activations_take_twice_the_16_bit_bytes(recompute: Recompute) -> None:
    """Without dropout every stored tensor is an activation: fp32 doubles all of them."""
    plan = LLAMA_PLAN.model_copy(update={"recompute": recompute})
    kw = {"seq_len": LLAMA_S, "moe": False, "fused_attention": True}
    fp32 = block_activation_bytes(llama_block(), plan, dtype=DType.FP32, **kw)
    assert fp32 == pytest.approx(2 * block_activation_bytes(llama_block(), plan,
                                                            dtype=DType.BF16, **kw), rel=1e-12)


def test_moe_block_keeps_the_dispatched_rows() -> None:
    """An MoE block stores, beyond a dense block's attention and norms, its experts' tensors:
    top_k dispatched copies of each token (h wide, the first grouped GEMM's saved input), and
    per copy the gate and up outputs and the SwiGLU output (3 x ffn)."""
    from planner import MoESpec
    h, k, f = 1024, 4, 512
    moe = ModelSpec(name="moe", num_layers=2, hidden_size=h, num_attention_heads=8,
                    ffn_hidden_size=4096, vocab_size=1000, activation="swiglu", dropout=False,
                    moe=MoESpec(num_experts=16, top_k=k, expert_ffn_hidden_size=f))
    plan, s = Plan(mbs=1), 2048
    kw = {"seq_len": s, "fused_attention": True, "dtype": DType.BF16}
    dense_part = block_activation_bytes(moe, plan, moe=False, **kw) - s * 2 * 3 * 4096
    got = block_activation_bytes(moe, plan, moe=True, **kw)
    assert got == pytest.approx(dense_part + s * 2 * k * (h + 3 * f), rel=1e-12)
