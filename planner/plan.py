"""A parallel plan: how one model is split over the devices, and the `--plan` string syntax.

A plan fixes the degrees (tp, pp, dp, cp, ep), the schedule (micro-batch, virtual stages), the
memory savers (sequence parallelism, ZeRO stage, recomputation), the rank layout order, and
optionally the number of blocks on each pipeline stage. Whether it suits a given model and
cluster is checked by `planner.validate`, not here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from planner.errors import PlanError
from planner.model import Spec


class Attention(StrEnum):
    """Attention kernel: FlashAttention-2/3 class, FlashAttention-1/Triton class, or unfused
    (separate Q.K^T, softmax, dropout and scores.V kernels, as Megatron-LM before 2022)."""

    FLASH = "flash"
    FLASH1 = "flash1"
    UNFUSED = "unfused"

    @property
    def fused(self) -> bool:
        return self != Attention.UNFUSED


class LossKernel(StrEnum):
    """Cross-entropy kernel: `unfused` keeps the 16-bit logits and an fp32 softmax for the
    backward (Megatron's vocab-parallel cross entropy, PyTorch's under autocast); `fused`
    computes the loss and its gradient in place over the 16-bit logits (flash-attn's
    CrossEntropyLoss with inplace_backward, llm-foundry's default `fused_crossentropy`);
    `chunked` fuses the output projection with the loss and runs both over chunks of tokens, so
    only one chunk's logits exist at a time (Liger-Kernel's FusedLinearCrossEntropy, Hsu et
    al. 2024, arXiv:2410.10989; `compute.loss_chunk_tokens`)."""

    UNFUSED = "unfused"
    FUSED = "fused"
    CHUNKED = "chunked"


class Dispatcher(StrEnum):
    """How an MoE layer moves tokens to experts on other nodes (inside a node both send one
    row per (token, expert) pair over NVLink).

    flex: each token crosses the network once per destination node and is forwarded to that
    node's experts over NVLink: DeepSeek-V3's dispatch (arXiv:2412.19437, Sec. 3.2.2), DeepEP's
    internode kernels and HybridEP, Megatron-Core `--moe-token-dispatcher-type flex`.
    alltoall: one NCCL all-to-all of every (token, expert) row, so a token whose experts sit
    on k GPUs of another node crosses the network k times: Megatron-Core's `alltoall`
    dispatcher (token_dispatcher.py, MoEAlltoAllTokenDispatcher)."""

    FLEX = "flex"
    ALLTOALL = "alltoall"


class Schedule(StrEnum):
    """Pipeline schedule. 1f1b: one-forward-one-backward (PipeDream-Flush, Narayanan et al.
    2021 Sec. 2.2), interleaved when vpp > 1. dualpipe: DeepSeek's bidirectional schedule
    (DeepSeek-V3 report, arXiv:2412.19437 Sec. 3.2.1; github.com/deepseek-ai/DualPipe): micro-
    batches enter from both ends of the pipeline, each rank holds two stages (stage r and
    stage pp-1-r), and a forward and a backward chunk of two micro-batches run together so
    that one's communication hides behind the other's computation."""

    ONE_F_ONE_B = "1f1b"
    DUALPIPE = "dualpipe"


class Recompute(StrEnum):
    """Activation recomputation (Korthikanti et al. 2022, Sec. 4 and 5)."""

    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


RECOMPUTE_MODULES = ("core_attn", "layernorm", "mla_up_proj", "mlp", "moe_act")
"""Modules selective recomputation can repeat (Megatron-Core --recompute-modules, a subset):
the attention core (Korthikanti et al. 2022's selective recomputation), the two norms, MLA's
query and key/value up-projections, the dense MLP, the routed and shared experts' activation."""

DEFAULT_ORDER = ("tp", "cp", "dp", "pp")
"""Rank layout, innermost first: TP on adjacent ranks (inside a node), then CP, DP, PP
(Megatron-Core's default 'tp-cp-ep-dp-pp', with EP folded into DP)."""


class Plan(Spec):
    """One way to run a model on a set of devices."""

    tp: PositiveInt = Field(1, description="tensor-parallel degree")
    pp: PositiveInt = Field(1, description="pipeline-parallel degree (stages)")
    dp: PositiveInt = Field(1, description="data-parallel degree")
    cp: PositiveInt = Field(1, description="context-parallel degree (sequence split in attention)")
    ep: PositiveInt = Field(1, description="expert-parallel degree, folded into dp*cp (MoE only)")
    etp: PositiveInt | None = Field(None, description="expert tensor-parallel degree; None = 1")
    sp: bool = Field(False, description="sequence parallelism over the tp group (Korthikanti)")
    ep_overlap: bool = Field(
        False, description="hide each micro-batch's MoE dispatch/combine behind an adjacent "
        "micro-batch's compute (Megatron-Core's combined 1F1B, --overlap-moe-expert-parallel-comm)")
    dispatcher: Dispatcher = Field(
        Dispatcher.FLEX, description="MoE token dispatcher across nodes (see Dispatcher)")
    dp_overlap: bool = Field(
        True, description="overlap data-parallel gradient reduction with the backward pass and "
        "ZeRO's parameter gathers with the forward pass (Megatron-Core --overlap-grad-reduce and "
        "--overlap-param-gather, PyTorch DDP's buckets, FSDP's prefetch). off: every "
        "data-parallel collective runs on its own after (or before) the compute, as Megatron-LM's "
        "local DDP did before Megatron-Core (train_step all-reduces after the last backward) and "
        "DeepSpeed's pipeline engine does (ReduceGrads at the end of the batch)")
    zero: int = Field(0, ge=0, le=3, description="ZeRO stage over dp: 1 optimizer, 2 +grads, 3 +weights")
    recompute: Recompute = Field(Recompute.NONE, description="activation recomputation")
    recompute_modules: tuple[str, ...] | None = Field(
        None, description="with recompute=selective, the modules recomputed (Megatron-Core "
        "--recompute-modules): any of RECOMPUTE_MODULES; None = core_attn, Megatron's default")
    offload: NonNegativeInt = Field(
        0, description=("transformer layers whose activations go to host memory in the forward "
                        "pass and come back for the backward (Megatron-Core "
                        "--cpu-offloading-num-layers, Transformer Engine's CPU offload); "
                        "pp=1 and no recomputation, as Megatron-Core requires"))
    mbs: PositiveInt = Field(1, description="micro-batch size in sequences")
    vpp: PositiveInt = Field(1, description="virtual pipeline stages per device (interleaved 1F1B)")
    schedule: Schedule = Field(Schedule.ONE_F_ONE_B, description="pipeline schedule (see Schedule)")
    attn: Attention = Field(Attention.FLASH, description="attention kernel (see Attention)")
    loss: LossKernel = Field(LossKernel.UNFUSED, description="cross-entropy kernel (see LossKernel)")
    order: tuple[str, ...] = Field(DEFAULT_ORDER, description="rank layout, innermost group first")
    stage_layers: tuple[PositiveInt, ...] | None = Field(
        None, description="blocks on each pipeline stage (length pp); None = as even as possible"
    )
    chunk_layers: tuple[NonNegativeInt, ...] | None = Field(
        None, description=("blocks on each virtual stage (length pp*vpp, in pipeline order: "
                           "chunk c runs on stage c mod pp, as Megatron-Core's interleaved "
                           "schedule places them); given as layers= with pp*vpp counts. A "
                           "virtual stage may hold no block (Megatron-Core layouts such as "
                           "DeepSeek-V3's 'Et|(tt|)*30mL' end with an MTP-only chunk); every "
                           "pipeline stage holds at least one")
    )

    @model_validator(mode="before")
    @classmethod
    def _chunks(cls, data: Any) -> Any:
        """layers= with pp*vpp counts (vpp > 1) is a per-virtual-stage layout: keep it as
        chunk_layers and give each stage the sum of its chunks."""
        if not isinstance(data, dict):
            return data
        counts, pp, vpp = data.get("stage_layers"), data.get("pp", 1), data.get("vpp", 1)
        if (counts is not None and data.get("chunk_layers") is None and isinstance(vpp, int)
                and isinstance(pp, int) and vpp > 1 and len(counts) == pp * vpp != pp):
            data = dict(data)
            data["chunk_layers"] = tuple(counts)
            data["stage_layers"] = tuple(sum(counts[c] for c in range(r, pp * vpp, pp))
                                         for r in range(pp))
        layers = data.get("stage_layers")
        if layers is not None and any(isinstance(n, int) and n == 0 for n in layers):
            raise PlanError("layers= leaves a pipeline stage without blocks; every stage needs "
                            "at least one (only a virtual stage may be empty, with vpp > 1 and "
                            "pp*vpp counts)")
        return data

    def max_chunk_fraction(self, num_layers: int) -> float:
        """Largest share of a stage's blocks in one of its virtual stages (1/vpp when even):
        the interleaved schedule's bubble is (pp-1) of those chunks."""
        if self.chunk_layers is None:
            return 1.0 / self.vpp
        per_stage = self.layers_per_stage(num_layers)
        return max(n / per_stage[c % self.pp] for c, n in enumerate(self.chunk_layers))

    @field_validator("recompute_modules")
    @classmethod
    def _modules(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        unknown = [m for m in v if m not in RECOMPUTE_MODULES]
        if unknown or not v or len(set(v)) != len(v):
            raise PlanError(f"plan key 'recompute_modules' takes distinct modules joined by '+' "
                            f"from {', '.join(RECOMPUTE_MODULES)}; got '{'+'.join(v)}'")
        return tuple(m for m in RECOMPUTE_MODULES if m in v)     # one canonical order

    @property
    def selective_modules(self) -> tuple[str, ...]:
        """The modules selective recomputation repeats (none unless recompute=selective)."""
        if self.recompute != Recompute.SELECTIVE:
            return ()
        return self.recompute_modules or ("core_attn",)

    @field_validator("order")
    @classmethod
    def _order(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(v) != sorted(DEFAULT_ORDER):
            raise PlanError(
                f"order '{'-'.join(v)}' must be a permutation of tp, cp, dp, pp "
                "(e.g. order=tp-cp-dp-pp)"
            )
        return v

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def expert_tp(self) -> int:
        return self.etp or 1

    @property
    def expert_dp(self) -> int:
        """Expert data-parallel size: the dp x cp x tp ranks over ep x etp (Megatron-Core's
        parallel folding), at least 1; the group that reduces the experts' gradients."""
        return max(1, self.dp * self.cp * self.tp // (self.ep * self.expert_tp))

    def layers_per_stage(self, num_layers: int) -> tuple[int, ...]:
        """Blocks on each stage: the explicit split, or as even as possible (earlier stages
        take the remainder, as Megatron-LM does with uneven layer counts)."""
        if self.stage_layers is not None:
            return self.stage_layers
        base, extra = divmod(num_layers, self.pp)
        return tuple(base + (1 if i < extra else 0) for i in range(self.pp))

    def stage_ranges(self, num_layers: int) -> list[tuple[int, int]]:
        """Inclusive (first, last) block index of each stage."""
        out, start = [], 0
        for n in self.layers_per_stage(num_layers):
            out.append((start, start + n - 1))
            start += n
        return out

    def to_string(self) -> str:
        """The `--plan` string that parses back to this plan."""
        parts = [f"tp={self.tp}", f"pp={self.pp}", f"dp={self.dp}", f"cp={self.cp}",
                 f"ep={self.ep}", f"vpp={self.vpp}", f"mbs={self.mbs}",
                 f"sp={'on' if self.sp else 'off'}", f"recompute={self.recompute.value}",
                 f"zero={self.zero}"]
        if self.attn != Attention.FLASH:
            parts.append(f"attn={self.attn.value}")
        if self.loss != LossKernel.UNFUSED:
            parts.append(f"loss={self.loss.value}")
        if self.etp is not None:
            parts.append(f"etp={self.etp}")
        if self.ep_overlap:
            parts.append("ep_overlap=on")
        if self.dispatcher != Dispatcher.FLEX:
            parts.append(f"dispatcher={self.dispatcher.value}")
        if not self.dp_overlap:
            parts.append("dp_overlap=off")
        if self.recompute_modules is not None:
            parts.append("recompute_modules=" + "+".join(self.recompute_modules))
        if self.offload:
            parts.append(f"offload={self.offload}")
        if self.schedule != Schedule.ONE_F_ONE_B:
            parts.append(f"schedule={self.schedule.value}")
        if self.order != DEFAULT_ORDER:
            parts.append("order=" + "-".join(self.order))
        if self.chunk_layers is not None:
            parts.append("layers=" + "/".join(str(n) for n in self.chunk_layers))
        elif self.stage_layers is not None:
            parts.append("layers=" + "/".join(str(n) for n in self.stage_layers))
        return ",".join(parts)


_INT_KEYS = ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "mbs", "zero", "offload")
_ON = {"on", "true", "1", "yes"}
_OFF = {"off", "false", "0", "no"}
_BOOL_KEYS = ("sp", "ep_overlap", "dp_overlap")
_ENUM_KEYS: dict[str, type[StrEnum]] = {"recompute": Recompute, "attn": Attention,
                                         "loss": LossKernel, "dispatcher": Dispatcher,
                                         "schedule": Schedule}
PLAN_KEYS = (*_INT_KEYS, *_BOOL_KEYS, *_ENUM_KEYS, "order", "layers", "recompute_modules")


def parse_plan_fields(text: str) -> dict[str, object]:
    """Parse 'tp=8,pp=8,sp=on,...' into Plan fields, without defaults or device checks."""
    fields: dict[str, object] = {}
    for raw in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip() for s in raw.partition("="))
        if not sep or not value:
            raise PlanError(f"plan item '{raw}' is not key=value; write e.g. 'tp=8,pp=2'")
        if key not in PLAN_KEYS:
            raise PlanError(f"unknown plan key '{key}'; the keys are {', '.join(PLAN_KEYS)}")
        if key in fields or (key == "layers" and "stage_layers" in fields):
            raise PlanError(f"plan key '{key}' given twice")
        fields.update(_parse_value(key, value))
    return fields


def _parse_value(key: str, value: str) -> dict[str, object]:
    if key in _INT_KEYS:
        if not value.isdigit():
            raise PlanError(f"plan key '{key}' needs a whole number, got '{value}'")
        if key not in ("zero", "offload") and int(value) < 1:
            raise PlanError(f"plan key '{key}' must be at least 1, got {value}")
        return {key: int(value)}
    if key in _BOOL_KEYS:
        if value.lower() not in _ON | _OFF:
            raise PlanError(f"plan key '{key}' takes on or off, got '{value}'")
        return {key: value.lower() in _ON}
    if key in _ENUM_KEYS:
        enum = _ENUM_KEYS[key]
        allowed = [r.value for r in enum]
        if value not in allowed:
            raise PlanError(f"plan key '{key}' takes {'/'.join(allowed)}, got '{value}'")
        return {key: enum(value)}
    if key == "order":
        return {"order": tuple(value.split("-"))}
    if key == "recompute_modules":
        return {"recompute_modules": tuple(value.split("+"))}
    counts = value.split("/")
    if not all(c.isdigit() for c in counts) or not any(int(c) for c in counts):
        raise PlanError(f"plan key 'layers' takes block counts per stage like 10/12/12/10, got '{value}'")
    return {"stage_layers": tuple(int(c) for c in counts)}


def parse_plan(text: str, *, devices: int) -> Plan:
    """Parse a `--plan` string; dp defaults to devices / (tp*pp*cp), the rest to Plan's defaults."""
    fields = parse_plan_fields(text)
    if "dp" not in fields:
        denom = int(fields.get("tp", 1)) * int(fields.get("pp", 1)) * int(fields.get("cp", 1))  # type: ignore[arg-type]
        if devices % denom:
            raise PlanError(
                f"tp*pp*cp = {denom} does not divide the {devices} devices, so dp cannot be "
                "derived; change the degrees or give dp and the device count explicitly"
            )
        fields["dp"] = devices // denom
    try:
        return Plan(**fields)  # type: ignore[arg-type]
    except PlanError:
        raise
    except ValueError as err:  # pydantic ValidationError: out-of-range numbers
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": ("plan",), "msg": str(err)}  # type: ignore[union-attr]
        loc = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"plan key '{loc}': {first['msg']}") from None
