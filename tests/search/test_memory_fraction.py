"""`search --memory-fraction` / planner.search(memory_fraction=): plans within a share of each
device's memory, reported against the real device."""

from __future__ import annotations

import json

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner import SpecError, TrainingWorkload, load_cluster, load_model
from planner.api import search, with_memory_fraction

RUNNER = cli_runner()
REQUEST = ("--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "16",
           "--global-batch", "64", "--seq-len", "2048")


def _search(fraction: float = 1.0):
    return search(load_model("narayanan-7.5b"), load_cluster("dgx-a100"),
                  TrainingWorkload(global_batch_size=64, seq_len=2048), devices=16, top_k=3,
                  memory_fraction=fraction)


def test_every_plan_keeps_the_headroom_and_reports_the_real_device() -> None:
    full, limited = _search(), _search(0.5)
    capacity = full.best.estimate.capacity_gib
    assert full.best.estimate.peak_memory_gib > 0.5 * capacity    # the limit binds here
    for s in limited.top:
        assert s.estimate.peak_memory_gib <= 0.5 * capacity
        assert s.estimate.capacity_gib == capacity                  # the real device
    assert limited.best.estimate.step_time_s >= full.best.estimate.step_time_s
    assert limited.inputs["cluster"]["device"]["memory_bytes"] == \
        full.inputs["cluster"]["device"]["memory_bytes"]
    assert any("planned within 50%" in n for n in limited.notes)
    assert not any("planned within" in n for n in full.notes)


def test_a_fraction_of_one_changes_nothing() -> None:
    cluster = load_cluster("dgx-a100")
    assert with_memory_fraction(cluster, 1.0) is cluster
    assert with_memory_fraction(cluster, 0.25).device.memory_bytes == cluster.device.memory_bytes // 4


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused(bad: float) -> None:
    with pytest.raises(SpecError, match="--memory-fraction"):
        with_memory_fraction(load_cluster("dgx-a100"), bad)
    result = RUNNER.invoke(app, ["search", *REQUEST, "--memory-fraction", str(bad)])
    assert result.exit_code == 2
    assert "is not in (0, 1]" in result.stderr and "Traceback" not in result.stderr


def test_cli_json_and_the_modes_that_take_it() -> None:
    result = RUNNER.invoke(app, ["search", *REQUEST, "--memory-fraction", "0.5", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["best"]["estimate"]["peak_memory_gib"] <= 0.5 * data["best"]["estimate"]["capacity_gib"]
    inference = RUNNER.invoke(app, ["search", "--mode", "inference", "--model", "llama3-8b",
                                    "--cluster", "dgx-h100", "--gpus", "8", "--batch", "8",
                                    "--prompt-len", "128", "--output-len", "16",
                                    "--memory-fraction", "0.9"])
    assert inference.exit_code == 2
    assert "does not use --memory-fraction" in inference.stderr


def test_nothing_fitting_within_the_share_names_it() -> None:
    result = RUNNER.invoke(app, ["search", "--model", "gpt3-175b", "--cluster", "dgx-a100",
                                 "--gpus", "8", "--global-batch", "64", "--seq-len", "2048",
                                 "--memory-fraction", "0.5"])
    assert result.exit_code == 3
    assert "within 50% of its memory" in result.stderr
