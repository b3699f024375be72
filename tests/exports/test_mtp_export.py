"""A model with multi-token-prediction modules (ModelSpec.mtp_layers) exports them: Megatron-LM
gets --mtp-num-layers and, with a layout, 'm' before the loss on the last virtual stage; the
engines without an MTP setting say in their header that the estimate trains them."""

from __future__ import annotations

import pytest

from planner.exports import export_result
from planner.exports.parse import command_flags

from .conftest import with_plan


def _mtp(plan_text: str, mtp: int = 1) -> dict:
    data = with_plan("moe", plan_text)
    data["inputs"]["model"]["mtp_layers"] = mtp
    return data


def test_megatron_layout_puts_the_mtp_module_before_the_loss() -> None:
    data = _mtp("tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1,layers=9/8/8/7")
    _, flags = command_flags(export_result(data, "megatron"))
    assert flags["--mtp-num-layers"] == "1"
    layout = flags["--pipeline-model-parallel-layout"]
    assert layout == "Et" + "t" * 8 + "|" + "t" * 8 + "|" + "t" * 8 + "|" + "t" * 7 + "mL"
    ppl = pytest.importorskip("megatron.core.transformer.pipeline_parallel_layer_layout")
    from megatron.core.transformer.enums import LayerType

    # layout[pp_rank][vpp_rank]: the MTP module is built on the last rank's last chunk only
    built = ppl.PipelineParallelLayerLayout(layout, pipeline_model_parallel_size=2).layout
    assert [[chunk.count(LayerType.mtp) for chunk in rank] for rank in built] == [[0, 0], [0, 1]]
    assert [[chunk.count(LayerType.decoder) for chunk in rank] for rank in built] == [[9, 8], [8, 7]]


def test_megatron_without_a_layout_still_states_the_mtp_depth() -> None:
    _, flags = command_flags(export_result(_mtp("tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=1", 2),
                                           "megatron"))
    assert flags["--mtp-num-layers"] == "2"
    assert "--pipeline-model-parallel-layout" not in flags
    _, plain = command_flags(export_result(_mtp("tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=1", 0),
                                           "megatron"))
    assert "--mtp-num-layers" not in plain


def test_torchtitan_header_says_the_estimate_trains_mtp() -> None:
    text = export_result(_mtp("tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=3"), "torchtitan")
    assert "1 multi-token-prediction module(s)" in text.splitlines()[2]
    plain = export_result(_mtp("tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=3", 0), "torchtitan")
    assert "multi-token-prediction" not in plain


