"""`meshplan search --mode inference --disaggregate`: prefill and decode pools searched
together (search/disaggregation.py), next to the best colocated plan."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

import planner
from meshplan_cli.common import err, inference_workload, out, print_json
from planner import presets


def refuse_options(*, fix: str) -> None:
    """One-line SpecError for the search option a disaggregated search does not take."""
    if fix:
        raise planner.SpecError("--fix is not used with --disaggregate (it searches both pools' "
                                "plans); drop --fix, or score one deployment with 'meshplan "
                                "evaluate --mode inference --disaggregate --prefill-plan ... "
                                "--decode-plan ...'")


def search_disaggregated_cmd(model: str, cluster: str, gpus: int | None, nodes: int | None,
                             dtype: str, top: int, batch: int, prompt_len: int, output_len: int,
                             max_tpot_ms: float | None, max_ttft_ms: float | None,
                             prefill_chunk: int | None, outputs: Any) -> None:
    """Run the search and print its table (or JSON; and the --report file): `outputs` is
    cli._Outputs."""
    from search.disaggregation import search_disaggregated

    if max_ttft_ms is None:
        raise planner.SpecError("--disaggregate needs --max-ttft-ms: the prefill batches are "
                                "chosen within it (e.g. --max-ttft-ms 1000)")
    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = clus.devices_for(gpus=gpus, nodes=nodes)
    wl = inference_workload(batch, prompt_len, output_len, dtype, prefill_chunk)
    result = search_disaggregated(spec, clus, wl, devices=n, max_ttft_ms=max_ttft_ms,
                                  max_tpot_ms=max_tpot_ms, top_k=top)
    limits = f"TTFT <= {max_ttft_ms:g} ms" + (
        f", TPOT <= {max_tpot_ms:g} ms" if max_tpot_ms is not None else "")
    outputs.emit(result, lambda: render(
        result, title=f"{spec.name} on {n}x {clus.device.name} ({clus.name}), prefill/decode "
        f"disaggregated, batch {batch}, prompt {prompt_len}, output {output_len} tokens, "
        f"{limits}"))


def evaluate_disaggregated_cmd(model: str, cluster: str, plan: str, gpus: int | None,
                               nodes: int | None, dtype: str, batch: int, prompt_len: int,
                               output_len: int, prefill_chunk: int | None,
                               pools: dict[str, Any], disaggregate: bool, as_json: bool) -> None:
    """`meshplan evaluate --mode inference --disaggregate`: one deployment
    (search.disaggregation.evaluate_disaggregated)."""
    from search.disaggregation import evaluate_disaggregated, pool_plan

    if not disaggregate:
        given = next(k for k, v in pools.items() if v is not None)
        raise planner.SpecError(f"{given} is for --disaggregate: add it, or use --plan for one "
                                "colocated plan")
    if plan:
        raise planner.SpecError("--plan is not used with --disaggregate: give each pool's "
                                "instance plan with --prefill-plan and --decode-plan")
    missing = [k for k in ("--prefill-plan", "--prefill-batch", "--decode-plan")
               if pools[k] is None]
    if missing:
        raise planner.SpecError(f"--disaggregate needs {', '.join(missing)} (e.g. "
                                "--prefill-plan 'tp=4,dp=8,ep=32' --prefill-batch 64 "
                                "--decode-plan 'tp=4,ep=320')")
    spec, clus = presets.load_model(model), presets.load_cluster(cluster)
    n = None if gpus is None and nodes is None else clus.devices_for(gpus=gpus, nodes=nodes)
    wl = inference_workload(batch, prompt_len, output_len, dtype, prefill_chunk)
    d = evaluate_disaggregated(
        spec, clus, wl, prefill=pool_plan(pools["--prefill-plan"]),
        prefill_batch=pools["--prefill-batch"], decode=pool_plan(pools["--decode-plan"]),
        decode_instances=pools["--decode-instances"] or 1,
        prefill_instances=pools["--prefill-instances"], devices=n)
    if as_json:
        print_json(d.model_dump(mode="json"))
        return
    out.print(f"[bold]{escape(spec.name)} on {clus.device.name} ({escape(clus.name)}), "
              f"prefill/decode disaggregated, batch {batch}, prompt {prompt_len}, output "
              f"{output_len} tokens[/bold]")
    out.print(_table("deployment", [d]))
    out.print(LEGEND, markup=False, soft_wrap=True)
    p, dec = d.prefill, d.decode
    for name, pool, work in (
            ("prefill", p, f"prefills {p.batch_per_instance} prompts in "
                           f"{p.estimate.ttft_s * 1e3:.1f} ms"),
            ("decode", dec, f"decodes {dec.batch_per_instance} sequences at "
                            f"{dec.estimate.tpot_s * 1e3:.2f} ms per step"
                            + ("" if d.bound == "decode" else
                               f"; fed by prefill, {d.decode_sequences / dec.instances:,.0f} "
                               f"at a time at {d.tpot_s * 1e3:.2f} ms"))):
        e = pool.estimate
        fit = "fits" if e.fits else f"does not fit (at most {e.max_batch_size} per replica)"
        out.print(f"{name} instance: {work}; {e.peak_memory_gib:.1f} / {e.capacity_gib:.1f} "
                  f"GiB, {fit}", markup=False, soft_wrap=True)
    out.print(f"{d.requests_per_s:,.1f} requests/s, {d.tokens_per_s_per_device:,.0f} output "
              f"tokens/s per device; prefill pool {d.prefill_utilisation:.0%} busy; KV cache "
              f"over the {d.kv_link} links", markup=False, soft_wrap=True)
    _warnings(d)


LEGEND = ("pools: instances x devices each, one instance's plan, b= its batch (prompts per "
          "prefill batch; a decode instance's sequences at most); KV ms: one prefill batch's KV "
          "cache moving to decode; TPOT at the sequences decoding in steady state (fewer than "
          "b when prefill bounds the rate)")


def _table(title: str, rows: list[Any]) -> Table:
    t = Table(title=title, title_justify="left")
    for col, just in (("#", "right"), ("prefill", "left"), ("decode", "left"),
                      ("GPUs", "right"), ("TTFT ms", "right"), ("KV ms", "right"),
                      ("TPOT ms", "right"), ("tokens/s", "right"), ("bound", "left")):
        t.add_column(col, justify=just, overflow="fold", no_wrap=col in ("TTFT ms", "KV ms",
                                                                          "TPOT ms", "bound"))
    for i, d in enumerate(rows, 1):
        t.add_row(str(i), pool_text(d.prefill), pool_text(d.decode),
                  str(d.devices), f"{d.ttft_s * 1e3:.1f}", f"{d.kv_transfer_s * 1e3:.2f}",
                  f"{d.tpot_s * 1e3:.2f}", f"{d.tokens_per_s:,.0f}", d.bound)
    return t


def _warnings(d: Any) -> None:
    for w in dict.fromkeys(d.prefill.estimate.warnings + d.decode.estimate.warnings):
        err.print(f"warning: {w}", markup=False, soft_wrap=True)


def pool_text(pool: Any) -> str:
    """'7x16 tp=1,dp=16,ep=16 b=32': instances x devices each, the plan without its degrees
    of 1 (tp always), the batch of one instance."""
    keys = [f"{k}={v}" for k, v in pool.plan.items()
            if k in ("tp", "pp", "dp", "ep") and (k == "tp" or v != 1)]
    if pool.plan.get("ep_overlap"):
        keys.append("ep_overlap=on")
    return (f"{pool.instances}x{pool.devices_per_instance} {','.join(keys)} "
            f"b={pool.batch_per_instance}")


def render(result: Any, *, title: str) -> None:
    """The ranked deployments, the colocated comparison, statistics and notes."""
    out.print(f"[bold]{escape(title)}[/bold]")
    out.print(_table("best deployments (by output tokens/s)", result.top))
    out.print(LEGEND, markup=False, soft_wrap=True)
    c = result.colocated
    if c is None:
        out.print("colocated: no plan on all the devices fits and meets the limits",
                  markup=False, soft_wrap=True)
    else:
        from search.inference import plan_text

        out.print(f"colocated on all {result.inputs['devices']} devices (continuous batching, "
                  f"chunked prefill): {plan_text(c.plan.plan)}, TTFT {c.ttft_s * 1e3:.1f} ms, "
                  f"TPOT {c.tpot_s * 1e3:.2f} ms, {c.tokens_per_s:,.0f} tokens/s; the best "
                  f"deployment serves {result.speedup:.2f}x that", markup=False, soft_wrap=True)
    st = result.stats
    pruned = ", ".join(f"{k} {v}" for k, v in st.pruned.items())
    out.print(f"{st.prefill_candidates} prefill, {st.decode_candidates} decode and "
              f"{st.colocated_candidates} colocated candidates scored, pruned: {pruned}; "
              f"{st.search_time_s:.2f} s", markup=False, soft_wrap=True)
    for note in result.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    _warnings(result.best)
