"""Property tests of the CLI edge: whatever the input, meshplan answers with an exit code it
documents (0, or 2 bad input / 3 nothing fits / 4 not expressible), never with exit 1 (an
unexpected error) or a traceback, and a refusal is one `error: ` line on stderr.

Inputs are drawn from the shapes users mistype: `--plan` strings of known and unknown keys
with odd values and separators, and model/cluster spec files with a field set to a value of the
wrong type or range, or removed (one level into nested tables too). A longer fuzzing run of
such inputs outside the suite (thousands of commands, every subcommand) found two commands that
ran for hours on absurd sizes; they now stop at `planner.hardware.MAX_DEVICES`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplan_cli.testing import cli_runner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
RUNNER = cli_runner()
DOCUMENTED = {0, 2, 3, 4}

KEYS = ["tp", "pp", "dp", "cp", "ep", "etp", "vpp", "mbs", "sp", "recompute", "zero",
        "recompute_modules", "ep_overlap", "dispatcher", "order", "layers", "attn", "loss", "x"]
VALUES = ["0", "1", "2", "3", "4", "8", "16", "-1", "1.5", "abc", "", "on", "off", "full",
          "selective", "none", "99999999999", "1e9", "nan", "flex", "alltoall", "4/4",
          "mlp", "tp-cp-dp-pp", "flash"]


def _check(args: list[str]) -> None:
    res = RUNNER.invoke(app, args)
    out = (res.stdout or "") + (res.stderr or "")
    assert res.exit_code in DOCUMENTED, (args, res.exit_code, out[-400:])
    assert "Traceback" not in out, args
    if res.exit_code != 0:
        lines = res.stderr.strip().splitlines()
        # click's own usage errors (exit 2) print a usage block; meshplan's errors are one line
        if lines and lines[-1].startswith("error: "):
            assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, res.stderr


plan_item = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.sampled_from(KEYS),
    st.builds(lambda k: f"{k}=", st.sampled_from(KEYS)),
    st.builds(lambda k, v: f" {k} = {v} ", st.sampled_from(KEYS), st.sampled_from(VALUES)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plan_item, max_size=5), st.sampled_from([",", ";", ", "]),
       st.sampled_from(["8", "16", "12", "0"]), st.sampled_from(["64", "7", "0"]))
def test_evaluate_any_plan_string(items: list[str], sep: str, gpus: str, batch: str) -> None:
    _check(["evaluate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", gpus,
            "--global-batch", batch, "--seq-len", "2048", "--plan", sep.join(items)])


WEIRD: list[Any] = [0, -1, 1, 3, 0.5, 1e30, "", "abc", None, True, [], {}, [1, 2], 10 ** 18]


def _mutations(spec: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The spec with one field (top level, or inside a nested table) set to a WEIRD value or
    removed."""
    paths = [(k,) for k in sorted(spec)] + [(k, sub) for k in sorted(spec)
                                           if isinstance(spec[k], dict) for sub in sorted(spec[k])]

    def apply(path: tuple[str, ...], value: Any, drop: bool) -> dict[str, Any]:
        out = json.loads(json.dumps(spec))
        parent = out if len(path) == 1 else out[path[0]]
        if drop:
            parent.pop(path[-1])
        else:
            parent[path[-1]] = value
        return out

    return st.builds(apply, st.sampled_from(paths), st.sampled_from(WEIRD), st.booleans())


def _preset(kind: str, name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "planner" / "presets" / kind / f"{name}.toml").read_text())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_mutations(_preset("models", "llama3-8b")),
       st.sampled_from(["show", "evaluate", "search"]))
def test_any_malformed_model_file(tmp_path: Path, spec: dict[str, Any], command: str) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(spec))
    args = {"show": ["show", "--model", str(path)],
            "evaluate": ["evaluate", "--model", str(path), "--cluster", "dgx-h100", "--gpus", "8",
                         "--global-batch", "64", "--seq-len", "2048", "--plan", "tp=8"],
            "search": ["search", "--model", str(path), "--cluster", "dgx-h100", "--gpus", "16",
                       "--global-batch", "64", "--seq-len", "2048", "--time-limit", "5"]}[command]
    _check(args)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_mutations(_preset("clusters", "dgx-h100")))
def test_any_malformed_cluster_file(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(spec))
    _check(["evaluate", "--model", "llama3-8b", "--cluster", str(path), "--gpus", "16",
            "--global-batch", "64", "--seq-len", "2048", "--plan", "tp=8"])


NUMBERS = ["0", "1", "2", "3", "7", "8", "1e-9", "0.5", "50", "1e9", "-1", "abc"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["1", "2", "3", "4", "6", "0"]), st.sampled_from(NUMBERS),
       st.sampled_from(NUMBERS), st.sampled_from(NUMBERS), st.sampled_from(NUMBERS),
       st.sampled_from(NUMBERS + [None]))
def test_disaggregated_search_any_numbers(gpus: str, batch: str, prompt: str, output: str,
                                          ttft: str, tpot: str | None) -> None:
    data = ROOT / "tests" / "data"
    args = ["search", "--mode", "inference", "--disaggregate",
            "--model", str(data / "tiny-gpt.toml"), "--cluster", str(data / "tiny-cluster.toml"),
            "--gpus", gpus, "--batch", batch, "--prompt-len", prompt, "--output-len", output,
            "--max-ttft-ms", ttft]
    _check(args + ([] if tpot is None else ["--max-tpot-ms", tpot]))
