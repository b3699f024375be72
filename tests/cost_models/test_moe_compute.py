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


def test_many_local_experts_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MoE plan with MANY_LOCAL_EXPERTS or more routed experts per device, on a device whose
    framework runs each expert as its own GEMM, warns that host time is not in the step time;
    fewer experts per device, a dense model, or a TPU (grouped Megablox kernels) do not; the
    warning changes no number."""
    from cost_models.training import MANY_LOCAL_EXPERTS
    from planner import DType, Plan, TrainingWorkload, evaluate, load_cluster, load_model

    model = load_model("qwen3-30b-a3b")                       # 128 routed experts
    wl = TrainingWorkload(global_batch_size=64, seq_len=4096, dtype=DType.BF16)
    marker = "routed experts per device"

    def estimate(cluster: str, ep: int, m=model):
        return evaluate(m, load_cluster(cluster), wl, Plan(tp=1, pp=1, dp=16, ep=ep),
                        devices=16)

    assert 128 // 8 == MANY_LOCAL_EXPERTS
    warned = estimate("dgx-b200", 8)
    (text,) = [w for w in warned.warnings if marker in w]
    assert text.startswith("16 routed experts per device (ep=8)")
    assert not any(marker in w for w in estimate("dgx-b200", 16).warnings)   # 8 per device
    assert not any(marker in w for w in estimate("tpu-v5p-pod", 8).warnings)
    dense = estimate("dgx-b200", 1, load_model("llama3-8b"))
    assert not any(marker in w for w in dense.warnings)
    # the warning is text only: the same plan's numbers with the threshold out of reach
    monkeypatch.setattr("cost_models.training.MANY_LOCAL_EXPERTS", 10 ** 9)
    quiet = estimate("dgx-b200", 8)
    assert not any(marker in w for w in quiet.warnings)
    assert quiet.step_time_s == warned.step_time_s and quiet.breakdown == warned.breakdown
