"""Intra-operator sharding: one strategy per operator of a graph, chosen by an ILP (Alpa's pass).

Decides: for each operator of a small computational graph, how it runs over a tensor-parallel
group of `tp` devices (replicated, split along one tensor dim, or leaving partial sums). The
choice minimises compute + the operator's own communication + resharding between operators,
under a per-device memory budget. Does not decide tp itself, the layer-to-stage split or the
device layout (layer_partition.py, device_mapping.py). `search.sharding_block` builds the
graph of a transformer block. Source: Zheng et al. 2022, "Alpa", OSDI, Sec. 4, Eq. 1.

Layouts of a 2-D activation [tokens, features]: R (each device holds all of it), S(d) (split
evenly along dim d: 0 = tokens, 1 = features/heads), P (each device holds a full-size partial
sum; the value is their sum). Resharding a producer's layout into the one its consumer needs
(Alpa Sec. 4.1, "resharding"): same -> nothing; R -> S(d): a local slice, free; P -> R:
all-reduce; P -> S(d): reduce-scatter; S(d) -> R: all-gather; S(d1) -> S(d2): all-to-all.
A consumer never needs P. Times are `cost_models.comm`'s alpha-beta collectives on the group's
GroupLinks, for the full tensor's bytes.

Backward pass (`OpGraph.backward`): compute is 3x the forward (the backward is twice the
forward, Narayanan et al. 2021, SC'21, Sec. 5.1). Each edge's gradient flows back: the
consumer makes it in its `grad_layouts` (its input layouts, except that a column-split matmul
reading R leaves a partial sum) and the producer needs it in the dual of its output layout
(R for a P output, since every device needs the gradient of a summed value; the same layout
otherwise). The resharding rules above then give Megatron's conjugate f/g all-reduces, 4 per
block fwd+bwd (Shoeybi et al. 2019, Sec. 3, Fig. 3), and sequence parallelism's all-gather /
reduce-scatter pairs (Korthikanti et al. 2022, Sec. 4.2.2).

ILP (OR-Tools CP-SAT). Booleans x[o,s], exactly one per operator. An edge e = (u -> v) with
a non-zero resharding matrix r_e gets booleans y[e,i,j] standing for x[u,i] * x[v,j], tied
by the marginal (transportation) linearisation: sum_j y[e,i,j] = x[u,i] for every i and
sum_i y[e,i,j] = x[v,j] for every j. It implies Alpa's y <= x[u,i], y <= x[v,j],
sum y = 1, and its LP relaxation is tighter. Objective: sum c[o,s] x[o,s] +
sum r[e,i,j] y[e,i,j]; with a budget, sum m[o,s] x[o,s] <= budget (bytes, exact integers).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from ortools.sat.python import cp_model

from cost_models import comm
from planner.hardware import ClusterSpec

COST_RESOLUTION_S = 1e-9
"""Seconds per unit of the solver's integer costs (1 ns). Every term is rounded to this grid
(by at most half a unit), so the plan found costs at most (operators + edges) *
COST_RESOLUTION_S more than the true optimum of `plan_cost_s`. A block's terms are 1e-6 to
1e-2 s, i.e. 1e3 to 1e7 units: far from CP-SAT's int64 limits and far finer than the model."""

_MAX_COST_UNITS = 2**50   # keeps sums of a few hundred terms far from CP-SAT's int64 limit


class OpKind(StrEnum):
    MATMUL = "matmul"
    ELEMENTWISE = "elementwise"
    ATTENTION = "attention"
    NORM = "norm"


class LayoutKind(StrEnum):
    REPLICATED = "R"
    SPLIT = "S"
    PARTIAL = "P"


class Collective(StrEnum):
    ALL_REDUCE = "all_reduce"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_GATHER = "all_gather"
    ALL_TO_ALL = "all_to_all"


