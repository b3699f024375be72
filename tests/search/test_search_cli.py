"""`meshplan search` at the command line: the --json schema, --fix, --top, --time-limit,
the infeasible and bad-input exits, the table output and byte-identical reruns.

Runs `cli.app` in-process with typer's CliRunner (stdout and stderr kept apart), like
tests/test_cli.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner.plan import PLAN_KEYS, parse_plan
from planner.presets import load_model
from planner.result import BREAKDOWN_KEYS, MEMORY_KEYS




RUNNER = cli_runner()
REQUEST = ("--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "16",
           "--global-batch", "64", "--seq-len", "2048")
LAYERS = load_model("narayanan-7.5b").num_layers
PLAN_STRING_KEYS = ("tp", "pp", "dp", "cp", "ep", "vpp", "mbs", "sp", "recompute", "zero")


def run(*args: str) -> Any:
    return RUNNER.invoke(app, list(args))


def run_json(*args: str) -> Any:
    result = run(*args)
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def searched() -> dict[str, Any]:
    return run_json("search", *REQUEST, "--json")


def test_json_schema(searched: dict[str, Any]) -> None:
    d = searched
    for key in ("best", "top", "baselines", "lower_bound_step_time_s", "stats"):
        assert key in d, key
    assert set(d["best"]) >= {"plan", "estimate"}
    assert set(d["stats"]) >= {"candidates", "pruned", "search_time_s"}
    assert isinstance(d["stats"]["candidates"], int) and d["stats"]["candidates"] > 0
    assert all(isinstance(v, int) for v in d["stats"]["pruned"].values())
    assert isinstance(d["top"], list) and 1 <= len(d["top"]) <= 5      # --top defaults to 5
    assert d["top"][0] == d["best"]
    for sp in d["top"]:
        plan = sp["plan"]
        for key in (*PLAN_STRING_KEYS, "stages"):
            assert key in plan, key
        assert plan["sp"] in ("on", "off")
        # The keys hold the values of the plan's own --plan string.
        fields = parse_plan(plan["plan"], devices=16)
        for key in PLAN_STRING_KEYS:
            value = getattr(fields, key)
            want = ("on" if value else "off") if key == "sp" else getattr(value, "value", value)
            assert plan[key] == want, (key, plan[key], want)
        assert set(PLAN_STRING_KEYS) <= set(PLAN_KEYS)
        stages = plan["stages"]
        assert len(stages) == plan["pp"]
        assert stages[0][0] == 0 and stages[-1][1] == LAYERS - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(stages, stages[1:]))
        assert plan["tp"] * plan["pp"] * plan["dp"] * plan["cp"] == 16
        assert stages == [[st["first_layer"], st["last_layer"]] for st in sp["estimate"]["stages"]]
        assert sp["estimate"]["plan"] == plan["plan"]
        assert sp["estimate"]["fits"] is True
    times = [sp["estimate"]["step_time_s"] for sp in d["top"]]
    assert times == sorted(times)


def test_estimate_is_what_evaluate_prints(searched: dict[str, Any]) -> None:
    """best.estimate is exactly the object `evaluate --json` prints for the best plan."""
    est = searched["best"]["estimate"]
    assert set(est["breakdown"]) == set(BREAKDOWN_KEYS)
    assert set(est["memory_gib"]) == set(MEMORY_KEYS)
    evaluated = run_json("evaluate", *REQUEST, "--plan", searched["best"]["plan"]["plan"], "--json")
    assert list(est) == list(evaluated)
    assert est == evaluated


def test_best_is_not_below_the_lower_bound(searched: dict[str, Any]) -> None:
    bound = searched["lower_bound_step_time_s"]
    assert 0 < bound <= searched["best"]["estimate"]["step_time_s"]
    assert searched["gap_to_lower_bound"] == pytest.approx(
        searched["best"]["estimate"]["step_time_s"] / bound - 1)


def test_fix_holds_the_fixed_values() -> None:
    d = run_json("search", *REQUEST, "--fix", "tp=2,pp=2", "--json")
    assert d["top"]
    for sp in d["top"]:
        assert (sp["plan"]["tp"], sp["plan"]["pp"]) == (2, 2)
        assert sp["plan"]["dp"] * sp["plan"]["cp"] == 4
    free = run_json("search", *REQUEST, "--top", "1", "--json")
    assert free["best"]["estimate"]["step_time_s"] <= d["best"]["estimate"]["step_time_s"]


def test_top_limits_the_list() -> None:
    d = run_json("search", *REQUEST, "--top", "3", "--json")
    assert 1 <= len(d["top"]) <= 3
    one = run_json("search", *REQUEST, "--top", "1", "--json")
    assert len(one["top"]) == 1 and one["best"] == d["best"]


def test_time_limit_zero_still_returns_a_plan_and_says_it_was_cut() -> None:
    d = run_json("search", *REQUEST, "--time-limit", "0", "--json")
    assert d["best"]["estimate"]["fits"] is True
    # This request has hundreds of plan groups; a zero limit stops after the first plan.
    assert d["stats"]["cut"] is True
    assert d["stats"]["pruned"].get("time_limit", 0) > 0
    assert any("time limit" in note for note in d["notes"]), d["notes"]
    table = run("search", *REQUEST, "--time-limit", "0")
    assert table.exit_code == 0, table.stderr
    assert "note: the time limit cut the search" in table.stderr


def test_uncut_search_has_no_time_limit_note(searched: dict[str, Any]) -> None:
    assert searched["stats"]["cut"] is False
    assert not any("time limit" in note for note in searched["notes"])


def test_infeasible_request_exits_3_with_one_line() -> None:
    result = run("search", "--model", "gpt3-175b", "--cluster", "dgx-a100", "--gpus", "8",
                 "--global-batch", "8", "--seq-len", "2048")
    assert result.exit_code == 3, (result.exit_code, result.output)
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no plan "), lines[0]
    assert "gpt3-175b" in lines[0]


def test_unknown_model_exits_2() -> None:
    result = run("search", "--model", "no-such-model", "--cluster", "dgx-a100", "--gpus", "8",
                 "--global-batch", "8", "--seq-len", "2048")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-model" in lines[0]


def test_table_output() -> None:
    result = run("search", *REQUEST)
    assert result.exit_code == 0, result.stderr
    assert "best plans" in result.stdout
    assert "lower bound" in result.stdout
    assert "published configurations" not in result.stdout      # no baseline at 16 GPUs
    assert "Traceback" not in result.output


def test_table_output_shows_matching_baselines() -> None:
    result = run("search", "--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "128",
                 "--global-batch", "512", "--seq-len", "2048")
    assert result.exit_code == 0, result.stderr
    assert "published configurations" in result.stdout
    assert "Narayanan" in result.stdout


def test_json_is_byte_identical_across_runs_but_for_the_search_time() -> None:
    def strip(text: str) -> str:
        out, n = re.subn(r'"search_time_s": [^,\n]+', '"search_time_s": T', text)
        assert n == 1
        return out

    first = run("search", *REQUEST, "--top", "3", "--json")
    second = run("search", *REQUEST, "--top", "3", "--json")
    assert first.exit_code == second.exit_code == 0
    assert strip(first.stdout) == strip(second.stdout)


def test_seed000_inconsistency_in_search_output() -> None:
    """Seed 000 states the 1T model as TP=8, PP=64, DP=1 on 3360 GPUs (8*64*1 = 512): the
    search for that request lists it with the device-count problem, unscored (--json) and in
    the table's flags column. --fix keeps the 3360-GPU search short."""
    request = ("search", "--model", "megatron-1t", "--cluster", "dgx-a100", "--gpus", "3360",
               "--global-batch", "2048", "--seq-len", "2048",
               "--fix", "tp=8,pp=105,mbs=1,recompute=full,zero=1,vpp=1,sp=on,order=tp-cp-dp-pp")
    d = run_json(*request, "--json")
    seed = [b for b in d["baselines"] if b["label"].startswith("Seed 000")]
    assert len(seed) == 1
    assert seed[0]["estimate"] is None and seed[0]["slower_than_best_pct"] is None
    assert any("512" in p and "3360" in p for p in seed[0]["inconsistencies"]), seed[0]
    table = run(*request)
    assert table.exit_code == 0, table.stderr
    flat = " ".join(table.stdout.split())
    assert "Seed 000" in flat and "3360" in flat


