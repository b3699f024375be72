"""The model presets: they load, their dimensions reproduce the published parameter counts,
and the derived FLOPs / KV-cache figures match hand arithmetic from the papers.

Every expected number below is computed here from the published dimensions (not read back from
the preset), so a wrong dimension in a preset or a wrong formula in planner/model.py fails.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources

import pytest

from planner.presets import list_presets, load_model

MODEL_PRESETS = list_presets("model")

EXPECTED_PRESETS = {
    # seed 000 and Narayanan et al. 2021 Table 1 (seed 003)
    "megatron-gpt-8.3b", "megatron-bert-3.9b", "mt-nlg-530b", "megatron-1t",
    "narayanan-1.7b", "narayanan-3.6b", "narayanan-7.5b", "narayanan-18b", "narayanan-39b",
    "narayanan-76b", "narayanan-145b", "narayanan-310b", "narayanan-530b", "narayanan-1t",
    "gopher-280b", "palm-540b",
    # seeds 001, 002, 004
    "seed001-dense-4l", "seed002-moe-61l", "seed004-moe-4l",
    # public models
    "gpt3-175b", "bloom-176b", "llama3-8b", "llama3-70b", "llama3-405b", "mixtral-8x7b",
    "deepseek-v3", "qwen3-235b-a22b", "qwen3-30b-a3b", "gpt-oss-120b", "llama2-70b",
    "gemma3-12b",
}


def _preset_text(name: str) -> str:
    return (resources.files("planner") / "presets" / "models" / f"{name}.toml").read_text("utf-8")


# ----- every preset ----------------------------------------------------------------------


def test_expected_presets_exist():
    assert EXPECTED_PRESETS <= set(MODEL_PRESETS), EXPECTED_PRESETS - set(MODEL_PRESETS)


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_preset_loads_with_name_and_source(name):
    model = load_model(name)
    assert model.name == name
    assert model.source.strip()
    assert model.description.strip()
    assert model.params > 0 and 0 < model.active_params <= model.params


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_every_number_has_a_source_comment(name):
    """Each `key = <number>` line of the preset file carries a `# source:` comment."""
    text = _preset_text(name)
    assert tomllib.loads(text)["name"] == name  # the file's own name field equals its stem
    code = re.sub(r'"""(.|\n)*?"""', '""', text)  # drop multi-line strings (notes)
    for line in code.splitlines():
        if re.match(r"^\s*[a-z_]+\s*=\s*[-+0-9.]", line):
            assert "# source:" in line, f"{name}: no source comment on {line!r}"


# ----- published parameter counts --------------------------------------------------------

# name -> (published total, relative tolerance)
PUBLISHED_TOTAL = {
    "gpt3-175b": (175.0e9, 0.01),           # Brown et al. 2020 Table 2.1
    "bloom-176b": (176_247_271_424, 1e-9),  # BLOOM model card, exact
    "llama3-8b": (8_030_261_248, 1e-9),     # HF safetensors total, exact (8.03B)
    "llama3-70b": (70_553_706_496, 1e-9),   # HF safetensors total, exact (70.6B)
    "llama3-405b": (405_853_388_800, 1e-9), # HF safetensors total, exact (405.9B)
    "llama2-70b": (68_976_648_192, 1e-9),   # HF safetensors total, exact
    "mixtral-8x7b": (46.7e9, 0.01),         # Mistral AI: 46.7B
    "deepseek-v3": (671e9, 0.01),           # DeepSeek-V3 report: 671B (without MTP)
    "qwen3-235b-a22b": (235e9, 0.01),       # Qwen3-235B-A22B model card
    "qwen3-30b-a3b": (30.5e9, 0.01),        # Qwen3-30B-A3B model card
    "gpt-oss-120b": (116.83e9, 0.001),      # gpt-oss model card Table 1
    "gopher-280b": (280e9, 0.01),           # Rae et al. 2021 Table 1
    "palm-540b": (540.35e9, 0.001),         # Chowdhery et al. 2022 Table 1
    "mt-nlg-530b": (530e9, 0.01),           # Smith et al. 2022
    "megatron-1t": (1e12, 0.01),            # Narayanan et al. 2021 Table 1 (1008.0B)
    "megatron-gpt-8.3b": (8.3e9, 0.01),     # Shoeybi et al. 2019
    "megatron-bert-3.9b": (3.9e9, 0.02),    # Shoeybi et al. 2019 (BERT heads not in the spec)
}

# name -> (published activated parameters, relative tolerance)
PUBLISHED_ACTIVE = {
    "mixtral-8x7b": (12.9e9, 0.01),
    "deepseek-v3": (37e9, 0.02),       # "37B" is rounded
    "qwen3-235b-a22b": (22e9, 0.02),   # "22B" is rounded
    "qwen3-30b-a3b": (3.3e9, 0.02),    # "3.3B" is rounded
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_params_match_published(name):
    published, rel = PUBLISHED_TOTAL[name]
    assert load_model(name).params == pytest.approx(published, rel=rel)


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_active_params_match_published(name):
    published, rel = PUBLISHED_ACTIVE[name]
    assert load_model(name).active_params == pytest.approx(published, rel=rel)


def test_dense_models_activate_everything():
    for name in MODEL_PRESETS:
        model = load_model(name)
        if model.moe is None:
            assert model.active_params == model.params, name


def test_gpt_oss_active_matches_model_card_convention():
    """The model card's 5.13B active excludes the input embedding (it counts the unembedding)."""
    m = load_model("gpt-oss-120b")
    assert m.active_params - m.vocab_size * m.hidden_size == pytest.approx(5.13e9, rel=0.002)


