"""meshplan's command line: parse, call the planner API, render with rich.

This is the only place where errors become output: a `PlannerError` prints one line
(`error: ...`) on stderr and exits with its code (2 bad input, 3 nothing feasible); anything
else exits 1 with a one-line notice, and `--debug` shows the traceback instead.

Shared pieces (the app, consoles, error handling, options) live in `meshplan_cli.common`;
commands beyond the core ones live in their own modules of `meshplan_cli`, registered at the
bottom of this file.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import planner
from planner import presets
from planner.summary import GIB, cluster_summary, device_summary, model_summary
from meshplan_cli.common import (  # noqa: F401 - re-exported for tests and entry point
    app,
    out,
    err,
    handle_errors,
    print_json,
    _fmt_count,
    JsonOpt,
    DebugOpt,
    ModelOpt,
    ClusterOpt,
    GpusOpt,
    NodesOpt,
    BatchOpt,
    SeqOpt,
    DtypeOpt,
    GradDtypeOpt,
    OptimizerOpt,
    check_mode,
    check_mode_options,
    inference_workload,
    training_workload,
)

# ----- presets -----------------------------------------------------------------------------
@app.command("presets")
@handle_errors
def presets_cmd(
    kind: Annotated[str | None, typer.Argument(help="models, devices or clusters (default: all)")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the built-in models, devices and clusters."""
    kinds = presets.KINDS
    if kind is not None:
        plural = {"models": "model", "devices": "device", "clusters": "cluster"}
        if kind not in plural:
            raise planner.SpecError(f"unknown preset kind '{kind}'; use models, devices or clusters")
        kinds = (plural[kind],)  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    for k in kinds:
        for name in presets.list_presets(k):
            rows.append(_preset_row(k, name))
    if as_json:
        print_json(rows)
        return
    for k in kinds:
        table = Table(title=f"{k}s", title_justify="left")
        sub = [r for r in rows if r["kind"] == k]
        # Descriptions are in `meshplan show` and --json; the table keeps the numbers.
        cols = [c for c in sub[0] if c not in ("kind", "description")] if sub else ["name"]
        for c in cols:
            table.add_column(c, no_wrap=True)
        for r in sub:
            table.add_row(*(escape(str(r[c])) for c in cols))
        out.print(table)


def _preset_row(kind: str, name: str) -> dict[str, Any]:
    if kind == "model":
        m = presets.load_model(name)
        return {"kind": kind, "name": name, "params": _fmt_count(m.params),
                "active": _fmt_count(m.active_params), "layers": m.num_layers,
                "hidden": m.hidden_size, "attention": m.attention_kind,
                "moe": f"{m.moe.num_experts}e top{m.moe.top_k}" if m.moe else "-",
                "description": m.description}
    if kind == "device":
        d = presets.load_device(name)
        return {"kind": kind, "name": name,
                "bf16_tflops": f"{d.peak_flops(planner.DType.BF16) / 1e12:.0f}",
                "memory_gib": f"{d.memory_bytes / GIB:.0f}",
                "hbm_tb_s": f"{d.memory_bandwidth_bytes_per_s / 1e12:.2f}",
                "description": d.description}
    c = presets.load_cluster(name)
    return {"kind": kind, "name": name, "device": c.device.name,
            "per_node": c.devices_per_node,
            # per GPU toward the rest of its node (a full mesh: all of its links together)
            "intra_gb_s": f"{c.intra_node.group_bandwidth(c.devices_per_node) / 1e9:.0f}",
            "inter_gb_s": f"{c.inter_node.bandwidth_bytes_per_s / 1e9:.1f}",
            "description": c.description}


# ----- show --------------------------------------------------------------------------------
@app.command("show")
@handle_errors
def show_cmd(
    model: Annotated[str | None, typer.Argument(
        help="model preset, meshplan model file, or HF config.json")] = None,
    model_opt: Annotated[str | None, typer.Option(
        "--model", "-m", help="the model, as the other commands name it (instead of the argument)")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="sequence length for FLOPs")] = 2048,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a model's dimensions, parameters, FLOPs per token and memory."""
    spec = presets.load_model(_one_name("show", "model", model, model_opt, "--model"))
    data = model_summary(spec, seq_len=seq_len)
    if as_json:
        print_json(data)
        return
    _render_model(data)


