"""Compare meshplan's serving model with published serving throughput (issue 5, inference).

Usage:
    python benchmarks/validate_inference.py [--data benchmarks/data/trtllm_inference_runs.json]
        [--out benchmarks/results/validation_inference.md] [--only SUBSTRING]
    python benchmarks/validate_inference.py --data benchmarks/data/trtllm_inference_fp4_runs.json \
        --out benchmarks/results/validation_inference_fp4.md

The records are TensorRT-LLM's offline maximum-throughput runs (`trtllm-bench throughput`:
every request queued at once, all of one prompt and one output length; the published figure is
the job's total output tokens per second). Each is mapped from what it states, nothing fitted:

- Model: the built-in preset the record names (Llama 3.3 70B has the Llama 3.1 70B
  architecture); device and links: the record's DGX cluster preset.
- Plan: the record's tp, pp = 1, one replica (dp = 1) on tp devices.
- Precision (validate_published.dtype_for, as the training records): dtype fp8 for weights,
  activations and the KV cache (ModelOpt FP8 checkpoints);
  NVFP4 records (benchmarks/data/trtllm_inference_fp4_runs.json) as dtype fp4: NVFP4 block
  weights, an FP8 KV cache. Either way the LM head and embedding stay 16-bit (ModelOpt's
  exclude_modules; cost_models.inference.vocab_weight_bytes).
- Batch: a maximum-throughput run keeps as many requests in flight as memory allows, so the
  batch is the largest meshplan's memory model admits for the plan (`max_batch_size`), never
  more than the run's requests, and never more than the max_batch_size trtllm-bench set. The
  overview runs give trtllm-bench no --max_batch_size or --max_num_tokens, so it derives both
  from the dataset's lengths (`trtllm_bench_settings`: tensorrt_llm/bench/build/tuning.py,
  `calc_engine_setting` and `finetune_setting`): the requests whose KV cache of
  prompt + output tokens fits in 95% of the memory the weights leave, capped at 4,096 / pp to
  bound the decoder buffers, rounded up (to 32 below 256, 128 below 1,024, else 256; at least
  64); tokens per iteration that batch x (1 + prompt / output), capped at 32,768, rounded up
  (to 256 below 4,096, at least 2,048; 512 below 8,192; else 1,024).
- Prefill in chunks of that many tokens (`InferenceWorkload.prefill_chunk_tokens`): TensorRT-LLM
  schedules at most max_num_tokens tokens per iteration, with chunked context, so one chunk's
  prefill activations are live, not the whole batch's.
- Prediction: the job's output tokens per second, as published: num_requests x output_len over
  the job's time, which is floor(num_requests / batch) full batches, each TTFT + output_len x
  TPOT (its prompts prefilled, then its outputs decoded), plus one batch of the remaining
  requests (with its own, shorter TPOT). Requests of one length admitted together finish
  together, so the job runs in such waves. TensorRT-LLM batches in flight (new prompts' chunks
  run between decode steps); a batch that starts and ends together is the same work, in
  another order.

The table goes to --out with the mean absolute error per model and device, and per prompt
length (below 2048 tokens, and 2048 or more). The error is predicted / published - 1
(negative: predicted too slow, i.e. fewer tokens per second than measured).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cost_models.inference import estimate_inference, max_batch_size  # noqa: E402
from planner import load_cluster, load_model  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.model import kv_cache_dtype  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.workload import InferenceWorkload  # noqa: E402
from records import UnmappedRecord  # noqa: E402
from validate_published import dtype_for  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "trtllm_inference_runs.json"
OUT = ROOT / "benchmarks" / "results" / "validation_inference.md"
TRTLLM_KV_FRACTION = 0.95
"""Share of the memory the weights leave that trtllm-bench's heuristic gives the KV cache
(tensorrt_llm/bench/build/tuning.py, calc_engine_setting's kv_cache_gpu_mem_fraction default)."""
TRTLLM_MAX_BATCH = 4096
"""trtllm-bench's cap on the batch, over pp ("to avoid decoder buffer size becoming too
large", tuning.py finetune_setting)."""
TRTLLM_MAX_TOKENS = 32768
"""trtllm-bench's cap on tokens per iteration ("to avoid TRT activation buffer becoming too
large", tuning.py finetune_setting)."""


def _round_up(x: float, step: int) -> int:
    return step * math.ceil(x / step)


def trtllm_bench_settings(model: Any, tp: int, pp: int, prompt_len: int, output_len: int,
                          weight_bytes: float, kv_bytes: float,
                          device_memory_bytes: float) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) trtllm-bench derives when not given them, from the
    arithmetic of tensorrt_llm/bench/build/tuning.py (calc_engine_setting, finetune_setting):
    KV bytes per token 2 x layers x max(tp, kv_heads) x head size x `kv_bytes`; the requests
    of prompt + output tokens that fit in TRTLLM_KV_FRACTION of the tp x pp devices' memory
    less the weights (param count x `weight_bytes`); that capped at TRTLLM_MAX_BATCH, over pp,
    and rounded up; tokens per iteration batch x (1 + prompt / output), capped and rounded."""
    per_token = 2 * model.num_layers * max(tp, model.kv_heads) * model.d_head * kv_bytes
    free = device_memory_bytes * tp * pp - model.params * weight_bytes
    requests = free * TRTLLM_KV_FRACTION / (per_token * (prompt_len + output_len))
    raw_bs = min(requests, TRTLLM_MAX_BATCH) / pp
    raw_tokens = min(raw_bs * (1 + prompt_len / output_len), TRTLLM_MAX_TOKENS)
    if raw_bs < 256:
        batch = max(64, _round_up(raw_bs, 32))
    else:
        batch = _round_up(raw_bs, 128 if raw_bs < 1024 else 256)
    if raw_tokens < 4096:
        tokens = max(2048, _round_up(raw_tokens, 256))
    else:
        tokens = _round_up(raw_tokens, 512 if raw_tokens < 8192 else 1024)
    return batch, tokens


LONG_PROMPT = 2048
"""Prompt length from which a row counts as long-prompt in the summary."""


def predict(record: dict[str, Any]) -> dict[str, Any]:
    """The record's plan at the largest batch that fits: batch, TTFT, TPOT, output tokens/s."""
    model, cluster = load_model(record["model"]), load_cluster(record["cluster"])
    dtype = dtype_for(record)
    plan = Plan(tp=record["tp"], pp=record.get("pp", 1), dp=1)
    cap, tokens = trtllm_bench_settings(
        model, plan.tp, plan.pp, record["prompt_len"], record["output_len"], dtype.bytes,
        kv_cache_dtype(dtype).bytes, float(cluster.device.memory_bytes))
    wl = InferenceWorkload(batch_size=1, prompt_len=record["prompt_len"],
                           output_len=record["output_len"], dtype=dtype,
                           prefill_chunk_tokens=tokens)
    fits = max_batch_size(model, plan, wl, float(cluster.device.memory_bytes))
    batch = min(fits, record["num_requests"], cap)
    if batch < 1:
        raise PlannerError(f"not one sequence of {record['prompt_len']} + "
                           f"{record['output_len']} tokens fits on tp={plan.tp}")
    est = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": batch}), plan)
    # The job: full batches, then the remainder's batch, each prefilled then decoded (requests
    # of one length start together and finish together).
    waves, rest = divmod(record["num_requests"], batch)
    job_s = waves * (est.ttft_s + record["output_len"] * est.tpot_s)
    if rest:
        tail = estimate_inference(model, cluster, wl.model_copy(update={"batch_size": rest}), plan)
        job_s += tail.ttft_s + record["output_len"] * tail.tpot_s
    return {"batch": batch, "fits": fits, "max_batch": cap, "chunk": tokens,
            "ttft_s": est.ttft_s, "tpot_s": est.tpot_s, "waves": waves + (rest > 0),
            "batch_tokens_per_s": est.e2e_tokens_per_s,
            "predicted": record["num_requests"] * record["output_len"] / job_s,
            "decode_bound": est.decode_bound}


