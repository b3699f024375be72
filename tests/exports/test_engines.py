"""The exports fed to the engines' own configuration parsers, on the CPU.

Skipped where the engine is not installed (CI installs neither). Checked here with
deepspeed 0.19.8 (DeepSpeedConfig) and sglang 0.5.23 (ServerArgs), both from PyPI. Megatron-LM's
argument definitions (megatron/training/arguments.py) are not in the megatron-core wheel, vLLM's
wheel needs its CUDA build, and torchtitan's PyPI release (0.3.0) configures jobs in Python
rather than the job-config TOML exported here; those exports are checked against the option
names kept in planner/exports/options/ (test_roundtrip.py).
"""

from __future__ import annotations

import argparse
import json

import pytest

from planner.exports import export_result, read_result
from planner.exports.parse import command_flags

pytestmark = pytest.mark.engine


class _Mpu:
    """The one method DeepSpeedConfig asks a model-parallel unit for."""

    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


@pytest.mark.parametrize("plan_text", [None, "tp=2,pp=1,dp=8,mbs=2,zero=1",
                                       "tp=1,pp=1,dp=16,mbs=1,zero=0"])
def test_deepspeed_config_accepts_export(monkeypatch, saved, variant, plan_text) -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    data = saved("dense") if plan_text is None else variant("dense", plan_text)
    plan = read_result(data, rank=0).plan
    config = json.loads(export_result(data, "deepspeed"))
    # outside a launched job DeepSpeedConfig falls back to world size 1; give it the plan's
    # data-parallel size the way a Megatron-style mpu would
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda: 0)
    parsed = ds_config.DeepSpeedConfig(config, mpu=_Mpu(plan.dp))
    assert parsed.train_batch_size == data["inputs"]["workload"]["global_batch_size"]
    assert parsed.train_micro_batch_size_per_gpu == plan.mbs
    assert parsed.gradient_accumulation_steps * plan.mbs * plan.dp == parsed.train_batch_size
    assert parsed.zero_optimization_stage == plan.zero
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert parsed.tensor_parallel_config.autotp_size == (plan.tp if plan.tp > 1 else 0)


@pytest.mark.parametrize(("name", "rank"), [("inference", 0)] + [("moe-inference", r) for r in range(5)])
def test_sglang_server_args_accept_export(saved, name: str, rank: int) -> None:
    server_args = pytest.importorskip("sglang.srt.server_args")
    data = saved(name)
    plan = read_result(data, rank=rank).plan
    words, flags = command_flags(export_result(data, "sglang", rank=rank, model_path="org/model"))
    argv = [w for flag, value in flags.items() for w in ((flag,) if value is None else (flag, value))]
    parser = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(parser)
    args = server_args.ServerArgs.from_cli_args(parser.parse_args(argv))
    wl = data["inputs"]["workload"]
    assert (args.tp_size, args.pp_size, args.dp_size, args.ep_size) == (plan.tp, plan.pp, plan.dp, plan.ep)
    assert args.model_path == "org/model" and args.dtype == "bfloat16"
    assert args.context_length == wl["prompt_len"] + wl["output_len"]
    assert args.max_running_requests * plan.dp >= wl["batch_size"]
