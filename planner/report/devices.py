"""Which device holds which layers (and experts): the report's device map.

Decides each rank's coordinates from the plan's layout order, the blocks of each pipeline
stage (with Megatron-LM's interleaved chunk assignment when vpp > 1) and the routed experts of
each expert-parallel rank, and draws them as a grid of nodes x devices. Does not decide the
layout (the search does) and does not model placement beyond "rank r sits on node r // d"
(d devices per node, ranks filled node by node, as the cost model's group links assume).

Conventions:
- Rank decomposition: `order` lists the groups innermost first, so the first varies fastest:
  for tp-cp-dp-pp, rank = tp_i + tp*(cp_i + cp*(dp_i + dp*pp_i)) (Megatron-Core's
  RankGenerator with the default 'tp-cp-ep-dp-pp', EP folded into DP).
- Interleaved stages (vpp = v): stage s holds v chunks of c_s / v blocks; virtual stage
  j*p + s is chunk j of stage s and blocks are numbered along virtual stages (Narayanan et al.
  2021 Sec. 2.2.2: device 1 holds layers 1, 2, 9, 10 of 16 on 4 devices with 2 chunks).
- Experts: within a stage, the tp*cp*dp ranks in layout order (pp removed) are split as
  etp (innermost) x ep x the rest; expert-parallel rank e holds routed experts
  [e*E/ep, (e+1)*E/ep) of every MoE block of the stage (Megatron-Core's contiguous local experts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from planner.report.charts import PALETTE, svg_open

MAX_FULL_DEVICES = 128
"""Above this many devices the map draws one data-parallel replica (a readability choice)."""

MAX_NODE_ROWS = 48
"""At most this many nodes are drawn; the rest are counted in the caption."""

COLUMNS = 16
"""Devices per grid row; nodes with more devices (e.g. 72 in an NVL72 rack) wrap."""


@dataclass(frozen=True)
class DeviceRole:
    """What one rank holds."""

    rank: int
    coords: dict[str, int]
    chunks: tuple[tuple[int, int], ...]
    embedding: bool
    head: bool
    experts: tuple[int, int] | None


@dataclass(frozen=True)
class MapInputs:
    """The plan and model facts the map needs (all plain numbers)."""

    sizes: dict[str, int]
    order: tuple[str, ...]
    layers_per_stage: tuple[int, ...]
    vpp: int
    ep: int
    etp: int
    num_experts: int | None
    moe_layers: tuple[bool, ...]


def rank_coords(rank: int, sizes: dict[str, int], order: tuple[str, ...]) -> dict[str, int]:
    """Group coordinates of a rank; the first name in `order` varies fastest."""
    out = {}
    for name in order:
        rank, out[name] = divmod(rank, sizes[name])
    return out


def stage_chunks(layers_per_stage: tuple[int, ...], vpp: int) -> list[list[tuple[int, int]]]:
    """Inclusive block ranges of each stage's chunks, numbered along the virtual stages."""
    p = len(layers_per_stage)
    out: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    start = 0
    for _chunk in range(vpp):
        for s in range(p):
            n = layers_per_stage[s] // vpp
            out[s].append((start, start + n - 1))
            start += n
    return out


