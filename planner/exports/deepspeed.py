"""DeepSpeed config JSON for a training plan (`meshplan export --to deepspeed`).

Decides the ds_config keys (names in `options/deepspeed.toml`, checked against DeepSpeed's
own DeepSpeedConfig in the tests): batch sizes, ZeRO stage, whether ZeRO's gradient reduction
overlaps the backward pass (zero_optimization.overlap_comm, from the plan's dp_overlap; off by
default for stages 1 and 2), precision, and tensor parallelism through AutoTP training
(tensor_parallel.autotp_size). Everything else the plan fixes is not a
ds_config key, so it is refused with the reason rather than dropped:
- pp > 1: pipeline stages are set in code (deepspeed.pipe.PipelineModule(num_stages=...), or
  Megatron-DeepSpeed's --pipeline-model-parallel-size), not in the JSON;
- cp > 1 / ep > 1: DeepSpeed's sequence (Ulysses) and expert parallel groups come from the
  model code (mpu, deepspeed.moe.layer.MoE(ep_size=...));
- sp with tp > 1: AutoTP has no sequence parallelism;
- recompute: which layers to recompute is chosen in model code
  (deepspeed.checkpointing.checkpoint), the JSON only tunes how;
- zero=0 with dp > 1 and dp_overlap=on: at stage 0 the engine all-reduces the gradients after
  the backward pass (DeepSpeedEngine.backward -> allreduce_gradients ->
  buffered_allreduce_fallback), which the estimate would overlap; dp_overlap=off scores it
  as it runs, and is exported.
For those plans `--to megatron` prints launch flags that express them.
"""

from __future__ import annotations

import json
from typing import Any

from planner.exports.common import ExportInputs, refuse, require_training
from planner.model import DType
from planner.plan import Recompute

ENGINE = "deepspeed"
_HINT = "export --to megatron for a launch that sets it"


def deepspeed_config(inp: ExportInputs) -> dict[str, Any]:
    """The ds_config dict.

    Raises:
        UnsupportedPlanError: the plan sets something the JSON cannot.
    """
    require_training(inp, "DeepSpeed")
    p = inp.plan
    reasons = []
    if p.pp > 1:
        reasons.append(f"pp={p.pp} (pipeline stages are PipelineModule(num_stages=...) in code)")
    if p.cp > 1:
        reasons.append(f"cp={p.cp} (sequence-parallel groups come from the model's mpu)")
    if p.ep > 1:
        reasons.append(f"ep={p.ep} (expert groups are MoE(ep_size=...) in code)")
    if p.sp and p.tp > 1:
        reasons.append("sp=on (AutoTP tensor parallelism has no sequence parallelism)")
    if p.recompute != Recompute.NONE:
        reasons.append(f"recompute={p.recompute.value} (the model code picks what "
                       "deepspeed.checkpointing.checkpoint recomputes)")
    if p.zero == 0 and p.dp > 1 and p.dp_overlap:
        # DeepSpeedEngine.backward calls allreduce_gradients once the backward pass is done,
        # which at stage 0 is buffered_allreduce_fallback: nothing overlaps, unlike the estimate
        reasons.append("zero=0 with dp_overlap=on (DeepSpeed's stage 0 all-reduces the "
                       "gradients after the backward pass, where the estimate overlaps them: "
                       "score it with dp_overlap=off, or use zero=1 with overlap_comm)")
    if reasons:
        raise refuse("the DeepSpeed config", "; ".join(reasons) + f"; {_HINT}")
    wl = inp.workload
    gb = wl.global_batch_size  # type: ignore[union-attr]
    # DeepSpeed checks train_batch_size == micro_batch * grad_acc * data-parallel world size
    # (DeepSpeedConfig._batch_assertion); meshplan's plans keep gb divisible by mbs * dp.
    config: dict[str, Any] = {
        "train_batch_size": gb,
        "train_micro_batch_size_per_gpu": p.mbs,
        "gradient_accumulation_steps": gb // (p.mbs * p.dp),
        "zero_optimization": {"stage": p.zero},
    }
    if p.zero >= 1 and p.dp > 1:
        # ZeRO's gradient reduction overlaps the backward pass only with overlap_comm (off by
        # default for stages 1 and 2: DeepSpeedZeroConfig; stage 1 registers its reduce hooks
        # only then: "if self.partition_gradients or self.overlap_comm:
        # self.create_reduce_and_remove_grad_hooks()", runtime/zero/stage_1_and_2.py); the
        # plan's dp_overlap says which
        config["zero_optimization"]["overlap_comm"] = p.dp_overlap
    config.update(_precision(wl.dtype))
    if p.tp > 1:
        config["tensor_parallel"] = {"autotp_size": p.tp}
    return config


def _precision(dtype: DType) -> dict[str, Any]:
    if dtype == DType.BF16:
        return {"bf16": {"enabled": True}}
    if dtype == DType.FP16:
        return {"fp16": {"enabled": True}}
    if dtype == DType.FP32:
        return {}
    raise refuse("the DeepSpeed config", f"dtype {dtype.value}: the JSON's precision sections "
                 "are bf16 and fp16 (FP8 and NVFP4 are Transformer Engine code, not ds_config "
                 "keys)")


def export_deepspeed(inp: ExportInputs) -> str:
    """The JSON text (JSON has no comments: the plan string is not embedded)."""
    return json.dumps(deepspeed_config(inp), indent=2) + "\n"
