"""Expert matmuls run at the most loaded EP rank's load (cost_models.compute._add_experts)."""

from __future__ import annotations

import pytest

from cost_models.compute import load_factor
from cost_models.moe_balance import effective_max_load


def test_dropless_load_factor_is_the_expected_maximum_over_the_mean() -> None:
    tokens, experts, k, ranks = 4096, 8, 2, 8
    f = load_factor(tokens, experts, k, ranks, None)
    assert f == pytest.approx(effective_max_load(tokens, experts, k, None, ranks=ranks)
                              / (tokens * k / ranks))
    assert f > 1.0
    assert load_factor(tokens, experts, k, 1, None) == 1.0   # one rank holds every expert


def test_more_tokens_balance_better() -> None:
    assert load_factor(65536, 64, 4, 16, None) < load_factor(1024, 64, 4, 16, None)


def test_capacity_factor_caps_the_slowest_rank() -> None:
    dropless = load_factor(4096, 16, 2, 16, None)
    capped = load_factor(4096, 16, 2, 16, 1.0)
    assert capped <= 1.0 + 1e-9 < dropless


def test_imbalance_makes_the_moe_step_slower_than_perfect_balance(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner
    from planner.api import evaluate

    wl = planner.TrainingWorkload(global_batch_size=64, seq_len=2048)
    plan = "tp=1,ep=8,mbs=1,zero=1,recompute=full"
    real = evaluate("mixtral-8x7b", "dgx-h100", wl, plan, devices=64)
    monkeypatch.setattr("cost_models.compute.load_factor", lambda *a: 1.0)
    balanced = evaluate("mixtral-8x7b", "dgx-h100", wl, plan, devices=64)
    assert real.breakdown["compute"] > balanced.breakdown["compute"]
    assert real.model_tflops_per_gpu < balanced.model_tflops_per_gpu
