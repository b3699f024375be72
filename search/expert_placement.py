"""Expert placement: which devices hold a replica of each expert of one MoE layer, and how
each expert's tokens are split among its replicas.

Decides: replicas per expert (hot experts may get several when memory allows), the device of
each replica and the share of the expert's load each replica serves, to minimise (1) the load
of the most loaded device and then (2) the token-expert assignments that cross nodes. Also
scores the two fixed placements the issue compares against: conventional EP=k (k contiguous
blocks of experts/k experts on k devices, the group replicated over the rest as in data
parallelism) and large EP (one expert per device, EP = experts, across nodes; seed 002).
Does not decide time or bytes: `compare_placements` takes a function that turns one expert's
tokens into seconds, and the caller multiplies assignments by bytes.

Traffic model. Every device originates the same number of tokens, so each node originates
the same share 1/nodes of each expert's load W_e. Fixed placements route within their EP
group (a token goes to its own group's replica). The program routes replica-aware: a
token may go to any replica; given the served amounts s_{e,d}, the fewest assignments that
cross nodes is sum_e (W_e - sum_n min(W_e/nodes, sum_{d in n} s_{e,d})) (a transportation
problem with cost 0 inside a node and 1 across, whose optimum keeps min(origin, served) on
each node). A fixed placement's group routing is one feasible routing, so the program's
answer, warm-started from the conventional placement, is never worse (verified on return).

Integer program (OR-Tools CP-SAT), loads in integer units (UNITS_PER_DEVICE per device on
average; o_e units of expert e originate on each node, w_e = nodes * o_e):
    x[e,d] in {0,1} replica of e on d;  y[e,d] in [0, w_e] units of e served on d
    y[e,d] <= w_e x[e,d];  sum_d y[e,d] = w_e;  sum_d x[e,d] >= 1;  sum_e x[e,d] <= slots
    sum_e y[e,d] <= L;  local[e,n] <= o_e;  local[e,n] <= sum_{d in n} y[e,d]
    minimise (sum_e w_e + 1) * L + (sum_e w_e - sum_{e,n} local[e,n])   (lexicographic)
Symmetry: devices of one node are interchangeable, so their loads are ordered (descending).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from planner.errors import InfeasibleError, SpecError

WALL_CAP_FACTOR = 10.0
"""The solver stops at time_limit_s deterministic seconds (reproducible) or at
WALL_CAP_FACTOR * time_limit_s wall seconds on a slow or busy machine (reported)."""
UNITS_PER_DEVICE = 1000
"""Integer load units per device on average: the program's loads are rounded to
1/UNITS_PER_DEVICE of a device's mean load (0.1%)."""