def _one_name(command: str, what: str, arg: str | None, opt: str | None, flag: str) -> str:
    """The one name a show-style command was given, as its argument or as `flag` (the option
    the planning commands use); a usage error (exit 2) when there is none or two differ."""
    if arg is not None and opt is not None and arg != opt:
        raise planner.SpecError(f"two {what}s given ('{arg}' and {flag} '{opt}'): give one, "
                           f"e.g. 'meshplan {command} {opt}'")
    name = arg if arg is not None else opt
    if name is None:
        raise planner.SpecError(f"no {what} given: 'meshplan {command} NAME' or 'meshplan {command} "
                           f"{flag} NAME' ('meshplan presets' lists them)")
    return name


def _render_model(d: dict[str, Any]) -> None:
    out.print(f"[bold]{escape(d['name'])}[/bold]  {escape(d['description'])}")
    if d["source"]:
        out.print(f"source: {d['source']}", markup=False)
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="cyan")
    t.add_column()
    for k, v in d["dimensions"].items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
        t.add_row(k, escape(str(v)))
    t.add_row("parameters", f"{d['params']:,} ({_fmt_count(d['params'])})")
    t.add_row("active parameters/token", f"{d['active_params']:,} ({_fmt_count(d['active_params'])})")
    s = d["seq_len"]
    t.add_row(f"forward FLOPs/token (s={s})", f"{d['forward_flops_per_token']:.4g}")
    t.add_row("  without attention scores", f"{d['forward_flops_per_token_no_attention']:.4g}")
    if d.get("mtp_layers"):
        t.add_row("MTP modules (training only)",
                  f"{d['mtp_layers']} ({_fmt_count(d['mtp_params'])} params, not counted above)")
        t.add_row("training FLOPs/token (3x fwd, with MTP)", f"{d['training_flops_per_token']:.4g}")
    else:
        t.add_row("training FLOPs/token (3x fwd)", f"{d['training_flops_per_token']:.4g}")
    t.add_row("KV cache/token (bf16)", f"{d['kv_cache_bytes_per_token']:,} B")
    for dtype, mem in d["memory"].items():
        t.add_row(f"weights {dtype}", f"{mem['weights_gib']:.1f} GiB")
    t.add_row(f"training states ({d['optimizer']}, bf16)",
              f"{d['memory']['bf16']['training_states_gib']:.1f} GiB unsharded (fp32 gradients)")
    out.print(t)
    if d["notes"]:
        out.print(f"[yellow]notes:[/yellow] {escape(d['notes'])}")


