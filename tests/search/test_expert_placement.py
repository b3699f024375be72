"""Expert placement program: brute force on small cases, never worse than conventional EP."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import InfeasibleError, SpecError
from search import expert_placement as xp


def _splits(total: int, parts: int):
    """Every vector of `parts` non-negative ints summing to `total`."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        prev, out = -1, []
        for c in cuts + (total + parts - 1,):
            out.append(c - prev - 1)
            prev = c
        yield tuple(out)


def brute_force(problem: xp.UnitProblem) -> tuple[int, int]:
    """Exhaustive optimum of (max device load, cross-node units): every split of every
    expert's units over the devices (its replicas are the devices with a positive share; an
    expert with no load sits on any one device), by dynamic programming over experts on the
    state (device loads, free slots) -> fewest cross-node units so far."""
    D, nodes = problem.devices, problem.nodes
    states: dict[tuple, int] = {((0,) * D, (problem.slots,) * D): 0}
    for e, w in enumerate(problem.expert_units):
        o = problem.origin_units[e]
        options = []
        for y in (_splits(w, D) if w else ()):
            per_node = [0] * nodes
            for d, s in enumerate(y):
                per_node[problem.node_of(d)] += s
            options.append((y, tuple(int(s > 0) for s in y),
                            w - sum(min(o, s) for s in per_node)))
        if not w:
            options = [((0,) * D, tuple(int(i == d) for i in range(D)), 0) for d in range(D)]
        nxt: dict[tuple, int] = {}
        for (loads, free), cross in states.items():
            for y, used, c in options:
                if any(u > f for u, f in zip(used, free)):
                    continue
                key = (tuple(a + b for a, b in zip(loads, y)),
                       tuple(f - u for f, u in zip(free, used)))
                if cross + c < nxt.get(key, math.inf):
                    nxt[key] = cross + c
        states = nxt
    return min((max(loads), cross) for (loads, _), cross in states.items())


