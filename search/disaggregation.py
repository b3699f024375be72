"""Prefill/decode disaggregated serving: one pool of instances prefills the prompts, another
decodes, each with its own parallelism, searched together under latency limits and set next
to the best colocated plan on the same devices.

Why (Zhong et al. 2024, DistServe, OSDI, Sec. 2-3; Patel et al. 2024, Splitwise, ISCA): in a
colocated engine every decode step also carries new prompts' prefill, so each running
sequence's time per output token grows by that prefill; on separate instances decode steps
carry only decode, prefill and decode each get the parallelism that suits them, and the KV
cache of each prompt moves from the prefill to the decode instance. DeepSeek-V3 serves this
way (arXiv:2412.19437 Sec. 3.4: prefill units of 32 GPUs, decode units of 320).

The model, in steady state (every quantity from `cost_models.inference.estimate_inference`;
no queueing: arrivals are taken as keeping both pools busy):
- Decode pool: n_d instances of g_d devices with plan D, each decoding B / n_d of the
  workload's B concurrent sequences (n_d must divide B). A step takes TPOT_d (the estimate at
  that batch, prompt P, output O); each sequence leaves after O steps, so the pool completes
  R_d = B / (O * TPOT_d) requests per second. Its memory holds the full-context KV cache but
  no prefill activations, only one decode step's (`decode_workload`).
- Prefill pool: n_p instances of g_p devices with plan F, each prefilling b_p prompts at a
  time (b_p a power of two up to B, dp dividing it). The batch's prefill takes t_p (the
  estimate's TTFT at batch b_p, output 1). Its KV cache, b_p * P tokens
  (`ModelSpec.kv_cache_bytes_per_token`, a sliding-window layer only its window), moves to
  the decode pool while the next batch prefills (DistServe Sec. 4.3, Mooncake: layer by
  layer, overlapped): each of the prefill instance's distinct KV shards (KV heads over tp,
  layers over pp, sequences over dp) sends its share over its own link, at most as many
  links as receive it (a decode replica's shards, times the replicas the batch's b_p
  sequences spread over: at most b_p, at most the pool's), taking t_kv; over the inter-node
  network unless the whole deployment fits one node or NVLink domain (where the pools are
  placed is not chosen here, so a multi-node deployment is scored on the network). An
  instance completes r_p = b_p / max(t_p, t_kv) requests per second.
- The pools are matched: n_p is the fewest instances with n_p * r_p >= R_d, at most the
  devices left; the deployment serves R = min(R_d, n_p * r_p) requests per second, O * R
  output tokens per second, on n_p * g_p + n_d * g_d <= N devices.
- Latency: TTFT = t_p (the first token comes out of prefill); the second token follows
  after t_kv and one decode step. TPOT = TPOT_d, except when prefill bounds the rate: then
  fewer than B sequences decode at a time (Little's law) and TPOT is settled there (`settle`).
  The search ranks and applies the TPOT limit at the full batch (the settled TPOT is lower).
- Instance sizes g: the divisors of N below N that the cluster can hold as a job
  (`ClusterSpec.job_view`); plans on an instance are the inference search's space
  (`search.inference.enumerate_plans`) with one replica, or with the experts spread over
  replicas exactly the replicas that share them (`one_group`): more replicas are more
  instances, which n_p and n_d count.

Colocated, on all N devices, for comparison: continuous batching with chunked prefill
(Agrawal et al. 2024, Sarathi-Serve, OSDI, "stall-free batching"): each step decodes the B
running sequences and prefills the B / O prompts that replace the sequences finishing, so a
step takes TPOT + TTFT / O of the static-batch estimate (its TTFT prefills all B prompts,
B / dp per replica; a step prefills B / (dp * O) of them per replica, at the same cost per
prompt), the deployment serves B * O / (O * TPOT + TTFT) output tokens per second (the
estimate's e2e_tokens_per_s), and a new prompt's prefill is spread over
max(1, dp * O / B) steps, its TTFT. The colocated plan shown is the one with the most output
tokens per second within the same limits.

Ranked by output tokens per second (descending), then fewer devices, lower TPOT at the full
batch, lower TTFT and the plan strings. Deterministic: every space is enumerated in a fixed order.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cost_models import comm
from cost_models.compute import memoised_blocks
from cost_models.inference import InferenceEstimate, estimate_inference, kv_split
from planner.errors import InfeasibleError, SpecError
from planner.hardware import ClusterSpec
from planner.model import ModelSpec
from planner.plan import Plan
from planner.validate import divisors
from planner.workload import InferenceWorkload
from search.inference import (ScoredInferencePlan, enumerate_plans, plan_text,
                              serving_plan_dict)


class Pool(BaseModel):
    """One pool of identical instances."""

    model_config = ConfigDict(frozen=True)

    plan: dict[str, int | bool] = Field(description="each instance's tp, pp, dp, ep, ep_overlap")
    devices_per_instance: int
    instances: int
    batch_per_instance: int = Field(description="prefill: prompts per prefill batch; decode: "
                                                "concurrent sequences")
    estimate: InferenceEstimate = Field(description="one instance at that batch")


class DisaggregatedPlan(BaseModel):
    """A prefill pool and a decode pool, matched in requests per second."""

    model_config = ConfigDict(frozen=True)

    prefill: Pool
    decode: Pool
    devices: int = Field(description="devices the two pools use (at most the devices asked)")
    ttft_s: float = Field(description="prefill of one prefill batch: time to first token")
    kv_transfer_s: float = Field(description="moving one prefill batch's KV cache to decode")
    tpot_s: float = Field(description="decode time per output token, at decode_sequences")
    decode_sequences: float = Field(description="sequences decoding at a time in steady state: "
                                    "requests_per_s x output_len x tpot_s (Little's law); the "
                                    "batch when decode bounds the rate, fewer when prefill does")
    requests_per_s: float
    tokens_per_s: float = Field(description="output tokens per second of the deployment")
    tokens_per_s_per_device: float
    bound: Literal["prefill", "decode"] = Field(description="the pool that limits the rate")
    prefill_utilisation: float = Field(description="share of the prefill pool's rate used")
    kv_link: Literal["network", "intra-node"]
    fits: bool = Field(True, description="both pools' instances fit in memory (a searched "
                                         "deployment always does)")


class ColocatedPlan(BaseModel):
    """The best colocated plan on all devices, in continuous-batching steady state."""

    model_config = ConfigDict(frozen=True)

    plan: ScoredInferencePlan = Field(description="the plan and its static-batch estimate")
    ttft_s: float = Field(description="max(1, dp * O / B) steps")
    tpot_s: float = Field(description="one step: decode plus the piggybacked prefill")
    tokens_per_s: float
    tokens_per_s_per_device: float


class DisaggregationStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    prefill_candidates: int = Field(description="prefill (plan, batch) pairs scored")
    decode_candidates: int = Field(description="decode (plan, instance count) pairs scored")
    colocated_candidates: int = Field(description="colocated plans scored")
    pruned: dict[str, int] = Field(description="candidates dropped, by reason")
    search_time_s: float = Field(description="wall time (the only field that varies between runs)")


class DisaggregatedSearchResult(BaseModel):
    """The best disaggregated deployments for one workload, and the best colocated plan."""

    model_config = ConfigDict(frozen=True)

    disaggregated: Literal[True] = True
    best: DisaggregatedPlan
    top: list[DisaggregatedPlan]
    colocated: ColocatedPlan | None = Field(description="None when no colocated plan fits "
                                                        "and meets the limits")
    speedup: float | None = Field(description="best tokens/s over the colocated plan's")
    stats: DisaggregationStats
    notes: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description=(
        "what was searched: model and cluster specs (as data), workload, device count and limits"))


@dataclass(frozen=True)
class _Prefill:
    g: int
    plan: Plan
    batch: int
    est: InferenceEstimate
    senders: int          # links the batch's KV leaves on
    kv_bytes: float       # KV bytes of the whole batch


@dataclass(frozen=True)
class _Decode:
    g: int
    n: int
    plan: Plan
    est: InferenceEstimate
    receivers: int        # KV shards of one decode replica (`shards`)
    rate: float           # requests per second of the pool


def shards(model: ModelSpec, plan: Plan) -> int:
    """Devices of one replica holding distinct parts of a sequence's KV cache."""
    return kv_split(model, plan.tp) * plan.pp


