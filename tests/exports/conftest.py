"""Shared by the export tests: the saved search results (tests/exports/data, made by
make_fixtures.py with the real CLI) and plan variants of them, as fixtures."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from planner.api import plan_dict
from planner.model import ModelSpec
from planner.plan import parse_plan

DATA = Path(__file__).parent / "data"

@cache
def _load(name: str) -> str:
    return (DATA / f"{name}.json").read_text()


def result(name: str) -> dict[str, Any]:
    """A fresh copy of a saved search result (tests may change it)."""
    return json.loads(_load(name))


def with_plan(name: str, plan_text: str) -> dict[str, Any]:
    """The saved result with top[0] replaced by another training plan (estimate kept: the
    exports never read it)."""
    data = result(name)
    model = ModelSpec.model_validate(data["inputs"]["model"])
    plan = parse_plan(plan_text, devices=data["inputs"]["devices"])
    entry = copy.deepcopy(data["top"][0])
    entry["plan"] = plan_dict(plan, model.num_layers)
    data["top"][0] = data["best"] = entry
    return data


@pytest.fixture
def saved():
    """saved(name) -> a fresh copy of tests/exports/data/<name>.json."""
    return result


@pytest.fixture
def variant():
    """variant(name, plan_text) -> that result with top[0] replaced by plan_text."""
    return with_plan
