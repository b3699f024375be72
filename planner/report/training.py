"""The training report: ranked plans and baselines, time and memory charts, and per plan the
memory of each stage, the simulated pipeline schedule and the device map.

Decides what each section shows from a training `SearchResult` dict; every number comes from
the result or is computed from it here (the schedule by `schedule.simulate`). Does not score
plans: it reads the cost model's estimates.
"""

from __future__ import annotations

from html import escape
from typing import Any

from planner.report import template as t
from planner.report.charts import (
    MAX_TOOLTIP_BOXES, BarChart, BarRow, bar_chart, fmt, timeline_chart,
)
from planner.report.common import device_map_section, map_inputs, model_of, pct, plan_of
from planner.report.schedule import (
    FORWARD_SHARE_FULL_RECOMPUTE, closed_form_bubble_fraction, forward_share,
    simulate, simulate_dualpipe,
)
from planner.plan import Schedule
from planner.result import BREAKDOWN_KEYS, MEMORY_KEYS

TIME_COLORS = {"compute": "#4e79a7", "recompute": "#a0cbe8", "tp_comm": "#f28e2b",
               "cp_comm": "#ffbe7d", "pp_comm": "#59a14f", "dp_comm": "#8cd17d",
               "ep_comm": "#b6992d", "bubble": "#e15759", "optimizer": "#79706e",
               "offload": "#9c755f"}
MEMORY_COLORS = {"stage peak": "#4e79a7", "weights": "#4e79a7", "grads": "#f28e2b",
                 "optimizer": "#59a14f", "activations": "#edc948", "buffers": "#b07aa1"}

MAX_DRAWN_MICROBATCHES = 32
"""The timeline draws at most this many micro-batches: warm-up and cool-down are unchanged,
the steady phase is shorter (a readability and file-size choice)."""

MAX_DRAWN_PASSES = 2500
"""... and at most about this many boxes (stages x 2 x chunks x micro-batches), but never
fewer than p micro-batches, so that every stage reaches its steady phase."""

MAX_SIMULATED_PASSES = 50_000
"""Above this many passes the step's bubble is given by the closed form, not simulated."""


def training_report(result: dict[str, Any]) -> tuple[str, str]:
    """(title, body HTML) of a training search result."""
    model = model_of(result)
    inputs = result["inputs"]
    cluster, wl, n = inputs["cluster"], inputs["workload"], inputs["devices"]
    title = f"{model.name} on {n}x {cluster['device']['name']} ({cluster['name']})"
    ranked = [result["best"], *[s for s in result["top"] if s != result["best"]]]
    parts = [
        f"<h1>meshplan report: {escape(title)}</h1>",
        f'<p class="sub">training, global batch {wl["global_batch_size"]} x {wl["seq_len"]} '
        f'tokens, {escape(str(wl["dtype"]))}, {escape(str(wl["optimizer"]))}</p>',
        _summary(result),
        "<h2>Ranked plans</h2>", _ranked_table(ranked),
        "<h2>Baselines</h2>", _baselines_table(result["baselines"]),
        "<h2>Time per step</h2>",
        '<p class="note">Exposed seconds per step by part (they add up to the step time); '
        "hover a segment for its value.</p>", _time_chart(ranked, result["baselines"]),
        "<h2>Memory per device</h2>",
        '<p class="note">The most loaded device of each plan, by kind, against the device '
        "memory (dashed line).</p>", _memory_chart(ranked, result["baselines"]),
        "<h2>Plan details</h2>",
        '<p class="note">Per plan: memory of each stage, the simulated pipeline schedule and '
        "which device holds which blocks; baselines that can run come after the ranked plans."
        "</p>", t.tabs(_panels(ranked, result)),
        "<h2>Notes</h2>", t.notes(_notes(result)),
    ]
    return f"meshplan report: {title}", "\n".join(parts)


def _summary(result: dict[str, Any]) -> str:
    e = result["best"]["estimate"]
    stats = result["stats"]
    return t.cards([
        (f"{fmt(e['step_time_s'])} s", "step time of the best plan"),
        (f"{e['tokens_per_s']:,.0f}", "tokens/s"),
        (f"{pct(e['mfu'])} / {pct(e['hfu'])}", "MFU / HFU"),
        (f"{fmt(e['peak_memory_gib'], 1)} / {fmt(e['capacity_gib'], 1)} GiB", "peak memory / capacity"),
        (f"{fmt(result['lower_bound_step_time_s'])} s (+{pct(result['gap_to_lower_bound'])})",
         "lower bound (best's gap to it)"),
        (f"{stats['candidates']:,}", "plans scored" + (" (time limit hit)" if stats.get("cut") else "")),
    ])


