"""The Megatron export's precision flags: bf16/fp16 as Megatron-LM modes, fp8 as Transformer
Engine's FP8 around bf16 parameters with the recipe whose casts the estimate counts (MXFP8 on
Blackwell, delayed scaling before it), fp4 as its NVFP4 recipe (refused by the other trainers),
tf32 refused."""

from __future__ import annotations

import pytest

from planner.errors import UnsupportedPlanError
from planner.exports import export_result
from planner.exports.megatron import fp8_recipe
from planner.exports.parse import command_flags

from .conftest import result, with_plan


def _with_dtype(dtype: str, device: str | None = None) -> dict:
    data = result("moe")
    data["inputs"]["workload"]["dtype"] = dtype
    if device is not None:
        data["inputs"]["cluster"]["device"]["name"] = device
    return data


def test_fp8_on_hopper_is_delayed_scaling_in_hybrid_format() -> None:
    _, flags = command_flags(export_result(_with_dtype("fp8"), "megatron"))
    assert "--bf16" in flags
    assert (flags["--fp8-format"], flags["--fp8-recipe"]) == ("hybrid", "delayed")


def test_fp8_on_blackwell_is_mxfp8() -> None:
    for device in ("b200", "gb200", "GB200-NVL72"):
        _, flags = command_flags(export_result(_with_dtype("fp8", device), "megatron"))
        assert (flags["--fp8-format"], flags["--fp8-recipe"]) == ("e4m3", "mxfp8"), device
    assert fp8_recipe("h200-sxm-141gb") == ("hybrid", "delayed")


def test_bf16_prints_no_fp8_flags() -> None:
    _, flags = command_flags(export_result(_with_dtype("bf16"), "megatron"))
    assert "--bf16" in flags and "--fp8-format" not in flags and "--fp8-recipe" not in flags


def test_tf32_is_refused_with_the_modes_megatron_has() -> None:
    with pytest.raises(UnsupportedPlanError, match="tf32 is not a Megatron-LM training mode"):
        export_result(_with_dtype("tf32"), "megatron")


def test_megatron_core_names_the_fp8_fields_and_recipes() -> None:
    """TransformerConfig has the fields the two flags set (--fp8-format's dest is `fp8`) and
    Megatron-Core's Fp8Recipe enum has both recipes; building a config with fp8 on needs
    Transformer Engine, which this check does not."""
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    enums = pytest.importorskip("megatron.core.enums")
    fields = tc.TransformerConfig.__dataclass_fields__
    assert "fp8" in fields and "fp8_recipe" in fields
    recipes = {r.value for r in enums.Fp8Recipe}
    for device in (None, "b200"):
        _, flags = command_flags(export_result(_with_dtype("fp8", device), "megatron"))
        assert flags["--fp8-recipe"] in recipes


def _fp4_result(name: str = "moe", plan: str | None = None) -> dict:
    data = result(name) if plan is None else with_plan(name, plan)
    data["inputs"]["workload"]["dtype"] = "fp4"
    data["inputs"]["cluster"]["device"]["name"] = "gb200"
    return data


def test_megatron_export_prints_the_nvfp4_recipe() -> None:
    _, flags = command_flags(export_result(_fp4_result(), "megatron"))
    assert "--bf16" in flags
    assert (flags["--fp4-format"], flags["--fp4-recipe"]) == ("e2m1", "nvfp4")
    assert "--fp8-format" not in flags


@pytest.mark.parametrize(("fmt", "needle"), [("torchtitan", "--to megatron"),
                                             ("deepspeed", "FP8 and NVFP4")])
def test_other_trainers_refuse_fp4(fmt: str, needle: str) -> None:
    # a plan both can otherwise express (tests/exports/test_engines.py)
    plan = "tp=2,pp=1,dp=8,mbs=2,zero=1" + (",sp=on" if fmt == "torchtitan" else "")
    with pytest.raises(UnsupportedPlanError, match=needle):
        export_result(_fp4_result("dense", plan), fmt)
