"""MoE load statistics against seeded Monte Carlo simulation of the routing they describe."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cost_models import moe_balance as mb
from planner.errors import SpecError


def _zipf(experts: int, alpha: float, seed: int = 1) -> list[float]:
    w = 1.0 / np.arange(1, experts + 1) ** alpha
    return list(np.random.default_rng(seed).permutation(w))


def _simulate_loads(tokens: int, experts: int, top_k: int, popularity, trials: int,
                    seed: int = 0) -> np.ndarray:
    """(trials, experts) loads: each token takes the top_k of log p + Gumbel noise, which is
    sequential sampling without replacement in proportion to p (the documented model)."""
    rng = np.random.default_rng(seed)
    p = np.full(experts, 1 / experts) if popularity is None else np.asarray(popularity)
    logp = np.log(p / p.sum())
    out = np.empty((trials, experts))
    for t in range(trials):
        keys = logp[None, :] + rng.gumbel(size=(tokens, experts))
        top = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
        out[t] = np.bincount(top.ravel(), minlength=experts)
    return out


CASES = [  # tokens, experts, top_k, ranks, zipf alpha (None = uniform)
    (64, 8, 2, 2, None), (64, 8, 2, 4, None), (32, 8, 2, 8, None), (128, 8, 1, 8, None),
    (256, 16, 2, 8, None), (512, 32, 4, 4, None), (256, 16, 2, 4, 0.8),
    (128, 8, 2, 4, 1.2), (256, 8, 2, 2, 0.8), (1024, 16, 1, 16, 0.8), (96, 12, 3, 3, 1.0),
]


@pytest.mark.parametrize("tokens,experts,top_k,ranks,alpha", CASES)
def test_expected_max_load_matches_simulation(tokens, experts, top_k, ranks, alpha):
    pop = None if alpha is None else _zipf(experts, alpha)
    loads = _simulate_loads(tokens, experts, top_k, pop, trials=1500)
    rank_max = loads.reshape(len(loads), ranks, experts // ranks).sum(axis=2).max(axis=1)
    stats = mb.load_stats(tokens, experts, top_k, ranks=ranks, popularity=pop)
    sim = rank_max.mean()
    # Monte Carlo standard error is below 0.2% here; allow 2%.
    assert stats.expected_max == pytest.approx(sim, rel=0.02)
    assert stats.mean == tokens * top_k / ranks
    assert stats.imbalance == pytest.approx(stats.expected_max / stats.mean)


def test_quadrature_path_matches_simulation():
    """64**4 > ENUMERATION_LIMIT: inclusion by quadrature, rank law by the max-entropy fit."""
    pop = _zipf(64, 1.0)
    assert 64**4 > mb.ENUMERATION_LIMIT
    loads = _simulate_loads(512, 64, 4, pop, trials=600)
    sim_pi = loads.mean(axis=0) / 512
    np.testing.assert_allclose(mb.inclusion_probabilities(64, 4, pop), sim_pi, atol=0.01)
    rank_max = loads.reshape(len(loads), 8, 8).sum(axis=2).max(axis=1).mean()
    assert mb.expected_max_load(512, 64, 4, ranks=8, popularity=pop) == pytest.approx(
        rank_max, rel=0.02)


def test_quadrature_equals_enumeration():
    rng = np.random.default_rng(3)
    for experts, k in [(16, 2), (12, 3), (8, 4)]:
        p = rng.dirichlet(np.full(experts, 0.5))
        np.testing.assert_allclose(mb._inclusion_quadrature(p, k), mb._inclusion_enumerated(p, k),
                                   atol=1e-5)


def test_inclusion_probabilities_sum_to_top_k():
    pop = _zipf(256, 1.0)
    assert mb.inclusion_probabilities(256, 8, pop).sum() == pytest.approx(8.0, abs=1e-6)
    assert np.all(mb.inclusion_probabilities(10, 3) == 0.3)


def test_uniform_rank_count_is_hypergeometric():
    (pmf,) = set(map(tuple, mb.rank_count_pmfs(8, 2, 4)))
    # 2 of 8 experts on the rank: P(0) = C(6,2)/C(8,2), P(1) = 2*6/28, P(2) = 1/28
    assert pmf == pytest.approx((15 / 28, 12 / 28, 1 / 28))
    # the max-entropy fit of a uniform popularity gives the same law
    fit = mb.rank_count_pmfs(8, 2, 4, popularity=[1.0] * 8)[0]
    np.testing.assert_allclose(fit, pmf, atol=1e-9)


def test_one_rank_and_large_token_counts():
    assert mb.load_stats(1000, 8, 2, ranks=1).imbalance == 1.0
    big = mb.load_stats(4096 * 8, 256, 8, ranks=32)        # normal-law path
    assert 4096 * 8 * 8 * 32 // 32 > mb.EXACT_SUPPORT_LIMIT // 8
    # Gaussian value: mean + sd * sqrt(R/(R-1)) * E[max of 32 standard normals] (2.0697)
    m, e, k, r = 8, 256, 8, 32
    var_one = k * (m / e) * (1 - m / e) * (e - k) / (e - 1)     # hypergeometric variance
    sd = math.sqrt(4096 * 8 * var_one)
    assert big.expected_max == pytest.approx(big.mean + sd * math.sqrt(r / (r - 1)) * 2.0697,
                                             rel=2e-3)


def test_more_skew_means_more_imbalance():
    flat = mb.imbalance_factor(4096, 64, 2, ranks=8, popularity=_zipf(64, 0.2))
    skew = mb.imbalance_factor(4096, 64, 2, ranks=8, popularity=_zipf(64, 1.2))
    assert 1.0 < mb.imbalance_factor(4096, 64, 2, ranks=8) < flat < skew


@pytest.mark.parametrize("tokens,experts,top_k,cf,alpha", [
    (256, 8, 2, 1.0, None), (256, 8, 2, 1.25, None), (128, 16, 2, 1.0, 0.8),
    (512, 8, 1, 1.5, 1.0), (64, 4, 2, 1.0, None),
])
def test_capacity_drop_matches_simulation(tokens, experts, top_k, cf, alpha):
    pop = None if alpha is None else _zipf(experts, alpha)
    loads = _simulate_loads(tokens, experts, top_k, pop, trials=2000, seed=5)
    cap, frac = mb.capacity_drop(tokens, experts, top_k, cf, popularity=pop)
    assert cap == math.ceil(cf * tokens * top_k / experts)
    sim = np.clip(loads - cap, 0, None).sum(axis=1).mean() / (tokens * top_k)
    assert frac == pytest.approx(sim, rel=0.05, abs=2e-4)


def test_effective_max_load_with_capacity():
    pop = _zipf(8, 1.0)
    loads = _simulate_loads(256, 8, 2, pop, trials=2000, seed=9)
    cap = mb.expert_capacity(256, 8, 2, 1.25)
    sim = np.minimum(loads, cap).max(axis=1).mean()           # one expert per rank: exact
    got = mb.effective_max_load(256, 8, 2, 1.25, ranks=8, popularity=pop)
    assert got == pytest.approx(sim, rel=0.02)
    assert got <= cap
    dropless = mb.effective_max_load(256, 8, 2, None, ranks=8, popularity=pop)
    assert dropless == mb.expected_max_load(256, 8, 2, ranks=8, popularity=pop) > got


@pytest.mark.parametrize("kwargs,match", [
    ({"popularity": [0.5, 0.5]}, "has 2 values but the model has 8"),
    ({"popularity": [-1.0] + [1.0] * 7}, "non-negative"),
    ({"popularity": [1.0] + [0.0] * 7}, "at least 2 positive"),
    ({"ranks": 3}, "must divide the 8 experts"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(SpecError, match=match):
        mb.expected_max_load(100, 8, 2, **kwargs)


def test_bad_capacity_factor():
    with pytest.raises(SpecError, match="capacity factor"):
        mb.capacity_drop(100, 8, 2, 0.0)
