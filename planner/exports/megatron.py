"""Megatron-LM launch flags for a training plan (`meshplan export --to megatron`).

Decides: the parallel sizes, pipeline layout, schedule, memory savers, batch and model-shape
flags of `pretrain_gpt.py`, with every name from `options/megatron.toml` (Megatron-LM
`megatron/training/arguments.py` at the commit recorded there). Does not decide data,
tokenizer, optimizer hyper-parameters or checkpoint paths: the user appends those.

Mappings (all from that arguments.py unless said otherwise):
- Stages: equal counts need no flag; equal middle stages with a different first and/or last
  use --decoder-first/last-pipeline-num-layers; any other split uses
  --pipeline-model-parallel-layout (E|t..|..|L, virtual stage index vpp_rank * pp + pp_rank,
  megatron/core/transformer/pipeline_parallel_layer_layout.py), which also carries vpp.
- vpp > 1 otherwise: --num-virtual-stages-per-pipeline-rank (validate_args requires it, not
  --num-layers-per-virtual-pipeline-stage, when first/last stages are uneven).
- ZeRO: 1 = --use-distributed-optimizer (shards optimizer state and fp32 master weights);
  2 / 3 = Megatron-FSDP, --use-megatron-fsdp --data-parallel-sharding-strategy optim_grads /
  optim_grads_params (validate_args requires --ckpt-format fsdp_dtensor with it).
- Recompute: selective = --recompute-granularity selective (default module core_attn, the
  attention core of Korthikanti et al. 2022); full = full + uniform method, 1 layer per unit.
- fp8: --bf16 with Transformer Engine's FP8 (`fp8_recipe`: mxfp8/e4m3 on Blackwell, delayed
  scaling/hybrid before it).
- MoE token dispatcher: named whenever ep > 1 (Megatron-LM's default is allgather): alltoall,
  or flex on DeepEP when the plan's flex dispatcher crosses nodes (`_dispatcher_flags`).
- sp: --sequence-parallel, only with tp > 1 (a tp group of one has nothing to split).
- Data-parallel overlap (the estimate's default, plan key dp_overlap): --overlap-grad-reduce,
  and --overlap-param-gather with a sharded optimizer; both default to off in Megatron-LM.
  dp_overlap=off prints neither.
- Rank order: tp-cp-dp-pp is Megatron's default (tp-cp-ep-dp-pp); tp-cp-pp-dp is
  --use-tp-pp-dp-mapping; other orders are refused.
"""

from __future__ import annotations

from planner.exports.common import ExportInputs, flex_crosses_nodes, refuse, require_training
from planner.model import Activation, DType, ModelSpec, Norm, Positional
from planner.plan import DEFAULT_ORDER, Recompute

ENGINE = "megatron"
Flags = list[tuple[str, str | None]]
"""(flag, value) pairs in print order; value None for a store_true flag."""

_TP_PP_DP_ORDER = ("tp", "cp", "pp", "dp")


def megatron_flags(inp: ExportInputs) -> Flags:
    """All flags for `inp`, in print order.

    Raises:
        UnsupportedPlanError: the plan or model uses something Megatron-LM has no flag for.
    """
    require_training(inp, "Megatron-LM")
    return [*_parallel_flags(inp), *_pipeline_flags(inp), *_memory_flags(inp),
            *_batch_flags(inp), *_model_flags(inp.model, inp), *_dtype_flags(inp)]


