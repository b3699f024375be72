"""Regression on known optima: does the search still find a plan at least as good?

A cases file (TOML) holds `[[case]]` tables:

    name = "..."                 # label
    model = "narayanan-7.5b"     # preset, model file or HF config.json
    cluster = "dgx-a100"
    gpus = 16                    # or nodes = 2
    global_batch = 64
    seq_len = 2048
    dtype = "bf16"               # optional; optimizer = "adam" optional
    fix = "tp=8"                 # optional, as --fix
    time_limit_s = 60            # optional
    tolerance = 1e-9             # optional relative slack
    # and one or more expectations:
    expect_plan = "tp=4,pp=1,dp=4,mbs=1"   # best must be at least as fast as this plan
    max_step_time_s = 1.0                  # best must be at most this
    brute_force = true                     # best must equal the exhaustive optimum (small cases)

`run_cases` returns one row per case; a case passes when every expectation holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from planner.api import evaluate, resolve, search
from planner.errors import PlannerError, SpecError
from planner.model import DType, Optimizer
from planner.plan import parse_plan, parse_plan_fields
from planner.presets import read_data_file, validate_spec
from planner.workload import TrainingWorkload


class Case(BaseModel):
    """One regression case (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str
    cluster: str
    gpus: int | None = Field(None, ge=1)
    nodes: int | None = Field(None, ge=1)
    global_batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    dtype: DType = DType.BF16
    optimizer: Optimizer = Optimizer.ADAM
    fix: str = ""
    time_limit_s: float | None = None
    tolerance: float = 1e-9
    expect_plan: str | None = None
    max_step_time_s: float | None = None
    brute_force: bool = False
    source: str = ""


@dataclass(frozen=True)
class Row:
    name: str
    expected_s: float | None
    found_s: float | None
    found_plan: str
    passed: bool
    detail: str


def load_cases(path: Path) -> list[Case]:
    data = read_data_file(path)
    raw = data.get("case")
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"file '{path}': needs one or more [[case]] tables")
    cases = []
    for n, item in enumerate(raw):
        case = validate_spec(Case, item, f"file '{path}': case {n + 1}")
        if not (case.expect_plan or case.max_step_time_s is not None or case.brute_force):
            raise SpecError(f"file '{path}': case '{case.name}' has no expectation; add "
                            "expect_plan, max_step_time_s or brute_force = true")
        cases.append(case)
    return cases


def run_case(case: Case) -> Row:
    """Search the case and check its expectations."""
    m, c = resolve(case.model, case.cluster)
    n = c.devices_for(gpus=case.gpus, nodes=case.nodes)
    wl = TrainingWorkload(global_batch_size=case.global_batch, seq_len=case.seq_len,
                          dtype=case.dtype, optimizer=case.optimizer)
    fixed = parse_plan_fields(case.fix) if case.fix else {}
    try:
        result = search(m, c, wl, devices=n, fixed=fixed, time_limit_s=case.time_limit_s, top_k=1)
    except PlannerError as err:
        return Row(case.name, None, None, "-", False, f"search failed: {err}")
    found = result.best.estimate.step_time_s
    targets: list[tuple[str, float]] = []
    if case.expect_plan:
        targets.append(("plan", evaluate(m, c, wl, parse_plan(case.expect_plan, devices=n),
                                         devices=n).step_time_s))
    if case.max_step_time_s is not None:
        targets.append(("max", case.max_step_time_s))
    if case.brute_force:
        from search.brute_force import brute_force_best
        from search.space import Limits

        exact, _, scored = brute_force_best(m, c, wl, n, limits=Limits(fixed=fixed))
        targets.append((f"brute force ({scored} plans)", exact))
    expected = min(t for _, t in targets)
    failures = [f"{label} {t:.6g} s" for label, t in targets if found > t * (1 + case.tolerance)]
    detail = "ok" if not failures else "worse than " + ", ".join(failures)
    return Row(case.name, expected, found, str(result.best.plan["plan"]), not failures, detail)


def run_cases(path: Path) -> list[Row]:
    return [run_case(c) for c in load_cases(path)]


def as_dict(row: Row) -> dict[str, Any]:
    return {"name": row.name, "expected_s": row.expected_s, "found_s": row.found_s,
            "found_plan": row.found_plan, "passed": row.passed, "detail": row.detail}