def device_roles(inp: MapInputs, ranks: list[int]) -> list[DeviceRole]:
    """The role of each listed rank."""
    chunks = stage_chunks(inp.layers_per_stage, inp.vpp)
    total = sum(inp.layers_per_stage)
    inner = tuple(n for n in inp.order if n != "pp")
    roles = []
    for r in ranks:
        c = rank_coords(r, inp.sizes, inp.order)
        mine = tuple(chunks[c["pp"]])
        experts = None
        if inp.num_experts and any(inp.moe_layers[i] for a, b in mine for i in range(a, b + 1)):
            local, mult = 0, 1
            for n in inner:
                local += c[n] * mult
                mult *= inp.sizes[n]
            e = (local // inp.etp) % inp.ep
            per = inp.num_experts // inp.ep
            experts = (e * per, (e + 1) * per - 1)
        roles.append(DeviceRole(rank=r, coords=c, chunks=mine,
                                embedding=any(a == 0 for a, _ in mine),
                                head=any(b == total - 1 for _, b in mine), experts=experts))
    return roles


def _layers_text(chunks: tuple[tuple[int, int], ...], limit: int = 2) -> str:
    parts = [f"{a}-{b}" if b > a else f"{a}" for a, b in chunks]
    if len(parts) > limit:
        return "L" + ",".join(parts[:limit]) + f" +{len(parts) - limit}"
    return "L" + ",".join(parts)


def drawn_ranks(inp: MapInputs) -> tuple[list[int], str]:
    """All ranks, or those of data-parallel replica 0 when there are many; and a caption."""
    n = math.prod(inp.sizes.values())
    if n <= MAX_FULL_DEVICES or inp.sizes["dp"] == 1:
        return list(range(n)), f"all {n} devices"
    ranks = [r for r in range(n) if rank_coords(r, inp.sizes, inp.order)["dp"] == 0]
    return ranks, (f"one data-parallel replica ({len(ranks)} of {n} devices) x dp "
                   f"{inp.sizes['dp']}; grey cells belong to other replicas")


def device_map_chart(inp: MapInputs, *, devices_per_node: int, width: int = 1200) -> tuple[str, str]:
    """SVG grid of nodes x devices, coloured by pipeline stage; returns (svg, caption)."""
    ranks, caption = drawn_ranks(inp)
    roles = {role.rank: role for role in device_roles(inp, ranks)}
    nodes = sorted({r // devices_per_node for r in ranks})
    if len(nodes) > MAX_NODE_ROWS:
        caption += f"; first {MAX_NODE_ROWS} of {len(nodes)} nodes drawn"
        nodes = nodes[:MAX_NODE_ROWS]
    cols = min(devices_per_node, COLUMNS)
    rows_per_node = math.ceil(devices_per_node / cols)
    left, top, gap = 78, 6, 4
    cell_w = min(118, (width - left - 10) // cols - gap)
    cell_h = 52 if inp.num_experts else 40
    height = top + len(nodes) * (rows_per_node * (cell_h + gap) + 6) + 4
    out = [svg_open(chart="device-map", width=width, height=height, label="device map")]
    y = top
    for node in nodes:
        out.append(f'<text x="{left - 8}" y="{y + cell_h / 2 + 4:.1f}" font-size="12" '
                   f'text-anchor="end">node {node}</text>')
        for local in range(devices_per_node):
            rank = node * devices_per_node + local
            row, col = divmod(local, cols)
            x, cy = left + col * (cell_w + gap), y + row * (cell_h + gap)
            out.append(_cell(roles.get(rank), rank, x=x, y=cy, w=cell_w, h=cell_h))
        y += rows_per_node * (cell_h + gap) + 6
    out.append("</svg>")
    return "".join(out), caption


def _cell(role: DeviceRole | None, rank: int, *, x: float, y: float, w: int, h: int) -> str:
    if role is None:
        return (f'<rect class="other" x="{x}" y="{y:.1f}" width="{w}" height="{h}" '
                f'fill="#eee" stroke="#ccc"><title>rank {rank}: another data-parallel '
                f'replica</title></rect>')
    stage = role.coords["pp"]
    color = PALETTE[stage % len(PALETTE)]
    coords = ", ".join(f"{k} {v}" for k, v in role.coords.items())
    full_layers = ", ".join(f"{a}-{b}" for a, b in role.chunks)
    extras = " + embedding" * role.embedding + " + head" * role.head
    tip = f"rank {rank} ({coords}): stage {stage}, blocks {full_layers}{extras}"
    lines = [f"r{rank} s{stage}", _layers_text(role.chunks) + ("+E" if role.embedding else "")
             + ("+H" if role.head else "")]
    if role.experts is not None:
        tip += f"; routed experts {role.experts[0]}-{role.experts[1]} of its MoE blocks"
        lines.append(f"E{role.experts[0]}-{role.experts[1]}")
    text = "".join(f'<text x="{x + 5}" y="{y + 14 + 12 * i:.1f}" font-size="10.5" '
                   f'fill="#111">{escape(t)}</text>' for i, t in enumerate(lines))
    return (f'<g class="device"><title>{escape(tip)}</title><rect x="{x}" y="{y:.1f}" '
            f'width="{w}" height="{h}" rx="3" fill="{color}" fill-opacity="0.45" '
            f'stroke="{color}"/>{text}</g>')
