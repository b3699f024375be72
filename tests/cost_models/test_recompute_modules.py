"""recompute=selective with recompute_modules (Megatron-Core --recompute-modules): each module's
forward is repeated in the backward and its activations are not kept
(compute.module_recompute, memory.block_activation_bytes)."""

from __future__ import annotations

import pytest

from cost_models.compute import Roofline, Shard
from cost_models.efficiency import device_efficiency
from planner import ModelSpec, MoESpec, TrainingWorkload, load_cluster, load_model, parse_plan
from planner.api import evaluate, search
from planner.model import DType

WL = TrainingWorkload(global_batch_size=32, seq_len=2048)
DSV3 = load_model("deepseek-v3").model_copy(update={"num_layers": 4, "mtp_layers": 0,
                                                    "moe": {**load_model("deepseek-v3").moe.model_dump(),
                                                            "first_k_dense": 1}})
DENSE = ModelSpec(name="dense", num_layers=4, hidden_size=2048, num_attention_heads=16,
                  ffn_hidden_size=8192, activation="swiglu", vocab_size=32000, dropout=False)
MOE = DENSE.model_copy(update={"name": "moe", "moe": MoESpec(num_experts=8, top_k=2,
                                                             expert_ffn_hidden_size=2048)})


def _est(model: ModelSpec, plan: str, devices: int = 8):
    return evaluate(model, "dgx-h100", WL, plan, devices=devices)


def test_core_attn_is_the_default_selective_recomputation() -> None:
    for attn in ("flash", "unfused"):
        a = _est(DENSE, f"tp=2,dp=4,recompute=selective,attn={attn}")
        b = _est(DENSE, f"tp=2,dp=4,recompute=selective,recompute_modules=core_attn,attn={attn}")
        assert a.step_time_s == b.step_time_s and a.memory_gib == b.memory_gib
        assert a.hardware_tflops_per_gpu == pytest.approx(b.hardware_tflops_per_gpu, rel=1e-12)


def test_mla_up_proj_by_hand() -> None:
    """Per MLA block: the recompute is the q and kv up-projection GEMMs' forward, the memory
    saved is Q, K and V (2 bytes each) of every token, and the hardware FLOPs gain those
    GEMMs' 2 x weights per token."""
    plan = "tp=1,dp=8,ep=8,mbs=1"
    base = _est(DSV3, plan + ",recompute=selective,recompute_modules=core_attn")
    up = _est(DSV3, plan + ",recompute=selective,recompute_modules=mla_up_proj")
    m, a, L, s = DSV3.mla, DSV3.num_attention_heads, DSV3.num_layers, WL.seq_len
    dev = load_cluster("dgx-h100").device
    eff, _ = device_efficiency(dev)
    roof = Roofline(dev, eff, DType.BF16)
    t_kv, _ = roof.gemm(s, a * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank_dim)
    t_q, _ = roof.gemm(s, a * (m.qk_nope_head_dim + m.qk_rope_head_dim), m.q_lora_rank_dim)
    micro = WL.global_batch_size // 8
    assert up.breakdown["recompute"] - base.breakdown["recompute"] == pytest.approx(
        micro * L * (t_kv + t_q), rel=1e-9)
    d_qk, d_v = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
    saved = L * 2 * s * a * (2 * d_qk + d_v)          # per micro-batch in flight (pp=1: one)
    got = (base.memory_gib["activations"] - up.memory_gib["activations"]) * 2**30
    assert got == pytest.approx(saved, rel=1e-9)
    up_w = m.kv_lora_rank_dim * a * (m.qk_nope_head_dim + d_v) + m.q_lora_rank_dim * a * d_qk
    extra = 2 * up_w * L * WL.global_batch_size * s
    gained = (up.hardware_tflops_per_gpu * up.step_time_s
              - up.model_tflops_per_gpu * up.step_time_s) * 1e12 * 8
    assert gained == pytest.approx(extra, rel=1e-9)


def test_layernorm_mlp_and_moe_act_memory() -> None:
    s, b, h = WL.seq_len, 1, DENSE.hidden_size
    none = _est(DENSE, "tp=1,dp=8,recompute=selective")
    ln = _est(DENSE, "tp=1,dp=8,recompute=selective,recompute_modules=layernorm")
    mlp = _est(DENSE, "tp=1,dp=8,recompute=selective,recompute_modules=mlp")
    gib = 2**30
    L = DENSE.num_layers
    assert (none.memory_gib["activations"] - ln.memory_gib["activations"]) * gib == pytest.approx(
        L * 4 * s * b * h, rel=1e-9)
    assert (none.memory_gib["activations"] - mlp.memory_gib["activations"]) * gib == pytest.approx(
        L * 2 * s * b * DENSE.ffn_hidden_size * 3, rel=1e-9)
    assert ln.breakdown["recompute"] > 0 and mlp.breakdown["recompute"] > ln.breakdown["recompute"]
    moe_none = _est(MOE, "tp=1,dp=8,ep=8,recompute=selective")
    act = _est(MOE, "tp=1,dp=8,ep=8,recompute=selective,recompute_modules=moe_act")
    width = MOE.moe.top_k * MOE.moe.expert_ffn_hidden_size
    assert (moe_none.memory_gib["activations"] - act.memory_gib["activations"]) * gib == \
        pytest.approx(L * 2 * s * b * width, rel=1e-9)
    # mlp recomputes only dense MLPs: nothing in an all-MoE model
    assert _est(MOE, "tp=1,dp=8,ep=8,recompute=selective,recompute_modules=mlp").step_time_s \
        == moe_none.step_time_s


def test_plan_strings_and_search() -> None:
    p = parse_plan("recompute=selective,recompute_modules=moe_act+layernorm", devices=8)
    assert p.recompute_modules == ("layernorm", "moe_act")             # canonical order
    assert p.to_string().endswith("recompute_modules=layernorm+moe_act")
    assert parse_plan(p.to_string(), devices=8) == p
    res = search(MOE, "dgx-h100", WL, devices=8, top_k=3,
                 fixed={"ep": 8, "recompute_modules": ("moe_act",)})
    for sp in res.top:
        assert sp.plan["recompute"] == "selective"
        assert sp.plan["plan"].endswith("recompute_modules=moe_act")
