"""`meshplan regress`: the project's own cases pass; a regression exits 1; bad files exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshplan_cli.testing import cli_runner

from cli import app

ROOT = Path(__file__).resolve().parent.parent




@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)   # the cases file names model files relative to the repo root


def test_project_cases_pass() -> None:
    result = cli_runner().invoke(app, ["regress", "benchmarks/regress_cases.toml", "--json"])
    assert result.exit_code == 0, result.output
    assert '"passed": false' not in result.stdout


def test_a_regression_exits_1(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text('''[[case]]
name = "impossible target"
model = "narayanan-1.7b"
cluster = "dgx-a100"
gpus = 8
global_batch = 64
seq_len = 2048
max_step_time_s = 1e-6
''')
    result = cli_runner().invoke(app, ["regress", str(cases)])
    assert result.exit_code == 1
    assert "1 of 1 cases regressed: impossible target" in result.stderr
    assert "FAIL" in result.stdout


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x = 1\n", "needs one or more [[case]] tables"),
        ('[[case]]\nname = "a"\nmodel = "narayanan-1.7b"\ncluster = "dgx-a100"\ngpus = 8\n'
         'global_batch = 8\nseq_len = 128\n', "has no expectation"),
        ('[[case]]\nname = "a"\nmodel = "narayanan-1.7b"\ncluster = "dgx-a100"\ngpus = 8\n'
         'global_batch = 8\nseq_len = 128\nmax_step = 1\n', "case 1: field 'max_step'"),
    ],
)
def test_bad_cases_file_exits_2(tmp_path: Path, body: str, message: str) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text(body)
    result = cli_runner().invoke(app, ["regress", str(cases)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
