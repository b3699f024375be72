"""Shared fixtures: a tiny model and cluster whose numbers can be worked out by hand."""

from __future__ import annotations

import pytest

from planner import ClusterSpec, DeviceSpec, LinkSpec, ModelSpec


@pytest.fixture
def tiny_model() -> ModelSpec:
    """4 blocks of width 64, 4 heads, MLP 256, vocabulary 1000 (GPT-style)."""
    return ModelSpec(name="tiny", num_layers=4, hidden_size=64, num_attention_heads=4,
                     ffn_hidden_size=256, vocab_size=1000, positional="rope")


@pytest.fixture
def tiny_device() -> DeviceSpec:
    return DeviceSpec(name="toy", peak_flops_per_s={"bf16": 100e12, "fp32": 10e12},
                      memory_bytes=16 * 2**30, memory_bandwidth_bytes_per_s=1e12,
                      onchip_cache_bytes=32 * 2**20, power_w=300)


@pytest.fixture
def tiny_cluster(tiny_device: DeviceSpec) -> ClusterSpec:
    """2 devices per node, fast intra-node and slow inter-node links."""
    return ClusterSpec(
        name="toy-cluster", device=tiny_device, devices_per_node=2,
        intra_node=LinkSpec(name="fast", bandwidth_bytes_per_s=100e9, latency_s=1e-6),
        inter_node=LinkSpec(name="slow", bandwidth_bytes_per_s=10e9, latency_s=5e-6),
    )