def _parallel_flags(inp: ExportInputs) -> Flags:
    p = inp.plan
    out: Flags = [("--tensor-model-parallel-size", str(p.tp)),
                  ("--pipeline-model-parallel-size", str(p.pp))]
    if p.cp > 1:
        out.append(("--context-parallel-size", str(p.cp)))
    if inp.model.moe is not None:
        # Megatron defaults the expert TP size to the dense TP size; meshplan's etp None means 1.
        out += [("--expert-model-parallel-size", str(p.ep)),
                ("--expert-tensor-parallel-size", str(p.expert_tp))]
        if p.ep_overlap:
            # combined 1F1B; Megatron-Core asserts an alltoall or flex dispatcher for it
            out.append(("--overlap-moe-expert-parallel-comm", None))
        out += _dispatcher_flags(inp)
    elif p.ep > 1:
        raise refuse("Megatron-LM", f"ep={p.ep} needs an MoE model; '{inp.model.name}' is dense")
    if p.sp and p.tp > 1:
        # sp splits activations over the tp group: with tp=1 there is nothing to split, and
        # Megatron-Core rejects the flag there (Megatron-LM's validate_args turns it off)
        out.append(("--sequence-parallel", None))
    if p.order == _TP_PP_DP_ORDER:
        out.append(("--use-tp-pp-dp-mapping", None))
    elif p.order != DEFAULT_ORDER:
        raise refuse("Megatron-LM", f"rank order {'-'.join(p.order)} is neither the default "
                     "tp-cp-(ep-)dp-pp nor tp-cp-(ep-)pp-dp (--use-tp-pp-dp-mapping)")
    return out


def _dispatcher_flags(inp: ExportInputs) -> Flags:
    """The token dispatcher that moves tokens the way the estimate moved them
    (`common.flex_crosses_nodes`):
    - dispatcher=alltoall, or an expert-parallel group inside one node (where both dispatchers
      send one row per (token, expert) pair): Megatron-Core's NCCL all-to-all,
      `--moe-token-dispatcher-type alltoall`, which needs no extra library;
    - dispatcher=flex with an EP group across nodes (a token crosses the network once per
      destination node): the flex dispatcher on DeepEP, `--moe-token-dispatcher-type flex
      --moe-enable-deepep` (arguments.py: DeepEP "only works with flex token dispatcher");
    - ep=1 without ep_overlap: no flag, no token leaves its device.
    Megatron-LM's default, allgather, sends every token to every EP rank, which no estimate
    assumes, so a plan with ep > 1 always names its dispatcher."""
    p = inp.plan
    if p.ep == 1 and not p.ep_overlap:
        return []
    if flex_crosses_nodes(inp):
        return [("--moe-token-dispatcher-type", "flex"), ("--moe-enable-deepep", None)]
    return [("--moe-token-dispatcher-type", "alltoall")]


