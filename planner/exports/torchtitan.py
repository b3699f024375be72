"""torchtitan job config (TOML) for a training plan (`meshplan export --to torchtitan`).

Decides the [parallelism], [training] and [activation_checkpoint] keys, with names from
`options/torchtitan.toml` (torchtitan/config/job_config.py of torchtitan 0.2.2, the last PyPI
release whose jobs are TOML files; 0.3.0 configures jobs in Python). The tests feed the TOML to
that release's own ConfigManager, which rejects any key it does not define. Does not decide the
model flavor, tokenizer, dataset or optimizer: the user's base config does.

Mappings and refusals (from that job_config.py unless said otherwise):
- DP: ZeRO-0 = data_parallel_replicate_degree dp (DDP); ZeRO-3 = data_parallel_shard_degree dp
  (FSDP2) with fsdp_reshard_after_forward "always" (the "default" policy keeps parameters
  unsharded after forward when PP is on). ZeRO-1 and ZeRO-2 have no key: FSDP shards
  parameters too, so they are refused.
- Stages: module_fqns_per_model_part lists the modules of every (virtual) stage in model order:
  tok_embeddings with the first, "layers.N" for each block, norm and output with the last
  (uneven splits included; torchtitan's decoder models name their modules so); vpp > 1 = pp * vpp
  stages on pipeline_parallel_schedule "Interleaved1F1B", stage i on rank i mod pp, i.e. stage
  v*pp + p is chunk v of rank p's blocks.
- Batch: local_batch_size is per data-parallel rank per step (gradient accumulation when the
  global batch is larger); with PP, local_batch_size = global / dp and
  pipeline_parallel_microbatch_size = mbs.
- Experts: expert_parallel_degree ep and expert_tensor_parallel_degree etp, which torchtitan
  takes as 1 or tp only; other etp values are refused. expert_parallel_comm_backend "deepep"
  where the plan's flex dispatcher crosses nodes (a token through the network once per node,
  as the estimate sends it), else "standard" (all-to-all, one row per token and expert).
- TP always shards the norms' sequence dimension (SequenceParallel in torchtitan's TP plan), so
  tp > 1 without sp is refused. Selective recomputation here means the attention core
  (Korthikanti et al.); torchtitan's "selective" modes (every n-th layer, per-op policy) are not
  that, so it is refused. fp16 has no mixed_precision_param value; fp8 = the float8 converter.
"""

from __future__ import annotations

from typing import Any

from planner.exports.common import ExportInputs, flex_crosses_nodes, refuse, require_training
from planner.model import DType
from planner.plan import Recompute

ENGINE = "torchtitan"


def torchtitan_config(inp: ExportInputs) -> dict[str, dict[str, Any]]:
    """The job config as {section: {key: value}}.

    Raises:
        UnsupportedPlanError: the plan uses something torchtitan has no key for.
    """
    require_training(inp, "torchtitan")
    p = inp.plan
    if p.tp > 1 and not p.sp:
        raise refuse("torchtitan", f"tp={p.tp} without sequence parallelism: torchtitan's tensor "
                     "parallel plan always shards the norms' sequence dimension (use sp=on)")
    config: dict[str, dict[str, Any]] = {
        "job": {"description": f"meshplan {p.to_string()}"},
        "training": _training(inp),
        "parallelism": {**_data_parallel(inp), "tensor_parallel_degree": p.tp,
                        "context_parallel_degree": p.cp, **_expert(inp), **_pipeline(inp)},
        "activation_checkpoint": {"mode": _recompute(inp)},
    }
    if inp.workload.dtype == DType.FP8:
        config["model"] = {"converters": ["float8"]}
    return config


def _training(inp: ExportInputs) -> dict[str, Any]:
    wl, p = inp.workload, inp.plan
    gb = wl.global_batch_size  # type: ignore[union-attr]
    local = gb // p.dp if p.pp > 1 else p.mbs
    param = {DType.BF16: "bfloat16", DType.FP8: "bfloat16", DType.FP32: "float32"}.get(wl.dtype)
    if wl.dtype == DType.FP4:
        raise refuse("torchtitan", "dtype fp4: meshplan's NVFP4 estimate is Transformer Engine's "
                     "recipe, which torchtitan's converters (float8, mx) do not run; use "
                     "--to megatron, or --dtype fp8")
    if param is None:
        raise refuse("torchtitan", f"dtype {wl.dtype.value}: training.mixed_precision_param "
                     "takes bfloat16 or float32")
    return {"local_batch_size": local, "global_batch_size": gb,
            "seq_len": wl.seq_len, "mixed_precision_param": param}  # type: ignore[union-attr]


