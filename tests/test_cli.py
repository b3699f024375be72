"""The command line: exit codes, one-line errors on stderr, and the `--json` schemas.

Runs `cli.app` in-process with typer's CliRunner (stdout and stderr kept apart), plus one
subprocess for `python -m planner`. Error paths follow the foundation issue: every bad input
exits 2 with exactly one `error: ...` line on stderr and no traceback; `--debug` lets the
exception through instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner.hf import SUPPORTED_MODEL_TYPES
from planner.result import BREAKDOWN_KEYS, MEMORY_KEYS

REPO = Path(__file__).resolve().parent.parent
HF_LLAMA3_8B = REPO / "tests" / "data" / "hf" / "llama3-8b" / "config.json"




RUNNER = cli_runner()


def run(*args: str) -> Any:
    return RUNNER.invoke(app, list(args))


def run_json(*args: str) -> Any:
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: Any, *needles: str) -> str:
    """Exit 2, stdout empty, stderr exactly one 'error: ' line containing every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# ----- version ------------------------------------------------------------------------------

def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == "meshplan 0.1.0"


def test_python_m_planner_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "planner", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "meshplan 0.1.0"


# ----- presets ------------------------------------------------------------------------------

def test_presets_lists_all_kinds() -> None:
    result = run("presets")
    assert result.exit_code == 0, result.stderr
    for title in ("models", "devices", "clusters"):
        assert title in result.stdout


def test_presets_models_table() -> None:
    result = run("presets", "models")
    assert result.exit_code == 0, result.stderr
    assert "models" in result.stdout
    assert "params" in result.stdout


def test_presets_devices_json() -> None:
    rows = run_json("presets", "devices", "--json")
    assert isinstance(rows, list) and rows
    assert all(isinstance(r, dict) and r["name"] for r in rows)
    assert all(r["kind"] == "device" for r in rows)
    assert "a100-sxm4-80gb" in {r["name"] for r in rows}


def test_presets_clusters_json() -> None:
    rows = run_json("presets", "clusters", "--json")
    assert isinstance(rows, list) and rows
    names = {r["name"] for r in rows}
    assert "dgx-a100" in names
    assert all(r["kind"] == "cluster" and r["device"] for r in rows)


def test_presets_unknown_kind() -> None:
    assert_one_line_error(run("presets", "gizmos"), "gizmos", "models, devices or clusters")


# ----- show ---------------------------------------------------------------------------------

def test_show_gpt3_json() -> None:
    d = run_json("show", "gpt3-175b", "--json")
    assert isinstance(d["params"], int | float) and isinstance(d["active_params"], int | float)
    assert d["params"] == pytest.approx(175e9, rel=0.01)
    assert d["active_params"] == d["params"]  # dense


def test_show_mixtral_active_params() -> None:
    d = run_json("show", "mixtral-8x7b", "--json")
    # Mixtral 8x7B: ~46.7B total, ~12.9B active per token (Jiang et al. 2024, Sec. 2).
    assert d["active_params"] == pytest.approx(12.9e9, rel=0.01)
    assert d["params"] == pytest.approx(46.7e9, rel=0.01)


def test_show_table() -> None:
    result = run("show", "gpt3-175b")
    assert result.exit_code == 0, result.stderr
    assert "parameters" in result.stdout
    assert "gpt3-175b" in result.stdout


@pytest.mark.parametrize(("command", "name", "flag"), [
    ("show", "gpt3-175b", "--model"), ("show", "gpt3-175b", "-m"),
    ("device", "h100-sxm5-80gb", "--device"),
    ("cluster", "dgx-h100", "--cluster"), ("cluster", "dgx-h100", "-c")])
def test_show_commands_take_the_planning_flag(command: str, name: str, flag: str) -> None:
    """`meshplan show --model M` (the flag every planning command uses) prints what
    `meshplan show M` prints; the same for device and cluster."""
    assert run_json(command, flag, name, "--json") == run_json(command, name, "--json")


@pytest.mark.parametrize(("command", "args", "needles"), [
    ("show", [], ("no model given", "meshplan show --model NAME")),
    ("show", ["gpt3-175b", "--model", "llama3-8b"], ("two models given", "gpt3-175b",
                                                     "llama3-8b")),
    ("device", [], ("no device given", "meshplan presets")),
    ("cluster", ["dgx-h100", "-c", "dgx-a100"], ("two clusters given", "dgx-a100")),
])
def test_show_commands_need_exactly_one_name(command: str, args: list[str],
                                             needles: tuple[str, ...]) -> None:
    assert_one_line_error(run(command, *args), *needles)


