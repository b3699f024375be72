"""What is asked of the model: a training step or an inference request batch."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator

from planner.errors import SpecError
from planner.model import DType, Optimizer, Spec, grad_bytes_per_param


class TrainingWorkload(Spec):
    """One optimizer step over a global batch of sequences."""

    mode: Literal["training"] = "training"
    global_batch_size: PositiveInt = Field(description="sequences per optimizer step")
    seq_len: PositiveInt = Field(description="tokens per sequence")
    dtype: DType = Field(DType.BF16, description="math and weight dtype (mixed precision)")
    optimizer: Optimizer = Field(Optimizer.ADAM, description="decides optimizer-state bytes")
    grad_dtype: DType | None = Field(
        None, description=("dtype gradients are accumulated and reduced in: fp32, bf16 or "
                           "fp16; None = fp32 for bf16/fp8/fp32 training (Megatron-LM, "
                           "torchtitan, DeepSpeed), fp16 for fp16 (planner.model."
                           "default_grad_dtype)"))

    @field_validator("grad_dtype")
    @classmethod
    def _grads(cls, v: DType | None) -> DType | None:
        if v is not None and v not in (DType.FP32, DType.BF16, DType.FP16):
            raise SpecError(f"grad_dtype '{v.value}' is not one of fp32, bf16, fp16 "
                            "(gradients are accumulated in one of those)")
        return v

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def grad_bytes(self) -> int:
        """Bytes of each gradient (planner.model.grad_bytes_per_param)."""
        return grad_bytes_per_param(self.dtype, self.grad_dtype)


class InferenceWorkload(Spec):
    """A batch of requests: prefill of the prompts, then decode of the outputs."""

    mode: Literal["inference"] = "inference"
    batch_size: PositiveInt = Field(description="concurrent sequences")
    prompt_len: PositiveInt = Field(description="prompt tokens per sequence")
    output_len: PositiveInt = Field(description="generated tokens per sequence")
    dtype: DType = Field(DType.BF16, description="weight, activation and KV-cache dtype")
    prefill_chunk_tokens: PositiveInt | None = Field(
        None, description="prefill at most this many prompt tokens at a time, as serving "
        "engines with chunked prefill do (TensorRT-LLM's max_num_tokens, default 8192; vLLM's "
        "max_num_batched_tokens; SGLang's chunked_prefill_size): the prefill activations held "
        "are those of one chunk. None = every prompt of the batch prefilled at once")


Workload = Annotated[TrainingWorkload | InferenceWorkload, Field(discriminator="mode")]
