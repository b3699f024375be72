"""vLLM and SGLang serve commands for an inference plan (`--to vllm`, `--to sglang`).

Decides: the parallel sizes, the batch cap (max concurrent sequences = the workload's batch per
replica), the context length (prompt + output tokens) and, when the workload prefills in chunks,
the chunk's token budget, with names from `options/vllm.toml` and `options/sglang.toml`. Does
not decide the checkpoint: pass `model_path` (the CLI's --model-path); without it the command
reads the shell variable MODEL_PATH.

meshplan's inference plans keep dp independent replicas of tp x pp devices, with expert
parallelism folded into the TP group (ep divides tp; each expert split over tp/ep ranks):
- SGLang: --dp-size is "the number of data-parallel replicas of the model" and MoE layers run
  over ep_size expert ranks x moe_tp_size = tp_size / ep_size (sglang/srt/arg_groups/fields/
  parallel.py, 0.5.23), the same layout: every plan maps.
- vLLM: --data-parallel-size replicas share the expert layers (they form a DP x TP group) and
  --enable-expert-parallel makes EP span all DP x TP ranks (docs: data parallel deployment),
  so an MoE plan maps only when ep is 1 or tp, and dp is 1; other MoE plans are refused.
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
    if moe is not None and p.dp > 1:
        raise refuse("vLLM", f"dp={p.dp} on an MoE model: vLLM's --data-parallel-size joins the "
                     "replicas' expert layers into one DP x TP group, while the plan keeps "
                     f"{p.dp} independent replicas; launch {p.dp} servers of tp={p.tp} instead, "
                     "or export --to sglang")
    if moe is not None and p.ep not in (1, p.tp):
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


def sglang_flags(inp: ExportInputs, *, model_path: str) -> Flags:
    """Flags of `python -m sglang.launch_server` for `inp` (model path included)."""
    require_inference(inp, "SGLang")
    p = inp.plan
    batch, context = _limits(inp)
    return [("--model-path", model_path), ("--tp-size", str(p.tp)), ("--pp-size", str(p.pp)),
            ("--dp-size", str(p.dp)), ("--ep-size", str(p.ep)),
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
