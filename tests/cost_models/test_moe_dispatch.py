"""The MoE dispatch volume inside and across nodes by hand (cost_models.comm.moe_dispatch_s)."""

from __future__ import annotations

import math

import pytest

from cost_models import comm
from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY, INTRA_NODE_LINK_EFFICIENCY
from planner import load_cluster


def test_remote_nodes_per_token() -> None:
    # 256 experts on 4 nodes, top-8: 3 * (1 - C(192, 8) / C(256, 8))
    want = 3 * (1 - math.comb(192, 8) / math.comb(256, 8))
    assert comm.remote_nodes_per_token(256, 8, 4) == pytest.approx(want)
    assert comm.remote_nodes_per_token(256, 8, 1) == 0.0
    # top-1: the token's expert is on another node with probability (N-1)/N
    assert comm.remote_nodes_per_token(64, 1, 8) == pytest.approx(7 / 8)


def test_dispatch_inside_a_node_sends_one_row_per_expert() -> None:
    cl = load_cluster("dgx-b200")
    links = comm.group_links(cl, size=8, stride=1)
    t = comm.moe_dispatch_s(links, cl, tokens=4096, top_k=8, experts=128, row_bytes=4096)
    assert t == pytest.approx(comm.all_to_all_s(links, cl, 4096 * 8 * 4096))


def test_dispatch_across_nodes_sends_a_token_once_per_node() -> None:
    cl = load_cluster("dgx-b200")                      # 8 GPUs per node
    links = comm.group_links(cl, size=32, stride=1)    # 4 nodes, 8 members each
    assert links.spans_nodes and links.members_per_node == 8
    tokens, k, E, row = 4096, 8, 256, 7168 * 2
    inter = tokens * comm.remote_nodes_per_token(E, k, 4) * row / (50e9 * INTER_NODE_LINK_EFFICIENCY)
    intra = tokens * k * 7 / 8 * row / (900e9 * INTRA_NODE_LINK_EFFICIENCY)
    t = comm.moe_dispatch_s(links, cl, tokens=tokens, top_k=k, experts=E, row_bytes=row)
    assert t == pytest.approx(max(inter, intra) + 31 * 5e-6)
    # far less than an all-to-all of every (token, expert) copy through the NIC
    assert t < 0.5 * comm.all_to_all_s(links, cl, tokens * k * row)


def test_alltoall_dispatcher_sends_every_copy_across_nodes() -> None:
    """dispatcher=alltoall (Megatron-Core's NCCL all-to-all): across nodes the same all-to-all
    of one row per (token, expert) pair as inside a node; inside a node both dispatchers agree."""
    cl = load_cluster("dgx-b200")
    tokens, k, E, row = 4096, 8, 256, 7168 * 2
    across = comm.group_links(cl, size=32, stride=1)
    t = comm.moe_dispatch_s(across, cl, tokens=tokens, top_k=k, experts=E, row_bytes=row,
                            per_node=False)
    assert t == pytest.approx(comm.all_to_all_s(across, cl, tokens * k * row))
    assert t > comm.moe_dispatch_s(across, cl, tokens=tokens, top_k=k, experts=E, row_bytes=row)
    inside = comm.group_links(cl, size=8, stride=1)
    assert comm.moe_dispatch_s(inside, cl, tokens=tokens, top_k=k, experts=E, row_bytes=row,
                               per_node=False) == pytest.approx(comm.moe_dispatch_s(
                                   inside, cl, tokens=tokens, top_k=k, experts=E, row_bytes=row))


def test_dispatcher_plan_key_changes_only_cross_node_ep() -> None:
    """Evaluated end to end: the alltoall dispatcher costs more EP time than flex when the EP
    group spans nodes, the same when it fits in one node; the key round-trips."""
    from planner import Dispatcher, Plan, TrainingWorkload, load_model
    from planner.api import evaluate
    from planner.plan import parse_plan

    m, cl = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100")
    wl = TrainingWorkload(global_batch_size=64, seq_len=4096)

    def ep_s(ep: int, dispatcher: Dispatcher) -> float:
        plan = Plan(dp=16, ep=ep, zero=1, dispatcher=dispatcher)
        return evaluate(m, cl, wl, plan, devices=16).breakdown["ep_comm"]

    assert ep_s(16, Dispatcher.ALLTOALL) > 1.5 * ep_s(16, Dispatcher.FLEX)
    assert ep_s(8, Dispatcher.ALLTOALL) == pytest.approx(ep_s(8, Dispatcher.FLEX))

    def warned(ep: int) -> bool:
        est = evaluate(m, cl, wl, Plan(dp=16, ep=ep, zero=1, dispatcher=Dispatcher.ALLTOALL),
                       devices=16)
        return any(w.startswith("dispatcher=alltoall has no effect") for w in est.warnings)

    assert warned(8) and not warned(16)          # inside one 8-GPU node it changes nothing
    p = parse_plan("tp=1,pp=1,dp=16,ep=16,dispatcher=alltoall", devices=16)
    assert p.dispatcher == Dispatcher.ALLTOALL and "dispatcher=alltoall" in p.to_string()
    assert "dispatcher" not in Plan(dp=16, ep=16).to_string()      # flex is the default