class Pass(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


class SolveStatus(StrEnum):
    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"          # a plan, not proven optimal within the time limit
    INFEASIBLE = "INFEASIBLE"      # proven: no assignment fits the memory budget
    UNKNOWN = "UNKNOWN"            # time ran out before any plan was found


@dataclass(frozen=True, slots=True)
class Layout:
    """How one tensor lies over the group: R, P, or S(dim)."""

    kind: LayoutKind
    dim: int | None = None

    def __post_init__(self) -> None:
        if (self.kind == LayoutKind.SPLIT) != (self.dim is not None and self.dim >= 0):
            raise ValueError(f"a split layout needs a dim >= 0, R and P none: {self!r}")

    def __str__(self) -> str:
        return f"S({self.dim})" if self.kind == LayoutKind.SPLIT else self.kind.value


REPLICATED = Layout(LayoutKind.REPLICATED)
PARTIAL = Layout(LayoutKind.PARTIAL)


def split(dim: int) -> Layout:
    return Layout(LayoutKind.SPLIT, dim)


@dataclass(frozen=True, slots=True)
class Operator:
    """One node: its output shape, forward FLOPs and weight elements, all unsharded."""

    name: str
    kind: OpKind
    out_shape: tuple[int, ...]
    flops: float = 0.0
    weight_elems: int = 0


@dataclass(frozen=True, slots=True)
class Strategy:
    """One way to run an operator. `comm_s` is the operator's own communication (not the
    resharding of its inputs); `memory_bytes` is per device; `input_grad_layouts` (backward
    only) defaults to `input_layouts`."""

    name: str
    compute_s: float
    memory_bytes: int
    output_layout: Layout
    input_layouts: tuple[Layout, ...]
    comm_s: float = 0.0
    input_grad_layouts: tuple[Layout, ...] | None = None

    def __post_init__(self) -> None:
        if PARTIAL in self.input_layouts:
            raise ValueError(f"strategy '{self.name}': an input cannot require partial sums")
        grads = self.input_grad_layouts
        if grads is not None and len(grads) != len(self.input_layouts):
            raise ValueError(f"strategy '{self.name}': one gradient layout per input")

    @property
    def grad_layouts(self) -> tuple[Layout, ...]:
        return self.input_grad_layouts or self.input_layouts


@dataclass(frozen=True, slots=True)
class Edge:
    """Tensor of `nbytes` (unsharded) from `src`'s output to input `slot` of `dst`."""

    src: str
    dst: str
    nbytes: float
    slot: int = 0


@dataclass(frozen=True)
class OpGraph:
    """Operators, edges and each operator's strategies, on one tp group's links. `cluster`
    is only needed for an all-to-all in a group that spans nodes."""

    operators: tuple[Operator, ...]
    edges: tuple[Edge, ...]
    strategies: Mapping[str, tuple[Strategy, ...]]
    links: comm.GroupLinks
    cluster: ClusterSpec | None = None
    backward: bool = False

    def __post_init__(self) -> None:
        names = [op.name for op in self.operators]
        if len(set(names)) != len(names) or set(names) != set(self.strategies):
            raise ValueError("operator names must be unique and each needs its strategies")
        for op in self.operators:
            if not self.strategies[op.name]:
                raise ValueError(f"operator '{op.name}' has no strategy")
        for e in self.edges:
            if e.src not in self.strategies or e.dst not in self.strategies or e.src == e.dst:
                raise ValueError(f"edge {e} must join two different known operators")
            if any(e.slot >= len(s.input_layouts) for s in self.strategies[e.dst]):
                raise ValueError(f"edge {e}: '{e.dst}' has no input slot {e.slot}")


@dataclass(frozen=True, slots=True)
class Reshard:
    """One collective a plan pays on an edge."""

    edge: Edge
    kind: Collective
    pass_: Pass
    cost_s: float


@dataclass(frozen=True)
class ShardingResult:
    """The solver's answer. Without a plan (INFEASIBLE / UNKNOWN) `choices` is empty, the
    costs are None and `message` says why. `objective_s` is the plan's exact float cost;
    `best_bound_s` and `gap` come from the solver's integer objective."""

    status: SolveStatus
    objective_s: float | None
    best_bound_s: float | None
    gap: float | None
    choices: Mapping[str, str]
    reshards: tuple[Reshard, ...]
    memory_bytes: int | None
    solve_seconds: float
    message: str = ""

    @property
    def has_plan(self) -> bool:
        return self.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)


# ----- resharding ------------------------------------------------------------------------
def reshard_kind(src: Layout, dst: Layout) -> Collective | None:
    """The collective that turns layout `src` into `dst` (None: nothing or a local slice)."""
    if dst.kind == LayoutKind.PARTIAL:
        raise ValueError("no consumer requires partial sums")
    if src == dst or src.kind == LayoutKind.REPLICATED:
        return None
    if src.kind == LayoutKind.PARTIAL:
        return Collective.ALL_REDUCE if dst == REPLICATED else Collective.REDUCE_SCATTER
    return Collective.ALL_GATHER if dst == REPLICATED else Collective.ALL_TO_ALL


