"""NVFP4 (`--dtype fp4`) training and serving: the GEMM rate on Blackwell from the measured
NVFP4/MXFP8 kernel ratio, the fallback and warning elsewhere, the bytes of NVFP4 copies and
casts, and the FP8 KV cache of NVFP4 checkpoints (the exports: tests/exports/
test_megatron_precision.py)."""

from __future__ import annotations

import json

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models.compute import FP8_CAST_BYTES_PER_ELEMENT, cast_bytes_per_element
from cost_models.efficiency import (FP4_OVER_FP8, TRAINING_SHAPE_BF16, TRAINING_SHAPE_FP8,
                                    device_efficiency, matmul_rate, precision_warning)
from cost_models.memory import block_activation_bytes, saved_input_bytes
from planner import TrainingWorkload, load_cluster, load_device, load_model
from planner.api import evaluate
from planner.model import DType, kv_cache_dtype, weight_bytes_per_param
from planner.plan import Plan

BLACKWELL = ("b200", "gb200", "b300", "gb300")


def test_tutorial_rates_by_hand() -> None:
    """Transformer Engine's GEMM profiling tutorial on B300 (source note in efficiency.py):
    one layer's 12 GEMMs are 3 x 2 x 15872 x 4096 x 49152 = 1.917e13 FLOPs; bf16 13.102 and
    12.835 ms, MXFP8 7.161 and 7.324 ms, NVFP4 3.764 and 3.754 ms."""
    flops = 3 * 2 * 15872 * 4096 * 49152
    rate = {k: (flops / a + flops / b) / 2e-3 for k, (a, b) in
            {"bf16": (13.102, 12.835), "mxfp8": (7.161, 7.324), "nvfp4": (3.764, 3.754)}.items()}
    assert rate["bf16"] == pytest.approx(1.478e15, rel=1e-3)
    assert rate["mxfp8"] == pytest.approx(2.647e15, rel=1e-3)
    # B300 peaks 2.25 / 4.5 PFLOP/s, MAMF 1769 / 2250 and 3353.3 / 4500 (device note)
    assert TRAINING_SHAPE_BF16 == pytest.approx(rate["bf16"] / 2.25e15 / (1769 / 2250))
    assert TRAINING_SHAPE_FP8 == pytest.approx(rate["mxfp8"] / 4.5e15 / (3353.3 / 4500))
    assert FP4_OVER_FP8 == pytest.approx(rate["nvfp4"] / rate["mxfp8"])
    assert (round(TRAINING_SHAPE_BF16, 3), round(TRAINING_SHAPE_FP8, 3),
            round(FP4_OVER_FP8, 2)) == (0.836, 0.790, 1.93)


@pytest.mark.parametrize("name", BLACKWELL)
def test_fp4_on_blackwell_runs_at_the_fp8_rate_times_the_kernel_ratio(name: str) -> None:
    dev = load_device(name)
    eff, _ = device_efficiency(dev)
    rates = {dt: (lambda pf: pf[0] * pf[1])(matmul_rate(dev, eff, dt))
             for dt in (DType.BF16, DType.FP8, DType.FP4)}
    assert rates[DType.FP4] == pytest.approx(rates[DType.FP8] * FP4_OVER_FP8)
    assert rates[DType.BF16] < rates[DType.FP8] < rates[DType.FP4]
    peak, fraction = matmul_rate(dev, eff, DType.FP4)
    assert peak == dev.peak_flops(DType.FP4) and 0 < fraction < 1
    assert precision_warning(dev, DType.FP4) is None


def test_b200_fp4_rate_is_near_pytorch_ao_measurement() -> None:
    """B200: 4.5 PF x 0.763 (MAMF) x 0.790 x 1.93 = 5.2 PFLOP/s; pytorch/ao PR 2427 measured
    NVFP4 _scaled_mm at 5.50 and 5.37 PFLOP/s (6144^3, 8192^3)."""
    dev = load_device("b200")
    peak, fraction = matmul_rate(dev, device_efficiency(dev)[0], DType.FP4)
    assert 5.1e15 < peak * fraction < 5.5e15


def test_fp4_without_fp4_units_falls_back_to_bf16_and_warns() -> None:
    h100 = load_device("h100-sxm5-80gb")
    eff, _ = device_efficiency(h100)
    assert h100.fallback_dtype(DType.FP4) == DType.BF16
    assert matmul_rate(h100, eff, DType.FP4) == matmul_rate(h100, eff, DType.BF16)
    train = precision_warning(h100, DType.FP4)
    assert train is not None and "needs Blackwell" in train and "--dtype fp8" in train
    serve = precision_warning(h100, DType.FP4, training=False)
    assert serve is not None and "weight-only FP4" in serve and "--dtype" not in serve


