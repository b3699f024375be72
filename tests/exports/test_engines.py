"""The exports fed to the engines' own configuration parsers, on the CPU.

Each test is skipped where its engine is not installed. `.ci/run` installs the `engines` extra
(CPU torch, deepspeed 0.19.8, megatron-core 0.16.1, tyro) and torchtitan 0.2.2 without its
data-loading dependencies, so CI runs the DeepSpeed, Megatron-Core and torchtitan tests:
- DeepSpeed: deepspeed.runtime.config.DeepSpeedConfig reads the JSON.
- torchtitan: the 0.2.2 ConfigManager (the last release whose jobs are TOML files) reads the
  TOML and rejects any key its JobConfig does not define. torchtitan/__init__.py imports the
  tokenizer and model kernels (tokenizers; triton, a 286 MB wheel); the config modules need
  only torch and tyro, so without those they are imported without that __init__.
- Megatron: the megatron-core wheel has no megatron/training/arguments.py (the argparse
  definitions live in the Megatron-LM repository), so the flags go, under the argument names
  argparse gives them and the renames Megatron-LM's core_transformer_config_from_args applies,
  into Megatron-Core's own TransformerConfig (which validates the parallel sizes, uneven and
  interleaved stages, the pipeline layout, recomputation and the MoE settings),
  DistributedDataParallelConfig and its micro-batch calculator. Every flag name is also in
  options/megatron.toml (test_roundtrip.py).
- SGLang: sglang.srt.server_args.ServerArgs parses the serve flags. Its import needs triton
  and more (about 1.1 GB installed), so CI does not install it. Seen to run it in a fresh venv:
  pip install torch==2.13.0 && pip install --no-deps sglang==0.5.23 && pip install orjson
  pybase64 triton starlette msgspec pyzmq ipython requests pillow tqdm aiohttp
- vLLM 0.34.0 pins torch 2.14.0 (a CUDA build of several GB), flashinfer and CUDA packages:
  its flags are checked against options/vllm.toml only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cli import app
from meshplan_cli.testing import cli_runner
from planner.exports import FORMATS, export_result, read_result
from planner.exports.common import option_names
from planner.exports.parse import command_flags, deepspeed_keys, torchtitan_keys

engine = pytest.mark.engine

# The round-trip matrix: every export format x {dense training plan, interleaved
# uneven-stage plan, MoE plan, inference plan}. A cell either exports, with the cases below
# fed to the engine's own parser (DeepSpeed, torchtitan, Megatron-Core, SGLang) or, for vLLM,
# checked against its documented option list; or the engine cannot express that plan and the
# export is refused with the reason (exit 4). For the serving engines the MoE cell is an MoE
# inference plan (an MoE training plan is refused like every training plan).
CASES = ("dense", "interleaved", "moe", "inference")
Case = tuple[str, int, "str | None"]  # (fixture, rank, plan text replacing top[0] or None)
EXPORTED: dict[tuple[str, str], list[Case]] = {
    ("megatron", "dense"): [("dense", 0, None),
                            ("dense", 0, "tp=2,pp=2,dp=4,mbs=2,sp=on,zero=1,recompute=selective"),
                            ("dense", 0, "tp=1,pp=2,dp=8,mbs=2,sp=on,zero=1")],
    ("megatron", "interleaved"): [("interleaved-firstlast", 0, None), ("interleaved-layout", 0, None)],
    ("megatron", "moe"): [("moe", 0, None), ("moe", 1, None),
                          ("moe", 0, "tp=2,pp=2,dp=8,ep=8,etp=1,vpp=2,mbs=1,sp=on,zero=1,recompute=full")],
    ("torchtitan", "dense"): [("dense", 0, None)],
    ("torchtitan", "interleaved"): [("interleaved-layout", 0, None)],
    ("torchtitan", "moe"): [("moe", 0, "tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=3,recompute=full"),
                            ("moe", 0, "tp=2,pp=1,dp=16,ep=8,etp=2,mbs=1,sp=on,zero=0")],
    ("deepspeed", "dense"): [("dense", 0, None), ("dense", 0, "tp=2,pp=1,dp=8,mbs=2,zero=1"),
                             ("dense", 0, "tp=1,pp=1,dp=16,mbs=1,zero=0,dp_overlap=off")],
    ("vllm", "moe"): [("moe-inference", 0, None), ("moe-inference", 3, None),
                      ("moe-inference", 0, "tp=2,pp=1,dp=4,ep=8"),     # experts over replicas
                      ("moe-inference", 0, "tp=2,pp=1,dp=4,ep=8,ep_overlap=on")],
    ("vllm", "inference"): [("inference", r, None) for r in range(5)],
    ("sglang", "moe"): [*[("moe-inference", r, None) for r in range(5)],
                        ("moe-inference", 0, "tp=2,pp=1,dp=4,ep=8"),
                        ("moe-inference", 0, "tp=1,pp=1,dp=8,ep=8,ep_overlap=on"),
                        ("moe-inference", 0, "tp=1,pp=1,dp=8,ep=4")],
    ("sglang", "inference"): [("inference", r, None) for r in range(5)],
}
# cell -> (fixture, plan text or None, a phrase the refusal must contain)
REFUSED: dict[tuple[str, str], tuple[str, "str | None", str]] = {
    ("megatron", "inference"): ("inference", None, "it is an inference plan"),
    ("torchtitan", "inference"): ("inference", None, "it is an inference plan"),
    ("deepspeed", "interleaved"): ("interleaved-layout", None, "pp=4 (pipeline stages are PipelineModule"),
    ("deepspeed", "moe"): ("moe", None, "ep=8 (expert groups are MoE(ep_size=...) in code)"),
    ("deepspeed", "inference"): ("inference", None, "it is an inference plan"),
    ("vllm", "dense"): ("dense", None, "it is a training plan"),
    ("vllm", "interleaved"): ("interleaved-layout", None, "it is a training plan"),
    ("sglang", "dense"): ("dense", None, "it is a training plan"),
    ("sglang", "interleaved"): ("interleaved-layout", None, "it is a training plan"),
}
RUNNER = cli_runner()


def _cases(fmt: str) -> list[Case]:
    return [c for (f, _), cases in EXPORTED.items() if f == fmt for c in cases]


def _data(saved, variant, fixture: str, plan_text: str | None) -> dict[str, Any]:
    return saved(fixture) if plan_text is None else variant(fixture, plan_text)


def test_matrix_is_complete() -> None:
    cells = {(f, c) for f in FORMATS for c in CASES}
    assert set(EXPORTED) | set(REFUSED) == cells
    assert not set(EXPORTED) & set(REFUSED)


def _is_case(case: str, inp) -> bool:
    p = inp.plan
    if case == "dense":
        return inp.training and inp.model.moe is None
    if case == "interleaved":
        return inp.training and p.vpp > 1 and len(set(inp.virtual_stage_layers)) > 1
    if case == "moe":
        return inp.model.moe is not None and (p.ep > 1 or not inp.training)
    return not inp.training


@pytest.mark.parametrize(("fmt", "case", "fixture", "rank", "plan_text"),
                         [(f, c, *x) for (f, c), xs in EXPORTED.items() for x in xs])
def test_exported_cell_uses_documented_names(saved, variant, fmt: str, case: str, fixture: str,
                                             rank: int, plan_text: str | None) -> None:
    data = _data(saved, variant, fixture, plan_text)
    assert _is_case(case, read_result(data, rank=rank)), (fixture, rank, plan_text)
    text = export_result(data, fmt, rank=rank)
    used = (torchtitan_keys(text) if fmt == "torchtitan" else deepspeed_keys(text)
            if fmt == "deepspeed" else command_flags(text)[1])
    docs = option_names(fmt)
    assert used and not sorted(set(used) - docs.names)
    for key, allowed in docs.choices.items():
        if key in used:
            assert str(used[key]) in allowed, f"{key}={used[key]} is not one of {allowed}"


@pytest.mark.parametrize(("fmt", "case"), sorted(REFUSED))
def test_refused_cell_exits_4_with_reason(tmp_path: Path, saved, variant, fmt: str, case: str) -> None:
    fixture, plan_text, reason = REFUSED[(fmt, case)]
    data = _data(saved, variant, fixture, plan_text)
    assert _is_case(case, read_result(data, rank=0))
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    res = RUNNER.invoke(app, ["export", str(path), "--to", fmt])
    assert res.exit_code == 4, res.stderr
    assert res.stdout == "" and "cannot express this plan" in res.stderr and reason in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1



class _Mpu:
    """The one method DeepSpeedConfig asks a model-parallel unit for."""

    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


@engine
@pytest.mark.parametrize(("fixture", "rank", "plan_text"), _cases("deepspeed"))
def test_deepspeed_config_accepts_export(monkeypatch, saved, variant, fixture: str, rank: int,
                                         plan_text: str | None) -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    data = _data(saved, variant, fixture, plan_text)
    plan = read_result(data, rank=rank).plan
    config = json.loads(export_result(data, "deepspeed", rank=rank))
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


@engine
def test_deepspeed_config_rejects_an_inconsistent_batch(monkeypatch, saved) -> None:
    """The check the test above relies on does fail: one accumulation step too many breaks
    train_batch_size = micro-batch x accumulation x data-parallel size."""
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    data = saved("dense")
    plan = read_result(data, rank=0).plan
    config = json.loads(export_result(data, "deepspeed"))
    config["gradient_accumulation_steps"] += 1
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda: 0)
    with pytest.raises(AssertionError, match="train_batch_size"):
        ds_config.DeepSpeedConfig(config, mpu=_Mpu(plan.dp))


@engine
@pytest.mark.parametrize(("fixture", "rank", "plan_text"), _cases("sglang"))
def test_sglang_server_args_accept_export(saved, variant, fixture: str, rank: int,
                                          plan_text: str | None) -> None:
    server_args = pytest.importorskip("sglang.srt.server_args")
    data = _data(saved, variant, fixture, plan_text)
    plan = read_result(data, rank=rank).plan
    words, flags = command_flags(export_result(data, "sglang", rank=rank, model_path="org/model"))
    argv = [w for flag, value in flags.items() for w in ((flag,) if value is None else (flag, value))]
    parser = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(parser)
    args = server_args.ServerArgs.from_cli_args(parser.parse_args(argv))
    wl = data["inputs"]["workload"]
    if plan.ep > plan.tp:
        # experts over g replicas: dp/g engines of ep GPUs, attention data-parallel over g
        # groups of tp inside each; the request cap is the engine's
        g = plan.ep // plan.tp
        assert (args.tp_size, args.attn_dp_size, args.dp_size) == (plan.ep, g, plan.dp // g)
        assert (args.pp_size, args.ep_size) == (plan.pp, plan.ep)
        assert (args.moe_a2a_backend, args.deepep_mode) == ("deepep", "auto")
        assert args.enable_two_batch_overlap == plan.ep_overlap
        assert args.max_running_requests * (plan.dp // g) >= wl["batch_size"]
    else:
        assert args.attn_dp_size == 1 and not args.enable_two_batch_overlap
        assert (args.tp_size, args.pp_size, args.dp_size, args.ep_size) == (plan.tp, plan.pp, plan.dp, plan.ep)
        assert args.max_running_requests * plan.dp >= wl["batch_size"]
    assert args.model_path == "org/model" and args.dtype == "bfloat16"
    assert args.context_length == wl["prompt_len"] + wl["output_len"]


@engine
@pytest.mark.parametrize("rank", range(5))
def test_sglang_and_its_router_accept_a_disaggregated_export(saved, rank: int) -> None:
    """Both pools' servers parse with their --disaggregation-mode, and the router (sglang-router,
    `pip install --no-deps sglang-router==0.3.2 setproctitle uvicorn fastapi orjson` beside
    SGLang) reads one prefill URL with its bootstrap port per prefill server and one decode URL
    per decode server."""
    server_args = pytest.importorskip("sglang.srt.server_args")
    launch_router = pytest.importorskip("sglang_router.launch_router")
    data = saved("disaggregated")
    dep = data["top"][rank]
    head, *servers, router = [b for b in export_result(data, "sglang", rank=rank,
                                                       model_path="org/model").split("\n\n")
                              if b.strip()]
    for block, role in zip(servers, ("prefill", "decode")):
        _, flags = command_flags(block)
        argv = [w for f, v in flags.items() for w in ((f,) if v is None else (f, v))]
        parser = argparse.ArgumentParser()
        server_args.ServerArgs.add_cli_args(parser)
        args = server_args.ServerArgs.from_cli_args(parser.parse_args(argv))
        assert args.disaggregation_mode == role
        assert args.max_running_requests == dep[role]["batch_per_instance"]
    words = [w for line in router.splitlines() if not line.lstrip().startswith("#")
             for w in line.rstrip("\\").split()]
    parsed = launch_router.parse_router_args(words[words.index("--pd-disaggregation"):])
    assert parsed.pd_disaggregation
    assert len(parsed.prefill_urls) == dep["prefill"]["instances"]
    assert all(port == 8998 for _, port in parsed.prefill_urls)
    assert len(parsed.decode_urls) == dep["decode"]["instances"]


@pytest.fixture(scope="module")
def titan_manager() -> Any:
    """torchtitan's config.manager module (skips unless torchtitan and tyro are installed)."""
    try:
        return importlib.import_module("torchtitan.config.manager")
    except ModuleNotFoundError as e:
        if e.name in ("torchtitan", "torch", "tyro"):
            pytest.skip(f"torchtitan's config parser is not installed ({e}): pip install "
                        "'.[engines]' and pip install --no-deps torchtitan==0.2.2")
    # torchtitan/__init__.py imports the tokenizer and model kernels (tokenizers, triton), which
    # the config modules do not use: import the config package under a bare torchtitan package
    spec = importlib.util.find_spec("torchtitan")
    for name in [n for n in sys.modules if n == "torchtitan" or n.startswith("torchtitan.")]:
        del sys.modules[name]  # the half-imported package of the failed attempt
    package = types.ModuleType("torchtitan")
    package.__path__ = list(spec.submodule_search_locations)  # type: ignore[union-attr]
    sys.modules["torchtitan"] = package
    return importlib.import_module("torchtitan.config.manager")


