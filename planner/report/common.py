"""Pieces both report kinds share: reading the `inputs` block, the plan of a ranked entry,
and the device-map section.

Decides how a result dict is read back into typed specs (`ModelSpec`, `Plan`) and refuses
results that lack what the report needs; does not draw (charts.py, devices.py).
"""

from __future__ import annotations

from html import escape
from typing import Any

from planner.errors import PlannerError, SpecError
from planner.model import ModelSpec
from planner.plan import Plan, parse_plan
from planner.report.devices import MapInputs, device_map_chart


def model_of(result: dict[str, Any]) -> ModelSpec:
    """The searched model, rebuilt from the result's `inputs` block."""
    inputs = result.get("inputs") or {}
    for key in ("model", "cluster", "workload", "devices"):
        if key not in inputs:
            raise SpecError(f"the search result has no inputs.{key}: it was saved by an older "
                            "meshplan; rerun 'meshplan search ... --json' to get a "
                            "self-contained result")
    try:
        return ModelSpec.model_validate(inputs["model"])
    except (ValueError, PlannerError) as e:
        raise SpecError(f"inputs.model of the search result is not a valid model spec ({e}); "
                        "rerun 'meshplan search ... --json'") from None


def plan_of(plan_text: str, devices: int) -> Plan:
    """A ranked entry's plan, parsed from its --plan string."""
    return parse_plan(plan_text, devices=devices)


def map_inputs(plan: Plan, model: ModelSpec, *, expert_tp: int | None = None) -> MapInputs:
    """What the device map needs from a plan and its model. `expert_tp` overrides the plan's
    etp: inference folds ep <= tp into tp, so each expert is split over tp/ep ranks there
    (and held whole, etp 1, when ep > tp spreads the experts over replicas)."""
    moe = model.moe
    return MapInputs(
        sizes={"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp},
        order=plan.order, layers_per_stage=plan.layers_per_stage(model.num_layers),
        vpp=plan.vpp, ep=plan.ep, etp=expert_tp or plan.expert_tp,
        num_experts=moe.num_experts if moe is not None else None,
        moe_layers=model.moe_layer_mask,
    )


def device_map_section(inp: MapInputs, *, devices_per_node: int) -> str:
    """Heading, caption and the map of one plan."""
    svg, caption = device_map_chart(inp, devices_per_node=devices_per_node)
    order = "-".join(inp.order)
    experts = ""
    if inp.num_experts:
        experts = (f"; E = routed experts held by the device's expert-parallel rank "
                   f"(ep {inp.ep}, {inp.num_experts // inp.ep} of {inp.num_experts} each)")
    legend = (f"Each cell is one device: r = rank, s = pipeline stage (colour), L = blocks held"
              f"{' (per interleaved chunk)' if inp.vpp > 1 else ''}, +E/+H = embedding/LM head"
              f"{experts}. Ranks follow the order {order} (innermost first). Showing {caption}.")
    return f"<h3>Device map</h3><p class=\"note\">{escape(legend)}</p>{svg}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"