def collective_s(kind: Collective, nbytes: float, links: comm.GroupLinks,
                 cluster: ClusterSpec | None = None) -> float:
    """Time of `kind` on a tensor of `nbytes` (unsharded) over the group `links`."""
    if kind == Collective.ALL_REDUCE:
        return comm.all_reduce_s(links, nbytes)
    if kind == Collective.REDUCE_SCATTER:
        return comm.reduce_scatter_s(links, nbytes)
    if kind == Collective.ALL_GATHER:
        return comm.all_gather_s(links, nbytes)
    n, per_rank = links.size, nbytes / links.size   # each rank holds 1/n before and after
    if cluster is not None:
        return comm.all_to_all_s(links, cluster, per_rank)
    if links.spans_nodes:
        raise ValueError("an all-to-all across nodes needs the cluster: pass cluster=")
    if n <= 1 or per_rank <= 0:
        return 0.0
    # cost_models.comm.all_to_all_s inside one node, where links carry the intra-node figures
    return (n - 1) / n * per_rank / links.bandwidth_bytes_per_s + (n - 1) * links.latency_s


def _dual(layout: Layout) -> Layout:
    """Layout in which a producer needs the gradient of its output (see module docstring)."""
    return REPLICATED if layout == PARTIAL else layout


def edge_reshards(graph: OpGraph, edge: Edge, src: Strategy, dst: Strategy) -> list[Reshard]:
    """Collectives on `edge` when its ends run `src` and `dst` (forward, then backward)."""
    moves = [(Pass.FORWARD, src.output_layout, dst.input_layouts[edge.slot])]
    if graph.backward:
        moves.append((Pass.BACKWARD, dst.grad_layouts[edge.slot], _dual(src.output_layout)))
    out = []
    for pass_, have, need in moves:
        kind = reshard_kind(have, need)
        if kind is not None:
            cost = collective_s(kind, edge.nbytes, graph.links, graph.cluster)
            out.append(Reshard(edge, kind, pass_, cost))
    return out


# ----- tables and plan evaluation ----------------------------------------------------------
@dataclass(frozen=True)
class CostTables:
    """The ILP's data: per operator, cost and memory per strategy; per edge, the matrix of
    resharding seconds [src strategy, dst strategy] and its ends as operator indices."""

    node_s: tuple[np.ndarray, ...]
    memory_bytes: tuple[np.ndarray, ...]
    edge_s: tuple[np.ndarray, ...]
    edge_ends: tuple[tuple[int, int], ...]


def cost_tables(graph: OpGraph) -> CostTables:
    index = {op.name: i for i, op in enumerate(graph.operators)}
    strats = [graph.strategies[op.name] for op in graph.operators]
    node = tuple(np.array([s.compute_s + s.comm_s for s in ss]) for ss in strats)
    mem = tuple(np.array([s.memory_bytes for s in ss], dtype=np.int64) for ss in strats)
    edges = []
    for e in graph.edges:
        r = [[sum(x.cost_s for x in edge_reshards(graph, e, a, b)) for b in strats[index[e.dst]]]
             for a in strats[index[e.src]]]
        edges.append(np.array(r, dtype=float))
    ends = tuple((index[e.src], index[e.dst]) for e in graph.edges)
    return CostTables(node, mem, tuple(edges), ends)


def _chosen(graph: OpGraph, choices: Mapping[str, str]) -> dict[str, Strategy]:
    by_name = {op: {s.name: s for s in ss} for op, ss in graph.strategies.items()}
    return {op: by_name[op][choices[op]] for op in by_name}


def plan_reshards(graph: OpGraph, choices: Mapping[str, str]) -> tuple[Reshard, ...]:
    s = _chosen(graph, choices)
    return tuple(r for e in graph.edges for r in edge_reshards(graph, e, s[e.src], s[e.dst]))


def plan_cost_s(graph: OpGraph, choices: Mapping[str, str]) -> float:
    """Seconds of a full assignment: compute + own communication + resharding."""
    s = _chosen(graph, choices)
    own = sum(x.compute_s + x.comm_s for x in s.values())
    return own + sum(r.cost_s for r in plan_reshards(graph, choices))


