"""Collective times by hand: alpha-beta on the links a group actually spans."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models import comm
from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY, INTRA_NODE_LINK_EFFICIENCY
from planner import ClusterSpec, load_cluster

INTRA = 300e9 * INTRA_NODE_LINK_EFFICIENCY   # dgx-a100: NVLink3 300 GB/s per direction
INTER = 25e9 * INTER_NODE_LINK_EFFICIENCY    # one HDR 200 Gb/s NIC per GPU
A_INTRA, A_INTER = 2e-6, 5e-6


@pytest.fixture
def dgx() -> ClusterSpec:
    c = load_cluster("dgx-a100")
    assert c.devices_per_node == 8
    assert c.intra_node.bandwidth_bytes_per_s == 300e9
    assert c.inter_node.bandwidth_bytes_per_s == 25e9
    assert (c.intra_node.latency_s, c.inter_node.latency_s) == (A_INTRA, A_INTER)
    return c


def test_tp8_stride1_stays_in_the_node(dgx: ClusterSpec) -> None:
    links = comm.group_links(dgx, size=8, stride=1)
    assert not links.spans_nodes and links.members_per_node == 8
    assert links.bandwidth_bytes_per_s == pytest.approx(INTRA)
    assert links.latency_s == A_INTRA


@pytest.mark.parametrize(("size", "stride"), [(2, 1), (4, 1), (2, 2), (4, 2), (2, 4)])
def test_groups_inside_a_node(dgx: ClusterSpec, size: int, stride: int) -> None:
    links = comm.group_links(dgx, size=size, stride=stride)
    assert not links.spans_nodes and links.members_per_node == size
    assert links.bandwidth_bytes_per_s == pytest.approx(INTRA)


@pytest.mark.parametrize("size", [2, 4, 24, 128])
def test_dp_with_stride_8_has_one_member_per_node(dgx: ClusterSpec, size: int) -> None:
    links = comm.group_links(dgx, size=size, stride=8)
    assert links.spans_nodes and links.members_per_node == 1
    assert links.bandwidth_bytes_per_s == pytest.approx(INTER)   # min(intra, 1 * inter)
    assert links.latency_s == A_INTER


def test_group_of_16_stride_1_spans_two_nodes_with_8_members_each(dgx: ClusterSpec) -> None:
    links = comm.group_links(dgx, size=16, stride=1)
    assert links.spans_nodes and links.members_per_node == 8
    # The ring crosses the network through all 8 NICs of a node: min(234, 8 * 22.5) GB/s.
    assert links.bandwidth_bytes_per_s == pytest.approx(min(INTRA, 8 * INTER))
    assert links.bandwidth_bytes_per_s == pytest.approx(8 * INTER)


@pytest.mark.parametrize(("size", "stride", "per_node"),
                         [(8, 2, 4), (4, 4, 2), (32, 2, 4), (16, 4, 2)])
def test_aligned_strided_groups(dgx: ClusterSpec, size: int, stride: int, per_node: int) -> None:
    links = comm.group_links(dgx, size=size, stride=stride)
    assert links.spans_nodes and links.members_per_node == per_node
    assert links.bandwidth_bytes_per_s == pytest.approx(min(INTRA, per_node * INTER))


def test_fast_network_is_capped_by_the_node(dgx: ClusterSpec) -> None:
    fast = dgx.model_copy(update={"inter_node": dgx.inter_node.model_copy(
        update={"bandwidth_bytes_per_s": 100e9})})
    links = comm.group_links(fast, size=16, stride=1)
    assert links.bandwidth_bytes_per_s == pytest.approx(INTRA)   # min(234, 8 * 90) GB/s


@pytest.mark.parametrize(("size", "stride"), [(3, 1), (6, 1), (12, 1), (3, 2)])
def test_groups_straddling_a_node_boundary_assume_one_member(dgx: ClusterSpec, size: int,
                                                              stride: int) -> None:
    links = comm.group_links(dgx, size=size, stride=stride)
    assert links.spans_nodes and links.members_per_node == 1
    assert links.bandwidth_bytes_per_s == pytest.approx(INTER)


def test_group_of_one_costs_nothing(dgx: ClusterSpec) -> None:
    links = comm.group_links(dgx, size=1, stride=1)
    assert links.size == 1 and not links.spans_nodes
    for fn in (comm.all_reduce_s, comm.reduce_scatter_s, comm.all_gather_s):
        assert fn(links, 1e9) == 0.0
    assert comm.all_to_all_s(links, dgx, 1e9) == 0.0


def test_empty_message_costs_nothing(dgx: ClusterSpec) -> None:
    links = comm.group_links(dgx, size=8, stride=1)
    assert comm.all_reduce_s(links, 0.0) == 0.0 and comm.p2p_s(dgx, 0.0, crosses_nodes=True) == 0.0


@pytest.mark.parametrize("nbytes", [1e3, 1e6, 2.5e9])
def test_all_reduce_inside_a_node_by_hand(dgx: ClusterSpec, nbytes: float) -> None:
    # NCCL's latency model (tuning.cc): inside a node ring and tree (a chain) both take
    # 2(n-1) NVLink steps
    n = 8
    links = comm.group_links(dgx, size=n, stride=1)
    beta = 2 * (n - 1) / n * nbytes / INTRA
    assert comm.all_reduce_s(links, nbytes) == pytest.approx(beta + 14 * A_INTRA, rel=1e-12)


@pytest.mark.parametrize("nbytes", [1e3, 1e6, 2.5e9])
def test_all_reduce_across_nodes_by_hand(dgx: ClusterSpec, nbytes: float) -> None:
    # 16 ranks, 8 per node: bottleneck min(0.78 * 300, 8 * 0.9 * 25) = 180 GB/s.
    n = 16
    links = comm.group_links(dgx, size=n, stride=1)
    beta = 2 * (n - 1) / n * nbytes / (8 * INTER)
    # ring: 2 x (2 nodes x 7 NVLink steps + 1 network step) = 66 us; tree: a chain of 7 in
    # each node and log2(2) = 1 network level, up and down: 2 x (7 x 2 + 5) = 38 us
    ring, tree = 2 * (14 * A_INTRA + A_INTER), 2 * (7 * A_INTRA + A_INTER)
    assert tree < ring
    assert comm.all_reduce_s(links, nbytes) == pytest.approx(beta + tree, rel=1e-12)
    # dp over 4 nodes, one member per node: one NIC's 22.5 GB/s; ring 2 x 3 network steps,
    # tree 2 x log2(4)
    links = comm.group_links(dgx, size=4, stride=8)
    want = 2 * 3 / 4 * nbytes / INTER + 2 * 2 * A_INTER
    assert comm.all_reduce_s(links, nbytes) == pytest.approx(want, rel=1e-12)


def test_two_rank_ring_equals_tree(dgx: ClusterSpec) -> None:
    links = comm.group_links(dgx, size=2, stride=1)
    assert comm.all_reduce_s(links, 1e8) == pytest.approx(1e8 / INTRA + 2 * A_INTRA, rel=1e-12)


@pytest.mark.parametrize(("size", "stride"), [(2, 1), (8, 1), (16, 1), (4, 8), (64, 8), (3, 1)])
@pytest.mark.parametrize("nbytes", [1.0, 4e6, 3e9])
def test_reduce_scatter_plus_all_gather_is_an_all_reduce(dgx: ClusterSpec, size: int,
                                                         stride: int, nbytes: float) -> None:
    """Rabenseifner: the ring all-reduce is a reduce-scatter + an all-gather, bandwidth and
    latency terms; across nodes NCCL's tree all-reduce can have the lower latency, never
    more. The ring's n-1 steps: N-1 of them on the network, the rest on NVLink."""
    links = comm.group_links(dgx, size=size, stride=stride)
    rs, ag = comm.reduce_scatter_s(links, nbytes), comm.all_gather_s(links, nbytes)
    ar = comm.all_reduce_s(links, nbytes)
    assert rs == ag
    assert ar <= rs + ag * (1 + 1e-12)
    if not links.spans_nodes:
        assert rs + ag == pytest.approx(ar, rel=1e-12)
    n, bw, k = links.size, links.bandwidth_bytes_per_s, links.members_per_node
    nodes = n // k if links.spans_nodes else 1
    steps = (n - nodes) * A_INTRA + (nodes - 1) * A_INTER
    assert rs == pytest.approx((n - 1) / n * nbytes / bw + steps, rel=1e-12)


