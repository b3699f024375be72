"""Scored outputs: the `Estimate` of one plan (the JSON object `meshplan evaluate --json` prints)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "pp_comm", "dp_comm", "ep_comm",
                  "bubble", "optimizer")
MEMORY_KEYS = ("weights", "grads", "optimizer", "activations", "buffers")


class StageEstimate(BaseModel):
    """One pipeline stage: its blocks, its time per micro-batch and its memory per device."""

    model_config = ConfigDict(frozen=True)

    first_layer: int = Field(description="first block (0-based, inclusive)")
    last_layer: int = Field(description="last block (inclusive)")
    has_embedding: bool
    has_head: bool
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