# ----- evaluate ----------------------------------------------------------------------------
@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    global_batch: Annotated[int | None, typer.Option("--global-batch", min=1, help="sequences per step (training; required there)")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", min=1, help="tokens per sequence (training; required there)")] = None,
    plan: Annotated[str, typer.Option("--plan", help="e.g. 'tp=8,pp=8,vpp=3,mbs=1,sp=on,recompute=selective,zero=1'; inference: tp, pp, dp, ep")] = "",
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    grad_dtype: GradDtypeOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="training or inference")] = "training",
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="concurrent sequences (inference)")] = None,
    prompt_len: Annotated[int | None, typer.Option("--prompt-len", min=1, help="prompt tokens per sequence (inference)")] = None,
    output_len: Annotated[int | None, typer.Option("--output-len", min=1, help="generated tokens per sequence (inference)")] = None,
    prefill_chunk: Annotated[int | None, typer.Option("--prefill-chunk", min=1, help="prefill at most this many prompt tokens at a time (inference)")] = None,
    disaggregate: Annotated[bool, typer.Option("--disaggregate", help="score a prefill pool and a decode pool of separate instances (inference; with --prefill-plan, --prefill-batch, --decode-plan)")] = False,
    prefill_plan: Annotated[str | None, typer.Option("--prefill-plan", help="one prefill instance's plan, e.g. 'tp=4,dp=8,ep=32' (--disaggregate)")] = None,
    prefill_batch: Annotated[int | None, typer.Option("--prefill-batch", min=1, help="prompts one prefill instance prefills at a time (--disaggregate)")] = None,
    prefill_instances: Annotated[int | None, typer.Option("--prefill-instances", min=1, help="prefill instances (--disaggregate; default: the fewest that keep up with decode)")] = None,
    decode_plan: Annotated[str | None, typer.Option("--decode-plan", help="one decode instance's plan, e.g. 'tp=4,ep=320' (--disaggregate)")] = None,
    decode_instances: Annotated[int | None, typer.Option("--decode-instances", min=1, help="decode instances sharing --batch (--disaggregate; default 1)")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="also list one micro-batch's operators on one device (training): each block's GEMMs, attention and memory-bound kernels, its communication, the head and embedding")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict the step time, throughput, MFU and memory of one training plan; with --mode
    inference, the TTFT, TPOT, tokens/s and memory of one serving plan (with --disaggregate,
    of separate prefill and decode pools)."""
    from planner.api import evaluate

    check_mode(mode)
    given = {"--global-batch": global_batch, "--seq-len": seq_len, "--grad-dtype": grad_dtype,
             "--batch": batch, "--prompt-len": prompt_len, "--output-len": output_len,
             "--prefill-chunk": prefill_chunk}
    pools = {"--prefill-plan": prefill_plan, "--prefill-batch": prefill_batch,
             "--prefill-instances": prefill_instances, "--decode-plan": decode_plan,
             "--decode-instances": decode_instances}
    deployment = disaggregate or any(v is not None for v in pools.values())
    if deployment and mode != "inference":
        raise planner.SpecError("--disaggregate and the pool options score a serving "
                                "deployment: use them with --mode inference")
    if mode == "inference":
        if explain:
            raise planner.SpecError("--explain lists a training plan's operators; leave it out "
                                    "with --mode inference")
        check_mode_options(mode, given, allowed=("--prefill-chunk",))
        if deployment:
            from meshplan_cli import disaggregation_cmd

            disaggregation_cmd.evaluate_disaggregated_cmd(
                model, cluster, plan, gpus, nodes, dtype, batch, prompt_len, output_len,  # type: ignore[arg-type]
                prefill_chunk, pools, disaggregate, as_json)
            return
        _evaluate_inference_cmd(model, cluster, plan, gpus, nodes, dtype, batch, prompt_len,  # type: ignore[arg-type]
                                output_len, prefill_chunk, as_json)
        return
    check_mode_options(mode, given, allowed=("--grad-dtype",))
    assert global_batch is not None and seq_len is not None
    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = training_workload(global_batch, seq_len, dtype, optimizer, grad_dtype)
    parsed = planner.parse_plan(plan, devices=n)
    est = evaluate(spec, clus, wl, parsed, devices=n)
    ex = None
    if explain:
        from planner.api import explain as explain_plan

        ex = explain_plan(spec, clus, wl, parsed, devices=n)
    if as_json:
        print_json(est.model_dump(mode="json")
                   | ({"explain": ex.model_dump(mode="json")} if ex is not None else {}))
        return
    render_estimate(est, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name})")
    if ex is not None:
        from meshplan_cli.explain_cmd import render_explanation

        render_explanation(ex)


def _evaluate_inference_cmd(model: str, cluster: str, plan: str, gpus: int | None,
                            nodes: int | None, dtype: str, batch: int, prompt_len: int,
                            output_len: int, prefill_chunk: int | None, as_json: bool) -> None:
    """`meshplan evaluate --mode inference`: one serving plan (planner.api.evaluate_inference)."""
    from planner.api import evaluate_inference

    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = inference_workload(batch, prompt_len, output_len, dtype, prefill_chunk)
    est = evaluate_inference(spec, clus, wl, plan, devices=n)
    if as_json:
        print_json(est.model_dump(mode="json"))
        return
    render_inference_estimate(
        est, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), batch {batch}, "
        f"prompt {prompt_len}, output {output_len} tokens"
        + (f", prefill chunks of {prefill_chunk}" if prefill_chunk else ""))


def _headline(title: str, plan: str, rows: list[tuple[str, str]]) -> None:
    """The title, the plan in full and a two-column table of headline figures."""
    out.print(f"[bold]{escape(title)}[/bold]")
    out.print(f"plan: {plan}", markup=False)
    head = Table(show_header=False, box=None)
    head.add_column(style="cyan")
    head.add_column()
    for label, value in rows:
        head.add_row(label, value)
    out.print(head)


def render_inference_estimate(est: Any, *, title: str) -> None:
    """Rich tables for one InferenceEstimate: headline, TTFT and TPOT parts, memory."""
    fit = ("[green]fits[/green]" if est.fits else "[red]does not fit[/red]")
    _headline(title, est.plan, [
        ("TTFT", f"{est.ttft_s * 1e3:.1f} ms (prefill, {est.prefill_bound}-bound)"),
        ("TPOT", f"{est.tpot_s * 1e3:.3f} ms per output token ({est.decode_bound}-bound)"),
        ("tokens/s", f"{est.tokens_per_s:,.0f} while decoding, {est.e2e_tokens_per_s:,.0f} "
                     f"with prefill ({est.batch_per_replica} sequences per replica)"),
        ("end to end", f"{est.e2e_s:.3f} s"),
        ("peak memory", f"{est.peak_memory_gib:.1f} / {est.capacity_gib:.1f} GiB, {fit}; "
                        f"at most {est.max_batch_size} sequences per replica")])
    for name, parts, total in (("time to first token (prefill)", est.ttft_breakdown, est.ttft_s),
                               ("time per output token (decode)", est.tpot_breakdown, est.tpot_s)):
        t = Table(title=name, title_justify="left")
        t.add_column("part")
        t.add_column("ms", justify="right")
        t.add_column("share", justify="right")
        for k, v in parts.items():
            t.add_row(k, f"{v * 1e3:.3f}", f"{v / total:.1%}" if total > 0 else "-")
        out.print(t)
    mt = Table(title="memory of the most loaded device", title_justify="left")
    mt.add_column("kind")
    mt.add_column("GiB", justify="right")
    for k in ("weights", "kv_cache", "workspace", "overhead"):
        mt.add_row(k, f"{getattr(est, k + '_gib'):.2f}")
    out.print(mt)
    for w in est.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)


def render_estimate(est: Any, *, title: str) -> None:
    """Rich tables for one Estimate: headline, time breakdown, memory."""
    fit = "[green]fits[/green]" if est.fits else f"[red]over by {est.over_memory_gib:.1f} GiB[/red]"
    _headline(title, est.plan, [
        ("step time", f"{est.step_time_s:.3f} s ({est.num_microbatches} micro-batches)"),
        ("tokens/s", f"{est.tokens_per_s:,.0f} ({est.tokens_per_s / est.devices:,.0f} per device)"),
        ("model TFLOP/s per device", f"{est.model_tflops_per_gpu:.1f} (MFU {est.mfu:.1%})"),
        ("hardware TFLOP/s per device", f"{est.hardware_tflops_per_gpu:.1f} (HFU {est.hfu:.1%})"),
        ("peak memory", f"{est.peak_memory_gib:.1f} / {est.capacity_gib:.1f} GiB, {fit}")])
    t = Table(title="time per step (exposed)", title_justify="left")
    t.add_column("part")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    for k, v in est.breakdown.items():
        if k == "offload" and ",offload=" not in est.plan:
            continue       # a plan without activation offloading (the JSON keeps the 0)
        t.add_row(k, f"{v:.4f}", f"{v / est.step_time_s:.1%}")
    mt = Table(title="memory of the most loaded device", title_justify="left")
    mt.add_column("kind")
    mt.add_column("GiB", justify="right")
    for k, v in est.memory_gib.items():
        mt.add_row(k, f"{v:.2f}")
    out.print(t)
    out.print(mt)
    for w in est.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)


# ----- search ------------------------------------------------------------------------------
def parse_fix(text: str) -> dict[str, object]:
    """--fix "tp=8,pp=8" -> plan fields held fixed (same syntax as --plan)."""
    from planner.plan import parse_plan_fields

    fields = parse_plan_fields(text)
    if "stage_layers" in fields:
        raise planner.SpecError("--fix cannot fix layers=; the search chooses the stage split")
    return fields


@app.command("search")
@handle_errors
def search_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    global_batch: Annotated[int | None, typer.Option("--global-batch", min=1, help="sequences per step (training; required there)")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", min=1, help="tokens per sequence (training; required there)")] = None,
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    grad_dtype: GradDtypeOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="how many plans to show")] = 5,
    fix: Annotated[str, typer.Option("--fix", help="plan keys to hold fixed, e.g. 'tp=8,pp=8'")] = "",
    max_tp: Annotated[int | None, typer.Option("--max-tp", min=1, help="largest tensor-parallel degree (default: devices per node)")] = None,
    max_cp: Annotated[int | None, typer.Option("--max-cp", min=1, help="largest context-parallel degree")] = None,
    max_pp: Annotated[int | None, typer.Option("--max-pp", min=1, help="largest pipeline degree")] = None,
    max_mbs: Annotated[int | None, typer.Option("--max-mbs", min=1, help="largest micro-batch")] = None,
    time_limit: Annotated[float | None, typer.Option("--time-limit", min=0, help="seconds; returns the best plan found so far")] = None,
    memory_fraction: Annotated[float | None, typer.Option("--memory-fraction", help="plan within this share of each device's memory, e.g. 0.9 (training; default 1)")] = None,
    mode: Annotated[str, typer.Option("--mode", help="training or inference")] = "training",
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="concurrent sequences (inference)")] = None,
    prompt_len: Annotated[int | None, typer.Option("--prompt-len", min=1, help="prompt tokens per sequence (inference)")] = None,
    output_len: Annotated[int | None, typer.Option("--output-len", min=1, help="generated tokens per sequence (inference)")] = None,
    max_tpot_ms: Annotated[float | None, typer.Option("--max-tpot-ms", min=0, help="drop plans slower than this per output token (inference)")] = None,
    max_ttft_ms: Annotated[float | None, typer.Option("--max-ttft-ms", min=0, help="drop plans whose prefill (time to first token) takes longer (inference)")] = None,
    prefill_chunk: Annotated[int | None, typer.Option("--prefill-chunk", min=1, help="prefill at most this many prompt tokens at a time, as engines with chunked prefill do, e.g. 8192 (inference; default: all prompts at once)")] = None,
    disaggregate: Annotated[bool, typer.Option("--disaggregate", help="search a prefill pool and a decode pool of separate instances, matched in requests/s, next to the best colocated plan (inference; needs --max-ttft-ms)")] = False,
    export: Annotated[str | None, typer.Option("--export", help="print the best plan as launch settings for megatron, torchtitan, deepspeed, vllm or sglang (the table goes to stderr)")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="also write a self-contained HTML report to this file")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --report replace an existing file")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find the best training plans, with the published baselines scored the same way;
    with --mode inference, the best serving plans for a request batch (with --disaggregate,
    separate prefill and decode pools)."""
    from planner.api import search

    check_mode(mode)
    if disaggregate:
        from meshplan_cli import disaggregation_cmd

        if mode != "inference":
            raise planner.SpecError("--disaggregate separates a serving deployment's prefill "
                                    "and decode: use it with --mode inference")
        disaggregation_cmd.refuse_options(fix=fix)
    outputs = _Outputs(as_json=as_json, export=export, report=report, overwrite=overwrite)
    given = {"--max-tp": max_tp, "--max-cp": max_cp, "--max-pp": max_pp, "--max-mbs": max_mbs,
             "--time-limit": time_limit, "--global-batch": global_batch, "--seq-len": seq_len,
             "--batch": batch, "--prompt-len": prompt_len, "--output-len": output_len,
             "--max-tpot-ms": max_tpot_ms, "--max-ttft-ms": max_ttft_ms,
             "--memory-fraction": memory_fraction,
             "--prefill-chunk": prefill_chunk, "--grad-dtype": grad_dtype}
    if mode == "inference":
        check_mode_options(mode, given, allowed=("--max-tpot-ms", "--max-ttft-ms",
                                                 "--prefill-chunk"))
        if disaggregate:
            disaggregation_cmd.search_disaggregated_cmd(
                model, cluster, gpus, nodes, dtype, top, batch, prompt_len, output_len,  # type: ignore[arg-type]
                max_tpot_ms, max_ttft_ms, prefill_chunk, outputs)
            return
        _search_inference_cmd(model, cluster, gpus, nodes, dtype, top, fix, batch, prompt_len,  # type: ignore[arg-type]
                              output_len, max_tpot_ms, outputs, prefill_chunk, max_ttft_ms)
        return
    check_mode_options(mode, given, allowed=("--max-tp", "--max-cp", "--max-pp", "--max-mbs",
                                             "--time-limit", "--memory-fraction",
                                             "--grad-dtype"))
    assert global_batch is not None and seq_len is not None
    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = training_workload(global_batch, seq_len, dtype, optimizer, grad_dtype)
    limits = {k: v for k, v in (("max_tp", max_tp), ("max_cp", max_cp), ("max_pp", max_pp),
                                ("max_mbs", max_mbs)) if v is not None}
    try:
        with _Progress(enabled=not as_json and export is None) as progress:
            result = search(spec, clus, wl, devices=n, top_k=top, fixed=parse_fix(fix),
                            limits=limits, time_limit_s=time_limit, progress=progress,
                            memory_fraction=1.0 if memory_fraction is None else memory_fraction)
    except planner.InfeasibleError as e:
        if e.baselines and not as_json and export is None:
            # nothing fits: still show the published configurations, scored the same way
            _baselines_table(e.baselines)
        raise
    outputs.emit(result, lambda: render_search(
        result, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), "
        f"global batch {global_batch} x {seq_len} tokens"))


