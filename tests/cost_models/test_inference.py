"""The inference cost model against hand calculations (cost_models/inference.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_models import comm
from cost_models.efficiency import device_efficiency
from cost_models.inference import (
    DEEPEP_NORMAL_SMS,
    EMBEDDING_KERNELS,
    HEAD_KERNELS,
    KERNELS_PER_BLOCK,
    TPOT_KEYS,
    TTFT_KEYS,
    busiest_rank_touched_experts,
    estimate_inference,
    expert_slots,
    redundant_experts,
    touched_experts,
)
from cost_models.memory import GIB
from planner import ClusterSpec, InferenceWorkload, ModelSpec, Plan, load_cluster, load_model
from planner.errors import PlanError, SpecError
from planner.model import DType


def with_bandwidth(cluster: ClusterSpec, factor: float) -> ClusterSpec:
    dev = cluster.device.model_copy(update={
        "memory_bandwidth_bytes_per_s": cluster.device.memory_bandwidth_bytes_per_s * factor})
    return cluster.model_copy(update={"device": dev})


# (1) bandwidth-bound decode -------------------------------------------------------------------
def test_decode_at_batch_one_is_weights_plus_kv_over_bandwidth_plus_launch(
        tiny_model: ModelSpec, tiny_cluster: ClusterSpec) -> None:
    wl = InferenceWorkload(batch_size=1, prompt_len=100, output_len=20)
    est = estimate_inference(tiny_model, tiny_cluster, wl, Plan())
    eff, generic = device_efficiency(tiny_cluster.device)
    assert generic
    weights = (tiny_model.params - tiny_model.embedding_params) * 2     # embedding not streamed
    kv = (100 + 20 / 2) * tiny_model.kv_cache_bytes_per_token()         # mean context, batch 1
    kernels = tiny_model.num_layers * KERNELS_PER_BLOCK + HEAD_KERNELS + EMBEDDING_KERNELS
    expect = (weights + kv) / (1e12 * eff.memory) + kernels * eff.kernel_floor_s
    assert est.decode_bound == "memory"
    assert est.decode_weight_bytes == pytest.approx(weights, rel=1e-12)
    assert est.decode_kv_bytes == pytest.approx(kv, rel=1e-12)
    assert est.tpot_s == pytest.approx(expect, rel=1e-12)
    bd = est.tpot_breakdown
    assert tuple(bd) == TPOT_KEYS
    assert bd["compute"] == bd["tp_comm"] == bd["pp_comm"] == 0.0
    assert sum(bd.values()) == pytest.approx(est.tpot_s, rel=1e-12)
    assert est.e2e_s == pytest.approx(est.ttft_s + 20 * est.tpot_s)
    assert est.tokens_per_s == pytest.approx(1 / est.tpot_s)

    fast = estimate_inference(tiny_model, with_bandwidth(tiny_cluster, 2.0), wl, Plan())
    mem = bd["weights_read"] + bd["kv_read"]
    assert fast.tpot_breakdown["weights_read"] + fast.tpot_breakdown["kv_read"] == pytest.approx(mem / 2)
    assert fast.tpot_breakdown["launch"] == bd["launch"]


def test_large_batch_decode_adds_compute_bound_gemms_to_kv_bound_attention() -> None:
    """Llama 3.1 8B in fp8 on one H200 at batch 1024: the GEMMs' 2 x active FLOPs per token
    outlast their weight reads, the attention kernel's KV reads outlast its score FLOPs, and
    the step takes both (one roofline per kernel), not the larger of the totals."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h200")
    wl = InferenceWorkload(batch_size=1024, prompt_len=128, output_len=2048, dtype=DType.FP8)
    est = estimate_inference(model, cluster, wl, Plan())
    eff, _ = device_efficiency(cluster.device)
    rate = cluster.device.peak_flops(DType.FP8) * eff.matmul_fp8 * eff.sustained_clock
    bw = cluster.device.memory_bandwidth_bytes_per_s * eff.memory
    ctx = 128 + 2048 / 2
    active = model.num_layers * model.dense_layer_params + model.vocab_size * model.hidden_size
    t_gemm = 1024 * 2 * active / rate
    t_attn = 1024 * model.attention_score_flops_per_token(1) * ctx / rate
    t_w, t_kv = est.decode_weight_bytes / bw, est.decode_kv_bytes / bw
    assert t_gemm > t_w and t_kv > t_attn                  # each kernel bound differently
    bd = est.tpot_breakdown
    assert bd["weights_read"] + bd["kv_read"] + bd["compute"] == pytest.approx(t_gemm + t_kv)
    assert bd["weights_read"] + bd["kv_read"] + bd["compute"] > max(t_w + t_kv, t_gemm + t_attn)
    assert est.decode_bound == ("compute" if t_gemm > t_kv else "memory")


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 2048), prompt=st.integers(16, 8192), output=st.integers(2, 4096))
def test_per_kernel_decode_lies_between_the_two_lumped_rooflines(batch: int, prompt: int,
                                                                 output: int) -> None:
    """Per-kernel rooflines (GEMMs, attention) are never faster than one roofline over the
    step's totals, max(bytes / bw, FLOPs / rate), and never slower than bytes / bw + FLOPs /
    rate."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h200")
    wl = InferenceWorkload(batch_size=batch, prompt_len=prompt, output_len=output,
                           dtype=DType.FP8)
    est = estimate_inference(model, cluster, wl, Plan())
    eff, _ = device_efficiency(cluster.device)
    rate = cluster.device.peak_flops(DType.FP8) * eff.matmul_fp8 * eff.sustained_clock
    bw = cluster.device.memory_bandwidth_bytes_per_s * eff.memory
    ctx = model.attended_context(prompt + output / 2)
    active = model.num_layers * model.dense_layer_params + model.vocab_size * model.hidden_size
    math_s = batch * (2 * active + model.attention_score_flops_per_token(1) * ctx) / rate
    mem_s = (est.decode_weight_bytes + est.decode_kv_bytes) / bw
    bd = est.tpot_breakdown
    step = bd["weights_read"] + bd["kv_read"] + bd["compute"]
    assert max(mem_s, math_s) * (1 - 1e-9) <= step <= (mem_s + math_s) * (1 + 1e-9)


# (2) KV cache bytes -------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind, tp_split", [
    ("llama3-70b", "GQA", 8), ("gpt3-175b", "MHA", 8), ("deepseek-v3", "MLA", 1)])
def test_kv_cache_matches_model_spec(name: str, kind: str, tp_split: int) -> None:
    model, cluster = load_model(name), load_cluster("dgx-h200")
    assert model.attention_kind == kind
    wl = InferenceWorkload(batch_size=4, prompt_len=1000, output_len=24)   # 1024: whole blocks
    est = estimate_inference(model, cluster, wl, Plan())
    assert est.kv_cache_gib * GIB == pytest.approx(model.kv_cache_bytes_per_token() * 4 * 1024)
    # tp=8 splits the KV heads (8 KV heads for llama3-70b, 96 for GPT-3); MLA is replicated.
    est8 = estimate_inference(model, cluster, wl, Plan(tp=8))
    assert est8.kv_cache_gib == pytest.approx(est.kv_cache_gib / tp_split)


def test_kv_cache_is_paged_in_blocks_of_16_tokens(tiny_model: ModelSpec,
                                                  tiny_cluster: ClusterSpec) -> None:
    est = estimate_inference(tiny_model, tiny_cluster,
                             InferenceWorkload(batch_size=3, prompt_len=16, output_len=1), Plan())
    assert est.kv_cache_gib * GIB == pytest.approx(tiny_model.kv_cache_bytes_per_token() * 3 * 32)


def test_tp_beyond_kv_heads_replicates_the_cache() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=2, prompt_len=1008, output_len=16)
    est8 = estimate_inference(model, cluster, wl, Plan(tp=8))
    est16 = estimate_inference(model, cluster, wl, Plan(tp=16))
    assert est16.kv_cache_gib == pytest.approx(est8.kv_cache_gib)
    assert any("replicated" in w for w in est16.warnings)


# (3) prefill is compute-bound for a long prompt -----------------------------------------------
def test_long_prefill_is_compute_bound_and_no_faster_than_peak() -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=4, prompt_len=4096, output_len=128)
    est = estimate_inference(model, cluster, wl, Plan())
    assert est.prefill_bound == "compute"
    flops = model.forward_flops_per_token(4096, attention_scores=False) * 4 * 4096
    peak = cluster.device.peak_flops(wl.dtype)
    assert est.ttft_s >= flops / peak
    # the LM head runs on the last position only, so the executed FLOPs are below 2*P*T
    assert est.prefill_flops_per_device < flops + model.attention_score_flops_per_token(4096) * 4 * 4096
    assert sum(est.ttft_breakdown.values()) == pytest.approx(est.ttft_s)


# (4) tensor parallelism ------------------------------------------------------------------------
def test_tp8_divides_weights_by_8_and_adds_all_reduces() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=8, prompt_len=512, output_len=64)
    e1 = estimate_inference(model, cluster, wl, Plan())
    e8 = estimate_inference(model, cluster, wl, Plan(tp=8))
    assert e8.decode_weight_bytes == pytest.approx(e1.decode_weight_bytes / 8)
    assert e8.weights_gib == pytest.approx(e1.weights_gib / 8)
    assert e1.weights_gib * GIB == pytest.approx(model.params * 2)
    assert e1.tpot_breakdown["tp_comm"] == 0.0 and e1.ttft_breakdown["tp_comm"] == 0.0
    assert e8.tpot_breakdown["tp_comm"] > 0.0 and e8.ttft_breakdown["tp_comm"] > 0.0
    assert e8.tpot_s < e1.tpot_s


def test_pipeline_latency_is_the_sum_of_stages_plus_p2p() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=8, prompt_len=512, output_len=64)
    e1 = estimate_inference(model, cluster, wl, Plan(tp=4))
    e2 = estimate_inference(model, cluster, wl, Plan(tp=4, pp=2))
    mem = lambda e: e.tpot_breakdown["weights_read"] + e.tpot_breakdown["kv_read"]  # noqa: E731
    assert mem(e2) == pytest.approx(mem(e1))           # every block still read once per token
    assert e2.tpot_breakdown["pp_comm"] > 0.0 and e1.tpot_breakdown["pp_comm"] == 0.0
    assert e2.weights_gib < e1.weights_gib


# (5) max batch size ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, plan", [("llama3-70b", Plan(tp=8)), ("llama3-70b", Plan(tp=4, pp=2, dp=2)),
                                        ("mixtral-8x7b", Plan(tp=2, ep=2))])
def test_max_batch_size_is_the_edge_of_fitting(name: str, plan: Plan) -> None:
    model, cluster = load_model(name), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=plan.dp, prompt_len=2000, output_len=500)
    b = estimate_inference(model, cluster, wl, plan).max_batch_size
    assert b > 1
    at = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": b * plan.dp}), plan)
    over = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": (b + 1) * plan.dp}), plan)
    assert at.fits and at.max_batch_size == b
    assert not over.fits and any("does not fit" in w for w in over.warnings)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([128, 2000, 20000]), st.sampled_from([None, 512, 8192, 65536]),
       st.sampled_from([Plan(tp=1), Plan(tp=2), Plan(tp=2, pp=2)]))
def test_max_batch_with_chunked_prefill_is_the_edge_of_fitting(prompt: int, chunk: int | None,
                                                                 plan: Plan) -> None:
    """Chunked prefill makes memory concave in the batch; the bisection still returns the
    last batch that fits: b fits, b + 1 does not."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=1, prompt_len=prompt, output_len=500,
                           prefill_chunk_tokens=chunk)
    b = estimate_inference(model, cluster, wl, plan).max_batch_size
    assert b >= 1
    at = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": b}), plan)
    over = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": b + 1}), plan)
    assert at.fits and not over.fits