def test_ring_latency_counts_network_steps_once_per_node(dgx: ClusterSpec) -> None:
    """An all-gather over 64 ranks, 8 per node (8 nodes): 63 ring steps, 7 of them between
    nodes (NCCL tuning.cc: nInterSteps = nNodes - 1), 56 on NVLink."""
    links = comm.group_links(dgx, size=64, stride=1)
    want = 63 / 64 * 1e6 / links.bandwidth_bytes_per_s + 56 * A_INTRA + 7 * A_INTER
    assert comm.all_gather_s(links, 1e6) == pytest.approx(want, rel=1e-12)
    # the same ranks one per node (stride 8): every step crosses the network
    spread = comm.group_links(dgx, size=64, stride=8)
    assert comm.all_gather_s(spread, 0.0) == 0.0
    assert comm.coefficients("all_gather", spread)[1] == pytest.approx(63 * A_INTER)


def test_torus_collectives_ring_along_each_dimension() -> None:
    """On a TPU slice (3D torus, one 'node'), a group of k chips is a block whose sides are
    rung in turn: 64 chips as 4x4x4 take 9 steps per pass, not 63."""
    v5p = load_cluster("tpu-v5p-pod")
    links = comm.group_links(v5p, size=64, stride=1)
    assert not links.spans_nodes and links.torus_dims == 3
    alpha = v5p.intra_node.latency_s
    assert comm.coefficients("all_gather", links)[1] == pytest.approx(9 * alpha)
    assert comm.coefficients("all_reduce", links)[1] == pytest.approx(18 * alpha)
    assert [comm.torus_steps(k, 3) for k in (1, 2, 4, 8, 64, 6144)] == [0, 1, 2, 3, 9, 53]
    assert [comm.torus_steps(k, 2) for k in (4, 256)] == [2, 30]


