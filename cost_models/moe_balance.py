"""MoE routing statistics: expected load imbalance, capacity factor and dropped tokens.

Decides: for `tokens` tokens that each pick `top_k` distinct experts of `experts` (uniformly at
random, or in proportion to a popularity vector), the expected load of the most loaded
expert-parallel rank, the imbalance factor (expected maximum / mean), the expert capacity of a
capacity factor and the expected fraction of assignments it drops. Does not decide how a load
turns into time or bytes: the training and inference cost models do that with these numbers.

Routing model. Popularity p (normalised to sum 1) is the router's preference; a token picks its
top_k experts one after another, each in proportion to p among those not yet picked (sampling
without replacement, the Plackett-Luce / Gumbel-top-k order, equivalent to top-k of
log p + Gumbel noise). With no popularity every expert has p = 1/experts and a token's top_k
experts are a uniform random k-subset, so the number of them on a rank holding m experts is
hypergeometric(experts, m, top_k). Tokens route independently.

Method.
1. Inclusion probabilities pi_e = P(token picks expert e): exact by enumerating the ordered
   draws when experts**top_k <= ENUMERATION_LIMIT, else by quadrature of the exponential race
   (Gumbel-top-k): pi_e = int_0^1 P(fewer than k of the other keys arrive before t(v)) dv with
   t(v) = -ln(1 - v) / p_e (Gauss-Legendre, QUADRATURE_NODES nodes).
2. Per-token count on a rank: the maximum-entropy (conditional Poisson) design with the same
   pi_e, fitted by the fixed point of Chen, Dempster & Liu 1994 (Biometrika 81(3), "Weighted
   finite population sampling to maximize entropy", Sec. 3). P(c_r = j) =
   e_j(w_r) e_{k-j}(w_rest) / e_k(w) with e_j elementary symmetric polynomials. It is exact
   for uniform routing (the hypergeometric law) and a close approximation of Plackett-Luce
   otherwise (tested against simulation).
3. A rank's load is the sum of `tokens` i.i.d. such counts: exact T-fold convolution (FFT
   powers) while the support has at most EXACT_SUPPORT_LIMIT points, else the normal law with
   the same mean and variance (central limit theorem).
4. Maximum over ranks. Rank loads always sum to tokens*top_k, so they are negatively
   correlated; for exchangeable loads the correlation is -1/(R-1). Writing such loads as
   independent Z_r minus their average (Gaussian case exactly), max_r L_r = mu +
   sqrt(R/(R-1)) * (max_r Z_r - mu): each rank's deviation from its mean is scaled by
   sqrt(R/(R-1)) and the maximum of independent variables is integrated,
   E[max] = z_lo + int_{z_lo} (1 - prod_r F_r(z)) dz (the extreme-value expectation, Gumbel
   1958, "Statistics of Extremes", Ch. 2). For R = 2 this gives mu + sigma*sqrt(2/pi), the
   exact Gaussian value; the R -> infinity growth mu + sigma*sqrt(2 ln R) is Raab & Steger
   1998 ("Balls into bins - a simple and tight analysis", RANDOM'98, Theorem 1, case
   m >> n log n). Tested against a seeded Monte Carlo simulation.

Capacity (GShard, Lepikhin et al. 2020, arXiv:2006.16668 Sec. 2.2 "expert capacity";
Switch Transformer, Fedus et al. 2021, arXiv:2101.03961 Sec. 2.2, expert capacity =
tokens per batch / number of experts * capacity factor; with top-k routing the assignments
are tokens*k): capacity = ceil(capacity_factor * tokens * top_k / experts). An expert's load is
Binomial(tokens, pi_e) exactly (a token picks an expert at most once), and its dropped
assignments are E[max(0, L_e - capacity)].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.errors import SpecError

ENUMERATION_LIMIT = 2**18
"""Largest experts**top_k for which inclusion probabilities are computed by enumerating every
ordered draw (exact); above it, quadrature of the exponential race."""
QUADRATURE_NODES = 256
"""Gauss-Legendre nodes of the exponential-race integral (sum of pi_e matches top_k to ~1e-9
on the presets' sizes; tested against enumeration)."""
EXACT_SUPPORT_LIMIT = 2**16
"""Largest support (tokens * max per-token count + 1) convolved exactly; above, the normal law."""
_GRID_POINTS = 8192   # integration grid of the maximum; step = spread / 8192
_TAIL = 1e-12         # probability mass ignored in each rank's tails


@dataclass(frozen=True)
class LoadStats:
    """Expected load of the most loaded EP rank, in token-expert assignments."""

    expected_max: float     # E[max over ranks of the rank's load]
    mean: float             # tokens * top_k / ranks
    imbalance: float        # expected_max / mean (1 = perfectly balanced)


# --------------------------------------------------------------------------- inputs


def normalise_popularity(popularity: Sequence[float] | None, experts: int,
                         top_k: int) -> np.ndarray:
    """Popularity as probabilities summing to 1 (uniform when None). Any non-negative weights
    are accepted (token counts, say) and divided by their sum.

    Raises:
        SpecError: wrong length, a negative or non-finite value, or fewer than top_k experts
            with a non-zero weight.
    """
    if experts < 1 or top_k < 1 or top_k > experts:
        raise SpecError(f"need 1 <= top_k <= experts, got top_k={top_k}, experts={experts}")
    if popularity is None:
        return np.full(experts, 1.0 / experts)
    p = np.asarray(popularity, dtype=float)
    if p.ndim != 1 or p.size != experts:
        raise SpecError(f"popularity has {p.size} values but the model has {experts} experts; "
                        "give one weight per expert")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise SpecError("popularity weights must be finite and non-negative; fix the values")
    if np.count_nonzero(p) < top_k:
        raise SpecError(f"only {np.count_nonzero(p)} experts have a non-zero popularity but each "
                        f"token picks {top_k}; give at least {top_k} positive weights")
    return p / p.sum()


def _check_counts(tokens: int, experts: int, ranks: int) -> None:
    if tokens < 0:
        raise SpecError(f"tokens must be >= 0, got {tokens}")
    if ranks < 1 or experts % ranks:
        raise SpecError(f"ranks ({ranks}) must divide the {experts} experts")


# --------------------------------------------------------------------------- per token


def inclusion_probabilities(experts: int, top_k: int,
                            popularity: Sequence[float] | None = None) -> np.ndarray:
    """pi_e = probability that one token routes to expert e (sums to top_k).

    Args:
        experts: routed experts of the layer.
        top_k: distinct experts each token picks.
        popularity: router preference per expert (None = uniform); see module docstring.
    Returns:
        Array of `experts` probabilities.
    """
    p = normalise_popularity(popularity, experts, top_k)
    if popularity is None or np.allclose(p, p[0]):
        return np.full(experts, top_k / experts)
    return _inclusion_cached(tuple(p.tolist()), top_k).copy()


@functools.lru_cache(maxsize=64)
def _inclusion_cached(p_key: tuple[float, ...], top_k: int) -> np.ndarray:
    """Pure function of (popularity, top_k), memoised: the quadrature takes ~1 s at 256 x 8."""
    p = np.asarray(p_key)
    if p.size**top_k <= ENUMERATION_LIMIT:
        return _inclusion_enumerated(p, top_k)
    return _inclusion_quadrature(p, top_k)


def _inclusion_enumerated(p: np.ndarray, top_k: int) -> np.ndarray:
    """Exact: walk every ordered sequence of top_k distinct draws (experts**top_k of them)."""
    n = p.size
    prob = np.ones(1)
    drawn = np.zeros((1, n), dtype=bool)
    incl = np.zeros(n)
    for _ in range(top_k):
        left = np.where(drawn, 0.0, p[None, :])
        step = prob[:, None] * left / left.sum(axis=1, keepdims=True)   # (states, n)
        incl += step.sum(axis=0)
        idx_state, idx_expert = np.nonzero(step)
        prob = step[idx_state, idx_expert]
        drawn = drawn[idx_state].copy()
        drawn[np.arange(idx_state.size), idx_expert] = True
    return incl


def _inclusion_quadrature(p: np.ndarray, top_k: int) -> np.ndarray:
    """Exponential race: keys X_e ~ Exp(p_e); the top_k smallest keys are picked."""
    x, wts = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
    v = 0.5 * (x + 1.0)
    w = 0.5 * wts
    out = np.zeros(p.size)
    pos = np.nonzero(p > 0)[0]
    t = -np.log1p(-v)[None, :] / p[pos, None]                  # (experts, nodes)
    # dist[e, node, j] = P(exactly j of the other experts' keys before t[e, node]), j < top_k
    dist = np.zeros((pos.size, v.size, top_k))
    dist[:, :, 0] = 1.0
    for j_idx in range(p.size):
        q = -np.expm1(-p[j_idx] * t)                            # P(X_j < t)
        q[pos == j_idx] = 0.0                                   # skip the expert itself
        shifted = np.concatenate([np.zeros_like(dist[:, :, :1]), dist[:, :, :-1]], axis=2)
        dist = dist * (1.0 - q[:, :, None]) + shifted * q[:, :, None]
    out[pos] = dist.sum(axis=2) @ w
    return out


def _elementary(w: np.ndarray, k: int) -> np.ndarray:
    """e_0..e_k of the weights w (elementary symmetric polynomials)."""
    e = np.zeros(k + 1)
    e[0] = 1.0
    for wi in w:
        e[1:] = e[1:] + wi * e[:-1]
    return e


def _max_entropy_odds(pi: np.ndarray, k: int, iterations: int = 200) -> np.ndarray:
    """Odds w_e of the conditional Poisson design whose inclusion probabilities are pi
    (Chen, Dempster & Liu 1994 fixed point: w <- w * pi / pi(w))."""
    w = pi / np.maximum(1.0 - pi, 1e-12)
    w = np.where(pi > 0, w / np.mean(w[pi > 0]), 0.0)
    for _ in range(iterations):
        e = _elementary(w, k)
        # e_{k-1}(w without e) by the downward recursion e_j(-e) = e_j - w_e e_{j-1}(-e)
        rest = np.ones_like(w)
        for j in range(1, k):
            rest = e[j] - w * rest
        got = w * rest / e[k]
        if np.max(np.abs(got - pi)) < 1e-12:
            break
        w = np.where(pi > 0, w * pi / np.maximum(got, 1e-300), 0.0)
        w /= np.mean(w[pi > 0])
    return w


def rank_count_pmfs(experts: int, top_k: int, ranks: int,
                    popularity: Sequence[float] | None = None) -> list[np.ndarray]:
    """For each rank (experts/ranks contiguous experts), the law of how many of one token's
    top_k assignments land on it: pmf over 0..min(top_k, experts/ranks)."""
    _check_counts(0, experts, ranks)
    m = experts // ranks
    c = min(top_k, m)
    if popularity is None:       # hypergeometric(experts, m, top_k)
        j = np.arange(c + 1)
        pmf = np.array([math.comb(m, int(a)) * math.comb(experts - m, top_k - int(a))
                        for a in j], dtype=float) / math.comb(experts, top_k)
        return [pmf] * ranks
    pi = inclusion_probabilities(experts, top_k, popularity)
    w = _max_entropy_odds(pi, top_k)
    total = _elementary(w, top_k)[top_k]
    out = []
    for r in range(ranks):
        inside = np.zeros(experts, dtype=bool)
        inside[r * m:(r + 1) * m] = True
        e_in = _elementary(w[inside], c)
        e_out = _elementary(w[~inside], top_k)
        pmf = np.array([e_in[j] * e_out[top_k - j] if top_k - j >= 0 else 0.0
                        for j in range(c + 1)]) / total
        out.append(pmf / pmf.sum())
    return out


# --------------------------------------------------------------------------- per rank


def _power_pmf(pmf: np.ndarray, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(support values, pmf) of the sum of `tokens` i.i.d. counts with law `pmf`."""
    c = pmf.size - 1
    size = tokens * c + 1
    if tokens == 0 or c == 0:
        return np.zeros(1), np.ones(1)
    if size <= EXACT_SUPPORT_LIMIT:
        n_fft = 1 << (size - 1).bit_length()
        spec = np.fft.rfft(pmf, n_fft) ** tokens
        out = np.clip(np.fft.irfft(spec, n_fft)[:size], 0.0, None)
        return np.arange(size, dtype=float), out / out.sum()
    j = np.arange(c + 1)
    mean = float(pmf @ j) * tokens
    sd = math.sqrt(max(float(pmf @ j**2) - (float(pmf @ j)) ** 2, 0.0) * tokens)
    if sd == 0.0:
        return np.array([mean]), np.ones(1)
    x = np.arange(max(0, math.floor(mean - 12 * sd)), min(size, math.ceil(mean + 12 * sd) + 1))
    dens = np.exp(-0.5 * ((x - mean) / sd) ** 2)
    return x.astype(float), dens / dens.sum()


def _max_expectation(laws: list[tuple[np.ndarray, np.ndarray]], *, scale: float,
                     cap: float | None = None) -> float:
    """E[min(max_r Z_r, cap)] for independent Z_r = mu_r + scale * (X_r - mu_r).

    Ranks that share one law (the same object: uniform routing gives every rank the same)
    enter the product of CDFs once, raised to their count: P(max <= z) = F(z)^n."""
    counts: dict[int, list] = {}
    for law in laws:
        counts.setdefault(id(law), [law, 0])[1] += 1
    shifted = []
    for (x, pmf), n in counts.values():
        mu = float(x @ pmf)
        z = mu + scale * (x - mu)
        cdf = np.cumsum(pmf)
        lo = z[min(np.searchsorted(cdf, _TAIL), z.size - 1)]
        hi = z[min(np.searchsorted(cdf, 1.0 - _TAIL), z.size - 1)]
        shifted.append((z, cdf, lo, hi, n))
    z_lo = max(s[2] for s in shifted)
    z_hi = max(s[3] for s in shifted)
    if cap is not None:
        z_lo, z_hi = min(z_lo, cap), min(z_hi, cap)
    if z_hi <= z_lo:
        return float(z_lo)
    grid = np.linspace(z_lo, z_hi, _GRID_POINTS + 1)
    mid = 0.5 * (grid[1:] + grid[:-1])
    prod = np.ones_like(mid)
    for z, cdf, _, _, n in shifted:
        idx = np.searchsorted(z, mid, side="right") - 1
        prod *= np.where(idx >= 0, cdf[np.clip(idx, 0, None)], 0.0) ** n
    return float(z_lo + np.sum(1.0 - prod) * (grid[1] - grid[0]))


def _rank_laws(tokens: int, experts: int, top_k: int, ranks: int,
               popularity: Sequence[float] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    pmfs = rank_count_pmfs(experts, top_k, ranks, popularity)
    if popularity is None:
        law = _power_pmf(pmfs[0], tokens)
        return [law] * ranks
    return [_power_pmf(p, tokens) for p in pmfs]


def load_stats(tokens: int, experts: int, top_k: int, *, ranks: int = 1,
               popularity: Sequence[float] | None = None) -> LoadStats:
    """Expected maximum rank load, the mean and their ratio (see `expected_max_load`)."""
    _check_counts(tokens, experts, ranks)
    normalise_popularity(popularity, experts, top_k)
    mean = tokens * top_k / ranks
    if ranks == 1 or tokens == 0:
        return LoadStats(float(mean), float(mean), 1.0)
    laws = _rank_laws(tokens, experts, top_k, ranks, popularity)
    expected = _max_expectation(laws, scale=math.sqrt(ranks / (ranks - 1)))
    expected = min(max(expected, mean), float(tokens * min(top_k, experts // ranks)))
    return LoadStats(expected, float(mean), expected / mean)


def expected_max_load(tokens: int, experts: int, top_k: int, *, ranks: int = 1,
                      popularity: Sequence[float] | None = None) -> float:
    """Expected number of token-expert assignments received by the most loaded of `ranks`
    expert-parallel ranks, each holding experts/ranks contiguous experts.

    Args:
        tokens: tokens routed in one step (of the whole EP group).
        experts: routed experts of the layer.
        top_k: distinct experts per token.
        ranks: EP ranks; must divide `experts`.
        popularity: router preference per expert (None = balanced, uniform routing).
    Returns:
        The expected maximum load; `load_stats` also gives the mean and the imbalance factor.
    """
    return load_stats(tokens, experts, top_k, ranks=ranks, popularity=popularity).expected_max


def imbalance_factor(tokens: int, experts: int, top_k: int, *, ranks: int = 1,
                     popularity: Sequence[float] | None = None) -> float:
    """expected_max_load / (tokens * top_k / ranks): how much longer the slowest rank's expert
    matmuls run than perfectly balanced ones (1.0 when balanced)."""
    return load_stats(tokens, experts, top_k, ranks=ranks, popularity=popularity).imbalance


# --------------------------------------------------------------------------- capacity


def expert_capacity(tokens: int, experts: int, top_k: int, capacity_factor: float) -> int:
    """ceil(capacity_factor * tokens * top_k / experts) (GShard / Switch, see module doc)."""
    if capacity_factor <= 0 or not math.isfinite(capacity_factor):
        raise SpecError(f"capacity factor must be a positive number, got {capacity_factor}")
    return math.ceil(capacity_factor * tokens * top_k / experts)


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    """pmf of Binomial(n, p) over 0..n, in log space (stable for large n)."""
    if p <= 0.0:
        out = np.zeros(n + 1)
        out[0] = 1.0
        return out
    if p >= 1.0:
        out = np.zeros(n + 1)
        out[n] = 1.0
        return out
    x = np.arange(1, n + 1)
    log_ratio = np.log(n - x + 1) - np.log(x) + math.log(p / (1 - p))
    logp = np.concatenate([[n * math.log1p(-p)], n * math.log1p(-p) + np.cumsum(log_ratio)])
    pmf = np.exp(logp - logp.max())
    return pmf / pmf.sum()


def capacity_drop(tokens: int, experts: int, top_k: int, capacity_factor: float, *,
                  popularity: Sequence[float] | None = None) -> tuple[int, float]:
    """Expert capacity and the expected fraction of token-expert assignments dropped.

    Args:
        tokens: tokens routed in one step.
        experts, top_k: the layer's routed experts and experts per token.
        capacity_factor: > 0 (1.0 = exactly the balanced share).
        popularity: router preference per expert (None = uniform).
    Returns:
        (capacity per expert, expected dropped assignments / (tokens * top_k)).
    """
    _check_counts(tokens, experts, 1)
    cap = expert_capacity(tokens, experts, top_k, capacity_factor)
    if tokens == 0:
        return cap, 0.0
    pi = inclusion_probabilities(experts, top_k, popularity)
    dropped = 0.0
    cache: dict[float, float] = {}
    for p in pi:
        key = float(p)
        if key not in cache:
            pmf = _binomial_pmf(tokens, key)
            excess = np.clip(np.arange(tokens + 1) - cap, 0, None)
            cache[key] = float(pmf @ excess)
        dropped += cache[key]
    return cap, dropped / (tokens * top_k)


def effective_max_load(tokens: int, experts: int, top_k: int,
                       capacity_factor: float | None, *, ranks: int = 1,
                       popularity: Sequence[float] | None = None) -> float:
    """Expected assignments the most loaded rank processes when experts drop what exceeds
    their capacity (None = dropless: `expected_max_load`).

    A rank with m = experts/ranks experts processes sum_e min(L_e, capacity) <=
    min(L_rank, m * capacity); this returns E[min(max_r L_rank, m * capacity)], exact for one
    expert per rank and an upper bound otherwise. Padded implementations (GShard's fixed
    [experts, capacity] buffers) compute m * capacity whatever the load.
    """
    if capacity_factor is None:
        return expected_max_load(tokens, experts, top_k, ranks=ranks, popularity=popularity)
    _check_counts(tokens, experts, ranks)
    m = experts // ranks
    cap = m * expert_capacity(tokens, experts, top_k, capacity_factor)
    if ranks == 1 or tokens == 0:
        return float(min(tokens * top_k, cap))
    laws = _rank_laws(tokens, experts, top_k, ranks, popularity)
    return _max_expectation(laws, scale=math.sqrt(ranks / (ranks - 1)), cap=float(cap))
