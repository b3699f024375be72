"""A precision the device has no units for is scored at the fallback rate, and says so."""

from __future__ import annotations

from cost_models.efficiency import precision_warning
from planner import InferenceWorkload, TrainingWorkload, load_cluster, load_device, load_model
from planner.api import evaluate
from planner.model import DType


def test_fallback_dtype_names_the_rate_used() -> None:
    a100, h100, v100 = load_device("a100-sxm4-80gb"), load_device("h100-sxm5-80gb"), load_device("v100-sxm2-32gb")
    assert a100.fallback_dtype(DType.FP8) == DType.BF16
    assert a100.peak_flops(DType.FP8) == a100.peak_flops(DType.BF16)
    assert a100.fallback_dtype(DType.BF16) is None
    assert h100.fallback_dtype(DType.FP8) is None
    assert v100.fallback_dtype(DType.BF16) == DType.FP16


def test_fp8_on_an_a100_warns_and_says_what_to_use() -> None:
    text = precision_warning(load_device("a100-sxm4-80gb"), DType.FP8)
    assert text is not None and "bf16 rate" in text and "use --dtype bf16" in text
    assert precision_warning(load_device("h100-sxm5-80gb"), DType.FP8) is None
    v100 = precision_warning(load_device("v100-sxm2-32gb"), DType.BF16)
    assert v100 is not None and "fp16 rate" in v100 and "--dtype" not in v100


def test_fp8_warning_names_the_vendor_generation_that_has_it() -> None:
    """CDNA 2 (an MI250X GCD) has no fp8 units; Transformer Engine's ROCm build runs FP8 from
    the MI300 series on, so the warning names that, not NVIDIA's Ada and Hopper."""
    amd = precision_warning(load_device("mi250x-gcd"), DType.FP8)
    assert amd is not None and "MI300-series" in amd and "Hopper" not in amd
    nvidia = precision_warning(load_device("a100-sxm4-80gb"), DType.FP8)
    assert nvidia is not None and "Ada, Hopper or later" in nvidia and "MI300" not in nvidia
    assert precision_warning(load_device("mi300x"), DType.FP8) is None


def test_training_and_inference_estimates_carry_the_warning() -> None:
    model = load_model("llama3-8b")
    for cluster, expected in (("dgx-a100", 1), ("dgx-h100", 0)):
        c = load_cluster(cluster)
        train = evaluate(model, c, TrainingWorkload(global_batch_size=64, seq_len=2048,
                                                    dtype=DType.FP8), "tp=1", devices=8)
        assert sum("no fp8 tensor-core rate" in w for w in train.warnings) == expected
    from cost_models.inference import estimate_inference
    from planner.plan import Plan

    serve = estimate_inference(model, load_cluster("dgx-a100"),
                               InferenceWorkload(batch_size=8, prompt_len=512, output_len=64,
                                                 dtype=DType.FP8), Plan(tp=8))
    served = [w for w in serve.warnings if "no fp8 tensor-core rate" in w]
    assert len(served) == 1 and "weight-only FP8" in served[0] and "--dtype bf16" not in served[0]


def test_a_sequence_past_a_learned_position_table_warns() -> None:
    gpt3, llama = load_model("gpt3-175b"), load_model("llama3-8b")
    assert gpt3.position_warning(2048) is None
    text = gpt3.position_warning(4096)
    assert text is not None and "2048 rows" in text and "4096 tokens" in text
    assert llama.position_warning(10 * llama.max_position_embeddings) is None   # RoPE: no table
    est = evaluate(gpt3, load_cluster("dgx-a100"),
                   TrainingWorkload(global_batch_size=64, seq_len=4096), "tp=8,pp=8", devices=64)
    assert any("learned position table" in w for w in est.warnings)
