"""Hugging Face `config.json` -> `ModelSpec`, for the architectures meshplan knows.

Decides: which keys of each `model_type`'s config (the names its `transformers` configuration
class reads, defaults included) give which `ModelSpec` field, so that `ModelSpec.params` equals
the number of parameters the architecture's modeling code creates. Does not decide anything
about parallelism, and never imports `transformers` or touches the network: the input is the
parsed dict of a local file.

Where the modeling code creates weights that `ModelSpec` cannot express (Qwen2's q/k/v-only
biases, Qwen3's per-head q/k norms, DeepSeek-V3's router score-correction bias, OPT without a
final norm) the converter picks the closest `ModelSpec` and writes the exact difference into the
spec's `notes`; each such case is below next to its architecture. Every failure is a
`SpecError` of one line that names the file, the key and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pydantic import ValidationError

from planner.errors import SpecError
from planner.model import Activation, ModelSpec, Norm, Positional

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "gpt2", "gpt_neox", "opt", "bloom", "mpt", "llama", "mistral", "mixtral", "qwen2", "qwen3",
    "qwen3_moe", "deepseek_v3", "gpt_oss", "gemma2", "gemma3_text", "gemma3",
)

# transformers.activations.ACT2FN names of the GELU family (all the same parameter count).
_GELU_NAMES = frozenset({
    "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate", "gelu_python",
    "gelu_10", "quick_gelu",
})
_SILU_NAMES = frozenset({"silu", "swish", "swiglu"})

_MISSING: Any = object()


class _Config:
    """Typed reads of one Hugging Face config dict; every failure a one-line `SpecError`.

    A key may have aliases (the config class's `attribute_map`, e.g. GPT-2's `n_embd` is also
    `hidden_size`): the first present, non-null one wins and the first listed names the key in
    messages. A null value means "use the default", as the config classes do."""

    def __init__(self, data: dict[str, Any], where: str, model_type: str, prefix: str = "") -> None:
        self.data = data
        self.where = where
        self.model_type = model_type
        self.prefix = prefix

    def _find(self, keys: Sequence[str]) -> tuple[str, Any]:
        for key in keys:
            if self.data.get(key) is not None:
                return key, self.data[key]
        return keys[0], _MISSING

    def _missing(self, key: str) -> SpecError:
        return SpecError(
            f"{self.where}: Hugging Face config is missing '{self.prefix}{key}' "
            f"(needed for model_type '{self.model_type}'); add it to config.json"
        )

    def _wrong(self, key: str, value: Any, want: str) -> SpecError:
        return SpecError(
            f"{self.where}: Hugging Face config key '{self.prefix}{key}' must be {want}, "
            f"got {value!r} ({type(value).__name__}); fix it in config.json"
        )

    def has(self, *keys: str) -> bool:
        return self._find(keys)[1] is not _MISSING

    def integer(self, *keys: str, default: Any = _MISSING) -> int:
        key, value = self._find(keys)
        if value is _MISSING:
            if default is _MISSING:
                raise self._missing(key)
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, value, "an integer")
        return value

    def opt_integer(self, *keys: str) -> int | None:
        return self.integer(*keys, default=None)

    def number(self, *keys: str, default: Any = _MISSING) -> float:
        key, value = self._find(keys)
        if value is _MISSING:
            if default is _MISSING:
                raise self._missing(key)
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, value, "a number")
        return value

    def flag(self, key: str, default: bool) -> bool:
        _, value = self._find((key,))
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, value, "true or false")
        return value

    def text(self, key: str, default: Any = _MISSING) -> str:
        _, value = self._find((key,))
        if value is _MISSING:
            if default is _MISSING:
                raise self._missing(key)
            return default
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        return value

    def int_list(self, key: str) -> list[int]:
        _, value = self._find((key,))
        if value is _MISSING:
            return []
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self._wrong(key, value, "a list of layer indices")
        return value

    def text_list(self, key: str) -> list[str]:
        """A list of strings (`layer_types`); absent = empty."""
        _, value = self._find((key,))
        if value is _MISSING:
            return []
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise self._wrong(key, value, "a list of strings")
        return value

    def sub(self, key: str) -> _Config:
        """A nested table (MPT's `attn_config`, `ffn_config`); absent = all defaults."""
        _, value = self._find((key,))
        if value is _MISSING:
            value = {}
        if not isinstance(value, dict):
            raise self._wrong(key, value, "an object")
        return _Config(value, self.where, self.model_type, f"{self.prefix}{key}.")

    def fail(self, key: str, problem: str, fix: str) -> SpecError:
        return SpecError(
            f"{self.where}: Hugging Face config key '{self.prefix}{key}' {problem}; {fix}"
        )


class _Build:
    """The `ModelSpec` fields being assembled, which Hugging Face key each came from (to name
    it when `ModelSpec`'s own validation rejects a value), and the accounting notes."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.notes: list[str] = []

    def set(self, field: str, value: Any, key: str | None = None) -> None:
        self.fields[field] = value
        if key is not None:
            self.keys[field] = key

    def uncounted(self, what: str, params: int) -> None:
        """Weights the modeling code has and `ModelSpec` does not count (negative: counts
        but the model lacks)."""
        if params:
            sign = "not counted" if params > 0 else "counted but absent in the model"
            self.notes.append(f"{what}: {abs(params):,} params {sign}")


def model_from_hf_config(config: dict[str, Any], *, name: str, where: str) -> ModelSpec:
    """The `ModelSpec` of a Hugging Face `config.json` (already parsed into `config`).

    `name` becomes the spec's name; `where` labels the file in error messages."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in _CONVERTERS:
        raise SpecError(
            f"{where}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (or write a meshplan model file instead)"
        )
    cfg = _Config(config, where, model_type)
    build = _Build()
    _CONVERTERS[model_type](cfg, build)

    label = config.get("_name_or_path")
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    if isinstance(label, str) and label:
        described = f"{label} ({arch})" if arch else label
    else:
        described = arch or f"Hugging Face {model_type} model"
    dropout = _dropout(config)
    if dropout is not None:
        build.set("dropout", dropout)
    build.set("name", name)
    build.set("description", described)
    build.set("source", f"Hugging Face config.json (model_type {model_type})")
    build.set("notes", "; ".join(build.notes))
    return _validate(build, where)


DROPOUT_KEYS = ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                "emb_pdrop", "dropout", "activation_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "ffn_dropout")
"""Dropout probabilities as transformers' configs name them (Llama/Qwen/Mixtral/DeepSeek:
attention_dropout; GPT-2/MPT: *_pdrop; OPT/BLOOM: dropout, hidden_dropout). MPT keeps
attn_pdrop inside attn_config."""


def _dropout(config: dict[str, Any]) -> bool | None:
    """Whether the config trains with dropout: any named probability above 0; None when the
    config names none (ModelSpec's default then applies)."""
    found = []
    for data in (config, config.get("attn_config")):
        if isinstance(data, dict):
            found += [v for k in DROPOUT_KEYS if isinstance(v := data.get(k), (int, float))
                      and not isinstance(v, bool)]
    return any(v > 0 for v in found) if found else None


def _validate(build: _Build, where: str) -> ModelSpec:
    """ModelSpec(**fields), its errors turned into one line naming the Hugging Face key."""
    try:
        return ModelSpec.model_validate(build.fields)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        key = build.keys.get(field)
        label = f"Hugging Face config key '{key}' (ModelSpec field '{field}')" if key else (
            f"ModelSpec field '{field}'"
        )
        got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
        more = f"; {err.error_count() - 1} more problem(s)" if err.error_count() > 1 else ""
        raise SpecError(
            f"{where}: {label}: {first['msg']}{got}{more}; fix it in config.json"
        ) from None


# ----- shared pieces ------------------------------------------------------------------------

def _activation(cfg: _Config, key: str, default: str, *, gated: bool) -> Activation:
    """Map an ACT2FN name. Gated families (Llama & co.) use it inside SwiGLU/GeGLU."""
    name = cfg.text(key, default)
    low = name.lower()
    if low in _GELU_NAMES:
        return Activation.GEGLU if gated else Activation.GELU
    if gated and low in _SILU_NAMES:
        return Activation.SWIGLU
    if not gated and low == "relu":
        return Activation.RELU
    if not gated and low in ("relu2", "squared_relu"):
        return Activation.SQUARED_RELU
    choices = "silu, gelu variants" if gated else "gelu variants, relu, relu2"
    raise cfg.fail(key, f"is {name!r}, an activation meshplan does not model for model_type "
                        f"'{cfg.model_type}'", f"use one of: {choices}")


def _moe_layout(cfg: _Config, is_moe: list[bool], key: str) -> tuple[int, int] | None:
    """(first_k_dense, layer_freq) reproducing the architecture's MoE-layer pattern exactly,
    or None when no layer is MoE. ModelSpec describes the pattern as "dense for the first k
    layers, then every n-th layer"; any other pattern is rejected."""
    moe = [i for i, flag in enumerate(is_moe) if flag]
    if not moe:
        return None
    first = moe[0]
    freq = moe[1] - moe[0] if len(moe) > 1 else len(is_moe) - first
    expected = [i >= first and (i - first) % freq == 0 for i in range(len(is_moe))]
    if expected != is_moe:
        raise cfg.fail(key, f"gives MoE layers {moe}, a pattern ModelSpec cannot express "
                            "(dense first k layers, then every n-th layer MoE)",
                       "describe the model in a meshplan model file instead")
    return first, freq


def _attention_window(cfg: _Config, build: _Build, layers: int, *,
                      every_default: int | None, every_key: str | None = None) -> None:
    """ModelSpec's sliding_window and global_attention_every from `sliding_window` and the
    layer pattern: `layer_types` when the config lists it ("sliding_attention" /
    "full_attention" per layer, as transformers writes it since 4.53), else the
    architecture's rule (`every_key`, e.g. Gemma 3's sliding_window_pattern, or
    `every_default`). ModelSpec expresses "every k-th layer global" (or none); any other
    pattern is rejected. No window, or every layer global: nothing is set."""
    window = cfg.opt_integer("sliding_window")
    if window is None:
        return
    types = cfg.text_list("layer_types")
    key = "layer_types"
    if types:
        kinds = {"sliding_attention", "full_attention"}
        if len(types) != layers or any(t not in kinds for t in types):
            raise cfg.fail("layer_types", f"must list {layers} entries, each sliding_attention "
                                          "or full_attention", "fix it in config.json")
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        every = full[0] + 1 if full else None
        if every is not None and full != list(range(every - 1, layers, every)):
            raise cfg.fail("layer_types", f"puts full attention on layers {full}, a pattern "
                                          "ModelSpec cannot express (every k-th layer global)",
                           "describe the model in a meshplan model file instead")
    else:
        every = cfg.integer(every_key, default=every_default) if every_key else every_default
        key = every_key or "sliding_window"
        if every is not None and every < 1:
            raise cfg.fail(key, f"is {every}", "use a positive integer")
    if every == 1:                  # every layer global: the window is never used
        return
    build.set("sliding_window", window, "sliding_window")
    if every is not None:
        build.set("global_attention_every", every, key)


class _Dims(NamedTuple):
    """Shapes the notes on uncounted weights need."""

    layers: int
    hidden: int
    q_dim: int
    kv_dim: int
    head_dim: int


def _llama_family(cfg: _Config, build: _Build, *, head_dim_default: int | None,
                  tied_default: bool = False, act_key: str = "hidden_act",
                  act_default: str = "silu") -> _Dims:
    """Fields shared by Llama, Mistral, Mixtral, Qwen2/3, Qwen3-MoE, gpt-oss and Gemma:
    pre-RMSNorm decoder, RoPE, gated MLP."""
    layers = cfg.integer("num_hidden_layers")
    h = cfg.integer("hidden_size")
    heads = cfg.integer("num_attention_heads")
    kv = cfg.integer("num_key_value_heads", default=heads)
    # head_dim: optional (null allowed); Llama/Mistral fall back to hidden // heads, Qwen3's
    # config classes to 128 (Qwen3-8B: 4096 / 32 = 128 anyway; Qwen3-235B: 4096 / 64 = 64 != 128).
    head_dim = cfg.integer("head_dim", default=head_dim_default)
    build.set("num_layers", layers, "num_hidden_layers")
    build.set("hidden_size", h, "hidden_size")
    build.set("num_attention_heads", heads, "num_attention_heads")
    build.set("num_kv_heads", kv, "num_key_value_heads")
    if head_dim is not None:
        build.set("head_dim", head_dim, "head_dim")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", _activation(cfg, act_key, act_default, gated=True))
    build.set("positional", Positional.ROPE)
    build.set("max_position_embeddings", cfg.integer("max_position_embeddings", default=2048),
              "max_position_embeddings")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", tied_default))
    build.set("norm", Norm.RMSNORM)
    d = head_dim if head_dim is not None else (h // heads if heads else 0)
    return _Dims(layers, h, heads * d, kv * d, d)


def _qk_norm_note(build: _Build, layers: int, head_dim: int) -> None:
    # Qwen3's q_norm and k_norm are RMSNorms over head_dim, shared by the heads of a layer:
    # 2 * head_dim weights per layer (Qwen3-8B: 9,216 of 8.19B). Ignored; ModelSpec has no field.
    build.uncounted("per-head q_norm/k_norm RMSNorm weights", layers * 2 * head_dim)


# ----- GPT-2 family -------------------------------------------------------------------------

def _gpt2(cfg: _Config, build: _Build) -> None:
    # GPT2Model: wte, wpe (n_positions rows), per block ln_1, c_attn (h x 3h + bias), c_proj,
    # ln_2, mlp c_fc / c_proj with biases, ln_f; lm_head tied to wte by default. Exact.
    h = cfg.integer("n_embd", "hidden_size")
    build.set("num_layers", cfg.integer("n_layer", "num_hidden_layers"), "n_layer")
    build.set("hidden_size", h, "n_embd")
    build.set("num_attention_heads", cfg.integer("n_head", "num_attention_heads"), "n_head")
    build.set("ffn_hidden_size", cfg.integer("n_inner", default=4 * h), "n_inner")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", _activation(cfg, "activation_function", "gelu_new", gated=False))
    build.set("positional", Positional.LEARNED)
    build.set("max_position_embeddings", cfg.integer("n_positions", "max_position_embeddings"),
              "n_positions")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", True))
    build.set("linear_bias", True)
    build.set("norm", Norm.LAYERNORM)
    if cfg.flag("add_cross_attention", False):
        raise cfg.fail("add_cross_attention", "is true (encoder-decoder cross-attention), "
                       "which ModelSpec does not model", "set it to false or drop it")


def _gpt_neox(cfg: _Config, build: _Build) -> None:
    # GPTNeoXModel: embed_in, per layer input/post_attention LayerNorms, fused query_key_value
    # (h x 3h), dense (h x h), dense_h_to_4h / dense_4h_to_h, all with biases by default;
    # final_layer_norm; embed_out untied by default. Rotary (partial, rotary_pct) has no
    # weights and use_parallel_residual changes only the dataflow. Exact.
    layers = cfg.integer("num_hidden_layers")
    h = cfg.integer("hidden_size")
    ffn = cfg.integer("intermediate_size")
    build.set("num_layers", layers, "num_hidden_layers")
    build.set("hidden_size", h, "hidden_size")
    build.set("num_attention_heads", cfg.integer("num_attention_heads"), "num_attention_heads")
    build.set("ffn_hidden_size", ffn, "intermediate_size")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", _activation(cfg, "hidden_act", "gelu", gated=False))
    build.set("positional", Positional.ROPE)
    build.set("max_position_embeddings", cfg.integer("max_position_embeddings", default=2048),
              "max_position_embeddings")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", False))
    build.set("norm", Norm.LAYERNORM)
    # attention_bias (newer configs; default true) covers query_key_value and dense only; the
    # MLP always has biases. ModelSpec's linear_bias is all-or-nothing.
    attention_bias = cfg.flag("attention_bias", True)
    build.set("linear_bias", attention_bias)
    if not attention_bias:
        build.uncounted("MLP biases", layers * (ffn + h))


def _opt(cfg: _Config, build: _Build) -> None:
    # OPTDecoder: embed_tokens (word_embed_proj_dim wide), embed_positions with
    # max_position_embeddings + 2 rows (OPTLearnedPositionalEmbedding's offset of 2), per layer
    # q/k/v/out_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm (biases when enable_bias),
    # a decoder final_layer_norm only when do_layer_norm_before; lm_head tied by default.
    h = cfg.integer("hidden_size")
    proj = cfg.integer("word_embed_proj_dim", default=h)
    if proj != h:
        # OPT-350m: 512-wide embeddings with project_in (512 x h) / project_out (h x 512).
        raise cfg.fail("word_embed_proj_dim", f"is {proj}, not hidden_size {h} (an embedding "
                       "narrower than the model with project_in/project_out matrices, as in "
                       "OPT-350m), which ModelSpec cannot count exactly",
                       "describe the model in a meshplan model file instead")
    layers = cfg.integer("num_hidden_layers")
    build.set("num_layers", layers, "num_hidden_layers")
    build.set("hidden_size", h, "hidden_size")
    build.set("num_attention_heads", cfg.integer("num_attention_heads"), "num_attention_heads")
    build.set("ffn_hidden_size", cfg.integer("ffn_dim"), "ffn_dim")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", _activation(cfg, "activation_function", "relu", gated=False))
    build.set("positional", Positional.LEARNED)
    build.set("max_position_embeddings", cfg.integer("max_position_embeddings") + 2,
              "max_position_embeddings")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", True))
    build.set("linear_bias", cfg.flag("enable_bias", True))
    build.set("norm", Norm.LAYERNORM)
    affine = cfg.flag("layer_norm_elementwise_affine", True)
    norms = 2 * layers + 1
    if not affine:
        build.uncounted("LayerNorms without weights (layer_norm_elementwise_affine false)",
                        -norms * 2 * h)
    elif not cfg.flag("do_layer_norm_before", True) or cfg.flag("_remove_final_layer_norm", False):
        # Post-LN OPT has no final decoder norm; ModelSpec always counts one (2h).
        build.uncounted("final LayerNorm", -2 * h)


def _bloom(cfg: _Config, build: _Build) -> None:
    # BloomModel: word_embeddings, word_embeddings_layernorm, per block input_layernorm,
    # query_key_value (h x 3h), dense, post_attention_layernorm, dense_h_to_4h, dense_4h_to_h,
    # all with biases; ln_f; ALiBi (no weights); lm_head tied. Exact. The big checkpoint's
    # config (bigscience/bloom) spells hidden_size as n_embed and n_head as num_attention_heads.
    h = cfg.integer("hidden_size", "n_embed")
    build.set("num_layers", cfg.integer("n_layer", "num_hidden_layers"), "n_layer")
    build.set("hidden_size", h, "hidden_size")
    build.set("num_attention_heads", cfg.integer("n_head", "num_attention_heads"), "n_head")
    build.set("ffn_hidden_size", 4 * h)
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", Activation.GELU)
    build.set("positional", Positional.ALIBI)
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", True))
    build.set("linear_bias", True)
    build.set("norm", Norm.LAYERNORM)
    build.set("embedding_norm", True)


def _mpt(cfg: _Config, build: _Build) -> None:
    # MosaicML MPT (llm-foundry modeling_mpt.py, the code the Hub checkpoints ship): wte, per
    # block norm_1, Wqkv, out_proj, norm_2, ffn up_proj / down_proj, norm_f; lm_head tied.
    # No wpe when ALiBi is on (MPT-7B: learned_pos_emb is true but alibi wins).
    # no_bias (default true) removes the bias of every linear AND of every LayerNorm, leaving
    # scale-only LayerNorms of h weights: ModelSpec's Norm.LAYERNORM counts 2h, so such a model
    # uses RMSNORM, whose count (h per norm) is exactly right (MPT-7B: 65 norms x 4096 =
    # 266,240 weights; with 2h it would be 266,240 too many). transformers' own MptModel always
    # drops the biases; we follow the config key as llm-foundry does.
    h = cfg.integer("d_model", "hidden_size")
    heads = cfg.integer("n_heads", "num_attention_heads")
    attn = cfg.sub("attn_config")
    ffn_cfg = cfg.sub("ffn_config")
    ffn_type = ffn_cfg.text("ffn_type", "mptmlp")
    if ffn_type not in ("mptmlp", "mptglu"):
        raise ffn_cfg.fail("ffn_type", f"is {ffn_type!r}, which meshplan does not model",
                           "use mptmlp or mptglu, or write a meshplan model file")
    gated = ffn_type == "mptglu"
    activation = _activation(ffn_cfg.sub("ffn_act_fn"), "name", "gelu", gated=gated)
    if ffn_cfg.has("ffn_hidden_size"):
        ffn = ffn_cfg.integer("ffn_hidden_size")
    else:
        ffn = int(h * cfg.number("expansion_ratio", default=4))
    attn_type = attn.text("attn_type", "multihead_attention")
    if attn_type == "multihead_attention":
        kv = None
    elif attn_type == "multiquery_attention":
        kv = 1
    elif attn_type == "grouped_query_attention":
        kv = attn.integer("kv_n_heads", default=1)
    else:
        raise attn.fail("attn_type", f"is {attn_type!r}, which meshplan does not model",
                        "use multihead_attention, multiquery_attention or grouped_query_attention")
    if attn.flag("alibi", False):
        positional = Positional.ALIBI
    elif attn.flag("rope", False):
        positional = Positional.ROPE
    elif cfg.flag("learned_pos_emb", True):
        positional = Positional.LEARNED
    else:
        positional = Positional.NONE
    no_bias = cfg.flag("no_bias", True)
    layers = cfg.integer("n_layers", "num_hidden_layers")
    build.set("num_layers", layers, "n_layers")
    build.set("hidden_size", h, "d_model")
    build.set("num_attention_heads", heads, "n_heads")
    build.set("num_kv_heads", kv, "attn_config.kv_n_heads")
    build.set("ffn_hidden_size", ffn, "expansion_ratio")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("activation", activation)
    build.set("positional", positional)
    build.set("max_position_embeddings", cfg.integer("max_seq_len", default=2048), "max_seq_len")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", True))
    build.set("linear_bias", not no_bias)
    build.set("norm", Norm.RMSNORM if no_bias else Norm.LAYERNORM)
    if attn.flag("qk_ln", False):
        d = h // heads if heads else 0
        per = (2 if not no_bias else 1) * (h + (kv or heads) * d)
        build.uncounted("q/k LayerNorms (attn_config.qk_ln)", layers * per)


# ----- Llama family -------------------------------------------------------------------------

def _llama(cfg: _Config, build: _Build) -> None:
    # LlamaModel: embed_tokens, per layer input_layernorm, q/k/v/o_proj, post_attention_layernorm,
    # gate/up/down_proj, final norm, lm_head untied by default. attention_bias puts biases on
    # q/k/v/o, mlp_bias on gate/up/down: ModelSpec's linear_bias needs both.
    d = _llama_family(cfg, build, head_dim_default=None)
    ffn = cfg.integer("intermediate_size")
    build.set("ffn_hidden_size", ffn, "intermediate_size")
    attention_bias = cfg.flag("attention_bias", False)
    mlp_bias = cfg.flag("mlp_bias", False)
    build.set("linear_bias", attention_bias and mlp_bias)
    if attention_bias and not mlp_bias:
        build.uncounted("attention biases (attention_bias)",
                        d.layers * (d.q_dim + 2 * d.kv_dim + d.hidden))
    if mlp_bias and not attention_bias:
        build.uncounted("MLP biases (mlp_bias)", d.layers * (2 * ffn + d.hidden))


def _mistral(cfg: _Config, build: _Build) -> None:
    # MistralModel: Llama's layout without biases. Exact. Every layer attends within
    # sliding_window when it is set (Mistral 7B v0.1: 4096; null from v0.2 on): no weights,
    # but it bounds the attention work and the KV cache.
    d = _llama_family(cfg, build, head_dim_default=None)
    build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
    _attention_window(cfg, build, d.layers, every_default=None)


def _qwen2(cfg: _Config, build: _Build) -> None:
    # Qwen2Model: Llama's layout, but q_proj/k_proj/v_proj always carry biases (o_proj and the
    # MLP do not). linear_bias=True would also bias o_proj and the MLP (Qwen2-7B: +1.3M, 0.017%
    # too many); linear_bias=False misses the q/k/v biases (Qwen2-7B: 129,024, 0.0017% too few),
    # the smaller error, recorded in notes.
    d = _llama_family(cfg, build, head_dim_default=None)
    build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
    build.set("linear_bias", False)
    build.uncounted("q/k/v_proj biases", d.layers * (d.q_dim + 2 * d.kv_dim))


def _qwen3(cfg: _Config, build: _Build) -> None:
    # Qwen3Model: Llama's layout plus per-head q_norm/k_norm; attention_bias covers q/k/v/o.
    d = _llama_family(cfg, build, head_dim_default=128)
    build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
    _qwen3_attention_extras(cfg, build, d)


def _qwen3_attention_extras(cfg: _Config, build: _Build, d: _Dims) -> None:
    """Qwen3's attention_bias (q/k/v/o, not the MLP) and per-head q/k norms, as notes."""
    build.set("linear_bias", False)
    if cfg.flag("attention_bias", False):
        build.uncounted("attention biases (attention_bias)",
                        d.layers * (d.q_dim + 2 * d.kv_dim + d.hidden))
    _qk_norm_note(build, d.layers, d.head_dim)


def _mixtral(cfg: _Config, build: _Build) -> None:
    # MixtralModel: Llama attention; every layer's MLP is a sparse MoE block: router gate
    # (h x num_local_experts, no bias) and num_local_experts SwiGLU experts of intermediate_size.
    # Exact. A sliding_window (null in Mixtral 8x7B's config) bounds every layer, as in Mistral.
    d = _llama_family(cfg, build, head_dim_default=None)
    _attention_window(cfg, build, d.layers, every_default=None)
    ffn = cfg.integer("intermediate_size")
    build.set("ffn_hidden_size", ffn, "intermediate_size")
    build.set("moe", {
        "num_experts": cfg.integer("num_local_experts"),
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": ffn,
    })
    build.keys.update({"moe.num_experts": "num_local_experts",
                       "moe.top_k": "num_experts_per_tok",
                       "moe.expert_ffn_hidden_size": "intermediate_size"})


def _qwen3_moe(cfg: _Config, build: _Build) -> None:
    # Qwen3MoeModel: Qwen3 attention; layer i is a sparse MoE block (router h x num_experts,
    # num_experts experts of moe_intermediate_size, no shared expert) when i is not in
    # mlp_only_layers and (i + 1) % decoder_sparse_step == 0, else a dense MLP of
    # intermediate_size.
    d = _llama_family(cfg, build, head_dim_default=128)
    layers = d.layers
    experts = cfg.integer("num_experts")
    step = cfg.integer("decoder_sparse_step", default=1)
    if step < 1:
        raise cfg.fail("decoder_sparse_step", f"is {step}", "use a positive integer (1 = all MoE)")
    dense_only = set(cfg.int_list("mlp_only_layers"))
    is_moe = [i not in dense_only and experts > 0 and (i + 1) % step == 0 for i in range(layers)]
    layout = _moe_layout(cfg, is_moe, "mlp_only_layers" if dense_only else "decoder_sparse_step")
    _qwen3_attention_extras(cfg, build, d)
    if layout is None:
        build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
        return
    expert_ffn = cfg.integer("moe_intermediate_size")
    # intermediate_size only sizes the dense layers; when there are none it is unused.
    dense = cfg.integer("intermediate_size") if not all(is_moe) else cfg.integer(
        "intermediate_size", default=expert_ffn)
    build.set("ffn_hidden_size", dense, "intermediate_size")
    build.set("moe", {
        "num_experts": experts,
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": expert_ffn,
        "first_k_dense": layout[0],
        "layer_freq": layout[1],
    })
    build.keys.update({"moe.num_experts": "num_experts", "moe.top_k": "num_experts_per_tok",
                       "moe.expert_ffn_hidden_size": "moe_intermediate_size"})


def _deepseek_v3(cfg: _Config, build: _Build) -> None:
    # DeepseekV3Model: MLA attention (q_a_proj, q_a_layernorm, q_b_proj or q_proj when
    # q_lora_rank is null; kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj; o_proj) exactly as
    # ModelSpec.attention_params counts it. Layer i is MoE when i >= first_k_dense_replace and
    # i % moe_layer_freq == 0 (the Hub's modeling_deepseek.py; transformers' port ignores the
    # freq, the same for freq 1): router gate (n_routed_experts x h), n_routed_experts experts of
    # moe_intermediate_size, and a shared MLP of n_shared_experts * moe_intermediate_size, which
    # counts the same as n_shared_experts experts. Dense layers use intermediate_size.
    # The multi-token-prediction modules (num_nextn_predict_layers; 14B of the 685B checkpoint)
    # are not built by the modeling code for inference and are not in `params` (671B, as
    # published); training runs them (ModelSpec.mtp_layers, on the last pipeline stage).
    layers = cfg.integer("num_hidden_layers")
    h = cfg.integer("hidden_size")
    heads = cfg.integer("num_attention_heads")
    build.set("num_layers", layers, "num_hidden_layers")
    build.set("hidden_size", h, "hidden_size")
    build.set("num_attention_heads", heads, "num_attention_heads")
    build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
    build.set("vocab_size", cfg.integer("vocab_size"), "vocab_size")
    build.set("mtp_layers", cfg.integer("num_nextn_predict_layers", default=0),
              "num_nextn_predict_layers")
    build.set("activation", _activation(cfg, "hidden_act", "silu", gated=True))
    build.set("positional", Positional.ROPE)
    build.set("max_position_embeddings", cfg.integer("max_position_embeddings", default=2048),
              "max_position_embeddings")
    build.set("tied_embeddings", cfg.flag("tie_word_embeddings", False))
    build.set("norm", Norm.RMSNORM)
    build.set("linear_bias", False)
    q_lora = cfg.opt_integer("q_lora_rank")
    kv_lora = cfg.integer("kv_lora_rank")
    nope, rope, v = (cfg.integer("qk_nope_head_dim"), cfg.integer("qk_rope_head_dim"),
                     cfg.integer("v_head_dim"))
    build.set("mla", {"q_lora_rank_dim": q_lora, "kv_lora_rank_dim": kv_lora,
                      "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": v})
    build.keys.update({"mla.q_lora_rank_dim": "q_lora_rank", "mla.kv_lora_rank_dim": "kv_lora_rank",
                       "mla.qk_nope_head_dim": "qk_nope_head_dim",
                       "mla.qk_rope_head_dim": "qk_rope_head_dim", "mla.v_head_dim": "v_head_dim"})
    if cfg.flag("attention_bias", False):
        # q_a_proj (or q_proj), kv_a_proj_with_mqa and o_proj get biases.
        q_out = q_lora if q_lora else heads * (nope + rope)
        build.uncounted("attention biases (attention_bias)",
                        layers * (q_out + kv_lora + rope + h))

    experts = cfg.opt_integer("n_routed_experts")
    if not experts:
        return
    first_k = cfg.integer("first_k_dense_replace", default=0)
    freq = cfg.integer("moe_layer_freq", default=1)
    if freq < 1:
        raise cfg.fail("moe_layer_freq", f"is {freq}", "use a positive integer (1 = all MoE)")
    is_moe = [i >= first_k and i % freq == 0 for i in range(layers)]
    layout = _moe_layout(cfg, is_moe, "moe_layer_freq")
    if layout is None:
        return
    build.set("moe", {
        "num_experts": experts,
        "top_k": cfg.integer("num_experts_per_tok"),
        "expert_ffn_hidden_size": cfg.integer("moe_intermediate_size"),
        "num_shared_experts": cfg.integer("n_shared_experts", default=0),
        "first_k_dense": layout[0],
        "layer_freq": layout[1],
    })
    build.keys.update({"moe.num_experts": "n_routed_experts", "moe.top_k": "num_experts_per_tok",
                       "moe.expert_ffn_hidden_size": "moe_intermediate_size",
                       "moe.num_shared_experts": "n_shared_experts",
                       "moe.first_k_dense": "first_k_dense_replace"})
    groups, group_topk = cfg.opt_integer("n_group"), cfg.opt_integer("topk_group")
    if (cfg.text("topk_method", "greedy") in ("group_limited_greedy", "noaux_tc")
            and groups and group_topk and group_topk < groups):
        # Group-limited routing: top_k experts inside the topk_group best of n_group groups
        # (DeepSeek-V2 Sec. 2.2.2 device-limited routing; DeepSeek-V3 Sec. 2.1.2 node-limited).
        build.fields["moe"] |= {"route_groups": groups, "route_group_topk": group_topk}
        build.keys.update({"moe.route_groups": "n_group", "moe.route_group_topk": "topk_group"})
    if cfg.text("topk_method", "greedy") == "noaux_tc":
        # The router's e_score_correction_bias (one per routed expert and MoE layer).
        build.uncounted("router e_score_correction_bias", sum(is_moe) * experts)


def _gpt_oss(cfg: _Config, build: _Build) -> None:
    # GptOssModel (transformers, configuration_gpt_oss.py / modeling_gpt_oss.py): Llama-style
    # attention with q/k/v/o biases (attention_bias, true in the released configs) and a
    # learned sink logit per head; every layer's MLP is an MoE block: router (h x
    # num_local_experts weight plus a bias), num_local_experts experts with gate_up_proj
    # (h x 2*intermediate_size) and down_proj, each with a bias, clamped SwiGLU. Layers
    # alternate a sliding_window band and full attention (layer_types; by default layer i is
    # sliding when (i + 1) % 2, so every 2nd layer is global). linear_bias counts the attention
    # and expert biases together; the sinks and the router bias have no ModelSpec field.
    d = _llama_family(cfg, build, head_dim_default=None)
    experts = cfg.integer("num_local_experts", "num_experts")
    ffn = cfg.integer("intermediate_size")
    build.set("ffn_hidden_size", ffn, "intermediate_size")
    build.set("moe", {"num_experts": experts,
                      "top_k": cfg.integer("num_experts_per_tok", "experts_per_token"),
                      "expert_ffn_hidden_size": ffn})
    build.keys.update({"moe.num_experts": "num_local_experts",
                       "moe.top_k": "num_experts_per_tok",
                       "moe.expert_ffn_hidden_size": "intermediate_size"})
    attention_bias = cfg.flag("attention_bias", True)
    build.set("linear_bias", attention_bias)
    if not attention_bias:
        build.uncounted("expert biases (gate_up_proj_bias, down_proj_bias)",
                        d.layers * experts * (2 * ffn + d.hidden))
    build.uncounted("attention sinks (one per head)", d.layers * (d.q_dim // d.head_dim))
    build.uncounted("router bias", d.layers * experts)
    _attention_window(cfg, build, d.layers, every_default=2)


GEMMA2_DEFAULTS: dict[str, int] = {
    "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 8192, "sliding_window": 4096}
"""transformers' Gemma2Config defaults (configuration_gemma2.py)."""

GEMMA3_TEXT_DEFAULTS: dict[str, int] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 131072, "sliding_window": 4096}
"""transformers' Gemma3TextConfig defaults (configuration_gemma3.py). The Hub's Gemma 3
configs (gemma-3-4b and up) list only what differs from them in `text_config`, so unlike the
other architectures here a missing key takes its default, as transformers does."""


def _gemma_family(cfg: _Config, build: _Build, *, defaults: dict[str, int], qk_norm: bool,
                  every_default: int, every_key: str | None) -> None:
    """Gemma 2 and Gemma 3 decoders (transformers' Gemma2/Gemma3Text modeling): Llama-style
    attention, a GeGLU MLP (hidden_activation gelu_pytorch_tanh), tied embeddings scaled by
    sqrt(h) (no weights), and four RMSNorms per layer (input, post-attention, pre- and
    post-feedforward) where ModelSpec counts two: 2h per layer in notes, as are Gemma 3's
    per-head q/k norms. Local layers attend within sliding_window. Missing keys take the config
    class's `defaults`."""
    cfg = _Config({**defaults, **cfg.data}, cfg.where, cfg.model_type, cfg.prefix)
    act_key = "hidden_activation" if cfg.has("hidden_activation") else "hidden_act"
    d = _llama_family(cfg, build, head_dim_default=None, tied_default=True, act_key=act_key,
                      act_default="gelu_pytorch_tanh")
    build.set("ffn_hidden_size", cfg.integer("intermediate_size"), "intermediate_size")
    build.set("linear_bias", False)
    if cfg.flag("attention_bias", False):
        build.uncounted("attention biases (attention_bias)",
                        d.layers * (d.q_dim + 2 * d.kv_dim + d.hidden))
    build.uncounted("pre/post-feedforward RMSNorms (4 per layer, 2 counted)",
                    d.layers * 2 * d.hidden)
    if qk_norm:
        _qk_norm_note(build, d.layers, d.head_dim)
    _attention_window(cfg, build, d.layers, every_default=every_default, every_key=every_key)


def _gemma2(cfg: _Config, build: _Build) -> None:
    # Gemma2DecoderLayer: is_sliding = not bool(layer_idx % 2): every 2nd layer global.
    _gemma_family(cfg, build, defaults=GEMMA2_DEFAULTS, qk_norm=False, every_default=2,
                  every_key=None)


def _gemma3_text(cfg: _Config, build: _Build) -> None:
    # Gemma3TextConfig: layer i is sliding when (i + 1) % sliding_window_pattern (default 6:
    # five local layers, then one global), plus per-head q_norm/k_norm.
    _gemma_family(cfg, build, defaults=GEMMA3_TEXT_DEFAULTS, qk_norm=True, every_default=6,
                  every_key="sliding_window_pattern")


def _gemma3(cfg: _Config, build: _Build) -> None:
    # Gemma3Config (gemma-3-4b and larger): the text decoder's config is `text_config`; the
    # SigLIP vision tower and its projector (vision_config) are not modelled.
    _gemma3_text(cfg.sub("text_config"), build)
    build.notes.append("text decoder only: the vision tower (vision_config) is not modelled")


_CONVERTERS: dict[str, Callable[[_Config, _Build], None]] = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "bloom": _bloom,
    "mpt": _mpt,
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "gemma3": _gemma3,
}
assert tuple(_CONVERTERS) == SUPPORTED_MODEL_TYPES
