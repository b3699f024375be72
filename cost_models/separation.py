"""Attention/expert separation: the cost of a plan that runs attention and experts on
separate device groups (training steps, inference prefill and decode).

The plan shape (MegaScale-Infer, Zhu et al. 2025, arXiv:2504.02263, "disaggregated expert
parallelism"): ranks [0, A) form the attention group, tp x dp (Megatron TP inside each
replica), holding attention, norms, router, shared experts, embedding and LM head; ranks
[A, A+E) form the expert group, ep x etp, holding every routed expert exactly once (E/ep
experts per ep rank, each split etp ways). Every attention replica sends its tokens to the
one shared expert group.

Per MoE block and micro-batch, four resources are used one after the other:
1. attention (group A): the block's attention, router and shared experts, timed by the
   training roofline (`compute.py`), plus one TP all-reduce volume per pass: a
   reduce-scatter after the output projection and an all-gather after the combine
   (Korthikanti et al. 2022 Sec. 4.2.2: same volume as Megatron's all-reduce);
2. dispatch (A -> E links): each token's hidden state to the devices of its top-k experts
   (DeepSeek-V3 report, arXiv:2412.19437, Sec. 3.2.2, dispatch/combine);
3. experts (group E): the routed experts' GEMMs, and with etp > 1 an all-gather of the
   received tokens and a reduce-scatter of the outputs inside each etp group;
4. combine (E -> A links): the weighted expert outputs back.
The backward pass visits the same four in the same order (gradients of the combine go
A -> E, those of the dispatch E -> A) with the roofline's backward times.

Transfers (`transfer_s`): tokens x top_k x hidden x bytes each way per micro-batch. Every
device of the sending group sends 1/A (or 1/E) of it, spread evenly over the receiving
group (balanced routing); bytes to a peer in the same node go over the intra-node link,
the rest over the device's own NIC, so one device takes max(intra / B_intra, inter /
B_inter) (the all-to-all rule of `comm.py`) and the transfer takes the slowest device of
either side, plus one latency per peer (max(A, E) messages, as `comm.all_to_all_s`).

Ping-pong (MegaScale-Infer Sec. 4): the batch is split into m micro-batches that shuttle
between the groups, so one group works on micro-batch i while the other works on i-1 and
the links carry a third. With per-micro-batch resource times t_1..t_4 (S = sum, M = max),
L blocks, FIFO resources and identical micro-batches, one pass takes exactly
    T(m, L) = max(L*m*M + S - M,  L*S + (m-1)*M)
First term: when m*M >= S the slowest resource never idles after its first micro-batch
arrives (S - M before it) and is busy for L*m*M; S - M drains after it. Second term: when
m*M < S each micro-batch goes round unobstructed (L*S) and the last starts (m-1)*M after
the first (a flow line of identical jobs). The two agree at m*M = S and the larger always
holds; m = 1 gives L*S (no overlap). `ping_pong_s` is this formula; the tests check it
against an event simulation.

Not overlapped (stated, conservative): the embedding and LM head of every micro-batch on
group A, dense (non-MoE) blocks, which run wholly on A for all m micro-batches, and the
optimizer step. Gradient all-reduce of the attention group's dp replicas overlaps the last
round's backward except the last block's bucket (the rule of `training.py`); experts are
held once, so they need no gradient reduction. Routing is balanced (no capacity drops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cost_models import comm
from cost_models.compute import (
    Roofline,
    Shard,
    _attention_core,
    _elementwise_bytes,
    _linear_shapes,
    _mlp_shapes,
    _moe_shapes,
    block_compute,
    embedding_compute,
    head_compute,
    roof_bytes,
)
from cost_models.efficiency import INTER_NODE_LINK_EFFICIENCY
from cost_models.inference import (
    EMBEDDING_KERNELS,
    HEAD_KERNELS,
    KERNELS_PER_BLOCK,
    LOGIT_BYTES,
    _math_rate,
    kv_split,
    kv_tokens_per_sequence,
    touched_experts,
    vocab_weight_bytes,
)
from cost_models.memory import (
    FRAGMENTATION,
    FRAMEWORK_OVERHEAD_BYTES,
    GIB,
    block_activation_bytes,
    head_activation_bytes,
    saved_input_bytes,
)
from cost_models.tables import OPTIMIZER_BYTES_PER_PARAM
from planner.errors import PlanError
from planner.hardware import ClusterSpec
from planner.model import (
    ModelSpec,
    optimizer_bytes_per_param,
    weight_bytes_per_param,
)
from planner.plan import Plan
from planner.workload import InferenceWorkload, TrainingWorkload

RESOURCES = ("attention", "dispatch", "experts", "combine")
"""The four resources one micro-batch visits per MoE block, in order."""
EXPERT_KERNELS = 2
"""Decode kernels of the expert side per block: MLP up (with the activation) and MLP down,
the last two of inference.KERNELS_PER_BLOCK's list (grouped over the local experts)."""
ATTENTION_KERNELS = KERNELS_PER_BLOCK - EXPERT_KERNELS
"""The other eight of KERNELS_PER_BLOCK: norms, QKV, RoPE, attention, output, residual adds."""


