"""The disaggregated serving report: ranked prefill/decode deployments against the best
colocated plan, each pool instance's TTFT or TPOT parts and memory, and the device maps of the
best deployment's two instance plans.

Decides what each section shows from a `search --mode inference --disaggregate` result dict;
the charts and tables are the inference report's (inference.py), fed one pool at a time.
"""

from __future__ import annotations

from html import escape
from typing import Any

from planner.report import template as t
from planner.report.charts import BarChart, BarRow, bar_chart, fmt
from planner.report.common import device_map_section, model_of, plan_of
from planner.report.inference import (
    TPOT_COLORS,
    TTFT_COLORS,
    _chart,
    _memory_chart,
    _short,
    serving_map_inputs,
)

RATE_COLORS = {"tokens_per_s": "#4e79a7"}


def disaggregated_report(result: dict[str, Any]) -> tuple[str, str]:
    """(title, body HTML) of a disaggregated search result."""
    model = model_of(result)
    inputs = result["inputs"]
    cluster, wl, n = inputs["cluster"], inputs["workload"], inputs["devices"]
    title = (f"{model.name} disaggregated serving on {n}x {cluster['device']['name']} "
             f"({cluster['name']})")
    ranked = result["top"]
    labels = [f"#{i + 1} P {d['prefill']['instances']}x{d['prefill']['devices_per_instance']}"
              f" / D {d['decode']['instances']}x{d['decode']['devices_per_instance']}"
              for i, d in enumerate(ranked)]     # the plans are in the tooltips and table
    prefill = [d["prefill"] for d in ranked]
    decode = [d["decode"] for d in ranked]
    limits = f"TTFT <= {inputs['max_ttft_ms']:g} ms" + (
        f", TPOT <= {inputs['max_tpot_ms']:g} ms" if inputs.get("max_tpot_ms") is not None
        else "")
    best = result["best"]
    parts = [
        f"<h1>meshplan report: {escape(title)}</h1>",
        f'<p class="sub">inference, prefill/decode disaggregated, batch {wl["batch_size"]}, '
        f'prompt {wl["prompt_len"]} tokens, output {wl["output_len"]} tokens, '
        f'{escape(str(wl["dtype"]))}, {escape(limits)}</p>',
        _summary(result), "<h2>Ranked deployments</h2>", _table(ranked),
        "<h2>Output tokens per second</h2>",
        '<p class="note">Each deployment, and the best colocated plan on all the devices in '
        "continuous-batching steady state under the same limits.</p>",
        _rates(result, labels),
        "<h2>Prefill instance: time to first token</h2>",
        _chart("ttft", prefill, labels, "ttft_breakdown", TTFT_COLORS,
               "milliseconds (one prefill batch)"),
        "<h2>Decode instance: time per output token</h2>",
        _chart("tpot", decode, labels, "tpot_breakdown", TPOT_COLORS, "milliseconds per token"),
        "<h2>Memory per device</h2>",
        '<p class="note">The most loaded device of each pool\'s instance, by kind, against the '
        "device memory (dashed line).</p>",
        _memory_chart([*prefill[:1], *decode[:1]], ["#1 prefill instance",
                                                    "#1 decode instance"]),
        "<h2>Best deployment: device maps of one instance per pool</h2>",
        _maps(best, model, cluster["devices_per_node"]),
        "<h2>Notes</h2>", t.notes(_notes(result)),
    ]
    return f"meshplan report: {title}", "\n".join(parts)


def _pools(d: dict[str, Any]) -> str:
    p, q = d["prefill"], d["decode"]
    return (f"P {p['instances']}x{p['devices_per_instance']} {_short(p['plan'])} / "
            f"D {q['instances']}x{q['devices_per_instance']} {_short(q['plan'])}")