@dataclass(frozen=True)
class UnitProblem:
    """The integer program's data: o_e units of each expert originate on each node."""

    origin_units: tuple[int, ...]
    devices: int
    devices_per_node: int
    slots: int

    @property
    def nodes(self) -> int:
        return max(1, self.devices // self.devices_per_node)

    def node_of(self, device: int) -> int:
        return device // self.devices_per_node if self.nodes > 1 else 0

    @property
    def expert_units(self) -> tuple[int, ...]:
        return tuple(o * self.nodes for o in self.origin_units)


@dataclass(frozen=True)
class UnitSolution:
    """served[e][d]: units of expert e served on device d; replicas[e]: devices holding e."""

    served: tuple[tuple[int, ...], ...]
    replicas: tuple[tuple[int, ...], ...]
    max_load: int
    cross: int
    status: str            # OPTIMAL, FEASIBLE, or HINT (the warm start kept: solver no better)
    bound_max_load: float  # solver's proven lower bound on max_load
    solve_time_s: float
    wall_capped: bool = False  # stopped by the wall-clock cap: may differ between runs


@dataclass(frozen=True)
class Placement:
    """One placement of a layer's experts, scored."""

    name: str
    routing: str                               # "ep-group" or "replica-aware"
    replicas: tuple[tuple[int, ...], ...]      # per expert: devices holding a replica
    shares: tuple[tuple[float, ...], ...]      # per expert: share of its load per replica
    device_load: tuple[float, ...]             # assignments served per device per step
    max_load: float
    imbalance: float                           # max_load / mean device load
    cross_node_assignments: float              # per step
    slots_used: int                            # largest number of experts on one device
    max_device_s: float | None = None          # expert forward seconds of the busiest device


def check_problem(loads: Sequence[float], *, devices: int, devices_per_node: int,
                  slots: int) -> None:
    """Raise SpecError / InfeasibleError for inputs no placement can serve."""
    if devices < 1 or devices_per_node < 1:
        raise SpecError("devices and devices per node must be at least 1")
    if devices > devices_per_node and devices % devices_per_node:
        raise SpecError(f"{devices} devices are not whole {devices_per_node}-device nodes; "
                        "use a multiple of the node size")
    if any(not math.isfinite(w) or w < 0 for w in loads):
        raise SpecError("expert loads must be finite and non-negative")
    if slots < 1:
        raise SpecError(f"slots per device must be at least 1, got {slots}")
    if slots * devices < len(loads):
        raise InfeasibleError(f"{len(loads)} experts do not fit in {devices} devices x {slots} "
                              f"slots; give at least {math.ceil(len(loads) / devices)} slots "
                              "or more devices")


def to_units(loads: Sequence[float], *, devices: int, devices_per_node: int,
             slots: int) -> UnitProblem:
    """Round float loads to the program's integer units (see UNITS_PER_DEVICE)."""
    check_problem(loads, devices=devices, devices_per_node=devices_per_node, slots=slots)
    nodes = max(1, devices // devices_per_node)
    total = float(sum(loads))
    unit = total / (UNITS_PER_DEVICE * devices) if total > 0 else 1.0
    origin = tuple(int(round(w / nodes / unit)) for w in loads)
    return UnitProblem(origin, devices, devices_per_node, slots)


# --------------------------------------------------------------------------- scoring


def unit_objective(problem: UnitProblem, served: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(max device load, cross-node units) of a split, with replica-aware routing."""
    loads = [sum(col) for col in zip(*served)]
    cross = 0
    for e, row in enumerate(served):
        per_node = [0] * problem.nodes
        for d, s in enumerate(row):
            per_node[problem.node_of(d)] += s
        o = problem.origin_units[e]
        cross += problem.expert_units[e] - sum(min(o, s) for s in per_node)
    return max(loads), cross


def ep_layout(experts: int, devices: int, ep: int) -> tuple[tuple[int, ...], ...]:
    """Replicas of the EP=ep placement: group g = devices [g*ep, (g+1)*ep); its i-th device
    holds experts [i*experts/ep, (i+1)*experts/ep) (contiguous blocks)."""
    if ep < 1 or experts % ep or devices % ep:
        raise SpecError(f"EP={ep} must divide the {experts} experts and the {devices} devices")
    block = experts // ep
    return tuple(tuple(g * ep + e // block for g in range(devices // ep)) for e in range(experts))


def score_ep(loads: Sequence[float], *, devices: int, devices_per_node: int, ep: int,
             name: str) -> Placement:
    """Score EP=ep with group routing: each group serves its own devices' tokens."""
    replicas = ep_layout(len(loads), devices, ep)
    groups = devices // ep
    node = (lambda d: d // devices_per_node) if devices > devices_per_node else (lambda d: 0)
    device_load = [0.0] * devices
    cross = 0.0
    for e, reps in enumerate(replicas):
        for d in reps:
            device_load[d] += loads[e] / groups
            g0 = d - d % ep
            away = sum(1 for s in range(g0, g0 + ep) if node(s) != node(d))
            cross += loads[e] / groups * away / ep
    return _placement(name, "ep-group", replicas,
                      tuple((1.0 / groups,) * groups for _ in replicas), device_load, cross)


def score_split(loads: Sequence[float], *, devices: int, devices_per_node: int,
                replicas: Sequence[Sequence[int]], shares: Sequence[Sequence[float]],
                name: str) -> Placement:
    """Score any placement with replica-aware routing (see module docstring)."""
    nodes = max(1, devices // devices_per_node)
    node = (lambda d: d // devices_per_node) if nodes > 1 else (lambda d: 0)
    device_load = [0.0] * devices
    cross = 0.0
    for e, (reps, sh) in enumerate(zip(replicas, shares)):
        served = [0.0] * nodes
        for d, f in zip(reps, sh):
            device_load[d] += loads[e] * f
            served[node(d)] += loads[e] * f
        cross += loads[e] - sum(min(loads[e] / nodes, s) for s in served)
    return _placement(name, "replica-aware", tuple(map(tuple, replicas)),
                      tuple(map(tuple, shares)), device_load, max(cross, 0.0))


def _placement(name: str, routing: str, replicas: tuple[tuple[int, ...], ...],
               shares: tuple[tuple[float, ...], ...], device_load: list[float],
               cross: float) -> Placement:
    mean = sum(device_load) / len(device_load)
    slots = [0] * len(device_load)
    for reps in replicas:
        for d in reps:
            slots[d] += 1
    peak = max(device_load)
    return Placement(name, routing, replicas, shares, tuple(device_load), peak,
                     peak / mean if mean > 0 else 1.0, cross, max(slots))


# --------------------------------------------------------------------------- program


def _hint_units(problem: UnitProblem, replicas: Sequence[Sequence[int]]) -> list[list[int]]:
    """An integer split of each expert's units as even as possible over its replicas."""
    served = [[0] * problem.devices for _ in replicas]
    for e, reps in enumerate(replicas):
        q, r = divmod(problem.expert_units[e], len(reps))
        for i, d in enumerate(reps):
            served[e][d] = q + (1 if i < r else 0)
    return served


def greedy_layout(problem: UnitProblem) -> tuple[tuple[int, ...], ...]:
    """A quick placement to warm-start the program (in the manner of DeepSeek's EPLB
    "replicate the heaviest, then pack"): every free slot goes to one more replica of the
    expert with the largest load per replica, then replicas, largest share first, go to the
    least loaded device that has a free slot and no replica of that expert yet (preferring a
    node without one). A replica that finds no such device is dropped."""
    w, D, S = problem.expert_units, problem.devices, problem.slots
    count = [1] * len(w)
    for _ in range(D * S - len(w)):
        e = max(range(len(w)), key=lambda i: (w[i] / count[i], -i))
        if count[e] >= D or w[e] == 0:
            break
        count[e] += 1
    items = sorted(((w[e] / count[e], e) for e in range(len(w)) for _ in range(count[e])),
                   key=lambda t: (-t[0], t[1]))
    load, free = [0.0] * D, [S] * D
    reps: list[list[int]] = [[] for _ in w]
    for share, e in items:
        nodes_with = {problem.node_of(d) for d in reps[e]}
        options = [d for d in range(D) if free[d] and d not in reps[e]]
        if not options:
            continue
        d = min(options, key=lambda i: (load[i], problem.node_of(i) in nodes_with, i))
        reps[e].append(d)
        load[d] += share
        free[d] -= 1
    return tuple(tuple(r) for r in reps)


def _sorted_within_nodes(problem: UnitProblem, served: list[list[int]]) -> list[list[int]]:
    """Relabel devices inside each node so loads descend (the symmetry-breaking order)."""
    loads = [sum(col) for col in zip(*served)]
    perm: list[int] = []
    d = problem.devices_per_node if problem.nodes > 1 else problem.devices
    for start in range(0, problem.devices, d):
        ids = list(range(start, min(start + d, problem.devices)))
        perm += sorted(ids, key=lambda i: (-loads[i], i))
    return [[row[perm[j]] for j in range(problem.devices)] for row in served]


def solve_units(problem: UnitProblem, *, hint: Sequence[Sequence[int]] | None = None,
                time_limit_s: float = 5.0, seed: int = 0) -> UnitSolution:
    """Solve the integer program (module docstring). `hint` (replica devices per expert) warm-
    starts it; the hint's even split is returned instead when the solver ends no better.
    Deterministic: one worker and a deterministic-time limit (CP-SAT's work measure, close
    to seconds of one core), so the same inputs give the same answer."""
    start = time.perf_counter()
    E, D = len(problem.origin_units), problem.devices
    w = problem.expert_units
    total = sum(w)
    big = total + 1
    m = cp_model.CpModel()
    x = [[m.new_bool_var(f"x{e}_{d}") for d in range(D)] for e in range(E)]
    y = [[m.new_int_var(0, w[e], f"y{e}_{d}") for d in range(D)] for e in range(E)]
    lmax = m.new_int_var(-(-total // D), total, "L")
    for e in range(E):
        m.add(sum(y[e]) == w[e])
        m.add(sum(x[e]) >= 1)
        for d in range(D):
            m.add(y[e][d] <= w[e] * x[e][d])
    loads = [sum(y[e][d] for e in range(E)) for d in range(D)]
    for d in range(D):
        m.add(sum(x[e][d] for e in range(E)) <= problem.slots)
        m.add(loads[d] <= lmax)
    per_node = problem.devices_per_node if problem.nodes > 1 else D
    for d in range(D - 1):
        if (d + 1) % per_node:
            m.add(loads[d] >= loads[d + 1])
    local = []
    for e in range(E):
        for n in range(problem.nodes):
            v = m.new_int_var(0, problem.origin_units[e], f"l{e}_{n}")
            m.add(v <= sum(y[e][d] for d in range(D) if problem.node_of(d) == n))
            local.append(v)
    m.minimize(big * lmax + (total - sum(local)))
    starts = [_hint_units(problem, greedy_layout(problem))]
    if hint is not None:
        starts.append(_hint_units(problem, hint))
    hint_served = _sorted_within_nodes(problem, min(starts, key=lambda s: unit_objective(
        problem, s)))
    for e in range(E):
        for d in range(D):
            m.add_hint(y[e][d], hint_served[e][d])
            m.add_hint(x[e][d], hint_served[e][d] > 0)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = max(0.01, float(time_limit_s))
    solver.parameters.max_time_in_seconds = WALL_CAP_FACTOR * max(0.01, float(time_limit_s))
    status = solver.solve(m)
    wall_capped = solver.wall_time >= WALL_CAP_FACTOR * max(0.01, float(time_limit_s)) * 0.99
    return _solution(problem, solver, status, x, y, hint_served, start, wall_capped)


def _solution(problem: UnitProblem, solver: cp_model.CpSolver, status: int, x: list, y: list,
              hint_served: list[list[int]], start: float, wall_capped: bool) -> UnitSolution:
    big = sum(problem.expert_units) + 1
    bound = solver.best_objective_bound / big if status in (cp_model.OPTIMAL,
                                                          cp_model.FEASIBLE) else 0.0
    candidates = []
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        served = [[int(solver.value(v)) for v in row] for row in y]
        x = [[solver.boolean_value(v) and s > 0 or (w == 0 and solver.boolean_value(v))
              for v, s in zip(xr, sr)] for xr, sr, w in zip(x, served, problem.expert_units)]
        reps = [[d for d, v in enumerate(row) if v] for row in x]
        candidates.append((unit_objective(problem, served), served, reps,
                           solver.status_name(status)))
    reps = [[d for d, s in enumerate(row) if s > 0] or [row.index(max(row))]
            for row in hint_served]
    candidates.append((unit_objective(problem, hint_served), hint_served, reps, "HINT"))
    (obj, served, reps, name) = min(candidates, key=lambda c: c[0])   # ties: the solver's
    return UnitSolution(tuple(map(tuple, served)), tuple(map(tuple, reps)), obj[0], obj[1],
                        name, max(math.floor(bound), -(-sum(problem.expert_units) //
                                                      problem.devices)),
                        time.perf_counter() - start, wall_capped)


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """The three placements of one layer side by side, and the program's report."""

    conventional: Placement
    large_ep: Placement | None
    large_ep_note: str
    ilp: Placement
    status: str
    gap: float               # (max load - proven bound) / max load, in the program's units
    solve_time_s: float
    wall_capped: bool        # stopped by the wall-clock cap (then runs may differ)


def compare_placements(loads: Sequence[float], *, devices: int, devices_per_node: int,
                       ep: int, slots: int | None = None, time_limit_s: float = 5.0,
                       expert_seconds: Callable[[float], float] | None = None) -> Comparison:
    """Conventional EP=ep, large EP (one expert per device) and the program's placement.

    Args:
        loads: expected token-expert assignments per expert per step (whole job).
        devices, devices_per_node: the cluster slice.
        ep: conventional EP degree (divides experts and devices).
        slots: experts one device may hold (memory budget); None = experts / ep, the
            conventional placement's memory, so the program competes on equal memory.
        time_limit_s: solver budget (deterministic seconds).
        expert_seconds: forward seconds of one expert serving a given number of tokens.
    Returns:
        A `Comparison`; its `ilp.max_load` is never above `conventional.max_load` when the
        conventional placement fits in `slots`.
    """
    loads = [float(w) for w in loads]
    experts = len(loads)
    slots = experts // ep if slots is None else slots
    check_problem(loads, devices=devices, devices_per_node=devices_per_node, slots=slots)
    conv = score_ep(loads, devices=devices, devices_per_node=devices_per_node, ep=ep,
                    name=f"conventional ep={ep}")
    large, note = None, ""
    if devices % experts == 0:
        large = score_ep(loads, devices=devices, devices_per_node=devices_per_node, ep=experts,
                         name=f"large ep={experts}")
    else:
        note = f"needs a multiple of {experts} devices (one expert per device), have {devices}"
    problem = to_units(loads, devices=devices, devices_per_node=devices_per_node, slots=slots)
    hint = ep_layout(experts, devices, ep) if experts // ep <= slots else None
    sol = solve_units(problem, hint=hint, time_limit_s=time_limit_s)
    shares = [tuple(sol.served[e][d] / w if w else 1.0 / len(reps) for d in reps)
              for e, (reps, w) in enumerate(zip(sol.replicas, problem.expert_units))]
    ilp = score_split(loads, devices=devices, devices_per_node=devices_per_node,
                      replicas=sol.replicas, shares=shares, name="integer program")
    if hint is not None and _worse(ilp, conv):
        # rounding to units made the answer worse in real loads: keep the conventional one
        ilp = score_split(loads, devices=devices, devices_per_node=devices_per_node,
                          replicas=hint, shares=conv.shares, name="integer program")
    gap = (sol.max_load - sol.bound_max_load) / sol.max_load if sol.max_load else 0.0
    if expert_seconds is not None:
        conv, ilp = (_timed(p, loads, expert_seconds) for p in (conv, ilp))
        large = _timed(large, loads, expert_seconds) if large is not None else None
    return Comparison(conv, large, note, ilp, sol.status, max(gap, 0.0), sol.solve_time_s,
                      sol.wall_capped)


def _worse(a: Placement, b: Placement, rel: float = 1e-9) -> bool:
    """Whether a is lexicographically worse than b in (max load, cross-node assignments)."""
    if a.max_load > b.max_load * (1 + rel):
        return True
    return (a.max_load >= b.max_load * (1 - rel)
            and a.cross_node_assignments > b.cross_node_assignments * (1 + rel) + rel)


def _timed(p: Placement, loads: Sequence[float], seconds: Callable[[float], float]) -> Placement:
    """The busiest device's expert time: each replica runs its share of tokens separately."""
    per_device = [0.0] * len(p.device_load)
    for e, (reps, sh) in enumerate(zip(p.replicas, p.shares)):
        for d, f in zip(reps, sh):
            if loads[e] * f > 0:
                per_device[d] += seconds(loads[e] * f)
    return Placement(**{**p.__dict__, "max_device_s": max(per_device)})