def _toml_manager(manager: Any) -> Any:
    if not hasattr(manager.ConfigManager, "_maybe_load_toml"):
        pytest.skip("this torchtitan reads no TOML job config (0.3.0 and later); install 0.2.2")
    return manager.ConfigManager


@engine
@pytest.mark.parametrize(("fixture", "rank", "plan_text"), _cases("torchtitan"))
def test_torchtitan_config_manager_accepts_export(tmp_path: Path, saved, variant, titan_manager,
                                                  fixture: str, rank: int,
                                                  plan_text: str | None) -> None:
    config_manager = _toml_manager(titan_manager)
    data = _data(saved, variant, fixture, plan_text)
    inp = read_result(data, rank=rank)
    p, wl = inp.plan, data["inputs"]["workload"]
    path = tmp_path / "job.toml"
    path.write_text(export_result(data, "torchtitan", rank=rank))
    config = config_manager().parse_args(["--job.config_file", str(path)])
    par, tr = config.parallelism, config.training
    assert (par.tensor_parallel_degree, par.pipeline_parallel_degree, par.context_parallel_degree,
            par.expert_parallel_degree) == (p.tp, p.pp, p.cp, p.ep)
    assert par.data_parallel_replicate_degree * par.data_parallel_shard_degree == p.dp
    assert (par.data_parallel_shard_degree > 1) == (p.zero == 3 and p.dp > 1)
    assert par.expert_tensor_parallel_degree == (p.expert_tp if p.ep > 1 else 1)
    assert (tr.global_batch_size, tr.seq_len) == (wl["global_batch_size"], wl["seq_len"])
    assert tr.mixed_precision_param == "bfloat16"
    assert config.activation_checkpoint.mode == p.recompute.value
    if p.pp > 1:
        assert par.pipeline_parallel_schedule == ("Interleaved1F1B" if p.vpp > 1 else "1F1B")
        assert par.pipeline_parallel_microbatch_size == p.mbs
        assert tr.local_batch_size * p.dp == wl["global_batch_size"]
        parts = par.module_fqns_per_model_part
        assert len(parts) == p.pp * p.vpp
        assert tuple(sum(m.startswith("layers.") for m in part) for part in parts) == \
            inp.virtual_stage_layers
        assert parts[0][0] == "tok_embeddings" and parts[-1][-2:] == ["norm", "output"]
    else:
        assert tr.local_batch_size == p.mbs and par.module_fqns_per_model_part is None


