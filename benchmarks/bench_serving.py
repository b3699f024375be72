"""Measure the serving searches' wall time: the colocated inference search
(`search.inference.search_inference`) and the prefill/decode disaggregated search
(`search.disaggregation.search_disaggregated`), on dense and MoE models from 16 to 256 GPUs.

Usage:
    python benchmarks/bench_serving.py [--out benchmarks/results/serving_search_speed.md]

Each row times one call with time.perf_counter (specs loaded and modules imported before), and
records what it scored and the best result, so a slower or different search shows in the table.
The workloads are the README's examples and their larger siblings; limits are in the rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner import DType, InferenceWorkload, load_cluster, load_model  # noqa: E402
from search.disaggregation import search_disaggregated  # noqa: E402
from search.inference import plan_text, search_inference  # noqa: E402

# (model, cluster, devices, batch, prompt, output, dtype, max_ttft_ms, max_tpot_ms)
SCENARIOS = [
    ("llama3-8b", "dgx-h100", 64, 1024, 1000, 200, "bf16", 300.0, 30.0),
    ("llama3-70b", "dgx-h100", 16, 256, 2000, 500, "bf16", 1000.0, 50.0),
    ("llama3-70b", "dgx-h100", 128, 2048, 2000, 500, "bf16", 1000.0, 50.0),
    ("mixtral-8x7b", "dgx-h100", 64, 1024, 1024, 256, "bf16", 500.0, 30.0),
    ("deepseek-v3", "dgx-h100", 128, 4096, 2000, 1000, "fp8", 2000.0, 50.0),
    ("deepseek-v3", "dgx-h100", 256, 4096, 2000, 500, "fp8", 2000.0, 50.0),
]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks/results/serving_search_speed.md")
    args = ap.parse_args()
    rows = ["| model | cluster | GPUs | batch x (prompt + output) | dtype | limits ms "
            "| colocated search s | plans | disaggregated search s | candidates "
            "| best deployment | tokens/s | colocated, steady state | tokens/s | ratio |",
            "|---|---|--:|---|---|---|--:|--:|--:|--:|---|--:|---|--:|--:|"]
    for name, clus, n, b, p, o, dt, ttft, tpot in SCENARIOS:
        m, c = load_model(name), load_cluster(clus)
        wl = InferenceWorkload(batch_size=b, prompt_len=p, output_len=o, dtype=DType(dt))
        t0 = time.perf_counter()
        co = search_inference(m, c, wl, devices=n, max_tpot_ms=tpot)
        t1 = time.perf_counter()
        d = search_disaggregated(m, c, wl, devices=n, max_ttft_ms=ttft, max_tpot_ms=tpot)
        t2 = time.perf_counter()
        st = d.stats
        cands = st.prefill_candidates + st.decode_candidates + st.colocated_candidates
        best = d.best
        dep = (f"{best.prefill.instances}x{best.prefill.devices_per_instance} "
               f"`{plan_text(best.prefill.plan)}` b={best.prefill.batch_per_instance} / "
               f"{best.decode.instances}x{best.decode.devices_per_instance} "
               f"`{plan_text(best.decode.plan)}`")
        colo = (f"`{plan_text(d.colocated.plan.plan)}` | {d.colocated.tokens_per_s:,.0f} | "
                f"{d.speedup:.2f}x" if d.colocated is not None else "none within the limits | - | -")
        rows.append(
            f"| {name} | {clus} | {n} | {b} x ({p} + {o}) | {dt} | TTFT {ttft:g}, TPOT {tpot:g} "
            f"| {t1 - t0:.2f} | {co.stats.candidates} | {t2 - t1:.2f} | {cands:,} | {dep} "
            f"| {best.tokens_per_s:,.0f} | {colo} |")
        print(rows[-1], flush=True)
    head = [
        "# Serving search wall time",
        "",
        f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: `nproc` = {os.cpu_count()}, {platform.processor() or platform.machine()}",
        f"- python {platform.python_version()}, commit {git_commit()}",
        "- command: `python benchmarks/bench_serving.py`",
        "",
        "`colocated search s`: `search_inference` (every tp x pp x dp x ep, within the TPOT "
        "limit). `disaggregated search s`: `search_disaggregated` (prefill and decode pools, "
        "plus the colocated comparison); `candidates` adds the prefill, decode and colocated "
        "plans it scored in full. `tokens/s` are output tokens per second with prefill "
        "included: the deployment's, then the best colocated plan's in continuous-batching "
        "steady state under the same limits; `ratio` is the search's `speedup`.",
        "",
    ]
    text = "\n".join(head + rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
