"""Hugging Face config.json -> ModelSpec: parameter counts of real checkpoints, and errors.

The fixtures under tests/data/hf/<model>/config.json reproduce the config.json files published
on the Hugging Face Hub (the keys that matter, exact values). "Exact" below is the number of
parameters the architecture's transformers modeling code creates, i.e. what the Hub shows from
the checkpoint's safetensors metadata / what `sum(p.numel() for p in model.parameters())` gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner import ModelSpec, SpecError
from planner.hf import SUPPORTED_MODEL_TYPES, model_from_hf_config
from planner.model import Activation, Norm, Positional
from planner.presets import load_model

HF = Path(__file__).resolve().parents[1] / "data" / "hf"


def hf(model: str) -> ModelSpec:
    return load_model(str(HF / model / "config.json"))


def read(model: str) -> dict[str, Any]:
    return json.loads((HF / model / "config.json").read_text(encoding="utf-8"))


# (fixture, published total params, where the figure comes from, attention kind)
PUBLISHED = [
    # Hub page of openai-community/gpt2 (safetensors: 124,439,808), the "124M" GPT-2 small.
    ("gpt2", 124_439_808, "MHA"),
    # Pythia paper (Biderman et al. 2023) Table 1: 1,011,781,632 total for pythia-1b.
    ("pythia-1b", 1_011_781_632, "MHA"),
    # EleutherAI/gpt-neox-20b model card: 20,554,567,680 parameters.
    ("gpt-neox-20b", 20_554_567_680, "MHA"),
    # facebook/opt-1.3b Hub page (safetensors): 1,315,758,080 ("1.3B").
    ("opt-1.3b", 1_315_758_080, "MHA"),
    # bigscience/bloom-560m model card: 559,214,592 parameters.
    ("bloom-560m", 559_214_592, "MHA"),
    # bigscience/bloom model card: 176,247,271,424 parameters.
    ("bloom", 176_247_271_424, "MHA"),
    # mosaicml/mpt-7b Hub page (safetensors): 6,649,286,656 ("6.7B" on the model card).
    ("mpt-7b", 6_649_286_656, "MHA"),
    # meta-llama/Meta-Llama-3-8B Hub page (safetensors): 8,030,261,248 ("8.03B").
    ("llama3-8b", 8_030_261_248, "GQA"),
    # mistralai/Mistral-7B-v0.1 Hub page (safetensors): 7,241,732,096 ("7.24B").
    ("mistral-7b", 7_241_732_096, "GQA"),
    # mistralai/Mixtral-8x7B-v0.1 Hub page (safetensors): 46,702,792,704 ("46.7B").
    ("mixtral-8x7b", 46_702_792_704, "GQA"),
    # Qwen/Qwen2-7B Hub page (safetensors): 7,615,616,512 ("7.62B").
    ("qwen2-7b", 7_615_616_512, "GQA"),
    # Qwen/Qwen3-8B Hub page (safetensors): 8,190,735,360 (model card: "8.2B").
    ("qwen3-8b", 8_190_735_360, "GQA"),
    # Qwen/Qwen3-235B-A22B model card: "235B in total and 22B activated".
    ("qwen3-235b-a22b", 235_000_000_000, "GQA"),
    # DeepSeek-V3 technical report (arXiv:2412.19437) / model card: 671B total, 37B activated
    # (the 685B on the Hub adds the 14B multi-token-prediction module, not counted here).
    ("deepseek-v3", 671_000_000_000, "MLA"),
    # gpt-oss model card (arXiv:2508.10925) Table 1: 116.83B total for gpt-oss-120b.
    ("gpt-oss-120b", 116_830_000_000, "GQA"),
    # google/gemma-2-9b Hub page (safetensors): 9,241,705,984 ("9.24B").
    ("gemma-2-9b", 9_241_705_984, "GQA"),
    # google/gemma-3-1b-pt Hub page (safetensors): 999,885,952 ("1B").
    ("gemma-3-1b", 999_885_952, "MQA"),
]


@pytest.mark.parametrize(("model", "published", "kind"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_params_match_published(model: str, published: int, kind: str) -> None:
    spec = hf(model)
    assert abs(spec.params - published) / published < 0.01, f"{spec.params:,} vs {published:,}"
    assert spec.attention_kind == kind
    assert spec.name == model
    assert spec.source == f"Hugging Face config.json (model_type {read(model)['model_type']})"


# Where ModelSpec's accounting is exact, the count equals the modeling code's to the parameter.
EXACT = [p[:2] for p in PUBLISHED
         if p[0] not in ("qwen3-235b-a22b", "deepseek-v3", "gpt-oss-120b")]


@pytest.mark.parametrize(("model", "exact"), EXACT, ids=[p[0] for p in EXACT])
def test_params_exact(model: str, exact: int) -> None:
    spec = hf(model)
    # Qwen2's q/k/v-only biases, Qwen3's and Gemma 3's per-head q/k norms and Gemma's extra
    # pre/post-feedforward RMSNorms have no ModelSpec field; the converter leaves them out and
    # says how many in notes (one note each).
    uncounted = {
        "qwen2-7b": [28 * (3584 + 2 * 512)],        # q/k/v biases: 129,024
        "qwen3-8b": [36 * 2 * 128],                 # q_norm + k_norm: 9,216
        "gemma-2-9b": [42 * 2 * 3584],              # 2 more RMSNorms per layer: 301,056
        "gemma-3-1b": [26 * 2 * 1152, 26 * 2 * 256],  # the same, plus q_norm + k_norm
    }.get(model, [])
    assert spec.params + sum(uncounted) == exact
    for n in uncounted:
        assert f"{n:,} params not counted" in spec.notes
    if not uncounted:
        assert spec.notes == ""


# Active parameters per token of the MoE models, against the published figures.
ACTIVE = [
    # Mistral AI, "Mixtral of experts" (blog, Dec 2023) and arXiv:2401.04088: 12.9B active
    # (12,879,925,248 counting embeddings and head).
    ("mixtral-8x7b", 12_900_000_000),
    # Qwen/Qwen3-235B-A22B model card: 22B activated.
    ("qwen3-235b-a22b", 22_000_000_000),
    # DeepSeek-V3 technical report: 37B activated per token.
    ("deepseek-v3", 37_000_000_000),
]


@pytest.mark.parametrize(("model", "published"), ACTIVE, ids=[a[0] for a in ACTIVE])
def test_active_params_match_published(model: str, published: int) -> None:
    spec = hf(model)
    assert spec.moe is not None
    assert abs(spec.active_params - published) / published < 0.02, f"{spec.active_params:,}"


def test_dense_models_activate_everything() -> None:
    for model in ("gpt2", "llama3-8b", "qwen3-8b"):
        spec = hf(model)
        assert spec.moe is None and spec.active_params == spec.params


def test_field_mapping_details() -> None:
    gpt2 = hf("gpt2")
    assert (gpt2.positional, gpt2.max_position_embeddings, gpt2.tied_embeddings) == (
        Positional.LEARNED, 1024, True)
    assert (gpt2.activation, gpt2.ffn_hidden_size, gpt2.linear_bias, gpt2.norm) == (
        Activation.GELU, 3072, True, Norm.LAYERNORM)
    opt = hf("opt-1.3b")
    assert opt.max_position_embeddings == 2048 + 2          # OPT's learned-position offset
    assert opt.activation == Activation.RELU
    bloom = hf("bloom")                                     # n_embed / num_attention_heads
    assert (bloom.hidden_size, bloom.num_attention_heads, bloom.num_layers) == (14336, 112, 70)
    assert bloom.embedding_norm and bloom.positional == Positional.ALIBI
    mpt = hf("mpt-7b")                                      # no_bias: scale-only norms (h each)
    assert (mpt.positional, mpt.norm, mpt.linear_bias) == (Positional.ALIBI, Norm.RMSNORM, False)
    neox = hf("gpt-neox-20b")
    assert not neox.tied_embeddings and neox.activation == Activation.GELU
    llama = hf("llama3-8b")
    assert (llama.activation, llama.kv_heads, llama.d_head) == (Activation.SWIGLU, 8, 128)
    qwen3 = hf("qwen3-235b-a22b")                           # head_dim 128 != 4096 / 64
    assert qwen3.d_head == 128 and qwen3.num_moe_layers == 94
    assert qwen3.moe is not None and qwen3.moe.expert_ffn_hidden_size == 1536
    ds = hf("deepseek-v3")
    assert ds.mla is not None and ds.mla.q_lora_rank_dim == 1536
    assert ds.moe is not None
    assert (ds.moe.first_k_dense, ds.moe.num_shared_experts, ds.num_moe_layers) == (3, 1, 58)
    assert ds.description == "DeepseekV3ForCausalLM"       # no _name_or_path in its config
    # group-limited routing: n_group 8, topk_group 4 (topk_method noaux_tc), as the preset
    assert (ds.moe.route_groups, ds.moe.route_group_topk) == (8, 4)
    preset = load_model("deepseek-v3").moe
    assert preset is not None and (preset.route_groups, preset.route_group_topk) == (8, 4)
    greedy = model_from_hf_config({**read("deepseek-v3"), "topk_method": "greedy"},
                                  name="d", where="test")
    assert greedy.moe is not None and greedy.moe.route_groups is None
    assert hf("opt-1.3b").description == "facebook/opt-1.3b (OPTForCausalLM)"


def _hf_moe_layers(config: dict[str, Any]) -> list[bool]:
    """Qwen3MoeDecoderLayer's rule, verbatim from transformers."""
    return [i not in config.get("mlp_only_layers", [])
            and config["num_experts"] > 0 and (i + 1) % config["decoder_sparse_step"] == 0
            for i in range(config["num_hidden_layers"])]


