"""A prefill/decode disaggregated deployment (`search --mode inference --disaggregate`) as
SGLang launch commands: the prefill servers, the decode servers and the router between them.

Decides: each pool's `python -m sglang.launch_server` flags (the single-plan export's,
`serving.sglang_flags`, for one instance of the pool at its batch) plus `--disaggregation-mode
prefill` or `decode` (sglang/srt/arg_groups/fields/disagg.py, 0.5.23: "prefill" for a
prefill-only server, "decode" for a decode-only one; KV moves over the default transfer
backend, mooncake), and the router, sglang-router 0.3.2's `python -m
sglang_router.launch_router --pd-disaggregation` with one `--prefill URL BOOTSTRAP_PORT` per
prefill server and one `--decode URL` per decode server (sglang_router/router_args.py). Each
server listens on launch_server's default port, 30000, and a prefill server's KV bootstrap on
its default, 8998 (`disaggregation_bootstrap_port`); hosts are placeholders.

With the experts over replicas, --deepep-mode auto resolves by the server's role: normal
kernels on the prefill servers and low-latency kernels on the decode servers, the two
all-to-alls the estimate scores for the two pools.

vLLM's disaggregated prefill needs a KV connector configuration and a proxy that meshplan has
not checked: refused (exit 4), as are the training formats.
"""

from __future__ import annotations

from typing import Any

from planner.errors import SpecError
from planner.exports.common import (SAVE_HINT, ExportInputs, _first_line, _plan_of, read_entry,
                                    refuse)
from planner.exports.serving import MODEL_VAR, _model_note, _render, sglang_flags
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.workload import InferenceWorkload

SERVER_PORT = 30000
"""`python -m sglang.launch_server`'s default --port (ServerArgs.port)."""
BOOTSTRAP_PORT = 8998
"""A prefill server's default KV bootstrap port (ServerArgs.disaggregation_bootstrap_port)."""
ROUTER = "python -m sglang_router.launch_router"


def _pool_inputs(pool: Any, model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                 rank: int, *, prefill: bool) -> tuple[ExportInputs, int]:
    """One instance of a pool as a single-plan export's inputs (its plan on its devices, at its
    batch: a prefill batch's prompts; a decode instance's sequences, with no prefill chunk),
    and the pool's instance count."""
    if not isinstance(pool, dict):
        raise SpecError(f"a pool of the disaggregated result is not an object; {SAVE_HINT}")
    plan = _plan_of(pool.get("plan"))
    try:
        g, batch, n = (int(pool[k]) for k in ("devices_per_instance", "batch_per_instance",
                                              "instances"))
    except (KeyError, TypeError, ValueError) as e:
        raise SpecError(f"a pool of the disaggregated result does not validate "
                        f"({_first_line(e)}); {SAVE_HINT}") from None
    if n < 1 or plan.devices != g:
        raise SpecError(f"a pool of the disaggregated result is inconsistent (plan on "
                        f"{plan.devices} devices, {g} per instance, {n} instances); {SAVE_HINT}")
    update: dict[str, Any] = {"batch_size": batch}
    if not prefill:
        update["prefill_chunk_tokens"] = None
    return ExportInputs(plan=plan, model=model, cluster=cluster,
                        workload=workload.model_copy(update=update), devices=g, rank=rank), n


def export_disaggregated(result: dict[str, Any], fmt: str, *, rank: int = 0,
                         model_path: str | None = None) -> str:
    """The launch commands of deployment `result['top'][rank]` for `fmt` (sglang only)."""
    if fmt != "sglang":
        engine = {"vllm": "vLLM"}.get(fmt, fmt)
        reason = ("its disaggregated prefill runs through a KV-transfer connector and a proxy "
                  "that meshplan has not checked; export --to sglang"
                  if fmt == "vllm" else
                  "it is a serving deployment and this export writes a training launch; "
                  "export it --to sglang")
        raise refuse(engine, reason)
    model, cluster, workload, _, dep = read_entry(result, rank=rank)
    if not isinstance(workload, InferenceWorkload) or not isinstance(dep, dict):
        raise SpecError(f"the disaggregated result's workload or deployment does not validate; "
                        f"{SAVE_HINT}")
    read = [_pool_inputs(dep.get(role), model, cluster, workload, rank,
                         prefill=role == "prefill") for role in ("prefill", "decode")]
    pools, counts = [inp for inp, _ in read], [n for _, n in read]
    devices = sum(inp.devices * n for inp, n in read)
    path = model_path or MODEL_VAR
    wl = workload
    head = [f"# meshplan export --to sglang: {model.name} on {devices}x "
            f"{cluster.device.name} ({cluster.name}), prefill/decode disaggregated, batch "
            f"{wl.batch_size}, prompt {wl.prompt_len} + output {wl.output_len} tokens, "
            f"{wl.dtype.value}",
            f"# deployment (rank {rank}): prefill {counts[0]} x {pools[0].devices} GPUs "
            f"{pools[0].plan_string}, {pools[0].workload.batch_size} prompts per batch; decode "
            f"{counts[1]} x {pools[1].devices} GPUs {pools[1].plan_string}, "
            f"{pools[1].workload.batch_size} sequences each",
            *_model_note(model_path, pools[0])]
    blocks = ["\n".join(head)]
    for role, inp, n in zip(("prefill", "decode"), pools, counts):
        note = [f"# {role} servers: start one on each of the {n} {role} instance(s) of "
                f"{inp.devices} GPUs, hosts {role.upper()}_1 to {role.upper()}_{n}"]
        if inp.nodes > 1:
            note.append(f"# each instance spans {inp.nodes} nodes: add --nnodes {inp.nodes}, "
                        "--node-rank and --dist-init-addr on each node")
        elif inp.devices < cluster.devices_per_node:
            boot = " and --disaggregation-bootstrap-port" if role == "prefill" else ""
            note.append(f"# instances sharing a node: give each its GPUs (CUDA_VISIBLE_DEVICES) "
                        f"and its own --port{boot}, and the router those ports")
        flags = [*sglang_flags(inp, model_path=path), ("--disaggregation-mode", role)]
        blocks.append(_render(note, "python -m sglang.launch_server", flags).rstrip("\n"))
    router = [("--pd-disaggregation", None),
              *[("--prefill", f"http://PREFILL_{i}:{SERVER_PORT} {BOOTSTRAP_PORT}")
                for i in range(1, counts[0] + 1)],
              *[("--decode", f"http://DECODE_{i}:{SERVER_PORT}") for i in range(1, counts[1] + 1)]]
    blocks.append(_render(["# router (sglang-router): requests go to it; it pairs a prefill "
                           "server with a decode server for each"], ROUTER, router).rstrip("\n"))
    return "\n\n".join(blocks) + "\n"
