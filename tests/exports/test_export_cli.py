"""`meshplan export` and `meshplan search --export`: refusals (exit 4), bad input (exit 2),
existing output files (exit 5), and the happy path to stdout and to a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import app
from meshplan_cli.testing import cli_runner

RUNNER = cli_runner()
DATA = Path(__file__).parent / "data"


def _export(tmp_path: Path, data: dict, *args: str):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    return RUNNER.invoke(app, ["export", str(path), *args])


@pytest.mark.parametrize(("name", "plan_text", "fmt", "reason"), [
    ("inference", None, "megatron", "inference plan"),
    ("inference", None, "torchtitan", "inference plan"),
    ("inference", None, "deepspeed", "inference plan"),
    ("dense", None, "vllm", "training plan"),
    ("dense", None, "sglang", "training plan"),
    ("moe", None, "torchtitan", "zero=2"),
    ("moe", None, "deepspeed", "ep=8"),
    ("interleaved-firstlast", None, "deepspeed", "pp=4"),
    ("interleaved-firstlast", None, "torchtitan", "zero=1"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=off,zero=3", "torchtitan", "without sequence parallelism"),
    ("moe", "tp=4,pp=1,dp=8,ep=8,etp=2,mbs=1,sp=on,zero=0", "torchtitan", "etp=2 with tp=4"),
    ("dense", "tp=1,pp=1,dp=16,mbs=4,zero=3,recompute=selective", "torchtitan", "selective"),
    ("dense", "tp=1,pp=1,dp=16,mbs=4,recompute=full", "deepspeed", "recompute=full"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=on", "deepspeed", "sp=on"),
    ("dense", "tp=2,pp=2,dp=2,cp=2,mbs=1,order=cp-pp-dp-tp", "megatron", "rank order cp-pp-dp-tp"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=on,loss=chunked", "megatron", "loss=chunked"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=on,loss=chunked", "torchtitan", "loss=chunked"),
    ("dense", "tp=1,pp=1,dp=16,mbs=2,loss=chunked", "deepspeed", "loss=chunked"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=on,offload=4", "megatron", "cpu_offloading_num_layers=4"),
    ("dense", "tp=2,pp=1,dp=8,mbs=2,sp=on,offload=4", "torchtitan", "offload=4"),
    ("dense", "tp=1,pp=1,dp=16,mbs=2,offload=4", "deepspeed", "offload=4"),
    ("dense", "tp=2,pp=2,dp=4,mbs=1,schedule=dualpipe", "megatron", "schedule=dualpipe"),
    ("dense", "tp=2,pp=2,dp=4,mbs=1,schedule=dualpipe", "torchtitan", "schedule=dualpipe"),
    ("dense", "tp=1,pp=2,dp=8,mbs=1,schedule=dualpipe", "deepspeed", "schedule=dualpipe"),
    ("dense", "tp=1,pp=1,dp=16,mbs=2,dp_overlap=off", "torchtitan", "dp_overlap=off"),
    ("dense", "tp=1,pp=1,dp=16,mbs=2,zero=0", "deepspeed", "stage 0 all-reduces the gradients"),
])
def test_refusals_exit_4_with_reason(tmp_path: Path, saved, variant, name: str,
                                     plan_text: str | None, fmt: str, reason: str) -> None:
    data = saved(name) if plan_text is None else variant(name, plan_text)
    res = _export(tmp_path, data, "--to", fmt)
    assert res.exit_code == 4, res.stderr
    assert "cannot express this plan" in res.stderr and reason in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(("rank", "reason"), [(1, "ep=2 with tp=8"), (4, "dp=2 on an MoE model")])
def test_vllm_refuses_moe_layouts_it_lacks(tmp_path: Path, saved, rank: int, reason: str) -> None:
    res = _export(tmp_path, saved("moe-inference"), "--to", "vllm", "--rank", str(rank))
    assert res.exit_code == 4 and reason in res.stderr


@pytest.mark.parametrize("fmt, plan, expected, absent", [
    ("vllm", "tp=2,pp=1,dp=4,ep=8",
     ["--tensor-parallel-size 2", "--data-parallel-size 4", "--enable-expert-parallel",
      "--all2all-backend deepep_low_latency", "--max-num-seqs 8"], ["--enable-dbo"]),
    ("vllm", "tp=2,pp=1,dp=4,ep=8,ep_overlap=on", ["--enable-dbo"], []),
    # one engine of 8 GPUs: attention over 4 groups of tp=2, experts over all 8
    ("sglang", "tp=2,pp=1,dp=4,ep=8",
     ["--tp-size 8", "--dp-size 1", "--attn-dp-size 4", "--ep-size 8", "--moe-a2a-backend deepep",
      "--deepep-mode auto", "--max-running-requests 32"],
     ["--enable-dp-attention", "--enable-two-batch-overlap"]),
    # experts over 4 of the 8 replicas: two engines of 4 GPUs
    ("sglang", "tp=1,pp=1,dp=8,ep=4,ep_overlap=on",
     ["--tp-size 4", "--dp-size 2", "--attn-dp-size 4", "--ep-size 4",
      "--enable-two-batch-overlap", "--max-running-requests 16"], [])])
def test_experts_over_replicas_export_as_data_parallel_attention(
        tmp_path: Path, variant, fmt: str, plan: str, expected: list[str],
        absent: list[str]) -> None:
    res = _export(tmp_path, variant("moe-inference", plan), "--to", fmt)
    assert res.exit_code == 0, res.stderr
    lines = [ln.rstrip(" \\").strip() for ln in res.stdout.splitlines()]
    for line in expected:
        assert line in lines, line
    for flag in absent:
        assert not any(ln.startswith(flag) for ln in lines), flag


@pytest.mark.parametrize("fmt, plan, reason", [
    ("vllm", "tp=1,pp=1,dp=8,ep=4",
     "use ep=8 (--fix ep=8), launch 2 engines of dp=4, or export --to sglang"),
    ("vllm", "tp=2,pp=2,dp=2,ep=4", "pp=2 with experts over replicas"),
    ("sglang", "tp=2,pp=2,dp=2,ep=4", "pp=2 with experts over replicas")])
def test_experts_over_replicas_refused_where_the_engine_lacks_it(
        tmp_path: Path, variant, fmt: str, plan: str, reason: str) -> None:
    res = _export(tmp_path, variant("moe-inference", plan), "--to", fmt)
    assert res.exit_code == 4 and reason in res.stderr and res.stdout == ""


def test_refused_fp16_for_torchtitan(tmp_path: Path, saved) -> None:
    data = saved("dense")
    data["inputs"]["workload"]["dtype"] = "fp16"
    res = _export(tmp_path, data, "--to", "torchtitan")
    assert res.exit_code == 4 and "dtype fp16" in res.stderr


@pytest.mark.parametrize(("content", "args", "message"), [
    ("not json", ["--to", "megatron"], "is not JSON"),
    ("[1, 2]", ["--to", "megatron"], "not a search result"),
    ('{"plan": "tp=1", "step_time_s": 1.0}', ["--to", "megatron"], "no 'best'/'top' keys"),
    (None, ["--to", "slurm"], "is not one of megatron, torchtitan, deepspeed, vllm, sglang"),
    (None, ["--to", "megatron", "--rank", "9"], "out of range"),
    (None, ["--to", "megatron", "--model-path", "x"], "--model-path is for vllm and sglang"),
])
def test_bad_input_exit_2(tmp_path: Path, saved, content: str | None, args: list[str],
                          message: str) -> None:
    path = tmp_path / "in.json"
    path.write_text(content if content is not None else json.dumps(saved("dense")))
    res = RUNNER.invoke(app, ["export", str(path), *args])
    assert res.exit_code == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_result_without_inputs_names_the_fix(tmp_path: Path, saved) -> None:
    data = saved("dense")
    del data["inputs"]
    res = _export(tmp_path, data, "--to", "megatron")
    assert res.exit_code == 2 and "meshplan search ... --json" in res.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    res = RUNNER.invoke(app, ["export", str(tmp_path / "nope.json"), "--to", "megatron"])
    assert res.exit_code == 2 and "cannot read" in res.stderr


def test_output_file_refuses_to_overwrite(tmp_path: Path, saved) -> None:
    src = tmp_path / "result.json"
    src.write_text(json.dumps(saved("dense")))
    out = tmp_path / "ds.json"
    out.write_text("mine")
    res = RUNNER.invoke(app, ["export", str(src), "--to", "deepspeed", "--output", str(out)])
    assert res.exit_code == 5 and "--overwrite" in res.stderr and out.read_text() == "mine"
    res = RUNNER.invoke(app, ["export", str(src), "--to", "deepspeed", "--output", str(out),
                              "--overwrite"])
    assert res.exit_code == 0 and json.loads(out.read_text())["zero_optimization"]["stage"] == 3


def test_stdout_matches_output_file(tmp_path: Path, saved) -> None:
    src = tmp_path / "result.json"
    src.write_text(json.dumps(saved("inference")))
    printed = RUNNER.invoke(app, ["export", str(src), "--to", "sglang"])
    out = tmp_path / "serve.sh"
    written = RUNNER.invoke(app, ["export", str(src), "--to", "sglang", "-o", str(out)])
    assert printed.exit_code == written.exit_code == 0
    assert printed.stdout == out.read_text() and "--tp-size 8" in printed.stdout


def test_search_export_prints_launch_settings() -> None:
    res = RUNNER.invoke(app, ["search", "--mode", "inference", "--model", "llama3-8b", "--cluster",
                              "dgx-h100", "--gpus", "8", "--batch", "16", "--prompt-len", "512",
                              "--output-len", "128", "--export", "vllm"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("# meshplan export --to vllm") and "--tensor-parallel-size" in res.stdout


def test_search_export_leaves_the_console_following_stdout() -> None:
    """--export moves the table to stderr for one run; the next in-process invocation (a new
    stdout) must still print. A console pinned to the first run's closed stdout fails with
    'I/O operation on closed file'."""
    first = RUNNER.invoke(app, ["search", "--mode", "inference", "--model", "llama3-8b", "--cluster",
                                "dgx-h100", "--gpus", "8", "--batch", "16", "--prompt-len", "512",
                                "--output-len", "128", "--export", "vllm"])
    assert first.exit_code == 0, first.stderr
    second = RUNNER.invoke(app, ["--version"])
    assert second.exit_code == 0, second.stderr
    assert second.stdout.startswith("meshplan ")


SEARCH_INF = ["search", "--mode", "inference", "--model", "llama3-8b", "--cluster", "dgx-h100",
              "--gpus", "8", "--batch", "16", "--prompt-len", "512", "--output-len", "128"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--export", "slurm"], 2, "error: --export 'slurm' is not one of megatron, torchtitan, deepspeed, vllm, sglang"),
    (["--export", "vllm", "--json"], 2, "error: --json and --export both write to stdout"),
    (["--export", "megatron"], 4, "error: Megatron-LM cannot express this plan: it is an inference plan"),
    (["--report", "no-such-dir/plan.html"], 2, "error: --report no-such-dir/plan.html: the directory no-such-dir does not exist"),
])
def test_search_export_and_report_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    res = RUNNER.invoke(app, [*SEARCH_INF, *args])
    assert res.exit_code == code, res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr


@pytest.mark.parametrize(("content", "args", "code"), [
    ("not json", ["--to", "megatron"], 2),
    (None, ["--to", "slurm"], 2),
    (None, ["--to", "vllm"], 4),
])
def test_export_errors_are_one_line(tmp_path: Path, saved, content: str | None, args: list[str],
                                    code: int) -> None:
    path = tmp_path / "in.json"
    path.write_text(content if content is not None else json.dumps(saved("dense")))
    res = RUNNER.invoke(app, ["export", str(path), *args])
    assert res.exit_code == code and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr


def test_search_export_training_matches_export_of_saved_result(tmp_path: Path) -> None:
    """`search --export megatron` prints what `export --to megatron` prints for the saved
    --json of the same search; the table goes to stderr."""
    args = ["search", "--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "16",
            "--global-batch", "64", "--seq-len", "2048"]
    direct = RUNNER.invoke(app, [*args, "--export", "megatron"])
    assert direct.exit_code == 0, direct.stderr
    assert direct.stdout.startswith("# meshplan export --to megatron") and "best plans" in direct.stderr
    saved = RUNNER.invoke(app, [*args, "--json"])
    path = tmp_path / "result.json"
    path.write_text(saved.stdout)
    exported = RUNNER.invoke(app, ["export", str(path), "--to", "megatron"])
    assert exported.exit_code == 0 and exported.stdout == direct.stdout


@pytest.mark.parametrize(("target", "message"), [
    ("nodir/launch.sh", "the directory"),
    (".", "is a directory"),
])
def test_output_path_errors_exit_2(tmp_path: Path, saved, target: str, message: str) -> None:
    src = tmp_path / "result.json"
    src.write_text(json.dumps(saved("inference")))
    out = tmp_path / target
    res = RUNNER.invoke(app, ["export", str(src), "--to", "vllm", "-o", str(out), "--overwrite"])
    assert res.exit_code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and res.stdout == ""


def test_unwritable_output_exit_2(tmp_path: Path, saved, monkeypatch) -> None:
    """A write that fails (permissions, a full disk) is one line and exit 2; the failure is
    injected, since root (CI) writes through read-only modes."""
    src = tmp_path / "result.json"
    src.write_text(json.dumps(saved("inference")))

    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    res = RUNNER.invoke(app, ["export", str(src), "--to", "vllm", "-o", str(tmp_path / "x.sh")])
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip() == f"error: cannot write --output {tmp_path / 'x.sh'}: Permission denied"


@pytest.mark.parametrize("fmt", ["megatron", "torchtitan", "deepspeed"])
def test_non_default_gradient_dtype_is_refused(tmp_path: Path, saved, fmt: str) -> None:
    """A search run with --grad-dtype bf16 (bf16 training) has gradients the engines' launch
    options meshplan writes would reduce in fp32: refused, naming the setting."""
    data = saved("dense")
    data["inputs"]["workload"]["grad_dtype"] = "bf16"
    res = _export(tmp_path, data, "--to", fmt)
    assert res.exit_code == 4, res.stderr
    assert "gradients reduced in bf16" in res.stderr and res.stdout == ""
    data["inputs"]["workload"]["grad_dtype"] = "fp32"      # the default: exported as before
    again = _export(tmp_path, data, "--to", fmt)
    assert again.exit_code == 0 and "gradients reduced" not in again.stderr, again.stderr


def test_redundant_expert_slots_export_with_eplb(tmp_path: Path) -> None:
    """Mixtral's 8 experts over ep=16 (16 replicas of tp=1): one slot per device, 8 of them
    redundant copies. SGLang is told the count, vLLM's EPLB defaults to that same minimum."""
    found = RUNNER.invoke(app, ["search", "--mode", "inference", "--model", "mixtral-8x7b",
                                "--cluster", "dgx-h100", "--gpus", "16", "--batch", "64",
                                "--prompt-len", "256", "--output-len", "32", "--fix",
                                "tp=1,ep=16", "--json"])
    assert found.exit_code == 0, found.stderr
    data = json.loads(found.stdout)
    assert data["best"]["plan"]["ep"] == 16
    assert any("does not divide the 8 experts" in w for w in data["best"]["estimate"]["warnings"])
    sglang = _export(tmp_path, data, "--to", "sglang")
    lines = [ln.rstrip(" \\").strip() for ln in sglang.stdout.splitlines()]
    assert "--ep-num-redundant-experts 8" in lines and "--enable-eplb" in lines
    vllm = _export(tmp_path, data, "--to", "vllm")
    lines = [ln.rstrip(" \\").strip() for ln in vllm.stdout.splitlines()]
    assert "--enable-eplb" in lines and "--data-parallel-size 16" in lines
