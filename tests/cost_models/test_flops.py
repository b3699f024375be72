"""Model and hardware FLOPs against the published closed forms.

Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 6 / Appendix A: model FLOPs per step of a GPT
with MHA, an MLP of 4h and vocabulary V are 72*B*s*l*h^2*(1 + s/(6h) + V/(12*l*h)).
Narayanan et al. 2021 (SC'21) Eq. 3: with full activation recomputation the hardware executes
96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h)): one extra forward of every block, while the LM head
(the 6*B*s*V*h term, 2 forward + 4 backward FLOPs per weight and token) is not recomputed.
"""

from __future__ import annotations

import pytest

from planner import Plan, Recompute, TrainingWorkload, load_model
from planner.api import evaluate

GPT_PRESETS = ["narayanan-1.7b", "narayanan-145b", "gpt3-175b"]


def korthikanti_model_flops(B: int, s: int, l: int, h: int, V: int) -> float:
    return 72 * B * s * l * h**2 * (1 + s / (6 * h) + V / (12 * l * h))


def narayanan_eq3(B: int, s: int, l: int, h: int, V: int) -> float:
    return 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))


@pytest.mark.parametrize("name", GPT_PRESETS)
def test_presets_have_the_shape_the_closed_forms_assume(name: str) -> None:
    m = load_model(name)
    assert m.ffn_hidden_size == 4 * m.hidden_size
    assert m.attention_kind == "MHA" and m.moe is None and not m.activation.gated
    assert m.d_head * m.num_attention_heads == m.hidden_size
    # 12h^2 per block (QKV 3h^2, output h^2, MLP 8h^2) and the LM head V*h, tied or not.
    h = m.hidden_size
    assert m.matmul_active_params == 12 * m.num_layers * h**2 + m.vocab_size * h


@pytest.mark.parametrize("name", GPT_PRESETS)
@pytest.mark.parametrize(("B", "s"), [(1, 2048), (512, 2048), (1536, 2048), (8, 4096), (3, 777)])
def test_model_flops_match_korthikanti(name: str, B: int, s: int) -> None:
    m = load_model(name)
    ours = 3 * m.forward_flops_per_token(s) * B * s
    assert ours == pytest.approx(
        korthikanti_model_flops(B, s, m.num_layers, m.hidden_size, m.vocab_size), rel=1e-12)


@pytest.mark.parametrize("name", GPT_PRESETS)
@pytest.mark.parametrize("s", [1024, 2048, 8192])
def test_attention_score_term_is_the_s_over_6h_term(name: str, s: int) -> None:
    m = load_model(name)
    l, h = m.num_layers, m.hidden_size
    with_scores = m.forward_flops_per_token(s)
    without = m.forward_flops_per_token(s, attention_scores=False)
    assert with_scores - without == pytest.approx(4 * l * s * h, rel=1e-12)
    assert 3 * (with_scores - without) == pytest.approx(72 * l * h**2 * s / (6 * h), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "gpus", "gb", "plan"),
    [
        ("narayanan-145b", 1536, 1536, Plan(tp=8, pp=8, dp=24, recompute=Recompute.FULL)),
        ("gpt3-175b", 1024, 1536, Plan(tp=8, pp=16, dp=8, recompute=Recompute.FULL, vpp=2)),
        ("narayanan-1.7b", 32, 512, Plan(tp=1, pp=1, dp=32, recompute=Recompute.FULL)),
    ],
)
def test_full_recompute_hardware_flops_match_narayanan_eq3(name: str, gpus: int, gb: int,
                                                           plan: Plan) -> None:
    m = load_model(name)
    s = 2048
    est = evaluate(m, "dgx-a100", TrainingWorkload(global_batch_size=gb, seq_len=s), plan,
                   devices=gpus)
    hardware = est.hardware_tflops_per_gpu * est.step_time_s * est.devices * 1e12
    model = est.model_tflops_per_gpu * est.step_time_s * est.devices * 1e12
    l, h, V = m.num_layers, m.hidden_size, m.vocab_size
    assert model == pytest.approx(korthikanti_model_flops(gb, s, l, h, V), rel=1e-9)
    # Eq. 3 = model FLOPs + one more forward of every block (24lh^2 + 4lsh per token); the
    # LM head's 2Vh is not recomputed, which turns V/(12lh) into 6Vh/(96lh^2) = V/(16lh).
    assert hardware == pytest.approx(narayanan_eq3(gb, s, l, h, V), rel=1e-9)
    assert hardware - model == pytest.approx(gb * s * (24 * l * h**2 + 4 * l * s * h), rel=1e-9)
    assert est.hfu / est.mfu == pytest.approx(hardware / model, rel=1e-12)


def test_no_recompute_hardware_equals_model_flops() -> None:
    est = evaluate("narayanan-145b", "dgx-a100",
                   TrainingWorkload(global_batch_size=1536, seq_len=2048),
                   Plan(tp=8, pp=8, dp=24, sp=True), devices=1536)
    assert est.hardware_tflops_per_gpu == pytest.approx(est.model_tflops_per_gpu, rel=1e-12)
    assert est.hfu == pytest.approx(est.mfu, rel=1e-12)


def test_selective_recompute_with_unfused_attention_repeats_the_score_term() -> None:
    """Korthikanti Sec. 5: selective recomputation redoes Q.K^T, softmax, dropout and
    scores.V, i.e. the 4lsh attention-score FLOPs per token (forward)."""
    m = load_model("narayanan-145b")
    gb, s = 1536, 2048
    est = evaluate(m, "dgx-a100", TrainingWorkload(global_batch_size=gb, seq_len=s),
                   Plan(tp=8, pp=8, dp=24, sp=True, recompute=Recompute.SELECTIVE, attn="unfused"),
                   devices=1536)
    n_t = est.step_time_s * est.devices * 1e12
    extra = (est.hardware_tflops_per_gpu - est.model_tflops_per_gpu) * n_t
    assert extra == pytest.approx(gb * s * 4 * m.num_layers * s * m.hidden_size, rel=1e-9)