def short_plan(e: dict[str, Any]) -> str:
    """A compact label from a plan string: the degrees, vpp, mbs and ZeRO stage."""
    kv = dict(item.split("=", 1) for item in e["plan"].split(","))
    ep = f" ep{kv['ep']}" if kv.get("ep", "1") != "1" else ""
    vpp = f" v{kv['vpp']}" if kv.get("vpp", "1") != "1" else ""
    return (f"tp{kv['tp']} cp{kv['cp']} pp{kv['pp']} dp{kv['dp']}{ep}{vpp} mbs{kv['mbs']} "
            f"z{kv['zero']}")


def _ranked_table(ranked: list[dict[str, Any]]) -> str:
    best = ranked[0]["estimate"]["step_time_s"]
    rows = []
    for i, s in enumerate(ranked):
        e = s["estimate"]
        rows.append([t.cell(f"#{i + 1}"), t.plan_code(e["plan"]),
                     t.cell(fmt(e["step_time_s"])), t.cell(f"+{pct(e['step_time_s'] / best - 1)}"),
                     t.cell(f"{e['tokens_per_s']:,.0f}"), t.cell(pct(e["mfu"])),
                     t.cell(e["num_microbatches"]),
                     t.cell(f"{fmt(e['peak_memory_gib'], 1)} / {fmt(e['capacity_gib'], 1)}"),
                     t.cell("yes" if e["fits"] else "no")])
    return t.table(["#", "plan", "step s", "vs best", "tokens/s", "MFU", "micro-batches",
                    "peak / capacity GiB", "fits"], rows,
                   numeric=[False, False, True, True, True, True, True, True, False])


def _baselines_table(baselines: list[dict[str, Any]]) -> str:
    if not baselines:
        return '<p class="note">No published configuration for this model and device count.</p>'
    rows = []
    for b in baselines:
        e = b["estimate"]
        step = t.cell(fmt(e["step_time_s"])) if e else '<span class="bad">cannot be evaluated</span>'
        slower = (t.cell(f"{b['slower_than_best_pct']:+.1f}%")
                  if b["slower_than_best_pct"] is not None else "")
        issues = [*b["inconsistencies"], *([b["notes"]] if b["notes"] else [])]
        rows.append([t.cell(b["label"]), t.cell(b["source"]), t.plan_code(b["plan"]),
                     step, slower, t.notes(issues)])
    return t.table(["label", "source", "plan", "step s", "slower than best", "inconsistencies "
                    "and notes"], rows, numeric=[False, False, False, True, True, False])


def _bar_rows(ranked: list[dict[str, Any]], baselines: list[dict[str, Any]],
              field: str) -> list[BarRow]:
    rows = [BarRow(label=f"#{i + 1} {short_plan(s['estimate'])}", parts=s["estimate"][field],
                   tooltip=s["estimate"]["plan"]) for i, s in enumerate(ranked)]
    rows += [BarRow(label=b["label"][:34], parts=b["estimate"][field], tooltip=b["plan"],
                    note="(baseline)") for b in baselines if b["estimate"] is not None]
    return rows


