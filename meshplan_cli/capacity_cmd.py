"""`meshplan capacity`, `meshplan min-devices`, `meshplan train-time`: the capacity questions.

Thin: parse options, call planner.capacity, render with rich (or print JSON with --json).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from meshplan_cli.common import (
    BatchOpt,
    ClusterOpt,
    DebugOpt,
    DtypeOpt,
    GradDtypeOpt,
    GpusOpt,
    JsonOpt,
    ModelOpt,
    NodesOpt,
    OptimizerOpt,
    SeqOpt,
    _fmt_count,
    app,
    handle_errors,
    out,
    print_json,
    training_workload,
)
from planner import capacity as cap
from planner.presets import load_cluster, load_model

DEFAULT_GLOBAL_BATCH = 512
"""Sequences per step when --global-batch is not given: the global batch of Narayanan et al.
2021 (SC'21) Table 1 for its 1.7B-7.5B rows; it divides by every power-of-two dp up to 512."""
DEFAULT_SEQ_LEN = 2048
"""GPT-3's context (Brown et al. 2020 Sec. 2.1, n_ctx = 2048)."""

TimeLimitOpt = Annotated[float | None, typer.Option(
    "--time-limit", min=0, help="seconds for each reported search (best plan found so far); "
    "feasibility probes are exact and unaffected")]
FamilyOpt = Annotated[str, typer.Option(
    "--family", help=f"shape family: {', '.join(cap.FAMILIES)}")]


def _print_points(points: list[cap.SizePoint], *, title: str) -> None:
    """A table of the numbers (one row per size), then each row's full plan on its own line."""
    t = Table(title=title, title_justify="left")
    for col in ("nodes", "GPUs", "tokens/s", "step s", "TFLOP/s/GPU", "MFU", "memory GiB"):
        t.add_column(col, justify="right")
    for p in points:
        if p.fits:
            t.add_row(str(p.nodes), str(p.devices), f"{p.tokens_per_s:,.0f}", f"{p.step_time_s:.2f}",
                      f"{p.model_tflops_per_gpu:.1f}", f"{p.mfu:.1%}", f"{p.peak_memory_gib:.2f}")
        else:
            t.add_row(str(p.nodes), str(p.devices), "no plan", "-", "-", "-", "-")
    out.print(t)
    for p in points:
        cut = " (time limit: best found so far)" if p.search_cut else ""
        text = p.plan if p.fits else f"no plan fits: {p.reason}"
        out.print(f"  {_n_nodes(p.nodes)}: {text}{cut}", markup=False, soft_wrap=True)


def _n_nodes(n: int) -> str:
    return f"{n} node" if n == 1 else f"{n} nodes"


def _shape(m: cap.ModelShape) -> str:
    return (f"{m.name}: {m.num_layers} layers x {m.hidden_size} hidden, "
            f"{m.num_attention_heads} heads, {_fmt_count(m.params)} params")


def _miss_line(miss: cap.MemoryMiss) -> str:
    plan = f" ({miss.least_memory_plan})" if miss.least_memory_plan else ""
    return f"{_n_nodes(miss.nodes)} / {miss.devices} GPUs: {miss.reason}{plan}"


@app.command("capacity")
@handle_errors
def capacity_cmd(
    cluster: ClusterOpt,
    nodes: NodesOpt = None,
    gpus: GpusOpt = None,
    family: FamilyOpt = "gpt3",
    seq_len: SeqOpt = DEFAULT_SEQ_LEN,
    global_batch: BatchOpt = DEFAULT_GLOBAL_BATCH,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    grad_dtype: GradDtypeOpt = None,
    max_tp: Annotated[int | None, typer.Option("--max-tp", min=1, help="largest tensor-parallel degree (default: the largest power of two <= 8 dividing the node size)")] = None,
    time_limit: TimeLimitOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The largest model of a shape family that trains on N nodes, and its best plan."""
    clus = load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = training_workload(global_batch, seq_len, dtype, optimizer, grad_dtype)
    fam = cap.get_family(family, clus)
    result = cap.largest_trainable(fam, clus, wl, devices=n, max_tp=max_tp, time_limit_s=time_limit)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    out.print(f"[bold]largest '{escape(fam.name)}' model on {n}x {escape(clus.device.name)} "
              f"({escape(clus.name)})[/bold]", soft_wrap=True)
    out.print(f"workload: global batch {global_batch} x {seq_len} tokens, {dtype}, {optimizer}",
              markup=False)
    out.print(f"family: {fam.source}", markup=False, soft_wrap=True)
    out.print(f"largest that fits: {_shape(result.largest)}", markup=False)
    _print_points([result.best], title="its best plan")
    if result.next_up is not None and result.next_up_miss is not None:
        out.print(f"next size up: {_shape(result.next_up)}", markup=False)
        out.print(f"  does not fit: {_miss_line(result.next_up_miss)}", markup=False, soft_wrap=True)
    out.print(f"states bound: no model over {_fmt_count(result.max_params_by_states)} params fits "
              f"({_searches(result.probes)})", markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command("min-devices")
@handle_errors
def min_devices_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    seq_len: SeqOpt = DEFAULT_SEQ_LEN,
    global_batch: BatchOpt = DEFAULT_GLOBAL_BATCH,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    grad_dtype: GradDtypeOpt = None,
    max_nodes: Annotated[int | None, typer.Option("--max-nodes", min=1, help="give up above this many nodes (default: 4x the states lower bound)")] = None,
    time_limit: TimeLimitOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """The fewest nodes on which a model trains, and the throughput there and at 2x, 4x."""
    spec, clus = load_model(model), load_cluster(cluster)
    wl = training_workload(global_batch, seq_len, dtype, optimizer, grad_dtype)
    result = cap.min_devices(spec, clus, wl, max_nodes=max_nodes, time_limit_s=time_limit)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    out.print(f"[bold]fewest {escape(clus.name)} nodes for {escape(spec.name)}[/bold]", soft_wrap=True)
    out.print(f"workload: global batch {global_batch} x {seq_len} tokens, {dtype}, {optimizer}",
              markup=False)
    out.print(_shape(result.model), markup=False)
    per = cap.state_bytes_per_param(wl)
    out.print(f"weights + grads + optimizer: {per} bytes/param = {result.states_bytes / 2**30:,.1f} "
              f"GiB -> at least {result.lower_bound_nodes} nodes", markup=False)
    out.print(f"fewest nodes that fit: {result.min_nodes} ({result.min_nodes * clus.devices_per_node}"
              f" GPUs; {_searches(result.probes)})", markup=False)
    if result.one_fewer is not None:
        out.print(f"one node fewer: {_miss_line(result.one_fewer)}", markup=False, soft_wrap=True)
    _print_points(result.points, title="best plan at the fewest nodes and larger sizes")
    base = result.points[0]
    for p in result.points[1:]:
        if p.fits and base.fits and base.tokens_per_s:
            k = p.devices / base.devices
            out.print(f"{_n_nodes(p.nodes)}: {p.tokens_per_s / base.tokens_per_s:.2f}x the tokens/s on "
                      f"{k:g}x the nodes (scaling efficiency {p.tokens_per_s / base.tokens_per_s / k:.0%})",
                      markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command("train-time")
@handle_errors
def train_time_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    tokens: Annotated[str, typer.Option("--tokens", help="training tokens, e.g. 300B, 1.5T, 3e11")],
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    seq_len: SeqOpt = DEFAULT_SEQ_LEN,
    global_batch: BatchOpt = DEFAULT_GLOBAL_BATCH,
    dtype: DtypeOpt = "bf16",
    optimizer: OptimizerOpt = "adam",
    grad_dtype: GradDtypeOpt = None,
    time_limit: TimeLimitOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Days (and GPU-hours) to train a model on T tokens at the best plan's throughput."""
    count = cap.parse_tokens(tokens)
    spec, clus = load_model(model), load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = training_workload(global_batch, seq_len, dtype, optimizer, grad_dtype)
    result = cap.train_time(spec, clus, wl, devices=n, tokens=count, time_limit_s=time_limit)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    _render_train_time(result, clus.device.name)


def _render_train_time(result: cap.TrainTimeResult, device: str) -> None:
    b: Any = result.best
    w = result.workload
    out.print(f"[bold]{escape(result.model.name)} on {result.devices}x {escape(device)} "
              f"({escape(result.cluster)}), {_fmt_count(result.tokens)} tokens[/bold]", soft_wrap=True)
    out.print(f"workload: global batch {w['global_batch_size']} x {w['seq_len']} tokens, "
              f"{w['dtype']}, {w['optimizer']}", markup=False)
    _print_points([b], title="best plan")
    t = Table(show_header=False, box=None)
    t.add_column(style="cyan")
    t.add_column()
    t.add_row("steps", f"{result.steps:,} of {result.workload['global_batch_size']} x "
              f"{result.workload['seq_len']} tokens")
    t.add_row("training time", f"{result.days:,.1f} days ({result.tokens:.4g} tokens / "
              f"{b.tokens_per_s:,.0f} tokens/s / 86400)")
    t.add_row("GPU-hours", f"{result.gpu_hours:,.0f}")
    out.print(t)


def _searches(n: int) -> str:
    return f"{n} feasibility search" + ("" if n == 1 else "es")