def kv_bytes_per_prompt(model: ModelSpec, workload: InferenceWorkload) -> float:
    """KV cache of one prompt after prefill (the same per-token bytes the memory model counts;
    a sliding-window layer keeps its window)."""
    return model.kv_cache_bytes_per_token(workload.dtype) * model.attended_context(
        workload.prompt_len)


def kv_transfer_s(cluster: ClusterSpec, nbytes: float, links: int, *, network: bool) -> float:
    """One prefill batch's KV cache over `links` links in parallel (`comm.p2p_s` each)."""
    return comm.p2p_s(cluster, nbytes / links, crosses_nodes=network)


def instance_sizes(cluster: ClusterSpec, devices: int) -> list[int]:
    """Devices per instance: the divisors of `devices` below it that the cluster can hold."""
    sizes = []
    for g in divisors(devices):
        if g == devices:
            continue
        try:
            cluster.job_view(g)
        except SpecError:
            continue
        sizes.append(g)
    return sizes


def one_group(plan: Plan) -> bool:
    """Whether the plan is one instance: a single replica, or with the experts spread over
    replicas exactly the replicas that share them. Any other dp runs independent copies of
    such an instance, which the pool's instance count already covers."""
    return plan.dp == (plan.ep // plan.tp if plan.ep > plan.tp else 1)


def decode_workload(workload: InferenceWorkload, plan: Plan) -> InferenceWorkload:
    """A decode instance's workload: it prefills nothing, so the activations it holds are one
    decode step's, a token per sequence of its replica (`prefill_chunk_tokens` bounds the
    live tokens of the workspace; times are unchanged by it)."""
    return workload.model_copy(update={
        "prefill_chunk_tokens": max(1, math.ceil(workload.batch_size / plan.dp))})


def _fits_plans(model: ModelSpec, cluster: ClusterSpec, wl: InferenceWorkload, g: int,
                pruned: Counter[str], reason: str = "memory", *, instances_only: bool = True,
                decode_only: bool = False) -> list[tuple[Plan, InferenceEstimate]]:
    """Every plan on g devices scored at `wl` (with `instances_only`, those that are one
    instance: `one_group`; with `decode_only`, as a decode instance: `decode_workload`);
    those that do not fit are counted as `reason`."""
    view = cluster.job_view(g)
    out = []
    for plan in enumerate_plans(model, view, wl, g, {}, Counter()):
        if instances_only and not one_group(plan):
            continue
        est = estimate_inference(model, view, decode_workload(wl, plan) if decode_only else wl,
                                 plan)
        if not est.fits:
            pruned[reason] += 1
            continue
        out.append((plan, est))
    return out


def _prefill_candidates(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                        sizes: list[int], max_ttft_s: float,
                        pruned: Counter[str]) -> list[_Prefill]:
    """(plan, batch) of each prefill instance size within the TTFT limit. Batches double from
    1 to B; a size stops doubling at the first batch where no plan fits and meets the limit:
    a plan's memory and TTFT grow with its batch, and a plan that first appears at the larger
    batch (more replicas) prefills each replica's share on fewer devices. The brute force of
    tests/search/test_disaggregation.py, which does not stop, checks the rule."""
    out = []
    per_prompt = kv_bytes_per_prompt(model, workload)
    for g in sizes:
        b = 1
        while b <= workload.batch_size:
            wl = workload.model_copy(update={"batch_size": b, "output_len": 1})
            scored = _fits_plans(model, cluster, wl, g, pruned)
            within = [(p, e) for p, e in scored if e.ttft_s <= max_ttft_s]
            pruned["ttft"] += len(scored) - len(within)
            if not within:
                break
            out += [_Prefill(g, p, b, e, shards(model, p) * p.dp, per_prompt * b)
                    for p, e in within]
            b *= 2
    return out


def _decode_candidates(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                       sizes: list[int], devices: int, max_tpot_s: float | None,
                       pruned: Counter[str]) -> tuple[list[_Decode], int]:
    """Per (instance size, instance count) the decode plan with the lowest TPOT (the highest
    rate at that batch), leaving at least one device for prefill; and how many were scored."""
    out, scored_n = [], 0
    B, O = workload.batch_size, workload.output_len
    for g in sizes:
        for n in range(1, (devices - 1) // g + 1):
            if B % n:
                continue
            wl = workload.model_copy(update={"batch_size": B // n})
            scored = _fits_plans(model, cluster, wl, g, pruned, decode_only=True)
            scored_n += len(scored)
            ok = [(p, e) for p, e in scored if max_tpot_s is None or e.tpot_s <= max_tpot_s]
            pruned["tpot"] += len(scored) - len(ok)
            if not ok:
                continue
            p, e = min(ok, key=lambda pe: (pe[1].tpot_s, pe[1].plan))
            out.append(_Decode(g, n, p, e, shards(model, p), B / (O * e.tpot_s)))
    return out, scored_n


def _pair(cluster: ClusterSpec, network: bool, p: _Prefill, d: _Decode) -> tuple[float, float]:
    """(t_kv, r_p): one prefill batch's KV transfer to the decode pool, and one prefill
    instance's requests per second (module docstring)."""
    receivers = d.receivers * min(p.batch, d.n * d.plan.dp)
    t_kv = kv_transfer_s(cluster, p.kv_bytes, min(p.senders, receivers), network=network)
    return t_kv, p.batch / max(p.est.ttft_s, t_kv)


def _deployment(p: _Prefill, d: _Decode, n_p: int, t_kv: float, r_p: float, output_len: int,
                network: bool) -> DisaggregatedPlan:
    rate = min(d.rate, n_p * r_p)
    used = n_p * p.g + d.n * d.g
    return DisaggregatedPlan(
        prefill=Pool(plan=serving_plan_dict(p.plan), devices_per_instance=p.g, instances=n_p,
                     batch_per_instance=p.batch, estimate=p.est),
        decode=Pool(plan=serving_plan_dict(d.plan), devices_per_instance=d.g, instances=d.n,
                    batch_per_instance=d.est.batch_per_replica * d.plan.dp, estimate=d.est),
        devices=used, ttft_s=p.est.ttft_s, kv_transfer_s=t_kv, tpot_s=d.est.tpot_s,
        decode_sequences=rate * output_len * d.est.tpot_s, requests_per_s=rate, tokens_per_s=rate * output_len,
        tokens_per_s_per_device=rate * output_len / used,
        bound="decode" if rate >= d.rate * (1 - 1e-12) else "prefill",
        prefill_utilisation=rate / (n_p * r_p),
        kv_link="network" if network else "intra-node", fits=p.est.fits and d.est.fits)


def settle(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
           dep: DisaggregatedPlan) -> DisaggregatedPlan:
    """A prefill-bound deployment at its steady state: requests arrive at the prefill pool's
    rate R, below what the decode pool could take, so fewer sequences decode at a time and
    each step is quicker. By Little's law an instance holds R x O x TPOT / n_d sequences, and
    TPOT grows with them: starting from the full batch, the batch per instance is lowered to
    that count, TPOT re-estimated there, until it stops falling (at least one sequence per
    replica, two with ep_overlap). The rate is unchanged; tpot_s and decode_sequences are the
    settled ones. A decode-bound deployment is returned as it is."""
    if dep.bound == "decode":
        return dep
    pool, O = dep.decode, workload.output_len
    plan = Plan(**pool.plan)
    view = cluster.job_view(pool.devices_per_instance)
    floor = plan.dp * (2 if plan.ep_overlap else 1)
    per, tpot = pool.batch_per_instance, pool.estimate.tpot_s
    while True:
        want = max(floor, math.ceil(dep.requests_per_s * O * tpot / pool.instances - 1e-9))
        if want >= per:
            break
        per = want
        wl = workload.model_copy(update={"batch_size": per})
        tpot = estimate_inference(model, view, decode_workload(wl, plan), plan).tpot_s
    return dep.model_copy(update={"tpot_s": tpot,
                                  "decode_sequences": dep.requests_per_s * O * tpot})


def _matched(d: _Decode, r_p: float, room: int | None) -> int:
    """The fewest prefill instances whose rate reaches the decode pool's, at most `room`
    (None: no bound)."""
    need = math.ceil(d.rate / r_p - 1e-12)
    return need if room is None else min(need, room)


def _combine(cluster: ClusterSpec, devices: int, pre: list[_Prefill], dec: list[_Decode],
             output_len: int) -> list[DisaggregatedPlan]:
    """Every decode choice with the prefill choice that serves it best in the devices left."""
    network = devices > cluster.devices_per_node
    out = []
    for d in dec:
        left = devices - d.n * d.g
        best: tuple[Any, ...] | None = None
        for p in pre:
            if p.g > left:
                continue
            t_kv, r_p = _pair(cluster, network, p, d)
            n_p = _matched(d, r_p, left // p.g)
            key = (-min(d.rate, n_p * r_p), n_p * p.g, p.est.ttft_s, p.est.plan, p.g, p.batch)
            if best is None or key < best[0]:
                best = (key, p, n_p, t_kv, r_p)
        if best is not None:
            out.append(_deployment(best[1], d, *best[2:], output_len, network))
    out.sort(key=lambda c: (-c.tokens_per_s, c.devices, c.tpot_s, c.ttft_s,
                            plan_text(c.decode.plan), plan_text(c.prefill.plan)))
    return out


def colocated(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload, devices: int,
              max_ttft_s: float, max_tpot_s: float | None,
              pruned: Counter[str]) -> tuple[ColocatedPlan | None, int]:
    """The colocated plan on all devices with the most output tokens/s in steady state
    (module docstring) within the limits, and how many plans were scored."""
    B, O = workload.batch_size, workload.output_len
    best: ColocatedPlan | None = None
    scored = _fits_plans(model, cluster, workload, devices, pruned, "colocated_memory",
                         instances_only=False)
    for plan, est in scored:
        step = est.tpot_s + est.ttft_s / O
        ttft = max(1.0, plan.dp * O / B) * step
        if max_tpot_s is not None and step > max_tpot_s:
            pruned["colocated_tpot"] += 1
            continue
        if ttft > max_ttft_s:
            pruned["colocated_ttft"] += 1
            continue
        cand = ColocatedPlan(
            plan=ScoredInferencePlan(plan=serving_plan_dict(plan), estimate=est,
                                     max_batch_size=est.max_batch_size * plan.dp),
            ttft_s=ttft, tpot_s=step, tokens_per_s=B / step,
            tokens_per_s_per_device=B / step / devices)
        if best is None or (-cand.tokens_per_s, cand.tpot_s, est.plan) < (
                -best.tokens_per_s, best.tpot_s, best.plan.estimate.plan):
            best = cand
    return best, len(scored)


def search_disaggregated(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload, *,
                         devices: int, max_ttft_ms: float, max_tpot_ms: float | None = None,
                         top_k: int = 5) -> DisaggregatedSearchResult:
    """The best prefill/decode disaggregated deployments on at most `devices` devices
    (module docstring), and the best colocated plan on all of them.

    Raises:
        SpecError: top_k < 1, or fewer than two devices.
        InfeasibleError: no prefill instance meets max_ttft_ms, no decode instance fits or
            meets max_tpot_ms, or no pair fits the devices (the message says which).
    """
    with memoised_blocks():      # the same blocks recur across instance sizes and batches
        return _search(model, cluster, workload, devices, max_ttft_ms, max_tpot_ms, top_k)


def _search(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload, devices: int,
            max_ttft_ms: float, max_tpot_ms: float | None,
            top_k: int) -> DisaggregatedSearchResult:
    start = time.perf_counter()
    if top_k < 1:
        raise SpecError(f"top_k must be at least 1, got {top_k}")
    if devices < 2:
        raise SpecError("disaggregated serving needs at least 2 devices (one per pool); "
                        "use --gpus 2 or more")
    cluster.job_view(devices)
    ttft_s = max_ttft_ms / 1e3
    tpot_s = None if max_tpot_ms is None else max_tpot_ms / 1e3
    sizes = instance_sizes(cluster, devices)
    pruned: Counter[str] = Counter(memory=0, ttft=0, tpot=0)
    sizes_text = ", ".join(map(str, sizes))
    pre_pruned: Counter[str] = Counter()
    pre = _prefill_candidates(model, cluster, workload, sizes, ttft_s, pre_pruned)
    if not pre:
        if pre_pruned["ttft"]:
            raise InfeasibleError(
                f"no prefill instance of {model.name} (of {sizes_text} devices) prefills one "
                f"{workload.prompt_len}-token prompt within --max-ttft-ms {max_ttft_ms:g}; "
                "raise the limit, shorten the prompt or add devices")
        raise InfeasibleError(
            f"no instance of {model.name} smaller than the {devices} devices (of {sizes_text}) "
            f"holds its weights and one {workload.prompt_len}-token prompt, and disaggregation "
            "needs two; add devices or use a smaller --dtype")
    dec_pruned: Counter[str] = Counter()
    dec, dec_scored = _decode_candidates(model, cluster, workload, sizes, devices, tpot_s,
                                         dec_pruned)
    if not dec:
        if dec_pruned["tpot"]:
            raise InfeasibleError(
                f"no decode pool of {model.name} on fewer than {devices} devices (instances "
                f"of {sizes_text}, their count dividing the batch) serves batch "
                f"{workload.batch_size} within --max-tpot-ms {max_tpot_ms:g}; raise the limit, "
                "lower --batch or add devices")
        raise InfeasibleError(
            f"no decode pool of {model.name} on fewer than {devices} devices (instances of "
            f"{sizes_text}, their count dividing the batch) holds batch {workload.batch_size} "
            f"of {workload.prompt_len + workload.output_len} tokens; lower --batch or add "
            "devices")
    pruned.update(pre_pruned)
    pruned.update(dec_pruned)
    plans = _combine(cluster, devices, pre, dec, workload.output_len)
    if not plans:
        raise InfeasibleError(
            f"no prefill and decode pools fit together on {devices} devices; add devices")
    plans = [settle(model, cluster, workload, d) for d in plans[:top_k]]
    colo, colo_n = colocated(model, cluster, workload, devices, ttft_s, tpot_s, pruned)
    best = plans[0]
    notes = []
    if colo is None:
        notes.append("no colocated plan on all the devices fits and meets the limits in "
                     "steady state")
    if best.devices < devices:
        notes.append(f"the best deployment uses {best.devices} of the {devices} devices: "
                     "more would not raise its rate")
    return DisaggregatedSearchResult(
        best=best, top=plans, colocated=colo,
        speedup=None if colo is None else best.tokens_per_s / colo.tokens_per_s,
        stats=DisaggregationStats(
            # every scored candidate fits (and is kept or dropped by a limit) or is counted
            # under memory
            prefill_candidates=len(pre) + pre_pruned["ttft"] + pre_pruned["memory"],
            decode_candidates=dec_scored + dec_pruned["memory"],
            colocated_candidates=colo_n + pruned["colocated_memory"],
            pruned=dict(sorted(pruned.items())),
            search_time_s=time.perf_counter() - start),
        notes=notes,
        inputs={"model": model.model_dump(mode="json"), "cluster": cluster.model_dump(mode="json"),
                "workload": workload.model_dump(mode="json"), "devices": devices,
                "max_ttft_ms": max_ttft_ms, "max_tpot_ms": max_tpot_ms})


def pool_plan(text: str) -> Plan:
    """A pool's instance plan from a --plan-style string of tp, pp, dp, ep and ep_overlap; dp
    defaults to one instance: 1, or ep / tp when the experts spread over replicas."""
    from planner.api import serving_plan_fields

    fields = serving_plan_fields(text)
    tp, ep = int(fields.get("tp", 1)), int(fields.get("ep", 1))  # type: ignore[call-overload]
    fields.setdefault("dp", ep // tp if ep > tp and ep % tp == 0 else 1)
    return Plan(**fields)  # type: ignore[arg-type]


def evaluate_disaggregated(model: ModelSpec, cluster: ClusterSpec, workload: InferenceWorkload,
                           *, prefill: Plan, prefill_batch: int, decode: Plan,
                           decode_instances: int = 1, prefill_instances: int | None = None,
                           devices: int | None = None) -> DisaggregatedPlan:
    """Score one disaggregated deployment (module docstring): instances of the `prefill` plan,
    each prefilling `prefill_batch` prompts at a time, and `decode_instances` instances of the
    `decode` plan sharing the workload's batch. Without `prefill_instances`, the fewest that
    keep up with decode (within `devices` when given). `devices` defaults to what the pools
    use; the KV cache crosses the network when that exceeds one node.

    Raises:
        SpecError: a batch that does not split over the instances, an instance size the
            cluster cannot hold, or pools that need more than `devices`.
        PlanError: a plan the inference model rejects (see estimate_inference).
    """
    B, O = workload.batch_size, workload.output_len
    if decode_instances < 1 or B % decode_instances:
        raise SpecError(f"--decode-instances {decode_instances} does not divide the batch {B}; "
                        "use a divisor of --batch")
    if prefill_batch < 1 or prefill_batch % prefill.dp:
        raise SpecError(f"--prefill-batch {prefill_batch} is not a multiple of the prefill "
                        f"plan's dp={prefill.dp}; every replica prefills the same number of "
                        "prompts")
    if prefill_instances is not None and prefill_instances < 1:
        raise SpecError(f"--prefill-instances must be at least 1, got {prefill_instances}")
    g_p, g_d = prefill.devices, decode.devices
    with memoised_blocks():
        pe = estimate_inference(model, cluster.job_view(g_p), workload.model_copy(
            update={"batch_size": prefill_batch, "output_len": 1}), prefill)
        de = estimate_inference(model, cluster.job_view(g_d), decode_workload(
            workload.model_copy(update={"batch_size": B // decode_instances}), decode), decode)
    p = _Prefill(g_p, prefill, prefill_batch, pe, shards(model, prefill) * prefill.dp,
                 kv_bytes_per_prompt(model, workload) * prefill_batch)
    d = _Decode(g_d, decode_instances, decode, de, shards(model, decode), B / (O * de.tpot_s))
    room = None if devices is None else (devices - d.n * g_d) // g_p

    def solve(network: bool) -> tuple[int, float, float]:
        t_kv, r_p = _pair(cluster, network, p, d)
        n_p = prefill_instances if prefill_instances is not None else _matched(d, r_p, room)
        return n_p, t_kv, r_p

    n_p, t_kv, r_p = solve(False)
    network = (devices or n_p * g_p + d.n * g_d) > cluster.devices_per_node
    if network:
        n_p, t_kv, r_p = solve(True)
    used = n_p * g_p + d.n * g_d
    if n_p < 1 or (devices is not None and used > devices):
        raise SpecError(f"the pools need {max(n_p, 1) * g_p + d.n * g_d} devices "
                        f"({max(n_p, 1)} x {g_p} prefill, {d.n} x {g_d} decode) but {devices} "
                        "were given; add devices or use fewer instances")
    return settle(model, cluster, workload, _deployment(p, d, n_p, t_kv, r_p, O, network))
