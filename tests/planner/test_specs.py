"""Spec validation and derived quantities, checked by hand."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner import DType, ModelSpec, Optimizer, SpecError
from planner.model import grad_bytes_per_param, optimizer_bytes_per_param, weight_bytes_per_param

BASE = dict(name="m", num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256,
            vocab_size=100)


def test_tiny_model_params_by_hand(tiny_model: ModelSpec) -> None:
    h, f, v, layers = 64, 256, 1000, 4
    attn = 4 * h * h              # q, k, v, o without biases
    mlp = 2 * h * f               # gelu: two matrices
    norms = 2 * h                 # two RMSNorm scales
    per_layer = attn + mlp + norms
    expected = layers * per_layer + v * h + v * h + h   # embedding + untied head + final norm
    assert tiny_model.params == expected
    assert tiny_model.active_params == expected
    assert tiny_model.attention_kind == "MHA"


def test_gqa_and_kv_cache() -> None:
    m = ModelSpec(**{**BASE, "num_kv_heads": 2})
    assert m.attention_kind == "GQA"
    assert m.kv_cache_bytes_per_token(DType.BF16) == 2 * 2 * 2 * 16 * 2   # layers*K,V*kv*d*bytes
    mqa = ModelSpec(**{**BASE, "num_kv_heads": 1})
    assert mqa.attention_kind == "MQA"


def test_forward_flops_attention_term() -> None:
    m = ModelSpec(**BASE)
    s = 128
    no_attn = m.forward_flops_per_token(s, attention_scores=False)
    assert no_attn == 2 * (2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64)
    assert m.forward_flops_per_token(s) - no_attn == 2 * 4 * s * 64   # layers * 4*s*h


def test_moe_active_params() -> None:
    m = ModelSpec(**{**BASE, "activation": "swiglu",
                     "moe": {"num_experts": 8, "top_k": 2, "expert_ffn_hidden_size": 32,
                             "num_shared_experts": 1, "first_k_dense": 1}})
    expert = 3 * 64 * 32
    assert m.num_moe_layers == 1
    assert m.params - m.active_params == (8 - 2) * expert
    assert m.is_moe_layer(1) and not m.is_moe_layer(0)


def test_optimizer_bytes() -> None:
    assert optimizer_bytes_per_param(Optimizer.ADAM, DType.BF16) == 12
    assert optimizer_bytes_per_param(Optimizer.ADAM, DType.FP32) == 8
    assert weight_bytes_per_param(DType.FP8) == 2
    total = (weight_bytes_per_param(DType.BF16) + grad_bytes_per_param(DType.BF16, DType.BF16)
             + optimizer_bytes_per_param(Optimizer.ADAMW, DType.BF16))
    assert total == 16     # ZeRO paper's 2 + 2 + 12 bytes per parameter (16-bit gradients)
    # Megatron-LM's bf16 default accumulates and all-reduces gradients in fp32
    assert grad_bytes_per_param(DType.BF16) == grad_bytes_per_param(DType.FP8) == 4
    assert grad_bytes_per_param(DType.FP16) == 2 and grad_bytes_per_param(DType.FP32) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 5}, "5 attention heads do not divide hidden size 64; set head_dim"),
        ({"num_kv_heads": 3}, "3 KV heads must divide the 4 attention heads"),
        ({"moe": {"num_experts": 4, "top_k": 5, "expert_ffn_hidden_size": 8}},
         "top_k 5 exceeds the 4 experts"),
        ({"moe": {"num_experts": 4, "top_k": 1, "expert_ffn_hidden_size": 8, "first_k_dense": 9}},
         "first_k_dense 9 exceeds the 2 layers"),
        ({"moe": {"num_experts": 8, "top_k": 2, "expert_ffn_hidden_size": 8, "route_groups": 4}},
         "needs both moe.route_groups and moe.route_group_topk"),
        ({"moe": {"num_experts": 8, "top_k": 2, "expert_ffn_hidden_size": 8, "route_groups": 3,
                  "route_group_topk": 1}}, "route_groups 3 must divide the 8 experts"),
        ({"moe": {"num_experts": 8, "top_k": 3, "expert_ffn_hidden_size": 8, "route_groups": 4,
                  "route_group_topk": 1}}, "top_k 3 fit in 1 groups of 2"),
    ],
)
def test_inconsistent_models_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ModelSpec(**{**BASE, **change})


def test_unknown_field_and_frozen() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModelSpec(**{**BASE, "layers": 3})
    m = ModelSpec(**BASE)
    with pytest.raises(ValidationError):
        m.num_layers = 3  # type: ignore[misc]


def test_head_dim_given_explicitly() -> None:
    m = ModelSpec(**{**BASE, "num_attention_heads": 5, "head_dim": 16})
    assert m.d_head == 16
