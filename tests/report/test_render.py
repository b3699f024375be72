"""The HTML report without a browser: sections and charts, escaping, determinism, inference
results, and write_report's refusals."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner.errors import OutputExistsError, SpecError
from planner.report import check_report_path, render_report, write_report

TRAINING_CHARTS = ("breakdown", "memory", "memory-stages", "schedule", "device-map")


def charts(html: str) -> list[str]:
    return re.findall(r'<svg class="chart" data-chart="([a-z-]+)"', html)


def test_training_report_has_every_chart(moe_interleaved: dict[str, Any]) -> None:
    html = render_report(moe_interleaved)
    found = charts(html)
    for name in TRAINING_CHARTS:
        assert name in found, name
    assert html.count('data-chart="schedule"') == len(moe_interleaved["top"])
    assert "interleaved 1F1B with 2 chunks per stage" in html
    ep = moe_interleaved["best"]["plan"]["ep"]
    assert f"E0-{8 // ep - 1}" in html  # mixtral: 8 experts, contiguous per ep rank
    assert moe_interleaved["best"]["estimate"]["plan"] in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html and "src=" not in html


def test_schedule_numbers_come_from_the_plan(moe_interleaved: dict[str, Any]) -> None:
    """The timeline of plan #1 has p * 2 * v * m boxes, and the closed form printed under it is
    (p-1)/(v*m) for the plan's own p, v, m."""
    html = render_report(moe_interleaved)
    e = moe_interleaved["best"]["estimate"]
    p, m, v = len(e["stages"]), e["num_microbatches"], 2
    first = html.split('data-chart="schedule"')[1].split("</svg>")[0]
    assert first.count('class="op ') == p * 2 * v * m
    assert f"(p-1)/(v*m) = {p - 1}/{v * m}" in html


def test_baseline_report_aggregates_and_shows_the_baseline(with_baseline: dict[str, Any]) -> None:
    html = render_report(with_baseline)
    b = with_baseline["baselines"][0]
    assert b["estimate"] is not None
    assert "Narayanan et al. 2021 Table 1" in html
    assert f"{b['slower_than_best_pct']:+.1f}%" in html
    assert "Baseline: Narayanan et al. 2021 Table 1" in html
    assert "1F1B (PipeDream-Flush), 8 stages, 96 micro-batches per step; drawn with 32" in html
    assert "one data-parallel replica (64 of 1536 devices) x dp 24" in html
    assert "(p-1)/m = 7/96 = 7.3%" in html


def test_unrunnable_baseline_is_listed(with_baseline: dict[str, Any]) -> None:
    data = copy.deepcopy(with_baseline)
    data["baselines"][0].update(estimate=None, slower_than_best_s=None, slower_than_best_pct=None,
                                inconsistencies=["vpp=3 does not divide the layers"])
    html = render_report(data)
    assert "cannot be evaluated" in html and "vpp=3 does not divide the layers" in html
    assert "baseline-1" not in html


def test_text_from_the_input_is_escaped(moe_interleaved: dict[str, Any]) -> None:
    data = copy.deepcopy(moe_interleaved)
    evil = '<script>alert("x")</script>&'
    data["inputs"]["model"]["name"] = evil
    data["inputs"]["cluster"]["name"] = evil
    data["notes"] = [evil]
    data["best"]["estimate"]["warnings"] = [evil]
    html = render_report(data)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html
    assert html.count("<script>") == 2  # the error trap and the tabs, nothing else


def test_plan_cells_wrap_only_between_keys_and_stage_counts(moe_interleaved: dict[str, Any]) -> None:
    from planner.report.template import plan_code

    cell = plan_code("tp=2,pp=3,layers=3/3/2,order=<x>")
    assert cell == ("<code>tp=2,<wbr>pp=3,<wbr>layers=3/<wbr>3/<wbr>2,<wbr>order=&lt;x&gt;</code>")
    assert re.sub(r"<[^>]+>", "", cell) == "tp=2,pp=3,layers=3/3/2,order=&lt;x&gt;"
    html = render_report(copy.deepcopy(moe_interleaved))
    ranked_plan = moe_interleaved["top"][0]["estimate"]["plan"]
    assert plan_code(ranked_plan) in html