@engine
def test_torchtitan_config_manager_rejects_unknown_keys(tmp_path: Path, saved, titan_manager) -> None:
    """The parser the test above relies on does reject a key torchtitan does not define."""
    config_manager = _toml_manager(titan_manager)
    text = export_result(saved("interleaved-layout"), "torchtitan")
    path = tmp_path / "job.toml"
    path.write_text(text.replace("module_fqns_per_model_part", "pipeline_parallel_split_points"))
    with pytest.raises(ValueError, match="pipeline_parallel_split_points"):
        config_manager().parse_args(["--job.config_file", str(path)])


# Megatron-LM argument name -> Megatron-Core TransformerConfig field, where they differ
# (megatron/training/arguments.py, core_transformer_config_from_args and validate_args).
_MEGATRON_RENAMES = {
    "num_experts": "num_moe_experts",
    "decoder_first_pipeline_num_layers": "num_layers_in_first_pipeline_stage",
    "decoder_last_pipeline_num_layers": "num_layers_in_last_pipeline_stage",
    "num_virtual_stages_per_pipeline_rank": "virtual_pipeline_model_parallel_size",
    "swiglu": "gated_linear_unit",
    "fp8_format": "fp8",  # --fp8-format's dest
}
# Megatron-LM arguments that are not TransformerConfig fields, with where the test checks them.
_MEGATRON_ELSEWHERE = {
    "micro_batch_size", "global_batch_size",  # ConstantNumMicroBatchesCalculator
    "use_distributed_optimizer", "use_megatron_fsdp", "data_parallel_sharding_strategy",  # DDP config
    "overlap_grad_reduce", "overlap_param_gather",  # DDP config
    "use_tp_pp_dp_mapping",  # rank order: the test compares it with the plan
    "seq_length", "max_position_embeddings", "position_embedding_type",  # GPTModel arguments
    "untie_embeddings_and_output_weights", "ckpt_format", "group_query_attention",
    "disable_bias_linear",  # dest add_bias_linear (store_false): set below
}