@pytest.mark.parametrize(("step", "dense_only"), [(1, []), (2, []), (3, []), (1, [0, 1]),
                                                  (2, [0, 1, 2])])
def test_qwen3_moe_layer_pattern(step: int, dense_only: list[int]) -> None:
    config = {**read("qwen3-235b-a22b"), "num_hidden_layers": 12, "decoder_sparse_step": step,
              "mlp_only_layers": dense_only}
    spec = model_from_hf_config(config, name="q", where="test")
    assert [spec.is_moe_layer(i) for i in range(12)] == _hf_moe_layers(config)


def test_deepseek_moe_layer_freq() -> None:
    config = {**read("deepseek-v3"), "num_hidden_layers": 10, "first_k_dense_replace": 3,
              "moe_layer_freq": 2}
    spec = model_from_hf_config(config, name="d", where="test")
    # modeling_deepseek.py: layer_idx >= first_k_dense_replace and layer_idx % freq == 0
    assert [spec.is_moe_layer(i) for i in range(10)] == [i >= 3 and i % 2 == 0 for i in range(10)]


def test_gpt_oss_config_equals_the_preset() -> None:
    """openai/gpt-oss-120b's config.json gives the built-in preset's architecture (windows,
    biases, experts) and parameter count; the sinks and router bias are named in notes."""
    spec, preset = hf("gpt-oss-120b"), load_model("gpt-oss-120b")
    fields = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
              "ffn_hidden_size", "vocab_size", "activation", "tied_embeddings", "linear_bias",
              "norm", "positional", "sliding_window", "global_attention_every", "moe")
    assert {f: getattr(spec, f) for f in fields} == {f: getattr(preset, f) for f in fields}
    assert spec.params == preset.params
    assert "2,304 params not counted" in spec.notes        # 36 layers x 64 sink logits
    assert "4,608 params not counted" in spec.notes        # 36 layers x 128 router biases