def test_nvfp4_bytes() -> None:
    """4-bit values plus one E4M3 byte per 16: 0.5625 bytes; the cast reads the bf16 tensor
    twice (amax, then quantise) and writes two NVFP4 copies: 2 + 2 + 2 x 0.5625."""
    assert DType.FP4.bytes == 0.5625 and DType.FP4.quantised and not DType.BF16.quantised
    assert cast_bytes_per_element(DType.FP4) == 5.125
    assert cast_bytes_per_element(DType.FP8) == FP8_CAST_BYTES_PER_ELEMENT
    assert saved_input_bytes(DType.FP4) == 0.5625 and saved_input_bytes(DType.FP8) == 1
    assert weight_bytes_per_param(DType.FP4) == 2 == weight_bytes_per_param(DType.FP8)


def test_fp4_activations_are_at_most_fp8s() -> None:
    model = load_model("llama3-70b")
    for plan in (Plan(tp=8, sp=True), Plan(tp=4), Plan(tp=1)):
        by = {dt: block_activation_bytes(model, plan, seq_len=8192, moe=False,
                                         fused_attention=True, dtype=dt)
              for dt in (DType.BF16, DType.FP8, DType.FP4)}
        assert by[DType.FP4] < by[DType.FP8]
        assert by[DType.FP4] > 0


def test_nvfp4_serving_keeps_an_fp8_kv_cache() -> None:
    model = load_model("llama3-8b")
    assert kv_cache_dtype(DType.FP4) == DType.FP8 and kv_cache_dtype(DType.BF16) == DType.BF16
    # 32 layers x 2 x 8 KV heads x 128 x 1 byte
    assert model.kv_cache_bytes_per_token(DType.FP4) == 32 * 2 * 8 * 128 * 1
    assert model.kv_cache_bytes_per_token(DType.FP4) == model.kv_cache_bytes_per_token(DType.FP8)


def test_fp4_training_is_faster_than_fp8_on_gb200_and_warns_on_h100() -> None:
    model = load_model("llama3-70b")
    gb200 = load_cluster("gb200-nvl72")
    times = {}
    for dt in (DType.BF16, DType.FP8, DType.FP4):
        est = evaluate(model, gb200, TrainingWorkload(global_batch_size=64, seq_len=8192,
                                                      dtype=dt), "tp=4,pp=2", devices=64)
        times[dt] = est.step_time_s
        assert not any("tensor-core rate" in w for w in est.warnings)
    assert times[DType.FP4] < times[DType.FP8] < times[DType.BF16]
    h100 = evaluate(model, load_cluster("dgx-h100"),
                    TrainingWorkload(global_batch_size=64, seq_len=8192, dtype=DType.FP4),
                    "tp=8,pp=2", devices=64)
    assert sum("needs Blackwell" in w for w in h100.warnings) == 1


def test_cli_evaluate_takes_fp4() -> None:
    runner = cli_runner()
    res = runner.invoke(app, ["evaluate", "--model", "llama3-70b", "--cluster", "gb200-nvl72",
                              "--gpus", "64", "--global-batch", "64", "--seq-len", "8192",
                              "--dtype", "fp4", "--plan", "tp=4,pp=2", "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["step_time_s"] > 0
    assert not any("tensor-core" in w for w in out["warnings"])


def test_quantised_serving_keeps_the_lm_head_and_embedding_16_bit() -> None:
    """Decode streams every block weight in the serving dtype and the LM head in bf16 (ModelOpt
    checkpoints exclude lm_head); the embedding is a lookup, not streamed, but held in bf16."""
    from cost_models.inference import estimate_inference, vocab_weight_bytes
    from cost_models.memory import GIB
    from planner import InferenceWorkload

    model, cluster = load_model("llama3-8b"), load_cluster("dgx-b200")
    body = model.params - model.embedding_params - model.lm_head_params
    for dt in (DType.BF16, DType.FP8, DType.FP4):
        wl = InferenceWorkload(batch_size=1, prompt_len=128, output_len=16, dtype=dt)
        est = estimate_inference(model, cluster, wl, Plan())
        assert vocab_weight_bytes(dt) == 2
        assert est.decode_weight_bytes == pytest.approx(body * dt.bytes + model.lm_head_params * 2)
        assert est.weights_gib == pytest.approx(
            (body * dt.bytes + (model.embedding_params + model.lm_head_params) * 2) / GIB)
