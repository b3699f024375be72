"""Context parallelism's ring-step merges (cost_models.compute.ring_merge_bytes) by hand, and
what they decide: the same work with context parallelism is never scored as cheap as without."""

from __future__ import annotations

import pytest

from cost_models import compute as cc
from cost_models.compute import Roofline, Shard, block_compute, ring_merge_bytes
from cost_models.efficiency import device_efficiency
from planner import ModelSpec, TrainingWorkload, load_cluster, load_model
from planner.api import evaluate, search
from planner.model import DType

GQA = ModelSpec(name="tiny-gqa", num_layers=2, hidden_size=256, num_attention_heads=8,
                num_kv_heads=2, ffn_hidden_size=512, vocab_size=100, activation="swiglu")


def test_merge_bytes_by_hand() -> None:
    # 8 heads of 32 (q 256 wide), 2 kv heads (k and v 64 wide each); bf16 (2 bytes).
    sh = Shard(mbs=2, seq_len=1024, cp=4)          # 2 * 1024 / 4 = 512 tokens on the device
    steps, tensors, e = 3, 3, 2                     # cp - 1 merges; read two, write one
    fwd = 512 * steps * tensors * e * 256           # the output
    bwd = 512 * steps * tensors * e * (256 + 64 + 64)   # dQ, then dK and dV
    assert ring_merge_bytes(GQA, sh) == (fwd, bwd) == (2_359_296.0, 3_538_944.0)
    # tensor parallelism splits the heads; fp32 doubles the element
    tp2 = Shard(mbs=2, seq_len=1024, cp=4, tp=2)
    assert ring_merge_bytes(GQA, tp2) == (fwd / 2, bwd / 2)
    fp32 = Shard(mbs=2, seq_len=1024, cp=4, dtype=DType.FP32)
    assert ring_merge_bytes(GQA, fp32) == (2 * fwd, 2 * bwd)


def test_no_context_parallelism_no_merges() -> None:
    assert ring_merge_bytes(GQA, Shard(mbs=2, seq_len=1024)) == (0.0, 0.0)


def test_the_merges_are_streamed_in_each_pass(monkeypatch) -> None:
    dev = load_cluster("dgx-h100").device
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    sh = Shard(mbs=2, seq_len=1024, cp=4)
    with_merges = block_compute(GQA, roof, sh, moe=False)
    monkeypatch.setattr(cc, "RING_MERGE_TENSORS", 0.0)
    without = block_compute(GQA, roof, sh, moe=False)
    fwd, bwd = 2_359_296.0, 3_538_944.0             # test_merge_bytes_by_hand
    assert with_merges.fwd_s - without.fwd_s == pytest.approx(roof.stream(fwd))
    assert with_merges.bwd_s - without.bwd_s == pytest.approx(roof.stream(bwd))


def test_the_same_work_with_context_parallelism_costs_more() -> None:
    """cp=2 with twice the micro-batch gives each device the same tokens and attention work
    as cp=1 with twice the data parallelism; before the merges were counted the two tied."""
    model, cluster = load_model("narayanan-1.7b"), load_cluster("dgx-a100")
    wl = TrainingWorkload(global_batch_size=512, seq_len=2048)
    with_cp = evaluate(model, cluster, wl, "tp=1,pp=1,dp=4,cp=2,mbs=32,zero=2", devices=8)
    without = evaluate(model, cluster, wl, "tp=1,pp=1,dp=8,cp=1,mbs=16,zero=2", devices=8)
    assert with_cp.step_time_s > without.step_time_s
    assert with_cp.breakdown["cp_comm"] == 0.0     # the difference is compute, not the exchange
    best = search(model, cluster, wl, devices=8, top_k=1)
    assert best.best.plan["cp"] == 1
