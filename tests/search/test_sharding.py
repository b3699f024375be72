"""The intra-operator sharding ILP: Megatron's split rediscovered, sequence parallelism under an
activation budget, brute force on random graphs and on a block where token splitting wins,
and the solver's statuses."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from cost_models.comm import GroupLinks, group_links
from planner import ClusterSpec, ModelSpec, SpecError, load_cluster
from search.sharding import (
    COST_RESOLUTION_S, PARTIAL, REPLICATED, Collective, Edge, Layout, OpGraph, OpKind, Operator,
    Pass, ShardingResult, SolveStatus, Strategy, collective_counts, cost_tables, plan_cost_s,
    plan_memory_bytes, reshard_kind, solve_sharding, split,
)
from search.sharding_block import transformer_block_graph

A100_BF16_PEAK = 312e12
MEGATRON = {"ln1": "replicated", "qkv": "column", "attn": "heads", "proj": "row",
            "add1": "replicated", "ln2": "replicated", "up": "column", "act": "features",
            "down": "row", "add2": "replicated"}
"""Shoeybi et al. 2019, Sec. 3: column-split QKV and MLP-up, heads split, row-split out
projection and MLP-down, norms and residual adds replicated."""
SEQUENCE_PARALLEL = {**MEGATRON, "ln1": "tokens", "add1": "tokens", "ln2": "tokens",
                     "add2": "tokens"}
"""Korthikanti et al. 2022, Sec. 4.2.2: Megatron plus norms and residual adds on token shards."""


@pytest.fixture(scope="module")
def dgx() -> ClusterSpec:
    return load_cluster("dgx-a100")


def gpt_block(cluster: ClusterSpec, *, sequence_parallel: bool) -> OpGraph:
    """GPT-style block (h=4096, 32 heads, ffn=16384), 4096 tokens, tp=8 on NVSwitch, fwd+bwd."""
    model = ModelSpec(name="gpt-4096", num_layers=1, hidden_size=4096, num_attention_heads=32,
                      ffn_hidden_size=16384, vocab_size=0, norm="layernorm", activation="gelu")
    links = group_links(cluster, size=8, stride=1)
    return transformer_block_graph(model, tokens=4096, tp=8, links=links, backward=True,
                                   peak_flops=A100_BF16_PEAK, sequence_parallel=sequence_parallel)


def brute_force(graph: OpGraph, budget: int | None = None) -> tuple[float, dict[str, str]]:
    """Exhaustive minimum over every assignment, vectorised: one array axis per operator."""
    t, k = cost_tables(graph), len(graph.operators)
    shape = [len(c) for c in t.node_s]

    def along(arr: np.ndarray, axes: list[int]) -> np.ndarray:
        dims = [1] * k
        for ax, n in zip(axes, arr.shape):
            dims[ax] = n
        return arr.reshape(dims)

    cost, mem = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    for o in range(k):
        cost, mem = cost + along(t.node_s[o], [o]), mem + along(t.memory_bytes[o], [o])
    for r, (u, v) in zip(t.edge_s, t.edge_ends):
        cost = cost + (along(r, [u, v]) if u < v else along(r.T, [v, u]))
    if budget is not None:
        cost = np.where(mem <= budget, cost, np.inf)
    best = np.unravel_index(np.argmin(cost), shape)
    choices = {op.name: graph.strategies[op.name][i].name for op, i in zip(graph.operators, best)}
    return float(cost[best]), choices


def edges_of(result: ShardingResult, kind: Collective, pass_: Pass) -> set[tuple[str, str]]:
    return {(r.edge.src, r.edge.dst) for r in result.reshards
            if r.kind == kind and r.pass_ == pass_}


# ----- 1. Megatron's split ------------------------------------------------------------------
def test_rediscovers_megatron_split(dgx: ClusterSpec) -> None:
    graph = gpt_block(dgx, sequence_parallel=False)
    # Room for Megatron's plan plus half the smallest weight matrix (h x h): no weight matrix
    # fits replicated, let alone a full replica of the block's weights.
    budget = plan_memory_bytes(graph, MEGATRON) + 4096 * 4096 * 2 // 2
    res = solve_sharding(graph, memory_budget_bytes=budget, time_limit_s=5.0)
    assert res.status == SolveStatus.OPTIMAL
    assert res.choices == MEGATRON
    assert res.memory_bytes is not None and res.memory_bytes <= budget
    # g: one all-reduce after attention and one after the MLP in the forward pass; f: their
    # conjugates in the backward pass, before QKV and MLP-up (4 per block, Shoeybi Sec. 3).
    assert collective_counts(res, Pass.FORWARD) == {Collective.ALL_REDUCE: 2}
    assert edges_of(res, Collective.ALL_REDUCE, Pass.FORWARD) == {("proj", "add1"),
                                                                   ("down", "add2")}
    assert edges_of(res, Collective.ALL_REDUCE, Pass.BACKWARD) == {("ln1", "qkv"), ("ln2", "up")}
    assert collective_counts(res) == {Collective.ALL_REDUCE: 4}
    assert res.objective_s == pytest.approx(brute_force(graph, budget)[0], abs=1e-12)


def test_sequence_parallelism_when_activations_bind(dgx: ClusterSpec) -> None:
    """Between the activation memory of sequence parallelism and Megatron's, the ILP replaces
    each all-reduce by a reduce-scatter and an all-gather (Korthikanti et al. 2022)."""
    graph = gpt_block(dgx, sequence_parallel=True)
    sp, meg = plan_memory_bytes(graph, SEQUENCE_PARALLEL), plan_memory_bytes(graph, MEGATRON)
    assert sp < meg
    res = solve_sharding(graph, memory_budget_bytes=(sp + meg) // 2, time_limit_s=5.0)
    assert res.status == SolveStatus.OPTIMAL and res.choices == SEQUENCE_PARALLEL
    assert collective_counts(res) == {Collective.ALL_GATHER: 4, Collective.REDUCE_SCATTER: 4}
    assert edges_of(res, Collective.REDUCE_SCATTER, Pass.FORWARD) == {("proj", "add1"),
                                                                       ("down", "add2")}
    assert edges_of(res, Collective.ALL_GATHER, Pass.FORWARD) == {("ln1", "qkv"), ("ln2", "up")}
    unconstrained = solve_sharding(graph, time_limit_s=5.0)
    assert unconstrained.choices == MEGATRON and unconstrained.objective_s < res.objective_s


# ----- 2. brute force on random graphs --------------------------------------------------------
LAYOUTS_IN = [REPLICATED, split(0), split(1)]
LAYOUTS_OUT = [*LAYOUTS_IN, PARTIAL]
LINKS = GroupLinks(size=4, bandwidth_bytes_per_s=100e9, latency_s=1e-6, spans_nodes=False,
                   members_per_node=4)


def random_graph(rng: random.Random) -> OpGraph:
    """A chain of 3-5 operators (plus one skip edge into input slot 1 of the last), 2-3
    strategies each with random layouts, costs and memory."""
    n = rng.randint(3, 5)
    ops = tuple(Operator(f"op{i}", OpKind.MATMUL, (8, 8)) for i in range(n))

    def strategy(j: int) -> Strategy:
        ins = tuple(rng.choice(LAYOUTS_IN) for _ in range(2))
        grads = tuple(rng.choice(LAYOUTS_OUT) for _ in range(2)) if rng.random() < 0.5 else None
        return Strategy(f"s{j}", rng.uniform(0, 1e-3), rng.randint(0, 100),
                        rng.choice(LAYOUTS_OUT), ins, rng.uniform(0, 1e-4), grads)

    strategies = {op.name: tuple(strategy(j) for j in range(rng.randint(2, 3))) for op in ops}
    edges = [Edge(f"op{i}", f"op{i + 1}", rng.uniform(1e5, 1e8)) for i in range(n - 1)]
    edges.append(Edge("op0", f"op{n - 1}", rng.uniform(1e5, 1e8), slot=1))
    return OpGraph(ops, tuple(edges), strategies, LINKS, backward=rng.random() < 0.5)


def exhaustive(graph: OpGraph, budget: int | None) -> float | None:
    """Minimum of plan_cost_s over all assignments within the budget (None: none fits)."""
    names = [op.name for op in graph.operators]
    options = [[s.name for s in graph.strategies[n]] for n in names]
    best = None
    for combo in itertools.product(*options):
        choices = dict(zip(names, combo))
        if budget is None or plan_memory_bytes(graph, choices) <= budget:
            cost = plan_cost_s(graph, choices)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(50))
def test_ilp_matches_exhaustive_search(seed: int) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng)
    lo, hi = (sum(f(s.memory_bytes for s in ss) for ss in graph.strategies.values())
              for f in (min, max))
    budget = rng.choice([None, lo - 1, rng.randint(lo, hi), rng.randint(lo, hi)])
    want = exhaustive(graph, budget)
    res = solve_sharding(graph, memory_budget_bytes=budget, time_limit_s=2.0, seed=seed)
    if want is None:
        assert res.status == SolveStatus.INFEASIBLE and not res.choices
        return
    assert res.status == SolveStatus.OPTIMAL and res.gap == 0.0
    terms = len(graph.operators) + len(graph.edges)
    assert want - 1e-15 <= res.objective_s <= want + terms * COST_RESOLUTION_S
    assert res.objective_s == pytest.approx(plan_cost_s(graph, res.choices))


# ----- 3. status, bound and gap -----------------------------------------------------------------
def test_status_bound_and_gap_reported(dgx: ClusterSpec) -> None:
    graph = gpt_block(dgx, sequence_parallel=False)
    res = solve_sharding(graph, time_limit_s=5.0)
    assert res.status == SolveStatus.OPTIMAL and res.has_plan and res.gap == 0.0
    assert res.best_bound_s == pytest.approx(res.objective_s, abs=20 * COST_RESOLUTION_S)
    assert res.solve_seconds > 0 and res.message == ""


def test_infeasible_budget_returns_status_not_exception(dgx: ClusterSpec) -> None:
    graph = gpt_block(dgx, sequence_parallel=False)
    res = solve_sharding(graph, memory_budget_bytes=1_000_000, time_limit_s=5.0)
    assert res.status == SolveStatus.INFEASIBLE and not res.has_plan
    assert res.choices == {} and res.reshards == ()
    assert res.objective_s is None and res.best_bound_s is None and res.gap is None
    assert "memory budget of 1000000 bytes" in res.message and "raise" in res.message


# ----- 4. a block where Megatron's split is not the best ------------------------------------------
def test_token_split_beats_megatron_on_a_narrow_block(dgx: ClusterSpec) -> None:
    """h = ffn = 1024 over 16384 tokens: activations dwarf the 12 h^2 weights, so all-reducing
    weight gradients (token split) is cheaper than Megatron's four activation all-reduces.
    Attention still splits by heads, reached by all-to-alls (the DeepSpeed-Ulysses layout)."""
    model = ModelSpec(name="narrow", num_layers=1, hidden_size=1024, num_attention_heads=16,
                      ffn_hidden_size=1024, vocab_size=0, norm="layernorm")
    graph = transformer_block_graph(model, tokens=16384, seq_len=2048, tp=8,
                                    links=group_links(dgx, size=8, stride=1),
                                    peak_flops=A100_BF16_PEAK, backward=True)
    res = solve_sharding(graph, time_limit_s=5.0)
    best, choices = brute_force(graph)
    assert res.status == SolveStatus.OPTIMAL
    assert res.objective_s == pytest.approx(best, abs=30 * COST_RESOLUTION_S)
    assert res.choices == choices
    assert all(res.choices[m] == "tokens" for m in ("qkv", "proj", "up", "down"))
    assert res.choices["attn"] == "heads"
    assert collective_counts(res) == {Collective.ALL_TO_ALL: 4}
    assert res.objective_s < 0.9 * plan_cost_s(graph, MEGATRON)


# ----- resharding rules and input checks --------------------------------------------------------
@pytest.mark.parametrize(("src", "dst", "kind"), [
    (REPLICATED, REPLICATED, None), (split(0), split(0), None), (REPLICATED, split(1), None),
    (PARTIAL, REPLICATED, Collective.ALL_REDUCE), (PARTIAL, split(0), Collective.REDUCE_SCATTER),
    (split(1), REPLICATED, Collective.ALL_GATHER), (split(1), split(0), Collective.ALL_TO_ALL),
])
def test_reshard_rules(src: Layout, dst: Layout, kind: Collective | None) -> None:
    assert reshard_kind(src, dst) == kind


def test_rejects_partial_inputs_and_mismatched_links(dgx: ClusterSpec) -> None:
    with pytest.raises(ValueError, match="partial"):
        Strategy("bad", 0.0, 0, REPLICATED, (PARTIAL,))
    model = ModelSpec(name="m", num_layers=1, hidden_size=64, num_attention_heads=4,
                      ffn_hidden_size=256, vocab_size=0)
    with pytest.raises(SpecError, match="tp=8"):
        transformer_block_graph(model, tokens=64, tp=8, links=group_links(dgx, size=4, stride=1),
                                peak_flops=A100_BF16_PEAK)
