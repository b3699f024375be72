"""What every export shares: reading a saved search result, and the engines' option names.

Decides: which plan of a result is exported (`rank`), how a result dict becomes typed inputs
(`ExportInputs`), and how refusals read. Does not decide any engine's flags (one module per
engine does). Option names live in `options/<engine>.toml`, each naming its source.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from planner.errors import SpecError, UnsupportedPlanError
from planner.hardware import ClusterSpec
from planner.model import DType, ModelSpec, default_grad_dtype
from planner.plan import Dispatcher, LossKernel, Plan, Schedule, parse_plan_fields
from planner.workload import InferenceWorkload, TrainingWorkload

SAVE_HINT = "save the output of `meshplan search ... --json` to a file and export that"
DISAGGREGATED_HINT = ("a disaggregated deployment has two plans (prefill and decode pools): "
                      "export it with export_result (meshplan export FILE --to sglang), which "
                      "prints both pools' servers and the router")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportInputs:
    """One plan of a saved search result and everything an export needs next to it."""

    plan: Plan
    model: ModelSpec
    cluster: ClusterSpec
    workload: TrainingWorkload | InferenceWorkload
    devices: int
    rank: int

    @property
    def training(self) -> bool:
        return isinstance(self.workload, TrainingWorkload)

    @property
    def stage_layers(self) -> tuple[int, ...]:
        """Blocks on each pipeline stage (the explicit split, else the even default)."""
        return self.plan.layers_per_stage(self.model.num_layers)

    @property
    def virtual_stage_layers(self) -> tuple[int, ...]:
        """Blocks on each virtual stage (pp * vpp of them) in pipeline order, virtual stage
        v*pp + p being chunk v of stage p: the plan's chunk_layers, else each stage's blocks
        split evenly over its vpp chunks."""
        p = self.plan
        if p.chunk_layers is not None:
            return p.chunk_layers
        counts = self.stage_layers
        return tuple(counts[s % p.pp] // p.vpp for s in range(p.pp * p.vpp))

    @property
    def nodes(self) -> int:
        """Nodes the plan's devices span (ceil(devices / devices per node))."""
        per = self.cluster.devices_per_node
        return -(-self.devices // per)

    @property
    def devices_per_node_used(self) -> int:
        return min(self.devices, self.cluster.devices_per_node)

    def header(self, engine: str) -> list[str]:
        """Comment lines naming what was exported (no leading '#')."""
        wl = self.workload
        what = (f"global batch {wl.global_batch_size} x {wl.seq_len} tokens, {wl.dtype.value}"
                if isinstance(wl, TrainingWorkload) else
                f"batch {wl.batch_size}, prompt {wl.prompt_len} + output {wl.output_len} tokens, "
                f"{wl.dtype.value}")
        lines = [f"meshplan export --to {engine}: {self.model.name} on {self.devices}x "
                 f"{self.cluster.device.name} ({self.cluster.name}), {what}",
                 f"plan (rank {self.rank}): {self.plan_string}"]
        if self.training and self.model.mtp_layers and engine != "megatron":
            lines.append(f"the estimate trains {self.model.mtp_layers} multi-token-prediction "
                         f"module(s) on the last stage (ModelSpec.mtp_layers); this config has no "
                         "MTP setting: build them into your model, or search with mtp_layers = 0")
        return lines

    @property
    def plan_string(self) -> str:
        """The plan as a --plan string (inference plans: only the degrees they search)."""
        p = self.plan
        if self.training:
            return p.to_string()
        return f"tp={p.tp},pp={p.pp},dp={p.dp},ep={p.ep}" + (",ep_overlap=on" if p.ep_overlap
                                                             else "")


def flex_crosses_nodes(inp: ExportInputs) -> bool:
    """Whether the plan's tokens take the flex dispatcher's path across nodes: dispatcher=flex
    with an expert-parallel group that spans nodes (cost_models/comm.py `ep_links`, as the
    estimate decides it), where a token crosses the network once per destination node
    (`moe_dispatch_s`), as DeepEP does. Everywhere else (alltoall, or a group inside one node)
    one row per (token, expert) pair moves, which a plain all-to-all does."""
    from cost_models.comm import ep_links

    p = inp.plan
    if p.ep == 1 or p.dispatcher != Dispatcher.FLEX:
        return False
    return ep_links(inp.cluster.job_view(inp.devices), p).spans_nodes


def read_result(result: dict[str, Any], *, rank: int) -> ExportInputs:
    """Typed inputs of `result['top'][rank]`.

    Raises:
        SpecError: the dict is not a saved search result, or `rank` is out of range.
    """
    if isinstance(result, dict) and result.get("disaggregated"):
        raise SpecError(f"this is a disaggregated search result: {DISAGGREGATED_HINT}")
    model, cluster, workload, devices, entry = read_entry(result, rank=rank)
    plan = _plan_of(entry.get("plan") if isinstance(entry, dict) else None)
    return ExportInputs(plan=plan, model=model, cluster=cluster, workload=workload,
                        devices=devices, rank=rank)


def read_entry(result: dict[str, Any], *, rank: int) -> tuple[
        ModelSpec, ClusterSpec, TrainingWorkload | InferenceWorkload, int, Any]:
    """(model, cluster, workload, device count, `result['top'][rank]`) of a saved search result
    of any kind, its `inputs` block validated.

    Raises:
        SpecError: the dict is not a saved search result, or `rank` is out of range.
    """
    if not isinstance(result, dict) or "top" not in result or "best" not in result:
        raise SpecError(f"not a meshplan search result (no 'best'/'top' keys); {SAVE_HINT}")
    inputs = result.get("inputs") or {}
    missing = [k for k in ("model", "cluster", "workload", "devices") if k not in inputs]
    if missing:
        raise SpecError(f"the search result has no inputs.{', inputs.'.join(missing)} (an older "
                        f"meshplan, or `meshplan evaluate` output); {SAVE_HINT}")
    top = result["top"]
    if not isinstance(top, list) or not top:
        raise SpecError(f"the search result lists no plans under 'top'; {SAVE_HINT}")
    if not 0 <= rank < len(top):
        raise SpecError(f"--rank {rank} is out of range: the result holds plans 0 to {len(top) - 1}")
    try:
        model = ModelSpec.model_validate(inputs["model"])
        cluster = ClusterSpec.model_validate(inputs["cluster"])
        wl_data = inputs["workload"]
        workload = (InferenceWorkload.model_validate(wl_data)
                    if wl_data.get("mode") == "inference"
                    else TrainingWorkload.model_validate(wl_data))
        devices = int(inputs["devices"])
    except (ValueError, TypeError, AttributeError) as e:
        raise SpecError(f"the search result's inputs do not validate ({_first_line(e)}); "
                        f"{SAVE_HINT}") from None
    return model, cluster, workload, devices, top[rank]


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _plan_of(data: Any) -> Plan:
    """A training plan dict (with its --plan string and layer split) or an inference plan
    dict ({tp, pp, dp, ep, ep_overlap}; results saved before ep_overlap lack it) as a `Plan`."""
    if not isinstance(data, dict):
        raise SpecError(f"a plan in the search result is not an object; {SAVE_HINT}")
    try:
        if "plan" in data:
            fields = parse_plan_fields(str(data["plan"]))
            layers = data.get("chunk_layers") or data.get("layers")
            if layers is not None and "stage_layers" not in fields:
                fields.update(parse_plan_fields(f"layers={layers}"))
            return Plan(**fields)  # type: ignore[arg-type]
        return Plan(**{k: int(data[k]) for k in ("tp", "pp", "dp", "ep") if k in data},
                    ep_overlap=bool(data.get("ep_overlap", False)))
    except (ValueError, TypeError) as e:
        raise SpecError(f"a plan in the search result does not parse ({_first_line(e)}); "
                        f"{SAVE_HINT}") from None


def refuse(engine: str, reason: str) -> UnsupportedPlanError:
    """The error for a plan the engine cannot express (exit code 4)."""
    return UnsupportedPlanError(f"{engine} cannot express this plan: {reason}")


def require_training(inp: ExportInputs, engine: str) -> None:
    if not inp.training:
        raise refuse(engine, "it is an inference plan and this export writes a training "
                             "launch; export inference plans --to vllm or --to sglang")
    if inp.plan.schedule == Schedule.DUALPIPE:
        raise refuse(engine, "schedule=dualpipe (DeepSeek's bidirectional pipeline, "
                             "github.com/deepseek-ai/DualPipe) has no launch option in it; "
                             "export a 1F1B or interleaved plan, or run DualPipe from its "
                             "own repository")
    if inp.plan.loss == LossKernel.CHUNKED:
        raise refuse(engine, "loss=chunked (a fused linear cross entropy over chunks of tokens, "
                             "Liger-Kernel's) has no setting in its launch options; export the "
                             "plan with loss=fused or unfused, or apply the kernel in the "
                             "training script")
    wl = inp.workload
    grads = getattr(wl, "grad_dtype", None)
    if grads is not None and grads != default_grad_dtype(wl.dtype):
        raise refuse(engine, f"gradients reduced in {grads.value} (the workload's grad_dtype) "
                             f"differ from the engines' default for {wl.dtype.value} training "
                             f"({default_grad_dtype(wl.dtype).value}), and meshplan checks no "
                             "launch option that changes it (Megatron-LM --grad-reduce-in-bf16 / "
                             "Megatron-Core DDP grad_reduce_in_fp32, torchtitan "
                             "mixed_precision_reduce); set it yourself, or export the search "
                             "run without --grad-dtype")
    if inp.plan.offload:
        raise refuse(engine, f"offload={inp.plan.offload} (activation offloading to host "
                             "memory) is not among the launch options meshplan checks; set "
                             "Megatron-Core's TransformerConfig cpu_offloading=True and "
                             f"cpu_offloading_num_layers={inp.plan.offload} (Megatron Bridge: "
                             "model.cpu_offloading / model.cpu_offloading_num_layers), or "
                             "export the plan with offload=0")


def require_inference(inp: ExportInputs, engine: str) -> None:
    if inp.training:
        raise refuse(engine, "it is a training plan and this export writes a serving launch; "
                             "export training plans --to megatron, torchtitan or deepspeed")


def torch_dtype_name(dtype: DType, engine: str) -> str:
    """The serving engines' --dtype value for a meshplan dtype."""
    names = {DType.BF16: "bfloat16", DType.FP16: "float16", DType.FP32: "float32"}
    if dtype not in names:
        raise refuse(engine, f"dtype {dtype.value} has no --dtype value (bfloat16, float16, "
                             "float32); weight quantisation is a separate engine option")
    return names[dtype]


@dataclass(frozen=True, slots=True)
class OptionNames:
    """An engine's documented option names and where they come from."""

    engine: str
    source: str
    names: frozenset[str]
    choices: dict[str, tuple[str, ...]]


@cache
def option_names(engine: str) -> OptionNames:
    """The data file `options/<engine>.toml` (loaded once)."""
    text = resources.files("planner.exports").joinpath("options", f"{engine}.toml").read_text()
    data = tomllib.loads(text)
    source = " ".join(str(data[k]) for k in ("repository", "file", "commit", "version", "url")
                      if k in data)
    return OptionNames(engine=data["engine"], source=source, names=frozenset(data["names"]),
                       choices={k: tuple(v) for k, v in data.get("choices", {}).items()})
