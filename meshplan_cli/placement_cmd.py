"""`meshplan placement`: conventional EP, large EP and the integer program's expert placement
of one MoE layer, side by side.

Thin: parse options, turn the router popularity into expected loads per expert
(cost_models.moe_balance), call search.expert_placement.compare_placements, render.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from cost_models.compute import Roofline
from cost_models.efficiency import device_efficiency
from cost_models.moe_balance import inclusion_probabilities, normalise_popularity
from meshplan_cli.common import (
    ClusterOpt,
    DebugOpt,
    DtypeOpt,
    GpusOpt,
    JsonOpt,
    ModelOpt,
    NodesOpt,
    app,
    check_dtype,
    handle_errors,
    out,
    print_json,
)
from planner.errors import SpecError
from planner.model import GIB, DType, ModelSpec
from planner.presets import load_cluster, load_model
from search.expert_placement import Comparison, Placement, compare_placements

DEFAULT_TOKENS_PER_DEVICE = 4096
"""Tokens each device routes per step: the top of seed 002's 512-4096 tokens per micro-batch."""


def _zipf(spec: str, experts: int) -> list[float]:
    """'zipf:ALPHA[:SEED]': weight 1/rank**ALPHA, ranks shuffled over the experts by a seeded
    permutation (seed 0 by default) so the hot experts are not all neighbours."""
    parts = spec.split(":")
    try:
        alpha = float(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
        if len(parts) > 3 or not math.isfinite(alpha) or alpha < 0 or seed < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise SpecError(f"--popularity '{spec}' is not zipf:ALPHA or zipf:ALPHA:SEED with "
                        "ALPHA >= 0 and SEED >= 0 (e.g. zipf:1.0)") from None
    ranks = np.random.default_rng(seed).permutation(experts)
    return list(1.0 / (ranks + 1.0) ** alpha)


def _popularity(spec: str | None, model: ModelSpec, moe_index: int) -> list[float] | None:
    """The popularity of the chosen MoE layer: None (uniform), zipf, or a JSON file holding
    one list (every MoE layer) or one list per MoE layer."""
    assert model.moe is not None
    experts = model.moe.num_experts
    if spec is None:
        return None
    if spec.startswith("zipf:"):
        return _zipf(spec, experts)
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"--popularity file '{spec}' does not exist; give a JSON file or "
                        "zipf:ALPHA")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"--popularity file '{spec}' is not valid JSON ({e}); give a list of "
                        "weights per expert") from None
    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        if len(data) != model.num_moe_layers:
            raise SpecError(f"--popularity file '{spec}' has {len(data)} layers but the model "
                            f"has {model.num_moe_layers} MoE layers; give one list per MoE "
                            "layer or a single list")
        data = data[moe_index]
    if not isinstance(data, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise SpecError(f"--popularity file '{spec}' must hold a list of numbers (one per "
                        "expert) or a list of such lists (one per MoE layer)")
    return [float(v) for v in data]


def _moe_layer(model: ModelSpec, layer: int | None) -> tuple[int, int]:
    """(block number from 1, index among the MoE layers) of --layer (default: first MoE)."""
    moe = [i + 1 for i, is_moe in enumerate(model.moe_layer_mask) if is_moe]
    if layer is None:
        return moe[0], 0
    if layer not in moe:
        raise SpecError(f"--layer {layer} is not an MoE layer of '{model.name}'; its MoE layers "
                        f"are {moe[0]}..{moe[-1]} (counted from 1)"
                        + ("" if len(moe) == moe[-1] - moe[0] + 1 else ", not all of them"))
    return layer, moe.index(layer)


def _default_ep(experts: int, devices: int, per_node: int) -> int:
    """Largest EP that divides the experts and the devices and stays inside one node."""
    g = math.gcd(experts, devices)
    return max(k for k in range(1, min(g, per_node) + 1) if g % k == 0)


def _expert_seconds(model: ModelSpec, roof: Roofline) -> Any:
    """Forward seconds of one expert's MLP (up and down projections) over `tokens` tokens."""
    assert model.moe is not None
    ffn, h = model.moe.expert_ffn_hidden_size, model.hidden_size
    up = ffn * (2 if model.activation.gated else 1)

    def seconds(tokens: float) -> float:
        return roof.gemm(tokens, up, h)[0] + roof.gemm(tokens, h, ffn)[0]

    return seconds


def _row(p: Placement, *, expert_bytes: int, moe_layers: int, token_bytes: float,
         tokens: float) -> dict[str, Any]:
    return {
        "name": p.name, "routing": p.routing, "experts_per_device": p.slots_used,
        "max_device_load": p.max_load, "imbalance": p.imbalance,
        "max_device_expert_fwd_s": p.max_device_s,
        "cross_node_assignments": p.cross_node_assignments,
        "cross_node_bytes_per_token": p.cross_node_assignments * token_bytes / tokens,
        "expert_memory_gib_per_device_layer": p.slots_used * expert_bytes / GIB,
        "expert_memory_gib_per_device_all_moe_layers": p.slots_used * expert_bytes
        * moe_layers / GIB,
        "replicas": [list(r) for r in p.replicas],
        "shares": [list(s) for s in p.shares],
    }


@app.command("placement")
@handle_errors
def placement_cmd(
    model: ModelOpt,
    cluster: ClusterOpt,
    gpus: GpusOpt = None,
    nodes: NodesOpt = None,
    tokens_per_device: Annotated[int, typer.Option(
        "--tokens-per-device", min=1, help="tokens each device routes per step")]
        = DEFAULT_TOKENS_PER_DEVICE,
    popularity: Annotated[str | None, typer.Option(
        "--popularity", help="router popularity: JSON file (a list of weights per expert, or "
        "one list per MoE layer) or zipf:ALPHA[:SEED]; default uniform")] = None,
    slots: Annotated[int | None, typer.Option(
        "--slots", min=1, help="experts of the layer one device may hold; default experts/EP "
        "(the conventional placement's memory)")] = None,
    ep: Annotated[int | None, typer.Option(
        "--ep", min=1, help="conventional EP degree; default the largest that fits in a node")]
        = None,
    layer: Annotated[int | None, typer.Option(
        "--layer", min=1, help="MoE block, counted from 1 (default: the first MoE layer)")]
        = None,
    time_limit: Annotated[float, typer.Option(
        "--time-limit", min=0.01, help="solver budget in CP-SAT deterministic seconds "
        "(reproducible; about one core-second each)")] = 5.0,
    dtype: DtypeOpt = "bf16",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Place one MoE layer's experts: conventional EP, large EP and the integer program."""
    spec = load_model(model)
    if spec.moe is None:
        raise SpecError(f"model '{spec.name}' has no MoE layers; pick an MoE model such as "
                        "mixtral-8x7b, deepseek-v3 or seed002-moe-61l")
    check_dtype(dtype)
    cl = load_cluster(cluster)
    devices = cl.devices_for(gpus=gpus, nodes=nodes)
    experts, top_k = spec.moe.num_experts, spec.moe.top_k
    block, moe_index = _moe_layer(spec, layer)
    pop = _popularity(popularity, spec, moe_index)
    normalise_popularity(pop, experts, top_k)
    ep = _default_ep(experts, devices, cl.devices_per_node) if ep is None else ep
    tokens = float(devices * tokens_per_device)
    loads = list(tokens * inclusion_probabilities(experts, top_k, pop))
    roof = Roofline(cl.device, device_efficiency(cl.device)[0], DType(dtype))
    cmp = compare_placements(loads, devices=devices, devices_per_node=cl.devices_per_node,
                             ep=ep, slots=slots, time_limit_s=time_limit,
                             expert_seconds=_expert_seconds(spec, roof))
    elem = DType(dtype).bytes
    row_kw = {"expert_bytes": spec.mlp_params(spec.moe.expert_ffn_hidden_size) * elem,
              "moe_layers": spec.num_moe_layers, "tokens": tokens,
              "token_bytes": 2.0 * spec.hidden_size * elem}   # dispatch + combine
    data = _report(spec, cl.name, devices, block, tokens_per_device, popularity, cmp, row_kw,
                   slots if slots is not None else experts // ep)
    if as_json:
        print_json(data)
        return
    _render(data)


def _report(spec: ModelSpec, cluster: str, devices: int, block: int, tokens_per_device: int,
            popularity: str | None, cmp: Comparison, row_kw: dict[str, Any],
            slots: int) -> dict[str, Any]:
    rows = [_row(cmp.conventional, **row_kw)]
    if cmp.large_ep is not None:
        rows.append(_row(cmp.large_ep, **row_kw))
    rows.append(_row(cmp.ilp, **row_kw))
    return {
        "inputs": {"model": spec.name, "cluster": cluster, "devices": devices, "layer": block,
                   "experts": spec.moe.num_experts if spec.moe else 0,
                   "top_k": spec.moe.top_k if spec.moe else 0,
                   "tokens_per_device": tokens_per_device,
                   "popularity": popularity or "uniform", "slots": slots},
        "placements": rows,
        "large_ep_note": cmp.large_ep_note,
        "solver": {"status": cmp.status, "gap": cmp.gap, "solve_time_s": cmp.solve_time_s,
                   "wall_capped": cmp.wall_capped},
    }


def _render(d: dict[str, Any]) -> None:
    i = d["inputs"]
    out.print(f"{i['model']} layer {i['layer']}: {i['experts']} experts, top-{i['top_k']}, on "
              f"{i['devices']} devices of {i['cluster']}; {i['tokens_per_device']:,} tokens per "
              f"device, popularity {i['popularity']}, program slots {i['slots']}", markup=False)
    t = Table(title_justify="left")
    for col in ("placement", "exp/\nGPU", "max\nload", "imbal.", "fwd\nms",
                "x-node\nB/tok", "GiB\nlayer", "GiB\nMoE"):
        left = col == "placement"
        # numbers keep their width (never an ellipsis over digits); a narrow terminal wraps the
        # names instead
        t.add_column(col, justify="left" if left else "right", no_wrap=not left)
    for r in d["placements"]:
        t.add_row(r["name"], str(r["experts_per_device"]),
                  f"{r['max_device_load']:,.0f}", f"{r['imbalance']:.3f}",
                  f"{r['max_device_expert_fwd_s'] * 1e3:.3f}",
                  f"{r['cross_node_bytes_per_token']:,.0f}",
                  f"{r['expert_memory_gib_per_device_layer']:.2f}",
                  f"{r['expert_memory_gib_per_device_all_moe_layers']:.1f}")
    out.print(t)
    if d["large_ep_note"]:
        out.print(f"large EP: {d['large_ep_note']}", markup=False)
    s = d["solver"]
    kept = " (kept its warm start: the solver found nothing better)" if s["status"] == "HINT" else ""
    cap = "; stopped by the wall-clock cap, so a rerun may differ" if s["wall_capped"] else ""
    out.print(f"integer program: {s['status']}{kept}, gap {s['gap']:.1%} on max load, "
              f"{s['solve_time_s']:.2f} s{cap}", markup=False)
    out.print("routing: the fixed placements send a token to its own EP group's replica; the "
              "integer program to any replica (the fewest node crossings for its split)",
              markup=False)
    out.print("max load: token-expert assignments the busiest GPU serves per step; imbal.: max "
              "/ mean; fwd ms: its expert matmuls, forward; x-node B/tok: bytes per token "
              "crossing nodes (dispatch + combine, forward); GiB: expert weights per GPU, this "
              "layer / all MoE layers", markup=False)
