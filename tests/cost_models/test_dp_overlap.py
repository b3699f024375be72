"""Plan key dp_overlap: off runs every data-parallel collective alone (cost_models.tables)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cost_models import comm, efficiency
from planner import ModelSpec, Plan, TrainingWorkload, load_cluster
from planner.api import evaluate
from planner.model import weight_bytes_per_param

GPT = ModelSpec(name="gpt-1b", num_layers=16, hidden_size=2048, num_attention_heads=16,
                ffn_hidden_size=8192, vocab_size=51200)
WL = TrainingWorkload(global_batch_size=64, seq_len=2048)


def _eval(plan: Plan, devices: int, *, sms: int | None = None, monkeypatch=None):
    if sms is not None:
        monkeypatch.setitem(efficiency._BY_NAME, "a100",
                            dataclasses.replace(efficiency._BY_NAME["a100"], collective_sms=sms))
    return evaluate(GPT, load_cluster("dgx-a100"), WL, plan, devices=devices)


def test_off_exposes_the_whole_all_reduce(monkeypatch) -> None:
    """DDP on one node without contention: overlapped, only the last block's bucket R / layers
    is exposed (test_overlap_contention); off, all of R, so exactly layers times as much, and
    the step grows by the difference."""
    on = _eval(Plan(dp=8, mbs=8), 8, sms=0, monkeypatch=monkeypatch)
    off = _eval(Plan(dp=8, mbs=8, dp_overlap=False), 8, sms=0, monkeypatch=monkeypatch)
    assert on.breakdown["dp_comm"] > 0
    assert off.breakdown["dp_comm"] == pytest.approx(on.breakdown["dp_comm"] * GPT.num_layers,
                                                     rel=1e-9)
    assert off.step_time_s - on.step_time_s == pytest.approx(
        off.breakdown["dp_comm"] - on.breakdown["dp_comm"], rel=1e-9)


def test_off_takes_no_compute_units(monkeypatch) -> None:
    """Nothing overlaps, so the SMs NCCL holds slow no compute: dp_comm does not depend on them."""
    plan = Plan(dp=16, mbs=4, zero=1, dp_overlap=False)
    free = _eval(plan, 16, sms=0, monkeypatch=monkeypatch).breakdown["dp_comm"]
    busy = _eval(plan, 16, sms=16, monkeypatch=monkeypatch).breakdown["dp_comm"]
    assert free == busy > 0


def test_zero1_off_is_a_reduce_scatter_and_a_gather() -> None:
    """ZeRO-1 across two DGX A100 nodes: the gradients' reduce-scatter after the last backward
    and the weights' all-gather after the optimizer step, each timed by comm.coefficients on
    the data-parallel group's links (16 ranks, 8 per node)."""
    cluster = load_cluster("dgx-a100")
    links = comm.group_links(cluster, size=16, stride=1)
    n = GPT.params
    g, w = WL.grad_bytes, weight_bytes_per_param(WL.dtype)
    rs_b, rs_f = comm.coefficients("reduce_scatter", links)
    ag_b, ag_f = comm.coefficients("all_gather", links)
    want = rs_b * n * g + rs_f + ag_b * n * w + ag_f
    got = _eval(Plan(dp=16, mbs=4, zero=1, dp_overlap=False), 16).breakdown["dp_comm"]
    assert got == pytest.approx(want, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(zero=st.integers(0, 3), dp=st.sampled_from([2, 4, 8, 16]), tp=st.sampled_from([1, 2]),
       pp=st.sampled_from([1, 4, 8]), mbs=st.sampled_from([1, 2, 4]))
@example(zero=0, dp=16, tp=1, pp=8, mbs=1)   # 2 blocks per stage: the double-counted bucket
def test_off_is_never_faster(zero: int, dp: int, tp: int, pp: int, mbs: int) -> None:
    """Running the data-parallel collectives alone never beats overlapping them, and only
    dp_comm changes: compute, bubble and memory are the same plan's. Stages of 2 to 16 blocks
    across up to 32 nodes: with few blocks per stage the last block's bucket is a large part
    of a reduction that can outlast the backward it hides behind (that case once counted the
    bucket twice)."""
    if zero >= 2 and pp > 1:
        zero = 1                                   # ZeRO-2/3 with pp > 1 is refused
    on = Plan(tp=tp, pp=pp, dp=dp, mbs=mbs, zero=zero)
    off = on.model_copy(update={"dp_overlap": False})
    n = tp * pp * dp
    a, b = _eval(on, n), _eval(off, n)
    assert b.step_time_s >= a.step_time_s
    # the step ends with the stage whose data-parallel tail (exposed collectives + optimizer
    # step) is longest, which may be another stage once nothing overlaps
    tail = ("dp_comm", "optimizer")
    assert sum(b.breakdown[k] for k in tail) >= sum(a.breakdown[k] for k in tail)
    for key in ("compute", "recompute", "tp_comm", "pp_comm", "bubble"):
        assert b.breakdown[key] == a.breakdown[key]
    assert b.peak_memory_gib == a.peak_memory_gib