@pytest.mark.parametrize(("model", "window", "every"), [
    ("gpt-oss-120b", 128, 2),        # layer_types alternate, sliding first
    ("gemma-2-9b", 4096, 2),         # Gemma2DecoderLayer: is_sliding = not bool(layer_idx % 2)
    ("gemma-3-1b", 512, 6),          # sliding_window_pattern 6: five local, then one global
    ("gemma-3-12b", 1024, 6),        # the multimodal wrapper's text_config
])
def test_sliding_window_patterns(model: str, window: int, every: int) -> None:
    spec = hf(model)
    assert (spec.sliding_window, spec.global_attention_every) == (window, every)
    assert spec.global_attention_layers == spec.num_layers // every


def test_layer_types_decide_the_pattern_and_odd_ones_are_refused(tmp_path: Path) -> None:
    base = read("gemma-3-1b")
    every3 = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(26)]
    spec = model_from_hf_config({**base, "layer_types": every3}, name="g", where="test")
    assert spec.global_attention_every == 3               # layer_types win over the pattern key
    local = model_from_hf_config({**base, "layer_types": ["sliding_attention"] * 26},
                                 name="g", where="test")
    assert (local.sliding_window, local.global_attention_every) == (512, None)
    dense = model_from_hf_config({**base, "layer_types": ["full_attention"] * 26},
                                 name="g", where="test")
    assert dense.sliding_window is None
    assert model_from_hf_config({**base, "sliding_window": None}, name="g",
                                where="test").sliding_window is None
    odd = ["full_attention", "full_attention"] + ["sliding_attention"] * 24
    with pytest.raises(SpecError, match="layer_types.*every k-th layer global"):
        load_model(_write(tmp_path, {**base, "layer_types": odd}))
    with pytest.raises(SpecError, match="layer_types.*must list 26 entries"):
        load_model(_write(tmp_path, {**base, "layer_types": ["chunked_attention"] * 26}, "b"))


