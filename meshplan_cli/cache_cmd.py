"""`meshplan cache-fit`: does a serving plan keep each device's decode working set in its
on-chip cache, and what would that change? (`cost_models/cache.py` holds every formula.)"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import planner
from planner import presets
from meshplan_cli.common import (
    ClusterOpt,
    DebugOpt,
    DtypeOpt,
    GpusOpt,
    JsonOpt,
    ModelOpt,
    NodesOpt,
    app,
    err,
    inference_workload,
    handle_errors,
    out,
    print_json,
)

@app.command("cache-fit")
@handle_errors
def cache_fit_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    plan: Annotated[str, typer.Option("--plan", help="serving plan, e.g. 'tp=4,pp=4' (dp fills the rest)")],
    batch: Annotated[int, typer.Option("--batch", min=1, help="concurrent sequences")],
    prompt_len: Annotated[int, typer.Option("--prompt-len", min=1, help="prompt tokens per sequence")],
    output_len: Annotated[int, typer.Option("--output-len", min=1, help="generated tokens per sequence")],
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    dtype: DtypeOpt = "bf16",
    partitions: Annotated[bool, typer.Option("--partitions", help="also list every layer-wise partition of these devices and whether it fits")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check whether a serving plan keeps each device's decode working set (its weight shard
    plus one step's activations) in on-chip cache, and predict the TPOT change."""
    from cost_models.cache import cache_fit, cache_partitions

    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = inference_workload(batch, prompt_len, output_len, dtype)
    p = planner.parse_plan(plan, devices=n)
    if p.devices != n:
        raise planner.PlanError(f"plan '{plan}' uses {p.devices} devices but {n} were given; "
                                "make tp*pp*dp*cp equal --gpus")
    fit = cache_fit(spec, clus, wl, p)
    parts = cache_partitions(spec, clus, wl, n) if partitions else None
    if as_json:
        data: dict[str, Any] = fit.model_dump(mode="json")
        if parts is not None:
            data["partitions"] = [q.model_dump(mode="json") for q in parts]
        print_json(data)
        return
    _render(fit, parts, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), batch "
            f"{batch}, prompt {prompt_len}, output {output_len} tokens, {dtype}")


def _mb(x: float) -> str:
    return f"{x / 1e6:,.2f}"


def _render(fit: Any, parts: list[Any] | None, *, title: str) -> None:
    out.print(f"[bold]{escape(title)}[/bold]")
    verdict = "FITS in cache" if fit.feasible else "does NOT fit in cache"
    out.print(f"plan {fit.plan}: {verdict} (largest working set {_mb(fit.working_set_bytes)} MB"
              f" of {_mb(fit.usable_cache_bytes)} MB usable, margin {_mb(fit.margin_bytes)} MB)",
              markup=False, soft_wrap=True)
    t = Table(title="per-device decode working set by stage (MB = 1e6 bytes)", title_justify="left")
    for col in ("stage", "blocks", "weights MB", "activations MB", "working set MB",
                "KV streamed MB/step", "fits"):
        t.add_column(col, justify="left" if col in ("blocks", "fits") else "right")
    for s in fit.stages:
        t.add_row(str(s.stage), f"{s.first_block}-{s.last_block}", _mb(s.resident_weight_bytes),
                  _mb(s.activation_bytes), _mb(s.working_set_bytes), _mb(s.kv_stream_bytes),
                  "yes" if s.fits else "no")
    out.print(t)
    e = Table(title="decode effect", title_justify="left")
    for col in ("", "TPOT ms", "tokens/s"):
        e.add_column(col, justify="left" if not col else "right")
    e.add_row("weights from HBM", f"{fit.tpot_s * 1e3:.4f}", f"{fit.tokens_per_s:,.1f}")
    e.add_row("weights from cache", f"{fit.tpot_cached_s * 1e3:.4f}",
              f"{fit.tokens_per_s_cached:,.1f}")
    e.add_row("change", f"{fit.tpot_change_s * 1e3:+.4f}", f"{fit.speedup:.3f}x")
    out.print(e)
    if parts is not None:
        _render_partitions(parts)
    for r in fit.reasons:
        err.print(f"note: {r}", markup=False, soft_wrap=True)


def _render_partitions(parts: list[Any]) -> None:
    t = Table(title="layer-wise partitions of these devices", title_justify="left")
    for col in ("plan", "blocks/stage", "working set MB", "fits", "TPOT ms", "cached TPOT ms",
                "tokens/s cached"):
        t.add_column(col, justify="left" if col in ("plan", "blocks/stage", "fits") else "right",
                     no_wrap=col == "plan")
    for q in parts:
        t.add_row(q.plan, "/".join(map(str, q.layers_per_stage)), _mb(q.working_set_bytes),
                  "yes" if q.fits else "no", f"{q.tpot_s * 1e3:.4f}",
                  f"{q.tpot_cached_s * 1e3:.4f}", f"{q.tokens_per_s_cached:,.1f}")
    out.print(t)
