"""Score every built-in published baseline that states a measured speed with the cost model.

Usage:
    python benchmarks/validate_baselines.py [--out benchmarks/results/validation_baselines.md]
        [--only SUBSTRING]

The baselines (planner/presets/baselines/*.toml) are the published configurations `meshplan
search` prints next to its best plans. Many come from papers that are not among the validation
records (BLOOM, MT-NLG, Korthikanti et al. 2022, Llama 3, PaLM, Megatron-LM 2019), so this table
is a check of the cost model on runs it was not built against. Each baseline is evaluated exactly
as `search` scores it (`Baseline.to_plan()`, `Baseline.workload()`, its cluster preset).

The published step time is the stated seconds per step, or else tokens per step divided by the
stated tokens/s (whole job, or per GPU times the GPUs). A baseline that states only TFLOP/s or a
utilisation is listed with the predicted figures but no error: sources count FLOPs differently
(Narayanan and BLOOM count recomputation, NVIDIA counts model FLOPs, some count attention), and
this script does not guess a convention. A baseline that cannot be evaluated as stated is
listed with the reason. The error is predicted / published - 1 (negative: predicted too fast).
The seed documents' configurations are left out: their figures are claims, not measurements,
and benchmarks/seeds_tables.py checks them.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from planner.api import evaluate  # noqa: E402
from planner.baselines import Baseline, list_baseline_models, load_baselines  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.presets import load_cluster, load_model  # noqa: E402
from validate_published import error_summary  # noqa: E402


def published_step_s(b: Baseline) -> float | None:
    """Seconds per step as the baseline states them, directly or through tokens/s."""
    if b.published_step_time_s is not None:
        return b.published_step_time_s
    if b.published_tokens_per_s is not None:
        return b.tokens_per_step / b.published_tokens_per_s
    if b.published_tokens_per_s_per_gpu is not None:
        return b.tokens_per_step / (b.published_tokens_per_s_per_gpu * b.gpus)
    return None


def run(only: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in list_baseline_models():
        if name.startswith("seed"):
            continue            # the seeds' claims, not measurements: benchmarks/seeds_tables.py
        model = load_model(name)
        for b in load_baselines(name):
            key = f"{name}:{b.id}"
            if b.id.startswith("seed") or (only and only not in key):
                continue
            row: dict[str, Any] = {"key": key, "label": b.label, "moe": model.moe is not None,
                                   "published_s": published_step_s(b),
                                   "published_tflops": b.published_tflops_per_gpu}
            try:
                est = evaluate(model, load_cluster(b.cluster), b.workload(), b.to_plan(),
                               devices=b.gpus)
            except (PlannerError, ValueError) as err:
                row["skipped"] = str(err).replace("|", "/")
                rows.append(row)
                continue
            row |= {"predicted_s": est.step_time_s, "model_tflops": est.model_tflops_per_gpu,
                    "hardware_tflops": est.hardware_tflops_per_gpu, "fits": est.fits,
                    "peak_gib": est.peak_memory_gib}
            if row["published_s"] is not None:
                row["error"] = est.step_time_s / row["published_s"] - 1
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    done = [r for r in rows if "skipped" not in r]
    timed = [r for r in done if "error" in r]
    lines = ["| baseline | published s | predicted s | error | published TFLOP/s | "
             "predicted model / hardware TFLOP/s | fits (GiB) |",
             "|---|--:|--:|--:|--:|--:|---|"]
    for r in done:
        pub = f"{r['published_s']:.3f}" if r["published_s"] is not None else "-"
        err = f"{r['error']:+.1%}" if "error" in r else "-"
        ptf = f"{r['published_tflops']:g}" if r["published_tflops"] is not None else "-"
        lines.append(f"| {r['key']} | {pub} | {r['predicted_s']:.3f} | {err} | {ptf} | "
                     f"{r['model_tflops']:.0f} / {r['hardware_tflops']:.0f} | "
                     f"{'yes' if r['fits'] else 'NO'} ({r['peak_gib']:.0f}) |")
    by: dict[str, list[float]] = defaultdict(list)
    for r in timed:
        by[r["key"].split(":")[0]].append(abs(r["error"]))
    by = dict(sorted(by.items()))
    for label, group in (("all dense", [r for r in timed if not r["moe"]]),
                         ("all MoE", [r for r in timed if r["moe"]]), ("all", timed)):
        if group:
            by[label] = [abs(r["error"]) for r in group]
    lines += error_summary(by, group="model", count="baselines with a published speed")
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", f"Not evaluated as stated ({len(skipped)}):", ""]
        lines += [f"- {r['key']}: {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/validation_baselines.md")
    ap.add_argument("--only", default=None, help="only baselines whose model:id contains this")
    args = ap.parse_args()
    table = render(run(args.only))
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Cost model vs the built-in published baselines\n\n"
                        "`python benchmarks/validate_baselines.py`\n\n" + table)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