@contextlib.contextmanager
def _to_stderr() -> Iterator[None]:
    """Send what the renderers print on `out` to stderr for a while.

    Flips the console's public `stderr` switch rather than assigning `out.file`: reading
    `out.file` returns the current sys.stdout, and restoring that object would pin the console
    to it after it is closed (an in-process runner's stdout, say)."""
    saved = out.stderr
    out.stderr = True
    try:
        yield
    finally:
        out.stderr = saved


class _Outputs:
    """Where a search's result goes: a table (stdout), JSON (--json), launch settings
    (--export: stdout, the table moves to stderr) and an HTML report file (--report).
    Conflicts and an existing report file are refused before the search runs."""

    def __init__(self, *, as_json: bool, export: str | None, report: Path | None,
                  overwrite: bool) -> None:
        if as_json and export is not None:
            raise planner.SpecError("--json and --export both write to stdout: use one, or save "
                                    "the --json output and run 'meshplan export FILE --to FORMAT'")
        if export is not None:
            from planner.exports import FORMATS

            if export not in FORMATS:
                raise planner.SpecError(f"--export '{export}' is not one of {', '.join(FORMATS)}")
        if report is not None:
            from planner.report import check_report_path

            check_report_path(report, overwrite=overwrite)
        self.as_json, self.export, self.report, self.overwrite = as_json, export, report, overwrite

    def emit(self, result: Any, render: Callable[[], None]) -> None:
        data = result.model_dump(mode="json")
        text = None
        if self.export is not None:
            from planner.exports import export_result

            text = export_result(data, self.export)  # refused plans raise before any output
        if self.report is not None:
            from planner.report import write_report

            write_report(data, self.report, overwrite=self.overwrite)
            err.print(f"report written to {self.report}", markup=False, soft_wrap=True)
        if self.as_json:
            print_json(data)
        elif text is not None:
            with _to_stderr():
                render()
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        else:
            render()