def _summary(result: dict[str, Any]) -> str:
    b = result["best"]
    return t.cards([
        (f"{b['tokens_per_s']:,.0f}", "output tokens/s"),
        (f"{fmt(1e3 * b['ttft_s'], 2)} ms", "time to first token"),
        (f"{fmt(1e3 * b['tpot_s'], 3)} ms", "time per output token"),
        (f"{b['devices']:,} / {result['inputs']['devices']:,}", "devices used"),
        (f"{result['speedup']:.2f}x" if result["speedup"] is not None else "none",
         "over the best colocated plan"),
    ])


def _table(ranked: list[dict[str, Any]]) -> str:
    rows = []
    for i, d in enumerate(ranked):
        p, q = d["prefill"], d["decode"]
        rows.append([
            t.cell(f"#{i + 1}"),
            t.plan_code(f"{p['instances']} x {p['devices_per_instance']}: {_short(p['plan'])}"
                        f"{' overlap' if p['plan'].get('ep_overlap') else ''}, "
                        f"{p['batch_per_instance']} prompts"),
            t.plan_code(f"{q['instances']} x {q['devices_per_instance']}: {_short(q['plan'])}"
                        f"{' overlap' if q['plan'].get('ep_overlap') else ''}, "
                        f"{q['batch_per_instance']} sequences"),
            t.cell(f"{d['devices']:,}"), t.cell(f"{d['tokens_per_s']:,.0f}"),
            t.cell(fmt(1e3 * d["ttft_s"], 2)), t.cell(fmt(1e3 * d["kv_transfer_s"], 3)),
            t.cell(fmt(1e3 * d["tpot_s"], 3)), t.cell(d["bound"]),
            t.cell(f"{100 * d['prefill_utilisation']:.0f}%"), t.cell(d["kv_link"])])
    return t.table(["#", "prefill pool", "decode pool", "devices", "tokens/s", "TTFT ms",
                    "KV ms", "TPOT ms", "bound", "prefill busy", "KV link"], rows,
                   numeric=[False, False, False, True, True, True, True, True, False, True,
                            False])


def _rates(result: dict[str, Any], labels: list[str]) -> str:
    rows = [BarRow(label=lab, parts={"tokens_per_s": d["tokens_per_s"]},
                   tooltip=_pools(d)) for lab, d in zip(labels, result["top"])]
    c = result["colocated"]
    if c is not None:
        rows.append(BarRow(label=f"colocated on {result['inputs']['devices']}",
                           parts={"tokens_per_s": c["tokens_per_s"]},
                           tooltip=c["plan"]["estimate"]["plan"]))
    return bar_chart(BarChart(chart="rates", keys=tuple(RATE_COLORS), colors=RATE_COLORS,
                              unit="output tokens/s", rows=rows, decimals=0))


def _maps(best: dict[str, Any], model: Any, devices_per_node: int) -> str:
    out = []
    for name in ("prefill", "decode"):
        pool = best[name]
        g = pool["devices_per_instance"]
        plan = plan_of(pool["estimate"]["plan"], g)
        out.append(f"<h3>{name.capitalize()} instance ({g} devices)</h3>"
                   + t.notes(pool["estimate"]["warnings"])
                   + device_map_section(serving_map_inputs(plan, model),
                                        devices_per_node=min(devices_per_node, g)))
    return "\n".join(out)


def _notes(result: dict[str, Any]) -> list[str]:
    stats = result["stats"]
    pruned = ", ".join(f"{k} {v:,}" for k, v in stats["pruned"].items())
    c = result["colocated"]
    colo = ([f"Best colocated plan: {c['plan']['estimate']['plan']}, TTFT "
             f"{fmt(1e3 * c['ttft_s'], 2)} ms, TPOT {fmt(1e3 * c['tpot_s'], 3)} ms "
             "(steady state: each step also prefills the prompts that replace finished "
             "sequences)"] if c is not None else [])
    return [*result["notes"], *colo,
            f"{stats['prefill_candidates']:,} prefill, {stats['decode_candidates']:,} decode "
            f"and {stats['colocated_candidates']:,} colocated candidates scored; pruned: "
            f"{pruned or 'none'}",
            "Search wall time is left out so that identical searches give identical reports."]