# ----- model files: TOML / JSON / YAML / HF -------------------------------------------------

TOY = {"name": "toy", "num_layers": 4, "hidden_size": 256, "num_attention_heads": 8,
       "ffn_hidden_size": 1024, "vocab_size": 1000}


def _toml(fields: dict[str, Any]) -> str:
    lines, tables = [], []
    for k, v in fields.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]\n" + "".join(f"{a} = {json.dumps(b)}\n" for a, b in v.items()))
        else:
            lines.append(f"{k} = {json.dumps(v)}\n")
    return "".join(lines) + "".join(tables)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_model_file_formats_agree(tmp_path: Path) -> None:
    toml = _write(tmp_path, "toy.toml", _toml(TOY))
    js = _write(tmp_path, "toy.json", json.dumps(TOY))
    yml = _write(tmp_path, "toy.yaml", "".join(f"{k}: {v}\n" for k, v in TOY.items()))
    got = [run_json("show", p, "--json") for p in (toml, js, yml)]
    assert {g["name"] for g in got} == {"toy"}
    assert len({g["params"] for g in got}) == 1
    assert got[0]["params"] > 0
    assert got[0]["dimensions"]["layers"] == 4


def test_hf_config_loads() -> None:
    d = run_json("show", str(HF_LLAMA3_8B), "--json")
    assert d["name"] == "llama3-8b"  # the folder name
    assert d["params"] == 8_030_261_248  # HF safetensors total of Llama 3.1 8B
    assert d["dimensions"]["kv_heads"] == 8


def test_head_dim_makes_uneven_heads_valid(tmp_path: Path) -> None:
    path = _write(tmp_path, "hd.toml", _toml({**TOY, "hidden_size": 250, "head_dim": 32}))
    assert run_json("show", path, "--json")["dimensions"]["head_dim"] == 32


# ----- error paths (foundation issue) -------------------------------------------------------

def test_unknown_preset_suggests_closest() -> None:
    line = assert_one_line_error(run("show", "gpt3-175B"), "gpt3-175B", "'gpt3-175b'")
    assert "did you mean" in line


def test_unknown_cluster_preset_suggests_closest() -> None:
    result = run("evaluate", "-m", "gpt3-175b", "-c", "dgx-a10", "--gpus", "8",
                 "--global-batch", "8", "--seq-len", "2048", "--plan", "tp=8")
    assert_one_line_error(result, "cluster", "'dgx-a100'")


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert_one_line_error(run("show", missing), missing, "does not exist")


@pytest.mark.parametrize("name", ["bad.toml", "bad.txt"])
def test_not_toml_json_yaml(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, "]]] this is { not : any : format\n= x\n")
    assert_one_line_error(run("show", path), path, "not valid TOML, JSON or YAML")


def test_field_missing(tmp_path: Path) -> None:
    fields = {k: v for k, v in TOY.items() if k != "ffn_hidden_size"}
    path = _write(tmp_path, "nofield.toml", _toml(fields))
    assert_one_line_error(run("show", path), "nofield.toml", "'ffn_hidden_size'")


def test_field_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "wrongtype.json", json.dumps({**TOY, "num_layers": "four"}))
    assert_one_line_error(run("show", path), "wrongtype.json", "'num_layers'", "four")


def test_unknown_hf_model_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "config.json", json.dumps({"model_type": "t5", "d_model": 512}))
    line = assert_one_line_error(run("show", path), "'t5'", "not supported")
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in line


@pytest.mark.parametrize("fields, needles", [
    ({**TOY, "hidden_size": 250}, ("8 attention heads", "hidden size 250", "head_dim")),
    ({**TOY, "num_kv_heads": 3}, ("3 KV heads", "8 attention heads")),
    ({**TOY, "moe": {"num_experts": 4, "top_k": 8, "expert_ffn_hidden_size": 512}},
     ("top_k 8", "4 experts")),
], ids=["heads-do-not-divide-hidden", "kv-heads-do-not-divide-heads", "top-k-above-experts"])
def test_inconsistent_model(tmp_path: Path, fields: dict[str, Any],
                            needles: tuple[str, ...]) -> None:
    path = _write(tmp_path, "bad_model.toml", _toml(fields))
    assert_one_line_error(run("show", path), "bad_model.toml", *needles)


