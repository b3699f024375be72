"""`meshplan capacity`, `min-devices`, `train-time` at the command line: JSON schema, the hand
numbers of tests/planner/test_capacity.py through the CLI, tables, exit codes and messages."""

from __future__ import annotations

import json
from typing import Any

from meshplan_cli.testing import cli_runner

from cli import app

RUNNER = cli_runner()
CLUSTER = ("--cluster", "tests/data/capacity-cluster.toml")
STACK = ("--model", "tests/data/capacity-stack.toml")
# 16-bit gradients: the hand calculations use the ZeRO paper's 16 bytes per parameter
SMALL = ("--global-batch", "1", "--seq-len", "8", "--grad-dtype", "bf16")


def run(*args: str) -> Any:
    return RUNNER.invoke(app, list(args))


def run_json(*args: str) -> Any:
    res = run(*args, "--json")
    assert res.exit_code == 0, (res.exit_code, res.stderr)
    return json.loads(res.stdout)


def test_min_devices_json_matches_hand_calculation() -> None:
    data = run_json("min-devices", *STACK, *CLUSTER, *SMALL)
    assert (data["lower_bound_nodes"], data["min_nodes"]) == (2, 2)
    assert data["states_bytes"] == 16 * 100_769_792
    default = run_json("min-devices", *STACK, *CLUSTER, *SMALL[:4])     # fp32 gradients
    assert default["states_bytes"] == 18 * 100_769_792
    assert [p["nodes"] for p in data["points"]] == [2, 4, 8]
    assert all(p["fits"] and p["tokens_per_s"] > 0 for p in data["points"])
    assert data["one_fewer"]["nodes"] == 1 and data["one_fewer"]["over_gib"] > 0
    assert data["workload"]["global_batch_size"] == 1


def test_min_devices_table_and_determinism() -> None:
    first = run("min-devices", *STACK, *CLUSTER, *SMALL)
    assert first.exit_code == 0, first.stderr
    assert "at least 2 nodes" in first.stdout and "fewest nodes that fit: 2" in first.stdout
    assert "one node fewer: 1 node / 2 GPUs" in first.stdout
    assert run("min-devices", *STACK, *CLUSTER, *SMALL).stdout == first.stdout


def test_min_devices_throughput_and_scaling_by_hand() -> None:
    """At each size: tokens/s = global batch x seq / step time; the printed scaling lines are
    the tokens/s ratio to the fewest nodes and that ratio over the node ratio."""
    data = run_json("min-devices", *STACK, *CLUSTER, *SMALL)
    points = data["points"]
    for p in points:
        assert p["tokens_per_s"] == 1 * 8 / p["step_time_s"]
        fwd = 8 * (24 * 1024 ** 2 + 4 * 8 * 1024)  # see test_train_time_throughput_by_hand
        per_gpu = 3 * fwd * p["tokens_per_s"] / p["devices"]
        assert abs(p["model_tflops_per_gpu"] * 1e12 - per_gpu) < 1e-9 * per_gpu
    text = run("min-devices", *STACK, *CLUSTER, *SMALL).stdout
    base = points[0]
    for p in points[1:]:
        ratio, k = p["tokens_per_s"] / base["tokens_per_s"], p["nodes"] // base["nodes"]
        assert (f"{p['nodes']} nodes: {ratio:.2f}x the tokens/s on {k}x the nodes "
                f"(scaling efficiency {ratio / k:.0%})") in text
    assert "(4 GPUs; 1 feasibility search)" in text
    assert "note: 1 node count below the lower bound skipped without a search" in text


def test_min_devices_infeasible_exit_3() -> None:
    res = run("min-devices", *STACK, *CLUSTER, *SMALL, "--max-nodes", "1")
    assert res.exit_code == 3
    assert res.stderr.startswith("error: capacity-stack needs at least 2 nodes")
    assert "Traceback" not in res.stderr + res.stdout


def test_min_devices_of_a_model_beyond_the_device_ceiling_exit_3(tmp_path: Any) -> None:
    """A model whose states alone need more nodes than MAX_DEVICES allows is refused from its
    lower bound (no node-by-node scan toward it): exit 3, naming the ceiling."""
    spec = tmp_path / "huge.toml"
    spec.write_text('name = "huge"\nnum_layers = 4\nhidden_size = 65536\n'
                    'num_attention_heads = 64\nffn_hidden_size = 262144\n'
                    'vocab_size = 1000000000000\n')
    res = run("min-devices", "--model", str(spec), *CLUSTER, *SMALL)
    assert res.exit_code == 3, res.output
    assert "10,000,000 devices meshplan plans for" in res.stderr
    assert "Traceback" not in res.output


