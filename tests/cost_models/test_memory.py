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
                                  fused_attention=False)


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
    got = block_activation_bytes(gpt_block(h, a), plan, seq_len=s, moe=False, fused_attention=True)
    assert got == pytest.approx(s * b * h * (10 + 24 / t), rel=1e-12)


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_unfused_scores_are_local_queries_by_all_keys(cp: int) -> None:
    """With cp, each device holds s/cp queries against all s keys (the shape the compute model
    times): the scores take 5*a*(s/cp)*s*b bytes, the rest is Table 2 with s/cp tokens."""
    s, b, h, a = 4096, 1, 1024, 16
    plan = Plan(cp=cp, mbs=b, attn="unfused")
    got = block_activation_bytes(gpt_block(h, a), plan, seq_len=s, moe=False, fused_attention=False)
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
    included (a tied head adds no matrix; a bare stack has neither head nor final norm)."""
    m = tiny_model.model_copy(update={"tied_embeddings": tied, "vocab_size": vocab})
    est = evaluate(m, tiny_cluster, TrainingWorkload(global_batch_size=4, seq_len=128), Plan())
    assert est.memory_gib["weights"] * GIB == pytest.approx(2 * m.params, rel=1e-12)
    assert est.memory_gib["grads"] * GIB == pytest.approx(2 * m.params, rel=1e-12)
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
    """Rajbhandari et al. 2020 Sec. 3.1: 2 + 2 + 12 bytes per parameter."""
    params = StageParams(dense=1e9, expert=0.0, edp=1)
    assert state_bytes(params, Plan(), DType.BF16, Optimizer.ADAM) == (2e9, 2e9, 12e9)
