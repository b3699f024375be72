"""Whether a plan can run at all: the rules, each with the nearest values that would work.

Decides only validity (a plan that does not fit in memory is valid; the cost model reports
`fits: false`). `check_plan` raises `PlanError` on the first broken rule; `plan_problems`
returns all of them, which the search uses as prune reasons.
"""

from __future__ import annotations

from planner.errors import PlanError
from planner.model import ModelSpec
from planner.plan import Plan, Recompute, Schedule
from planner.workload import TrainingWorkload


def divisors(n: int) -> list[int]:
    """All divisors of n, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def nearest(value: int, candidates: list[int]) -> str:
    """The candidates closest to value, as 'a or b'."""
    if not candidates:
        return "none"
    ranked = sorted(candidates, key=lambda c: (abs(c - value), c))[:2]
    return " or ".join(str(c) for c in sorted(ranked))


def valid_tp(model: ModelSpec) -> list[int]:
    """The tp degrees that pass the heads, KV-heads and FFN rules together."""
    kv = model.kv_heads
    return [d for d in divisors(model.num_attention_heads)
            if model.ffn_hidden_size % d == 0
            and (model.mla is not None or kv % d == 0 or d % kv == 0)]


def plan_problems(model: ModelSpec, workload: TrainingWorkload, plan: Plan,
                  devices: int) -> list[tuple[str, str]]:
    """All broken rules as (reason key, message)."""
    out: list[tuple[str, str]] = []
    p, a = plan, model.num_attention_heads
    if p.devices != devices:
        out.append(("device_count", f"tp*pp*dp*cp = {p.tp}*{p.pp}*{p.dp}*{p.cp} = {p.devices} "
                    f"must equal the {devices} devices; with tp={p.tp}, pp={p.pp}, cp={p.cp} "
                    f"use dp={devices // max(1, p.tp * p.pp * p.cp)}"
                    if devices % (p.tp * p.pp * p.cp) == 0 else
                    f"tp*pp*dp*cp = {p.devices} must equal the {devices} devices; "
                    f"tp*pp*cp = {p.tp * p.pp * p.cp} does not divide {devices}"))
    if a % p.tp:
        out.append(("tp_heads", f"tp={p.tp} must divide the {a} attention heads; "
                    f"nearest valid tp: {nearest(p.tp, valid_tp(model))}"))
    elif model.mla is None and model.kv_heads % p.tp and p.tp % model.kv_heads:
        out.append(("tp_kv_heads", f"tp={p.tp} must divide the {model.kv_heads} KV heads or be "
                    f"a multiple of them; nearest valid tp: {nearest(p.tp, valid_tp(model))}"))
    if model.ffn_hidden_size % p.tp:
        out.append(("tp_ffn", f"tp={p.tp} must divide the FFN size {model.ffn_hidden_size}; "
                    f"nearest valid tp: {nearest(p.tp, valid_tp(model))}"))
    if p.pp > model.num_layers:
        out.append(("pp_layers", f"pp={p.pp} exceeds the {model.num_layers} layers; "
                    f"use pp <= {model.num_layers}"))
    out += _batch_problems(workload, p)
    out += _dualpipe_problems(workload, p)
    out += _stage_problems(model, p)
    out += _other_problems(model, workload, p)
    return out


def _batch_problems(workload: TrainingWorkload, p: Plan) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    gb = workload.global_batch_size
    if gb % (p.dp * p.mbs):
        per = [m for m in divisors(gb // p.dp)] if gb % p.dp == 0 else []
        hint = (f"nearest valid mbs: {nearest(p.mbs, per)}" if per else
                f"choose a global batch that is a multiple of dp={p.dp}, e.g. "
                f"{nearest(gb, [max(p.dp, gb // p.dp * p.dp), (gb // p.dp + 1) * p.dp])}")
        out.append(("batch_divisibility", f"global batch {gb} is not divisible by "
                    f"dp*mbs = {p.dp}*{p.mbs} = {p.dp * p.mbs}; {hint}"))
    elif p.vpp > 1 and (gb // (p.dp * p.mbs)) % p.pp:
        out.append(("interleave_microbatches", f"the interleaved schedule needs the "
                    f"{gb // (p.dp * p.mbs)} micro-batches per replica to be a multiple of "
                    f"pp={p.pp} (Megatron-LM); change mbs or the global batch, or use vpp=1"))
    return out


def _dualpipe_problems(workload: TrainingWorkload, p: Plan) -> list[tuple[str, str]]:
    """DualPipe's own checks (github.com/deepseek-ai/DualPipe, dualpipe.py `step`: the number of
    ranks is even; the micro-batches are even and at least twice the ranks) and what it
    already does itself: two stages per rank (no virtual stages) and the all-to-all overlap."""
    if p.schedule != Schedule.DUALPIPE:
        return []
    out: list[tuple[str, str]] = []
    if p.pp < 2 or p.pp % 2:
        out.append(("dualpipe_pp", f"schedule=dualpipe needs an even pp of at least 2 (micro-"
                    f"batches enter from both ends of the pipeline), got pp={p.pp}; nearest "
                    f"valid pp: {max(2, p.pp + 1 if p.pp % 2 else p.pp)}"))
    if p.vpp > 1:
        out.append(("dualpipe_vpp", f"schedule=dualpipe holds two stages on each rank already "
                    f"and takes no virtual stages; use vpp=1 (got vpp={p.vpp})"))
    if p.ep_overlap:
        out.append(("dualpipe_ep_overlap", "schedule=dualpipe overlaps the expert all-to-all "
                    "with the paired chunk itself; use ep_overlap=off"))
    gb = workload.global_batch_size
    if gb % (p.dp * p.mbs) == 0 and p.pp >= 2 and p.pp % 2 == 0:
        m = gb // (p.dp * p.mbs)
        if m % 2 or m < 2 * p.pp:
            per = gb // p.dp
            valid = [b for b in divisors(per) if (per // b) % 2 == 0 and per // b >= 2 * p.pp]
            hint = (f"nearest valid mbs: {nearest(p.mbs, valid)}" if valid else
                    f"use a global batch that is an even multiple of dp*mbs = {p.dp * p.mbs}, "
                    f"at least {2 * p.pp * p.dp * p.mbs}")
            out.append(("dualpipe_microbatches", f"schedule=dualpipe needs an even number of "
                        f"micro-batches per replica, at least 2*pp = {2 * p.pp} (DualPipe "
                        f"splits them between the two directions), got {m}; {hint}"))
    return out


def _stage_problems(model: ModelSpec, p: Plan) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    L = model.num_layers
    if p.stage_layers is not None:
        if len(p.stage_layers) != p.pp:
            out.append(("stage_layers", f"layers= gives {len(p.stage_layers)} stages but pp={p.pp}"
                        + (f" (or pp*vpp={p.pp * p.vpp} virtual stages)" if p.vpp > 1 else "")))
        elif sum(p.stage_layers) != L:
            out.append(("stage_layers", f"layers= sums to {sum(p.stage_layers)} blocks but the "
                        f"model has {L}"))
    if p.vpp > 1:
        if p.pp == 1:
            out.append(("vpp_needs_pp", f"vpp={p.vpp} needs pipeline parallelism; use vpp=1 or pp>1"))
        counts = p.layers_per_stage(L) if p.pp <= L else ()
        if p.chunk_layers is not None:
            pass  # an explicit per-virtual-stage layout (Megatron-Core's pipeline layout)
        elif any(c % p.vpp for c in counts):
            valid = [v for v in divisors(min(counts)) if all(c % v == 0 for c in counts)]
            out.append(("vpp_layers", f"vpp={p.vpp} must divide the layers per stage "
                        f"({'/'.join(map(str, counts))}); nearest valid vpp: {nearest(p.vpp, valid)} "
                        f"(or give all {p.pp * p.vpp} virtual-stage counts with layers=)"))
    return out


def _other_problems(model: ModelSpec, workload: TrainingWorkload, p: Plan) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    s = workload.seq_len
    if p.cp > 1 and s % (2 * p.cp):
        valid = [c for c in divisors(s) if s % (2 * c) == 0]
        out.append(("cp_seq", f"cp={p.cp} needs the sequence length {s} to split into 2*cp "
                    f"balanced chunks; nearest valid cp: {nearest(p.cp, valid)}"))
    if p.zero >= 2 and p.pp > 1:
        out.append(("zero_pp", f"ZeRO stage {p.zero} shards gradients, which pipeline "
                    "parallelism accumulates over micro-batches (DeepSpeed and Megatron-LM "
                    "refuse it); use zero=1 with pp>1, or pp=1"))
    if p.recompute_modules is not None:
        if p.recompute != Recompute.SELECTIVE:
            out.append(("recompute_modules", f"recompute_modules= picks what selective "
                        f"recomputation repeats, but recompute={p.recompute.value}; use "
                        "recompute=selective or drop recompute_modules"))
        if "mla_up_proj" in p.recompute_modules and model.mla is None:
            out.append(("recompute_modules", "recompute_modules=mla_up_proj needs a model with "
                        "multi-head latent attention"))
        if "moe_act" in p.recompute_modules and model.moe is None:
            out.append(("recompute_modules", "recompute_modules=moe_act needs a "
                        "mixture-of-experts model"))
    out += _offload_problems(model, p)
    if model.moe is None:
        if p.ep > 1:
            out.append(("ep_dense", f"ep={p.ep} needs a mixture-of-experts model; use ep=1"))
        if p.ep_overlap:
            out.append(("ep_overlap_dense", "ep_overlap=on needs a mixture-of-experts model; "
                        "use ep_overlap=off"))
    else:
        e = model.moe.num_experts
        if e % p.ep:
            out.append(("ep_experts", f"ep={p.ep} must divide the {e} experts; "
                        f"nearest valid ep: {nearest(p.ep, divisors(e))}"))
        group = p.dp * p.cp * p.tp
        if group % (p.ep * p.expert_tp):
            valid = [d for d in divisors(group) if e % d == 0 and group % (d * p.expert_tp) == 0]
            out.append(("ep_fold", f"ep*etp = {p.ep * p.expert_tp} must divide dp*cp*tp = "
                        f"{group} (expert parallelism is folded into those ranks); nearest "
                        f"valid ep: {nearest(p.ep, valid)}"))
        if p.ep_overlap and p.ep == 1:
            out.append(("ep_overlap_ep", "ep_overlap=on overlaps the expert-parallel all-to-all, "
                        "which ep=1 does not have; use ep>1 or ep_overlap=off"))
        # Megatron-Core's own checks (TransformerConfig.__post_init__, megatron-core 0.16)
        if p.ep_overlap and p.pp > 1 and p.vpp == 1 and p.schedule != Schedule.DUALPIPE:
            out.append(("ep_overlap_vpp", f"ep_overlap=on with pp={p.pp} needs the interleaved "
                        "schedule (Megatron-Core's combined 1F1B pairs micro-batches across "
                        "virtual stages); use vpp>1, pp=1, or ep_overlap=off"))
        if p.ep_overlap and p.recompute == Recompute.FULL:
            out.append(("ep_overlap_recompute", "ep_overlap=on cannot run with full "
                        "recomputation (Megatron-Core refuses it); use recompute=selective or "
                        "none, or ep_overlap=off"))
        if p.ep_overlap and model.mtp_layers > 1:
            out.append(("ep_overlap_mtp", f"ep_overlap=on supports at most 1 MTP module, the "
                        f"model has {model.mtp_layers}; use ep_overlap=off"))
        elif p.ep_overlap and model.mtp_layers == 1 and p.pp == 1:
            out.append(("ep_overlap_mtp", "ep_overlap=on with an MTP module needs pipeline "
                        "parallelism (Megatron-Core); use pp>1 with vpp>1, or ep_overlap=off"))
        if model.moe.expert_ffn_hidden_size % p.expert_tp:
            out.append(("etp_ffn", f"etp={p.expert_tp} must divide the expert FFN size "
                        f"{model.moe.expert_ffn_hidden_size}"))
    return out


def _offload_problems(model: ModelSpec, p: Plan) -> list[tuple[str, str]]:
    """Megatron-Core's rules for activation offloading (TransformerConfig.__post_init__;
    Megatron Bridge CPU-offloading guide: "PP must be 1", no recomputation, offloaded layers
    from 0 to num_layers - 1)."""
    if not p.offload:
        return []
    out: list[tuple[str, str]] = []
    if p.offload >= model.num_layers:
        out.append(("offload_layers", f"offload={p.offload} must be below the model's "
                    f"{model.num_layers} layers (Megatron-Core keeps at least the last layer's "
                    f"activations on the device); use offload <= {model.num_layers - 1}"))
    if p.pp > 1:
        out.append(("offload_pp", f"offload={p.offload} needs pp=1 (Megatron-Core does not "
                    "offload activations with pipeline parallelism); use pp=1 or offload=0"))
    if p.recompute != Recompute.NONE:
        out.append(("offload_recompute", f"offload={p.offload} cannot run with "
                    f"recompute={p.recompute.value} (Megatron-Core refuses activation "
                    "offloading with recomputation); use recompute=none or offload=0"))
    return out


def check_plan(model: ModelSpec, workload: TrainingWorkload, plan: Plan, devices: int) -> None:
    """Raise PlanError naming the first broken rule and the nearest valid values."""
    problems = plan_problems(model, workload, plan, devices)
    if problems:
        raise PlanError(f"invalid plan: {problems[0][1]}")