def test_debug_lets_the_exception_through() -> None:
    result = run("--debug", "show", "gpt3-175B")
    assert result.exit_code != 2
    assert result.exception is not None
    assert "gpt3-175b" in str(result.exception)


def test_debug_does_not_stick() -> None:
    # --debug lives in module state; the next invocation without it must be one line again.
    assert run("--debug", "show", "gpt3-175B").exception is not None
    assert_one_line_error(run("show", "gpt3-175B"), "gpt3-175b")


# ----- evaluate -----------------------------------------------------------------------------

EVAL = ("evaluate", "--model", "narayanan-145b", "--cluster", "dgx-a100",
        "--global-batch", "2304", "--seq-len", "2048", "--plan", "tp=8,pp=8,mbs=1,recompute=full")

TOP_KEYS = ("step_time_s", "tokens_per_s", "model_tflops_per_gpu", "hardware_tflops_per_gpu",
            "mfu", "hfu", "peak_memory_gib", "fits", "breakdown", "memory_gib", "warnings")


def test_evaluate_json_schema() -> None:
    d = run_json(*EVAL, "--gpus", "1536", "--json")
    for key in TOP_KEYS:
        assert key in d, key
    # the contract keys, and meshplan's additions (offload)
    assert set(d["breakdown"]) >= {"compute", "recompute", "tp_comm", "cp_comm", "pp_comm",
                                   "dp_comm", "ep_comm", "bubble", "optimizer"}
    assert set(d["breakdown"]) == set(BREAKDOWN_KEYS)
    assert set(d["memory_gib"]) == {"weights", "grads", "optimizer", "activations", "buffers"}
    assert set(d["memory_gib"]) == set(MEMORY_KEYS)
    assert isinstance(d["fits"], bool) and isinstance(d["warnings"], list)
    for key in TOP_KEYS[:7]:
        assert isinstance(d[key], int | float) and d[key] > 0, key
    assert 0 < d["mfu"] <= d["hfu"] < 1  # full recomputation: hardware FLOPs > model FLOPs
    assert sum(d["breakdown"].values()) == pytest.approx(d["step_time_s"], rel=1e-9)
    assert d["devices"] == 1536
    assert d["plan"].startswith("tp=8,pp=8,dp=24,")  # dp = 1536 / (8 * 8)


SERVE = ("evaluate", "--mode", "inference", "--model", "mixtral-8x7b", "--cluster", "dgx-h100",
         "--gpus", "8", "--batch", "32", "--prompt-len", "1024", "--output-len", "256")


def test_evaluate_inference_scores_one_serving_plan_as_the_search_does() -> None:
    from planner import InferenceWorkload, load_cluster, load_model
    from search.inference import search_inference

    d = run_json(*SERVE, "--plan", "tp=2,ep=8", "--json")
    assert d["plan"].startswith("tp=2,pp=1,dp=4,") and ",ep=8," in d["plan"]   # dp filled in
    assert tuple(d["tpot_breakdown"]) == ("weights_read", "kv_read", "compute", "tp_comm",
                                          "pp_comm", "launch", "ep_comm")
    assert tuple(d["ttft_breakdown"]) == ("compute", "tp_comm", "pp_comm", "ep_comm")
    assert sum(d["tpot_breakdown"].values()) == pytest.approx(d["tpot_s"], rel=1e-12)
    assert d["tpot_breakdown"]["ep_comm"] > 0          # experts over the 4 replicas
    wl = InferenceWorkload(batch_size=32, prompt_len=1024, output_len=256)
    found = search_inference(load_model("mixtral-8x7b"), load_cluster("dgx-h100"), wl,
                             devices=8, top_k=100, fixed={"tp": 2, "ep": 8})
    assert found.best.estimate.model_dump(mode="json") == d
    table = run(*SERVE, "--plan", "tp=2,ep=8")
    assert table.exit_code == 0, table.stderr
    for needle in ("TPOT", "time per output token (decode)", "ep_comm", "kv_cache"):
        assert needle in table.stdout, needle


