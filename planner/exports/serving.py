"""vLLM and SGLang serve commands for an inference plan (`--to vllm`, `--to sglang`).

Decides: the parallel sizes, the batch cap (max concurrent sequences = the workload's batch per
replica), the context length (prompt + output tokens) and, when the workload prefills in chunks,
the chunk's token budget, with names from `options/vllm.toml` and `options/sglang.toml`. Does
not decide the checkpoint: pass `model_path` (the CLI's --model-path); without it the command
reads the shell variable MODEL_PATH.

meshplan's inference plans keep dp replicas of tp x pp devices, with expert parallelism
either folded into the TP group (ep divides tp; each expert split over tp/ep ranks) or, when
ep > tp, spread over ep/tp replicas whose attention stays data-parallel:
- SGLang, ep <= tp: --dp-size is "the number of data-parallel replicas of the model" and MoE
  layers run over ep_size expert ranks x moe_tp_size = tp_size / ep_size (sglang/srt/arg_groups/
  fields/parallel.py, 0.5.23), the same layout: every such plan maps.
- SGLang, ep > tp (experts over g = ep/tp replicas): one engine of ep GPUs, --tp-size ep,
  whose attention runs data-parallel over --attn-dp-size g groups of tp GPUs (the 0.5.23
  spelling; --dp-size N --enable-dp-attention is deprecated there), --ep-size ep, and
  --dp-size dp/g such engines. --moe-a2a-backend deepep with --deepep-mode auto runs DeepEP's
  normal kernels for prefill batches and its low-latency kernels for decode batches
  (sglang/srt/layers/moe/utils.py DeepEPMode.resolve), the two all-to-alls the estimate scores;
  SGLang's default ("none") gathers the tokens instead. The request cap is the engine's: each
  attention-DP worker gets max_running_requests // attn_dp_size. ep_overlap=on adds
  --enable-two-batch-overlap; redundant expert slots (ep not dividing the experts,
  cost_models.inference.expert_slots) add --ep-num-redundant-experts R --enable-eplb. pp = 1
  only (pipeline stages with attention DP unchecked).
- vLLM: --data-parallel-size replicas share the expert layers (they form a DP x TP group) and
  --enable-expert-parallel makes EP span all DP x TP ranks (docs: data parallel deployment),
  so an MoE plan maps when ep is 1 or tp with dp = 1, or ep = tp x dp with pp = 1; other MoE
  plans are refused. For ep = tp x dp the export adds --all2all-backend deepep_low_latency
  (vLLM's default, allgather_reducescatter, is no all-to-all): the decode all-to-all the
  estimate scores, which vLLM then uses for prefill too (one backend per engine). ep_overlap=on
  adds --enable-dbo (dual batch overlap, vllm/config/parallel.py, 0.34.0), and redundant
  expert slots --enable-eplb, whose default redundant count is the plan's minimum.
"""

from __future__ import annotations

from cost_models.inference import experts_over_replicas, redundant_experts
from planner.exports.common import (ExportInputs, refuse, require_inference,
                                    torch_dtype_name)
from planner.workload import InferenceWorkload

Flags = list[tuple[str, str | None]]
MODEL_VAR = '"$MODEL_PATH"'