def test_json_inputs_make_the_result_self_contained(searched: dict[str, Any]) -> None:
    inputs = searched["inputs"]
    assert inputs["devices"] == 16
    assert inputs["model"]["name"] == "narayanan-7.5b"
    assert inputs["model"]["num_layers"] == LAYERS
    assert inputs["cluster"]["name"] == "dgx-a100"
    assert inputs["workload"] == {"mode": "training", "global_batch_size": 64, "seq_len": 2048,
                                  "dtype": "bf16", "optimizer": "adam", "grad_dtype": None}


def test_infeasible_search_still_scores_the_seed002_baselines() -> None:
    """Seed 002's 1.97e12-parameter model fits in no training plan on 128 H100: the search
    exits 3, but its four published configurations appear, scored, with their memory, and the
    error line says by how much the least hungry one misses."""
    request = ("search", "--model", "seed002-moe-61l", "--cluster", "dgx-h100", "--gpus", "128",
               "--global-batch", "1024", "--seq-len", "4096")
    res = run(*request)
    assert res.exit_code == 3
    assert "published configurations, same cost model" in res.stdout
    assert res.stdout.count("Seed 002") == 4 and "NO (" in res.stdout
    assert "do not fit either (least memory: 'Seed 002 large EP=128" in res.stderr
    assert "Traceback" not in res.stderr

    import planner
    from planner import TrainingWorkload

    with pytest.raises(planner.InfeasibleError) as info:
        planner.search("seed002-moe-61l", "dgx-h100",
                       TrainingWorkload(global_batch_size=1024, seq_len=4096), devices=128)
    scored = info.value.baselines
    assert len(scored) == 4 and all(b.estimate is not None and not b.estimate.fits for b in scored)
    assert all(b.slower_than_best_pct is None for b in scored)


@pytest.mark.parametrize(("fix", "message"), [
    ("ep_overlap=on", "ep_overlap=on needs a mixture-of-experts model; use ep_overlap=off"),
    ("ep=2", "ep=2 needs a mixture-of-experts model; use ep=1"),
    ("recompute_modules=mla_up_proj",
     "recompute_modules=mla_up_proj needs a model with multi-head latent attention"),
])
def test_a_fixed_value_no_plan_can_have_is_a_plan_error(fix: str, message: str) -> None:
    """A --fix value that breaks a rule for every plan exits 2 naming it (not 3, 'add
    devices')."""
    result = RUNNER.invoke(app, ["search", "--model", "llama3-8b", "--cluster", "dgx-h100",
                                 "--gpus", "8", "--global-batch", "64", "--seq-len", "4096",
                                 "--fix", fix])
    assert result.exit_code == 2
    assert result.stderr == f"error: --fix {fix}: {message}\n"
