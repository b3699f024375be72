"""The public entry points that need the cost model (and, later, the search).

Inputs may be specs or preset names/paths; plans may be `Plan` objects or `--plan` strings.
"""

from __future__ import annotations

from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Plan, parse_plan
from planner.presets import load_cluster, load_model
from planner.result import Estimate
from planner.validate import check_plan
from planner.workload import TrainingWorkload


def resolve(model: ModelSpec | str, cluster: ClusterSpec | str) -> tuple[ModelSpec, ClusterSpec]:
    """Specs from specs, preset names or file paths."""
    m = model if isinstance(model, ModelSpec) else load_model(model)
    c = cluster if isinstance(cluster, ClusterSpec) else load_cluster(cluster)
    return m, c


def evaluate(model: ModelSpec | str, cluster: ClusterSpec | str, workload: TrainingWorkload,
             plan: Plan | str, *, devices: int | None = None) -> Estimate:
    """Predict step time, throughput, utilisation and memory of one training plan.

    Args:
        model: a ModelSpec, preset name, model file or HF config.json path.
        cluster: a ClusterSpec, preset name or file.
        workload: the training step (global batch, sequence length, dtype, optimizer).
        plan: a Plan or a `--plan` string (then `devices` fills dp when it is left out).
        devices: the device count the plan must use; defaults to the plan's own product.

    Returns:
        The Estimate; `fits` is false (not an error) when memory is exceeded.

    Raises:
        PlanError: the plan breaks a rule (the message names it and the nearest valid values).
    """
    from cost_models.training import estimate_training

    m, c = resolve(model, cluster)
    if isinstance(plan, str):
        if devices is None:
            raise ValueError("a plan string needs devices= to fill in dp")
        plan = parse_plan(plan, devices=devices)
    n = plan.devices if devices is None else devices
    c.devices_for(gpus=n)
    check_plan(m, workload, plan, n)
    return estimate_training(m, c, workload, plan)
