"""Device mapping: which physical devices form each TP/CP/DP/PP group.

Decides: how many members of each parallel group share a node, so that the heaviest
traffic stays on the fastest links; the rank layout (a `Plan.order`, or a nested mixed-radix
layout when no plain order realises it) and the predicted communication time per dimension.
Does not decide the degrees themselves (those are given), nor overlap with compute.

Formulation
-----------
A node (the fast domain) holds D = `cluster.devices_per_node` devices. The dimensions
g in {tp, cp, dp, pp} have sizes n_g whose product is the device count N. A layout gives each
dimension a number a_g of its members that share a node, with

    a_g divides n_g,    prod_g a_g = T,    T = D if N >= D else N

(N >= D must be a whole number of nodes). Every such choice is realisable: split each
dimension into an inner factor a_g and an outer factor n_g / a_g, and lay the ranks out
mixed-radix with all inner factors innermost; the first T consecutive ranks (one node) then
hold an a_tp x a_cp x a_dp x a_pp box of the grid, and every group of dimension g has exactly
a_g members in each node it touches. A plain `Plan.order` (a permutation, innermost first)
realises the layouts with at most one "partial" dimension (1 < a_g < n_g): the dimensions
with a_g = n_g innermost, then the partial one, then those with a_g = 1. When the optimum
splits two or more dimensions partially inside a node, `DeviceMapping.order` is None and
`DeviceMapping.nested` gives the mixed-radix layout instead.

Cost: dimension g's links depend only on a_g, exactly as `cost_models.comm.group_links`
computes them for a group of size n_g laid out with stride D / a_g: a_g = n_g is an
intra-node group (intra-node bandwidth and latency); otherwise the group spans nodes with
a_g members per node (bottleneck bandwidth min(intra, a_g * inter), inter-node latency).
Each `Traffic` item of the dimension costs calls * collective time on those links
(`all_reduce_s`, `all_gather_s`, `reduce_scatter_s`, or `p2p_s` crossing nodes iff
a_g < n_g). The objective is the sum over dimensions, c_g(a_g) summed over g, to minimise.
The training model's combined dp x cp gradient group is not modelled: each dimension is its
own group here. One deliberate difference from `group_links`: with fewer devices than a node
(N < D) every group is physically inside the one node even where n_g does not divide D.

Solver: OR-Tools CP-SAT. One boolean x[g, a] per dimension g and per divisor a of n_g that
also divides T, with exactly one true per dimension. The product constraint is linear in log
space: for every prime p of T, sum over (g, a) of v_p(a) * x[g, a] = v_p(T), where v_p is the
exponent of p (all candidates divide T, so matching the exponents of T's primes is exactly
prod a_g = T). Costs are integers: round(c_g(a) / COST_RESOLUTION_S). The search space is
at most prod_g (number of divisors of n_g) layouts, so `brute_force_mapping` can check it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ortools.sat.python import cp_model

from cost_models import comm
from planner.hardware import ClusterSpec
from planner.plan import DEFAULT_ORDER

DIMS: tuple[str, ...] = DEFAULT_ORDER
"""The parallel dimensions, in the default layout order (tp, cp, dp, pp)."""

COST_RESOLUTION_S = 1e-9
"""Seconds per unit of the solver's integer costs (1 ns). Each dimension's cost is rounded
to this grid, so the solver's layout is within len(DIMS) * COST_RESOLUTION_S of the true
optimum of `mapping_time_s`."""

_MAX_COST_UNITS = 2**50   # keeps sums of a few such terms far from CP-SAT's int64 limits

Kind = Literal["all_reduce", "all_gather", "reduce_scatter", "p2p"]
KINDS: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "p2p")


@dataclass(frozen=True)
class Traffic:
    """Per-step traffic of one parallel dimension: `calls` collectives of one kind, each
    moving `bytes_per_call` per rank (the full buffer, as in `cost_models.comm`). Usual kinds:
    all-reduce for tp and dp, p2p for pp, all-gather (ring K/V exchange) for cp."""

    dim: str
    kind: Kind
    bytes_per_call: float
    calls: float

    def __post_init__(self) -> None:
        if self.dim not in DIMS:
            raise ValueError(f"traffic dim '{self.dim}' is not one of {', '.join(DIMS)}")
        if self.kind not in KINDS:
            raise ValueError(f"traffic kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if not (self.bytes_per_call >= 0 and self.calls >= 0):
            raise ValueError(f"traffic of {self.dim}: bytes_per_call and calls must be >= 0")


@dataclass(frozen=True)
class DeviceMapping:
    """The chosen layout, its predicted communication time, and the solver's report."""

    devices: int
    devices_per_node: int
    sizes: dict[str, int]
    members_per_node: dict[str, int]        # a_g: members of each g-group that share a node
    order: tuple[str, ...] | None           # Plan.order realising it (innermost first), if any
    nested: tuple[tuple[str, int], ...] | None  # mixed-radix layout when no order realises it
    radices: tuple[tuple[str, int], ...]    # the layout as (dim, radix), innermost first
    first_groups: dict[str, tuple[int, ...]]  # device ids of the group holding device 0
    time_by_dim_s: dict[str, float]         # predicted communication seconds per dimension
    time_s: float                           # their sum (mapping_time_s of this layout)
    default_order_s: float                  # the same for DEFAULT_ORDER (tp-cp-dp-pp)
    status: str                             # CP-SAT status name (OPTIMAL, FEASIBLE, ...)
    objective_s: float                      # solver objective, in seconds (integer grid)
    best_bound_s: float                     # solver lower bound, in seconds
    gap: float                              # (objective - bound) / objective; 0 when proven
    solve_time_s: float                     # CP-SAT wall time
    wall_time_s: float                      # whole map_devices call

    @property
    def layout(self) -> str:
        """One line: 'order=tp-cp-dp-pp' or 'nested=tp4.dp2|tp2.dp12.pp8' (inner | outer)."""
        if self.order is not None:
            return "order=" + "-".join(self.order)
        inner = [f"{g}{r}" for g, r in self.radices[: self._inner_count()]]
        outer = [f"{g}{r}" for g, r in self.radices[self._inner_count():]]
        return "nested=" + ".".join(inner) + "|" + ".".join(outer)

    def _inner_count(self) -> int:
        acc, k = 1, 0
        target = min(self.devices, self.devices_per_node)
        while acc < target:
            acc *= self.radices[k][1]
            k += 1
        return k


