"""Multi-token prediction (DeepSeek-V3 Sec. 2.2): ModelSpec.mtp_layers adds, on the last
pipeline stage, one block of the last layer's type, a 2h -> h projection, an embedding lookup
and another pass through the output head (cost_models/tables.py `_mtp_extras`)."""

from __future__ import annotations

import json

import pytest

from cost_models.compute import block_compute, embedding_compute, head_compute, roof_bytes
from cost_models.tables import build_tables
from cost_models.training import block_comm, make_context
from planner import ModelSpec, Plan, TrainingWorkload, load_model, load_cluster
from planner.api import evaluate, lower_bound_step_s, search
from planner.model import MoESpec, weight_bytes_per_param

WL = TrainingWorkload(global_batch_size=64, seq_len=2048)


def small_moe(mtp: int = 0) -> ModelSpec:
    return ModelSpec(name="mtp-test", num_layers=8, hidden_size=1024, num_attention_heads=16,
                     ffn_hidden_size=4096, activation="swiglu", vocab_size=32000,
                     dropout=False, mtp_layers=mtp,
                     moe=MoESpec(num_experts=8, top_k=2, expert_ffn_hidden_size=1024,
                                 first_k_dense=1))


def test_deepseek_v3_mtp_module_matches_the_checkpoint() -> None:
    """The HF checkpoint's 685B is the 671B model plus the MTP module and the copies of the
    embedding and output head it stores with it (DeepSeek-V3 model card)."""
    m = load_model("deepseek-v3")
    assert m.mtp_layers == 1 and m.mtp_moe
    h = m.hidden_size
    assert m.mtp_module_params == m.moe_layer_params + 2 * h * h + 3 * m.norm_params
    checkpoint = m.params + m.mtp_module_params + 2 * m.vocab_size * h
    assert checkpoint == pytest.approx(685e9, rel=0.003)
    assert m.params == pytest.approx(671e9, rel=0.01)          # params leaves MTP out


def test_mtp_flops_by_hand() -> None:
    m = load_model("deepseek-v3")
    h, a, qr, kvr, nope, rope, v, V, s = 7168, 128, 1536, 512, 128, 64, 128, 129280, 4096
    attn = h * qr + qr * a * (nope + rope) + h * (kvr + rope) + kvr * a * (nope + v) + a * v * h
    moe_mlp = h * 256 + 8 * 3 * h * 2048 + 1 * 3 * h * 2048
    per_token = 2 * (attn + moe_mlp + 2 * h * h + V * h) + 2 * s * a * (nope + rope + v)
    assert m.mtp_forward_flops_per_token(s) == per_token
    assert m.training_forward_flops_per_token(s) == m.forward_flops_per_token(s) + per_token
    assert m.model_copy(update={"mtp_layers": 0}).mtp_forward_flops_per_token(s) == 0.0


def test_model_flops_count_the_mtp_modules() -> None:
    model = small_moe(mtp=1)
    est = evaluate(model, "dgx-h100", WL, "tp=1,pp=2,dp=4,mbs=1", devices=8)
    tokens = WL.global_batch_size * WL.seq_len
    flops = est.model_tflops_per_gpu * 1e12 * est.step_time_s * 8
    assert flops == pytest.approx(3 * model.training_forward_flops_per_token(WL.seq_len) * tokens,
                                  rel=1e-12)
    assert est.stages[-1].mtp_modules == 1 and est.stages[0].mtp_modules == 0