def test_search_holds_a_fixed_dispatcher() -> None:
    """--fix dispatcher=alltoall reaches every plan the search returns (it is held, not
    searched: flex is never slower)."""
    from planner import Dispatcher, TrainingWorkload
    from planner.api import search

    r = search("qwen3-30b-a3b", "dgx-h100", TrainingWorkload(global_batch_size=64, seq_len=4096),
               devices=16, top_k=3, fixed={"dispatcher": Dispatcher.ALLTOALL})
    assert all("dispatcher=alltoall" in t.plan["plan"] for t in r.top)
    assert all(t.plan["dispatcher"] == "alltoall" for t in r.top)


# --- group-limited routing (DeepSeek-V3's node-limited routing) -----------------------------

import itertools  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _enumerated_remote_nodes(experts: int, top_k: int, nodes: int, groups: int,
                             group_topk: int) -> float:
    """By enumeration: every choice of group_topk groups (equally likely), then every choice
    of top_k experts among theirs (equally likely); count the nodes touched, and take the
    (nodes - 1) / nodes share of them that are another node than the token's own (by symmetry
    every node is equally likely to be touched)."""
    per_group, per_node = experts // groups, experts // nodes
    total, count = 0.0, 0
    for chosen in itertools.combinations(range(groups), group_topk):
        pool = [e for g in chosen for e in range(g * per_group, (g + 1) * per_group)]
        for picks in itertools.combinations(pool, top_k):
            total += len({e // per_node for e in picks})
            count += 1
    return (nodes - 1) / nodes * total / count


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(8, 2), (8, 4), (8, 8), (4, 2), (4, 4), (2, 2)]),   # (groups, nodes)
       st.integers(1, 3), st.integers(1, 4), st.integers(1, 2))
def test_group_limited_routing_matches_enumeration(gn: tuple[int, int], group_topk: int,
                                                    top_k: int, per_group: int) -> None:
    groups, nodes = gn
    group_topk = min(group_topk, groups)
    experts = groups * per_group
    top_k = min(top_k, group_topk * per_group)
    got = comm.remote_nodes_per_token(experts, top_k, nodes, groups=groups,
                                      group_topk=group_topk)
    assert got == pytest.approx(_enumerated_remote_nodes(experts, top_k, nodes, groups,
                                                         group_topk))
    # limiting the groups never sends a token to more nodes
    assert got <= comm.remote_nodes_per_token(experts, top_k, nodes) + 1e-12


def test_groups_spanning_nodes_match_enumeration() -> None:
    """Groups of 4 experts over 2 nodes each (8 nodes, 4 groups): only the chosen groups'
    nodes can be touched."""
    got = comm.remote_nodes_per_token(16, 3, 8, groups=4, group_topk=2)
    assert got == pytest.approx(_enumerated_remote_nodes(16, 3, 8, 4, 2))


def test_deepseek_v3_reaches_at_most_four_nodes() -> None:
    """256 experts in 8 groups, top-8 inside 4 groups; EP over 8 nodes (one group each): at
    most 4 nodes, 4 x (1 - C(96, 8)/C(128, 8)) = 3.63 of them on average, 7/8 of which are
    another node than the token's own, against 4.63 other nodes without the limit."""
    touched = 4 * (1 - math.comb(96, 8) / math.comb(128, 8))
    got = comm.remote_nodes_per_token(256, 8, 8, groups=8, group_topk=4)
    assert got == pytest.approx(7 / 8 * touched)
    assert comm.remote_nodes_per_token(256, 8, 8) == pytest.approx(4.6328, rel=1e-4)
    assert got < 3.2