# Narayanan et al. 2021 Table 1: (heads, hidden, layers, seed-003 label, paper's printed billions)
NARAYANAN = {
    "narayanan-1.7b": (24, 2304, 24, 1.7e9, 1.7),
    "narayanan-3.6b": (32, 3072, 30, 3.6e9, 3.6),
    "narayanan-7.5b": (32, 4096, 36, 7.5e9, 7.5),
    "narayanan-18b": (48, 6144, 40, 18e9, 18.4),
    "narayanan-39b": (64, 8192, 48, 39e9, 39.1),
    "narayanan-76b": (80, 10240, 60, 76e9, 76.1),
    "narayanan-145b": (96, 12288, 80, 145e9, 145.6),
    "narayanan-310b": (128, 16384, 96, 310e9, 310.1),
    "narayanan-530b": (128, 20480, 105, 530e9, 529.6),
    "narayanan-1t": (160, 25600, 128, 1e12, 1008.0),
}


@pytest.mark.parametrize("name", sorted(NARAYANAN))
def test_narayanan_rows(name):
    a, h, l, label, printed = NARAYANAN[name]
    m = load_model(name)
    assert (m.num_attention_heads, m.hidden_size, m.num_layers) == (a, h, l)
    assert m.ffn_hidden_size == 4 * h and m.vocab_size == 51200
    V, s = 51200, 2048
    # Narayanan et al. 2021 Sec. 5.1: P = 12*l*h^2*(1 + 13/(12h) + (V+s)/(12*l*h)), in integers,
    # plus the final LayerNorm (2h) that the formula leaves out.
    formula = 12 * l * h * h + 13 * l * h + (V + s) * h
    assert m.params == formula + 2 * h
    assert m.params == pytest.approx(label, rel=0.03)     # seed 003's labels
    assert round(m.params / 1e9, 1) == printed            # the paper's Table 1 figures


# ----- seed models whose stated numbers disagree with their dimensions ------------------------


def test_seed001_dense_params_are_6_4b_not_30b():
    m = load_model("seed001-dense-4l")
    h, ffn, layers = 16384, 16384, 4
    assert (m.hidden_size, m.ffn_hidden_size, m.num_layers, m.num_attention_heads) == (h, ffn, layers, 32)
    assert m.vocab_size == 0 and m.d_head == 512  # hidden / heads, not the seed's "128"
    blocks = layers * (4 * h * h + 2 * h * ffn)  # attention 4h^2 + MLP 2*h*ffn, no biases
    norms = layers * 2 * (2 * h)                 # two LayerNorms per block; a bare stack has no
    assert m.params == blocks + norms == 6_442_713_088   # final norm or LM head
    assert m.params == pytest.approx(6.44e9, rel=0.001)
    assert not m.params == pytest.approx(30e9, rel=0.5)
    assert "30 billion" in m.notes and "head dimension 128" in m.notes


def test_seed002_expert_bytes_and_params():
    m = load_model("seed002-moe-61l")
    h, ffn = 7168, 18432
    assert m.moe is not None and m.mla is not None
    assert (m.num_layers, m.moe.first_k_dense, m.num_moe_layers) == (61, 3, 58)
    assert (m.moe.num_experts, m.moe.top_k, m.moe.expert_ffn_hidden_size) == (128, 2, ffn)
    assert m.mla.qk_nope_head_dim * m.num_attention_heads == h  # 128 x 56 = 7168
    expert = m.mlp_params(ffn)
    assert expert == 2 * h * ffn                      # GELU: two matrices
    assert h * ffn * 2 == 264_241_152                 # the seed's "264 MB": one matrix in bf16
    assert expert * 2 == 528_482_304                  # a whole expert in bf16
    # total by hand: MLA attention, 3 dense + 58 MoE MLPs, RMSNorms, untied embeddings
    a, qr, kvr, nope, rope, v = 128, 1536, 512, 56, 64, 56
    attn = (h * qr + qr + qr * a * (nope + rope)
            + h * (kvr + rope) + kvr + kvr * a * (nope + v) + a * v * h)
    dense = attn + 2 * h * ffn + 2 * h
    moe = attn + 2 * h + h * 128 + 128 * 2 * h * ffn
    V = 129280
    assert m.params == 3 * dense + 58 * moe + 2 * V * h + h
    assert m.params == pytest.approx(1.97e12, rel=0.001)
    assert "264 MB" in m.notes and "528" in m.notes


