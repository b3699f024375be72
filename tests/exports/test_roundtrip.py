"""Every export, read back by our own parser, states the plan it was made from, and uses only
option names the engine documents (options/<engine>.toml, each with its source)."""

from __future__ import annotations

import pytest

from planner.errors import UnsupportedPlanError
from planner.exports import FORMATS, export_result, read_result
from planner.exports.common import option_names
from planner.exports.parse import (command_flags, deepspeed_keys, megatron_degrees,
                                   megatron_virtual_stage_layers, torchtitan_keys,
                                   torchtitan_virtual_stage_layers)

FIXTURES = ("dense", "interleaved-firstlast", "interleaved-layout", "moe", "inference",
            "moe-inference")

# (fixture, rank, format) that export; every other training/inference pairing is refused
# (test_export_cli.py and the matrix in test_engines.py).
EXPORTABLE = [
    ("dense", 0, "megatron"), ("dense", 0, "torchtitan"), ("dense", 0, "deepspeed"),
    ("interleaved-firstlast", 0, "megatron"), ("interleaved-layout", 0, "megatron"),
    ("interleaved-layout", 0, "torchtitan"), ("moe", 0, "megatron"), ("moe", 1, "megatron"),
    ("inference", 0, "vllm"), ("inference", 0, "sglang"),
    ("moe-inference", 0, "vllm"), ("moe-inference", 3, "vllm"),
    *[("moe-inference", r, "sglang") for r in range(5)],
]


def _names_used(fmt: str, text: str) -> dict[str, object]:
    if fmt == "torchtitan":
        return torchtitan_keys(text)
    if fmt == "deepspeed":
        return deepspeed_keys(text)
    return command_flags(text)[1]


@pytest.mark.parametrize(("name", "rank", "fmt"), EXPORTABLE)
def test_every_name_is_documented(name: str, rank: int, fmt: str, saved) -> None:
    text = export_result(saved(name), fmt, rank=rank)
    docs = option_names(fmt)
    used = _names_used(fmt, text)
    assert used, "the export names no option"
    undocumented = sorted(set(used) - docs.names)
    assert not undocumented, f"{fmt} names not in options/{fmt}.toml: {undocumented}"
    for key, allowed in docs.choices.items():
        if key in used:
            assert str(used[key]) in allowed, f"{key}={used[key]} is not one of {allowed}"


def test_option_files_name_their_source() -> None:
    for fmt in FORMATS:
        docs = option_names(fmt)
        assert "http" in docs.source and docs.names, fmt


@pytest.mark.parametrize(("name", "rank"), [(n, r) for n, r, f in EXPORTABLE if f == "megatron"])
def test_megatron_flags_state_the_plan(name: str, rank: int, saved) -> None:
    data = saved(name)
    inp = read_result(data, rank=rank)
    words, flags = command_flags(export_result(data, "megatron", rank=rank))
    p, m = inp.plan, inp.model
    assert words[-1] == "pretrain_gpt.py"
    assert megatron_degrees(flags) == {
        "tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep, "vpp": p.vpp, "mbs": p.mbs,
        "sp": p.sp and p.tp > 1, "zero": p.zero, "recompute": p.recompute.value}
    assert megatron_virtual_stage_layers(flags, m.num_layers) == inp.virtual_stage_layers
    assert sum(inp.virtual_stage_layers) == m.num_layers
    wl = data["inputs"]["workload"]
    assert (flags["--global-batch-size"], flags["--seq-length"], flags["--num-layers"]) == (
        str(wl["global_batch_size"]), str(wl["seq_len"]), str(m.num_layers))
    # torchrun starts exactly the plan's devices
    nodes, per_node = int(words[words.index("--nnodes") + 1]), int(words[words.index("--nproc-per-node") + 1])
    assert nodes * per_node == p.devices == data["inputs"]["devices"]
    if m.moe is not None:
        assert flags["--num-experts"] == str(m.moe.num_experts)
        assert flags["--expert-tensor-parallel-size"] == str(p.expert_tp)
        if m.moe.route_groups is not None:     # group-limited routing is part of the model
            assert (flags["--moe-router-num-groups"], flags["--moe-router-group-topk"]) == (
                str(m.moe.route_groups), str(m.moe.route_group_topk))
        else:
            assert "--moe-router-num-groups" not in flags