def _limits(inp: ExportInputs) -> tuple[int, int]:
    """(max concurrent sequences per replica, context length in tokens)."""
    wl = inp.workload
    assert isinstance(wl, InferenceWorkload)
    per_replica = -(-wl.batch_size // inp.plan.dp)
    return per_replica, wl.prompt_len + wl.output_len


def _chunk(inp: ExportInputs, flag: str) -> Flags:
    """The engine's chunked-prefill token budget when the workload sets one
    (`prefill_chunk_tokens`): vLLM's --max-num-batched-tokens, SGLang's --chunked-prefill-size."""
    wl = inp.workload
    assert isinstance(wl, InferenceWorkload)
    return [] if wl.prefill_chunk_tokens is None else [(flag, str(wl.prefill_chunk_tokens))]


def vllm_flags(inp: ExportInputs) -> Flags:
    """Flags of `vllm serve MODEL` for `inp`.

    Raises:
        UnsupportedPlanError: a training plan, or an MoE layout vLLM cannot express.
    """
    require_inference(inp, "vLLM")
    p, moe = inp.plan, inp.model.moe
    wide = experts_over_replicas(inp.model, p)
    if wide:
        _check_wide(inp, "vLLM")
        if p.ep != p.tp * p.dp:
            raise refuse("vLLM", f"ep={p.ep} spreads the experts over {p.ep // p.tp} of the "
                         f"dp={p.dp} replicas; one vLLM engine spreads them over all of its "
                         f"data-parallel ranks: use ep={p.tp * p.dp} (--fix ep={p.tp * p.dp}), "
                         f"launch {p.dp * p.tp // p.ep} engines of dp={p.ep // p.tp}, or "
                         "export --to sglang")
    elif moe is not None and p.dp > 1:
        raise refuse("vLLM", f"dp={p.dp} on an MoE model: vLLM's --data-parallel-size joins the "
                     "replicas' expert layers into one DP x TP group, while the plan keeps "
                     f"{p.dp} independent replicas; launch {p.dp} servers of tp={p.tp} instead, "
                     "or export --to sglang")
    if moe is not None and not wide and p.ep not in (1, p.tp):
        raise refuse("vLLM", f"ep={p.ep} with tp={p.tp}: --enable-expert-parallel spreads the "
                     "experts over all TP x DP ranks (ep = tp here); vLLM has no expert TP size "
                     "to split each expert over tp/ep ranks")
    batch, context = _limits(inp)
    out: Flags = [("--tensor-parallel-size", str(p.tp)), ("--pipeline-parallel-size", str(p.pp)),
                  ("--data-parallel-size", str(p.dp))]
    if moe is not None and p.ep > 1:
        out.append(("--enable-expert-parallel", None))
    if wide:
        out.append(("--all2all-backend", "deepep_low_latency"))
        if redundant_experts(inp.model, p):
            # EPLB's default redundant count is the minimum that makes E + R divisible by the
            # EP size (ParallelConfig.compute_eplb_num_redundant_experts): the plan's own
            out.append(("--enable-eplb", None))
    if p.ep_overlap:
        out.append(("--enable-dbo", None))
    return out + [("--max-num-seqs", str(batch)), ("--max-model-len", str(context)),
                  *_chunk(inp, "--max-num-batched-tokens"),
                  ("--dtype", torch_dtype_name(inp.workload.dtype, "vLLM"))]


def _check_wide(inp: ExportInputs, engine: str) -> None:
    """Refuse a plan whose experts spread over replicas with pipeline stages (module
    docstring)."""
    p = inp.plan
    if p.pp > 1:
        raise refuse(engine, f"pp={p.pp} with experts over replicas: meshplan has not checked "
                     f"{engine}'s data-parallel attention with pipeline stages; use pp=1")


def sglang_flags(inp: ExportInputs, *, model_path: str) -> Flags:
    """Flags of `python -m sglang.launch_server` for `inp` (model path included)."""
    require_inference(inp, "SGLang")
    p = inp.plan
    batch, context = _limits(inp)
    if experts_over_replicas(inp.model, p):
        _check_wide(inp, "SGLang")
        g = p.ep // p.tp                     # replicas (attention-DP groups) per engine
        batch *= g                           # the engine's cap, split over its g workers
        parallel: Flags = [("--tp-size", str(p.ep)), ("--pp-size", str(p.pp)),
                           ("--dp-size", str(p.dp // g)), ("--attn-dp-size", str(g)),
                           ("--ep-size", str(p.ep)), ("--moe-a2a-backend", "deepep"),
                           ("--deepep-mode", "auto")]
        if p.ep_overlap:
            parallel.append(("--enable-two-batch-overlap", None))
        redundant = redundant_experts(inp.model, p)
        if redundant:
            parallel += [("--ep-num-redundant-experts", str(redundant)), ("--enable-eplb", None)]
    else:
        parallel = [("--tp-size", str(p.tp)), ("--pp-size", str(p.pp)),
                    ("--dp-size", str(p.dp)), ("--ep-size", str(p.ep))]
    return [("--model-path", model_path), *parallel,
            ("--max-running-requests", str(batch)), ("--context-length", str(context)),
            *_chunk(inp, "--chunked-prefill-size"),
            ("--dtype", torch_dtype_name(inp.workload.dtype, "SGLang"))]


def _render(lines: list[str], command: str, flags: Flags) -> str:
    body = [f"    {f}" + (f" {v}" if v is not None else "") for f, v in flags]
    out = lines + [command + " \\"] + [b + " \\" for b in body[:-1]] + body[-1:]
    return "\n".join(out) + "\n"


def _model_note(model_path: str | None, inp: ExportInputs) -> list[str]:
    if model_path is not None:
        return []
    return [f"# MODEL_PATH: the Hugging Face id or local checkpoint of {inp.model.name} "
            "(or pass --model-path to meshplan export)"]


def export_vllm(inp: ExportInputs, *, model_path: str | None = None) -> str:
    flags = vllm_flags(inp)
    head = [f"# {h}" for h in inp.header("vllm")] + _model_note(model_path, inp)
    if inp.nodes > 1:
        head.append(f"# spans {inp.nodes} nodes: start a Ray cluster over them first (vLLM "
                    "multi-node serving)")
    return _render(head, f"vllm serve {model_path or MODEL_VAR}", flags)


def export_sglang(inp: ExportInputs, *, model_path: str | None = None) -> str:
    flags = sglang_flags(inp, model_path=model_path or MODEL_VAR)
    head = [f"# {h}" for h in inp.header("sglang")] + _model_note(model_path, inp)
    if inp.nodes > 1:
        head.append(f"# spans {inp.nodes} nodes: add --nnodes {inp.nodes}, --node-rank and "
                    "--dist-init-addr on each node")
    return _render(head, "python -m sglang.launch_server", flags)