def test_chunked_prefill_holds_one_chunk_and_changes_no_time() -> None:
    """The workspace holds min(batch x prompt, chunk) tokens' activations, so the batch that
    fits grows; TTFT and TPOT at a given batch are unchanged (same tokens, same FLOPs)."""
    from cost_models.inference import _workspace_bytes

    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    plan = Plan(tp=1)
    dtype = InferenceWorkload(batch_size=1, prompt_len=1, output_len=1).dtype    # bf16
    whole = _workspace_bytes(model, plan, 20000, 16, dtype)
    chunked = _workspace_bytes(model, plan, 20000, 16, dtype, 8192)
    logits = _workspace_bytes(model, plan, 0, 16, dtype)          # no prompt: the logits alone
    assert (chunked - logits) * 16 * 20000 == pytest.approx((whole - logits) * 8192)
    wl = InferenceWorkload(batch_size=16, prompt_len=20000, output_len=100)
    a = estimate_inference(model, cluster, wl, plan)
    b = estimate_inference(model, cluster, wl.model_copy(update={"prefill_chunk_tokens": 8192}),
                           plan)
    assert (a.ttft_s, a.tpot_s) == (b.ttft_s, b.tpot_s)
    assert b.workspace_gib < a.workspace_gib and b.max_batch_size > a.max_batch_size


