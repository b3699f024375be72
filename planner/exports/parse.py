"""Read meshplan's own export texts back into values, for round-trip checks.

Decides how a printed command becomes (flag, value) pairs and how a torchtitan TOML or a
DeepSpeed JSON becomes dotted keys; then `plan_from_*` rebuild the plan's degrees from them, so a
test can compare them with the plan that was exported. Does not run any engine.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from typing import Any


def command_flags(text: str) -> tuple[list[str], dict[str, str | None]]:
    """(the words before the first flag, {flag: value or None}) of a printed shell command;
    a flag followed by several words (a list-valued flag) maps to them joined by spaces.

    Comment lines are skipped, continuation backslashes joined. A flag given twice raises
    ValueError (an export never repeats one).
    """
    body = " ".join(line.rstrip("\\").strip() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    words = shlex.split(body)
    first = next((i for i, w in enumerate(words) if w.startswith("--") and _after_program(words, i)),
                 len(words))
    flags: dict[str, str | None] = {}
    i = first
    while i < len(words):
        flag = words[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected a flag, got {flag!r}")
        if flag in flags:
            raise ValueError(f"flag {flag} given twice")
        j = i + 1
        while j < len(words) and not words[j].startswith("--"):
            j += 1      # a list-valued flag (argparse nargs='*', e.g. --recompute-modules)
        flags[flag] = " ".join(words[i + 1:j]) if j > i + 1 else None
        i = j
    return words[:first], flags


def _after_program(words: list[str], i: int) -> bool:
    """A flag belongs to the program, not to torchrun: it comes after a .py script or after
    the `serve MODEL` / `-m module` words."""
    before = words[:i]
    if any(w.endswith(".py") for w in before):
        return True
    if "serve" in before:
        return len(before) >= before.index("serve") + 2
    if "-m" in before:
        return len(before) >= before.index("-m") + 2
    return False


def dotted_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for every leaf (and every table, under its own dotted name)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        out[name] = value
        if isinstance(value, dict):
            out.update(dotted_keys(value, f"{name}."))
    return out


def torchtitan_keys(text: str) -> dict[str, Any]:
    return dotted_keys(tomllib.loads(text))


def deepspeed_keys(text: str) -> dict[str, Any]:
    return dotted_keys(json.loads(text))


def megatron_degrees(flags: dict[str, str | None]) -> dict[str, Any]:
    """tp, pp, cp, ep, etp, vpp, mbs, sp, zero, recompute as the flags state them."""
    def num(flag: str, default: int) -> int:
        value = flags.get(flag)
        return default if value is None else int(value)

    layout = flags.get("--pipeline-model-parallel-layout")
    pp = num("--pipeline-model-parallel-size", 1)
    vpp = (layout.count("|") + 1) // pp if layout else num("--num-virtual-stages-per-pipeline-rank", 1)
    strategy = flags.get("--data-parallel-sharding-strategy")
    zero = ({"optim_grads": 2, "optim_grads_params": 3}[strategy] if strategy else
            1 if "--use-distributed-optimizer" in flags else 0)
    return {"tp": num("--tensor-model-parallel-size", 1), "pp": pp,
            "cp": num("--context-parallel-size", 1), "ep": num("--expert-model-parallel-size", 1),
            "vpp": vpp, "mbs": num("--micro-batch-size", 1), "sp": "--sequence-parallel" in flags,
            "zero": zero, "recompute": flags.get("--recompute-granularity") or "none"}


def megatron_virtual_stage_layers(flags: dict[str, str | None], num_layers: int) -> tuple[int, ...]:
    """Blocks on each virtual stage (pipeline order), as Megatron builds them from the flags:
    the layout's stages, else first/last/even stage counts split evenly over vpp chunks."""
    pp = int(flags.get("--pipeline-model-parallel-size") or 1)
    layout = flags.get("--pipeline-model-parallel-layout")
    if layout:
        return tuple(stage.count("t") for stage in layout.split("|"))
    vpp = int(flags.get("--num-virtual-stages-per-pipeline-rank") or 1)
    first = flags.get("--decoder-first-pipeline-num-layers")
    last = flags.get("--decoder-last-pipeline-num-layers")
    fixed = [int(x) for x in (first, last) if x is not None]
    middle_stages = pp - len(fixed)
    middle = (num_layers - sum(fixed)) // middle_stages if middle_stages else 0
    counts = [middle] * pp
    if first is not None:
        counts[0] = int(first)
    if last is not None:
        counts[-1] = int(last)
    return tuple(counts[s % pp] // vpp for s in range(pp * vpp))


def torchtitan_virtual_stage_layers(keys: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """Blocks on each (virtual) stage from module_fqns_per_model_part, in model order (one
    stage of all blocks when it is absent). Raises ValueError unless the parts name blocks 0 to
    num_layers - 1 once each, in order, with the embedding first and norm and output last."""
    parts = keys.get("parallelism.module_fqns_per_model_part")
    if parts is None:
        return (num_layers,)
    flat = [name for part in parts for name in part]
    expected = ["tok_embeddings", *(f"layers.{i}" for i in range(num_layers)), "norm", "output"]
    if flat != expected:
        raise ValueError(f"module_fqns_per_model_part does not list the model's modules in order: {parts}")
    return tuple(sum(name.startswith("layers.") for name in part) for part in parts)
