"""Inline SVG charts for the HTML report: stacked horizontal bars and the pipeline timeline.

Decides geometry, scales, colours and tooltips (SVG <title>, shown on hover without any
script); does not decide what is plotted (the report sections pass the numbers in). Output is
a pure function of the arguments, text is escaped, and numbers are printed with fixed
precision, so the same input gives byte-identical SVG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

from planner.report.schedule import PassOp, Timeline

FONT = "font-family:system-ui,sans-serif"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295")
"""Tableau 10 plus two, cycled for stages and chunks (a colour choice, not a measured value)."""

CAPACITY_COLOR = "#c0392b"

MAX_TOOLTIP_BOXES = 3000
"""Timelines with more boxes than this drop the per-box tooltips (they are most of the
file size: 8,192 boxes of a 64-stage pipeline would take about 1.3 MB)."""


@dataclass(frozen=True)
class BarRow:
    """One bar: a label and its parts (seconds, GiB, ...), in the chart's key order."""

    label: str
    parts: dict[str, float]
    note: str = ""
    tooltip: str = ""


@dataclass(frozen=True)
class BarChart:
    """A stacked horizontal bar chart; `capacity` draws a vertical limit line."""

    chart: str
    keys: tuple[str, ...]
    colors: dict[str, str]
    unit: str
    rows: list[BarRow]
    capacity: float | None = None
    capacity_label: str = "capacity"
    decimals: int = 3
    width: int = 1000
    label_width: int = 250
    extra_attrs: dict[str, str] = field(default_factory=dict)