@settings(max_examples=100, deadline=None)
@given(members=st.integers(1, 4096), dims=st.integers(1, 3))
def test_torus_steps_between_log2_and_a_ring(members: int, dims: int) -> None:
    steps = comm.torus_steps(members, dims)
    assert math.log2(members) - 1e-9 <= steps <= members - 1
    if dims == 1:
        assert steps == members - 1


@pytest.mark.parametrize("nbytes", [8e3, 1e6, 64e6])
def test_serving_all_reduce_by_hand(dgx: ClusterSpec, nbytes: float) -> None:
    """Serving engines' own all-reduce inside a node (vLLM custom_all_reduce.cuh): one stage
    reads the 7 peers' buffers behind one barrier, two stages move 2 x 7/8 of it behind two;
    the faster is taken. Small decode messages take the one stage, large ones the two."""
    links = comm.group_links(dgx, size=8, stride=1)
    one = 7 * nbytes / INTRA + A_INTRA
    two = 2 * 7 / 8 * nbytes / INTRA + 2 * A_INTRA
    got = comm.serving_all_reduce_s(links, nbytes)
    assert got == pytest.approx(min(one, two), rel=1e-12)
    assert got == pytest.approx(one if nbytes < 1e5 else two, rel=1e-12)
    assert got < comm.all_reduce_s(links, nbytes)        # NCCL's 14 ring steps
    # across nodes the engines fall back to NCCL
    across = comm.group_links(dgx, size=16, stride=1)
    assert comm.serving_all_reduce_s(across, nbytes) == comm.all_reduce_s(across, nbytes)
    assert comm.serving_all_reduce_s(links, 0.0) == 0.0