def _search_inference_cmd(model: str, cluster: str, gpus: int | None, nodes: int | None,
                          dtype: str, top: int, fix: str, batch: int, prompt_len: int,
                          output_len: int, max_tpot_ms: float | None, outputs: "_Outputs",
                          prefill_chunk: int | None = None,
                          max_ttft_ms: float | None = None) -> None:
    """`meshplan search --mode inference`: exhaustive tp/pp/dp/ep search (search/inference.py)."""
    from search.inference import search_inference

    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = inference_workload(batch, prompt_len, output_len, dtype, prefill_chunk)
    result = search_inference(spec, clus, wl, devices=n, top_k=top, max_tpot_ms=max_tpot_ms,
                              max_ttft_ms=max_ttft_ms, fixed=parse_fix(fix))
    outputs.emit(result, lambda: render_inference_search(
        result, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), "
        f"batch {batch}, prompt {prompt_len}, output {output_len} tokens"
        + (f", prefill chunks of {prefill_chunk}" if prefill_chunk else "")))


def render_inference_search(result: Any, *, title: str) -> None:
    """Ranked inference plans, the statistics and notes."""
    from search.inference import plan_text

    out.print(f"[bold]{escape(title)}[/bold]")
    t = Table(title="best plans (by output tokens/s)", title_justify="left")
    for col, just in (("#", "right"), ("plan", "left"), ("TTFT ms", "right"),
                      ("TPOT ms", "right"), ("tokens/s", "right"), ("memory GiB", "right"),
                      ("max batch", "right"), ("decode bound", "left")):
        t.add_column(col, justify=just, no_wrap=col == "plan", overflow="fold")
    for i, sp in enumerate(result.top, 1):
        e = sp.estimate
        t.add_row(str(i), plan_text(sp.plan), f"{e.ttft_s * 1e3:.1f}",
                  f"{e.tpot_s * 1e3:.2f}", f"{e.tokens_per_s:,.0f}", f"{e.peak_memory_gib:.1f}",
                  str(sp.max_batch_size), e.decode_bound)
    out.print(t)
    st = result.stats
    pruned = ", ".join(f"{k} {v}" for k, v in st.pruned.items())
    out.print(f"{st.candidates} plans scored, pruned: {pruned}; {st.search_time_s:.2f} s",
              markup=False, soft_wrap=True)
    for note in result.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    for w in result.best.estimate.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)