def test_train_time_days_are_tokens_over_throughput() -> None:
    data = run_json("train-time", *STACK, *CLUSTER, "--nodes", "2", "--tokens", "3B", *SMALL)
    assert data["tokens"] == 3e9
    assert data["days"] == 3e9 / data["best"]["tokens_per_s"] / 86400
    assert abs(data["gpu_hours"] - data["days"] * 24 * 4) < 1e-9 * data["gpu_hours"]
    res = run("train-time", *STACK, *CLUSTER, "--nodes", "2", "--tokens", "3B", *SMALL)
    assert res.exit_code == 0 and "GPU-hours" in res.stdout and f"{data['days']:,.1f} days" in res.stdout


def test_train_time_throughput_by_hand() -> None:
    """The throughput behind the days, by hand: tokens/s = global batch x seq / step time, and
    model FLOP/s per GPU = 3 x forward FLOPs per token x tokens/s / GPUs, where a bare block's
    forward is 24 h^2 + 4 s h per token (Narayanan et al. 2021 eq. 3 without a vocabulary):
    8 x (24 x 1024^2 + 4 x 8 x 1024) = 201,588,736 FLOPs per token; MFU = that / 312 TFLOP/s."""
    data = run_json("train-time", *STACK, *CLUSTER, "--nodes", "2", "--tokens", "3B", *SMALL)
    best = data["best"]
    assert best["tokens_per_s"] == 1 * 8 / best["step_time_s"]
    fwd = 8 * (24 * 1024 ** 2 + 4 * 8 * 1024)
    per_gpu = 3 * fwd * best["tokens_per_s"] / 4
    assert abs(best["model_tflops_per_gpu"] * 1e12 - per_gpu) < 1e-9 * per_gpu
    assert abs(best["mfu"] - per_gpu / 312e12) < 1e-12
    # 3e9 tokens at 8 per step
    assert data["steps"] == 375_000_000


def test_train_time_bad_tokens_exit_2() -> None:
    res = run("train-time", *STACK, *CLUSTER, "--nodes", "2", "--tokens", "lots", *SMALL)
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: --tokens 'lots' is not a positive token count; write "
                                  "e.g. 300B, 1.5T, 450M or 3e11")


def test_train_time_infeasible_exit_3() -> None:
    res = run("train-time", *STACK, *CLUSTER, "--nodes", "1", "--tokens", "1B", *SMALL)
    assert res.exit_code == 3 and res.stderr.startswith("error: no plan for capacity-stack")


def test_capacity_json() -> None:
    data = run_json("capacity", *CLUSTER, "--nodes", "1", *SMALL)
    largest, nxt = data["largest"], data["next_up"]
    assert data["family"] == "gpt3" and data["max_tp"] == 2 and data["devices"] == 2
    assert data["best"]["fits"] and data["best"]["peak_memory_gib"] <= 2.0
    assert nxt["params"] > largest["params"] and nxt["num_layers"] == largest["num_layers"] + 1
    assert data["next_up_miss"]["least_memory_gib"] > 2.0
    assert largest["params"] <= data["max_params_by_states"]


def test_capacity_table_output() -> None:
    res = run("capacity", *CLUSTER, "--nodes", "1", *SMALL, "--family", "narayanan")
    assert res.exit_code == 3   # even the 1.7B row is far beyond two 2 GiB devices
    assert "not even the smallest narayanan member" in res.stderr
    res = run("capacity", *CLUSTER, "--nodes", "1", *SMALL)
    assert res.exit_code == 0, res.stderr
    for text in ("largest that fits: gpt3-", "next size up: gpt3-", "states bound: no model over"):
        assert text in res.stdout


def test_capacity_bad_inputs_exit_2() -> None:
    res = run("capacity", *CLUSTER, "--nodes", "1", "--family", "gpt4")
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --family 'gpt4' is not one of gpt3, gpt3-table, narayanan"
    res = run("capacity", *CLUSTER)
    assert res.exit_code == 2 and "exactly one of --gpus N or --nodes N" in res.stderr
    res = run("capacity", "--cluster", "v100x5", "--nodes", "1")
    assert res.exit_code == 2 and "v100x4" in res.stderr