def test_the_two_throughputs() -> None:
    """tokens_per_s is the decode rate (batch x dp / TPOT); e2e_tokens_per_s counts the
    prefill too (batch x dp x output / (TTFT + output x TPOT)), so it is never higher."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=32, prompt_len=2048, output_len=256)
    est = estimate_inference(model, cluster, wl, Plan(tp=2, dp=2))
    assert est.tokens_per_s == pytest.approx(16 * 2 / est.tpot_s)
    assert est.e2e_tokens_per_s == pytest.approx(16 * 2 * 256 / est.e2e_s)
    assert est.e2e_tokens_per_s < est.tokens_per_s


def test_a_model_too_big_for_memory_has_max_batch_zero() -> None:
    est = estimate_inference(load_model("llama3-405b"), load_cluster("dgx-h100"),
                             InferenceWorkload(batch_size=1, prompt_len=128, output_len=16), Plan())
    assert not est.fits and est.max_batch_size == 0


# (6) MoE decode reads the touched experts -----------------------------------------------------
def test_moe_decode_reads_touched_experts() -> None:
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    assert touched_experts(model, 1) == pytest.approx(2.0)
    wl = InferenceWorkload(batch_size=1, prompt_len=128, output_len=16)
    one = estimate_inference(model, cluster, wl, Plan())
    assert one.decode_weight_bytes == pytest.approx((model.active_params - model.embedding_params) * 2)
    many = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": 256}), Plan())
    assert many.decode_weight_bytes == pytest.approx((model.params - model.embedding_params) * 2)
    # ep = 1 inside tp: every rank reads half of each of the 2 hit experts
    a = estimate_inference(model, cluster, wl, Plan(tp=2))
    assert a.decode_weight_bytes == pytest.approx(one.decode_weight_bytes / 2)
    # ep = 2: each rank holds 4 whole experts; one token hits each expert with q = 1/4, so a
    # rank's hits ~ Binomial(4, 1/4), F = 0.31640625, 0.73828125, 0.94921875, 0.99609375 at
    # 0..3, and the busier of 2 ranks hits E[max] = sum (1 - F^2) = 1.4616089 experts (the
    # exact value without replacement is 1.4286: 2 of 8 land on one rank with p = 12/28)
    b = estimate_inference(model, cluster, wl, Plan(tp=2, ep=2))
    expert_bytes = model.mlp_params(model.moe.expert_ffn_hidden_size) * 2 * model.num_layers
    e_max = sum(1 - f * f for f in (0.31640625, 0.73828125, 0.94921875, 0.99609375))
    assert e_max == pytest.approx(1.4616089, rel=1e-6)
    assert b.decode_weight_bytes - a.decode_weight_bytes == pytest.approx(
        (e_max - 1.0) * expert_bytes)   # 2 * e_max experts over tp=2, minus the 2 / 2 of ep=1
    assert b.tpot_s > a.tpot_s
    many_b = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": 256}),
                                Plan(tp=2, ep=2))
    many_a = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": 256}),
                                Plan(tp=2))
    assert many_b.decode_weight_bytes == pytest.approx(many_a.decode_weight_bytes)  # all hit


# (6b) experts spread over replicas (ep > tp: data-parallel attention, DeepEP all-to-all) -------
def test_wide_ep_decode_and_prefill_by_hand() -> None:
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    m, h, L = model.moe, model.hidden_size, model.num_layers
    wl = InferenceWorkload(batch_size=8, prompt_len=128, output_len=16)
    folded = estimate_inference(model, cluster, wl, Plan(tp=1, dp=8))
    wide = estimate_inference(model, cluster, wl, Plan(tp=1, dp=8, ep=8))
    p_e = model.mlp_params(m.expert_ffn_hidden_size)
    routed = m.num_experts * p_e * L
    common = model.params - model.embedding_params - routed       # streamed every step
    # Folded (ep=1): one token per replica reads its top_k = 2 experts per block.
    assert folded.decode_weight_bytes == pytest.approx((common + 2 * p_e * L) * 2)
    # Wide: each device holds 1 of the 8 experts; the 8 replicas' 8 tokens hit it with
    # q = 1 - (1 - 2/8)^8, and the busiest of the 8 ranks reads 1 - (1 - q)^8 experts.
    q = 1 - (1 - 2 / 8) ** 8
    assert wide.decode_weight_bytes == pytest.approx((common + (1 - (1 - q) ** 8) * p_e * L) * 2)
    assert wide.weights_gib == pytest.approx(
        (common + model.embedding_params + routed / 8) * 2 / GIB)
    # Decode all-to-all, one node: each rank's 1 token goes to 2 experts as a bf16 row, 7/8 of
    # them to other GPUs over NVLink, dispatch and combine, one latency each, every MoE block.
    bw = cluster.intra_node.group_bandwidth(8) * device_efficiency(cluster.device)[0].intra_link
    lat = cluster.intra_node.latency_s
    one = 1 * 2 * h * 2 * 7 / 8 / bw + lat
    assert wide.tpot_breakdown["ep_comm"] == pytest.approx(L * 2 * one)
    assert folded.tpot_breakdown["ep_comm"] == folded.ttft_breakdown["ep_comm"] == 0.0
    # Prefill: each rank dispatches its 128 prompt tokens x 2 rows by NCCL-style all-to-all
    # inside the node ((n-1)/n of the bytes, n-1 latencies), and combines them back.
    a2a = 7 / 8 * (128 * 2 * h * 2) / bw + 7 * lat
    assert wide.ttft_breakdown["ep_comm"] == pytest.approx(L * 2 * a2a)
    for est in (wide, folded):
        assert tuple(est.tpot_breakdown) == TPOT_KEYS and tuple(est.ttft_breakdown) == TTFT_KEYS
        assert sum(est.tpot_breakdown.values()) == pytest.approx(est.tpot_s, rel=1e-12)
        assert sum(est.ttft_breakdown.values()) == pytest.approx(est.ttft_s, rel=1e-12)


def test_wide_ep_reads_its_share_of_experts_when_all_are_hit() -> None:
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=512, prompt_len=64, output_len=8)
    p_e = model.mlp_params(model.moe.expert_ffn_hidden_size)
    a = estimate_inference(model, cluster, wl, Plan(tp=2, dp=4))           # ep 1 in tp
    b = estimate_inference(model, cluster, wl, Plan(tp=2, dp=4, ep=8))     # 1 expert per GPU
    # a: all 8 experts split over tp=2; b: 1 whole expert per device
    assert a.decode_weight_bytes - b.decode_weight_bytes == pytest.approx(
        (8 / 2 - 1) * p_e * model.num_layers * 2)
    # fp8 rows carry one fp32 scale per 128 channels on the way out, bf16 rows back
    f8 = estimate_inference(model, cluster, wl.model_copy(update={"dtype": DType.FP8}),
                            Plan(tp=2, dp=4, ep=8))
    assert 0 < f8.tpot_breakdown["ep_comm"] < b.tpot_breakdown["ep_comm"]


# DeepEP README (deepseek-ai/DeepEP, "Low-latency kernels with pure RDMA"): H800 with one
# 400 Gb/s CX7 NIC per GPU, 128 tokens, hidden 7168, top-8, FP8 dispatch (7168 + 56 x 4
# bytes a row), BF16 combine: (EP, dispatch us, combine us).
DEEPEP_LOW_LATENCY = [(32, 155, 273), (64, 173, 314), (128, 192, 369), (256, 194, 360)]


@pytest.mark.parametrize("ep, dispatch_us, combine_us", DEEPEP_LOW_LATENCY)
def test_low_latency_all_to_all_matches_deepep(ep: int, dispatch_us: float,
                                               combine_us: float) -> None:
    cluster = load_cluster("hgx-h800").job_view(ep)        # the H800 node DeepEP measured on
    links = comm.group_links(cluster, size=ep, stride=1)
    assert links.spans_nodes
    d = comm.moe_low_latency_s(links, cluster, tokens=128, top_k=8, row_bytes=7168 + 56 * 4)
    c = comm.moe_low_latency_s(links, cluster, tokens=128, top_k=8, row_bytes=7168 * 2)
    assert d * 1e6 == pytest.approx(dispatch_us, rel=0.2)
    assert c * 1e6 == pytest.approx(combine_us, rel=0.2)


# plan checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, plan, match", [
    ("llama3-8b", Plan(cp=2), "context parallelism"),
    ("llama3-8b", Plan(tp=2, ep=2), "dense"),
    ("mixtral-8x7b", Plan(tp=2, ep=4), "valid: none"),               # dp=1: no replicas
    ("mixtral-8x7b", Plan(tp=2, dp=2, ep=8), "valid: 4"),             # 8/2 = 4 does not divide 2
    ("mixtral-8x7b", Plan(tp=4, dp=2, ep=6), "tp=4 times a divisor"),
    ("llama3-8b", Plan(dp=4), "idle")])
def test_rejected_plans(name: str, plan: Plan, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        estimate_inference(load_model(name), load_cluster("dgx-h100"),
                           InferenceWorkload(batch_size=2, prompt_len=64, output_len=8), plan)


# (7) property: more memory bandwidth never increases TPOT -----------------------------------
_MODELS = {n: load_model(n) for n in ("llama3-8b", "mixtral-8x7b", "deepseek-v3")}
_CLUSTER = load_cluster("dgx-h100")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_MODELS)), batch=st.integers(1, 512),
       tp=st.sampled_from([1, 2, 8]), prompt=st.integers(1, 8192), out=st.integers(1, 2048),
       factor=st.floats(1.0, 8.0))
def test_more_bandwidth_never_increases_tpot(name: str, batch: int, tp: int, prompt: int,
                                             out: int, factor: float) -> None:
    model = _MODELS[name]
    wl = InferenceWorkload(batch_size=batch, prompt_len=prompt, output_len=out)
    base = estimate_inference(model, _CLUSTER, wl, Plan(tp=tp))
    fast = estimate_inference(model, with_bandwidth(_CLUSTER, factor), wl, Plan(tp=tp))
    assert fast.tpot_s <= base.tpot_s * (1 + 1e-12)
    assert math.isclose(sum(base.tpot_breakdown.values()), base.tpot_s, rel_tol=1e-12)


def with_network(cluster: ClusterSpec, factor: float) -> ClusterSpec:
    link = cluster.inter_node.model_copy(update={
        "bandwidth_bytes_per_s": cluster.inter_node.bandwidth_bytes_per_s * factor})
    return cluster.model_copy(update={"inter_node": link})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["mixtral-8x7b", "deepseek-v3"]), per_replica=st.integers(1, 64),
       tp=st.sampled_from([1, 2, 4, 8]), g=st.sampled_from([2, 4, 8]),
       prompt=st.integers(1, 4096), out=st.integers(1, 1024), factor=st.floats(1.0, 8.0))
def test_experts_over_replicas_properties(name: str, per_replica: int, tp: int, g: int,
                                          prompt: int, out: int, factor: float) -> None:
    """Experts spread over g replicas (ep = tp x g): the breakdowns add up, the all-to-all
    is the only new part, more network bandwidth never slows it, and once the batch hits
    every expert each device reads no more expert weight than with the experts folded into
    tp (E/ep whole experts against E/tp)."""
    model = _MODELS[name]
    e = model.moe.num_experts
    if e % (tp * g):
        return
    dp = 2 * g                                  # two expert groups of g replicas
    devices = tp * dp
    cluster = load_cluster("dgx-h100").job_view(max(8, devices))
    wl = InferenceWorkload(batch_size=per_replica * dp, prompt_len=prompt, output_len=out,
                           dtype=DType.FP8)
    wide = estimate_inference(model, cluster, wl, Plan(tp=tp, dp=dp, ep=tp * g))
    folded = estimate_inference(model, cluster, wl, Plan(tp=tp, dp=dp))
    for est in (wide, folded):
        assert math.isclose(sum(est.tpot_breakdown.values()), est.tpot_s, rel_tol=1e-12)
        assert math.isclose(sum(est.ttft_breakdown.values()), est.ttft_s, rel_tol=1e-12)
    assert wide.tpot_breakdown["ep_comm"] > 0 and folded.tpot_breakdown["ep_comm"] == 0
    assert wide.weights_gib < folded.weights_gib
    fast = estimate_inference(model, with_network(cluster, factor), wl,
                              Plan(tp=tp, dp=dp, ep=tp * g))
    assert fast.tpot_s <= wide.tpot_s * (1 + 1e-12)
    assert fast.ttft_s <= wide.ttft_s * (1 + 1e-12)
    if touched_experts(model, per_replica) > e - 1e-6:       # every expert hit in each replica
        assert wide.decode_weight_bytes <= folded.decode_weight_bytes * (1 + 1e-12)


# (6c) two-batch overlap of the experts' all-to-all (ep_overlap=on) ---------------------------
def test_two_batch_overlap_is_two_half_batches_with_the_all_to_all_hidden() -> None:
    """DeepSeek-V3 Sec. 3.4: two micro-batches, one's all-to-all under the other's work. On
    one NVLink node the all-to-all is far shorter than a block's work, so it hides entirely:
    decode = the two half-batch steps without their ep_comm (each streams the weights again);
    prefill = the two half-batch passes, the compute stretched while DeepEP's normal kernels
    hold DEEPEP_NORMAL_SMS of the SMs for the all-to-all's duration."""
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=64, prompt_len=512, output_len=64)
    half = wl.model_copy(update={"batch_size": 32})
    plan, on = Plan(tp=2, dp=4, ep=8), Plan(tp=2, dp=4, ep=8, ep_overlap=True)
    tbo = estimate_inference(model, cluster, wl, on)
    h = estimate_inference(model, cluster, half, plan)
    assert tbo.plan.endswith("ep_overlap=on")
    # decode
    assert tbo.tpot_breakdown["ep_comm"] == 0.0 < h.tpot_breakdown["ep_comm"]
    assert tbo.tpot_s == pytest.approx(2 * (h.tpot_s - h.tpot_breakdown["ep_comm"]), rel=1e-12)
    assert tbo.decode_weight_bytes == pytest.approx(2 * h.decode_weight_bytes, rel=1e-12)
    # prefill
    f = DEEPEP_NORMAL_SMS / device_efficiency(cluster.device)[0].compute_units
    e_all = 2 * h.ttft_breakdown["ep_comm"]                 # both halves, every MoE block
    assert tbo.ttft_breakdown["ep_comm"] == 0.0
    assert tbo.ttft_breakdown["compute"] == pytest.approx(
        2 * h.ttft_breakdown["compute"] + e_all * f / (1 - f), rel=1e-12)
    for est in (tbo, h):
        assert math.isclose(sum(est.tpot_breakdown.values()), est.tpot_s, rel_tol=1e-12)
        assert math.isclose(sum(est.ttft_breakdown.values()), est.ttft_s, rel_tol=1e-12)


