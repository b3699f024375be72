"""Typed errors of meshplan.

Every error a user can cause is a `PlannerError` whose message names the problem and the fix.
The library raises them; only `cli.py` turns them into one line and an exit code
(2 = bad input, 3 = nothing feasible, 4 = the engine cannot express the plan,
5 = an output file exists and --overwrite was not given, 1 = unexpected).
"""

from __future__ import annotations

import difflib


class PlannerError(Exception):
    """Base of every error caused by user input. `str(err)` is the one-line message."""

    exit_code: int = 2


class PresetNotFoundError(PlannerError):
    """A preset name that is not in the library; carries the closest names."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = available
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
            f"run 'meshplan presets {kind}s' to list them"
        )
        super().__init__(
            f"unknown {kind} preset '{name}': {hint} "
            f"(or pass a path to a {kind} file)"
        )


class SpecError(PlannerError):
    """A spec file or value that is missing, unreadable, malformed or inconsistent."""


class PlanError(PlannerError):
    """A parallel plan that cannot work for this model, cluster and workload."""


class InfeasibleError(PlannerError):
    """Nothing fits: no plan satisfies the constraints (exit code 3). `baselines` holds the
    published configurations of the request, scored anyway (planner.result.BaselineResult),
    where the search has them."""

    exit_code = 3

    def __init__(self, message: str, baselines: object = ()) -> None:
        super().__init__(message)
        self.baselines = list(baselines)  # type: ignore[call-overload]


class UnsupportedPlanError(PlannerError):
    """A valid plan that the requested engine or output cannot express (exit code 4): e.g.
    uneven pipeline stages exported to an engine that has no option for them. Refused with the
    reason, never silently changed."""

    exit_code = 4


class OutputExistsError(PlannerError):
    """An output file that already exists and was not asked to be overwritten (exit code 5)."""

    exit_code = 5
