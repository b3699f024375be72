"""The pipeline schedule simulation: orders (1F1B, Megatron-LM's interleaved 1F1B), the
closed-form bubble (Narayanan et al. 2021 Sec. 2.2) and the cost model's pipeline time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.training import pipeline_time
from planner.plan import Plan
from planner.report.schedule import (
    closed_form_bubble_fraction, forward_share, simulate, stage_order,
)


@st.composite
def pipelines(draw: st.DrawFn, *, interleaved: bool) -> tuple[int, int, int]:
    p = draw(st.integers(2 if interleaved else 1, 8))
    v = draw(st.integers(2, 4)) if interleaved else 1
    m = p * draw(st.integers(1, 6)) if interleaved else draw(st.integers(1, 40))
    return p, m, v


@settings(max_examples=60, deadline=None)
@given(pipelines(interleaved=False), st.floats(0.1, 5.0), st.floats(0.1, 5.0))
def test_1f1b_bubble_matches_closed_form(pmv: tuple[int, int, int], f: float, b: float) -> None:
    p, m, v = pmv
    tl = simulate(forward_s=[f] * p, backward_s=[b] * p, num_microbatches=m)
    expected = closed_form_bubble_fraction(num_stages=p, num_microbatches=m)
    assert tl.bubble_fraction == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert tl.makespan_s == pytest.approx((m + p - 1) * (f + b), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(pipelines(interleaved=True), st.floats(0.1, 5.0), st.floats(0.1, 5.0))
def test_interleaved_bubble_matches_closed_form(pmv: tuple[int, int, int], f: float,
                                                b: float) -> None:
    p, m, v = pmv
    tl = simulate(forward_s=[f] * p, backward_s=[b] * p, num_microbatches=m, num_chunks=v)
    expected = closed_form_bubble_fraction(num_stages=p, num_microbatches=m, num_chunks=v)
    assert expected == pytest.approx((p - 1) / (v * m))
    assert tl.bubble_fraction == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.booleans(), st.data())
def test_uneven_stages_never_exceed_the_cost_models_pipeline_time(interleaved: bool,
                                                                  data: st.DataObject) -> None:
    """The cost model's (m-1)*max C + sum C (1F1B) and m*max C + (p-1)*max C/v (interleaved)
    bound the data-flow simulation from above, with equality for equal stages."""
    p, m, v = data.draw(pipelines(interleaved=interleaved))
    times = data.draw(st.lists(st.floats(0.2, 3.0), min_size=p, max_size=p))
    share = forward_share("none")
    tl = simulate(forward_s=[c * share for c in times], backward_s=[c * (1 - share) for c in times],
                  num_microbatches=m, num_chunks=v)
    bound = pipeline_time(Plan(pp=p, vpp=v), m, times)
    assert tl.makespan_s <= bound * (1 + 1e-9)
    assert tl.makespan_s >= m * max(times) * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(pipelines(interleaved=False))
def test_1f1b_order_keeps_at_most_p_minus_s_in_flight(pmv: tuple[int, int, int]) -> None:
    """PipeDream-Flush: stage s starts min(p-s-1, m) forwards before its first backward and
    never holds more than p-s micro-batches' activations (Narayanan et al. 2021 Sec. 2.2.1)."""
    p, m, _ = pmv
    for s in range(p):
        order = stage_order(stage=s, num_stages=p, num_microbatches=m)
        kinds = [k for k, _, _ in order]
        assert kinds.index("B") == min(p - s - 1, m) + (1 if m > p - s - 1 else 0)
        in_flight, peak = 0, 0
        for k, _, _ in order:
            in_flight += 1 if k == "F" else -1
            peak = max(peak, in_flight)
        assert peak == min(p - s, m)
        assert sorted((k, mb) for k, mb, _ in order) == sorted(
            [("F", i) for i in range(m)] + [("B", i) for i in range(m)])


def test_interleaved_order_follows_megatron() -> None:
    """p=4, v=2, m=8 on stage 0: warm-up 2*(4-0-1) + (2-1)*4 = 10 forwards, chunk 0 for
    micro-batches 0-3, chunk 1 for 0-3, then chunk 0 for 4-5; the first backward is chunk 1
    of micro-batch 0 (megatron/schedules.py, get_model_chunk_id)."""
    order = stage_order(stage=0, num_stages=4, num_microbatches=8, num_chunks=2)
    assert order[:11] == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("F", 3, 0), ("F", 0, 1),
                          ("F", 1, 1), ("F", 2, 1), ("F", 3, 1), ("F", 4, 0), ("F", 5, 0),
                          ("F", 6, 0)]
    assert order[11] == ("B", 0, 1)
    last = stage_order(stage=3, num_stages=4, num_microbatches=8, num_chunks=2)
    assert [k for k, _, _ in last[:5]] == ["F", "F", "F", "F", "F"]
    assert last[5] == ("B", 0, 1)


def test_interleaved_with_m_equal_p_runs_all_forwards_first() -> None:
    order = stage_order(stage=1, num_stages=4, num_microbatches=4, num_chunks=2)
    assert [k for k, _, _ in order] == ["F"] * 8 + ["B"] * 8


def test_interleaved_needs_m_divisible_by_p() -> None:
    with pytest.raises(ValueError, match="divisible"):
        stage_order(stage=0, num_stages=4, num_microbatches=6, num_chunks=2)


