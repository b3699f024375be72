"""Plan exports: a saved search result as launch settings of a training or serving engine.

`export_result(result, fmt)` takes the JSON of `meshplan search ... --json` (a dict) and prints
one plan of it (`rank`, 0 = best) for one engine. A plan the engine cannot express raises
`UnsupportedPlanError` (exit code 4) with the reason; it is never changed to fit. Each engine's
option names are data in `options/<engine>.toml`, with their source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from planner.errors import SpecError
from planner.exports.common import ExportInputs, read_result
from planner.exports.deepspeed import export_deepspeed
from planner.exports.megatron import export_megatron
from planner.exports.serving import export_sglang, export_vllm
from planner.exports.torchtitan import export_torchtitan

_EXPORTERS: dict[str, Callable[..., str]] = {
    "megatron": export_megatron,
    "torchtitan": export_torchtitan,
    "deepspeed": export_deepspeed,
    "vllm": export_vllm,
    "sglang": export_sglang,
}
FORMATS: tuple[str, ...] = tuple(_EXPORTERS)
"""Export formats, in the order the CLI lists them."""

_SERVING = ("vllm", "sglang")


def export_result(result: dict[str, Any], fmt: str, *, rank: int = 0,
                  model_path: str | None = None) -> str:
    """The launch settings of `result['top'][rank]` for engine `fmt` (of a disaggregated
    serving result, the SGLang prefill servers, decode servers and router:
    planner/exports/disaggregated.py).

    Args:
        result: a search result as a dict (`SearchResult.model_dump(mode="json")` or the
            parsed `meshplan search --json` output), training or inference.
        fmt: one of FORMATS.
        rank: which of the result's top plans (0 = best).
        model_path: checkpoint id or path for vllm/sglang (default: the shell variable
            MODEL_PATH); rejected for the training formats.

    Returns:
        The text to print or save (ends with a newline).

    Raises:
        SpecError: unknown format, or not a search result.
        UnsupportedPlanError: the engine cannot express the plan.
    """
    if fmt not in _EXPORTERS:
        raise SpecError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    if isinstance(result, dict) and result.get("disaggregated"):
        from planner.exports.disaggregated import export_disaggregated

        if model_path is not None and fmt not in _SERVING:
            raise SpecError(f"--model-path is for vllm and sglang; the {fmt} export takes the "
                            "model from the result's model spec")
        return export_disaggregated(result, fmt, rank=rank, model_path=model_path)
    inp = read_result(result, rank=rank)
    if fmt in _SERVING:
        return _EXPORTERS[fmt](inp, model_path=model_path)
    if model_path is not None:
        raise SpecError(f"--model-path is for vllm and sglang; the {fmt} export takes the model "
                        "from the result's model spec")
    return _EXPORTERS[fmt](inp)


__all__ = ["FORMATS", "ExportInputs", "export_result", "read_result"]