@pytest.mark.parametrize(("plan_text", "grad", "param"), [
    ("tp=2,pp=1,dp=8,mbs=2,zero=1", True, True),
    ("tp=1,pp=1,dp=16,mbs=1,zero=0", True, False),
    ("tp=2,pp=1,dp=8,mbs=2,zero=1,dp_overlap=off", False, False),
])
def test_megatron_overlaps_data_parallel_as_the_estimate_does(plan_text: str, grad: bool,
                                                              param: bool, variant) -> None:
    """The estimate overlaps gradient reduction and ZeRO's gathers unless dp_overlap=off;
    Megatron-LM does only with --overlap-grad-reduce and --overlap-param-gather."""
    _, flags = command_flags(export_result(variant("dense", plan_text), "megatron"))
    assert ("--overlap-grad-reduce" in flags, "--overlap-param-gather" in flags) == (grad, param)


@pytest.mark.parametrize(("plan_text", "overlap"), [
    ("tp=2,pp=1,dp=8,mbs=2,zero=1", True), ("tp=2,pp=1,dp=8,mbs=2,zero=1,dp_overlap=off", False),
    ("tp=1,pp=1,dp=16,mbs=1,zero=0,dp_overlap=off", None)])
def test_deepspeed_overlap_comm_follows_dp_overlap(plan_text: str, overlap: bool | None,
                                                   variant) -> None:
    """ZeRO's overlap_comm (off by default for stages 1 and 2) follows the plan; stage 0 has none."""
    keys = deepspeed_keys(export_result(variant("dense", plan_text), "deepspeed"))
    assert keys.get("zero_optimization.overlap_comm") == overlap


def test_megatron_interleaved_uneven_shapes(saved) -> None:
    _, first_last = command_flags(export_result(saved("interleaved-firstlast"), "megatron"))
    assert (first_last["--decoder-first-pipeline-num-layers"],
            first_last["--decoder-last-pipeline-num-layers"],
            first_last["--num-virtual-stages-per-pipeline-rank"]) == ("6", "6", "2")
    assert "--pipeline-model-parallel-layout" not in first_last
    _, layout = command_flags(export_result(saved("interleaved-layout"), "megatron"))
    # layers=3/4/4/4/5/4/4/4 in pipeline order: rank 0 holds chunks 0 and 4 (3 + 5 blocks)
    assert layout["--pipeline-model-parallel-layout"] == "Ettt|tttt|tttt|tttt|ttttt|tttt|tttt|ttttL"
    assert "--num-virtual-stages-per-pipeline-rank" not in layout  # the layout carries vpp


@pytest.mark.parametrize(("name", "plan_text"), [
    ("interleaved-layout", None),
    ("dense", None),
    ("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=3,recompute=full"),
])
def test_torchtitan_keys_state_the_plan(name: str, plan_text: str | None, saved, variant) -> None:
    data = saved(name) if plan_text is None else variant(name, plan_text)
    inp = read_result(data, rank=0)
    keys = torchtitan_keys(export_result(data, "torchtitan"))
    p = inp.plan
    dp = keys["parallelism.data_parallel_replicate_degree"] * keys["parallelism.data_parallel_shard_degree"]
    assert (keys["parallelism.tensor_parallel_degree"], keys["parallelism.pipeline_parallel_degree"],
            keys["parallelism.context_parallel_degree"], keys["parallelism.expert_parallel_degree"],
            dp) == (p.tp, p.pp, p.cp, p.ep, p.dp)
    assert (keys["parallelism.data_parallel_shard_degree"] > 1) == (p.zero == 3 and p.dp > 1)
    assert keys["activation_checkpoint.mode"] == p.recompute.value
    gb = data["inputs"]["workload"]["global_batch_size"]
    assert keys["training.global_batch_size"] == gb
    if p.pp > 1:
        assert keys["parallelism.pipeline_parallel_microbatch_size"] == p.mbs
        assert keys["training.local_batch_size"] * p.dp == gb
        assert torchtitan_virtual_stage_layers(keys, inp.model.num_layers) == inp.virtual_stage_layers
        assert keys["parallelism.pipeline_parallel_schedule"] == ("Interleaved1F1B" if p.vpp > 1 else "1F1B")
    else:
        assert keys["training.local_batch_size"] == p.mbs


