"""Sliding-window attention (ModelSpec.sliding_window, global_attention_every): the attention
work, the model-FLOP convention and the KV cache of local layers are bounded by the window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.compute import Roofline, Shard, block_compute
from cost_models.efficiency import device_efficiency
from planner import InferenceWorkload, ModelSpec, load_cluster, load_model
from cost_models.inference import estimate_inference
from planner.plan import Plan
from planner.errors import SpecError
from planner.model import DType

BASE = ModelSpec(name="sw", num_layers=12, hidden_size=1024, num_attention_heads=16,
                 num_kv_heads=4, ffn_hidden_size=4096, activation="swiglu", vocab_size=32000)


def test_keys_per_query_by_hand() -> None:
    # 12 layers, every 3rd global: 4 global (s/2 = 2048 keys), 8 local with w = 256:
    # 256 - 256 * 255 / (2 * 4096) = 248.03 keys
    m = BASE.model_copy(update={"sliding_window": 256, "global_attention_every": 3})
    assert m.global_attention_layers == 4
    local = 256 - 256 * 255 / (2 * 4096)
    assert m.causal_keys_per_query(4096) == pytest.approx((4 * 2048 + 8 * local) / 12)
    assert m.attended_context(1000) == pytest.approx((4 * 1000 + 8 * 256) / 12)
    # the FLOP convention counts twice the causal work, as Narayanan's s x s does
    ratio = m.attention_score_flops_per_token(4096) / BASE.attention_score_flops_per_token(4096)
    assert ratio == pytest.approx(m.causal_keys_per_query(4096) / 2048)


def test_no_window_and_a_window_longer_than_the_sequence_change_nothing() -> None:
    wide = BASE.model_copy(update={"sliding_window": 8192})
    for s in (128, 4096, 8192):
        assert wide.causal_keys_per_query(s) == BASE.causal_keys_per_query(s) == s / 2
        assert wide.attention_score_flops_per_token(s) == BASE.attention_score_flops_per_token(s)
        assert wide.attended_context(s) == BASE.attended_context(s) == s


@settings(max_examples=100, deadline=None)
@given(w=st.integers(1, 20000), s=st.integers(1, 20000), k=st.sampled_from([None, 1, 2, 6]))
def test_a_window_never_adds_work(w: int, s: int, k: int | None) -> None:
    m = BASE.model_copy(update={"sliding_window": w, "global_attention_every": k})
    assert 0 < m.causal_keys_per_query(s) <= s / 2 + 1e-9
    assert 0 < m.attended_context(s) <= s
    assert m.attention_score_flops_per_token(s) <= BASE.attention_score_flops_per_token(s) * (1 + 1e-12)


def test_global_attention_every_needs_a_window() -> None:
    with pytest.raises(SpecError, match="needs sliding_window"):
        BASE.model_copy(update={"global_attention_every": 2})


def test_windowed_blocks_attend_faster_and_serve_with_a_smaller_cache() -> None:
    """gpt-oss-120b alternates 128-token windows with dense layers (its preset): the fused
    attention of a block takes less time at 8192 tokens than the same model without windows,
    and serving keeps about half the KV cache at a 32K context."""
    oss = load_model("gpt-oss-120b")
    assert (oss.sliding_window, oss.global_attention_every) == (128, 2)
    dense = oss.model_copy(update={"sliding_window": None, "global_attention_every": None})
    cluster = load_cluster("dgx-h100")
    roof = Roofline(cluster.device, device_efficiency(cluster.device)[0], DType.BF16)
    sh = Shard(mbs=1, seq_len=8192)
    windowed, full = (block_compute(m, roof, sh, moe=True) for m in (oss, dense))
    assert windowed.attention_fwd_s < 0.6 * full.attention_fwd_s
    assert windowed.fwd_s < full.fwd_s and windowed.fwd_flops < full.fwd_flops
    wl = InferenceWorkload(batch_size=8, prompt_len=32768, output_len=1024)
    a = estimate_inference(oss, cluster, wl, Plan(tp=8))
    b = estimate_inference(dense, cluster, wl, Plan(tp=8))
    assert a.kv_cache_gib == pytest.approx(b.kv_cache_gib * oss.attended_context(32768 + 1024)
                                           / (32768 + 1024), rel=0.02)
    assert a.tpot_s < b.tpot_s


def test_hf_mistral_config_carries_its_window() -> None:
    """Mistral 7B v0.1's config.json: sliding_window 4096 on every layer."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "data" / "hf" / "mistral-7b" / "config.json"
    m = load_model(str(path))
    assert (m.sliding_window, m.global_attention_every, m.global_attention_layers) == (4096, None, 0)
    assert m.attention_score_flops_per_token(4096) == pytest.approx(
        m.model_copy(update={"sliding_window": None}).attention_score_flops_per_token(4096))
    assert m.attended_context(32768) == 4096


def test_hf_mixtral_config_with_a_window_bounds_every_layer() -> None:
    """Mixtral 8x7B's config.json has sliding_window null (full attention); a config that sets
    it windows every layer, as Mistral's does."""
    import json
    from pathlib import Path

    from planner.hf import model_from_hf_config

    path = Path(__file__).resolve().parent.parent / "data" / "hf" / "mixtral-8x7b" / "config.json"
    config = json.loads(path.read_text())
    assert load_model(str(path)).sliding_window is None
    m = model_from_hf_config({**config, "sliding_window": 4096}, name="m", where="test")
    assert (m.sliding_window, m.global_attention_every, m.global_attention_layers) == (4096, None, 0)
