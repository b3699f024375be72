"""Plain-data summaries of specs, shared by `meshplan show`, `meshplan presets` and the API."""

from __future__ import annotations

from typing import Any

from planner.hardware import ClusterSpec, DeviceSpec
from planner.model import (
    GIB,
    DType,
    ModelSpec,
    Optimizer,
    grad_bytes_per_param,
    optimizer_bytes_per_param,
    weight_bytes_per_param,
)

__all__ = ["GIB", "cluster_summary", "device_summary", "model_summary"]


def model_summary(model: ModelSpec, *, seq_len: int = 2048,
                  optimizer: Optimizer = Optimizer.ADAM) -> dict[str, Any]:
    """Dimensions and derived numbers of a model, as JSON-ready data.

    Training-state bytes are for mixed precision with `optimizer` (weights and gradients in
    the working dtype, optimizer state per `optimizer_bytes_per_param`), unsharded.
    """
    moe = model.moe
    dims: dict[str, Any] = {
        "layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "attention_heads": model.num_attention_heads,
        "kv_heads": model.kv_heads,
        "head_dim": model.d_head if model.mla is None else None,
        "attention": model.attention_kind,
        "ffn_hidden_size": model.ffn_hidden_size,
        "activation": model.activation.value,
        "vocab_size": model.vocab_size,
        "positional": model.positional.value,
        "tied_embeddings": model.tied_embeddings,
    }
    if model.sliding_window is not None:
        dims["sliding_window"] = {"window": model.sliding_window,
                                  "global_layers": model.global_attention_layers}
    if model.mla is not None:
        dims["mla"] = model.mla.model_dump()
    if moe is not None:
        dims["moe"] = {**moe.model_dump(), "moe_layers": model.num_moe_layers}
    memory = {}
    for dtype in (DType.FP32, DType.BF16, DType.FP8):
        memory[dtype.value] = {
            "weights_gib": model.params * dtype.bytes / GIB,
            "training_states_gib": model.params * (
                weight_bytes_per_param(dtype) + grad_bytes_per_param(dtype)
                + optimizer_bytes_per_param(optimizer, dtype)) / GIB,
            "kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(dtype),
        }
    return {
        "name": model.name,
        "description": model.description,
        "source": model.source,
        "notes": model.notes,
        "dimensions": dims,
        "params": model.params,
        "active_params": model.active_params,
        "embedding_params": model.embedding_params,
        "seq_len": seq_len,
        "forward_flops_per_token": model.forward_flops_per_token(seq_len),
        "forward_flops_per_token_no_attention": model.forward_flops_per_token(
            seq_len, attention_scores=False),
        "training_flops_per_token": 3 * model.training_forward_flops_per_token(seq_len),
        "mtp_layers": model.mtp_layers,
        "mtp_params": model.mtp_layers * model.mtp_module_params,
        "kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(DType.BF16),
        "memory": memory,
        "optimizer": optimizer.value,
    }


def device_summary(device: DeviceSpec) -> dict[str, Any]:
    """A device's datasheet numbers as JSON-ready data."""
    return {
        "name": device.name,
        "description": device.description,
        "peak_flops_per_s": {k.value: v for k, v in device.peak_flops_per_s.items()},
        "memory_bytes": device.memory_bytes,
        "memory_bandwidth_bytes_per_s": device.memory_bandwidth_bytes_per_s,
        "onchip_cache_bytes": device.onchip_cache_bytes,
        "onchip_cache_bandwidth_bytes_per_s": device.onchip_cache_bandwidth_bytes_per_s,
        "power_w": device.power_w,
        "source": device.source,
    }


def cluster_summary(cluster: ClusterSpec) -> dict[str, Any]:
    """A cluster's shape and links as JSON-ready data."""
    return {
        "name": cluster.name,
        "description": cluster.description,
        "device": cluster.device.name,
        "devices_per_node": cluster.devices_per_node,
        "intra_node": cluster.intra_node.model_dump(mode="json"),
        "inter_node": cluster.inter_node.model_dump(mode="json"),
        "max_nodes": cluster.max_nodes,
        "host_bandwidth_bytes_per_s": cluster.host_bandwidth_bytes_per_s,
        "source": cluster.source,
    }
