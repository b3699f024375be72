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
- SGLang, ep > tp: with --enable-dp-attention, --tp-size is the engine's whole GPU count and
  --dp-size the attention's data-parallel groups inside it ("refers to attention DP within
  those tp_size GPUs", same file), so ep = tp x dp maps to --tp-size ep --dp-size dp
  --enable-dp-attention --ep-size ep, with pp = 1; ep spanning fewer replicas than dp would
  need several engines and is refused.
- vLLM: --data-parallel-size replicas share the expert layers (they form a DP x TP group) and
  --enable-expert-parallel makes EP span all DP x TP ranks (docs: data parallel deployment),
  so an MoE plan maps when ep is 1 or tp with dp = 1, or ep = tp x dp with pp = 1; other MoE
  plans are refused.
"""

from __future__ import annotations

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
    wide = moe is not None and p.ep > p.tp
    if wide:
        _check_wide(inp, "vLLM")
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
    return out + [("--max-num-seqs", str(batch)), ("--max-model-len", str(context)),
                  *_chunk(inp, "--max-num-batched-tokens"),
                  ("--dtype", torch_dtype_name(inp.workload.dtype, "vLLM"))]


def _check_wide(inp: ExportInputs, engine: str) -> None:
    """Refuse a plan whose experts spread over replicas unless one engine expresses it: the
    expert group spans every replica (ep = tp x dp) and pp = 1 (module docstring)."""
    p = inp.plan
    if p.ep != p.tp * p.dp:
        raise refuse(engine, f"ep={p.ep} spreads the experts over {p.ep // p.tp} of the "
                     f"dp={p.dp} replicas; one {engine} engine spreads them over all of its "
                     f"data-parallel ranks: use ep={p.tp * p.dp} (--fix ep={p.tp * p.dp}), or "
                     f"launch {p.dp * p.tp // p.ep} engines of dp={p.ep // p.tp}")
    if p.pp > 1:
        raise refuse(engine, f"pp={p.pp} with experts over replicas: meshplan has not checked "
                     f"{engine}'s data-parallel attention with pipeline stages; use pp=1")


def sglang_flags(inp: ExportInputs, *, model_path: str) -> Flags:
    """Flags of `python -m sglang.launch_server` for `inp` (model path included)."""
    require_inference(inp, "SGLang")
    p = inp.plan
    batch, context = _limits(inp)
    if inp.model.moe is not None and p.ep > p.tp:
        _check_wide(inp, "SGLang")
        # with data-parallel attention the cap is the engine's, split over its dp workers
        # (SGLang sizes each worker's request pool as max_running_requests // dp_size)
        batch *= p.dp
        parallel: Flags = [("--tp-size", str(p.ep)), ("--pp-size", str(p.pp)),
                           ("--dp-size", str(p.dp)), ("--enable-dp-attention", None),
                           ("--ep-size", str(p.ep))]
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