# --------------------------------------------------------------------------- cost


def _normalise_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    bad = [k for k in sizes if k not in DIMS]
    if bad:
        raise ValueError(f"unknown dimension(s) {', '.join(bad)}; use {', '.join(DIMS)}")
    out = {g: int(sizes.get(g, 1)) for g in DIMS}
    for g, n in out.items():
        if n < 1:
            raise ValueError(f"size of {g} must be at least 1, got {n}")
    return out


def _node_target(cluster: ClusterSpec, n_devices: int) -> int:
    """T: devices of one node the layout fills (D, or N when the job is smaller)."""
    d = cluster.devices_per_node
    if n_devices >= d and n_devices % d:
        raise ValueError(
            f"{n_devices} devices are not a whole number of {d}-device nodes of '{cluster.name}'"
        )
    return min(d, n_devices)


def _links(cluster: ClusterSpec, n: int, a: int) -> comm.GroupLinks:
    """Links of a group of n ranks with a members per node (group_links at stride D / a)."""
    d = cluster.devices_per_node
    if n <= 1:
        return comm.group_links(cluster, size=1, stride=1)
    if a == n:
        if d % n == 0:
            return comm.group_links(cluster, size=n, stride=1)
        # fewer devices than a node: one node holds the whole job (see module docstring)
        return comm.links_for(cluster, n, comm.intra_bandwidth(cluster, n), spans_nodes=False,
                              members_per_node=n)
    return comm.group_links(cluster, size=n, stride=d // a)


def _collective_s(cluster: ClusterSpec, links: comm.GroupLinks, t: Traffic) -> float:
    if t.kind == "all_reduce":
        one = comm.all_reduce_s(links, t.bytes_per_call)
    elif t.kind == "all_gather":
        one = comm.all_gather_s(links, t.bytes_per_call)
    elif t.kind == "reduce_scatter":
        one = comm.reduce_scatter_s(links, t.bytes_per_call)
    else:
        one = (comm.p2p_s(cluster, t.bytes_per_call, crosses_nodes=links.spans_nodes)
               if links.size > 1 else 0.0)
    return t.calls * one


def _by_dim(traffic: Iterable[Traffic]) -> dict[str, list[Traffic]]:
    out: dict[str, list[Traffic]] = {g: [] for g in DIMS}
    for t in traffic:
        out[t.dim].append(t)
    return out


def dim_time_s(cluster: ClusterSpec, dim: str, n: int, a: int,
               traffic: Iterable[Traffic]) -> float:
    """Seconds of dimension `dim`'s traffic (size n, a members per node): c_g(a)."""
    links = _links(cluster, n, a)
    return sum((_collective_s(cluster, links, t) for t in traffic if t.dim == dim), 0.0)


def _check_members(cluster: ClusterSpec, sizes: dict[str, int],
                   members_per_node: Mapping[str, int]) -> dict[str, int]:
    a = {g: int(members_per_node.get(g, 1)) for g in DIMS}
    for g in DIMS:
        if a[g] < 1 or sizes[g] % a[g] or a[g] > max(cluster.devices_per_node, 1):
            raise ValueError(f"{g}: {a[g]} members per node must divide its size {sizes[g]} "
                             f"and be at most {cluster.devices_per_node}")
    return a


def mapping_time_s(cluster: ClusterSpec, sizes: Mapping[str, int], traffic: Iterable[Traffic],
                   members_per_node: Mapping[str, int]) -> float:
    """The objective for one layout, in seconds: sum over dims of calls * collective time.
    Pure (no solver); checks a_g | n_g but not the product (see `is_feasible`)."""
    n = _normalise_sizes(sizes)
    a = _check_members(cluster, n, members_per_node)
    per = _by_dim(traffic)
    return sum((dim_time_s(cluster, g, n[g], a[g], per[g]) for g in DIMS), 0.0)


def is_feasible(cluster: ClusterSpec, sizes: Mapping[str, int],
                members_per_node: Mapping[str, int]) -> bool:
    """Whether a_g | n_g for every g and prod a_g = T (one node exactly filled)."""
    n = _normalise_sizes(sizes)
    try:
        a = _check_members(cluster, n, members_per_node)
        target = _node_target(cluster, math.prod(n.values()))
    except ValueError:
        return False
    return math.prod(a.values()) == target


# --------------------------------------------------------------------------- layouts


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted(set(small + [n // k for k in small]))


def _factorize(n: int) -> dict[int, int]:
    out: dict[int, int] = {}
    p = 2
    while p * p <= n:
        while n % p == 0:
            out[p] = out.get(p, 0) + 1
            n //= p
        p += 1
    if n > 1:
        out[n] = out.get(n, 0) + 1
    return out


def _valuation(a: int, p: int) -> int:
    k = 0
    while a % p == 0:
        a //= p
        k += 1
    return k


def _candidates(sizes: dict[str, int], target: int) -> dict[str, list[int]]:
    return {g: [a for a in _divisors(sizes[g]) if target % a == 0] for g in DIMS}


def _order_strides(sizes: Mapping[str, int], order: Iterable[str]) -> dict[str, int]:
    """Stride of each dimension under a Plan.order (as cost_models.training.strides)."""
    out, acc = {}, 1
    for g in order:
        out[g] = acc
        acc *= sizes[g]
    return out


def members_per_node_for_order(cluster: ClusterSpec, sizes: Mapping[str, int],
                               order: Iterable[str] = DEFAULT_ORDER) -> dict[str, int]:
    """a_g of the layout a Plan.order gives, as `group_links` sees it at the order's strides
    (a misaligned group, which straddles node boundaries, counts as one member per node).
    With no more devices than one node, every group is whole (see module docstring)."""
    n = _normalise_sizes(sizes)
    order = tuple(order)
    if sorted(order) != sorted(DIMS):
        raise ValueError(f"order {'-'.join(order)} is not a permutation of {', '.join(DIMS)}")
    if math.prod(n.values()) <= cluster.devices_per_node:
        return dict(n)
    st = _order_strides(n, order)
    out = {}
    for g in DIMS:
        links = comm.group_links(cluster, size=n[g], stride=st[g])
        out[g] = links.members_per_node if links.spans_nodes else n[g]
    return out


def _greedy(sizes: dict[str, int], target: int) -> dict[str, int]:
    """A feasible layout: fill the node in DEFAULT_ORDER (gcd per dimension). Per prime this
    takes min(available, still needed), so it succeeds whenever T divides N."""
    a, rest = {}, target
    for g in DIMS:
        a[g] = math.gcd(sizes[g], rest)
        rest //= a[g]
    assert rest == 1
    return a


def _radices(sizes: dict[str, int], a: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """Mixed-radix layout, innermost first: inner factors (whole dims, then partial ones),
    then outer factors (partial dims, then those with one member per node)."""
    whole = [g for g in DIMS if a[g] == sizes[g]]
    partial = [g for g in DIMS if 1 < a[g] < sizes[g]]
    rest = [g for g in DIMS if a[g] == 1 and sizes[g] > 1]
    inner = [(g, a[g]) for g in whole + partial if a[g] > 1]
    outer = [(g, sizes[g] // a[g]) for g in partial + rest]
    return tuple(inner + outer)


def _order(sizes: dict[str, int], a: dict[str, int]) -> tuple[str, ...] | None:
    """The Plan.order realising the layout, or None when two or more dims are partial."""
    partial = [g for g in DIMS if 1 < a[g] < sizes[g]]
    if len(partial) > 1:
        return None

    def rank(g: str) -> int:   # 0 whole, 1 partial, 2 one member per node
        return 0 if a[g] == sizes[g] else 1 if a[g] > 1 else 2

    # Size-1 dims do not matter; each keeps its DEFAULT_ORDER place before the next real
    # dimension, so a layout that DEFAULT_ORDER realises comes back as DEFAULT_ORDER.
    cls, nxt = {}, 2
    for g in reversed(DIMS):
        if sizes[g] > 1:
            nxt = rank(g)
        cls[g] = nxt if sizes[g] == 1 else rank(g)
    return tuple(sorted(DIMS, key=lambda g: (cls[g], DIMS.index(g))))


def _first_groups(sizes: dict[str, int],
                  radices: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, ...]]:
    """Device ids (= ranks; node k holds ids kD..kD+D-1) of the g-group containing device 0:
    coordinate of g is inner + a_g * outer, every other coordinate 0."""
    strides: dict[str, list[tuple[int, int]]] = {g: [] for g in DIMS}   # (stride, radix)
    acc = 1
    for g, r in radices:
        strides[g].append((acc, r))
        acc *= r
    out = {}
    for g in DIMS:
        ids = [0]
        for stride, radix in strides[g]:          # inner factor first: it varies fastest
            ids = [base + k * stride for k in range(radix) for base in ids]
        assert len(ids) == sizes[g]
        out[g] = tuple(ids)
    return out


def brute_force_mapping(cluster: ClusterSpec, sizes: Mapping[str, int],
                        traffic: Iterable[Traffic]) -> tuple[float, dict[str, int]]:
    """Exhaustive minimum of `mapping_time_s` over all feasible layouts (for tests)."""
    n = _normalise_sizes(sizes)
    target = _node_target(cluster, math.prod(n.values()))
    cand = _candidates(n, target)
    per = _by_dim(traffic)
    cost = {(g, a): dim_time_s(cluster, g, n[g], a, per[g]) for g in DIMS for a in cand[g]}
    best: tuple[float, dict[str, int]] | None = None
    for combo in itertools.product(*(cand[g] for g in DIMS)):
        if math.prod(combo) != target:
            continue
        t = sum(cost[g, a] for g, a in zip(DIMS, combo))
        if best is None or t < best[0]:
            best = (t, dict(zip(DIMS, combo)))
    assert best is not None
    return best


# --------------------------------------------------------------------------- solver


def map_devices(cluster: ClusterSpec, *, sizes: Mapping[str, int], traffic: list[Traffic],
                time_limit_s: float = 5.0, num_workers: int = 1, seed: int = 0) -> DeviceMapping:
    """Choose members per node for each dimension to minimise communication time (CP-SAT).

    The DEFAULT_ORDER-style greedy layout is given as a hint; if the solver returns no
    solution within `time_limit_s` (status UNKNOWN), that feasible layout is returned with
    best_bound_s = 0 and gap = 1. Raises ValueError when N >= D is not a whole number of
    nodes, for unknown dimensions, or for times beyond the integer cost range."""
    start = time.perf_counter()
    n = _normalise_sizes(sizes)
    n_devices = math.prod(n.values())
    target = _node_target(cluster, n_devices)
    cand = _candidates(n, target)
    per = _by_dim(traffic)
    cost = {(g, a): dim_time_s(cluster, g, n[g], a, per[g]) for g in DIMS for a in cand[g]}
    units = {k: round(v / COST_RESOLUTION_S) for k, v in cost.items()}
    if max(units.values()) > _MAX_COST_UNITS:
        raise ValueError(f"a communication time of {max(cost.values()):.3g} s is too large for "
                         f"COST_RESOLUTION_S = {COST_RESOLUTION_S:g} s")

    model = cp_model.CpModel()
    x = {(g, a): model.new_bool_var(f"{g}_{a}") for g in DIMS for a in cand[g]}
    for g in DIMS:
        model.add_exactly_one(x[g, a] for a in cand[g])
    for p, e in _factorize(target).items():
        model.add(sum(_valuation(a, p) * x[g, a] for g in DIMS for a in cand[g]
                      if a % p == 0) == e)
    model.minimize(sum(units[k] * v for k, v in x.items()))
    hint = _greedy(n, target)
    for (g, a), v in x.items():
        model.add_hint(v, a == hint[g])

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.0, float(time_limit_s))
    solver.parameters.num_workers = num_workers
    solver.parameters.random_seed = seed
    status = solver.solve(model)
    if status == cp_model.INFEASIBLE or status == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT: {solver.status_name(status)} (a feasible layout exists; "
                           "this is a bug)")
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        a = {g: next(v for v in cand[g] if solver.boolean_value(x[g, v])) for g in DIMS}
        objective = solver.objective_value * COST_RESOLUTION_S
        bound = solver.best_objective_bound * COST_RESOLUTION_S
    else:   # no solution within the limit: fall back to the (feasible) hint
        a = hint
        objective = sum(units[g, hint[g]] for g in DIMS) * COST_RESOLUTION_S
        bound = 0.0
    gap = 0.0 if status == cp_model.OPTIMAL or objective <= 0 else (objective - bound) / objective

    by_dim = {g: cost[g, a[g]] for g in DIMS}
    radices = _radices(n, a)
    order = _order(n, a)
    default = mapping_time_s(cluster, n, traffic, members_per_node_for_order(cluster, n))
    return DeviceMapping(
        devices=n_devices, devices_per_node=cluster.devices_per_node, sizes=n,
        members_per_node=a, order=order, nested=None if order is not None else radices,
        radices=radices, first_groups=_first_groups(n, radices), time_by_dim_s=by_dim,
        time_s=sum(by_dim.values()), default_order_s=default,
        status=solver.status_name(status), objective_s=objective, best_bound_s=bound,
        gap=max(0.0, gap), solve_time_s=solver.wall_time,
        wall_time_s=time.perf_counter() - start,
    )
