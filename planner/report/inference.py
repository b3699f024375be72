"""The inference report: ranked serving plans, TTFT and TPOT breakdowns, memory against
capacity, and the device map of each plan.

Decides what each section shows from an inference search result dict. No pipeline timeline:
the inference cost model runs one batch through the stages in turn (TTFT and TPOT are sums
over the stages, no micro-batches in flight), so with pp > 1 the report states the idle share
that implies instead of drawing a schedule the model does not score.
"""

from __future__ import annotations

import dataclasses
from html import escape
from typing import Any

from planner.report import template as t
from planner.report.charts import BarChart, BarRow, bar_chart, fmt
from cost_models.inference import expert_slots, redundant_experts
from planner.model import ModelSpec
from planner.plan import Plan
from planner.report.common import device_map_section, map_inputs, model_of, pct, plan_of
from planner.report.devices import MapInputs

TTFT_COLORS = {"compute": "#4e79a7", "tp_comm": "#f28e2b", "pp_comm": "#59a14f",
               "ep_comm": "#e15759"}
TPOT_COLORS = {"weights_read": "#4e79a7", "kv_read": "#76b7b2", "compute": "#59a14f",
               "tp_comm": "#f28e2b", "pp_comm": "#edc948", "launch": "#b07aa1",
               "ep_comm": "#e15759"}
MEMORY_COLORS = {"weights": "#4e79a7", "kv_cache": "#f28e2b", "workspace": "#59a14f",
                 "overhead": "#bab0ac"}


def inference_report(result: dict[str, Any]) -> tuple[str, str]:
    """(title, body HTML) of an inference search result."""
    model = model_of(result)
    inputs = result["inputs"]
    cluster, wl, n = inputs["cluster"], inputs["workload"], inputs["devices"]
    title = f"{model.name} serving on {n}x {cluster['device']['name']} ({cluster['name']})"
    ranked = [result["best"], *[s for s in result["top"] if s != result["best"]]]
    labels = [f"#{i + 1} {_short(s['plan'])}" for i, s in enumerate(ranked)]
    parts = [
        f"<h1>meshplan report: {escape(title)}</h1>",
        f'<p class="sub">inference, batch {wl["batch_size"]}, prompt {wl["prompt_len"]} '
        f'tokens, output {wl["output_len"]} tokens, {escape(str(wl["dtype"]))}</p>',
        _summary(result), "<h2>Ranked plans</h2>", _table(ranked),
        "<h2>Time to first token</h2>",
        _chart("ttft", ranked, labels, "ttft_breakdown", TTFT_COLORS, "milliseconds (prefill)"),
        "<h2>Time per output token</h2>",
        _chart("tpot", ranked, labels, "tpot_breakdown", TPOT_COLORS, "milliseconds per token"),
        "<h2>Memory per device</h2>",
        '<p class="note">The most loaded stage\'s device, by kind, against the device memory '
        "(dashed line).</p>", _memory_chart(ranked, labels),
        "<h2>Plan details</h2>",
        t.tabs([(f"plan-{i + 1}", f"#{i + 1}", _panel(s, result, model, rank=i + 1))
                for i, s in enumerate(ranked)]),
        "<h2>Notes</h2>", t.notes(_notes(result)),
    ]
    return f"meshplan report: {title}", "\n".join(parts)


def _short(plan: dict[str, Any]) -> str:
    return " ".join(f"{k}{plan[k]}" for k in ("tp", "pp", "dp", "ep") if k in plan)


def _summary(result: dict[str, Any]) -> str:
    e = result["best"]["estimate"]
    return t.cards([
        (f"{e['tokens_per_s']:,.0f}", "output tokens/s"),
        (f"{fmt(1e3 * e['ttft_s'], 2)} ms", "time to first token"),
        (f"{fmt(1e3 * e['tpot_s'], 3)} ms", "time per output token"),
        (f"{fmt(e['e2e_s'])} s", "end to end"),
        (f"{fmt(e['peak_memory_gib'], 1)} / {fmt(e['capacity_gib'], 1)} GiB", "peak memory / capacity"),
        (f"{result['max_batch_size']:,}", "largest batch that fits"),
    ])