def test_seed004_moe_params_and_activation_note():
    m = load_model("seed004-moe-4l")
    h, ffn, E, L, V, s = 4096, 16384, 16, 4, 50265, 2048
    assert m.moe is not None and m.num_moe_layers == L and m.moe.capacity_factor == 1.0
    attn = 4 * h * h + 4 * h                     # with biases
    expert = 2 * h * ffn + ffn + h               # GELU, with biases
    layer = attn + E * expert + h * E + 2 * 2 * h
    assert m.params == L * layer + V * h + s * h + 2 * h
    assert m.active_params == L * (layer - (E - 2) * expert) + V * h + s * h + 2 * h
    assert m.activation == "gelu" and "SwiGLU" in m.notes


# ----- FLOPs per token ------------------------------------------------------------------------


def test_flops_llama3_8b_by_hand():
    m = load_model("llama3-8b")
    l, h, q, kv, ffn, V = 32, 4096, 4096, 1024, 14336, 128256
    matmul = l * (2 * h * q + 2 * h * kv + 3 * h * ffn) + V * h
    assert m.forward_flops_per_token(8192, attention_scores=False) == 2 * matmul
    assert m.forward_flops_per_token(8192) == 2 * matmul + l * 2 * 8192 * 32 * (128 + 128)


def test_flops_mixtral_by_hand():
    m = load_model("mixtral-8x7b")
    l, h, q, kv, ffn, E, k, V = 32, 4096, 4096, 1024, 14336, 8, 2, 32000
    matmul = l * (2 * h * q + 2 * h * kv + h * E + k * 3 * h * ffn) + V * h
    assert m.forward_flops_per_token(4096, attention_scores=False) == 2 * matmul


def test_flops_deepseek_v3_by_hand():
    m = load_model("deepseek-v3")
    h, a, qr, kvr, nope, rope, v, V = 7168, 128, 1536, 512, 128, 64, 128, 129280
    attn = h * qr + qr * a * (nope + rope) + h * (kvr + rope) + kvr * a * (nope + v) + a * v * h
    dense_mlp = 3 * h * 18432
    moe_mlp = h * 256 + 8 * 3 * h * 2048 + 1 * 3 * h * 2048
    matmul = 61 * attn + 3 * dense_mlp + 58 * moe_mlp + V * h
    assert m.forward_flops_per_token(4096, attention_scores=False) == 2 * matmul
    # MLA scores: Q.K^T over nope + rope dims, scores.V over v dims
    assert m.attention_score_flops_per_token(4096) == 61 * 2 * 4096 * a * (nope + rope + v)


def test_flops_narayanan_eq3():
    """Narayanan et al. 2021 Eq. 3, F = 96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h)) per iteration with
    recomputation (4 forward-equivalents for the blocks, 3 for the logits), is a forward count
    of 24*l*h^2*(1 + s/(6h)) + 2*V*h per token."""
    m = load_model("narayanan-145b")
    l, h, V, s = 80, 12288, 51200, 2048
    per_token = 24 * l * h**2 * (1 + s / (6 * h)) + 2 * V * h
    assert m.forward_flops_per_token(s) == pytest.approx(per_token, rel=1e-12)
    assert m.forward_flops_per_token(s, attention_scores=False) == 24 * l * h**2 + 2 * V * h
    B = 2304  # global batch of the 145B row
    assert B * s * (3 * m.forward_flops_per_token(s) + 24 * l * h**2 * (1 + s / (6 * h))) == pytest.approx(
        96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h)), rel=1e-12)


# ----- KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3-70b", 2 * 80 * 8 * 128 * 2),     # GQA: 8 KV heads of 128
        ("gpt3-175b", 2 * 96 * 96 * 128 * 2),     # MHA: 96 heads of 128
        ("palm-540b", 2 * 118 * 1 * 256 * 2),     # MQA: one KV head of 256
        ("deepseek-v3", 61 * (512 + 64) * 2),     # MLA: latent + shared RoPE key
        ("seed002-moe-61l", 61 * (512 + 64) * 2),
    ],
)
def test_kv_cache_bytes_per_token_bf16(name, expected):
    assert load_model(name).kv_cache_bytes_per_token() == expected


def test_gemma3_12b_non_embedding_count_is_the_reports() -> None:
    """Gemma 3 report Table 1: 10,759M non-embedding parameters for 12B. ModelSpec counts two of
    Gemma's four RMSNorms per layer and no q/k norms; with those (48 x 2 x 3840 and
    48 x 2 x 256) the blocks and final norm make 10,759M."""
    m = load_model("gemma3-12b")
    assert m.embedding_params == 262208 * 3840 and m.tied_embeddings
    non_embedding = m.params - m.embedding_params + 48 * 2 * 3840 + 48 * 2 * 256
    assert round(non_embedding / 1e6) == 10_759
    assert (m.sliding_window, m.global_attention_every, m.global_attention_layers) == (1024, 6, 8)