def test_same_input_gives_identical_bytes(moe_interleaved: dict[str, Any]) -> None:
    first = render_report(copy.deepcopy(moe_interleaved))
    assert render_report(copy.deepcopy(moe_interleaved)) == first
    changed = copy.deepcopy(moe_interleaved)
    changed["stats"]["search_time_s"] += 1.0  # wall time is left out of the report
    assert render_report(changed) == first


def test_inference_report(inference_pp: dict[str, Any]) -> None:
    html = render_report(inference_pp)
    found = charts(html)
    for name in ("ttft", "tpot", "memory", "device-map"):
        assert name in found, name
    assert "schedule" not in found
    assert "Pipeline of 2 stages" in html and "idle 50.0%" in html
    e = inference_pp["best"]["estimate"]
    assert f"{1e3 * e['tpot_s']:.3f} ms" in html
    assert "E0-3" in html  # 8 experts over ep 2


def test_missing_inputs_are_refused(moe_interleaved: dict[str, Any]) -> None:
    data = copy.deepcopy(moe_interleaved)
    del data["inputs"]
    with pytest.raises(SpecError, match="no inputs.model"):
        render_report(data)
    with pytest.raises(SpecError, match="not a meshplan search result"):
        render_report({"plans": []})


def test_write_report_refuses_existing_and_missing_paths(tmp_path: Path,
                                                         moe_interleaved: dict[str, Any]) -> None:
    target = tmp_path / "plan.html"
    write_report(moe_interleaved, target, overwrite=False)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    target.write_text("mine", encoding="utf-8")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_report(moe_interleaved, target, overwrite=False)
    assert target.read_text(encoding="utf-8") == "mine"
    write_report(moe_interleaved, target, overwrite=True)
    assert target.read_text(encoding="utf-8") != "mine"
    with pytest.raises(SpecError, match="does not exist"):
        check_report_path(tmp_path / "nope" / "plan.html", overwrite=False)
    with pytest.raises(SpecError, match="is a directory"):
        check_report_path(tmp_path, overwrite=True)


def test_cli_report_option(tmp_path: Path) -> None:
    runner = cli_runner()
    target = tmp_path / "r.html"
    args = ["search", "--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "16",
            "--global-batch", "64", "--seq-len", "2048", "--report", str(target)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert 'data-chart="breakdown"' in target.read_text(encoding="utf-8")
    again = runner.invoke(app, args)
    assert again.exit_code == 5 and "--overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_write_report_failure_is_a_spec_error(tmp_path: Path, moe_interleaved: dict[str, Any],
                                              monkeypatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(SpecError, match="cannot write --report .*: No space left on device"):
        write_report(moe_interleaved, tmp_path / "plan.html", overwrite=False)


def test_dualpipe_plan_report_names_the_ranks_and_draws_its_own_order() -> None:
    """A DualPipe plan: the memory rows are ranks holding two stages, the timeline is
    DualPipe's own order (schedule.simulate_dualpipe) beside the cost model's bubble, the
    device map says what it leaves out."""
    from planner import Schedule, TrainingWorkload
    from planner.api import search

    wl = TrainingWorkload(global_batch_size=128, seq_len=4096)
    result = search("mixtral-8x7b", "dgx-h100", wl, devices=32, top_k=1,
                    fixed={"pp": 4, "schedule": Schedule.DUALPIPE}).model_dump(mode="json")
    html = render_report(result)
    assert "schedule=dualpipe" in result["best"]["estimate"]["plan"]
    assert "rank 0 (stages 0 and 3: blocks 0-7, 24-31)" in html
    assert "DualPipe (DeepSeek-V3 report Sec. 3.2.1), 4 ranks" in html
    bubble = result["best"]["estimate"]["breakdown"]["bubble"]
    assert "(p/2-1)(F&amp;B + B - 3W)" in html and f"{bubble:.3f} s" in html
    # DualPipe's own order drawn: rank rows, both directions, weight-gradient passes
    assert html.count('data-chart="schedule"') == 1
    assert ">rank 3</text>" in html and "weight gradient direction 1" in html
    assert 'class="op W"' in html
    assert "also holds stage 3-s" in html