def plan_memory_bytes(graph: OpGraph, choices: Mapping[str, str]) -> int:
    return sum(x.memory_bytes for x in _chosen(graph, choices).values())


def collective_counts(result: ShardingResult, pass_: Pass | None = None) -> dict[Collective, int]:
    """How many of each collective the plan's resharding pays (one pass or both)."""
    return dict(Counter(r.kind for r in result.reshards if pass_ in (None, r.pass_)))


# ----- the ILP -----------------------------------------------------------------------------
def _units(cost_s: float) -> int:
    units = round(cost_s / COST_RESOLUTION_S)
    if not 0 <= units <= _MAX_COST_UNITS:
        raise ValueError(f"cost {cost_s} s is negative or too large for the solver's grid")
    return units


def _build_model(tables: CostTables, memory_budget_bytes: int | None
                 ) -> tuple[cp_model.CpModel, list[list[cp_model.IntVar]]]:
    """CP-SAT model of the module docstring's ILP; returns it and the x[o][s] booleans."""
    model = cp_model.CpModel()
    x = [[model.new_bool_var(f"x[{o},{s}]") for s in range(len(c))]
         for o, c in enumerate(tables.node_s)]
    for row in x:
        model.add_exactly_one(row)
    variables = [v for row in x for v in row]
    coeffs = [_units(c) for costs in tables.node_s for c in costs]
    for e, (u, v) in enumerate(tables.edge_ends):
        r = tables.edge_s[e]
        if not r.any():
            continue
        y = [[model.new_bool_var(f"y[{e},{i},{j}]") for j in range(r.shape[1])]
             for i in range(r.shape[0])]
        for i, row in enumerate(y):
            model.add(sum(row) == x[u][i])
        for j in range(r.shape[1]):
            model.add(sum(y[i][j] for i in range(r.shape[0])) == x[v][j])
        variables += [y[i][j] for i, j in zip(*np.nonzero(r))]
        coeffs += [_units(r[i, j]) for i, j in zip(*np.nonzero(r))]
    model.minimize(cp_model.LinearExpr.weighted_sum(variables, coeffs))
    if memory_budget_bytes is not None:
        mem = [int(m) for ms in tables.memory_bytes for m in ms]
        model.add(cp_model.LinearExpr.weighted_sum([v for row in x for v in row], mem)
                  <= int(memory_budget_bytes))
    return model, x


def _no_plan(status: SolveStatus, tables: CostTables, budget: int | None, time_limit_s: float,
             seconds: float) -> ShardingResult:
    if status == SolveStatus.INFEASIBLE:
        least = sum(int(m.min()) for m in tables.memory_bytes)
        message = (f"no assignment fits the memory budget of {budget} bytes (the operators "
                   f"need at least {least} bytes together): raise the budget or the tp degree")
    else:
        message = f"no plan found within {time_limit_s} s: raise time_limit_s"
    return ShardingResult(status, None, None, None, {}, (), None, seconds, message)


def solve_sharding(graph: OpGraph, *, memory_budget_bytes: int | None = None,
                   time_limit_s: float = 10.0, num_workers: int = 1,
                   seed: int = 0) -> ShardingResult:
    """Least-cost strategy per operator (Alpa Sec. 4 ILP), solved by CP-SAT within
    `time_limit_s`. One worker and a fixed seed make the answer reproducible."""
    tables = cost_tables(graph)
    model, x = _build_model(tables, memory_budget_bytes)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = num_workers
    solver.parameters.random_seed = seed
    start = time.perf_counter()
    code = solver.solve(model)
    seconds = time.perf_counter() - start
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the sharding model: {model.validate()}")
    status = SolveStatus(solver.status_name(code))
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return _no_plan(status, tables, memory_budget_bytes, time_limit_s, seconds)
    picked = [next(s for s, v in enumerate(row) if solver.value(v)) for row in x]
    choices = {op.name: graph.strategies[op.name][s].name
               for op, s in zip(graph.operators, picked)}
    objective, bound = solver.objective_value, solver.best_objective_bound
    gap = 0.0 if status == SolveStatus.OPTIMAL or objective <= 0 else (
        (objective - bound) / objective)
    return ShardingResult(status, plan_cost_s(graph, choices), bound * COST_RESOLUTION_S,
                          gap, choices, plan_reshards(graph, choices),
                          plan_memory_bytes(graph, choices), seconds)
