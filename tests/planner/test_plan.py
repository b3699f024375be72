"""The --plan string: defaults, round trip, and every rejection message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner import Plan, PlanError, Recompute, parse_plan
from planner.plan import parse_plan_fields


def test_defaults_fill_dp() -> None:
    p = parse_plan("tp=8,pp=8", devices=1536)
    assert (p.tp, p.pp, p.dp, p.cp, p.ep, p.vpp, p.mbs) == (8, 8, 24, 1, 1, 1, 1)
    assert p.sp is False and p.recompute == Recompute.NONE and p.zero == 0


def test_full_string() -> None:
    p = parse_plan("tp=8,pp=8,dp=24,cp=1,ep=1,vpp=3,mbs=1,sp=on,recompute=selective,zero=1",
                   devices=1536)
    assert p.vpp == 3 and p.sp and p.recompute == Recompute.SELECTIVE and p.zero == 1


def test_layers_and_ranges() -> None:
    p = parse_plan("pp=3,layers=3/4/3", devices=3)
    assert p.stage_ranges(10) == [(0, 2), (3, 6), (7, 9)]
    even = parse_plan("pp=3", devices=3)
    assert even.layers_per_stage(10) == (4, 3, 3)


@given(tp=st.integers(1, 16), pp=st.integers(1, 16), dp=st.integers(1, 64),
       cp=st.sampled_from([1, 2, 4]), zero=st.integers(0, 3),
       rc=st.sampled_from(list(Recompute)), sp=st.booleans(), mbs=st.integers(1, 8))
def test_round_trip(tp: int, pp: int, dp: int, cp: int, zero: int, rc: Recompute, sp: bool,
                    mbs: int) -> None:
    p = Plan(tp=tp, pp=pp, dp=dp, cp=cp, zero=zero, recompute=rc, sp=sp, mbs=mbs)
    assert parse_plan(p.to_string(), devices=p.devices) == p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tp8", "plan item 'tp8' is not key=value"),
        ("tq=8", "unknown plan key 'tq'"),
        ("tp=x", "plan key 'tp' needs a whole number, got 'x'"),
        ("sp=maybe", "plan key 'sp' takes on or off"),
        ("recompute=some", "plan key 'recompute' takes none/selective/full"),
        ("tp=2,tp=4", "plan key 'tp' given twice"),
        ("tp=3", "tp\\*pp\\*cp = 3 does not divide the 8 devices"),
        ("zero=4", "plan key 'zero'"),
        ("tp=0", "plan key 'tp'"),
        ("order=tp-dp-pp", "must be a permutation of tp, cp, dp, pp"),
        ("layers=3/x", "plan key 'layers' takes block counts"),
        ("layers=0/0", "plan key 'layers' takes block counts"),
        ("pp=2,dp=4,layers=3/0", "layers= leaves a pipeline stage without blocks"),
        ("pp=2,vpp=2,dp=4,layers=3/0/2/0", "layers= leaves a pipeline stage without blocks"),
        ("ep_overlap=perhaps", "plan key 'ep_overlap' takes on or off"),
        ("dispatcher=deepep", "plan key 'dispatcher' takes flex/alltoall"),
    ],
)
def test_bad_plan_strings(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(text, devices=8)


def test_fields_without_defaults() -> None:
    assert parse_plan_fields("tp=8, pp=2") == {"tp": 8, "pp": 2}


def test_layers_with_pp_times_vpp_counts_is_a_virtual_stage_layout() -> None:
    # DeepSeek-V3's 61 blocks on pp=4, vpp=4: 15 chunks of 4 and a last chunk of 1 (the
    # NVIDIA GB200 recipe puts the MTP block and the loss there).
    layout = "/".join(["4"] * 15 + ["1"])
    p = parse_plan(f"tp=1,pp=4,vpp=4,layers={layout}", devices=256)
    assert p.chunk_layers == (4,) * 15 + (1,)
    assert p.layers_per_stage(61) == (16, 16, 16, 13)    # chunk c runs on stage c mod 4
    assert p.max_chunk_fraction(61) == 4 / 13
    assert parse_plan(p.to_string(), devices=256) == p
    even = parse_plan("tp=1,pp=4,vpp=4", devices=256)
    assert even.chunk_layers is None and even.max_chunk_fraction(64) == 1 / 4


def test_a_virtual_stage_may_be_empty() -> None:
    # Megatron-Bridge's H100 DeepSeek-V3 layout Et|(tt|)*30mL: 1 block, 30 chunks of 2, and an
    # MTP-only last chunk, on pp=8 x vpp=4
    layout = "/".join(["1"] + ["2"] * 30 + ["0"])
    p = parse_plan(f"tp=2,pp=8,vpp=4,layers={layout}", devices=1024)
    assert p.layers_per_stage(61) == (7, 8, 8, 8, 8, 8, 8, 6)
    assert p.max_chunk_fraction(61) == 2 / 6
    assert parse_plan(p.to_string(), devices=1024) == p


def test_ep_overlap_round_trips() -> None:
    p = parse_plan("tp=1,dp=8,ep=8,ep_overlap=on", devices=8)
    assert p.ep_overlap and p.to_string().endswith(",ep_overlap=on")
    assert parse_plan(p.to_string(), devices=8) == p
    assert "ep_overlap" not in parse_plan("tp=1,dp=8,ep=8", devices=8).to_string()


def test_dp_overlap_round_trips_and_defaults_on() -> None:
    p = parse_plan("tp=2,dp=4,zero=1,dp_overlap=off", devices=8)
    assert not p.dp_overlap and "dp_overlap=off" in p.to_string()
    assert parse_plan(p.to_string(), devices=8) == p
    on = parse_plan("tp=2,dp=4", devices=8)
    assert on.dp_overlap and "dp_overlap" not in on.to_string()
    with pytest.raises(PlanError, match="plan key 'dp_overlap' takes on or off"):
        parse_plan("dp=8,dp_overlap=sometimes", devices=8)


def test_virtual_stage_layout_lifts_the_vpp_divides_rule() -> None:
    from planner import TrainingWorkload, load_model
    from planner.validate import plan_problems

    model = load_model("narayanan-1.7b")              # 24 blocks
    wl = TrainingWorkload(global_batch_size=64, seq_len=2048)
    uneven = parse_plan("pp=4,vpp=4", devices=8)        # 6 blocks per stage, vpp 4
    assert "vpp_layers" in {k for k, _ in plan_problems(model, wl, uneven, 8)}
    layout = parse_plan("pp=4,vpp=4,layers=" + "/".join(["2"] * 8 + ["1"] * 8), devices=8)
    assert "vpp_layers" not in {k for k, _ in plan_problems(model, wl, layout, 8)}


def test_loss_kernel_key_round_trips() -> None:
    from planner import LossKernel

    plan = parse_plan("tp=2,loss=fused", devices=8)
    assert plan.loss == LossKernel.FUSED and "loss=fused" in plan.to_string()
    assert parse_plan(plan.to_string(), devices=8) == plan
    assert "loss=" not in parse_plan("tp=2", devices=8).to_string()   # the default is unwritten
    chunked = parse_plan("tp=2,loss=chunked", devices=8)
    assert chunked.loss == LossKernel.CHUNKED and parse_plan(chunked.to_string(), devices=8) == chunked