def _pipeline_flags(inp: ExportInputs) -> Flags:
    p, counts, chunks = inp.plan, inp.stage_layers, inp.virtual_stage_layers
    if p.pp == 1:
        return []
    even_chunks = chunks == tuple(counts[s % p.pp] // p.vpp for s in range(p.pp * p.vpp))
    middle = counts[1:-1]
    if not even_chunks or len(set(middle)) > 1:
        # any split: the layout names every virtual stage (and so carries vpp itself)
        return [("--pipeline-model-parallel-layout",
                 pipeline_layout(chunks, mtp=inp.model.mtp_layers))]
    out: Flags = []
    if len(set(counts)) > 1:
        # equal middle stages; Megatron gives each middle stage (L - first - last) / (pp - 2)
        if not middle or counts[0] != middle[0]:
            out.append(("--decoder-first-pipeline-num-layers", str(counts[0])))
        if not middle or counts[-1] != middle[0]:
            out.append(("--decoder-last-pipeline-num-layers", str(counts[-1])))
    if p.vpp > 1:
        out.append(("--num-virtual-stages-per-pipeline-rank", str(p.vpp)))
    return out


def pipeline_layout(chunks: tuple[int, ...], *, mtp: int = 0) -> str:
    """Megatron's layout string from the blocks of each virtual stage (pipeline order, stage
    index vpp_rank * pp + pp_rank): 't' per block, E before the first, the MTP modules ('m'
    each) and L after the last."""
    stages = ["t" * n for n in chunks]
    stages[0] = "E" + stages[0]
    stages[-1] = stages[-1] + "m" * mtp + "L"
    return "|".join(stages)


def _memory_flags(inp: ExportInputs) -> Flags:
    p = inp.plan
    out: Flags = []
    if p.zero == 1:
        out.append(("--use-distributed-optimizer", None))
    elif p.zero in (2, 3):
        strategy = "optim_grads" if p.zero == 2 else "optim_grads_params"
        out += [("--use-megatron-fsdp", None), ("--data-parallel-sharding-strategy", strategy),
                ("--ckpt-format", "fsdp_dtensor")]
    out += _overlap_flags(inp)
    if p.recompute == Recompute.SELECTIVE:
        out.append(("--recompute-granularity", "selective"))
        if p.recompute_modules is not None:
            out.append(("--recompute-modules", " ".join(p.recompute_modules)))
            if "moe_act" in p.recompute_modules:
                # Megatron-Core recomputes the expert activation only in the grouped-GEMM MLP
                out.append(("--moe-grouped-gemm", None))
    elif p.recompute == Recompute.FULL:
        out += [("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
                ("--recompute-num-layers", "1")]
    return out


def _overlap_flags(inp: ExportInputs) -> Flags:
    """The estimate overlaps data-parallel gradient reduction with the backward pass and
    ZeRO's parameter gathers with the forward pass unless the plan says dp_overlap=off;
    Megatron-LM does neither unless told (--overlap-grad-reduce and --overlap-param-gather
    both default to False, and the second needs the first and a sharded optimizer). A plan
    without data-parallel replicas (dp x cp = 1, no expert data parallelism) has nothing to
    overlap and gets neither flag."""
    p = inp.plan
    replicas = max(p.dp * p.cp, p.expert_dp if inp.model.moe is not None else 1)
    if not p.dp_overlap or replicas == 1:
        return []
    out: Flags = [("--overlap-grad-reduce", None)]
    if p.zero >= 1:
        out.append(("--overlap-param-gather", None))
    return out


def _batch_flags(inp: ExportInputs) -> Flags:
    wl = inp.workload
    assert inp.training
    return [("--micro-batch-size", str(inp.plan.mbs)),
            ("--global-batch-size", str(wl.global_batch_size)),  # type: ignore[union-attr]
            ("--seq-length", str(wl.seq_len))]  # type: ignore[union-attr]


def _model_flags(m: ModelSpec, inp: ExportInputs) -> Flags:
    out: Flags = [("--num-layers", str(m.num_layers)), ("--hidden-size", str(m.hidden_size)),
                  ("--ffn-hidden-size", str(m.ffn_hidden_size)),
                  ("--num-attention-heads", str(m.num_attention_heads))]
    if m.head_dim is not None and m.mla is None and m.head_dim * m.num_attention_heads != m.hidden_size:
        out.append(("--kv-channels", str(m.head_dim)))
    if m.mla is None and m.kv_heads != m.num_attention_heads:
        out += [("--group-query-attention", None), ("--num-query-groups", str(m.kv_heads))]
    out += _position_flags(m, inp)
    out += _window_flags(m)
    out += _activation_flags(m)
    if m.norm == Norm.RMSNORM:
        out.append(("--normalization", "RMSNorm"))
    if not m.tied_embeddings:
        out.append(("--untie-embeddings-and-output-weights", None))
    if not m.linear_bias:
        out.append(("--disable-bias-linear", None))
    if m.embedding_norm:
        raise refuse("Megatron-LM", f"'{m.name}' has a norm after the embedding (BLOOM-style); "
                                    "Megatron-LM's GPT model has no flag for it")
    if m.mtp_layers:
        # MTP modules on the last pipeline stage (Megatron-Core MultiTokenPredictionBlock)
        out.append(("--mtp-num-layers", str(m.mtp_layers)))
    return out + _mla_flags(m) + _moe_flags(m)


def _position_flags(m: ModelSpec, inp: ExportInputs) -> Flags:
    kind = {Positional.LEARNED: "learned_absolute", Positional.ROPE: "rope",
            Positional.NONE: "none"}.get(m.positional)
    if kind is None:
        raise refuse("Megatron-LM", f"positional scheme '{m.positional.value}' of '{m.name}' has "
                     "no --position-embedding-type value (learned_absolute, rope, none)")
    seq = inp.workload.seq_len  # type: ignore[union-attr]
    if m.max_position_embeddings < seq:
        raise refuse("Megatron-LM", f"--seq-length {seq} exceeds the model's "
                     f"max_position_embeddings {m.max_position_embeddings} (validate_args asserts "
                     "max_position_embeddings >= seq_length)")
    out: Flags = [("--max-position-embeddings", str(m.max_position_embeddings))]
    if kind != "learned_absolute":
        out.append(("--position-embedding-type", kind))
    return out


def _window_flags(m: ModelSpec) -> Flags:
    """Sliding-window attention: --window-size LEFT,RIGHT (causal: right 0) with the window as
    the model states it, as NVIDIA's GPT-OSS scripts pass Hugging Face's sliding_window 128
    (`--window-size 128,0`), and --window-attn-skip-freq N, one full-attention layer after N-1
    windowed ones (arguments.py), which is global_attention_every."""
    if m.sliding_window is None:
        return []
    out: Flags = [("--window-size", f"{m.sliding_window},0")]
    if m.global_attention_every is not None:
        out.append(("--window-attn-skip-freq", str(m.global_attention_every)))
    return out


def _activation_flags(m: ModelSpec) -> Flags:
    if m.activation == Activation.GELU:
        return []
    flag = {Activation.SWIGLU: "--swiglu", Activation.SQUARED_RELU: "--squared-relu"}.get(m.activation)
    if flag is None:
        raise refuse("Megatron-LM", f"activation '{m.activation.value}' of '{m.name}' has no flag "
                     "(gelu is the default; --swiglu, --squared-relu)")
    return [(flag, None)]


def _mla_flags(m: ModelSpec) -> Flags:
    if m.mla is None:
        return []
    a = m.mla
    out: Flags = [("--multi-latent-attention", None)]
    if a.q_lora_rank_dim is not None:
        out.append(("--q-lora-rank", str(a.q_lora_rank_dim)))
    return out + [("--kv-lora-rank", str(a.kv_lora_rank_dim)),
                  ("--qk-head-dim", str(a.qk_nope_head_dim)),
                  ("--qk-pos-emb-head-dim", str(a.qk_rope_head_dim)),
                  ("--v-head-dim", str(a.v_head_dim))]


def _moe_flags(m: ModelSpec) -> Flags:
    if m.moe is None:
        return []
    e = m.moe
    out: Flags = [("--num-experts", str(e.num_experts)), ("--moe-router-topk", str(e.top_k)),
                  ("--moe-ffn-hidden-size", str(e.expert_ffn_hidden_size))]
    if e.num_shared_experts:
        # "total ffn hidden size" of all shared experts (the flag's help text)
        out.append(("--moe-shared-expert-intermediate-size", str(e.num_shared_experts * e.shared_ffn)))
    if not all(m.moe_layer_mask):
        out.append(("--moe-layer-freq", moe_layer_pattern(m.moe_layer_mask)))
    if e.capacity_factor is not None:
        out.append(("--moe-expert-capacity-factor", repr(e.capacity_factor)))
    if e.route_groups is not None and e.route_group_topk is not None:
        # group-limited routing (DeepSeek-V3's node-limited routing), part of the model
        out += [("--moe-router-num-groups", str(e.route_groups)),
                ("--moe-router-group-topk", str(e.route_group_topk))]
    return out


def moe_layer_pattern(mask: tuple[bool, ...]) -> str:
    """Run-length list expression for --moe-layer-freq, e.g. ([0]*3+[1]*58)."""
    runs: list[tuple[int, int]] = []
    for bit in (int(b) for b in mask):
        if runs and runs[-1][0] == bit:
            runs[-1] = (bit, runs[-1][1] + 1)
        else:
            runs.append((bit, 1))
    return "(" + "+".join(f"[{b}]*{n}" for b, n in runs) + ")"


BLACKWELL_DEVICES = ("b200", "gb200", "b300", "gb300")
"""Device names (prefixes) that run MXFP8: Transformer Engine's MXFP8BlockScaling needs
Blackwell tensor cores (TE docs, "Using FP8 with Transformer Engine": MXFP8 on Blackwell)."""


def fp8_recipe(device_name: str) -> tuple[str, str]:
    """(--fp8-format, --fp8-recipe) whose casts match the estimate's: each GEMM operand is
    quantised in one pass that reads it once and writes two fp8 copies
    (cost_models/compute.py FP8_CAST_BYTES_PER_ELEMENT). MXFP8 computes its block scales in
    that pass, with E4M3 for every tensor (Megatron's DeepSeek-V3 GB200 guide: `--fp8-recipe
    mxfp8 --fp8-format e4m3`); before Blackwell, delayed scaling takes the scale from the amax
    history, also in one pass, with E4M3 forward and E5M2 gradients (`hybrid`, Transformer
    Engine's recommended format). Current (tensorwise) scaling would need an extra amax pass
    the estimate does not count."""
    name = device_name.lower()
    if name.startswith(BLACKWELL_DEVICES):
        return "e4m3", "mxfp8"
    return "hybrid", "delayed"


def _dtype_flags(inp: ExportInputs) -> Flags:
    dtype = inp.workload.dtype
    if dtype == DType.BF16:
        return [("--bf16", None)]
    if dtype == DType.FP16:
        return [("--fp16", None)]
    if dtype == DType.FP32:
        return []
    if dtype == DType.FP8:
        # Transformer Engine's FP8 autocast around bf16 parameters, as the estimate assumes
        # (attention core, LM head and router stay bf16: Roofline.high_precision)
        fmt, recipe = fp8_recipe(inp.cluster.device.name)
        return [("--bf16", None), ("--fp8-format", fmt), ("--fp8-recipe", recipe)]
    if dtype == DType.FP4:
        # Transformer Engine's NVFP4BlockScaling around bf16 parameters (E2M1 values, E4M3
        # scales per 16 elements), on Blackwell only; Megatron's _add_transformer_engine_args
        # at the commit in options/megatron.toml: --fp4-format {e2m1}, --fp4-recipe {nvfp4,custom}
        return [("--bf16", None), ("--fp4-format", "e2m1"), ("--fp4-recipe", "nvfp4")]
    raise refuse("Megatron-LM", f"dtype {dtype.value}: meshplan prints Megatron's bf16, fp16, fp8, "
                 "fp4 and fp32 modes only (tf32 is not a Megatron-LM training mode)")


def export_megatron(inp: ExportInputs) -> str:
    """A shell command: torchrun over the plan's devices running pretrain_gpt.py with the flags."""
    flags = megatron_flags(inp)
    p = inp.plan
    env = ""
    if (p.tp > 1 or p.cp > 1) and p.zero < 2:
        # validate_args asserts CUDA_DEVICE_MAX_CONNECTIONS=1 with TP or CP before Blackwell
        # (Megatron-FSDP asserts the opposite, so it is left unset there).
        env = "CUDA_DEVICE_MAX_CONNECTIONS=1 "
    lines = [f"# {h}" for h in inp.header(ENGINE)]
    lines += ["# add your data, tokenizer, optimizer and checkpoint flags; run on every node "
              "with its --node-rank and the rendezvous flags of torchrun",
              f"{env}torchrun --nnodes {inp.nodes} --nproc-per-node {inp.devices_per_node_used} "
              "pretrain_gpt.py \\"]
    body = [f"    {flag}" + (f" {_quote(value)}" if value is not None else "") for flag, value in flags]
    lines += [b + " \\" for b in body[:-1]] + body[-1:]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """Single-quote values with shell metacharacters ( | * [ ] )."""
    return f"'{value}'" if any(c in value for c in "|*()[]") else value