@dataclass(frozen=True, slots=True)
class SeparatedPlan:
    """Attention group tp x dp, expert group ep x etp, m ping-pong micro-batches in flight,
    and (training only) the sequences per micro-batch of each attention replica."""

    attn_tp: int
    attn_dp: int
    ep: int
    etp: int
    microbatches: int
    mbs: int | None = None

    @property
    def attn_devices(self) -> int:
        return self.attn_tp * self.attn_dp

    @property
    def expert_devices(self) -> int:
        return self.ep * self.etp

    @property
    def devices(self) -> int:
        return self.attn_devices + self.expert_devices

    def to_string(self) -> str:
        """e.g. 'A=8(tp2xdp4) E=8(ep8xetp1) m=4 mbs=2': group sizes and degrees."""
        s = (f"A={self.attn_devices}(tp{self.attn_tp}xdp{self.attn_dp}) "
             f"E={self.expert_devices}(ep{self.ep}xetp{self.etp}) m={self.microbatches}")
        return s if self.mbs is None else f"{s} mbs={self.mbs}"


@dataclass(frozen=True, slots=True)
class LayerTimes:
    """Seconds of one micro-batch through one MoE block on each resource (RESOURCES order)."""

    attention: float
    dispatch: float
    experts: float
    combine: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.attention, self.dispatch, self.experts, self.combine)

    @property
    def bottleneck(self) -> str:
        t = self.as_tuple()
        return RESOURCES[t.index(max(t))]


@dataclass(frozen=True, slots=True)
class Setup:
    """What is fixed for one evaluation."""

    model: ModelSpec
    cluster: ClusterSpec
    plan: SeparatedPlan
    roof: Roofline
    tp_links: comm.GroupLinks
    etp_links: comm.GroupLinks
    dp_links: comm.GroupLinks
    warnings: list[str] = field(default_factory=list)


# ----- the schedule ----------------------------------------------------------------------
def ping_pong_s(times: tuple[float, ...], microbatches: int, layers: int) -> float:
    """One pass of m micro-batches through `layers` blocks of FIFO resources with these
    per-micro-batch times (module docstring): max(L*m*M + S - M, L*S + (m-1)*M)."""
    if layers <= 0:
        return 0.0
    s, mx, m = sum(times), max(times), microbatches
    return max(layers * m * mx + s - mx, layers * s + (m - 1) * mx)


