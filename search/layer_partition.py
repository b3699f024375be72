"""Split the block sequence into pipeline stages by dynamic programming (Alpa's inter-operator
pass, Zheng et al. 2022 Sec. 5.2, specialised to a fixed number of stages on a chain).

Pure functions over arrays; no cost model imported. Inputs are band tables: entry [k, i, w]
is for stage k holding blocks i..i+w (w = 0 .. W-1), with np.inf where it is not allowed.

Why a bottleneck DP is exact here: the step time of a partition is
    A * max_k C_k + sum_k C_k + max_k G_k
where C_k is stage k's time per micro-batch and G_k its per-step tail (exposed gradient
communication + optimizer). sum_k C_k is the same for every partition (every block, the
embedding, the head and each stage's p2p are counted once), so the objective is
A * max_k C_k + max_k G_k. `partition_layers` first minimises max C (the classic bottleneck
DP), then repeatedly asks for the smallest max C whose tail is strictly below the best tail so
far; each round strictly lowers the tail, and it stops once A * max C alone exceeds the best
objective, so the returned partition minimises the full objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Partition:
    """Inclusive (first, last) block of each stage, and its objective parts."""

    ranges: tuple[tuple[int, int], ...]
    max_time: float
    max_tail: float


def bottleneck(time: np.ndarray, allowed: np.ndarray, num_layers: int) -> tuple[float, list[int]]:
    """Minimise the largest stage time over contiguous partitions of `num_layers` blocks
    into time.shape[0] non-empty stages. Returns (value, first block of each stage); value is
    inf when no partition is allowed. Ties go to the earliest boundaries (deterministic)."""
    pp, L, W = time.shape
    cost = np.where(allowed, time, np.inf)
    nxt = np.full(L + W + 1, np.inf)
    nxt[num_layers] = 0.0
    choice = np.zeros((pp, L), dtype=np.int64)
    idx = np.arange(L)[:, None] + np.arange(W)[None, :] + 1        # j + 1 for each (i, w)
    for k in range(pp - 1, -1, -1):
        cand = np.maximum(cost[k], nxt[np.minimum(idx, L + W)])
        cand[idx > num_layers] = np.inf
        choice[k] = np.argmin(cand, axis=1)
        best = cand[np.arange(L), choice[k]]
        nxt = np.full(L + W + 1, np.inf)
        nxt[:L] = best
    value = float(nxt[0])
    if not np.isfinite(value):
        return value, []
    starts, i = [], 0
    for k in range(pp):
        starts.append(i)
        i += int(choice[k, i]) + 1
    return value, starts


def _ranges(starts: list[int], num_layers: int) -> tuple[tuple[int, int], ...]:
    ends = [*starts[1:], num_layers]
    return tuple((a, b - 1) for a, b in zip(starts, ends))


def _tail_of(tail: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> float:
    return max(float(tail[k, a, b - a]) for k, (a, b) in enumerate(ranges))


def partition_layers(time: np.ndarray, tail: np.ndarray, allowed: np.ndarray, *,
                     num_layers: int, weight: float) -> Partition | None:
    """Minimise weight * max_k time_k + max_k tail_k over allowed partitions (see module
    docstring); None when nothing is allowed."""
    value, starts = bottleneck(time, allowed, num_layers)
    if not starts:
        return None
    ranges = _ranges(starts, num_layers)
    best = Partition(ranges, value, _tail_of(tail, ranges))
    best_obj = weight * best.max_time + best.max_tail
    current_tail = best.max_tail
    while True:
        value, starts = bottleneck(time, allowed & (tail < current_tail), num_layers)
        if not starts or weight * value >= best_obj:
            return best
        ranges = _ranges(starts, num_layers)
        current_tail = _tail_of(tail, ranges)
        obj = weight * value + current_tail
        if obj < best_obj:
            best, best_obj = Partition(ranges, value, current_tail), obj


def brute_force_partition(time: np.ndarray, tail: np.ndarray, allowed: np.ndarray, *,
                          num_layers: int, weight: float) -> float:
    """Exhaustive minimum of the same objective (for tests on small cases)."""
    from itertools import combinations

    pp, _, W = time.shape
    best = np.inf
    for cuts in combinations(range(1, num_layers), pp - 1):
        bounds = (0, *cuts, num_layers)
        ranges = [(bounds[k], bounds[k + 1] - 1) for k in range(pp)]
        if any(b - a >= W or not allowed[k, a, b - a] for k, (a, b) in enumerate(ranges)):
            continue
        t = max(time[k, a, b - a] for k, (a, b) in enumerate(ranges))
        g = max(tail[k, a, b - a] for k, (a, b) in enumerate(ranges))
        best = min(best, weight * t + g)
    return float(best)
