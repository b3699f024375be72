"""Real search results the report tests render (computed once per test session)."""

from __future__ import annotations

from typing import Any

import pytest

from planner import InferenceWorkload, TrainingWorkload
from planner.api import search
from planner.presets import load_cluster, load_model
from planner.workload import DType
from search.inference import search_inference


@pytest.fixture(scope="session")
def moe_interleaved() -> dict[str, Any]:
    """Mixtral 8x7B on 32 H100 with pp=4, vpp=2 held fixed: MoE, interleaved, 4 nodes."""
    wl = TrainingWorkload(global_batch_size=128, seq_len=4096)
    return search("mixtral-8x7b", "dgx-h100", wl, devices=32, top_k=3,
                  fixed={"pp": 4, "vpp": 2}).model_dump(mode="json")


@pytest.fixture(scope="session")
def with_baseline() -> dict[str, Any]:
    """Narayanan et al. 2021's 145B row on 1536 A100: a published 1F1B baseline (pp=8)."""
    wl = TrainingWorkload(global_batch_size=2304, seq_len=2048)
    return search("narayanan-145b", "dgx-a100", wl, devices=1536,
                  top_k=3).model_dump(mode="json")


@pytest.fixture(scope="session")
def inference_pp() -> dict[str, Any]:
    """Mixtral 8x7B served on 8 H100 with pp=2 and ep=2 held fixed (MoE, pipeline)."""
    wl = InferenceWorkload(batch_size=16, prompt_len=512, output_len=128, dtype=DType("bf16"))
    return search_inference(load_model("mixtral-8x7b"), load_cluster("dgx-h100"), wl, devices=8,
                            top_k=3, fixed={"pp": 2, "ep": 2}).model_dump(mode="json")