def _data_parallel(inp: ExportInputs) -> dict[str, Any]:
    p = inp.plan
    if not p.dp_overlap and p.dp > 1:
        raise refuse("torchtitan", "dp_overlap=off: torchtitan's DDP and FSDP2 always overlap "
                     "the gradient reduction with the backward pass, with no setting to turn it "
                     "off; export --to megatron (which then omits --overlap-grad-reduce)")
    if p.zero == 0:
        return {"data_parallel_replicate_degree": p.dp, "data_parallel_shard_degree": 1}
    if p.zero == 3:
        return {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": p.dp,
                "fsdp_reshard_after_forward": "always"}
    raise refuse("torchtitan", f"zero={p.zero}: torchtitan data parallelism is DDP (zero=0) or "
                 "FSDP2, which also shards the parameters (zero=3); it has no optimizer-only "
                 "or optimizer+gradient sharding")


def _expert(inp: ExportInputs) -> dict[str, Any]:
    p = inp.plan
    if p.ep_overlap:
        raise refuse("torchtitan", "ep_overlap=on: torchtitan's pipeline schedules have no "
                     "combined 1F1B that hides the expert all-to-alls (export --to megatron)")
    if p.ep == 1:
        return {"expert_parallel_degree": 1}
    if p.expert_tp not in (1, p.tp):
        raise refuse("torchtitan", f"etp={p.etp} with tp={p.tp}: expert_tensor_parallel_degree "
                     "takes 1 or the tensor-parallel degree only")
    # the estimate's token path: DeepEP where the flex dispatcher crosses nodes, else
    # torchtitan's all-to-all (common.flex_crosses_nodes)
    backend = "deepep" if flex_crosses_nodes(inp) else "standard"
    return {"expert_parallel_degree": p.ep, "expert_tensor_parallel_degree": p.expert_tp,
            "expert_parallel_comm_backend": backend}


def _pipeline(inp: ExportInputs) -> dict[str, Any]:
    p = inp.plan
    out: dict[str, Any] = {"pipeline_parallel_degree": p.pp}
    if p.pp == 1:
        return out
    out["pipeline_parallel_schedule"] = "Interleaved1F1B" if p.vpp > 1 else "1F1B"
    out["pipeline_parallel_microbatch_size"] = p.mbs
    out["module_fqns_per_model_part"] = model_parts(inp.virtual_stage_layers)
    return out


def model_parts(chunks: tuple[int, ...]) -> list[list[str]]:
    """The module names of every (virtual) stage, in model order: the embedding with the first
    stage, the final norm and the output projection with the last."""
    parts, at = [], 0
    for size in chunks:
        parts.append([f"layers.{i}" for i in range(at, at + size)])
        at += size
    parts[0].insert(0, "tok_embeddings")
    parts[-1] += ["norm", "output"]
    return parts


def _recompute(inp: ExportInputs) -> str:
    r = inp.plan.recompute
    if r == Recompute.SELECTIVE:
        raise refuse("torchtitan", "recompute=selective recomputes the attention core "
                     "(Korthikanti et al. 2022); torchtitan's selective modes checkpoint every "
                     "n-th layer or follow a per-op policy, which is not the same plan")
    return "full" if r == Recompute.FULL else "none"


def export_torchtitan(inp: ExportInputs) -> str:
    config = torchtitan_config(inp)
    lines = [f"# {h}" for h in inp.header(ENGINE)]
    lines.append("# merge into your job config (model flavor, tokenizer, dataset, optimizer stay "
                 "yours); torchrun --nnodes %d --nproc-per-node %d"
                 % (inp.nodes, inp.devices_per_node_used))
    for section, values in config.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_entry(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_entry(v: Any) -> str:
    """A value; a list of lists (the model parts) one inner list per line."""
    if isinstance(v, list) and v and all(isinstance(x, list) for x in v):
        return "[\n" + "".join(f"    {_toml_value(x)},\n" for x in v) + "]"
    return _toml_value(v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