def test_gemma3_text_config_takes_the_config_class_defaults() -> None:
    """gemma-3-12b's text_config lists only what differs from Gemma3TextConfig's defaults
    (head_dim 256, vocabulary 262,208, tied embeddings); at MaxText's 262,144-token vocabulary
    the count plus the noted norms is the 11,765,788,416 its tpu-recipes record states."""
    spec = hf("gemma-3-12b")
    assert (spec.d_head, spec.vocab_size, spec.tied_embeddings) == (256, 262208, True)
    assert (spec.num_layers, spec.hidden_size, spec.kv_heads) == (48, 3840, 8)
    assert spec.activation == Activation.GEGLU and "vision tower" in spec.notes
    noted = 48 * 2 * 3840 + 48 * 2 * 256
    assert spec.params + noted - (262208 - 262144) * 3840 == 11_765_788_416


def test_supported_model_types_all_load() -> None:
    loaded = {read(p.parent.name)["model_type"] for p in HF.glob("*/config.json")}
    assert set(SUPPORTED_MODEL_TYPES) <= loaded


# ----- errors --------------------------------------------------------------------------------

def _write(tmp_path: Path, config: dict[str, Any], name: str = "bad") -> str:
    path = tmp_path / name / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def test_unknown_model_type(tmp_path: Path) -> None:
    path = _write(tmp_path, {"model_type": "foo", "hidden_size": 8})
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value) == (
        f"file '{path}': model_type 'foo' is not supported; supported: gpt2, gpt_neox, opt, "
        "bloom, mpt, llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, deepseek_v3, gpt_oss, "
        "gemma2, gemma3_text, gemma3 (or write a meshplan model file instead)"
    )


def test_model_type_not_a_string() -> None:
    with pytest.raises(SpecError, match=r"^here: model_type \['llama'\] is not supported; "):
        model_from_hf_config({"model_type": ["llama"]}, name="x", where="here")


def test_missing_key(tmp_path: Path) -> None:
    config = read("llama3-8b")
    del config["num_hidden_layers"]
    path = _write(tmp_path, config)
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value).startswith(
        f"file '{path}': Hugging Face config is missing 'num_hidden_layers' "
        "(needed for model_type 'llama')"
    )


