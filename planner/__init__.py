"""meshplan's public API: specs, presets, and (from planner.api) evaluate, explain,
evaluate_inference and search.

`import planner` is cheap: presets are read lazily, and the cost model and search are only
imported when `planner.evaluate` / `planner.evaluate_inference` / `planner.search` are first
called.
"""

from __future__ import annotations

from typing import Any

from planner.errors import InfeasibleError, PlanError, PlannerError, PresetNotFoundError, SpecError
from planner.hardware import ClusterSpec, DeviceSpec, LinkSpec, Topology
from planner.model import Activation, DType, MLASpec, ModelSpec, MoESpec, Optimizer, Positional
from planner.plan import Attention, Dispatcher, LossKernel, Plan, Recompute, Schedule, parse_plan
from planner.presets import list_presets, load_cluster, load_device, load_model
from planner.workload import InferenceWorkload, TrainingWorkload, Workload

__version__ = "0.1.0"

__all__ = [
    "Activation", "Attention", "ClusterSpec", "DType", "DeviceSpec", "Dispatcher", "InferenceWorkload", "InfeasibleError",
    "LinkSpec", "LossKernel", "MLASpec", "ModelSpec", "MoESpec", "Optimizer", "Plan", "PlanError",
    "PlannerError", "Positional", "PresetNotFoundError", "Recompute", "Schedule", "SpecError", "Topology",
    "TrainingWorkload", "Workload", "__version__", "list_presets", "load_cluster", "load_device",
    "load_model", "parse_plan",
]


def __getattr__(name: str) -> Any:
    """Lazy access to the heavier entry points (planner.evaluate, planner.search)."""
    if name in ("evaluate", "explain", "evaluate_inference", "search"):
        from planner import api

        return getattr(api, name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
