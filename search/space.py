"""The search space: which plans exist for a model on N devices, and why others do not.

Decides the candidate degrees (every factorisation N = tp x cp x pp x dp), micro-batch sizes
(divisors of the per-replica batch), recomputation, sequence parallelism, ZeRO stage, virtual
pipeline stages and rank-layout orders; and counts each candidate it drops under a reason.
Does not score anything.

Exact reductions (they never drop a plan that could be strictly better):
- sp=off is dominated by sp=on when tp > 1: SP splits the same elementwise work and
  activations over the tp ranks with the same communication volume (Korthikanti et al. 2022
  Sec. 4.2.2), so it is never slower and never uses more memory in this cost model.
- Orders that put every group on the same links (same stride class for tp, cp, dp and the
  same node crossing for pp) score identically; one order per class is kept.
- Expert parallelism (MoE models) is enumerated over the divisors of the expert count that
  fold into dp x cp x tp.
- vpp > 1 uses the even split when the stages divide the blocks. When pp does not divide
  the blocks (DeepSeek-V3's 61), vpp > 1 is offered with Megatron-Core's per-virtual-stage
  layout (`--pipeline-model-parallel-layout`): the pp*vpp chunks as even as possible,
  earlier chunks taking the remainder, or full chunks with the remainder last, beside the
  head (Megatron-Bridge's recipe layout; `interleaved_layouts`), for vpp dividing ceil(blocks /
  pp), the even case's options for the blocks padded to a multiple of pp (61 blocks: pp=4
  takes vpp 2, 4 or 8, pp=8 vpp 2 or 4, Megatron-Bridge's DeepSeek-V3 recipes use 4 x 4 and
  8 x 2). Other uneven splits are searched with vpp = 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import permutations

from cost_models.comm import composite_links, group_links
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import DEFAULT_ORDER, Recompute, Schedule
from planner.validate import divisors
from planner.workload import TrainingWorkload


@dataclass(frozen=True, slots=True)
class Degrees:
    """One factorisation of the devices."""

    tp: int
    cp: int
    pp: int
    dp: int


@dataclass(frozen=True, slots=True)
class Limits:
    """User bounds on the space (None = unbounded) and fixed plan values."""

    max_tp: int | None = None
    max_cp: int | None = None
    max_pp: int | None = None
    max_mbs: int | None = None
    fixed: dict[str, object] = field(default_factory=dict)


HELD_KEYS = ("etp", "attn", "loss", "recompute_modules", "dispatcher", "offload", "schedule",
             "dp_overlap")
"""Plan keys the search does not vary: a --fix value is carried into every candidate as given,
otherwise the Plan default (etp 1, FlashAttention, unfused loss, the attention core as the
selective module, the flex MoE dispatcher, which is never slower; the 1F1B schedule, or
interleaved where vpp > 1: DualPipe only under --fix schedule=dualpipe, since no training
export can launch it; data-parallel overlap on, which is never slower: --fix dp_overlap=off
scores every candidate as a framework that does not overlap runs it)."""


def held(limits: Limits) -> dict[str, object]:
    """The HELD_KEYS values fixed in `limits`, as Plan fields."""
    return {k: v for k, v in limits.fixed.items() if k in HELD_KEYS}


def _allowed(value: int, key: str, limits: Limits) -> bool:
    return key not in limits.fixed or limits.fixed[key] == value


def enumerate_degrees(model: ModelSpec, workload: TrainingWorkload, devices: int,
                      cluster: ClusterSpec, limits: Limits, pruned: Counter[str]) -> Iterator[Degrees]:
    """Every tp x cp x pp x dp = devices that can work, in a fixed order; the others are
    counted in `pruned` by reason."""
    max_tp = limits.max_tp or cluster.devices_per_node
    for tp in divisors(devices):
        if not _allowed(tp, "tp", limits):
            pruned["fixed"] += 1
            continue
        if tp > max_tp:
            pruned["tp_above_max"] += 1
            continue
        if model.num_attention_heads % tp or model.ffn_hidden_size % tp or (
                model.mla is None and model.kv_heads % tp and tp % model.kv_heads):
            pruned["tp_divisibility"] += 1
            continue
        yield from _rest(model, workload, devices // tp, tp, limits, pruned)


def _rest(model: ModelSpec, workload: TrainingWorkload, left: int, tp: int, limits: Limits,
          pruned: Counter[str]) -> Iterator[Degrees]:
    for cp in divisors(left):
        if not _allowed(cp, "cp", limits) or (limits.max_cp and cp > limits.max_cp):
            pruned["fixed" if not _allowed(cp, "cp", limits) else "cp_above_max"] += 1
            continue
        if cp > 1 and workload.seq_len % (2 * cp):
            pruned["cp_sequence"] += 1
            continue
        for pp in divisors(left // cp):
            dp = left // cp // pp
            if not (_allowed(pp, "pp", limits) and _allowed(dp, "dp", limits)):
                pruned["fixed"] += 1
            elif pp > model.num_layers or (limits.max_pp and pp > limits.max_pp):
                pruned["pp_layers"] += 1
            elif workload.global_batch_size % dp:
                pruned["batch_divisibility"] += 1
            elif model.moe is None and limits.fixed.get("ep", 1) != 1:
                pruned["ep_dense"] += 1
            else:
                yield Degrees(tp=tp, cp=cp, pp=pp, dp=dp)


def micro_batches(workload: TrainingWorkload, d: Degrees, limits: Limits) -> list[int]:
    """Divisors of the per-replica batch (bounded by max_mbs), or the fixed one."""
    per = workload.global_batch_size // d.dp
    options = [b for b in divisors(per) if not limits.max_mbs or b <= limits.max_mbs]
    if "mbs" in limits.fixed:
        options = [b for b in options if b == limits.fixed["mbs"]]
    return options


def ep_options(model: ModelSpec, d: Degrees, limits: Limits) -> list[int]:
    """Expert-parallel degrees: divisors of the experts that fold into dp x cp x tp with the
    expert tensor-parallel degree (Megatron-Core's parallel folding), or the fixed one."""
    if "ep" in limits.fixed:
        return [int(limits.fixed["ep"])]  # type: ignore[call-overload]
    if model.moe is None:
        return [1]
    etp = int(limits.fixed.get("etp") or 1)  # type: ignore[call-overload]
    group = d.dp * d.cp * d.tp
    return [e for e in divisors(model.moe.num_experts) if group % (e * etp) == 0]


def recompute_options(limits: Limits) -> list[Recompute]:
    """none/selective/full, or the fixed one; a fixed recompute_modules means selective (the
    modules are searched only when held fixed: --fix recompute_modules=...)."""
    if "recompute" in limits.fixed:
        return [Recompute(str(limits.fixed["recompute"]))]
    if limits.fixed.get("recompute_modules"):
        return [Recompute.SELECTIVE]
    return [Recompute.NONE, Recompute.SELECTIVE, Recompute.FULL]


def sp_options(tp: int, limits: Limits, pruned: Counter[str]) -> list[bool]:
    if "sp" in limits.fixed:
        return [bool(limits.fixed["sp"])]
    if tp > 1:
        pruned["dominated_sp_off"] += 1
        return [True]
    return [False]


def ep_overlap_options(model: ModelSpec, pp: int, vpp: int, ep: int, recompute: Recompute,
                       limits: Limits) -> list[bool]:
    """Combined 1F1B (ep_overlap) where Megatron-Core allows it (the rules of
    planner.validate): an MoE model with ep > 1, the interleaved schedule when pp > 1, no full
    recomputation, at most one MTP module and then pp > 1. Both values are searched: hiding
    the all-to-alls holds about one more block of activations (tables.StageTables.memory)."""
    if "ep_overlap" in limits.fixed:
        return [bool(limits.fixed["ep_overlap"])]
    if (model.moe is None or ep == 1 or (pp > 1 and vpp == 1) or recompute == Recompute.FULL
            or model.mtp_layers > 1 or (model.mtp_layers == 1 and pp == 1)):
        return [False]
    return [False, True]


def zero_options(pp: int, limits: Limits) -> list[int]:
    if "zero" in limits.fixed:
        return [int(limits.fixed["zero"])]  # type: ignore[call-overload]
    return [0, 1] if pp > 1 else [0, 1, 2, 3]


def vpp_options(model: ModelSpec, pp: int, m: int, limits: Limits) -> list[int]:
    if "vpp" in limits.fixed:
        return [int(limits.fixed["vpp"])]  # type: ignore[call-overload]
    if pp == 1 or limits.fixed.get("schedule") == Schedule.DUALPIPE:
        return [1]      # DualPipe holds two stages per rank and no virtual stages
    out = [1]
    L = model.num_layers
    if m % pp:
        return out
    if L % pp == 0:
        return out + [v for v in divisors(L // pp) if v > 1]
    # as if the blocks were padded to the next multiple of pp: the even case's divisors
    return out + [v for v in divisors(-(-L // pp)) if v > 1 and pp * v <= L]


def interleaved_layouts(num_layers: int, pp: int, vpp: int) -> list[tuple[int, ...] | None]:
    """Blocks per virtual stage for vpp > 1 when pp does not divide the blocks ([None]: the
    even split serves). Two layouts: as even as possible, earlier chunks taking the
    remainder; and Megatron-Bridge's recipe layout, every chunk full (ceil(L / chunks)) but
    the last, which takes what is left and sits beside the output head, the loss and any MTP
    module (recipes/deepseek/deepseek_v3.py `layout_map`: 61 blocks on 16 chunks as 15 x 4 + 1)."""
    chunks = pp * vpp
    if vpp == 1 or num_layers % pp == 0 or chunks > num_layers:
        return [None]       # (more chunks than blocks: planner.validate names the rule)
    base, extra = divmod(num_layers, chunks)
    even = tuple(base + (1 if c < extra else 0) for c in range(chunks))
    full = -(-num_layers // chunks)
    last = num_layers - full * (chunks - 1)
    out: list[tuple[int, ...] | None] = [even]
    if last >= 0:
        fill = (full,) * (chunks - 1) + (last,)
        stages = [sum(fill[c] for c in range(r, chunks, pp)) for r in range(pp)]
        if fill != even and min(stages) > 0:
            out.append(fill)
    return out


def order_classes(d: Degrees, cluster: ClusterSpec, limits: Limits) -> list[tuple[str, ...]]:
    """One rank-layout order per distinct link assignment, DEFAULT_ORDER's class first. Two
    orders are the same class when `cost_models.comm.group_links` gives every group the same
    links (and pp crosses nodes in both or neither), exactly the inputs of the score."""
    if "order" in limits.fixed:
        return [tuple(limits.fixed["order"])]  # type: ignore[arg-type]
    sizes = {"tp": d.tp, "cp": d.cp, "dp": d.dp, "pp": d.pp}
    per_node = cluster.devices_per_node
    seen: dict[tuple, tuple[str, ...]] = {}
    for order in [DEFAULT_ORDER, *sorted(permutations(DEFAULT_ORDER))]:
        stride, acc = {}, 1
        for name in order:
            stride[name] = acc
            acc *= sizes[name]
        sig = (group_links(cluster, size=d.tp, stride=stride["tp"]),
               group_links(cluster, size=d.cp, stride=stride["cp"]),
               composite_links(cluster, [(d.cp, stride["cp"]), (d.dp, stride["dp"])]),
               d.pp > 1 and stride["pp"] * d.pp > per_node)   # as training.make_context
        seen.setdefault(sig, order)
    return list(seen.values())