def run(data: Path, only: str | None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    rows, skipped = [], []
    for r in json.loads(data.read_text())["runs"]:
        if only and only not in r["id"]:
            continue
        try:
            p = predict(r)
        except (PlannerError, UnmappedRecord) as e:
            skipped.append((r["id"], str(e)))
            continue
        pub = r["published_output_tokens_per_s"]
        rows.append({**r, **p, "error": p["predicted"] / pub - 1})
    return rows, skipped


def _mean_abs(errors: list[float]) -> str:
    return f"{sum(abs(e) for e in errors) / len(errors):.1%}"


def render(rows: list[dict[str, Any]], skipped: list[tuple[str, str]]) -> str:
    out = ["| run | prompt / output | fits | trtllm-bench batch / tokens | batch | waves | "
           "TTFT s | TPOT ms | published tok/s | predicted tok/s | error |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| {r['id']} | {r['prompt_len']} / {r['output_len']} | {r['fits']} | "
                   f"{r['max_batch']} / {r['chunk']} | {r['batch']} | {r['waves']} | "
                   f"{r['ttft_s']:.2f} | {r['tpot_s'] * 1e3:.2f} | "
                   f"{r['published_output_tokens_per_s']:,} | {r['predicted']:,.0f} | "
                   f"{r['error']:+.1%} |")
    groups: dict[str, list[float]] = defaultdict(list)
    by_length: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[f"{r['model']} on {r['gpu']}, tp={r['tp']}"].append(r["error"])
        key = (f"prompt < {LONG_PROMPT}" if r["prompt_len"] < LONG_PROMPT
               else f"prompt >= {LONG_PROMPT}")
        by_length[key].append(r["error"])
    out += ["", "| model and device | runs | mean abs error | max abs error | predicted faster |",
            "|---|--:|--:|--:|--:|"]
    for name, errs in groups.items():
        out.append(f"| {name} | {len(errs)} | {_mean_abs(errs)} | "
                   f"{max(abs(e) for e in errs):.1%} | {sum(e > 0 for e in errs)} |")
    out += ["", "| prompt length | runs | mean abs error | mean signed error |",
            "|---|--:|--:|--:|"]
    for name in sorted(by_length):
        errs = by_length[name]
        out.append(f"| {name} | {len(errs)} | {_mean_abs(errs)} | "
                   f"{sum(errs) / len(errs):+.1%} |")
    if rows:
        errs = [r["error"] for r in rows]
        out += ["", f"All {len(rows)} runs: mean absolute error {_mean_abs(errs)}; "
                f"{sum(e > 0 for e in errs)} predicted faster than measured."]
    if skipped:
        out += ["", "Not evaluated:", ""] + [f"- {i}: {why}" for i, why in skipped]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", default=None, help="only records whose id contains this")
    args = ap.parse_args()
    rows, skipped = run(args.data, args.only)
    text = (f"# Serving model vs published serving throughput ({args.data.name})\n\n"
            + render(rows, skipped))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