def _tables(model: ModelSpec, plan: str):
    from planner.plan import parse_plan

    cluster = load_cluster("dgx-h100")
    p = parse_plan(plan, devices=8)
    ctx, _ = make_context(model, cluster, WL, p)
    return ctx, build_tables(ctx, WL.global_batch_size // (p.dp * p.mbs))


def test_mtp_adds_one_block_projection_embedding_and_head_to_the_last_stage() -> None:
    plan = "tp=2,pp=2,dp=2,mbs=1,sp=on"
    ctx0, t0 = _tables(small_moe(0), plan)
    ctx1, t1 = _tables(small_moe(1), plan)
    first, last = (0, 3), (4, 7)
    assert t1.time(0, *first) == t0.time(0, *first)               # the first stage: untouched
    model, sh, roof = ctx1.model, ctx1.shard, ctx1.roof
    bc = block_compute(model, roof, sh, moe=True)                 # the last layer is MoE
    tpf, tpb, _, _, epf, epb = block_comm(ctx1, True, bc)
    h = model.hidden_size
    pf, _, pb, _ = roof.gemm_fwd_bwd(sh.tokens, h / 2, 2 * h)
    norms = roof.stream(6 * sh.tokens * h * roof_bytes(sh.dtype) / 2)
    ef, eb = embedding_compute(model, roof, sh)
    hf, hb, _ = head_compute(model, roof, sh)
    from cost_models import comm
    emb_tp = comm.all_reduce_s(ctx1.tp_links, sh.tokens * h * roof_bytes(sh.dtype))
    want = (bc.fwd_s + bc.bwd_s + pf + pb + 3 * norms + ef + eb + hf + hb
            + tpf + tpb + epf + epb + emb_tp)
    assert t1.time(1, *last) - t0.time(1, *last) == pytest.approx(want, rel=1e-12)


def test_mtp_weights_sit_on_the_last_stage_with_a_copy_of_the_embedding() -> None:
    plan = "tp=2,pp=2,dp=2,mbs=1,sp=on"
    _, t0 = _tables(small_moe(0), plan)
    ctx1, t1 = _tables(small_moe(1), plan)
    model = ctx1.model
    assert t1.memory(0, 0, 3)["weights"] == t0.memory(0, 0, 3)["weights"]
    routed = model.moe.num_experts * model.mlp_params(model.moe.expert_ffn_hidden_size)
    dense = (model.mtp_module_params - routed) / 2 + model.embedding_params / 2
    w = weight_bytes_per_param(WL.dtype)
    extra = t1.memory(1, 4, 7)["weights"] - t0.memory(1, 4, 7)["weights"]
    assert extra == pytest.approx(dense * w + routed * w, rel=1e-12)      # ep=1: every expert
    # with pp = 1 the embedding is the model's own: no copy
    _, s0 = _tables(small_moe(0), "tp=2,pp=1,dp=4,mbs=1,sp=on")
    _, s1 = _tables(small_moe(1), "tp=2,pp=1,dp=4,mbs=1,sp=on")
    extra1 = s1.memory(0, 0, 7)["weights"] - s0.memory(0, 0, 7)["weights"]
    assert extra1 == pytest.approx(((model.mtp_module_params - routed) / 2 + routed) * w,
                                   rel=1e-12)


def test_the_lower_bound_counts_mtp_flops() -> None:
    cluster = load_cluster("dgx-h100")
    assert (lower_bound_step_s(small_moe(1), cluster, WL, 8)
            > lower_bound_step_s(small_moe(0), cluster, WL, 8))


def test_search_gives_the_mtp_stage_no_more_blocks() -> None:
    """The partition DP sees the MTP module on the last stage and balances around it."""
    def last_stage_blocks(mtp: int) -> int:
        res = search(small_moe(mtp), "dgx-h100", WL, devices=8, top_k=1,
                     fixed={"pp": 4, "tp": 1})
        s = res.best.estimate.stages[-1]
        return s.last_layer - s.first_layer + 1

    assert last_stage_blocks(1) <= last_stage_blocks(0)


def test_hf_import_reads_the_mtp_depth(tmp_path) -> None:
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "hf" / "deepseek-v3" / "config.json"
    cfg = json.loads(data.read_text())
    for depth in (1, 0, 2):
        path = tmp_path / f"depth{depth}" / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**cfg, "num_nextn_predict_layers": depth}))
        assert load_model(str(path)).mtp_layers == depth
    assert load_model("deepseek-v3").mtp_layers == 1       # the preset agrees with its config
