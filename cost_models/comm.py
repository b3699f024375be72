"""Collective communication: alpha-beta times on the links a group actually spans.

Decides: the time of all-reduce, reduce-scatter, all-gather, all-to-all and point-to-point
for a group of `size` ranks laid out with `stride` between consecutive members (so whether
the group stays inside a node, and how many members share each node's network links).
Does not decide overlap with compute; the training model does.

Formulas (per rank, message of `nbytes` = the full buffer each rank holds):
- ring all-reduce: 2(n-1)/n * nbytes / B + 2(n-1) ring steps; reduce-scatter and all-gather
  each half of that (Thakur, Rabenseifner & Gropp 2005, "Optimization of Collective
  Communication Operations in MPICH", Sec. 4; Patarasuk & Yuan 2009 for bandwidth optimality).
  A ring over N nodes crosses the network on N-1 of its n-1 steps (2(N-1) of 2(n-1) for an
  all-reduce) and stays on NVLink for the rest, each step at its link's latency: NCCL's own
  latency model (src/graph/tuning.cc, ring: (nsteps - nInterSteps) * intraLat + nInterSteps *
  interLat). NCCL has no tree reduce-scatter or all-gather, so theirs is always the ring.
- tree all-reduce (NCCL double binary tree across nodes, Sanders et al. 2009, a chain inside
  each node): same bandwidth term, latency 2 * ((n/N - 1) * intraLat + log2(N) * interLat)
  (tuning.cc, tree); the faster of ring and tree is taken, as NCCL's tuner does. Inside one
  node both are 2(n-1) NVLink steps.
- hierarchical: a group that spans nodes with k members per node crosses the network
  through those k members' NICs in parallel (NCCL rings use one NIC per channel), so its
  bottleneck bandwidth is min(intra-node bandwidth, k * per-device inter-node bandwidth).
- intra-node bandwidth of a group: the device's whole link through a switch; on a full mesh
  (AMD Infinity Fabric) one link per other member inside the node (`intra_bandwidth`, from
  LinkSpec.group_bandwidth), so a pair gets one link and eight GPUs get seven. The collectives
  above then run over those links in parallel (RCCL builds its rings over distinct links).
  Where two devices are the two dies of one package (an MI250X's GCDs, ranks 2i and 2i+1),
  a group of exactly those two uses the in-package link (LinkSpec.pair_bandwidth_bytes_per_s).
- all-to-all: each rank sends (n-1)/n * nbytes; traffic to ranks in other nodes goes through
  its own NIC: max(intra share / B_intra, inter share / B_inter) + (n-1) * alpha.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY, device_efficiency
from planner.hardware import ClusterSpec, Topology
from planner.plan import Plan


@dataclass(frozen=True, slots=True)
class GroupLinks:
    """The effective links of one communication group."""

    size: int
    bandwidth_bytes_per_s: float   # bottleneck bus bandwidth of the group
    latency_s: float               # per-step latency on the slowest link used
    spans_nodes: bool
    members_per_node: int
    # per-step latency of the steps that stay inside a node (NVLink, ICI); None: latency_s
    intra_latency_s: float | None = None
    # dimensions of the intra-node torus (TPU ICI: 2 or 3), whose collectives run a ring
    # along each dimension in turn; 0 for a switch, a ring or a full mesh
    torus_dims: int = 0


_TORUS_DIMS = {Topology.TORUS_2D: 2, Topology.TORUS_3D: 3}


def links_for(cluster: ClusterSpec, size: int, bandwidth: float, *, spans_nodes: bool,
              members_per_node: int) -> GroupLinks:
    """A group's links with the cluster's latencies: the network's per step when the group
    spans nodes (the slowest link it uses), and the node's for its steps inside a node."""
    latency = cluster.inter_node.latency_s if spans_nodes else cluster.intra_node.latency_s
    return GroupLinks(size, bandwidth, latency, spans_nodes, members_per_node,
                      cluster.intra_node.latency_s,
                      _TORUS_DIMS.get(cluster.intra_node.topology, 0))


