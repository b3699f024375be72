"""Fused attention kernels compute at their instantiated head width (cost_models.compute)."""

from __future__ import annotations

import pytest

from cost_models import compute as cc
from cost_models.compute import Roofline, Shard, kernel_head_dim
from cost_models.efficiency import device_efficiency
from planner import ModelSpec, load_cluster
from planner.model import DType
from planner.plan import Attention


@pytest.mark.parametrize(("attn", "d", "want"), [
    (Attention.FLASH, 64, 64), (Attention.FLASH, 80, 96), (Attention.FLASH, 112, 128),
    (Attention.FLASH, 128, 128), (Attention.FLASH, 160, 192), (Attention.FLASH, 192, 192),
    (Attention.FLASH1, 64, 64), (Attention.FLASH1, 80, 128), (Attention.FLASH1, 112, 128),
    (Attention.FLASH1, 8, 16), (Attention.FLASH1, 128, 128),
])
def test_kernel_head_dim(attn: Attention, d: int, want: int) -> None:
    assert kernel_head_dim(attn, d) == want


def _model(hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(name="m", num_layers=2, hidden_size=hidden, num_attention_heads=heads,
                     ffn_hidden_size=4 * hidden, vocab_size=1000)


def test_a_112_wide_head_costs_as_much_as_128_and_counts_its_own_flops() -> None:
    dev = load_cluster("dgx-a100").device
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    sh = Shard(mbs=1, seq_len=8192, attn=Attention.FLASH1)
    t112, f112, _, _ = cc._attention_core(_model(112 * 8, 8), roof, sh)
    t128, f128, _, _ = cc._attention_core(_model(128 * 8, 8), roof, sh)
    assert t112 == pytest.approx(t128)              # same kernel width, same heads and tokens
    assert f112 == pytest.approx(f128 * 112 / 128)  # model FLOPs stay the head's own


def test_block_memo_only_inside_a_search_context(monkeypatch) -> None:
    model = _model(1024, 8)
    dev = load_cluster("dgx-a100").device
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    sh = Shard(mbs=2, seq_len=2048)
    plain = cc.block_compute(model, roof, sh, moe=False)
    with cc.memoised_blocks():
        first = cc.block_compute(model, roof, sh, moe=False)
        assert cc.block_compute(model, roof, sh, moe=False) is first     # reused
        assert first == plain
        other = _model(1024, 8)                  # an equal but distinct object: computed anew
        assert cc.block_compute(other, roof, sh, moe=False) is not first
    # outside the context a changed constant is seen at once
    monkeypatch.setattr(cc, "ELEMENTWISE_H_TENSORS", 2 * cc.ELEMENTWISE_H_TENSORS)
    assert cc.block_compute(model, roof, sh, moe=False).fwd_s > plain.fwd_s


@pytest.mark.parametrize("cluster", ["dgx-h100", "dgx-h200"])
def test_flash1_on_hopper_runs_at_fa2_hopper_utilisation_times_fa1_over_fa2(cluster: str) -> None:
    """FlashAttention-1-class kernels use Ampere's mma.sync tiles, not Hopper's warpgroup MMA:
    on H100/H200 they get FA2's 35% utilisation (Shah et al. 2024) x FA1's rate relative to
    FA2 on A100 (0.30 / 0.55), not their A100 fraction. By hand: a causal head-128 attention
    core of 8 heads x 8192 tokens, forward, at 0.35 x 0.30 / 0.55 of the bf16 peak."""
    dev = load_cluster(cluster).device
    eff = device_efficiency(dev)[0]
    assert eff.flash1_attention == pytest.approx(0.35 * 0.30 / 0.55)
    a100 = device_efficiency(load_cluster("dgx-a100").device)[0]
    assert eff.flash1_attention < a100.flash1_attention       # no longer the Ampere fraction
    roof = Roofline(dev, eff, DType.BF16)
    model = _model(128 * 8, 8)
    t, flops, _, _ = cc._attention_core(model, roof, Shard(mbs=1, seq_len=8192,
                                                           attn=Attention.FLASH1))
    assert flops == pytest.approx(2 * 8 * 8192 * 8192 * 256 * 0.5)
    by_hand = flops / (dev.peak_flops(DType.BF16) * 0.35 * 0.30 / 0.55)
    assert t == pytest.approx(by_hand * cc.head_dim_factor(roof, 128))   # factor 1 at d = 128
    t2, _, _, _ = cc._attention_core(model, roof, Shard(mbs=1, seq_len=8192, attn=Attention.FLASH))
    assert t / t2 == pytest.approx(0.55 / (0.35 * 0.30 / 0.55))
