"""Scored outputs: the `Estimate` of one plan (the JSON object `meshplan evaluate --json` prints)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "pp_comm", "dp_comm", "ep_comm",
                  "bubble", "optimizer", "offload")
MEMORY_KEYS = ("weights", "grads", "optimizer", "activations", "buffers")


class StageEstimate(BaseModel):
    """One pipeline stage: its blocks, its time per micro-batch and its memory per device."""

    model_config = ConfigDict(frozen=True)

    first_layer: int = Field(description="first block (0-based, inclusive)")
    last_layer: int = Field(description="last block (inclusive)")
    has_embedding: bool
    has_head: bool
    mtp_modules: int = Field(0, description="multi-token-prediction modules on this stage (the last)")
    time_per_microbatch_s: float = Field(description="forward + backward (+ recompute, p2p) of one micro-batch")
    memory_gib: float = Field(description="peak memory of one device of this stage")


class Estimate(BaseModel):
    """The cost model's prediction for one plan. Every number is per training step."""

    model_config = ConfigDict(frozen=True)

    plan: str = Field(description="the plan, as a --plan string")
    devices: int
    num_microbatches: int = Field(description="micro-batches per data-parallel replica per step")
    step_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float = Field(description="model FLOPs (3x forward, no recomputation) per second per device, in TFLOP/s")
    hardware_tflops_per_gpu: float = Field(description="as above plus recomputed FLOPs")
    mfu: float = Field(description="model_tflops_per_gpu / peak of the dtype")
    hfu: float = Field(description="hardware_tflops_per_gpu / peak of the dtype")
    peak_memory_gib: float = Field(description="memory of the most loaded device")
    capacity_gib: float = Field(description="device memory")
    fits: bool
    over_memory_gib: float = Field(description="how far peak memory exceeds capacity (0 when it fits)")
    breakdown: dict[str, float] = Field(description="exposed seconds per step; sums to step_time_s")
    memory_gib: dict[str, float] = Field(description="memory of the most loaded device by kind")
    stages: list[StageEstimate]
    warnings: list[str]


class ScoredPlan(BaseModel):
    """A plan (as the keys of the --plan string plus the layer range of each stage) and its
    Estimate (the object `meshplan evaluate --json` prints)."""

    model_config = ConfigDict(frozen=True)

    plan: dict[str, object]
    estimate: Estimate


class BaselineResult(BaseModel):
    """A published configuration, scored by the same model, next to the best plan."""

    model_config = ConfigDict(frozen=True)

    label: str
    source: str
    plan: str = Field(description="the published plan as a --plan string")
    estimate: Estimate | None = Field(description="None when the plan cannot run as stated")
    slower_than_best_s: float | None = Field(description="step time minus the best plan's")
    slower_than_best_pct: float | None
    inconsistencies: list[str] = Field(description="where the published numbers disagree with themselves")
    notes: str = ""


class SearchStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    candidates: int = Field(description="plans scored in full")
    pruned: dict[str, int] = Field(description="candidates dropped, by reason")
    search_time_s: float = Field(description="wall time of the search (the only field that varies between identical runs)")
    cut: bool = Field(False, description="the time limit stopped the search; best found so far")


class MappingResult(BaseModel):
    """The device-mapping program's layout for the best plan (search/device_mapping.py)."""

    model_config = ConfigDict(frozen=True)

    members_per_node: dict[str, int] = Field(description="members of each group that share a node")
    order: str | None = Field(description="the rank order realising it (innermost first), if one does")
    nested: str | None = Field(description="mixed-radix layout when no plain order realises it")
    comm_time_s: float = Field(description="predicted per-step communication of the mapping")
    default_order_comm_time_s: float = Field(description="the same for tp-cp-dp-pp")
    status: str
    gap: float


class SearchResult(BaseModel):
    """What `meshplan search --json` prints."""

    model_config = ConfigDict(frozen=True)

    best: ScoredPlan
    top: list[ScoredPlan]
    baselines: list[BaselineResult]
    lower_bound_step_time_s: float = Field(description="no plan can be faster (model FLOPs at the achievable matmul rate on every device)")
    gap_to_lower_bound: float = Field(description="best step time / lower bound - 1")
    stats: SearchStats
    device_mapping: MappingResult | None = Field(None, description="physical layout of the best plan")
    notes: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description=(
        "what was searched: model and cluster specs (as data), workload and device count; "
        "makes the result self-contained for `meshplan export` and reports"))


class OperatorShare(BaseModel):
    """One operator of a block: one micro-batch, one device (cost_models.compute.Op)."""

    model_config = ConfigDict(frozen=True)

    name: str
    work: str = Field(description="a GEMM's m x n x k on this device, or the bytes a "
                                  "memory-bound kernel moves in the forward pass")
    fwd_s: float
    bwd_s: float
    fwd_flops: float
    bwd_flops: float
    fraction_of_peak: float | None = Field(
        description="forward FLOPs / (forward seconds x the peak FLOP/s of the precision it "
                    "runs in: bf16 for the router and the attention core under FP8/NVFP4); null "
                    "for memory-bound kernels")


class BlockExplanation(BaseModel):
    """One block of one type (dense or MoE): its operators, which add up to its compute, and
    its communication, before the plan's overlap rules."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="dense or moe")
    layers: int = Field(description="blocks of this type in the model")
    operators: list[OperatorShare]
    fwd_s: float = Field(description="the operators' forward seconds, summed")
    bwd_s: float = Field(description="the operators' backward seconds, summed")
    fwd_flops: float
    bwd_flops: float
    tp_comm_s: tuple[float, float] = Field(description="(forward, backward) tensor-parallel "
                                                       "collectives")
    cp_comm_s: tuple[float, float] = Field(description="(forward, backward) ring-attention "
                                                       "exchange not hidden by the attention")
    ep_comm_s: tuple[float, float] = Field(description="(forward, backward) token dispatch and "
                                                       "combine, before any overlap")


class Explanation(BaseModel):
    """What one micro-batch costs one device, operator by operator (`evaluate --explain`)."""

    model_config = ConfigDict(frozen=True)

    plan: str
    tokens_per_microbatch: int = Field(description="tokens of one micro-batch on one device "
                                                   "(mbs x seq_len / cp)")
    peak_flops_per_s: float = Field(description="the workload dtype's peak on this device")
    large_gemm_fraction: float = Field(description="the fraction of that peak a large GEMM "
                                                   "reaches (MAMF x sustained clock)")
    memory_bandwidth_bytes_per_s: float = Field(description="achievable memory bandwidth")
    kernel_floor_s: float = Field(description="shortest time any kernel takes")
    blocks: list[BlockExplanation]
    head: OperatorShare | None = Field(description="LM head and loss, on the last stage")
    embedding: OperatorShare | None = Field(description="embedding lookup, on the first stage")
