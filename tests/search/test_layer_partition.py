"""The stage-split DP (search/layer_partition.py) against exhaustive enumeration.

Random band tables (pp 1-5 stages, up to 10 blocks, W = L - pp + 1 or narrower), random
stage times and tails (continuous, and small integers so that ties are common), random
allowed masks (including masks that allow nothing): `partition_layers` must reach the
brute-force minimum of weight * max C + max G, return a partition that is allowed and whose
reported parts are its own, and `bottleneck` must reach the brute-force minimum of max C.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from search.layer_partition import bottleneck, brute_force_partition, partition_layers

CASES = 800


def _tables(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """One random problem: (time, tail, allowed, num_layers, weight)."""
    pp = int(rng.integers(1, 6))
    L = int(rng.integers(pp, 11))
    W = L - pp + 1
    if rng.random() < 0.2:                       # the driver narrows the band sometimes
        W = int(rng.integers(1, W + 1))
    shape = (pp, L, W)
    if rng.random() < 0.4:                       # ties everywhere
        time = rng.integers(0, 4, size=shape).astype(float)
        tail = rng.integers(0, 4, size=shape).astype(float)
    else:
        time = rng.exponential(1.0, size=shape)
        tail = rng.exponential(rng.choice([0.01, 1.0, 100.0]), size=shape)
    if rng.random() < 0.3:                       # realistic: time grows with the block count
        time = np.cumsum(time, axis=2)
    density = rng.choice([0.0, 0.3, 0.7, 0.9, 1.0])
    allowed = rng.random(shape) < density
    weight = float(rng.choice([1e-12, 0.5, 1.0, 3.0, 31.0, 1e6]))
    return time, tail, allowed, L, weight


def _brute_bottleneck(time: np.ndarray, allowed: np.ndarray, L: int) -> float:
    pp, _, W = time.shape
    best = np.inf
    for cuts in combinations(range(1, L), pp - 1):
        b = (0, *cuts, L)
        ranges = [(b[k], b[k + 1] - 1) for k in range(pp)]
        if any(hi - lo >= W or not allowed[k, lo, hi - lo] for k, (lo, hi) in enumerate(ranges)):
            continue
        best = min(best, max(time[k, lo, hi - lo] for k, (lo, hi) in enumerate(ranges)))
    return float(best)


def _check_ranges(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]], pp: int, L: int,
                  W: int, allowed: np.ndarray) -> None:
    assert len(ranges) == pp
    assert ranges[0][0] == 0 and ranges[-1][1] == L - 1
    for k, (lo, hi) in enumerate(ranges):
        assert lo <= hi, ranges                                   # non-empty
        assert hi - lo < W, ranges                                # inside the band
        assert allowed[k, lo, hi - lo], (k, lo, hi)               # allowed
        if k:
            assert lo == ranges[k - 1][1] + 1, ranges             # contiguous


@pytest.mark.parametrize("chunk", range(4))
def test_partition_layers_matches_brute_force(chunk: int) -> None:
    feasible = infeasible = 0
    for seed in range(chunk * CASES // 4, (chunk + 1) * CASES // 4):
        rng = np.random.default_rng(seed)
        time, tail, allowed, L, weight = _tables(rng)
        pp, _, W = time.shape
        want = brute_force_partition(time, tail, allowed, num_layers=L, weight=weight)
        got = partition_layers(time, tail, allowed, num_layers=L, weight=weight)
        if not np.isfinite(want):
            assert got is None, (seed, got)
            infeasible += 1
            continue
        assert got is not None, seed
        feasible += 1
        _check_ranges(got.ranges, pp, L, W, allowed)
        # The reported parts are those of the returned partition.
        assert got.max_time == max(time[k, a, b - a] for k, (a, b) in enumerate(got.ranges))
        assert got.max_tail == max(tail[k, a, b - a] for k, (a, b) in enumerate(got.ranges))
        obj = weight * got.max_time + got.max_tail
        assert obj == pytest.approx(want, rel=1e-12, abs=1e-300), (seed, obj, want)
        assert obj >= want * (1 - 1e-12)
    # Both branches are exercised by every chunk.
    assert feasible > 50 and infeasible > 10, (feasible, infeasible)


@pytest.mark.parametrize("chunk", range(2))
def test_bottleneck_matches_brute_force(chunk: int) -> None:
    for seed in range(10_000 + chunk * CASES // 2, 10_000 + (chunk + 1) * CASES // 2):
        rng = np.random.default_rng(seed)
        time, _, allowed, L, _ = _tables(rng)
        pp, _, W = time.shape
        want = _brute_bottleneck(time, allowed, L)
        value, starts = bottleneck(time, allowed, L)
        if not np.isfinite(want):
            assert not np.isfinite(value) and starts == [], seed
            continue
        assert value == want, (seed, value, want)
        assert len(starts) == pp and starts[0] == 0 and starts == sorted(set(starts))
        ranges = [(a, b - 1) for a, b in zip(starts, [*starts[1:], L])]
        _check_ranges(ranges, pp, L, W, allowed)
        assert max(time[k, a, b - a] for k, (a, b) in enumerate(ranges)) == want


def test_fully_infeasible_and_trivial_cases() -> None:
    time = np.ones((3, 6, 4))
    none = np.zeros_like(time, dtype=bool)
    assert partition_layers(time, time, none, num_layers=6, weight=1.0) is None
    assert brute_force_partition(time, time, none, num_layers=6, weight=1.0) == np.inf
    value, starts = bottleneck(time, none, 6)
    assert value == np.inf and starts == []
    # One stage: the only partition is the whole chain.
    t1 = np.arange(5, dtype=float)[None, None, :].repeat(5, axis=1)
    ok = np.ones_like(t1, dtype=bool)
    p = partition_layers(t1, t1, ok, num_layers=5, weight=2.0)
    assert p is not None and p.ranges == ((0, 4),) and p.max_time == 4.0
    # pp == L: one block per stage, forced.
    tL = np.random.default_rng(0).random((4, 4, 1))
    p = partition_layers(tL, tL, np.ones_like(tL, dtype=bool), num_layers=4, weight=1.0)
    assert p is not None and p.ranges == ((0, 0), (1, 1), (2, 2), (3, 3))


def test_tail_can_outweigh_the_bottleneck() -> None:
    """With a small weight the best split is not the min-max-time one: the DP must trade."""
    L, pp = 4, 2
    W = L - pp + 1
    time = np.zeros((pp, L, W))
    tail = np.zeros((pp, L, W))
    for k in range(pp):
        for i in range(L):
            for w in range(W):
                time[k, i, w] = w + 1.0                      # balanced split is fastest
                tail[k, i, w] = 10.0 if (k == 0 and w == 1) else 0.0
    ok = np.ones_like(time, dtype=bool)
    p = partition_layers(time, tail, ok, num_layers=L, weight=1.0)
    assert p is not None
    # 2/2 costs 2 + 10; 1/3 costs 3 + 0; 3/1 costs 3 + 0 (first stage w=2, tail 0).
    assert weight_obj(p, 1.0) == 3.0 == brute_force_partition(time, tail, ok, num_layers=L, weight=1.0)
    # A large weight makes the balanced split win despite its tail.
    p = partition_layers(time, tail, ok, num_layers=L, weight=100.0)
    assert p is not None and p.ranges == ((0, 1), (2, 3))


def weight_obj(p: object, weight: float) -> float:
    return weight * p.max_time + p.max_tail  # type: ignore[attr-defined]