def _megatron_args(flags: dict[str, str | None]) -> dict[str, Any]:
    """argparse's view of the flags: dest names, ints and floats converted, store_true = True."""
    def value(v: str | None) -> Any:
        if v is None:
            return True
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v
    return {flag[2:].replace("-", "_"): value(v) for flag, v in flags.items()}


def _megatron_dtypes(args: dict[str, Any]) -> dict[str, Any]:
    """params_dtype and pipeline_dtype as Megatron-LM derives them from --bf16 / --fp16."""
    import torch
    dtype = torch.bfloat16 if args.get("bf16") else torch.float16 if args.get("fp16") else torch.float32
    return {"params_dtype": dtype, "pipeline_dtype": dtype}


# TransformerConfig warns about its own defaults (cuda_graph_scope) and, for selective
# recomputation, that Transformer Engine's attention may be fused: notes, not rejections.
_MCORE_NOTES = pytest.mark.filterwarnings("ignore::UserWarning:megatron.core.transformer.transformer_config")


@engine
@_MCORE_NOTES
@pytest.mark.parametrize(("fixture", "rank", "plan_text"), _cases("megatron"))
def test_megatron_core_configs_accept_export(saved, variant, fixture: str, rank: int,
                                             plan_text: str | None) -> None:
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.num_microbatches_calculator import ConstantNumMicroBatchesCalculator

    data = _data(saved, variant, fixture, plan_text)
    inp = read_result(data, rank=rank)
    p = inp.plan
    _, flags = command_flags(export_result(data, "megatron", rank=rank))
    args = _megatron_args(flags)
    fields = {f for f in tc.TransformerConfig.__dataclass_fields__}
    kwargs = {_MEGATRON_RENAMES.get(k, k): v for k, v in args.items() if k not in _MEGATRON_ELSEWHERE}
    unknown = sorted(set(kwargs) - fields)
    assert not unknown, f"flags that are neither TransformerConfig fields nor handled: {unknown}"
    if "moe_layer_freq" in kwargs:  # Megatron-LM's moe_freq_type evaluates the list expression
        kwargs["moe_layer_freq"] = eval(kwargs["moe_layer_freq"])  # noqa: S307 - our own export
    kwargs["add_bias_linear"] = "disable_bias_linear" not in args
    kwargs.update(_megatron_dtypes(args))
    config = tc.TransformerConfig(**kwargs)  # __post_init__ validates
    assert (config.tensor_model_parallel_size, config.pipeline_model_parallel_size,
            config.context_parallel_size, config.expert_model_parallel_size) == (p.tp, p.pp, p.cp, p.ep)
    assert config.sequence_parallel == (p.sp and p.tp > 1)  # sp over one rank is no split
    assert (config.virtual_pipeline_model_parallel_size or 1) == p.vpp
    assert (config.recompute_granularity or "none") == p.recompute.value
    if inp.model.moe is not None:
        assert config.num_moe_experts == inp.model.moe.num_experts
        assert config.expert_tensor_parallel_size == p.expert_tp
    # the blocks Megatron builds on each (pipeline rank, virtual stage)
    layout = config.pipeline_model_parallel_layout
    if layout is not None:
        from megatron.core.transformer.enums import LayerType
        # layout.layout[pp_rank][vpp_rank]: the layer types Megatron builds there
        built = tuple(layout.layout[s % p.pp][s // p.pp].count(LayerType.decoder)
                      for s in range(p.pp * p.vpp))
    else:
        counts = [config.num_layers_in_first_pipeline_stage, *([None] * (p.pp - 2)),
                  config.num_layers_in_last_pipeline_stage] if p.pp > 1 else [None]
        fixed = [c for c in counts if c is not None]
        middle = (config.num_layers - sum(fixed)) // max(1, len(counts) - len(fixed))
        built = tuple((counts[s % p.pp] or middle) // p.vpp for s in range(p.pp * p.vpp))
    assert built == inp.virtual_stage_layers
    # data parallelism and the batch
    dp = p.devices // (p.tp * p.pp * p.cp)
    assert dp == p.dp
    calc = ConstantNumMicroBatchesCalculator(args["global_batch_size"], args["micro_batch_size"], dp,
                                             decrease_batch_size_if_needed=False, rank=0)
    assert calc.num_micro_batches * p.mbs * p.dp == data["inputs"]["workload"]["global_batch_size"]
    ddp = DistributedDataParallelConfig(
        use_distributed_optimizer=bool(args.get("use_distributed_optimizer")),
        use_megatron_fsdp=bool(args.get("use_megatron_fsdp")),
        data_parallel_sharding_strategy=args.get("data_parallel_sharding_strategy", "no_shard"),
        overlap_grad_reduce=bool(args.get("overlap_grad_reduce")),
        overlap_param_gather=bool(args.get("overlap_param_gather")))
    zero = {"no_shard": 1 if ddp.use_distributed_optimizer else 0, "optim_grads": 2,
            "optim_grads_params": 3}[ddp.data_parallel_sharding_strategy]
    assert zero == p.zero
    # the estimate overlaps data-parallel communication (dp_overlap, on here): so must the run
    replicas = p.dp * p.cp
    if inp.model.moe is not None:   # expert data parallelism reduces the expert gradients
        replicas = max(replicas, p.dp * p.cp * p.tp // (p.ep * p.expert_tp))
    assert ddp.overlap_grad_reduce == (p.dp_overlap and replicas > 1)
    assert ddp.overlap_param_gather == (ddp.overlap_grad_reduce and p.zero >= 1)
    assert ("use_tp_pp_dp_mapping" in args) == (p.order == ("tp", "cp", "pp", "dp"))


@engine
@_MCORE_NOTES
def test_megatron_core_rejects_a_wrong_split(saved) -> None:
    """The validation the test above relies on does fail: with vpp=2, a first and last stage of
    7 blocks each cannot be split into 2 equal chunks."""
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    _, flags = command_flags(export_result(saved("interleaved-firstlast"), "megatron"))
    args = _megatron_args(flags)
    kwargs = {_MEGATRON_RENAMES.get(k, k): v for k, v in args.items() if k not in _MEGATRON_ELSEWHERE}
    kwargs["add_bias_linear"] = False
    kwargs.update(_megatron_dtypes(args))
    tc.TransformerConfig(**kwargs)
    kwargs["num_layers_in_first_pipeline_stage"] = 7
    kwargs["num_layers_in_last_pipeline_stage"] = 7
    with pytest.raises(ValueError):
        tc.TransformerConfig(**kwargs)