def test_dependencies_hold_in_the_timeline() -> None:
    """Every forward starts after the previous stage's forward of the same micro-batch and
    chunk; every backward after the next stage's backward."""
    tl = simulate(forward_s=[1.0, 1.5, 0.5], backward_s=[2.0, 3.0, 1.0], num_microbatches=6,
                  num_chunks=2)
    end = {(o.kind, o.stage, o.chunk, o.microbatch): o.end_s for o in tl.ops}
    for o in tl.ops:
        if o.kind == "F" and o.stage > 0:
            assert o.start_s >= end[("F", o.stage - 1, o.chunk, o.microbatch)] - 1e-12
        if o.kind == "B" and o.stage < 2:
            assert o.start_s >= end[("B", o.stage + 1, o.chunk, o.microbatch)] - 1e-12
    for s in range(3):
        mine = [o for o in tl.ops if o.stage == s]
        assert all(a.end_s <= b.start_s + 1e-12 for a, b in zip(mine, mine[1:]))


def test_forward_share_by_recompute() -> None:
    assert forward_share("full") == pytest.approx(1 / 4)
    assert forward_share("selective") == forward_share("none") == pytest.approx(1 / 3)


# ----- DualPipe ------------------------------------------------------------------------------

from planner.report.schedule import dualpipe_order, simulate_dualpipe  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 4, 6, 8, 16]), st.integers(1, 5), st.floats(0.1, 3.0))
def test_dualpipe_bubble_is_table_2_at_its_chunk_ratio(p: int, k: int, f: float) -> None:
    """Equal stages with F:B:W = 1:2:1: DualPipe's own order, simulated, leaves exactly the
    DeepSeek-V3 report's Table 2 bubble (p/2-1)(F&B + B - 3W), F&B = F + B, for any even
    m >= 2p; the busiest rank works m (F + B)."""
    m = 2 * p * k
    tl = simulate_dualpipe(forward_s=[f] * p, backward_s=[2 * f] * p, weight_s=[f] * p,
                           num_microbatches=m)
    assert tl.ideal_s == pytest.approx(m * 3 * f, rel=1e-12)
    assert tl.bubble_s == pytest.approx((p / 2 - 1) * (3 * f + 2 * f - 3 * f), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([4, 8, 16]), st.floats(0.3, 2.0), st.floats(1.5, 3.0), st.floats(0.2, 0.6))
def test_dualpipe_table_2_elsewhere(p: int, f: float, ratio: float, wshare: float) -> None:
    """At other ratios Table 2 is an approximation: with B/F in 1.5-3 and W/B in 0.2-0.6 (the
    cost model's chunks lie there: W is the blocks' weight-gradient GEMMs) the simulated
    bubble is within (p/2-1) F of it (one forward chunk per pair of ranks), and never depends
    on m."""
    b, w = ratio * f, wshare * ratio * f
    sims = [simulate_dualpipe(forward_s=[f] * p, backward_s=[b] * p, weight_s=[w] * p,
                              num_microbatches=m).bubble_s for m in (2 * p, 4 * p)]
    assert sims[0] == pytest.approx(sims[1], rel=1e-9)
    assert abs(sims[0] - (p / 2 - 1) * (f + 2 * b - 3 * w)) <= f * (p / 2 - 1) * (1 + 1e-9)


@pytest.mark.parametrize("p", [2, 4, 8, 16])
def test_dualpipe_order_counts_and_in_flight(p: int) -> None:
    """Every rank runs m forwards and m backwards (half per direction), one W per split
    backward, and holds at most p + 1 micro-batches' activations (Table 2's "PP+1"): p - s of
    its stage s, as the cost model's memory counts (memory.in_flight_microbatches)."""
    m = 4 * p
    for r in range(p):
        order = dualpipe_order(rank=r, num_ranks=p, num_microbatches=m)
        forwards = {ph: 0 for ph in "01"}
        backwards = {ph: 0 for ph in "01"}
        split = weights = 0
        live = {ph: 0 for ph in "01"}
        peak = {ph: 0 for ph in "01"}
        total_peak = 0
        for op in order:
            if op[0] == "W":
                weights += 1
                continue
            fwd_ph = op[1] if op[0] in ("F", "FB", "FBs") else None
            bwd_ph = op[1] if op[0] == "B" else op[2] if op[0] in ("FB", "FBs") else None
            if fwd_ph is not None:
                forwards[fwd_ph] += 1
                live[fwd_ph] += 1
                peak[fwd_ph] = max(peak[fwd_ph], live[fwd_ph])
                total_peak = max(total_peak, sum(live.values()))
            if bwd_ph is not None:
                backwards[bwd_ph] += 1
                live[bwd_ph] -= 1
                split += op[0] == "B" and op[2] == "zb"
        assert forwards == backwards == {"0": m // 2, "1": m // 2}
        assert weights == split
        h = min(r, p - 1 - r)
        assert total_peak == p + 1
        assert peak == {"0": p - h, "1": h + 1}


def test_dualpipe_rejects_what_dualpipe_rejects() -> None:
    with pytest.raises(ValueError, match="DualPipe needs"):
        dualpipe_order(rank=0, num_ranks=3, num_microbatches=12)
    with pytest.raises(ValueError, match="DualPipe needs"):
        dualpipe_order(rank=0, num_ranks=4, num_microbatches=6)