# ----- links -----------------------------------------------------------------------------
def _node_counts(cluster: ClusterSpec, start: int, size: int) -> dict[int, int]:
    """Devices of ranks [start, start+size) in each node."""
    out: dict[int, int] = {}
    for r in range(start, start + size):
        out[r // cluster.devices_per_node] = out.get(r // cluster.devices_per_node, 0) + 1
    return out


def consecutive_links(cluster: ClusterSpec, start: int, size: int) -> comm.GroupLinks:
    """Links of a group of `size` consecutive ranks from `start` (the expert group starts at
    rank A, so comm.group_links' rank-0 alignment does not hold): inside one node it uses
    NVLink; across nodes its bottleneck is min(intra, k x inter) for the fewest members k
    that share a node (comm.py's hierarchical rule)."""
    if size <= 1:
        return comm.GroupLinks(1, comm.intra_bandwidth(cluster, 1), 0.0, False, 1)
    counts = _node_counts(cluster, start, size)
    if len(counts) == 1:
        return comm.links_for(cluster, size, comm.intra_bandwidth(cluster, size),
                              spans_nodes=False, members_per_node=size)
    k = min(counts.values())
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    return comm.links_for(cluster, size, min(comm.intra_bandwidth(cluster, k), k * inter_bw),
                          spans_nodes=True, members_per_node=k)


def transfer_s(cluster: ClusterSpec, attn_devices: int, expert_devices: int,
               nbytes: float) -> float:
    """Seconds to move `nbytes` (all tokens' hidden states of one micro-batch, x top_k)
    between the attention group, ranks [0, A), and the expert group, ranks [A, A+E); the
    same either way (module docstring)."""
    if nbytes <= 0:
        return 0.0
    a, e = attn_devices, expert_devices
    inter_bw = cluster.inter_node.bandwidth_bytes_per_s * INTER_NODE_LINK_EFFICIENCY
    a_nodes, e_nodes = _node_counts(cluster, 0, a), _node_counts(cluster, a, e)
    worst, crosses = 0.0, False
    for mine, share, other, n_other in ((a_nodes, nbytes / a, e_nodes, e),
                                        (e_nodes, nbytes / e, a_nodes, a)):
        for node in mine:
            local = other.get(node, 0)
            intra, inter = share * local / n_other, share * (n_other - local) / n_other
            crosses |= inter > 0
            # the `local` peers in this node each have their own link on a full mesh
            worst = max(worst, intra / comm.intra_bandwidth(cluster, local + 1), inter / inter_bw)
    alpha = cluster.inter_node.latency_s if crosses else cluster.intra_node.latency_s
    return worst + max(a, e) * alpha


# ----- per-block times -------------------------------------------------------------------
def _attn_shard(st: Setup, sequences: float, seq_len: int, dtype: object) -> Shard:
    return Shard(mbs=sequences, seq_len=seq_len, tp=st.plan.attn_tp, dtype=dtype)  # type: ignore[arg-type]


def attention_block_s(st: Setup, sh: Shard) -> tuple[float, float]:
    """(forward, backward) seconds of one MoE block's attention side on one device of
    group A: attention GEMMs and core, router and shared experts, the block's elementwise
    kernels less the routed experts' activation, and the TP reduce-scatter + all-gather."""
    model, roof = st.model, st.roof
    fwd = bwd = 0.0
    for n, k in _linear_shapes(model, sh) + _moe_shapes(model, sh):
        tf, _, tb, _ = roof.gemm_fwd_bwd(sh.tokens, n, k)
        fwd, bwd = fwd + tf, bwd + tb
    at, _, abt, _ = _attention_core(model, roof, sh)
    mats = 3 if model.activation.gated else 2
    assert model.moe is not None
    # the routed experts' share of _elementwise_bytes (moe_tokens x top_k rows, 1/etp wide)
    routed_act = (mats * sh.moe_tokens * model.moe.top_k * model.moe.expert_ffn_hidden_size
                  / sh.etp * roof_bytes(sh.dtype))
    elem = _elementwise_bytes(model, sh, moe=True) - routed_act
    tp = comm.all_reduce_s(st.tp_links, sh.tokens * model.hidden_size * roof_bytes(sh.dtype))
    return fwd + at + roof.stream(elem) + tp, bwd + abt + roof.stream(2 * elem) + tp


def expert_block_s(st: Setup, tokens_all: float, dtype: object) -> tuple[float, float]:
    """(forward, backward) seconds of one MoE block's routed experts on one device of group
    E for `tokens_all` tokens (all attention replicas' micro-batch). The U experts the
    tokens hit (inference.touched_experts; all of them for large batches) each get
    tokens*top_k/U tokens; a device runs U/ep of them split etp ways."""
    model, roof, p = st.model, st.roof, st.plan
    assert model.moe is not None
    mo, e = model.moe, roof_bytes(dtype)  # type: ignore[arg-type]
    used = touched_experts(model, tokens_all) if tokens_all > 0 else 0.0
    if used <= 0:
        return 0.0, 0.0
    per_expert = tokens_all * mo.top_k / used
    fwd = bwd = 0.0
    for n, k in _mlp_shapes(model, mo.expert_ffn_hidden_size, p.etp):
        tf, _, tb, _ = roof.gemm_fwd_bwd(per_expert, n, k)
        fwd, bwd = fwd + tf * used / p.ep, bwd + tb * used / p.ep
    tokens_dev = tokens_all * mo.top_k / p.ep
    mats = 3 if model.activation.gated else 2
    act = mats * tokens_dev * mo.expert_ffn_hidden_size / p.etp * e
    etp = (comm.all_gather_s(st.etp_links, tokens_dev * model.hidden_size * e)
           + comm.reduce_scatter_s(st.etp_links, tokens_dev * model.hidden_size * e))
    return fwd + roof.stream(act) + etp, bwd + roof.stream(2 * act) + etp


def forward_backward_layer(st: Setup, sequences: float, seq_len: int,
                           dtype: object) -> tuple[LayerTimes, LayerTimes]:
    """Per-micro-batch block times of a forward and a backward pass, `sequences` per
    attention replica of `seq_len` tokens each."""
    model, p = st.model, st.plan
    assert model.moe is not None
    sh = _attn_shard(st, sequences, seq_len, dtype)
    tokens_all = p.attn_dp * sequences * seq_len
    af, ab = attention_block_s(st, sh)
    ef, eb = expert_block_s(st, tokens_all, dtype)
    x = transfer_s(st.cluster, p.attn_devices, p.expert_devices,
                   tokens_all * model.moe.top_k * model.hidden_size * roof_bytes(dtype))  # type: ignore[arg-type]
    return LayerTimes(af, x, ef, x), LayerTimes(ab, x, eb, x)


def dense_block_s(st: Setup, sh: Shard) -> tuple[float, float]:
    """A non-MoE block, wholly on group A: roofline plus Megatron's two all-reduces per pass."""
    bc = block_compute(st.model, st.roof, sh, moe=False)
    tp = 2 * comm.all_reduce_s(st.tp_links, sh.tokens * st.model.hidden_size * roof_bytes(sh.dtype))
    return bc.fwd_s + tp, bc.bwd_s + tp


# ----- setup and checks ------------------------------------------------------------------
def check(model: ModelSpec, cluster: ClusterSpec, plan: SeparatedPlan, devices: int) -> None:
    """Raise PlanError when the plan cannot run (each message names the fix)."""
    if model.moe is None or model.num_moe_layers == 0:
        raise PlanError(f"'{model.name}' is dense: attention/expert separation needs an MoE "
                        "model (experts to separate); use 'meshplan search' for dense models")
    if plan.devices != devices:
        raise PlanError(f"attention {plan.attn_devices} + expert {plan.expert_devices} devices "
                        f"= {plan.devices}, not the {devices} asked; make them add up")
    if model.num_attention_heads % plan.attn_tp:
        raise PlanError(f"attention tp={plan.attn_tp} does not divide the "
                        f"{model.num_attention_heads} heads; use a divisor")
    if model.moe.num_experts % plan.ep:
        raise PlanError(f"ep={plan.ep} does not divide the {model.moe.num_experts} experts; "
                        "use a divisor")
    if model.moe.expert_ffn_hidden_size % plan.etp:
        raise PlanError(f"etp={plan.etp} does not divide the expert hidden size "
                        f"{model.moe.expert_ffn_hidden_size}; use a divisor")
    if plan.microbatches < 1:
        raise PlanError("the ping-pong micro-batch count m must be at least 1")


def make_setup(model: ModelSpec, cluster: ClusterSpec, plan: SeparatedPlan,
               dtype: object) -> Setup:
    from cost_models.efficiency import device_efficiency

    eff, generic = device_efficiency(cluster.device)
    roof = Roofline(cluster.device, eff, dtype)  # type: ignore[arg-type]
    a = plan.attn_devices
    etp_links = max((consecutive_links(cluster, a + g * plan.etp, plan.etp)
                     for g in range(plan.ep)), key=lambda g: (g.latency_s, -g.bandwidth_bytes_per_s))
    warnings = []
    if generic:
        warnings.append(f"no efficiency data for device '{cluster.device.name}'; generic "
                        "achievable fractions were used (see cost_models/efficiency.py)")
    tp_links = comm.group_links(cluster, size=plan.attn_tp, stride=1)
    if tp_links.spans_nodes:
        warnings.append(f"the attention tp={plan.attn_tp} group spans nodes")
    if etp_links.spans_nodes:
        warnings.append(f"an expert etp={plan.etp} group spans nodes")
    return Setup(model=model, cluster=cluster, plan=plan, roof=roof, tp_links=tp_links,
                 etp_links=etp_links,
                 dp_links=comm.group_links(cluster, size=plan.attn_dp, stride=plan.attn_tp),
                 warnings=warnings)


# ----- results ---------------------------------------------------------------------------
class SeparatedEstimate(BaseModel):
    """The cost model's prediction for one separated plan (training step or serving)."""

    model_config = ConfigDict(frozen=True)

    plan: str = Field(description="SeparatedPlan.to_string()")
    mode: Literal["training", "inference"]
    devices: int
    attn_devices: int
    expert_devices: int
    whole_nodes: bool = Field(description="the split between the groups is on a node boundary")
    time_s: float = Field(description="what plans are ranked by: step time (training) or TPOT")
    tokens_per_s: float = Field(description="trained tokens/s, or output tokens/s")
    ttft_s: float | None = Field(None, description="inference: prefill of the prompts")
    breakdown: dict[str, float] = Field(description="seconds; sums to time_s")
    ttft_breakdown: dict[str, float] | None = None
    layer_times_ms: dict[str, float] = Field(
        description="one micro-batch through one MoE block on each resource (forward or decode)")
    bottleneck: str = Field(description="the resource with the largest of those times")
    attn_memory_gib: dict[str, float] = Field(description="one device of the attention group")
    expert_memory_gib: dict[str, float] = Field(description="one device of the expert group")
    peak_memory_gib: float
    capacity_gib: float
    fits: bool
    warnings: list[str] = Field(default_factory=list)


def group_params(model: ModelSpec, plan: SeparatedPlan) -> tuple[float, float]:
    """(parameters on one attention device, on one expert device): every weight but the
    routed experts split tp ways (one copy of a tied embedding); the routed experts once."""
    assert model.moe is not None
    routed = model.num_moe_layers * model.moe.num_experts * model.mlp_params(model.moe.expert_ffn_hidden_size)
    return (model.params - routed) / plan.attn_tp, routed / plan.expert_devices


def _finish(st: Setup, *, mode: str, time_s: float, tokens: float, breakdown: dict[str, float],
            layer: LayerTimes, attn_mem: dict[str, float], exp_mem: dict[str, float],
            ttft: tuple[float, dict[str, float]] | None = None) -> SeparatedEstimate:
    p, cap = st.plan, float(st.cluster.device.memory_bytes)
    peak = max(sum(attn_mem.values()), sum(exp_mem.values()))
    warnings = list(st.warnings)
    if peak > cap:
        warnings.append(f"does not fit: {peak / GIB:.1f} GiB > {cap / GIB:.1f} GiB")
    return SeparatedEstimate(
        plan=p.to_string(), mode=mode, devices=p.devices, attn_devices=p.attn_devices,  # type: ignore[arg-type]
        expert_devices=p.expert_devices,
        whole_nodes=p.attn_devices % st.cluster.devices_per_node == 0,
        time_s=time_s, tokens_per_s=tokens / time_s,
        ttft_s=ttft[0] if ttft else None, ttft_breakdown=ttft[1] if ttft else None,
        breakdown=breakdown,
        layer_times_ms={k: v * 1e3 for k, v in zip(RESOURCES, layer.as_tuple(), strict=True)},
        bottleneck=layer.bottleneck,
        attn_memory_gib={k: v / GIB for k, v in attn_mem.items()},
        expert_memory_gib={k: v / GIB for k, v in exp_mem.items()},
        peak_memory_gib=peak / GIB, capacity_gib=cap / GIB, fits=peak <= cap, warnings=warnings)


# ----- training ----------------------------------------------------------------------------
def estimate_separated_training(model: ModelSpec, cluster: ClusterSpec,
                                workload: TrainingWorkload, plan: SeparatedPlan) -> SeparatedEstimate:
    """One optimizer step: rounds of m micro-batches (forward ping-pong, backward ping-pong),
    then the attention group's gradient all-reduce and the optimizer (module docstring)."""
    check(model, cluster, plan, plan.devices)
    if plan.mbs is None:
        raise PlanError("a training plan needs mbs (sequences per micro-batch)")
    per_round = plan.attn_dp * plan.microbatches * plan.mbs
    if workload.global_batch_size % per_round:
        raise PlanError(f"global batch {workload.global_batch_size} is not a multiple of attention "
                        f"dp x m x mbs = {per_round}; change m, mbs or the split")
    rounds, m, dt = workload.global_batch_size // per_round, plan.microbatches, workload.dtype
    st = make_setup(model, cluster, plan, dt)
    fwd, bwd = forward_backward_layer(st, plan.mbs, workload.seq_len, dt)
    n_moe = model.num_moe_layers
    n_dense = model.num_layers - n_moe
    sh = _attn_shard(st, plan.mbs, workload.seq_len, dt)
    df, db = dense_block_s(st, sh) if n_dense else (0.0, 0.0)
    ef, eb = embedding_compute(model, st.roof, sh)
    hf, hb, _ = head_compute(model, st.roof, sh)
    act = sh.tokens * model.hidden_size * roof_bytes(dt)
    emb_tp = comm.all_reduce_s(st.tp_links, act) if model.vocab_size else 0.0
    passes = {"forward": ping_pong_s(fwd.as_tuple(), m, n_moe),
              "backward": ping_pong_s(bwd.as_tuple(), m, n_moe),
              "dense_blocks": m * n_dense * (df + db),
              "embedding_head": m * (ef + eb + hf + hb + emb_tp)}
    attn_p, exp_p = group_params(model, plan)
    g, w = workload.grad_bytes, weight_bytes_per_param(dt)
    reduce = comm.all_reduce_s(st.dp_links, attn_p * g)
    window = m * (n_moe * bwd.attention + n_dense * db)
    breakdown = {k: rounds * v for k, v in passes.items()}
    breakdown["dp_comm"] = max(0.0, reduce - window) + reduce / model.num_layers
    breakdown["optimizer"] = max(attn_p, exp_p) * (OPTIMIZER_BYTES_PER_PARAM + g + w) / st.roof.bw
    step = sum(breakdown.values())
    attn_mem, exp_mem = _training_memory(st, workload, attn_p, exp_p)
    return _finish(st, mode="training", time_s=step, tokens=workload.tokens_per_step,
                   breakdown=breakdown, layer=fwd, attn_mem=attn_mem, exp_mem=exp_mem)


def _training_memory(st: Setup, wl: TrainingWorkload, attn_p: float,
                     exp_p: float) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes on one device of each group: states (2+2+12 per parameter, no ZeRO; memory.py),
    activations of the m micro-batches of a round (Korthikanti et al. 2022 Table 2 via
    memory.block_activation_bytes, the routed experts' share moved to group E), buffers."""
    model, p, dt = st.model, st.plan, wl.dtype
    assert model.moe is not None and p.mbs is not None
    per = weight_bytes_per_param(dt) + wl.grad_bytes + optimizer_bytes_per_param(wl.optimizer, dt)
    like = Plan(tp=p.attn_tp, mbs=p.mbs, etp=p.attn_tp)
    mats = 3 if model.activation.gated else 2
    f, e = model.moe.expert_ffn_hidden_size, roof_bytes(dt)
    q = saved_input_bytes(dt)           # a linear layer's saved input
    tokens = p.mbs * wl.seq_len
    # the routed experts' share of block_activation_bytes: their input rows, up-projection
    # outputs and the activation's output
    routed = tokens * model.moe.top_k / p.attn_tp * (f * ((mats - 1) * e + q)
                                                    + model.hidden_size * q * like.expert_tp)
    n_moe = model.num_moe_layers
    a_act = (n_moe * (block_activation_bytes(model, like, seq_len=wl.seq_len, moe=True,
                                             fused_attention=True, dtype=dt) - routed)
             + (model.num_layers - n_moe) * block_activation_bytes(
                 model, like, seq_len=wl.seq_len, moe=False, fused_attention=True, dtype=dt)
             + head_activation_bytes(model, like, seq_len=wl.seq_len)) * p.microbatches
    tokens_dev = p.attn_dp * tokens * model.moe.top_k / p.ep
    # the expert's input rows and its up-projection and activation outputs
    e_act = (p.microbatches * n_moe * tokens_dev
             * (model.hidden_size * q + f / p.etp * ((mats - 1) * e + q)))
    buckets = 2 * 40e6 * wl.grad_bytes if p.attn_dp > 1 else 0.0   # as tables.py
    out = []
    for states, act, extra in ((attn_p * per, a_act, buckets), (exp_p * per, e_act, 0.0)):
        out.append({"states": states, "activations": act,
                    "buffers": extra + FRAMEWORK_OVERHEAD_BYTES + FRAGMENTATION * (states + act)})
    return out[0], out[1]


# ----- inference ---------------------------------------------------------------------------
def _roofline_s(st: Setup, nbytes: float, flops: float, kernels: int) -> float:
    """Decode roofline of one kernel group: max(bytes / bandwidth, FLOPs / achievable rate)
    plus the kernel-launch floor of each kernel (cost_models/inference.py)."""
    rate = _math_rate(st.roof)
    return max(nbytes / st.roof.bw, flops / rate) + kernels * st.roof.eff.kernel_floor_s


def _attention_decode_s(st: Setup, weight_bytes: float, gemm_flops: float, kv_bytes: float,
                        score_flops: float, kernels: int) -> float:
    """An attention block's decode step as its kernels run: the projections' GEMMs (weights,
    weight FLOPs) and the attention kernel (KV cache, score FLOPs), one roofline each
    (inference._decode_stage)."""
    return (_roofline_s(st, weight_bytes, gemm_flops, kernels)
            + _roofline_s(st, kv_bytes, score_flops, 0))


def decode_layer(st: Setup, wl: InferenceWorkload, seqs: int) -> LayerTimes:
    """One decode step of one MoE block for a micro-batch of `seqs` sequences per attention
    replica: attention reads its weights and the micro-batch's KV cache at the mean context
    (Pope et al. 2022 Sec. 2, as inference.py) and all-reduces over its tp group with the
    engine's own kernels (`comm.serving_all_reduce_s`, as inference.py); experts read the
    experts the tokens hit."""
    model, p, dt = st.model, st.plan, wl.dtype
    assert model.moe is not None
    h, e, f = model.hidden_size, roof_bytes(dt), model.moe.expert_ffn_hidden_size
    # the mean context over decode; a sliding-window layer keeps and reads only its window
    ctx = model.attended_context(wl.prompt_len + wl.output_len / 2)
    expert_p = model.mlp_params(f)
    attn_p = model.moe_layer_params - model.moe.num_experts * expert_p
    kv = seqs * ctx * model.kv_cache_bytes_per_token(dt) / model.num_layers / kv_split(model, p.attn_tp)
    score = model.attention_score_flops_per_token(1) * ctx / model.num_layers
    a = (_attention_decode_s(st, attn_p / p.attn_tp * dt.bytes, seqs * 2 * attn_p / p.attn_tp,
                             kv, seqs * score / p.attn_tp, ATTENTION_KERNELS)
         + comm.serving_all_reduce_s(st.tp_links, seqs * h * e))
    tokens = p.attn_dp * seqs
    used = touched_experts(model, tokens)
    tokens_dev = tokens * model.moe.top_k / p.ep
    x = (_roofline_s(st, used / p.ep * expert_p / p.etp * dt.bytes,
                     2 * tokens * model.moe.top_k * expert_p / p.expert_devices, EXPERT_KERNELS)
         + comm.all_gather_s(st.etp_links, tokens_dev * h * e)
         + comm.reduce_scatter_s(st.etp_links, tokens_dev * h * e))
    t = transfer_s(st.cluster, p.attn_devices, p.expert_devices, tokens * model.moe.top_k * h * e)
    return LayerTimes(a, t, x, t)


def _decode_extras_s(st: Setup, wl: InferenceWorkload, seqs: int) -> tuple[float, float]:
    """(one dense block, embedding + LM head) of one decode micro-batch on group A."""
    model, p, dt = st.model, st.plan, wl.dtype
    h, ctx = model.hidden_size, model.attended_context(wl.prompt_len + wl.output_len / 2)
    kv = seqs * ctx * model.kv_cache_bytes_per_token(dt) / model.num_layers / kv_split(model, p.attn_tp)
    score = model.attention_score_flops_per_token(1) * ctx / model.num_layers
    dense_p = model.dense_layer_params
    dense = (_attention_decode_s(st, dense_p / p.attn_tp * dt.bytes,
                                 seqs * 2 * dense_p / p.attn_tp, kv, seqs * score / p.attn_tp,
                                 KERNELS_PER_BLOCK)
             + 2 * comm.all_reduce_s(st.tp_links, seqs * h * roof_bytes(dt)))
    head_p = model.vocab_size * h + model.norm_params if model.vocab_size else 0
    head = (_roofline_s(st, head_p / p.attn_tp * vocab_weight_bytes(dt), seqs * 2 * head_p / p.attn_tp,
                        HEAD_KERNELS) + EMBEDDING_KERNELS * st.roof.eff.kernel_floor_s)
    return dense, head


def estimate_separated_inference(model: ModelSpec, cluster: ClusterSpec,
                                 workload: InferenceWorkload, plan: SeparatedPlan) -> SeparatedEstimate:
    """Prefill (TTFT) and one decode step (TPOT) of the batch, each a ping-pong pass of m
    micro-batches of batch / (dp x m) sequences per attention replica."""
    check(model, cluster, plan, plan.devices)
    b, dp, m, dt = workload.batch_size, plan.attn_dp, plan.microbatches, workload.dtype
    if b % (dp * m):
        raise PlanError(f"batch {b} is not a multiple of attention dp x m = {dp * m}; change m "
                        "or the split")
    seqs = b // (dp * m)
    st = make_setup(model, cluster, plan, dt)
    n_moe = model.num_moe_layers
    n_dense = model.num_layers - n_moe
    fwd, _ = forward_backward_layer(st, seqs, workload.prompt_len, dt)
    sh = _attn_shard(st, seqs, workload.prompt_len, dt)
    emb = st.roof.stream(2 * sh.tokens * model.hidden_size * roof_bytes(dt)) if model.vocab_size else 0.0
    head = st.roof.gemm(seqs, model.vocab_size / plan.attn_tp, model.hidden_size)[0]
    ttft_bd = {"ping_pong": ping_pong_s(fwd.as_tuple(), m, n_moe),
               "dense_blocks": m * n_dense * (dense_block_s(st, sh)[0] if n_dense else 0.0),
               "embedding_head": m * (emb + head)}
    dec = decode_layer(st, workload, seqs)
    dense_s, head_s = _decode_extras_s(st, workload, seqs)
    tpot_bd = {"ping_pong": ping_pong_s(dec.as_tuple(), m, n_moe),
               "dense_blocks": m * n_dense * dense_s, "embedding_head": m * head_s}
    attn_mem, exp_mem = _inference_memory(st, workload, seqs)
    return _finish(st, mode="inference", time_s=sum(tpot_bd.values()), tokens=b,
                   breakdown=tpot_bd, layer=dec, attn_mem=attn_mem, exp_mem=exp_mem,
                   ttft=(sum(ttft_bd.values()), ttft_bd))


def _inference_memory(st: Setup, wl: InferenceWorkload,
                      seqs: int) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes on one device of each group: weights in the serving dtype; on A the KV cache of
    its replica's sequences (paged, split over the KV heads: inference.py) and the prefill
    workspace of one micro-batch (residual, norm output, Q/K/V, shared/dense MLP widths, fp32
    logits of the last positions); on E the experts and their micro-batch's tokens (input and
    up-projection outputs); the framework overhead on both."""
    model, p, dt = st.model, st.plan, wl.dtype
    assert model.moe is not None
    attn_p, exp_p = group_params(model, p)
    h, t, e = model.hidden_size, p.attn_tp, roof_bytes(dt)
    kv = (wl.batch_size // p.attn_dp * model.attended_context(kv_tokens_per_sequence(wl))
          * model.kv_cache_bytes_per_token(dt)
          / kv_split(model, t))
    if model.mla is not None:
        ml = model.mla
        qkv = model.num_attention_heads * (2 * (ml.qk_nope_head_dim + ml.qk_rope_head_dim) + ml.v_head_dim)
    else:
        qkv = (model.num_attention_heads + 2 * model.kv_heads) * model.d_head
    mats = 3 if model.activation.gated else 2
    mo = model.moe
    mlp = max(mo.num_shared_experts * mo.shared_ffn,
              model.ffn_hidden_size if model.num_moe_layers < model.num_layers else 0)
    tokens = seqs * wl.prompt_len
    work_a = tokens * (2 * h + (qkv + mats * mlp) / t) * e + seqs * model.vocab_size / t * LOGIT_BYTES
    tokens_dev = p.attn_dp * tokens * mo.top_k / p.ep
    work_e = tokens_dev * (h + mats * mo.expert_ffn_hidden_size / p.etp) * e
    oh = float(FRAMEWORK_OVERHEAD_BYTES)
    # the embedding, final norm and LM head in 16 bits when quantised (vocab_weight_bytes)
    vocab_p = (model.embedding_params + model.lm_head_params) / t
    attn_w = (attn_p - vocab_p) * dt.bytes + vocab_p * vocab_weight_bytes(dt)
    return ({"weights": attn_w, "kv_cache": kv, "workspace": work_a, "overhead": oh},
            {"weights": exp_p * dt.bytes, "kv_cache": 0.0, "workspace": work_e, "overhead": oh})
