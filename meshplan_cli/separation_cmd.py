"""`meshplan separate`: attention/expert separated plans next to the conventional ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import planner
from meshplan_cli.common import (
    ClusterOpt,
    DebugOpt,
    DtypeOpt,
    GpusOpt,
    JsonOpt,
    ModelOpt,
    NodesOpt,
    OptimizerOpt,
    app,
    check_mode,
    check_mode_options,
    err,
    handle_errors,
    out,
    print_json,
    training_workload,
)
from planner import presets


def _workload(mode: str, given: dict[str, int | None], dtype: str, optimizer: str) -> Any:
    """The training or inference workload, refusing missing or other-mode options (the
    optimizer is checked in either mode, as the training workload checks it)."""
    check_mode(mode)
    check_mode_options(mode, given)
    wl = training_workload(given["--global-batch"] or 1, given["--seq-len"] or 1, dtype, optimizer)
    if mode == "training":
        return wl
    return planner.InferenceWorkload(batch_size=given["--batch"], prompt_len=given["--prompt-len"],
                                     output_len=given["--output-len"], dtype=wl.dtype)


@app.command("separate")
@handle_errors
def separate_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="training or inference")] = "training",
    global_batch: Annotated[int | None, typer.Option("--global-batch", min=1, help="sequences per step (training)")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", min=1, help="tokens per sequence (training)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="concurrent sequences (inference)")] = None,
    prompt_len: Annotated[int | None, typer.Option("--prompt-len", min=1, help="prompt tokens (inference)")] = None,
    output_len: Annotated[int | None, typer.Option("--output-len", min=1, help="generated tokens (inference)")] = None,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    top: Annotated[int, typer.Option("--top", min=1, help="how many separated plans to show")] = 5,
    whole_nodes: Annotated[bool, typer.Option("--whole-nodes", help="only splits on node boundaries")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Search plans with attention and experts on separate device groups (ping-pong
    micro-batches between them) and compare them with TP=8, PP=2, TP=8+PP=2 and the best
    conventional plan on the same workload."""
    from search.separation import search_separated

    given = {"--global-batch": global_batch, "--seq-len": seq_len, "--batch": batch,
             "--prompt-len": prompt_len, "--output-len": output_len}
    wl = _workload(mode, given, dtype, optimizer)
    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    result = search_separated(spec, clus, wl, devices=n, top_k=top, whole_nodes_only=whole_nodes)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    what = (f"global batch {global_batch} x {seq_len} tokens" if mode == "training" else
            f"batch {batch}, prompt {prompt_len}, output {output_len} tokens")
    render(result, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), {what}")


def render(result: Any, *, title: str) -> None:
    """Separated plans, then the conventional ones, then statistics and warnings."""
    training = result.mode == "training"
    unit = "step s" if training else "TPOT ms"
    scale = 1.0 if training else 1e3
    out.print(f"[bold]{escape(title)}[/bold]")
    t = Table(title="best attention/expert separated plans", title_justify="left")
    cols = ["#", "plan", unit, "tokens/s", "bottleneck", "attn GiB", "expert GiB", "fits"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("plan", "bottleneck") else "right",
                     overflow="fold")
    for i, sp in enumerate(result.top, 1):
        e = sp.estimate
        t.add_row(str(i), e.plan, f"{e.time_s * scale:.3f}", f"{e.tokens_per_s:,.0f}", e.bottleneck,
                  f"{sum(e.attn_memory_gib.values()):.1f}", f"{sum(e.expert_memory_gib.values()):.1f}",
                  "yes" if e.fits else "no")
    out.print(t)
    c = Table(title="conventional plans, same workload (existing cost model)", title_justify="left")
    for col in ("plan", unit, "tokens/s", "memory GiB", "fits", "vs best separated"):
        c.add_column(col, justify="left" if col == "plan" else "right", overflow="fold")
    for b in result.conventional:
        if b.time_s is None:
            c.add_row(f"{b.label}: {b.plan}", "-", "-", "-", "-", b.note)
            continue
        c.add_row(f"{b.label}: {b.plan}", f"{b.time_s * scale:.3f}", f"{b.tokens_per_s:,.0f}",
                  f"{b.peak_memory_gib:.1f}", "yes" if b.fits else "no",
                  f"{b.vs_best_separated_pct:+.1f}%")
    out.print(c)
    st = result.stats
    pruned = ", ".join(f"{k} {v}" for k, v in st["pruned"].items())
    out.print(f"{st['candidates']} separated plans scored, pruned: {pruned}; "
              f"{st['search_time_s']:.2f} s", markup=False, soft_wrap=True)
    for w in result.top[0].estimate.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