def fmt(x: float, decimals: int = 3) -> str:
    """Fixed-precision number without a negative zero."""
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top` (steps of 1, 2 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _tick_text(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return fmt(v, decimals)


def svg_open(*, chart: str, width: int, height: int, label: str,
             extra_attrs: dict[str, str] | None = None) -> str:
    attrs = "".join(f' {k}="{escape(v)}"' for k, v in sorted((extra_attrs or {}).items()))
    return (f'<svg class="chart" data-chart="{escape(chart)}" role="img" '
            f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'style="{FONT}"{attrs}>')


def legend(items: list[tuple[str, str]], *, x: float, y: float, max_x: float) -> tuple[str, float]:
    """Swatches in rows; returns the SVG and the y below the legend."""
    out, cx, cy = [], x, y
    for name, color in items:
        w = 28 + 7.4 * len(name)
        if cx + w > max_x and cx > x:
            cx, cy = x, cy + 18
        out.append(f'<rect x="{cx:.1f}" y="{cy:.1f}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{cx + 16:.1f}" y="{cy + 10:.1f}" font-size="12">{escape(name)}</text>')
        cx += w
    return "".join(out), cy + 22


def bar_chart(spec: BarChart) -> str:
    """Stacked horizontal bars with a value axis, a legend and hover tooltips per part."""
    bar_h, gap, left = 20, 8, spec.label_width
    plot_w = spec.width - left - 90
    totals = [sum(r.parts.get(k, 0.0) for k in spec.keys) for r in spec.rows]
    ticks = nice_ticks(max([*totals, spec.capacity or 0.0, 1e-12]) * 1.02)
    scale = plot_w / ticks[-1]
    used = [k for k in spec.keys if any(r.parts.get(k, 0.0) > 0 for r in spec.rows)]
    leg, top = legend([(k, spec.colors[k]) for k in used], x=left, y=6, max_x=spec.width)
    height = int(top + len(spec.rows) * (bar_h + gap) + 34)
    out = [svg_open(chart=spec.chart, width=spec.width, height=height,
                    label=f"{spec.chart} chart", extra_attrs=spec.extra_attrs), leg]
    axis_y = top + len(spec.rows) * (bar_h + gap)
    step = ticks[1] - ticks[0]
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{axis_y:.1f}" '
                   f'stroke="#ddd"/><text x="{x:.1f}" y="{axis_y + 14:.1f}" font-size="11" '
                   f'text-anchor="middle">{_tick_text(t, step)}</text>')
    out.append(f'<text x="{left + plot_w:.1f}" y="{axis_y + 28:.1f}" font-size="11" '
               f'text-anchor="end">{escape(spec.unit)}</text>')
    for i, (row, total) in enumerate(zip(spec.rows, totals)):
        out.append(_bar(spec, row, total, y=top + i * (bar_h + gap), scale=scale, bar_h=bar_h))
    if spec.capacity is not None:
        x = left + spec.capacity * scale
        out.append(f'<line class="capacity" x1="{x:.1f}" y1="{top - 6:.1f}" x2="{x:.1f}" '
                   f'y2="{axis_y:.1f}" stroke="{CAPACITY_COLOR}" stroke-width="2" '
                   f'stroke-dasharray="6 3"><title>{escape(spec.capacity_label)} '
                   f'{fmt(spec.capacity, spec.decimals)} {escape(spec.unit)}</title></line>')
    out.append("</svg>")
    return "".join(out)


def _bar(spec: BarChart, row: BarRow, total: float, *, y: float, scale: float,
         bar_h: int) -> str:
    left = spec.label_width
    tip = escape(row.tooltip or row.label)
    out = [f'<g class="bar"><title>{tip}</title><text x="{left - 8}" y="{y + 14:.1f}" '
           f'font-size="12" text-anchor="end">{escape(row.label)}</text>']
    x = float(left)
    for k in spec.keys:
        v = row.parts.get(k, 0.0)
        if v <= 0:
            continue
        w = v * scale
        share = f" ({100 * v / total:.1f}%)" if total > 0 else ""
        out.append(f'<rect x="{x:.2f}" y="{y:.1f}" width="{max(w, 0.5):.2f}" height="{bar_h}" '
                   f'fill="{spec.colors[k]}"><title>{escape(row.label)}: {escape(k)} '
                   f'{fmt(v, spec.decimals)} {escape(spec.unit)}{share}</title></rect>')
        x += w
    note = f" {row.note}" if row.note else ""
    out.append(f'<text x="{x + 6:.1f}" y="{y + 14:.1f}" font-size="12">'
               f'{fmt(total, spec.decimals)}{escape(note)}</text></g>')
    return "".join(out)


def timeline_chart(tl: Timeline, *, width: int = 1200, caption: str = "") -> str:
    """Gantt chart of a simulated step: one row per stage, one box per pass; forwards light,
    backwards dark, colour per model chunk, micro-batch number inside when it fits; a
    tooltip per box unless there are more than MAX_TOOLTIP_BOXES."""
    left, row_h, top = 70, 26, 8
    chunk_items = []
    for c in range(tl.num_chunks):
        suffix = (f" direction {c}" if tl.dualpipe else
                  f" chunk {c}" if tl.num_chunks > 1 else "")
        chunk_items += [(f"forward{suffix}", _shade(PALETTE[c % len(PALETTE)], 0.55)),
                        (f"backward{suffix}", PALETTE[c % len(PALETTE)])]
        if tl.dualpipe:
            chunk_items.append((f"weight gradient{suffix}", _shade(PALETTE[c % len(PALETTE)], 0.3)))
    leg, top = legend(chunk_items, x=left, y=top, max_x=width)
    plot_w = width - left - 20
    ticks = nice_ticks(tl.makespan_s, count=10)
    scale = plot_w / ticks[-1]
    axis_y = top + tl.num_stages * row_h
    height = int(axis_y + 36)
    out = [svg_open(chart="schedule", width=width, height=height,
                    label=caption or "pipeline schedule"), leg]
    step = ticks[1] - ticks[0]
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{axis_y:.1f}" '
                   f'stroke="#eee"/><text x="{x:.1f}" y="{axis_y + 14:.1f}" font-size="11" '
                   f'text-anchor="middle">{_tick_text(t, step)}</text>')
    out.append(f'<text x="{left + plot_w:.1f}" y="{axis_y + 30:.1f}" font-size="11" '
               f'text-anchor="end">seconds</text>')
    for s in range(tl.num_stages):
        out.append(f'<text x="{left - 8}" y="{top + s * row_h + 17}" font-size="12" '
                   f'text-anchor="end">{"rank" if tl.dualpipe else "stage"} {s}</text>')
    tips = len(tl.ops) <= MAX_TOOLTIP_BOXES
    for op in tl.ops:
        out.append(_op_box(op, y=top + op.stage * row_h + 2, left=left, scale=scale,
                           chunked=tl.num_chunks > 1, tooltip=tips, dualpipe=tl.dualpipe))
    out.append("</svg>")
    return "".join(out)


def _op_box(op: PassOp, *, y: float, left: float, scale: float, chunked: bool,
            tooltip: bool, dualpipe: bool = False) -> str:
    base = PALETTE[op.chunk % len(PALETTE)]
    color = {"F": _shade(base, 0.55), "W": _shade(base, 0.3)}.get(op.kind, base)
    x, w = left + op.start_s * scale, (op.end_s - op.start_s) * scale
    name = {"F": "forward", "W": "weight gradient"}.get(op.kind, "backward")
    chunk = (f", direction {op.chunk}" if dualpipe else f", chunk {op.chunk}" if chunked else "")
    tip = (f"{'rank' if dualpipe else 'stage'} {op.stage}: {name} of micro-batch {op.microbatch}{chunk}, "
           f"{fmt(op.start_s, 4)}-{fmt(op.end_s, 4)} s")
    title = f"<title>{escape(tip)}</title>" if tooltip else ""
    box = (f'<rect class="op {op.kind}" x="{x:.1f}" y="{y:.0f}" width="{max(w - 0.6, 0.4):.1f}" '
           f'height="22" fill="{color}">{title}</rect>')
    if w < 8 + 6 * len(str(op.microbatch)):
        return box
    fill = "#fff" if op.kind == "B" else "#222"
    return (box + f'<text x="{x + w / 2:.1f}" y="{y + 15:.0f}" font-size="10" fill="{fill}" '
            f'text-anchor="middle" pointer-events="none">{op.microbatch}</text>')


def _shade(color: str, mix: float) -> str:
    """Blend a #rrggbb colour with white by `mix` (0 = unchanged, 1 = white)."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * mix):02x}" for c in rgb)