@st.composite
def unit_problems(draw):
    devices = draw(st.sampled_from([2, 3, 4]))
    # mostly several nodes (where cross-node traffic matters), sometimes one
    per_node = draw(st.sampled_from([d for d in (1, 2, 1, 2, devices) if devices % d == 0]))
    experts = draw(st.integers(2, 4 if devices < 4 else 3))
    slots = draw(st.integers(math.ceil(experts / devices), 2))
    nodes = max(1, devices // per_node)
    origin = draw(st.lists(st.integers(0, max(1, 6 // nodes // experts + 1)), min_size=experts, max_size=experts))
    return xp.UnitProblem(tuple(origin), devices, per_node, slots)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(unit_problems())
def test_program_matches_brute_force(problem):
    sol = xp.solve_units(problem, time_limit_s=5.0)
    assert sol.status in ("OPTIMAL", "HINT")
    assert (sol.max_load, sol.cross) == brute_force(problem)
    assert (sol.max_load, sol.cross) == xp.unit_objective(problem, sol.served)
    # the answer respects the constraints
    for reps, row, w in zip(sol.replicas, sol.served, problem.expert_units):
        assert len(reps) >= 1 and sum(row) == w
        assert all(row[d] == 0 for d in range(problem.devices) if d not in reps)
    for d in range(problem.devices):
        assert sum(d in reps for reps in sol.replicas) <= problem.slots


def test_known_optimum_hot_expert_replicated():
    """One expert carries 6 of 8 units on 2 nodes of 2 devices with 2 slots: replicating the
    hot expert on all four devices gives max load 2 and no cross-node traffic."""
    p = xp.UnitProblem((3, 1), devices=4, devices_per_node=2, slots=2)
    sol = xp.solve_units(p, time_limit_s=5.0)
    assert (sol.max_load, sol.cross) == (2, 0) == brute_force(p)


def _zipf_loads(experts: int, alpha: float, order: list[int], tokens: float) -> list[float]:
    weights = [1.0 / (1 + order.index(e)) ** alpha for e in range(experts)]
    return [tokens * w / sum(weights) for w in weights]


@settings(max_examples=15, deadline=None, derandomize=True)
@given(experts=st.sampled_from([4, 8]), devices=st.sampled_from([8, 16]),
       alpha=st.floats(0.0, 2.0), data=st.data())
def test_never_worse_than_conventional(experts, devices, alpha, data):
    order = data.draw(st.permutations(list(range(experts))))
    ep = data.draw(st.sampled_from([k for k in (2, 4, 8) if experts % k == 0 and k <= devices]))
    loads = _zipf_loads(experts, alpha, order, tokens=4096.0 * devices)
    c = xp.compare_placements(loads, devices=devices, devices_per_node=8, ep=ep,
                              time_limit_s=0.3)
    assert not xp._worse(c.ilp, c.conventional)
    assert c.ilp.slots_used <= experts // ep
    assert sum(c.ilp.device_load) == pytest.approx(sum(loads))


def test_same_inputs_same_output():
    loads = _zipf_loads(8, 1.2, [3, 1, 7, 0, 5, 2, 6, 4], 65536.0)
    runs = [xp.compare_placements(loads, devices=16, devices_per_node=8, ep=8, slots=2,
                                  time_limit_s=0.2) for _ in range(2)]
    assert not any(r.wall_capped for r in runs)    # stopped by the deterministic limit
    assert runs[0].ilp.replicas == runs[1].ilp.replicas
    assert runs[0].ilp.shares == runs[1].ilp.shares


def test_fixed_placements_by_hand():
    # 4 experts, 8 devices in 2 nodes of 4. EP=4: each node holds every expert once, group
    # routing stays in the node. Large EP (EP=4 too here) is the same; EP=8 does not divide.
    loads = [400.0, 200.0, 100.0, 100.0]
    conv = xp.score_ep(loads, devices=8, devices_per_node=4, ep=4, name="c")
    assert conv.max_load == 200.0 and conv.cross_node_assignments == 0.0
    assert conv.imbalance == pytest.approx(200.0 / 100.0)
    # EP=2 on 2-device nodes... groups of 2 inside nodes; 8 devices in nodes of 1: every
    # token of a 2-device group reaches the other device's expert across nodes half the time.
    spread = xp.score_ep(loads, devices=4, devices_per_node=1, ep=2, name="s")
    assert spread.cross_node_assignments == pytest.approx(sum(loads) / 2)


def test_bad_inputs():
    with pytest.raises(InfeasibleError, match="do not fit"):
        xp.compare_placements([1.0] * 8, devices=4, devices_per_node=4, ep=4, slots=1)
    with pytest.raises(SpecError, match="must divide"):
        xp.compare_placements([1.0] * 8, devices=8, devices_per_node=8, ep=3)
    with pytest.raises(SpecError, match="non-negative"):
        xp.compare_placements([1.0, -1.0], devices=2, devices_per_node=2, ep=2)


# --------------------------------------------------------------------------- CLI

from cli import app  # noqa: E402
from meshplan_cli.testing import cli_runner  # noqa: E402

RUNNER = cli_runner()
BASE = ["placement", "--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--gpus", "16",
        "--time-limit", "0.5"]


def test_cli_json_contract():
    res = RUNNER.invoke(app, BASE + ["--popularity", "zipf:1.0", "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    names = [p["name"] for p in data["placements"]]
    assert names == ["conventional ep=8", "large ep=8", "integer program"]
    conv, ilp = data["placements"][0], data["placements"][-1]
    assert ilp["max_device_load"] <= conv["max_device_load"] * (1 + 1e-9)
    assert data["inputs"]["slots"] == 1 and ilp["experts_per_device"] <= 1
    assert data["solver"]["status"] in ("OPTIMAL", "FEASIBLE", "HINT")
    # Mixtral expert: 3 * 4096 * 14336 parameters in bf16
    assert conv["expert_memory_gib_per_device_layer"] == pytest.approx(
        3 * 4096 * 14336 * 2 / 2**30)
    again = RUNNER.invoke(app, BASE + ["--popularity", "zipf:1.0", "--json"])
    assert json.loads(again.stdout)["placements"] == data["placements"]   # same inputs, same answer


def test_cli_table():
    res = RUNNER.invoke(app, BASE + ["--slots", "2"])
    assert res.exit_code == 0, res.stderr
    assert "integer program" in res.stdout and "conventional" in res.stdout
    assert "gap" in res.stdout


def test_cli_popularity_file_per_layer(tmp_path):
    f = tmp_path / "pop.json"
    f.write_text("[" + ",".join(["[8,4,2,1,1,1,1,1]"] * 32) + "]")
    res = RUNNER.invoke(app, BASE + ["--popularity", str(f), "--layer", "3", "--json"])
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("extra,match", [
    (["--popularity", "zipf:x"], "is not zipf:ALPHA"),
    (["--popularity", "missing.json"], "does not exist"),
    (["--layer", "40"], "is not an MoE layer"),
    (["--ep", "3"], "must divide"),
])
def test_cli_bad_input(extra, match):
    res = RUNNER.invoke(app, BASE + extra)
    assert res.exit_code == 2
    assert match in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("content,match", [
    ("[1, 2, 3]", "has 3 values but the model has 8 experts"),
    ("[1, 1, 1, 1, 1, 1, 1, -1]", "non-negative"),
    ('{"a": 1}', "must hold a list of numbers"),
    ("[[1,1,1,1,1,1,1,1]]", "has 1 layers but the model has 32 MoE layers"),
    ("[1, 2", "is not valid JSON"),
])
def test_cli_bad_popularity_file(tmp_path, content, match):
    f = tmp_path / "pop.json"
    f.write_text(content)
    res = RUNNER.invoke(app, BASE + ["--popularity", str(f)])
    assert res.exit_code == 2, res.stdout
    assert match in res.stderr


def test_cli_dense_model_and_too_few_slots():
    res = RUNNER.invoke(app, ["placement", "--model", "narayanan-7.5b", "--cluster", "dgx-a100",
                              "--gpus", "8"])
    assert res.exit_code == 2 and "has no MoE layers" in res.stderr
    res = RUNNER.invoke(app, ["placement", "--model", "seed002-moe-61l", "--cluster",
                              "dgx-h100", "--gpus", "16", "--slots", "4"])
    assert res.exit_code == 3 and "do not fit" in res.stderr