def _table(ranked: list[dict[str, Any]]) -> str:
    rows = []
    for i, s in enumerate(ranked):
        e = s["estimate"]
        rows.append([t.cell(f"#{i + 1}"), t.plan_code(_short(s["plan"])),
                     t.cell(f"{e['tokens_per_s']:,.0f}"), t.cell(fmt(1e3 * e["ttft_s"], 2)),
                     t.cell(fmt(1e3 * e["tpot_s"], 3)), t.cell(fmt(e["e2e_s"])),
                     t.cell(f"{e['prefill_bound']} / {e['decode_bound']}"),
                     t.cell(f"{fmt(e['peak_memory_gib'], 1)} / {fmt(e['capacity_gib'], 1)}"),
                     t.cell("yes" if e["fits"] else "no"), t.cell(f"{s['max_batch_size']:,}")])
    return t.table(["#", "plan", "tokens/s", "TTFT ms", "TPOT ms", "e2e s",
                    "bound (prefill / decode)", "peak / capacity GiB", "fits", "max batch"],
                   rows, numeric=[False, False, True, True, True, True, False, True, False, True])


def serving_map_inputs(plan: Plan, model: ModelSpec) -> MapInputs:
    """The device map's inputs for a serving plan: ep folded into tp splits each expert over
    tp/ep ranks; ep > tp holds whole experts (etp 1), spread over the replicas' ranks. Where ep
    does not divide the experts, E numbers the ep x ceil(E/ep) expert slots (redundant copies
    included; which expert each copy holds is the load balancer's choice at run time)."""
    inp = map_inputs(plan, model, expert_tp=max(1, plan.tp // plan.ep))
    if redundant_experts(model, plan):
        inp = dataclasses.replace(inp, num_experts=plan.ep * expert_slots(model, plan))
    return inp


def _chart(chart: str, ranked: list[dict[str, Any]], labels: list[str], field: str,
           colors: dict[str, str], unit: str) -> str:
    rows = [BarRow(label=lab, parts={k: 1e3 * v for k, v in s["estimate"][field].items()},
                   tooltip=s["estimate"]["plan"]) for lab, s in zip(labels, ranked)]
    return bar_chart(BarChart(chart=chart, keys=tuple(colors), colors=colors, unit=unit,
                              rows=rows))


def _memory_chart(ranked: list[dict[str, Any]], labels: list[str]) -> str:
    rows = []
    for lab, s in zip(labels, ranked):
        e = s["estimate"]
        rows.append(BarRow(label=lab, parts={k: e[f"{k}_gib"] for k in MEMORY_COLORS},
                           tooltip=e["plan"], note="" if e["fits"] else "(does not fit)"))
    return bar_chart(BarChart(chart="memory", keys=tuple(MEMORY_COLORS), colors=MEMORY_COLORS,
                              unit="GiB", rows=rows, capacity=ranked[0]["estimate"]["capacity_gib"],
                              capacity_label="device memory", decimals=2))


def _panel(scored: dict[str, Any], result: dict[str, Any], model: Any, *, rank: int) -> str:
    e, inputs = scored["estimate"], result["inputs"]
    plan = plan_of(e["plan"], inputs["devices"])
    p = plan.pp
    pipe = (f"Pipeline of {p} stages: the cost model runs one batch through them in turn, so "
            f"each device is busy about 1/{p} of each step and idle {pct((p - 1) / p)} "
            "(micro-batches in flight are not modelled, so no schedule is drawn)."
            if p > 1 else "No pipeline (pp=1).")
    inp = serving_map_inputs(plan, model)
    return (f"<h3>Plan #{rank}</h3><p><code>{t.cell(e['plan'])}</code></p>"
            + t.notes(e["warnings"]) + f'<p class="note">{escape(pipe)}</p>'
            + device_map_section(inp, devices_per_node=inputs["cluster"]["devices_per_node"]))


def _notes(result: dict[str, Any]) -> list[str]:
    stats = result["stats"]
    pruned = ", ".join(f"{k} {v:,}" for k, v in stats["pruned"].items())
    return [*result["notes"], f"{stats['candidates']:,} plans scored; pruned: {pruned or 'none'}",
            "Search wall time is left out so that identical searches give identical reports."]