def test_missing_nested_moe_key(tmp_path: Path) -> None:
    config = read("mixtral-8x7b")
    del config["num_local_experts"]
    with pytest.raises(SpecError, match="missing 'num_local_experts' .*model_type 'mixtral'"):
        load_model(_write(tmp_path, config))


def test_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path, {**read("mistral-7b"), "hidden_size": "4096"})
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value) == (
        f"file '{path}': Hugging Face config key 'hidden_size' must be an integer, "
        "got '4096' (str); fix it in config.json"
    )


def test_wrong_type_bool_and_nested(tmp_path: Path) -> None:
    bad_tie = _write(tmp_path, {**read("gpt2"), "tie_word_embeddings": "yes"}, "a")
    with pytest.raises(SpecError, match="'tie_word_embeddings' must be true or false, got 'yes'"):
        load_model(bad_tie)
    config = read("mpt-7b")
    config["attn_config"]["alibi"] = 1
    with pytest.raises(SpecError, match="'attn_config.alibi' must be true or false, got 1"):
        load_model(_write(tmp_path, config, "b"))


def test_inconsistent_heads_surface_with_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {**read("llama3-8b"), "num_key_value_heads": 5}, "kv")
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value).startswith(f"file '{path}': model 'kv': 5 KV heads must divide the 32")


def test_pydantic_errors_name_the_hf_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {**read("qwen3-8b"), "num_hidden_layers": 0})
    with pytest.raises(SpecError) as err:
        load_model(path)
    assert str(err.value).startswith(
        f"file '{path}': Hugging Face config key 'num_hidden_layers' (ModelSpec field "
        "'num_layers'): Input should be greater than 0 (got 0)"
    )
    top_k = _write(tmp_path, {**read("mixtral-8x7b"), "num_experts_per_tok": 9}, "topk")
    with pytest.raises(SpecError, match=r"top_k 9 exceeds the 8 experts"):
        load_model(top_k)


def test_opt_350m_projection_rejected() -> None:
    with pytest.raises(SpecError) as err:
        hf("opt-350m")
    message = str(err.value)
    assert message.startswith(f"file '{HF / 'opt-350m' / 'config.json'}': ")
    assert "'word_embed_proj_dim' is 512, not hidden_size 1024" in message
    assert "meshplan model file" in message


def test_unsupported_activation(tmp_path: Path) -> None:
    path = _write(tmp_path, {**read("llama3-8b"), "hidden_act": "tanh"})
    with pytest.raises(SpecError, match="'hidden_act' is 'tanh', an activation meshplan does not "
                                        "model for model_type 'llama'; use one of: silu"):
        load_model(path)


def test_unrepresentable_moe_pattern(tmp_path: Path) -> None:
    path = _write(tmp_path, {**read("qwen3-235b-a22b"), "mlp_only_layers": [5, 40]})
    with pytest.raises(SpecError, match=r"'mlp_only_layers' gives MoE layers \[0, 1, 2, 3, 4, 6"):
        load_model(path)


@pytest.mark.parametrize(("model", "dropout"), [
    ("llama3-8b", False),       # attention_dropout 0.0
    ("mixtral-8x7b", False),
    ("deepseek-v3", False),
    ("mpt-7b", False),          # resid_pdrop, emb_pdrop and attn_config.attn_pdrop all 0
    ("bloom", False),           # hidden_dropout and attention_dropout 0.0
    ("gpt2", True),             # *_pdrop 0.1
    ("opt-1.3b", True),         # dropout 0.1 (attention/activation dropout 0)
    ("gpt-neox-20b", True),     # names no dropout key: ModelSpec's default
])
def test_dropout_read_from_config(model: str, dropout: bool) -> None:
    assert hf(model).dropout is dropout


def test_dropout_presets_agree_with_their_configs() -> None:
    for name in ("llama3-8b", "mixtral-8x7b", "deepseek-v3", "qwen3-235b-a22b"):
        assert load_model(name).dropout is hf(name).dropout is False