def test_two_batch_overlap_pays_only_where_the_all_to_all_outweighs_a_second_weight_read() -> None:
    model = load_model("deepseek-v3")
    wl = InferenceWorkload(batch_size=4096, prompt_len=2000, output_len=1000, dtype=DType.FP8)
    plan, on = Plan(tp=1, dp=32, ep=32), Plan(tp=1, dp=32, ep=32, ep_overlap=True)
    fast = load_cluster("dgx-h100").job_view(32)
    slow = with_network(fast, 0.25)                  # a quarter of the NIC bandwidth
    assert (estimate_inference(model, slow, wl, on).tpot_s
            < estimate_inference(model, slow, wl, plan).tpot_s)
    small = wl.model_copy(update={"batch_size": 64})  # 2 sequences per replica: weights dominate
    assert (estimate_inference(model, fast, small, on).tpot_s
            > estimate_inference(model, fast, small, plan).tpot_s)


@pytest.mark.parametrize("plan, batch, match", [
    (Plan(tp=2, dp=4, ep=2, ep_overlap=True), 64, "no all-to-all"),
    (Plan(tp=2, dp=4, ep=8, ep_overlap=True), 4, "one sequence per replica")])
def test_two_batch_overlap_rejects(plan: Plan, batch: int, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        estimate_inference(load_model("mixtral-8x7b"), load_cluster("dgx-h100"),
                           InferenceWorkload(batch_size=batch, prompt_len=64, output_len=8), plan)


# (6d) redundant expert slots (ep over replicas not dividing the experts) ---------------------
def test_redundant_slots_hold_ceil_e_over_ep_experts_by_hand() -> None:
    """DeepSeek-V3 (256 routed experts) on 24 H100 with ep=24: ceil(256/24) = 11 slots per
    device, 8 of the 264 redundant copies (EPLB's redundant experts)."""
    model = load_model("deepseek-v3")
    cluster = load_cluster("dgx-h100").job_view(24)
    wl = InferenceWorkload(batch_size=24 * 8, prompt_len=256, output_len=32, dtype=DType.FP8)
    plan = Plan(tp=1, dp=24, ep=24)
    assert expert_slots(model, plan) == 11 and redundant_experts(model, plan) == 8
    est = estimate_inference(model, cluster, wl, plan)
    p_e = model.mlp_params(model.moe.expert_ffn_hidden_size)
    routed = model.num_moe_layers * model.moe.num_experts * p_e
    vocab = model.embedding_params + model.lm_head_params   # on the one stage, kept bf16
    common = model.params - routed - vocab
    assert est.weights_gib == pytest.approx(
        ((common + model.num_moe_layers * 11 * p_e) * 1 + vocab * 2) / GIB)
    assert any("ep=24 does not divide the 256 experts" in w and "11 expert slots" in w
               for w in est.warnings)
    # decode reads the busiest rank's hit slots: 192 tokens x top-8 over the 264 copies
    q = 1 - (1 - 8 / 264) ** 192
    cdf = expect = 0.0
    for x in range(11):
        cdf += math.comb(11, x) * q ** x * (1 - q) ** (11 - x)
        expect += 1 - min(1.0, cdf) ** 24
    assert busiest_rank_touched_experts(model, 192, 24, 11) == pytest.approx(expect * 24)
    # the rest of the read (attention, shared experts, head) is the plan's common weights,
    # the same as with ep=8 (8 divides 256: 32 whole experts per rank, no redundancy)
    exact_plan = Plan(tp=1, dp=24, ep=8)
    exact = estimate_inference(model, cluster, wl, exact_plan)
    assert redundant_experts(model, exact_plan) == 0
    assert not any("does not divide" in w for w in exact.warnings)
    n = model.num_moe_layers
    assert (est.decode_weight_bytes - n * expect * p_e) == pytest.approx(
        exact.decode_weight_bytes - n * busiest_rank_touched_experts(model, 8 * 8, 8) / 8 * p_e,
        rel=1e-12)


_MOE = {n: load_model(n) for n in ("mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b",
                                   "gpt-oss-120b", "seed004-moe-4l")}
_CLUSTERS = {n: load_cluster(n) for n in ("dgx-h100", "dgx-a100", "gb200-nvl72", "tpu-v5p-pod")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_MOE)), cluster=st.sampled_from(sorted(_CLUSTERS)),
       tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2]),
       g=st.sampled_from([1, 2, 3, 4, 6, 8, 16]), k=st.sampled_from([1, 2]),
       folded=st.booleans(), overlap=st.booleans(), per=st.sampled_from([1, 2, 3, 8, 64]),
       prompt=st.sampled_from([1, 7, 128, 2048]), out=st.sampled_from([1, 16, 512]),
       fp8=st.booleans())
