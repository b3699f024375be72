"""Separated-plan search: equals brute force on a tiny space, is deterministic, compares
against the conventional plans; `meshplan separate` exit codes and messages."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from cli import app
from cost_models.separation import SeparatedPlan
from meshplan_cli.testing import cli_runner
from planner import ModelSpec
from planner.errors import PlanError, SpecError
from planner.presets import load_cluster
from planner.workload import InferenceWorkload, TrainingWorkload
from search.separation import best_separated, score, search_separated

RUNNER = cli_runner()
DATA = Path(__file__).resolve().parent.parent / "data"
MOE_TOML = """name = "tiny-moe"
num_layers = 2
hidden_size = 128
num_attention_heads = 4
ffn_hidden_size = 256
vocab_size = 1000
[moe]
num_experts = 4
top_k = 2
expert_ffn_hidden_size = 256
"""


def tiny_moe() -> ModelSpec:
    return ModelSpec(name="tiny-moe", num_layers=2, hidden_size=128, num_attention_heads=4,
                     ffn_hidden_size=256, vocab_size=1000,
                     moe={"num_experts": 4, "top_k": 2, "expert_ffn_hidden_size": 256})


def brute_force(model: ModelSpec, workload: object, devices: int, top_k: int) -> list[str]:
    """Every tuple of raw values, each scored unless the cost model refuses it."""
    cl = load_cluster(str(DATA / "tiny-cluster.toml"))
    training = isinstance(workload, TrainingWorkload)
    found = []
    for a, tp, ep, etp, m, mbs in itertools.product(range(1, devices), range(1, 5), range(1, 5),
                                                    range(1, 3), range(1, 9),
                                                    range(1, 9) if training else [None]):
        if a % tp or a + ep * etp != devices:
            continue
        plan = SeparatedPlan(attn_tp=tp, attn_dp=a // tp, ep=ep, etp=etp, microbatches=m, mbs=mbs)
        try:
            est = score(model, cl, workload, plan)  # type: ignore[arg-type]
        except PlanError:
            continue
        if est.fits:
            found.append((est.time_s, est.plan))
    return [p for _, p in sorted(found)[:top_k]]


@pytest.mark.parametrize("workload", [TrainingWorkload(global_batch_size=16, seq_len=64),
                                      InferenceWorkload(batch_size=8, prompt_len=32, output_len=8)])
def test_search_equals_brute_force(workload: object) -> None:
    cl = load_cluster(str(DATA / "tiny-cluster.toml"))
    top = best_separated(tiny_moe(), cl, workload, 4, top_k=6)  # type: ignore[arg-type]
    assert [s.estimate.plan for s in top] == brute_force(tiny_moe(), workload, 4, 6)
    times = [s.estimate.time_s for s in top]
    assert times == sorted(times)


def test_search_is_deterministic_and_compares_conventional() -> None:
    cl = load_cluster(str(DATA / "tiny-cluster.toml"))
    wl = InferenceWorkload(batch_size=8, prompt_len=32, output_len=8)
    a = search_separated(tiny_moe(), cl, wl, devices=4, top_k=3).model_dump(mode="json")
    b = search_separated(tiny_moe(), cl, wl, devices=4, top_k=3).model_dump(mode="json")
    a["stats"].pop("search_time_s"), b["stats"].pop("search_time_s")
    assert a == b
    labels = [r["label"] for r in a["conventional"]]
    assert labels[-1].startswith("best conventional")
    best = a["top"][0]["estimate"]["time_s"]
    for row in a["conventional"]:
        if row["time_s"] is not None:
            assert row["vs_best_separated_pct"] == pytest.approx(100 * (row["time_s"] - best) / best)
        else:
            assert row["note"]     # tp=8 does not divide 4 devices: said so


def test_whole_nodes_only_keeps_node_aligned_splits() -> None:
    cl = load_cluster(str(DATA / "tiny-cluster.toml"))
    wl = InferenceWorkload(batch_size=8, prompt_len=32, output_len=8)
    top = best_separated(tiny_moe(), cl, wl, 4, top_k=50, whole_nodes_only=True)
    assert top and all(s.estimate.whole_nodes and s.estimate.attn_devices == 2 for s in top)


def test_search_refuses_dense_models_and_one_device() -> None:
    cl = load_cluster(str(DATA / "tiny-cluster.toml"))
    dense = ModelSpec(name="dense", num_layers=2, hidden_size=64, num_attention_heads=4,
                      ffn_hidden_size=256, vocab_size=100)
    wl = TrainingWorkload(global_batch_size=8, seq_len=64)
    with pytest.raises(PlanError, match="dense"):
        best_separated(dense, cl, wl, 4)
    with pytest.raises(SpecError, match="at least 2 devices"):
        best_separated(tiny_moe(), cl, wl, 1)


# ----- CLI ---------------------------------------------------------------------------------
@pytest.fixture
def moe_file(tmp_path: Path) -> str:
    p = tmp_path / "tiny-moe.toml"
    p.write_text(MOE_TOML)
    return str(p)


CLUSTER = str(DATA / "tiny-cluster.toml")


def test_cli_json(moe_file: str) -> None:
    res = RUNNER.invoke(app, ["separate", "-m", moe_file, "-c", CLUSTER, "--gpus", "4",
                              "--mode", "inference", "--batch", "8", "--prompt-len", "32",
                              "--output-len", "8", "--top", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data["top"]) == 2 and data["mode"] == "inference"
    assert data["inputs"]["devices"] == 4 and data["conventional"]


def test_cli_table(moe_file: str) -> None:
    res = RUNNER.invoke(app, ["separate", "-m", moe_file, "-c", CLUSTER, "--gpus", "4",
                              "--global-batch", "16", "--seq-len", "64", "--top", "2"])
    assert res.exit_code == 0, res.stderr
    assert "best attention/expert separated plans" in res.stdout
    assert "conventional plans" in res.stdout and "TP=8" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-m", str(DATA / "tiny-gpt.toml"), "--gpus", "4", "--global-batch", "8", "--seq-len", "64"],
     "is dense"),
    (["--gpus", "1", "--global-batch", "8", "--seq-len", "64"], "at least 2 devices"),
    (["--gpus", "3", "--global-batch", "8", "--seq-len", "64"], "not a whole number"),
    (["--gpus", "4", "--global-batch", "8"], "needs --seq-len"),
    (["--gpus", "4", "--mode", "inference", "--batch", "8", "--prompt-len", "8",
      "--output-len", "8", "--seq-len", "64"], "does not use --seq-len"),
    (["--gpus", "4", "--mode", "serve", "--batch", "8"], "is not one of training, inference"),
])
def test_cli_bad_input_exits_2(moe_file: str, args: list[str], message: str) -> None:
    if "-m" not in args:
        args = ["-m", moe_file, *args]
    res = RUNNER.invoke(app, ["separate", "-c", CLUSTER, *args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert "Traceback" not in res.stderr


def test_cli_nothing_fits_exits_3(tmp_path: Path) -> None:
    big = MOE_TOML.replace("expert_ffn_hidden_size = 256", "expert_ffn_hidden_size = 67108864")
    p = tmp_path / "big-moe.toml"
    p.write_text(big)
    res = RUNNER.invoke(app, ["separate", "-m", str(p), "-c", CLUSTER, "--gpus", "4",
                              "--mode", "inference", "--batch", "4", "--prompt-len", "8",
                              "--output-len", "8"])
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert "no separated plan" in res.stderr