# ----- ep_overlap (combined 1F1B) ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning:megatron.core.transformer.transformer_config")
def test_megatron_export_turns_on_the_combined_1f1b() -> None:
    data = with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1,ep_overlap=on")
    _, flags = command_flags(export_result(data, "megatron"))
    assert "--overlap-moe-expert-parallel-comm" in flags
    assert flags["--moe-token-dispatcher-type"] == "alltoall"
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    from .test_engines import _MEGATRON_ELSEWHERE, _MEGATRON_RENAMES, _megatron_args, _megatron_dtypes

    args = _megatron_args(flags)
    kwargs = {_MEGATRON_RENAMES.get(k, k): v for k, v in args.items() if k not in _MEGATRON_ELSEWHERE}
    kwargs["add_bias_linear"] = "disable_bias_linear" not in args
    kwargs.update(_megatron_dtypes(args))
    config = tc.TransformerConfig(**kwargs)        # __post_init__ runs Megatron-Core's checks
    assert config.overlap_moe_expert_parallel_comm
    _, plain = command_flags(export_result(
        with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1"), "megatron"))
    assert "--overlap-moe-expert-parallel-comm" not in plain


def test_torchtitan_refuses_ep_overlap() -> None:
    from planner.errors import UnsupportedPlanError

    data = with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=3,ep_overlap=on")
    with pytest.raises(UnsupportedPlanError, match="ep_overlap=on"):
        export_result(data, "torchtitan")


def test_an_mtp_only_last_chunk_exports_as_megatron_lays_it_out() -> None:
    """Megatron-Bridge's H100 DeepSeek-V3 layout 'Et|(tt|)*30mL' ends with a virtual stage
    that holds the MTP module and the loss but no block: layers= may give a chunk 0 blocks."""
    data = _mtp("tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1,layers=16/10/6/0")
    _, flags = command_flags(export_result(data, "megatron"))
    layout = flags["--pipeline-model-parallel-layout"]
    assert layout == "E" + "t" * 16 + "|" + "t" * 10 + "|" + "t" * 6 + "|mL"
    ppl = pytest.importorskip("megatron.core.transformer.pipeline_parallel_layer_layout")
    from megatron.core.transformer.enums import LayerType

    built = ppl.PipelineParallelLayerLayout(layout, pipeline_model_parallel_size=2).layout
    assert [[chunk.count(LayerType.decoder) for chunk in rank] for rank in built] == [[16, 6], [10, 0]]
    assert built[1][1].count(LayerType.mtp) == 1


@pytest.mark.filterwarnings("ignore::UserWarning:megatron.core.transformer.transformer_config")
def test_megatron_export_lists_the_recomputed_modules() -> None:
    data = with_plan("moe", "tp=1,pp=1,dp=16,cp=2,ep=8,mbs=1,zero=1,recompute=selective,"
                            "recompute_modules=moe_act+layernorm")
    text = export_result(data, "megatron")
    assert "--recompute-modules layernorm moe_act \\" in text
    _, flags = command_flags(text)
    assert flags["--recompute-granularity"] == "selective"
    assert flags["--recompute-modules"] == "layernorm moe_act"
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    from .test_engines import _MEGATRON_ELSEWHERE, _MEGATRON_RENAMES, _megatron_args, _megatron_dtypes

    args = _megatron_args(flags)
    args["recompute_modules"] = flags["--recompute-modules"].split()   # argparse nargs='*'
    kwargs = {_MEGATRON_RENAMES.get(k, k): v for k, v in args.items() if k not in _MEGATRON_ELSEWHERE}
    kwargs["add_bias_linear"] = "disable_bias_linear" not in args
    kwargs.update(_megatron_dtypes(args))
    config = tc.TransformerConfig(**kwargs)
    assert config.recompute_modules == ["layernorm", "moe_act"]


def test_megatron_export_names_the_alltoall_dispatcher_once() -> None:
    _, flags = command_flags(export_result(
        with_plan("moe", "tp=1,pp=1,dp=16,cp=2,ep=8,mbs=1,zero=1,dispatcher=alltoall"), "megatron"))
    assert flags["--moe-token-dispatcher-type"] == "alltoall"
    text = export_result(with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1,"
                                   "ep_overlap=on,dispatcher=alltoall"), "megatron")
    assert text.count("--moe-token-dispatcher-type") == 1


# ----- the token dispatcher ---------------------------------------------------------------


def _on_nodes_of(data: dict, per_node: int) -> dict:
    """The saved result on nodes of `per_node` GPUs (an EP group of 8 then spans nodes)."""
    data["inputs"]["cluster"]["devices_per_node"] = per_node
    return data


def _dispatcher(data: dict) -> tuple[str | None, bool]:
    text = export_result(data, "megatron")
    _, flags = command_flags(text)
    assert text.count("--moe-token-dispatcher-type") <= 1
    return flags.get("--moe-token-dispatcher-type"), "--moe-enable-deepep" in flags


def test_megatron_export_never_leaves_an_ep_plan_on_the_allgather_default() -> None:
    """Megatron-LM defaults to the allgather dispatcher (every token to every EP rank), which
    no estimate assumes: with ep > 1 the export names the dispatcher the estimate costed."""
    inside = "tp=1,pp=1,dp=16,cp=2,ep=8,mbs=1,zero=1"     # EP group = ranks 0-7 of a node
    # flex inside a node sends one row per (token, expert) pair, as alltoall does: no DeepEP
    assert _dispatcher(with_plan("moe", inside)) == ("alltoall", False)
    assert _dispatcher(with_plan("moe", inside + ",dispatcher=alltoall")) == ("alltoall", False)
    # across nodes flex sends a token once per destination node: DeepEP's flex dispatcher
    assert _dispatcher(_on_nodes_of(with_plan("moe", inside), 4)) == ("flex", True)
    assert _dispatcher(_on_nodes_of(with_plan("moe", inside + ",dispatcher=alltoall"), 4)) == (
        "alltoall", False)
    # expert TP spreads the EP group: stride 2 x 8 members = 16 ranks, two 8-GPU nodes
    assert _dispatcher(with_plan("moe", "tp=1,pp=1,dp=16,cp=2,ep=8,etp=2,mbs=1,zero=1")) == (
        "flex", True)
    # the combined 1F1B keeps the plan's dispatcher
    overlap = "tp=1,pp=2,dp=8,cp=2,ep=8,vpp=2,mbs=1,zero=1,ep_overlap=on"
    assert _dispatcher(_on_nodes_of(with_plan("moe", overlap), 4)) == ("flex", True)
    # no expert parallelism: no token leaves its device, no flag
    assert _dispatcher(with_plan("moe", "tp=1,pp=1,dp=32,cp=1,ep=1,mbs=1,zero=1")) == (
        None, False)


@pytest.mark.filterwarnings("ignore::UserWarning:megatron.core.transformer.transformer_config")
def test_megatron_core_accepts_the_deepep_flags() -> None:
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    from .test_engines import _MEGATRON_ELSEWHERE, _MEGATRON_RENAMES, _megatron_args, _megatron_dtypes

    _, flags = command_flags(export_result(_on_nodes_of(
        with_plan("moe", "tp=1,pp=1,dp=16,cp=2,ep=8,mbs=1,zero=1"), 4), "megatron"))
    args = _megatron_args(flags)
    kwargs = {_MEGATRON_RENAMES.get(k, k): v for k, v in args.items() if k not in _MEGATRON_ELSEWHERE}
    kwargs["add_bias_linear"] = "disable_bias_linear" not in args
    kwargs.update(_megatron_dtypes(args))
    config = tc.TransformerConfig(**kwargs)        # __post_init__: DeepEP needs flex
    assert config.moe_token_dispatcher_type == "flex"


def test_torchtitan_picks_the_comm_backend_the_estimate_costed() -> None:
    import tomllib

    def backend(data: dict) -> str | None:
        return tomllib.loads(export_result(data, "torchtitan"))["parallelism"].get(
            "expert_parallel_comm_backend")

    inside = "tp=1,pp=1,dp=16,cp=2,ep=8,mbs=1,zero=3"
    assert backend(with_plan("moe", inside)) == "standard"
    assert backend(_on_nodes_of(with_plan("moe", inside), 4)) == "deepep"
    assert backend(_on_nodes_of(with_plan("moe", inside + ",dispatcher=alltoall"), 4)) == "standard"
    assert backend(with_plan("moe", "tp=1,pp=1,dp=32,cp=1,ep=1,mbs=1,zero=3")) is None


# ----- sliding-window attention -------------------------------------------------------------


def test_megatron_export_states_the_sliding_window() -> None:
    """A model with sliding_window (and global_attention_every) exports Megatron's
    --window-size W,0 and --window-attn-skip-freq N (arguments.py: one full-attention layer
    after N-1 windowed ones); a model without one prints neither."""
    data = with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=1")
    data["inputs"]["model"].update(sliding_window=128, global_attention_every=2)
    _, flags = command_flags(export_result(data, "megatron"))
    assert flags["--window-size"] == "128,0" and flags["--window-attn-skip-freq"] == "2"
    data["inputs"]["model"].update(global_attention_every=None)
    _, flags = command_flags(export_result(data, "megatron"))
    assert flags["--window-size"] == "128,0" and "--window-attn-skip-freq" not in flags
    _, plain = command_flags(export_result(with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=1"),
                                           "megatron"))
    assert "--window-size" not in plain and "--window-attn-skip-freq" not in plain


def test_megatron_states_group_limited_routing() -> None:
    """A model with group-limited routing (DeepSeek-V3's 4 of 8 groups) exports it as
    Megatron-Core's --moe-router-num-groups / --moe-router-group-topk."""
    data = with_plan("moe", "tp=1,pp=2,dp=8,cp=2,ep=8,mbs=1,zero=1")
    data["inputs"]["model"]["moe"] |= {"route_groups": 4, "route_group_topk": 2}
    _, flags = command_flags(export_result(data, "megatron"))
    assert (flags["--moe-router-num-groups"], flags["--moe-router-group-topk"]) == ("4", "2")