@settings(max_examples=80, deadline=None)
@given(preset=st.sampled_from(["dgx-a100", "tpu-v5p-pod", "mi300x-platform", "gb200-nvl72"]),
       size=st.integers(2, 512), stride=st.sampled_from([1, 2, 4, 8, 16, 72]))
def test_search_bound_latency_is_below_every_layout(preset: str, size: int, stride: int) -> None:
    """The search's lower bound on tp traffic (search/driver.py) takes a tree over `size`
    nodes of one member each at the lower of the cluster's two latencies: 2 log2(size) steps.
    No layout's all-reduce, nor its reduce-scatter + all-gather (sequence parallelism), has
    less latency."""
    c = load_cluster(preset)
    alpha = min(c.intra_node.latency_s, c.inter_node.latency_s)
    bound = comm.GroupLinks(size, 1.0, alpha, True, 1, alpha)
    bound_ar = comm.coefficients("all_reduce", bound)[1]
    actual = comm.group_links(c, size=size, stride=stride)
    assert bound_ar <= comm.coefficients("all_reduce", actual)[1] * (1 + 1e-12)
    assert bound_ar <= 2 * comm.coefficients("reduce_scatter", actual)[1] * (1 + 1e-12)


def test_bandwidth_terms_without_latency(dgx: ClusterSpec) -> None:
    no_lat = dgx.model_copy(update={
        "intra_node": dgx.intra_node.model_copy(update={"latency_s": 0.0}),
        "inter_node": dgx.inter_node.model_copy(update={"latency_s": 0.0})})
    for size, stride in [(8, 1), (16, 1), (4, 8)]:
        links = comm.group_links(no_lat, size=size, stride=stride)
        n, nbytes = links.size, 1e9
        ar = comm.all_reduce_s(links, nbytes)
        beta = 2 * (n - 1) / n * nbytes / links.bandwidth_bytes_per_s
        assert ar == pytest.approx(beta, rel=1e-12)
        assert comm.reduce_scatter_s(links, nbytes) + comm.all_gather_s(links, nbytes) == \
            pytest.approx(ar, rel=1e-12)


def test_p2p_by_hand(dgx: ClusterSpec) -> None:
    assert comm.p2p_s(dgx, 1e8, crosses_nodes=False) == pytest.approx(1e8 / INTRA + A_INTRA)
    assert comm.p2p_s(dgx, 1e8, crosses_nodes=True) == pytest.approx(1e8 / INTER + A_INTER)


def test_all_to_all_by_hand(dgx: ClusterSpec) -> None:
    nbytes = 1e9
    inside = comm.group_links(dgx, size=8, stride=1)
    assert comm.all_to_all_s(inside, dgx, nbytes) == pytest.approx(
        7 / 8 * nbytes / INTRA + 7 * A_INTRA, rel=1e-12)
    # 16 ranks over 2 nodes: 7/16 of the buffer stays in the node, 8/16 goes through the NIC.
    across = comm.group_links(dgx, size=16, stride=1)
    want = max(7 / 16 * nbytes / INTRA, 8 / 16 * nbytes / INTER) + 15 * A_INTER
    assert comm.all_to_all_s(across, dgx, nbytes) == pytest.approx(want, rel=1e-12)


