"""Pipeline point-to-point exchanges: every one exposed under 1F1B; under the interleaved
schedule only the blocking warmup and cooldown ones and what a steady-state transfer outlasts
its chunk (Megatron-Core `overlap_p2p_comm`, on by default with virtual stages)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.tables import interleaved_warmup_chunks
from cost_models.training import make_context, p2p_s, p2p_sync_s
from planner import TrainingWorkload, load_cluster, load_model
from planner.api import evaluate
from planner.plan import parse_plan


def _estimate(plan: str, global_batch: int = 256):
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100")
    wl = TrainingWorkload(global_batch_size=global_batch, seq_len=4096)
    p = parse_plan(plan, devices=64)
    ctx, _ = make_context(model, cluster.job_view(64), wl, p)
    return evaluate(model, cluster, wl, p, devices=64), p2p_s(ctx), p


def test_warmup_chunks_follow_megatron_core() -> None:
    """2 (pp - 1) + (vpp - 1) x pp forward chunks on the first rank, at most every chunk."""
    plan = parse_plan("tp=8,pp=4,vpp=2", devices=64)
    assert interleaved_warmup_chunks(plan, 64) == 2 * 3 + 1 * 4
    assert interleaved_warmup_chunks(plan, 3) == 3 * 2            # every chunk is warmup
    plan16 = parse_plan("tp=4,pp=16,vpp=8", devices=256)
    assert interleaved_warmup_chunks(plan16, 384) == 30 + 7 * 16


def test_1f1b_exposes_every_exchange() -> None:
    est, per_mb, p = _estimate("tp=8,pp=4")
    m = est.num_microbatches
    assert p2p_sync_s(p, m, per_mb) == 0.0
    assert est.breakdown["pp_comm"] == pytest.approx(m * per_mb)


def test_interleaved_exposes_warmup_and_cooldown_only() -> None:
    """Llama 3 70B, tp=8 pp=4 vpp=2 on 64 H100, 128 micro-batches: a chunk's compute (tens of
    ms) outlasts a transfer (well under 1 ms), so only the 2 x 10 blocking transfers count."""
    est, per_mb, p = _estimate("tp=8,pp=4,vpp=2")
    one = per_mb / (2 * 2)
    assert est.breakdown["pp_comm"] == pytest.approx(2 * (2 * 3 + 4) * one)
    assert est.breakdown["pp_comm"] < est.num_microbatches * per_mb / 5
    assert sum(est.breakdown.values()) == pytest.approx(est.step_time_s)


def test_interleaved_all_warmup_is_all_exposed() -> None:
    """With m x vpp no larger than the warmup, no exchange is in a steady state."""
    est, per_mb, p = _estimate("tp=8,pp=4,vpp=2", global_batch=8)    # 4 micro-batches
    assert est.num_microbatches * p.vpp <= 2 * 3 + 4
    assert est.breakdown["pp_comm"] == pytest.approx(est.num_microbatches * per_mb)


@settings(max_examples=25, deadline=None)
@given(vpp=st.sampled_from([2, 4]), batch=st.sampled_from([16, 64, 256, 1024]))
def test_interleaving_never_exposes_more_than_blocking(vpp: int, batch: int) -> None:
    est, per_mb, _ = _estimate(f"tp=4,pp=4,vpp={vpp}", global_batch=batch)
    assert est.breakdown["pp_comm"] <= est.num_microbatches * per_mb * (1 + 1e-12)