@pytest.mark.parametrize("args, needles", [
    (("--plan", "tp=2,mbs=2"), ("mbs", "training only")),
    (("--plan", "tp=2,dp=2"), ("4 devices", "8 were given")),
    (("--plan", "tp=2,ep=6"), ("ep=6", "valid: 4, 8")),
    (("--plan", "tp=2", "--global-batch", "8"), ("--mode inference does not use --global-batch",)),
])
def test_evaluate_inference_rejects(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_one_line_error(run(*SERVE, *args), *needles)


def test_evaluate_training_still_needs_its_options() -> None:
    result = run("evaluate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "8")
    assert_one_line_error(result, "--mode training needs --global-batch, --seq-len")
    result = run(*EVAL, "--gpus", "1536", "--batch", "4")
    assert_one_line_error(result, "--mode training does not use --batch")


def test_evaluate_nodes_equals_gpus() -> None:
    by_gpus = run_json(*EVAL, "--gpus", "1536", "--json")
    by_nodes = run_json(*EVAL, "--nodes", "192", "--json")  # 192 DGX A100 nodes x 8
    assert by_nodes == by_gpus


def test_evaluate_table() -> None:
    result = run(*EVAL, "--gpus", "1536")
    assert result.exit_code == 0, result.stderr
    assert "step time" in result.stdout
    assert "narayanan-145b" in result.stdout


def test_evaluate_gpus_not_whole_nodes() -> None:
    result = run(*EVAL, "--gpus", "12")
    assert_one_line_error(result, "--gpus 12", "dgx-a100", "8", "16")


def test_evaluate_bad_dtype() -> None:
    result = run(*EVAL, "--gpus", "1536", "--dtype", "bf17")
    assert_one_line_error(result, "--dtype", "bf17", "bf16")


def test_evaluate_gpus_and_nodes_exclusive() -> None:
    assert_one_line_error(run(*EVAL, "--gpus", "1536", "--nodes", "192"), "--gpus", "--nodes")
    assert_one_line_error(run(*EVAL), "--gpus", "--nodes")


def test_device_count_above_the_ceiling_is_refused_at_once() -> None:
    """--gpus / --nodes past MAX_DEVICES: exit 2 naming the count and the ceiling, before any
    divisor of the count is enumerated (2^40 GPUs answered in well under a second)."""
    assert_one_line_error(run(*EVAL, "--gpus", str(2 ** 40)), "--gpus 1,099,511,627,776",
                          "10,000,000")
    assert_one_line_error(run("capacity", "--cluster", "dgx-a100", "--nodes", "100000000",
                              "--global-batch", "64", "--seq-len", "2048"),
                          "--nodes 100000000 (800,000,000 devices)", "10,000,000")


def test_search_without_any_split_says_so_instead_of_add_devices() -> None:
    """When no tp x cp x pp x dp split of the devices survives (here dp would have to exceed
    the global batch), more devices cannot help: exit 3 and say to use fewer or a larger
    batch; a model too big for its devices still gets "add devices"."""
    res = run("search", "--model", "narayanan-145b", "--cluster", "dgx-a100", "--gpus",
              "8000000", "--global-batch", "8", "--seq-len", "2048")
    assert res.exit_code == 3 and "Traceback" not in res.output
    assert "use fewer devices or a larger global batch" in res.stderr
    assert "add devices" not in res.stderr and "--fix" not in res.stderr
    big = run("search", "--model", "narayanan-145b", "--cluster", "dgx-a100", "--gpus", "8",
              "--global-batch", "8", "--seq-len", "2048")
    assert big.exit_code == 3 and "add devices" in big.stderr


def test_evaluate_bad_plan_key() -> None:
    result = run(*EVAL[:-1], "tp=8,pq=8", "--gpus", "1536")
    assert_one_line_error(result, "'pq'")


def test_a_closed_pipe_ends_quietly_on_sigpipe() -> None:
    """`meshplan ... | head`: the reader closes the pipe early; the process ends on SIGPIPE
    (as Unix filters do; shells report 141), not with exit 1, which is meshplan's bug code,
    and prints nothing on stderr."""
    import signal

    if not hasattr(signal, "SIGPIPE"):
        pytest.skip("no SIGPIPE on this platform")
    # over 200 KB of JSON: more than a pipe buffer holds, so the writer is still writing
    # when the pipe closes
    proc = subprocess.Popen([sys.executable, "-m", "planner", "search", "-m", "narayanan-1.7b",
                             "-c", "dgx-a100", "--gpus", "8", "--global-batch", "64",
                             "--seq-len", "2048", "--top", "100", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == -signal.SIGPIPE
    assert err == b""


def test_placement_takes_the_same_dtypes_as_every_command() -> None:
    r = RUNNER.invoke(app, ["placement", "-m", "mixtral-8x7b", "-c", "dgx-h100", "--gpus", "16",
                            "--dtype", "int4"])
    assert r.exit_code == 2
    assert "--dtype 'int4' is not one of bf16, fp16, fp8, fp4, fp32, tf32" in r.output