def test_tiny_cluster_two_per_node(tiny_cluster: ClusterSpec) -> None:
    intra = 100e9 * INTRA_NODE_LINK_EFFICIENCY
    inter = 10e9 * INTER_NODE_LINK_EFFICIENCY
    pair = comm.group_links(tiny_cluster, size=2, stride=1)
    assert not pair.spans_nodes and pair.bandwidth_bytes_per_s == pytest.approx(intra)
    four = comm.group_links(tiny_cluster, size=4, stride=1)
    assert four.spans_nodes and four.members_per_node == 2
    assert four.bandwidth_bytes_per_s == pytest.approx(min(intra, 2 * inter))
    # tree: a chain of 1 NVLink step in each node and one network level, up and down
    assert comm.all_reduce_s(four, 1e9) == pytest.approx(
        2 * 3 / 4 * 1e9 / (2 * inter) + 2 * (1e-6 + 5e-6), rel=1e-12)


def test_composite_group_counts_members_per_node_of_each_dimension() -> None:
    """dp x cp group under order cp-pp-tp-dp on 8-GPU nodes (cp=2, tp=2, dp=384): cp has
    stride 1, tp stride 2, dp stride 4. Per node the group holds both cp ranks and 8/4 = 2
    dp ranks: 4 members (ranks 0, 1, 4, 5), not the 8 a single stride-1 group would have."""
    from cost_models.comm import composite_links
    from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY, INTRA_NODE_LINK_EFFICIENCY
    from planner import load_cluster

    c = load_cluster("dgx-a100")
    g = composite_links(c, [(2, 1), (384, 4)])
    assert g.size == 768 and g.spans_nodes and g.members_per_node == 4
    assert g.bandwidth_bytes_per_s == pytest.approx(min(
        c.intra_node.bandwidth_bytes_per_s * INTRA_NODE_LINK_EFFICIENCY,
        4 * c.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY))
    # adjacent dimensions are one strided group: the same links as group_links
    assert composite_links(c, [(2, 2), (64, 4)]) == comm.group_links(c, size=128, stride=2)
    # inside one node
    inside = composite_links(c, [(2, 1), (2, 4)])
    assert not inside.spans_nodes and inside.size == 4
    assert composite_links(c, [(1, 1), (16, 8)]) == comm.group_links(c, size=16, stride=8)


def test_full_mesh_groups_use_the_links_among_their_members() -> None:
    """On AMD's Infinity Fabric mesh (64 GB/s per link, RCCL reaching 0.71 of it) a group
    inside a node gets members - 1 links; a group spanning nodes with k members per node
    crosses the network through k NICs and moves its in-node share over k - 1 links; a send
    between two GPUs of a node uses one link."""
    c = load_cluster("mi300x-platform")
    link, nic = 64e9 * 0.71, 50e9 * INTER_NODE_LINK_EFFICIENCY
    for size in (2, 4, 8):
        g = comm.group_links(c, size=size, stride=1)
        assert not g.spans_nodes and g.bandwidth_bytes_per_s == pytest.approx((size - 1) * link)
    # 2 members per node (stride 4 over 4 nodes): min(one link, two NICs)
    g = comm.group_links(c, size=8, stride=4)
    assert g.spans_nodes and g.members_per_node == 2
    assert g.bandwidth_bytes_per_s == pytest.approx(min(link, 2 * nic))
    # all-to-all inside a node: (n-1)/n of the buffer over n-1 links
    inside = comm.group_links(c, size=4, stride=1)
    assert comm.all_to_all_s(inside, c, 1e9) == pytest.approx(
        3 / 4 * 1e9 / (3 * link) + 3 * c.intra_node.latency_s, rel=1e-12)
    assert comm.p2p_s(c, 1e9, crosses_nodes=False) == pytest.approx(
        1e9 / link + c.intra_node.latency_s, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(members=st.integers(1, 72), topology=st.sampled_from(["switched", "full_mesh", "ring"]))
def test_more_members_never_get_less_intra_bandwidth(members: int, topology: str) -> None:
    """A device's bandwidth toward its group never falls as the group grows inside a node."""
    from planner.hardware import LinkSpec

    link = LinkSpec(name="x", bandwidth_bytes_per_s=64e9, latency_s=1e-6, topology=topology)
    assert link.group_bandwidth(members + 1) >= link.group_bandwidth(members) > 0
