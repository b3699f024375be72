"""`planner.explain` / `meshplan evaluate --explain`: one micro-batch, operator by operator.

The operators are the shares `compute.block_compute` adds up, recorded as it adds them, so
their seconds and FLOPs must sum to the block's exactly (the same floats, in the same order);
the explanation must agree with the stage tables the estimate is built from; and the CLI must
print it, put it in the JSON, and refuse it where it does not apply."""

from __future__ import annotations

import json

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models.compute import Roofline, Shard, block_compute, block_ops
from cost_models.efficiency import device_efficiency
from cost_models.tables import build_tables
from cost_models.training import make_context
from planner import (Attention, DType, Plan, TrainingWorkload, explain, load_cluster,
                     load_device, load_model)

CASES = [
    # model, device, dtype, moe, shard
    ("gpt3-175b", "a100-sxm4-80gb", DType.FP16, False,
     Shard(mbs=1, seq_len=2048, tp=8, attn=Attention.UNFUSED, dtype=DType.FP16)),
    ("llama3-70b", "h100-sxm5-80gb", DType.BF16, False,
     Shard(mbs=2, seq_len=8192, tp=8, sp=True)),
    ("llama3-70b", "h100-sxm5-80gb", DType.FP8, False,
     Shard(mbs=1, seq_len=8192, tp=4, cp=2, sp=True, dtype=DType.FP8)),
    ("deepseek-v3", "h800-sxm5-80gb", DType.FP8, True,
     Shard(mbs=1, seq_len=4096, tp=2, cp=2, sp=True, ep=64, dtype=DType.FP8)),
    ("deepseek-v3", "h800-sxm5-80gb", DType.FP8, False,
     Shard(mbs=1, seq_len=4096, tp=2, sp=True, ep=64, dtype=DType.FP8)),
    ("mixtral-8x7b", "b200", DType.FP4, True,
     Shard(mbs=2, seq_len=4096, tp=1, ep=8, dtype=DType.FP4)),
    ("qwen3-30b-a3b", "tpu-v5p", DType.BF16, True, Shard(mbs=4, seq_len=4096, ep=8)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2].value}-{'moe' if c[3] else 'dense'}")
def test_operators_add_up_to_the_block(case) -> None:
    name, device, dtype, moe, sh = case
    model, dev = load_model(name), load_device(device)
    roof = Roofline(dev, device_efficiency(dev)[0], dtype)
    bc = block_compute(model, roof, sh, moe=moe)
    recorded, ops = block_ops(model, roof, sh, moe=moe)
    assert recorded == bc
    totals = [0.0, 0.0, 0.0, 0.0]
    for op in ops:
        totals = [totals[0] + op.fwd_s, totals[1] + op.bwd_s, totals[2] + op.fwd_flops,
                  totals[3] + op.bwd_flops]
    assert totals == [bc.fwd_s, bc.bwd_s, bc.fwd_flops, bc.bwd_flops]
    assert len({op.name for op in ops}) == len(ops)          # every share named once
    assert all(op.fwd_s > 0 for op in ops)


def test_a_large_gemm_reaches_its_shape_efficiency() -> None:
    """A compute-bound GEMM's fraction of peak is the roofline's efficiency for its shape:
    Llama 3 70B's MLP up-projection at tp=8 on an H100, 8192 x 7168 x 8192."""
    model, dev = load_model("llama3-70b"), load_device("h100-sxm5-80gb")
    roof = Roofline(dev, device_efficiency(dev)[0], DType.BF16)
    ops = {op.name: op for op in block_ops(model, roof, Shard(mbs=1, seq_len=8192, tp=8),
                                           moe=False)[1]}
    up = ops["mlp up (gate and up)"]
    assert up.work == "8192 x 7168 x 8192"
    assert up.fwd_flops == 2 * 8192 * 7168 * 8192
    assert up.fraction == pytest.approx(roof.efficiency(8192, 7168, 8192), rel=1e-12)
    assert up.bwd_s == pytest.approx(2 * up.fwd_s, rel=1e-12)   # dgrad + wgrad, same shape
    assert ops["elementwise (norms, residual adds, activation, q/k/v split, rope)"].fraction is None


def test_explanation_matches_the_stage_tables() -> None:
    """Each block type's forward + backward seconds are the stage tables' compute per block,
    and the block counts add up to the model's layers."""
    model, cluster = load_model("deepseek-v3"), load_cluster("hgx-h800")
    wl = TrainingWorkload(global_batch_size=1024, seq_len=4096, dtype=DType.FP8)
    plan = Plan(tp=2, pp=8, dp=64, ep=64, sp=True)
    ex = explain(model, cluster, wl, plan, devices=1024)
    assert sum(b.layers for b in ex.blocks) == model.num_layers
    tables = build_tables(make_context(model, cluster.job_view(1024), wl, plan)[0], 8)
    compute = dict(zip(model.moe_layer_mask, tables.prefix["compute"][1:]
                       - tables.prefix["compute"][:-1]))
    for b in ex.blocks:
        assert b.fwd_s + b.bwd_s == pytest.approx(compute[b.kind == "moe"], rel=1e-12)
        assert sum(op.fwd_s for op in b.operators) == pytest.approx(b.fwd_s, rel=1e-12)
    assert {b.kind for b in ex.blocks} == {"dense", "moe"}
    moe = next(b for b in ex.blocks if b.kind == "moe")
    assert moe.ep_comm_s[0] > 0 and moe.tp_comm_s[0] > 0
    assert ex.tokens_per_microbatch == 4096 and ex.head is not None


RUNNER = cli_runner()
ARGS = ["evaluate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "8",
        "--global-batch", "64", "--seq-len", "4096", "--plan", "tp=2,mbs=1,sp=on"]


def test_cli_explain_table_and_json() -> None:
    result = RUNNER.invoke(app, [*ARGS, "--explain"])
    assert result.exit_code == 0, result.stderr
    assert "dense block (32 in the model): operators" in result.stdout
    assert "mlp down" in result.stdout and "LM head and loss" in result.stdout
    plain = RUNNER.invoke(app, ARGS)
    assert "operators" not in plain.stdout
    data = json.loads(RUNNER.invoke(app, [*ARGS, "--explain", "--json"]).stdout)
    (block,) = data["explain"]["blocks"]
    assert block["layers"] == 32
    assert sum(op["fwd_s"] for op in block["operators"]) == pytest.approx(block["fwd_s"])
    assert "explain" not in json.loads(RUNNER.invoke(app, [*ARGS, "--json"]).stdout)


def test_cli_explain_refuses_inference() -> None:
    result = RUNNER.invoke(app, ["evaluate", "--model", "llama3-8b", "--cluster", "dgx-h100",
                                 "--gpus", "1", "--mode", "inference", "--batch", "8",
                                 "--prompt-len", "128", "--output-len", "128", "--plan", "tp=1",
                                 "--explain"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --explain lists a training plan's operators; leave it out with --mode inference"]
