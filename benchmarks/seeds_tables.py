"""The seeds' tables reproduced: each published figure of seeds 001, 002 and 004 next to a
physical bound and meshplan's prediction, with a verdict.

Usage:
    python benchmarks/seeds_tables.py [--data benchmarks/data/seed_claims.toml]
        [--out benchmarks/results/seeds_tables.md]

The claims (value, seed file, section, assumed workload) are in benchmarks/data/seed_claims.toml.
For each claim `judge` computes, from meshplan's model and cluster presets only:

- param_count: the preset's parameter count from the seed's own dimensions (ModelSpec.params).
- expert_bytes: one routed expert = (2 or 3 matrices) x h x expert_ffn x 2 B (bf16).
- kv_bytes_per_token: ModelSpec.kv_cache_bytes_per_token (bf16), and what one layer's K or V of
  uncompressed attention would be (heads x head_dim x 2 B).
- device_spec: the device preset (its datasheet) peak bf16 FLOP/s, memory, bandwidth.
- utilization: a fraction of peak cannot exceed 1.
- train_throughput: a training token costs 3 x forward FLOPs = 6 x matmul params + 3 x attention
  scores (ModelSpec.forward_flops_per_token); tokens/s x that <= gpus x peak bf16 FLOP/s. meshplan:
  planner.api.evaluate on the claim's plan and workload.
- decode_tpot: at batch 1 one output token reads every weight it touches (active params x 2 B) and
  the KV cache of its context (kv bytes/token x context) at least once, so TPOT >= bytes / (gpus x
  HBM bandwidth) on any layout of the claim's GPUs, and >= bytes / (tp x bandwidth) when the pp
  stages of the claim's plan run one after the other. Where the seed also gives tokens/s, the batch
  B that the throughput needs: B concurrent sequences read the weights once and their KV each per
  step, so tokens/s <= B x gpus x bw / (W + B x KV), i.e. B >= T x W / (gpus x bw - T x KV). meshplan:
  cost_models.inference.estimate_inference, one sequence per replica, prompt = context, 1 output token.
- throughput_ratio: at equal GPUs and equal model FLOPs a throughput ratio is a ratio of MFUs, so
  the baseline's MFU must be <= 1/ratio; plus the weights per GPU of each layout. meshplan: evaluate.
- param_memory: parameters per GPU = params x 2 B (bf16) or x 4 B (fp32) / shards; more than the
  whole model in fp32 is impossible.
- memory_per_gpu: <= device memory, and >= the bf16 weights the layout puts on one GPU.

Verdicts: "possible", "NOT physically possible: ...", "inconsistent with its own dimensions: ...",
"inconsistent with the hardware datasheet: ...". Every number printed is computed here.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cost_models.inference import estimate_inference  # noqa: E402
from planner.api import evaluate  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.hardware import ClusterSpec  # noqa: E402
from planner.model import DType, ModelSpec  # noqa: E402
from planner.plan import parse_plan  # noqa: E402
from planner.presets import load_cluster, load_model  # noqa: E402
from planner.workload import InferenceWorkload, TrainingWorkload  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "seed_claims.toml"
OUT = ROOT / "benchmarks" / "results" / "seeds_tables.md"

POSSIBLE = "possible"
IMPOSSIBLE = "NOT physically possible"
INCONSISTENT = "inconsistent with its own dimensions"
DATASHEET = "inconsistent with the hardware datasheet"

BF16 = 2
"""Bytes per bf16 value."""
FP32 = 4
MATCH = 0.03
"""Relative tolerance for 'this number equals that one' (the seeds round to 3 digits)."""
from planner.model import GIB  # noqa: E402

SEED_TITLES = {
    "001": "Seed 001: layer-wise partitioning, dense 4-layer model on 16 H100",
    "002": "Seed 002: large cross-node expert parallelism, 61-layer MoE on H100",
    "004": "Seed 004: attention/MoE separation, 4-layer 16-expert MoE on 16 A100",
}


@dataclass
class Row:
    id: str
    seed: str
    claim: str
    source: str
    claimed: str
    bound: str
    prediction: str
    verdict: str


# ----------------------------------------------------------------------------- formatting
def gb(x: float) -> str:
    """Bytes in decimal units."""
    if x >= 1e9:
        return f"{x / 1e9:,.2f} GB"
    if x >= 1e6:
        return f"{x / 1e6:,.1f} MB"
    if x >= 1e3:
        return f"{x / 1e3:,.2f} kB"
    return f"{x:,.0f} B"


def ms(x: float) -> str:
    return f"{x * 1e3:.3f} ms"


def tflops(x: float) -> str:
    return f"{x / 1e12:,.1f} TFLOP/s"


def tbs(x: float) -> str:
    return f"{x / 1e12:.2f} TB/s"


def count(x: float) -> str:
    return f"{x:,.0f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def near(a: float, b: float, tol: float = MATCH) -> bool:
    return abs(a - b) <= tol * abs(b)


# ----------------------------------------------------------------------------- presets
@cache
def model_of(name: str) -> ModelSpec:
    return load_model(name)


@cache
def cluster_of(name: str) -> ClusterSpec:
    return load_cluster(name)


def expert_matrices(m: ModelSpec) -> int:
    return 3 if m.activation.gated else 2


def routed_expert_params(m: ModelSpec) -> int:
    """Parameters of one routed expert (its matrices; no biases counted)."""
    assert m.moe is not None
    return expert_matrices(m) * m.hidden_size * m.moe.expert_ffn_hidden_size


def weights_per_gpu(m: ModelSpec, tp: int, pp: int, ep: int) -> float:
    """bf16 bytes of weights on one GPU: non-expert parameters split tp x pp ways, routed experts
    tp x pp x ep ways (expert tensor parallelism = tp), an even split (a lower bound)."""
    experts = m.num_moe_layers * m.moe.num_experts * routed_expert_params(m) if m.moe else 0
    return ((m.params - experts) / (tp * pp) + experts / (tp * pp * ep)) * BF16


def decode_weight_bytes(m: ModelSpec) -> float:
    """bf16 bytes one token must read at batch 1: every weight it touches (ModelSpec.active_params:
    top-k routed experts only) less the embedding table, of which it reads one row (a tied table
    is still read whole as the LM head)."""
    tied_head = m.vocab_size * m.hidden_size if m.tied_embeddings else 0
    return (m.active_params - m.embedding_params + tied_head) * BF16


def training(c: dict[str, Any]) -> Any:
    """meshplan's training estimate for the claim's plan and workload (None without a plan)."""
    if "plan" not in c:
        return None
    w = TrainingWorkload(global_batch_size=c["global_batch"], seq_len=c["seq_len"])
    return evaluate(c["model"], c["cluster"], w, c["plan"], devices=c["gpus"])


def src(c: dict[str, Any]) -> str:
    return f"{c['file']}, {c['section']}"


# ----------------------------------------------------------------------------- checks
def check_param_count(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m = model_of(c["model"])
    n, v = m.params, float(c["value"])
    blocks = m.params - m.embedding_params - m.lm_head_params
    bound = f"{n / 1e9:.3f}e9 from its dimensions ({m.num_layers} blocks x {blocks / m.num_layers / 1e9:.3f}e9"
    bound += f" + {(n - blocks) / 1e9:.3f}e9 embedding/head)" if n > blocks else ")"
    pred = f"{n / 1e9:.3f}e9 params = {gb(n * BF16)} in bf16"
    if near(v, n, 0.05):
        return f"{v / 1e9:.3g}e9", bound, pred, POSSIBLE
    verdict = (f"{INCONSISTENT}: {v / 1e9:.3g}e9 claimed ({gb(v * BF16)} bf16) vs {n / 1e9:.3f}e9 "
               f"({gb(n * BF16)}) from its dimensions, {v / n:.2f}x; it would need "
               f"{v / (blocks / m.num_layers):.1f} such blocks")
    return f"{v / 1e9:.3g}e9", bound, pred, verdict


def check_expert_bytes(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m = model_of(c["model"])
    h, f, k = m.hidden_size, m.moe.expert_ffn_hidden_size, expert_matrices(m)
    one = h * f * BF16
    full = k * one
    v = float(c["value"])
    bound = f"{k} x {h} x {f} x 2 B = {gb(full)}"
    pred = f"{gb(full)} ({routed_expert_params(m) / 1e6:.1f}e6 params)"
    if near(v, full):
        return gb(v), bound, pred, POSSIBLE
    if near(v, one):
        verdict = (f"{INCONSISTENT}: {gb(v)} = {h} x {f} x 2 B = {gb(one)} is one of the expert's "
                   f"{k} matrices; the whole ({m.activation.value}) expert is {gb(full)}")
    else:
        verdict = f"{INCONSISTENT}: {gb(v)} claimed vs {gb(full)} from {bound}"
    return gb(v), bound, pred, verdict


def check_kv(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m = model_of(c["model"])
    a, L = m.num_attention_heads, m.num_layers
    d = m.mla.v_head_dim if m.mla is not None else m.d_head
    kv = m.kv_cache_bytes_per_token(DType.BF16)
    one_k = a * d * BF16
    mha = 2 * one_k * L
    v = float(c["value"])
    kind = "MLA latent + RoPE key" if m.mla is not None else "K and V"
    bound = f"{count(kv)} B/token ({kind}, {L} layers, bf16)"
    pred = f"{count(kv)} B/token"
    if near(v, kv):
        return gb(v), bound, pred, POSSIBLE
    what = f"{gb(v)} claimed vs {count(kv)} B/token from the model ({kind} over {L} layers)"
    if near(v, one_k):
        what = (f"{gb(v)} = {a} x {d} x 2 B = {count(one_k)} B is one layer's K (or V) of uncompressed "
                f"attention; K+V over {L} layers is {count(mha)} B/token, the model's cache is "
                f"{count(kv)} B/token ({kind})")
    return gb(v), bound, pred, f"{INCONSISTENT}: {what}"


def check_device(c: dict[str, Any]) -> tuple[str, str, str, str]:
    cl = cluster_of(c["cluster"])
    dev, v = cl.device, float(c["value"])
    field = c["field"]
    if field == "peak_flops_bf16":
        ref, fmt, what = dev.peak_flops(DType.BF16), tflops, "dense bf16 peak"
    elif field == "memory_bytes":
        ref, fmt = float(dev.memory_bytes), (lambda x: f"{x / 1e9:.1f} GB ({x / GIB:.1f} GiB)")
        what = "memory"
    elif field == "memory_bandwidth":
        ref, fmt, what = dev.memory_bandwidth_bytes_per_s, tbs, "HBM bandwidth"
    else:
        raise ValueError(f"unknown device field {field!r}")
    bound = f"{fmt(ref)} ({dev.name} {what})"
    pred = f"preset {dev.name}: {fmt(ref)}"
    if near(v, ref, 0.05):
        return fmt(v), bound, pred, POSSIBLE
    verdict = (f"{DATASHEET}: {fmt(v)} claimed vs {fmt(ref)} for {dev.name} ({v / ref:.2f}x; "
               f"source: {dev.source})")
    if v > ref:
        verdict += f"; above the device's {what}, so also {IMPOSSIBLE}"
    return fmt(v), bound, pred, verdict


def check_utilization(c: dict[str, Any]) -> tuple[str, str, str, str]:
    v = float(c["value"])
    bound = "<= 100% of peak"
    pred = "n/a"
    if "claimed_peak" in c:
        dev = cluster_of(c["cluster"]).device
        own = float(c["claimed_peak"])
        ref = dev.peak_flops(DType.BF16)
        pred = (f"{pct(v)} of the seed's {tflops(own)} = {tflops(v * own)} = {pct(v * own / ref)} of "
                f"{dev.name}'s {tflops(ref)}")
    if v > 1:
        return pct(v), bound, pred, f"{IMPOSSIBLE}: {pct(v)} > 100% of peak"
    return pct(v), bound, pred, POSSIBLE


def check_train_throughput(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m, cl = model_of(c["model"]), cluster_of(c["cluster"])
    g, s, v = c["gpus"], c["seq_len"], float(c["value"])
    peak = cl.device.peak_flops(DType.BF16)
    fpt = 3 * m.forward_flops_per_token(s)
    attn = 3 * m.attention_score_flops_per_token(s)
    max_tps = g * peak / fpt
    need = v * fpt
    bound = (f"<= {count(max_tps)} tokens/s: {g} x {tflops(peak)} / {fpt:.3g} FLOP/token "
             f"(6 x {m.matmul_active_params / 1e9:.3f}e9 + attention {attn:.3g}); claim needs "
             f"{tflops(need)} = {pct(need / (g * peak))} MFU")
    est = training(c)
    pred = ("n/a (layout not a meshplan plan)" if est is None else
            f"{count(est.tokens_per_s)} tokens/s, MFU {pct(est.mfu)}, "
            f"{'fits' if est.fits else 'does NOT fit'} ({est.peak_memory_gib:.1f} GiB) [{c['plan']}]")
    if v > max_tps:
        return (f"{count(v)} tokens/s", bound, pred,
                f"{IMPOSSIBLE}: needs {tflops(need)} > {g} x {tflops(peak)} = {tflops(g * peak)}")
    return f"{count(v)} tokens/s", bound, pred, POSSIBLE


def check_decode_tpot(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m, cl = model_of(c["model"]), cluster_of(c["cluster"])
    g, ctx, v = c["gpus"], c["context"], float(c["value"])
    bw = cl.device.memory_bandwidth_bytes_per_s
    w = decode_weight_bytes(m)
    kv = m.kv_cache_bytes_per_token(DType.BF16) * ctx
    any_bound = (w + kv) / (g * bw)
    bound = (f">= {ms(any_bound)} at batch 1: ({gb(w)} weights + {gb(kv)} KV at {count(ctx)} tokens) "
             f"/ ({g} x {tbs(bw)}) (weights alone {ms(w / (g * bw))})")
    layout_bound, plan = None, None
    if "plan" in c:
        plan = parse_plan(c["plan"], devices=g)
        layout_bound = (w + kv) / (plan.tp * bw)
        bound += f"; >= {ms(layout_bound)} with {c['plan']} ({plan.pp} stage(s) in turn, {plan.tp} GPUs each)"
    note = ""
    if "throughput" in c:
        t = float(c["throughput"])
        spare = g * bw - t * kv
        if spare <= 0:
            note = (f"; as 1/throughput (1/{count(t)} tokens/s = {ms(1 / t)}) even infinite batch cannot "
                    f"reach it: each sequence's KV alone takes {ms(kv / (g * bw))} per step")
        else:
            b = math.ceil(t * w / spare)
            note = (f"; as 1/throughput (1/{count(t)} tokens/s = {ms(1 / t)}) it needs >= {b} sequences "
                    f"decoding at once (B >= T x W / (G x bw - T x KV) = {t * w / spare:.2f})")
    pred = "n/a (layout not a meshplan plan)"
    if plan is not None:
        wl = InferenceWorkload(batch_size=plan.dp, prompt_len=ctx, output_len=1)
        est = estimate_inference(m, cl, wl, plan)
        pred = (f"TPOT {ms(est.tpot_s)} at batch 1 per replica ({est.decode_bound}-bound; "
                f"weights read {ms(est.tpot_breakdown['weights_read'])}) [{c['plan']}]")
    claimed = ms(v)
    if v < any_bound:
        why = (f"{IMPOSSIBLE}: {ms(v)} < {ms(any_bound)}: one decode step at batch 1 reads "
               f"{gb(w + kv)}, and all {g} GPUs' HBM together stream {tbs(g * bw)}")
        if layout_bound is not None:
            why += f" ({ms(layout_bound)} with {c['plan']})"
        return claimed, bound, pred, why + note
    if layout_bound is not None and v < layout_bound:
        return claimed, bound, pred, (
            f"{IMPOSSIBLE}: {ms(v)} < {ms(layout_bound)}, the batch-1 bound of {c['plan']} ({gb(w + kv)} "
            f"over {plan.tp} GPUs' HBM per stage, stages in turn){note}")
    return claimed, bound, pred, POSSIBLE + note


def check_throughput_ratio(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m = model_of(c["model"])
    v = float(c["value"])
    plans = {k: parse_plan(c[k], devices=c["gpus"]) for k in ("baseline_plan", "plan")}
    wpg = {k: weights_per_gpu(m, p.tp, p.pp, p.ep) for k, p in plans.items()}
    cap = cluster_of(c["cluster"]).device.memory_bytes
    bound = (f"same GPUs and FLOPs: ratio = MFU(new)/MFU(base), so base MFU <= {pct(1 / v)}; bf16 "
             f"weights/GPU: base ep={plans['baseline_plan'].ep} {gb(wpg['baseline_plan'])}, "
             f"new ep={plans['plan'].ep} {gb(wpg['plan'])} (capacity {gb(cap)})")
    w = TrainingWorkload(global_batch_size=c["global_batch"], seq_len=c["seq_len"])
    est = {k: evaluate(c["model"], c["cluster"], w, c[k], devices=c["gpus"]) for k in plans}
    r = est["plan"].tokens_per_s / est["baseline_plan"].tokens_per_s
    pred = (f"{r:.2f}x ({count(est['plan'].tokens_per_s)} / {count(est['baseline_plan'].tokens_per_s)} "
            f"tokens/s training); fits: base {est['baseline_plan'].fits}, new {est['plan'].fits}")
    verdict = POSSIBLE
    if wpg["baseline_plan"] > cap:
        verdict += (f" as a ratio, but the EP={plans['baseline_plan'].ep} baseline as described cannot hold "
                    f"its weights ({gb(wpg['baseline_plan'])} > {gb(cap)} per GPU) without more sharding")
    return f"{v:g}x", bound, pred, verdict


def check_param_memory(c: dict[str, Any]) -> tuple[str, str, str, str]:
    m = model_of(c["model"])
    n, k, v = m.params, c["shards"], float(c["value"])
    bf, fp = n * BF16 / k, n * FP32 / k
    bound = f"params/{k} shards: {gb(bf)} bf16, {gb(fp)} fp32 (whole model {gb(n * BF16)} bf16)"
    est = training(c)
    pred = "n/a" if est is None else f"{gb(est.memory_gib['weights'] * GIB)} bf16 weights on the busiest GPU"
    if v > n * FP32 * (1 + MATCH):
        return gb(v), bound, pred, (f"{IMPOSSIBLE}: {gb(v)} is more than the whole model in fp32 "
                                    f"({n / 1e9:.3f}e9 x 4 B = {gb(n * FP32)})")
    if near(v, bf) or near(v, fp):
        return gb(v), bound, pred, POSSIBLE
    what = f"{gb(v)} vs a 1/{k} shard of {gb(bf)} (bf16) or {gb(fp)} (fp32)"
    for label, ref in ((f"the whole model in bf16 ({n / 1e9:.3f}e9 x 2 B = {gb(n * BF16)})", n * BF16),
                       (f"the whole model in fp32, or twice it in bf16 ({gb(n * FP32)})", n * FP32)):
        if near(v, ref):
            what = f"{gb(v)} = {label}, not a 1/{k} shard ({gb(bf)} bf16, {gb(fp)} fp32)"
            break
    return gb(v), bound, pred, f"{INCONSISTENT}: {what}"


def check_memory_per_gpu(c: dict[str, Any]) -> tuple[str, str, str, str]:
    dev = cluster_of(c["cluster"]).device
    cap, v = float(dev.memory_bytes), float(c["value"])
    bound = f"<= {gb(cap)} ({dev.name})"
    w = None
    if "tp" in c:
        m = model_of(c["model"])
        w = weights_per_gpu(m, c["tp"], c["pp"], c["ep"])
        bound += f"; >= {gb(w)} bf16 weights (tp={c['tp']}, pp={c['pp']}, ep={c['ep']})"
    est = training(c)
    pred = ("n/a" if est is None else
            f"{gb(est.peak_memory_gib * GIB)} peak ({'fits' if est.fits else 'does NOT fit'}) [{c['plan']}]")
    if v > cap:
        return gb(v), bound, pred, (f"{IMPOSSIBLE}: {gb(v)} per GPU > the {dev.name}'s "
                                    f"{gb(cap)} ({cap / GIB:.0f} GiB)")
    if w is not None and v < w:
        return gb(v), bound, pred, f"{IMPOSSIBLE}: {gb(v)} < the {gb(w)} of bf16 weights alone"
    verdict = POSSIBLE
    if w is not None and w > 0.9 * v:
        verdict += f" (only just: bf16 weights alone are {gb(w)})"
    return gb(v), bound, pred, verdict


CHECKS = {
    "param_count": check_param_count,
    "expert_bytes": check_expert_bytes,
    "kv_bytes_per_token": check_kv,
    "device_spec": check_device,
    "utilization": check_utilization,
    "train_throughput": check_train_throughput,
    "decode_tpot": check_decode_tpot,
    "throughput_ratio": check_throughput_ratio,
    "param_memory": check_param_memory,
    "memory_per_gpu": check_memory_per_gpu,
}


def judge(claim: dict[str, Any]) -> Row:
    """The verdict on one claim (a [[claim]] table of seed_claims.toml)."""
    try:
        claimed, bound, pred, verdict = CHECKS[claim["kind"]](claim)
    except PlannerError as exc:  # a plan meshplan rejects: still report the bound-free verdict
        raise RuntimeError(f"{claim['id']}: {exc}") from exc
    return Row(id=claim["id"], seed=claim["seed"], claim=claim["claim"], source=src(claim),
               claimed=claimed, bound=bound, prediction=pred, verdict=verdict)


def load_claims(path: Path = DATA) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return tomllib.load(f)["claim"]


def render(rows: list[Row], data: Path) -> str:
    try:
        rel = data.resolve().relative_to(ROOT)
    except ValueError:
        rel = data
    out = ["# Seed tables: published claims, physical bounds and meshplan's predictions", "",
           f"Generated by `python benchmarks/seeds_tables.py` from `{rel}` (claims, sources and the "
           "assumed workloads). Bounds use only the model and cluster presets: bf16 weights, the "
           "device's datasheet peak FLOP/s, memory and HBM bandwidth. A TPOT bound is at batch 1 "
           "(the weights a token touches plus its KV cache, read once). meshplan: "
           "`planner.api.evaluate` (training) and `cost_models.inference.estimate_inference` (TPOT).", ""]
    for seed in sorted({r.seed for r in rows}):
        out += [f"## {SEED_TITLES.get(seed, 'Seed ' + seed)}", "",
                "| claim | source | claimed value | physical bound | meshplan prediction | verdict |",
                "|---|---|---|---|---|---|"]
        for r in rows:
            if r.seed == seed:
                cells = [r.claim, r.source, r.claimed, r.bound, r.prediction, r.verdict]
                out.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
        out.append("")
    counts: dict[str, int] = {}
    for r in rows:
        key = next(k for k in (IMPOSSIBLE, INCONSISTENT, DATASHEET, POSSIBLE) if r.verdict.startswith(k))
        counts[key] = counts.get(key, 0) + 1
    out += ["## Summary", ""] + [f"- {k}: {n}" for k, n in counts.items()] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = [judge(c) for c in load_claims(args.data)]
    text = render(rows, args.data)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