@pytest.mark.parametrize("plan_text", [None, "tp=2,pp=1,dp=8,mbs=2,zero=1", "tp=1,pp=1,dp=16,mbs=1,zero=0,dp_overlap=off"])
def test_deepspeed_keys_state_the_plan(plan_text: str | None, saved, variant) -> None:
    data = saved("dense") if plan_text is None else variant("dense", plan_text)
    p = read_result(data, rank=0).plan
    keys = deepspeed_keys(export_result(data, "deepspeed"))
    gb = data["inputs"]["workload"]["global_batch_size"]
    assert keys["train_batch_size"] == gb == (keys["train_micro_batch_size_per_gpu"]
                                              * keys["gradient_accumulation_steps"] * p.dp)
    assert keys["train_micro_batch_size_per_gpu"] == p.mbs
    assert keys["zero_optimization.stage"] == p.zero
    assert keys["bf16.enabled"] is True
    assert keys.get("tensor_parallel.autotp_size", 1) == p.tp


@pytest.mark.parametrize(("name", "rank", "fmt"), [e for e in EXPORTABLE if e[2] in ("vllm", "sglang")])
def test_serving_flags_state_the_plan(name: str, rank: int, fmt: str, saved) -> None:
    data = saved(name)
    inp = read_result(data, rank=rank)
    words, flags = command_flags(export_result(data, fmt, rank=rank, model_path="org/model"))
    p, wl = inp.plan, data["inputs"]["workload"]
    if fmt == "vllm":
        assert words == ["vllm", "serve", "org/model"]
        degrees = (flags["--tensor-parallel-size"], flags["--pipeline-parallel-size"],
                   flags["--data-parallel-size"])
        ep = p.tp * p.dp if "--enable-expert-parallel" in flags else 1
        batch, context = flags["--max-num-seqs"], flags["--max-model-len"]
    else:
        assert words == ["python", "-m", "sglang.launch_server"] and flags["--model-path"] == "org/model"
        degrees = (flags["--tp-size"], flags["--pp-size"], flags["--dp-size"])
        ep = int(flags["--ep-size"])  # type: ignore[arg-type]
        batch, context = flags["--max-running-requests"], flags["--context-length"]
    assert degrees == (str(p.tp), str(p.pp), str(p.dp)) and ep == p.ep
    assert int(batch) * p.dp >= wl["batch_size"] > (int(batch) - 1) * p.dp  # type: ignore[arg-type]
    assert int(context) == wl["prompt_len"] + wl["output_len"]  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "flag"), [("vllm", "--max-num-batched-tokens"),
                                           ("sglang", "--chunked-prefill-size")])
def test_serving_exports_state_the_prefill_chunk(fmt: str, flag: str, saved) -> None:
    """A workload prefilled in chunks (search --prefill-chunk N) exports the engine's token
    budget for them, a documented option; without one, none is printed."""
    data = saved("inference")
    assert flag not in command_flags(export_result(data, fmt, rank=0))[1]
    data["inputs"]["workload"]["prefill_chunk_tokens"] = 8192
    text = export_result(data, fmt, rank=0)
    assert command_flags(text)[1][flag] == "8192" and flag in option_names(fmt).names


def test_fixtures_cover_the_cases(saved) -> None:
    """A dense, an interleaved uneven-stage, an MoE and an inference plan are all covered."""
    plans = {n: read_result(saved(n), rank=0) for n in FIXTURES}
    assert plans["dense"].model.moe is None and plans["dense"].training
    assert plans["interleaved-layout"].plan.vpp > 1 and plans["interleaved-layout"].plan.chunk_layers
    assert len(set(plans["interleaved-firstlast"].stage_layers)) > 1
    assert plans["moe"].model.moe is not None and plans["moe"].plan.ep > 1
    assert not plans["inference"].training and plans["moe-inference"].model.moe is not None


def test_export_is_deterministic(saved) -> None:
    for name, rank, fmt in EXPORTABLE[:6]:
        assert export_result(saved(name), fmt, rank=rank) == export_result(saved(name), fmt, rank=rank)


def test_unsupported_is_exit_code_4() -> None:
    assert UnsupportedPlanError("x").exit_code == 4