def test_any_moe_serving_plan_is_scored_or_refused_and_its_parts_add_up(
        name: str, cluster: str, tp: int, pp: int, g: int, k: int, folded: bool,
        overlap: bool, per: int, prompt: int, out: int, fp8: bool) -> None:
    """Folded, over-replica (with or without redundant slots) and overlapped plans on GPU and
    TPU clusters: either a one-line PlanError/SpecError or an estimate whose TTFT and TPOT
    parts are non-negative and add up (found a job_view hang once)."""
    model, dp = _MOE[name], g * k
    ep = tp * g if g > 1 and not folded else (tp if folded else 1)
    plan_kw = dict(tp=tp, pp=pp, dp=dp, ep=ep, ep_overlap=overlap and ep > tp)
    wl = InferenceWorkload(batch_size=dp * per, prompt_len=prompt, output_len=out,
                           dtype=DType.FP8 if fp8 else DType.BF16)
    try:
        c = _CLUSTERS[cluster].job_view(tp * pp * dp)
        est = estimate_inference(model, c, wl, Plan(**plan_kw))
    except (PlanError, SpecError) as e:
        assert "\n" not in str(e) and str(e)
        return
    for parts, total in ((est.tpot_breakdown, est.tpot_s), (est.ttft_breakdown, est.ttft_s)):
        assert all(v >= 0 for v in parts.values()) and total > 0
        assert math.isclose(sum(parts.values()), total, rel_tol=1e-9)
    assert est.peak_memory_gib > 0 and est.max_batch_size >= 0
