"""An overlapped data-parallel collective slows the compute beside it (cost_models.tables)."""

from __future__ import annotations

import dataclasses

import pytest

from cost_models import efficiency
from planner import ModelSpec, Plan, TrainingWorkload, load_cluster
from planner.api import evaluate

GPT = ModelSpec(name="gpt-1b", num_layers=16, hidden_size=2048, num_attention_heads=16,
                ffn_hidden_size=8192, vocab_size=51200)


def _dp_comm(monkeypatch, sms: int, plan: Plan) -> tuple[float, float]:
    monkeypatch.setitem(efficiency._BY_NAME, "a100",
                        dataclasses.replace(efficiency._BY_NAME["a100"], collective_sms=sms))
    est = evaluate(GPT, load_cluster("dgx-a100"), TrainingWorkload(global_batch_size=64, seq_len=2048),
                   plan, devices=8)
    return est.breakdown["dp_comm"], est.step_time_s


def test_hidden_all_reduce_costs_its_sms_share(monkeypatch) -> None:
    """DDP on one node: the gradient all-reduce R hides behind the last backward except the last
    block's bucket, so without contention dp_comm = R / layers. With 16 of the A100's 108 SMs
    held by NCCL, the (layers - 1) / layers of R that overlaps adds 16/108 of itself, and the
    last bucket, which runs alone, adds nothing."""
    plan = Plan(dp=8, mbs=8)
    free, _ = _dp_comm(monkeypatch, 0, plan)
    busy, _ = _dp_comm(monkeypatch, 16, plan)
    reduce_s = free * GPT.num_layers
    assert free > 0
    assert busy == pytest.approx(free + 16 / 108 * reduce_s * (1 - 1 / GPT.num_layers), rel=1e-9)


def test_tpus_take_no_compute_units_for_collectives() -> None:
    assert efficiency._BY_NAME["tpu-v4"].overlap_slowdown == 0.0
    assert efficiency._BY_NAME["a100"].overlap_slowdown == pytest.approx(16 / 108)
    assert efficiency._BY_NAME["b200"].overlap_slowdown == pytest.approx(16 / 148)