@app.command("regress")
@handle_errors
def regress_cmd(
    cases: Annotated[str, typer.Argument(help="TOML file of [[case]] tables (see search/regress.py)")],
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check that the search still finds plans at least as good as known optima; exit 1 if not."""
    from pathlib import Path

    from search.regress import as_dict, run_cases

    rows = run_cases(Path(cases))
    if as_json:
        print_json([as_dict(r) for r in rows])
    else:
        t = Table(title=f"regression cases ({cases})", title_justify="left")
        for col in ("case", "expected s", "found s", "found plan", "result"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r.name, f"{r.expected_s:.6g}" if r.expected_s is not None else "-",
                      f"{r.found_s:.6g}" if r.found_s is not None else "-", r.found_plan,
                      ("[green]pass[/green] " if r.passed else "[red]FAIL[/red] ") + r.detail)
        out.print(t)
    failed = [r.name for r in rows if not r.passed]
    if failed:
        err.print(f"error: {len(failed)} of {len(rows)} cases regressed: {', '.join(failed)}",
                  markup=False)
        raise typer.Exit(1)


class _Progress:
    """A rich progress bar that appears only once a search has run for a second, and only on
    a terminal (piped or redirected, stderr gets no bar and no blank line where it was)."""

    def __init__(self, *, enabled: bool) -> None:
        import time

        self.enabled = enabled and err.is_terminal
        self.start, self.bar, self.task = time.perf_counter(), None, None

    def __enter__(self) -> _Progress:
        return self

    def __call__(self, done: int, total: int) -> None:
        import time

        from rich.progress import Progress

        if not self.enabled or time.perf_counter() - self.start < 1.0:
            return
        if self.bar is None:
            self.bar = Progress(console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("searching plan groups", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def render_search(result: Any, *, title: str) -> None:
    """Ranked plans, baselines side by side, the bound and the search statistics."""
    out.print(f"[bold]{escape(title)}[/bold]")
    best_s = result.best.estimate.step_time_s
    t = Table(title="best plans", title_justify="left")
    for col, just in (("#", "right"), ("plan", "left"), ("layers", "left"), ("step s", "right"),
                      ("MFU", "right"), ("memory GiB", "right"), ("vs best", "right")):
        t.add_column(col, justify=just, overflow="fold")
    for i, sp in enumerate(result.top, 1):
        e = sp.estimate
        t.add_row(str(i), _short_plan(sp.plan), str(sp.plan["layers"]), f"{e.step_time_s:.3f}",
                  f"{e.mfu:.1%}", f"{e.peak_memory_gib:.1f}", f"{e.step_time_s / best_s - 1:+.1%}")
    out.print(t)
    if result.baselines:
        _baselines_table(result.baselines)
    out.print(f"lower bound {result.lower_bound_step_time_s:.3f} s; best is "
              f"{result.gap_to_lower_bound:.1%} above it", markup=False)
    dm = result.device_mapping
    if dm is not None:
        layout = dm.order or dm.nested
        out.print(f"device mapping ({dm.status}, gap {dm.gap:.1%}): members per node "
                  f"{dm.members_per_node}, layout {layout}; communication "
                  f"{dm.comm_time_s:.3f} s vs {dm.default_order_comm_time_s:.3f} s for "
                  "tp-cp-dp-pp", markup=False, soft_wrap=True)
    st = result.stats
    pruned = ", ".join(f"{k} {v}" for k, v in st.pruned.items())
    out.print(f"{st.candidates} plans scored, pruned: {pruned}; {st.search_time_s:.2f} s",
              markup=False, soft_wrap=True)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    render_estimate(result.best.estimate, title="best plan in detail")


def _baselines_table(baselines: list[Any]) -> None:
    """The published configurations of the request, scored by the same model."""
    b = Table(title="published configurations, same cost model", title_justify="left")
    for col in ("source", "plan", "step s", "MFU", "fits", "vs best", "flags"):
        b.add_column(col, overflow="fold")
    for bl in baselines:
        e = bl.estimate
        fits = "-" if e is None else "yes" if e.fits else f"NO ({e.peak_memory_gib:,.0f} GiB)"
        b.add_row(bl.label, bl.plan, f"{e.step_time_s:.3f}" if e else "-",
                  f"{e.mfu:.1%}" if e else "-", fits,
                  f"{bl.slower_than_best_pct:+.1f}%" if bl.slower_than_best_pct is not None else "-",
                  "; ".join(bl.inconsistencies) or "-")
    out.print(b)


def _short_plan(plan: dict[str, Any]) -> str:
    keys = ("tp", "pp", "dp", "cp", "ep", "vpp", "mbs", "sp", "recompute", "zero")
    text = ",".join(f"{k}={plan[k]}" for k in keys)
    if plan.get("ep_overlap") == "on":
        text += ",ep_overlap=on"
    if plan.get("dispatcher", "flex") != "flex":
        text += f",dispatcher={plan['dispatcher']}"
    if plan.get("dp_overlap") == "off":
        text += ",dp_overlap=off"
    if plan.get("recompute_modules"):
        text += f",recompute_modules={plan['recompute_modules']}"
    for key in ("loss", "offload"):
        if plan.get(key):
            text += f",{key}={plan[key]}"
    if plan.get("order") != "tp-cp-dp-pp":
        text += f",order={plan['order']}"
    return text


# ----- describe device / cluster ----------------------------------------------------------
@app.command("device")
@handle_errors
def device_cmd(
    name: Annotated[str | None, typer.Argument(help="device preset or file")] = None,
    name_opt: Annotated[str | None, typer.Option(
        "--device", help="the device (instead of the argument)")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a device's datasheet numbers."""
    data = device_summary(presets.load_device(_one_name("device", "device", name, name_opt,
                                                        "--device")))
    print_json(data) if as_json else _render_flat(data)


@app.command("cluster")
@handle_errors
def cluster_cmd(
    name: Annotated[str | None, typer.Argument(help="cluster preset or file")] = None,
    name_opt: Annotated[str | None, typer.Option(
        "--cluster", "-c", help="the cluster, as the other commands name it (instead of the "
        "argument)")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a cluster's device, node size and links."""
    data = cluster_summary(presets.load_cluster(_one_name("cluster", "cluster", name, name_opt,
                                                          "--cluster")))
    print_json(data) if as_json else _render_flat(data)


def _render_flat(data: dict[str, Any]) -> None:
    t = Table(show_header=False, box=None)
    t.add_column(style="cyan")
    t.add_column(overflow="fold")
    for k, v in data.items():
        t.add_row(k, escape(json.dumps(v) if isinstance(v, dict) else str(v)))
    out.print(t)


def run() -> None:
    """The console script: a closed pipe ends the process quietly, as it ends Unix filters.

    `meshplan search ... | head` closes meshplan's stdout early; Python would turn the write
    into BrokenPipeError and exit 1, which this CLI reserves for its own bugs. With SIGPIPE's
    default action restored the process ends on the signal instead (shells report 141,
    128 + SIGPIPE), as `yes | head` or `ls | head` do. Not set under the test runner, which
    calls `app` in its own process."""
    if hasattr(signal, "SIGPIPE"):          # POSIX only
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="meshplan")


if __name__ == "__main__":  # pragma: no cover
    run()


# Commands in their own modules register themselves on `app` when imported.
import meshplan_cli.commands  # noqa: E402,F401