def intra_bandwidth(cluster: ClusterSpec, members: int, *, pair: bool = False) -> float:
    """Achievable per-direction bandwidth of one device toward the other `members - 1`
    members of its group inside a node (module docstring), at the fraction of the links the
    device's collective library reaches (efficiency.DeviceEfficiency.intra_link). `pair`: the
    group is devices 2i and 2i+1 of the node, the two dies of one package where the node's
    link has a faster in-package figure (LinkSpec.pair_bandwidth_bytes_per_s, MI250X)."""
    return cluster.intra_node.group_bandwidth(members, pair=pair) * _intra_link(cluster)


def _intra_link(cluster: ClusterSpec) -> float:
    return device_efficiency(cluster.device)[0].intra_link


def group_links(cluster: ClusterSpec, *, size: int, stride: int) -> GroupLinks:
    """Links of a group of `size` ranks spaced `stride` apart in the rank layout."""
    per_node = cluster.devices_per_node
    if size <= 1:
        return GroupLinks(1, intra_bandwidth(cluster, 1), 0.0, False, 1)
    block = stride * size                     # consecutive ranks that hold whole groups
    if block <= per_node and per_node % block == 0:
        # size 2 at stride 1 in an aligned block: ranks 2i and 2i+1, one package's two dies
        return links_for(cluster, size, intra_bandwidth(cluster, size, pair=block == 2),
                         spans_nodes=False, members_per_node=size)
    # Spans nodes. Aligned groups put per_node/stride members in each node; a group that
    # straddles a node boundary because the sizes do not divide has, at worst, one.
    aligned = stride < per_node and per_node % stride == 0 and block % per_node == 0
    members_per_node = min(size, per_node // stride) if aligned else 1
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    bw = min(intra_bandwidth(cluster, members_per_node), members_per_node * inter_bw)
    return links_for(cluster, size, bw, spans_nodes=True, members_per_node=members_per_node)


def ep_links(cluster: ClusterSpec, plan: Plan) -> GroupLinks:
    """Links of the plan's expert-parallel group: ep ranks spaced etp apart (Megatron-Core's
    parallel folding puts expert TP innermost). The one place the cost model and the exports
    decide whether that group spans nodes."""
    return group_links(cluster, size=plan.ep, stride=plan.expert_tp)


def composite_links(cluster: ClusterSpec, dims: list[tuple[int, int]]) -> GroupLinks:
    """Links of a group spanning several layout dimensions, each (size, stride): e.g. the
    data x context-parallel group whose two dimensions need not be adjacent in the rank
    layout (order cp-pp-tp-dp puts tp between them). Its members in one node are the product
    of each dimension's members there: all `size` of them when the dimension fits in a node,
    per_node / stride when it spans nodes aligned, else (straddling) one."""
    dims = [(n, st) for n, st in dims if n > 1]
    if len(dims) <= 1:
        size, stride = dims[0] if dims else (1, 1)
        return group_links(cluster, size=size, stride=stride)
    per_node = cluster.devices_per_node
    size = math.prod(n for n, _ in dims)
    if all(n * st <= per_node and per_node % (n * st) == 0 for n, st in dims):
        return links_for(cluster, size, intra_bandwidth(cluster, size), spans_nodes=False,
                         members_per_node=size)
    members = 1
    for n, st in dims:
        if n * st <= per_node and per_node % (n * st) == 0:
            members *= n
        elif st < per_node and per_node % st == 0 and (n * st) % per_node == 0:
            members *= per_node // st
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    bw = min(intra_bandwidth(cluster, members), members * inter_bw)
    return links_for(cluster, size, bw, spans_nodes=True, members_per_node=members)


def coefficients(kind: str, links: GroupLinks) -> tuple[float, float]:
    """(seconds per byte, fixed seconds) of a collective on a group, so that its time is
    per_byte * nbytes + fixed for nbytes > 0 (0 for a group of one). The single source of
    the formulas above; the scalar functions below and the array code of the stage tables
    both use it."""
    n = links.size
    if n <= 1:
        return 0.0, 0.0
    bw = links.bandwidth_bytes_per_s
    ring, tree = ring_tree_latency(links)
    if kind == "all_reduce":
        return 2 * (n - 1) / n / bw, min(2 * ring, tree)
    if kind in ("reduce_scatter", "all_gather"):
        return (n - 1) / n / bw, ring
    raise ValueError(f"unknown collective {kind!r}")


def ring_tree_latency(group: GroupLinks) -> tuple[float, float]:
    """(latency of one pass around the ring, latency of a tree all-reduce) of a group: the
    ring's n-1 steps, N-1 of them across the network for a group over N nodes, and the tree's
    chain inside each node plus log2(N) network levels, up and down (module docstring). On a
    D-dimensional torus the k members of a node are reached by a ring along each dimension in
    turn: sum(s_d - 1) steps over the block's sides s_1 x ... x s_D = k (`torus_steps`)."""
    n = group.size
    inter = group.latency_s
    intra = inter if group.intra_latency_s is None else group.intra_latency_s
    per_node = max(1, min(n, group.members_per_node)) if group.spans_nodes else n
    nodes = math.ceil(n / per_node)
    d = group.torus_dims
    inside = torus_steps(per_node, d) if d else per_node - 1
    ring = nodes * inside * intra + (nodes - 1) * inter
    tree = 2 * (inside * intra + math.log2(nodes) * inter)
    return ring, tree


@functools.lru_cache(maxsize=4096)
def torus_steps(members: int, dims: int) -> int:
    """Fewest ring steps that reach `members` chips of a `dims`-dimensional torus: a block of
    sides s_1 x ... x s_dims = members, one ring per side in turn, sum(s_d - 1) steps (a pair
    1, a 2x2x2 cube 3, a 4x4x4 cube 9). Never below log2(members), since s - 1 >= log2(s)."""
    if dims <= 1 or members <= 1:
        return max(0, members - 1)
    return min((a - 1) + torus_steps(members // a, dims - 1)
               for a in range(1, members + 1) if members % a == 0)


def all_reduce_s(links: GroupLinks, nbytes: float) -> float:
    """Time of an all-reduce of `nbytes` per rank (best of ring and tree)."""
    if links.size <= 1 or nbytes <= 0:
        return 0.0
    per_byte, fixed = coefficients("all_reduce", links)
    return per_byte * nbytes + fixed


def serving_all_reduce_s(links: GroupLinks, nbytes: float) -> float:
    """An all-reduce as the serving engines run it inside a GPU node: their own kernels over
    NVLink peer-to-peer memory, not NCCL (vLLM csrc/custom_all_reduce.cuh, which SGLang also
    uses; TensorRT-LLM's ONESHOT/TWOSHOT all-reduce). One stage reads every peer's buffer and
    reduces locally, (n-1) x nbytes in one barrier; two stages reduce-scatter then all-gather
    by direct reads, 2(n-1)/n x nbytes in two barriers. The engines pick by size; this takes
    the faster. A group across nodes, or on a TPU torus, uses the collective library's."""
    n = links.size
    if n <= 1 or nbytes <= 0:
        return 0.0
    if links.spans_nodes or links.torus_dims:
        return all_reduce_s(links, nbytes)
    bw = links.bandwidth_bytes_per_s
    alpha = links.latency_s
    one_stage = (n - 1) * nbytes / bw + alpha
    two_stage = 2 * (n - 1) / n * nbytes / bw + 2 * alpha
    return min(one_stage, two_stage)


def reduce_scatter_s(links: GroupLinks, nbytes: float) -> float:
    """Time of a reduce-scatter of a buffer of `nbytes` per rank (each keeps 1/n)."""
    if links.size <= 1 or nbytes <= 0:
        return 0.0
    per_byte, fixed = coefficients("reduce_scatter", links)
    return per_byte * nbytes + fixed


def all_gather_s(links: GroupLinks, nbytes: float) -> float:
    """Time of an all-gather producing `nbytes` per rank (each contributes 1/n)."""
    return reduce_scatter_s(links, nbytes)


def all_to_all_s(links: GroupLinks, cluster: ClusterSpec, nbytes: float) -> float:
    """Time of an all-to-all where each rank holds `nbytes` spread evenly over the group."""
    n = links.size
    if n <= 1 or nbytes <= 0:
        return 0.0
    if not links.spans_nodes:   # the group's own links (one package's pair included)
        return (n - 1) / n * nbytes / links.bandwidth_bytes_per_s + (n - 1) * links.latency_s
    local = links.members_per_node
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    intra_part = (local - 1) / n * nbytes / intra_bandwidth(cluster, local)
    inter_part = (n - local) / n * nbytes / inter_bw
    return max(intra_part, inter_part) + (n - 1) * cluster.inter_node.latency_s


def _miss(pool: float, held: float, top_k: int) -> float:
    """C(pool - held, k) / C(pool, k): the chance that k distinct draws from `pool` experts
    miss the `held` of them, as a product."""
    miss = 1.0
    for i in range(top_k):
        miss *= max(0.0, (pool - held - i) / (pool - i))
    return miss


def remote_nodes_per_token(experts: int, top_k: int, nodes: int, *,
                           groups: int | None = None, group_topk: int | None = None) -> float:
    """Expected number of other nodes a token's top_k distinct experts fall on, with the
    experts spread evenly over `nodes` nodes (consecutive experts per node, Megatron-Core's
    layout) and routing uniform at random (what forced load balancing does):
    (nodes - 1) * (1 - C(E - E/nodes, k) / C(E, k)).

    Group-limited routing (`groups`, `group_topk`: DeepSeek-V3's n_group 8 and topk_group 4,
    arXiv:2412.19437 Sec. 2.1.2, node-limited routing) first picks group_topk of the groups
    (uniformly, under random routing) and then the top_k experts among theirs. By symmetry
    every other node is touched with the same probability p, and the answer is (nodes - 1) p:
    - a node holding r = groups/nodes whole groups: x of them are picked with the
      hypergeometric chance C(r, x) C(groups - r, t - x) / C(groups, t), and the node is then
      missed with chance C(pool - x E/groups, k) / C(pool, k), pool = t E/groups;
    - a node holding part of one group (nodes a multiple of groups): its group is picked with
      chance t/groups, and the node is then missed with chance C(pool - E/nodes, k) / C(pool, k).
    Group boundaries that do not align with nodes fall back to the unrestricted formula (an
    upper bound). With t = groups both cases are the unrestricted formula."""
    if nodes <= 1:
        return 0.0
    per_node = experts / nodes
    if not groups or not group_topk or group_topk >= groups:
        return (nodes - 1) * (1.0 - _miss(experts, per_node, top_k))
    t, per_group = group_topk, experts / groups
    pool = t * per_group
    if groups % nodes == 0:
        r = groups // nodes
        touched = sum(math.comb(r, x) * math.comb(groups - r, t - x) / math.comb(groups, t)
                      * (1.0 - _miss(pool, x * per_group, top_k))
                      for x in range(max(0, t - (groups - r)), min(r, t) + 1))
    elif nodes % groups == 0:
        touched = t / groups * (1.0 - _miss(pool, per_node, top_k))
    else:
        return (nodes - 1) * (1.0 - _miss(experts, per_node, top_k))
    return (nodes - 1) * touched


def moe_dispatch_s(links: GroupLinks, cluster: ClusterSpec, *, tokens: float, top_k: int,
                   experts: int, row_bytes: float, per_node: bool = True,
                   groups: int | None = None, group_topk: int | None = None) -> float:
    """One MoE dispatch (or combine) over an expert-parallel group: each of the rank's
    `tokens` goes to its top_k experts as a `row_bytes` row.

    Inside one node (NVLink), Megatron-Core's all-to-all dispatcher sends one row per
    (token, expert) pair, the rows grouped by expert (`permute` over the routing map), so two
    experts on the same rank receive the token twice: the all-to-all of tokens*top_k rows.
    Across nodes, each token crosses the network once per destination node and is then
    forwarded to the experts' GPUs over NVLink: DeepSeek-V3's dispatch (arXiv:2412.19437,
    Sec. 3.2.2: "transmitted via IB to the GPUs with the same in-node index on their target
    nodes ... then forwarded via NVLink"), implemented by DeepEP's normal-mode internode
    kernels and used by Megatron-Core's flex dispatcher (DeepEP / HybridEP backends) for
    cross-node expert parallelism. The network carries tokens x the expected number of other
    nodes a token's experts fall on (`remote_nodes_per_token`) through the rank's own NIC; in
    parallel NVLink carries the copies that end on another GPU of a node. Group-limited
    routing (`groups`, `group_topk`) lowers the nodes a token reaches (remote_nodes_per_token).

    per_node=False is Megatron-Core's `alltoall` dispatcher (plan key dispatcher=alltoall):
    one NCCL all-to-all of the tokens*top_k rows across nodes too, (n - local)/n of them
    through the network (`all_to_all_s`)."""
    n = links.size
    if n <= 1 or tokens <= 0:
        return 0.0
    if not links.spans_nodes or not per_node:
        return all_to_all_s(links, cluster, tokens * top_k * row_bytes)
    local = links.members_per_node
    nodes = max(1, n // local)
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    inter = tokens * remote_nodes_per_token(experts, top_k, nodes, groups=groups,
                                            group_topk=group_topk) * row_bytes / inter_bw
    intra = tokens * top_k * (local - 1) / local * row_bytes / intra_bandwidth(cluster, local)
    return max(intra, inter) + (n - 1) * cluster.inter_node.latency_s


def moe_low_latency_s(links: GroupLinks, cluster: ClusterSpec, *, tokens: float, top_k: int,
                      row_bytes: float) -> float:
    """One decode-time MoE dispatch (or combine) with DeepEP's low-latency kernels, as serving
    engines run wide expert parallelism (SGLang and vLLM with DeepEP; DeepSeek's own decode).

    Each of the rank's `tokens` goes to each of its top_k experts as its own `row_bytes` row
    (the receive buffer is laid out per local expert), written straight into the peers'
    buffers by the GPU (InfiniBand GPUDirect Async), every destination at once: so one
    latency, not one per peer as in a ring. Rows for peers inside the node go over NVLink
    (DeepEP PR #173, "low-latency kernels now leverage NVLink as much as possible"), the rest
    through the rank's own NIC; experts spread evenly, so (local - 1)/n of the rows stay in the
    node and (n - local)/n leave it. Check (tests/cost_models/test_inference.py): DeepEP's
    README measures 128 tokens, hidden 7168, top-8, FP8 dispatch / BF16 combine on H800 with
    a 400 Gb/s CX7 NIC per GPU at 155-194 us (dispatch) and 273-369 us (combine) for EP 32 to
    256; this formula gives 8-16% less there on the hgx-h800 preset (the same on DGX H100, whose
    NIC is the same: the exchange is NIC-bound). Its EP 8 and 16
    rows were measured before PR #173, over RDMA only, so they are not compared."""
    n = links.size
    if n <= 1 or tokens <= 0:
        return 0.0
    rows = tokens * top_k * row_bytes
    local = links.members_per_node if links.spans_nodes else n
    intra = rows * (local - 1) / n / intra_bandwidth(cluster, local) if local > 1 else 0.0
    if not links.spans_nodes:
        return intra + cluster.intra_node.latency_s
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    inter = rows * (n - local) / n / inter_bw
    return max(intra, inter) + cluster.inter_node.latency_s


def p2p_s(cluster: ClusterSpec, nbytes: float, *, crosses_nodes: bool) -> float:
    """Time to send `nbytes` from one rank to another."""
    if nbytes <= 0:
        return 0.0
    if crosses_nodes:
        link, eff = cluster.inter_node, INTER_NODE_LINK_EFFICIENCY
    else:      # one link: on a full mesh the per-link figure, through a switch the device's
        link, eff = cluster.intra_node, _intra_link(cluster)
    return nbytes / (link.group_bandwidth(2) * eff) + link.latency_s