def _time_chart(ranked: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> str:
    return bar_chart(BarChart(chart="breakdown", keys=BREAKDOWN_KEYS, colors=TIME_COLORS,
                              unit="seconds per step",
                              rows=_bar_rows(ranked, baselines, "breakdown")))


def _memory_chart(ranked: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> str:
    rows = _bar_rows(ranked, baselines, "memory_gib")
    cap = ranked[0]["estimate"]["capacity_gib"]
    return bar_chart(BarChart(chart="memory", keys=MEMORY_KEYS, colors=MEMORY_COLORS, unit="GiB",
                              rows=rows, capacity=cap, capacity_label="device memory",
                              decimals=2))


def _panels(ranked: list[dict[str, Any]], result: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = [(f"plan-{i + 1}", f"#{i + 1}", _plan_panel(s["estimate"], result, rank=i + 1,
                                                      heading=f"Plan #{i + 1}"))
           for i, s in enumerate(ranked)]
    runnable = [b for b in result["baselines"] if b["estimate"] is not None]
    out += [(f"baseline-{i + 1}", f"baseline {i + 1}",
             _plan_panel(b["estimate"], result, rank=0, heading=f"Baseline: {b['label']}"))
            for i, b in enumerate(runnable)]
    return out


def _plan_panel(e: dict[str, Any], result: dict[str, Any], *, rank: int, heading: str) -> str:
    inputs = result["inputs"]
    model = model_of(result)
    plan = plan_of(e["plan"], inputs["devices"])
    parts = [f"<h3>{t.cell(heading)}</h3><p><code>{t.cell(e['plan'])}</code></p>",
             t.notes(e["warnings"]), "<h3>Memory per stage</h3>",
             _stage_memory_chart(e, dualpipe=plan.schedule == Schedule.DUALPIPE),
             "<h3>Pipeline schedule</h3>",
             (_dualpipe_section(plan.pp, plan.recompute.value, e)
              if plan.schedule == Schedule.DUALPIPE
              else _schedule_section(plan.pp, plan.vpp, plan.recompute.value, e)),
             device_map_section(map_inputs(plan, model),
                                devices_per_node=inputs["cluster"]["devices_per_node"])]
    if plan.schedule == Schedule.DUALPIPE:
        parts.append(f'<p class="note">Under DualPipe the device at pipeline rank s also holds '
                     f"stage {plan.pp - 1}-s (its blocks, and the embedding or head that stage "
                     "carries); the map shows stage s.</p>")
    if rank == 1 and result.get("device_mapping"):
        parts.append(_mapping_table(result["device_mapping"]))
    return "".join(parts)


def _stage_memory_chart(e: dict[str, Any], *, dualpipe: bool = False) -> str:
    st = e["stages"]
    p = len(st)
    label = ((lambda i, s: f"rank {i} (stages {i} and {p - 1 - i}: blocks {s['first_layer']}-"
                           f"{s['last_layer']}, {st[p - 1 - i]['first_layer']}-"
                           f"{st[p - 1 - i]['last_layer']})") if dualpipe else
             (lambda i, s: f"stage {i} (blocks {s['first_layer']}-{s['last_layer']})"))
    rows = [BarRow(label=label(i, s), parts={"stage peak": s["memory_gib"]})
            for i, s in enumerate(st)]
    rows.append(BarRow(label="most loaded device", parts=e["memory_gib"],
                       note="" if e["fits"] else f"over by {fmt(e['over_memory_gib'], 2)} GiB"))
    return bar_chart(BarChart(chart="memory-stages", keys=("stage peak", *MEMORY_KEYS),
                              colors=MEMORY_COLORS, unit="GiB", rows=rows,
                              capacity=e["capacity_gib"], capacity_label="device memory",
                              decimals=2))


def drawn_microbatches(m: int, p: int, v: int) -> int:
    """How many micro-batches the timeline draws (MAX_DRAWN_MICROBATCHES, MAX_DRAWN_PASSES);
    a multiple of p when interleaved, as Megatron-LM requires."""
    budget = min(MAX_DRAWN_MICROBATCHES, MAX_DRAWN_PASSES // (2 * p * v))
    if m <= max(budget, p):
        return m
    return max(p, budget // p * p) if v > 1 else max(p, budget)


def _schedule_section(p: int, v: int, recompute: str, e: dict[str, Any]) -> str:
    m = e["num_microbatches"]
    if p == 1:
        return ('<p class="note">No pipeline (pp=1): each device runs its '
                f"{m} micro-batch{'es' * (m > 1)} back to back, with no bubble.</p>")
    share = forward_share(recompute)
    times = [s["time_per_microbatch_s"] for s in e["stages"]]
    fwd, bwd = [c * share for c in times], [c * (1 - share) for c in times]
    shown = drawn_microbatches(m, p, v)
    drawn = simulate(forward_s=fwd, backward_s=bwd, num_microbatches=shown, num_chunks=v)
    full = (simulate(forward_s=fwd, backward_s=bwd, num_microbatches=m, num_chunks=v)
            if 2 * m * v * p <= MAX_SIMULATED_PASSES else None)
    kind = f"interleaved 1F1B with {v} chunks per stage" if v > 1 else "1F1B (PipeDream-Flush)"
    split = _split_text(share)
    caption = (f"{kind}, {p} stages, {m} micro-batches per step"
               + (f"; drawn with {shown} of them (same warm-up and cool-down, shorter steady "
                  "phase)" if shown < m else "")
               + f". Each stage's time per micro-batch is split {split}."
               + (f" Hover tooltips are left out ({len(drawn.ops):,} boxes)."
                  if len(drawn.ops) > MAX_TOOLTIP_BOXES else ""))
    return (f'<p class="note">{escape(caption)}</p>'
            + timeline_chart(drawn, caption=caption) + _schedule_stats(p, v, m, e, full))


def _split_text(share: float) -> str:
    """How the timeline splits a time per micro-batch (schedule.forward_share)."""
    return ("forward 1/4, backward 3/4 (full recomputation reruns the forward)"
            if share == FORWARD_SHARE_FULL_RECOMPUTE else "forward 1/3, backward 2/3")


def _dualpipe_section(p: int, recompute: str, e: dict[str, Any]) -> str:
    """A DualPipe plan: DualPipe's own order simulated on the ranks' times (schedule.
    simulate_dualpipe), next to the cost model's bubble."""
    m = e["num_microbatches"]
    share = forward_share(recompute)
    times = [s["time_per_microbatch_s"] for s in e["stages"]]    # per rank, both stages' mean
    fwd = [c * share for c in times]
    bwd = [c * (1 - share) for c in times]
    wgt = list(fwd)                 # the weight-gradient GEMMs do the forward GEMMs' FLOPs
    budget = min(MAX_DRAWN_MICROBATCHES, MAX_DRAWN_PASSES // (3 * p)) // 2 * 2
    shown = min(m, max(2 * p, budget))      # DualPipe needs an even count of at least 2p
    drawn = simulate_dualpipe(forward_s=fwd, backward_s=bwd, weight_s=wgt, num_microbatches=shown)
    full = (simulate_dualpipe(forward_s=fwd, backward_s=bwd, weight_s=wgt, num_microbatches=m)
            if 3 * m * p <= MAX_SIMULATED_PASSES else None)
    split = _split_text(share)
    caption = (f"DualPipe (DeepSeek-V3 report Sec. 3.2.1), {p} ranks, {m} micro-batches per step, "
               f"{m // 2} from each end of the pipeline; rank r holds stage r and stage {p - 1}-r"
               + (f"; drawn with {shown} of them (same warm-up and cool-down, shorter steady "
                  "phase)" if shown < m else "")
               + f". Each rank's time per micro-batch is split {split}, the weight gradient "
               "as long as the forward; paired forward and backward chunks run back to back.")
    f0, b0 = fwd[times.index(max(times))], bwd[times.index(max(times))]
    rows = [["Table 2's bubble, (p/2-1)(F&B + B - 3W), at the slowest rank's times",
             f"{fmt(max(0.0, (p / 2 - 1) * (f0 + 2 * b0 - 3 * f0)))} s"],
            ["cost model's bubble (the blocks' weight-gradient GEMMs as W)",
             f"{fmt(e['breakdown']['bubble'])} s"]]
    return (f'<p class="note">{escape(caption)}</p>' + timeline_chart(drawn, caption=caption)
            + _stats_table(rows, full, work="busiest rank's work (m/2 x each of its two stages)",
                           passes=3 * m * p))


def _schedule_stats(p: int, v: int, m: int, e: dict[str, Any], full: Any) -> str:
    closed = closed_form_bubble_fraction(num_stages=p, num_microbatches=m, num_chunks=v)
    formula = f"(p-1)/(v*m) = {p - 1}/{v * m}" if v > 1 else f"(p-1)/m = {p - 1}/{m}"
    rows = [["closed form bubble fraction, equal stages", f"{formula} = {pct(closed)}"],
            ["cost model's bubble", f"{fmt(e['breakdown']['bubble'])} s"]]
    return _stats_table(rows, full, work="busiest stage's work (m x its time per micro-batch)",
                        passes=2 * m * v * p)


def _stats_table(rows: list[list[str]], full: Any, *, work: str, passes: int) -> str:
    """The schedule table: the simulation's time, work and bubble (or why it was skipped)
    above the closed-form rows."""
    if full is not None:
        rows = [["simulated pipeline time (all micro-batches)", f"{fmt(full.makespan_s)} s"],
                [work, f"{fmt(full.ideal_s)} s"],
                ["simulated bubble", f"{fmt(full.bubble_s)} s ({pct(full.bubble_fraction)})"],
                *rows]
    else:
        rows.append(["simulation", f"skipped: {passes:,} passes exceed {MAX_SIMULATED_PASSES:,}"])
    return t.table(["schedule", "value"], [[t.cell(a), t.cell(b)] for a, b in rows],
                   numeric=[False, True])


def _mapping_table(mp: dict[str, Any]) -> str:
    members = ", ".join(f"{k} {v}" for k, v in mp["members_per_node"].items())
    rows = [["members of each group per node", members],
            ["rank order realising it", mp["order"] or mp["nested"] or "none"],
            ["its communication per step", f"{fmt(mp['comm_time_s'])} s"],
            ["with the default order tp-cp-dp-pp", f"{fmt(mp['default_order_comm_time_s'])} s"],
            ["solver status (gap)", f"{mp['status']} ({fmt(mp['gap'], 4)})"]]
    return ("<h3>Device-mapping program (best plan)</h3>"
            + t.table(["", ""], [[t.cell(a), t.cell(b)] for a, b in rows]))


def _notes(result: dict[str, Any]) -> list[str]:
    stats = result["stats"]
    pruned = ", ".join(f"{k} {v:,}" for k, v in stats["pruned"].items())
    return [*result["notes"], f"{stats['candidates']:,} plans scored in full; pruned: "
            f"{pruned or 'none'}" + ("; the time limit stopped the search" if stats.get("cut") else ""),
            "Search wall time is left out so that identical searches give identical reports."]
