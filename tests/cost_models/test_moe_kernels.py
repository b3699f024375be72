"""The MoE layer's memory-bound kernels and FP8 casts by hand (cost_models.compute)."""

from __future__ import annotations

import pytest

from cost_models import compute as cc
from cost_models.compute import FP8_CAST_BYTES_PER_ELEMENT, Roofline, Shard, block_compute, moe_permute_bytes
from cost_models.efficiency import device_efficiency
from planner import ModelSpec, MoESpec, load_cluster
from planner.model import DType

TINY = ModelSpec(name="tiny-moe", num_layers=2, hidden_size=64, num_attention_heads=4,
                 ffn_hidden_size=128, vocab_size=100, activation="swiglu",
                 moe=MoESpec(num_experts=4, top_k=2, expert_ffn_hidden_size=32))


def test_permute_bytes_by_hand() -> None:
    # 16 tokens of width 64 in bf16 (2 bytes), top-2.
    T, k, h, e = 16, 2, 64, 2
    permute = 2 * T * k * h * e              # read + write each routed row: 8192
    regroup = 2 * (2 * T * k * h * e)        # sort by local expert and back: 16384
    unpermute = (T * k + T) * h * e          # read k rows per token, write one: 6144
    two_local = Shard(mbs=1, seq_len=16, ep=2)     # 4 experts over 2 ranks: 2 each
    one_local = Shard(mbs=1, seq_len=16, ep=4)     # one expert per rank: no regrouping
    assert moe_permute_bytes(TINY, two_local) == permute + regroup + unpermute == 30720
    assert moe_permute_bytes(TINY, one_local) == permute + unpermute == 14336


def _roof(dtype: DType) -> Roofline:
    dev = load_cluster("dgx-b200").device
    return Roofline(dev, device_efficiency(dev)[0], dtype)


def test_fp8_casts_every_gemm_input_forward_and_every_gradient_backward(monkeypatch) -> None:
    dense = TINY.model_copy(update={"moe": None})
    sh = Shard(mbs=1, seq_len=4096, dtype=DType.FP8)
    roof = _roof(DType.FP8)
    with_casts = block_compute(dense, roof, sh, moe=False)
    monkeypatch.setattr(cc, "FP8_CAST_BYTES_PER_ELEMENT", 0.0)
    without = block_compute(dense, roof, sh, moe=False)
    T, h, f = 4096, 64, 128
    # qkv (k=h, n=3h), out (k=h, n=h), up (k=h, n=2f), down (k=f, n=h)
    inputs = T * (h + h + h + f)
    grads = T * (3 * h + h + 2 * f + h)
    assert with_casts.fwd_s - without.fwd_s == pytest.approx(roof.stream(4.0 * inputs))
    assert with_casts.bwd_s - without.bwd_s == pytest.approx(roof.stream(4.0 * grads))
    assert FP8_CAST_BYTES_PER_ELEMENT == 4.0


def test_bf16_has_no_casts(monkeypatch) -> None:
    sh = Shard(mbs=1, seq_len=4096, dtype=DType.BF16)
    roof = _roof(DType.BF16)
    a = block_compute(TINY, roof, sh, moe=True)
    monkeypatch.setattr(cc, "FP8_CAST_BYTES_PER_ELEMENT", 0.0)
    assert block_compute(TINY, roof, sh, moe=True) == a


def test_moe_block_pays_the_permutations_in_both_passes(monkeypatch) -> None:
    sh = Shard(mbs=1, seq_len=4096, ep=2, dtype=DType.BF16)
    roof = _roof(DType.BF16)
    a = block_compute(TINY, roof, sh, moe=True)
    monkeypatch.setattr(cc, "moe_permute_bytes", lambda m, s: 0.0)
    b = block_compute(TINY, roof, sh, moe=True)
    t = roof.stream(30720 * 256)             # 4096 tokens instead of 16: 256x the bytes
    assert a.fwd_s - b.fwd_s == pytest.approx(t)
    assert a.bwd_s - b.bwd_s == pytest.approx(t)


def test_fp8_training_keeps_attention_head_and_router_in_bf16() -> None:
    from cost_models.compute import _attention_core, head_compute

    fp8, bf16 = _roof(DType.FP8), _roof(DType.BF16)
    sh8 = Shard(mbs=1, seq_len=4096, dtype=DType.FP8)
    sh16 = Shard(mbs=1, seq_len=4096, dtype=DType.BF16)
    assert _attention_core(TINY, fp8, sh8) == _attention_core(TINY, bf16, sh16)
    assert head_compute(TINY, fp8, sh8) == head_compute(TINY, bf16, sh16)
    assert fp8.high_precision().peak == bf16.peak == fp8.peak / 2
    # the router GEMM (4096 x 4 x 64) is timed at the bf16 roofline
    assert bf16.high_precision() is bf16


@pytest.mark.parametrize("tp,etp", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_expert_flops_are_conserved_under_parallel_folding(tp: int, etp: int) -> None:
    """tp ranks route their 1/tp sequence-parallel slices, etp ranks share each expert: over
    the tp devices of one replica the routed FLOPs are the micro-batch's tokens x top_k x
    the expert's FLOPs per row (2 x 3 x h x ffn for a gated MLP), whatever tp and etp."""
    from cost_models.compute import _add_experts

    roof = _roof(DType.BF16)
    sh = Shard(mbs=1, seq_len=4096, tp=tp, etp=etp, ep=4, sp=True)
    assert sh.moe_tokens == 4096 * etp / tp
    per_device = _add_experts(TINY, roof, sh, 0.0, 0.0, 0.0, 0.0)[1]
    h, f, k = 64, 32, 2
    assert per_device * tp == pytest.approx(4096 * k * 2 * 3 * h * f)


def test_weight_gradient_reads_and_writes_an_fp32_accumulator() -> None:
    # An expert's weight gradient with 256 tokens as depth: 2048 x 7168 weights.
    roof = _roof(DType.BF16)
    m, n, k = 256.0, 2048.0, 7168.0
    flops = 2 * m * n * k
    math_s = flops / (roof.peak * roof.efficiency(k, n, m))
    # operands in bf16 (m x k activations, m x n gradients), the k x n accumulator in fp32
    mem_s = ((m * k + m * n) * 2 + k * n * (4 + 4)) / roof.bw
    assert mem_s > math_s                      # bound by the accumulator, not the FLOPs
    _, _, bwd_s, _ = roof.gemm_fwd_bwd(m, n, k)
    dgrad_s, _ = roof.gemm(m, k, n)
    assert bwd_s == pytest.approx(dgrad_s + mem_s, rel=1e-12)
    # the same GEMM with a 2-byte output would be 3x less traffic on the weights
    plain_s, _ = roof.gemm(k, n, m)
    assert plain_s < mem_s
