"""Measure plan-search wall time against model size and device count (8 to ~100,000 devices).

Usage:
    python benchmarks/bench_search.py [--out benchmarks/results/search_scaling.md]
        [--time-limit 120] [--only SUBSTRING] [--quick]

For every scenario (model preset, cluster preset, devices, global batch, sequence length) it
runs `planner.api.search` over the whole default space (no --fix, no limits, top 5; the
DualPipe row holds schedule=dualpipe and ep=64 fixed, the only way DualPipe is searched) with a
time limit, and records the wall time of that call (time.perf_counter around it; the model and
cluster specs are loaded and the cost model and search modules imported beforehand, so the time
is the search itself: enumeration, scoring, the top plans' estimates and the published
baselines), the candidates scored in full, the candidates pruned (all reasons together; note
that "bound" and "time_limit" count whole groups of candidates, the other reasons single
degrees or plans), whether the time limit cut the search (then the plans are the best found so
far, not the optimum), and the best plan with its predicted step time and MFU. The table is
printed and written to --out (Markdown) with the date, the machine and the Python version, and
the targets of the issue with whether each was met:

- the 1T model (narayanan-1t, Narayanan et al. 2021 Table 1: 3072 A100, global batch 3072 of
  2048 tokens) over the whole space in under 2 s on 2 cores;
- ~100,000 devices in under 30 s. The row is llama3-405b on 98,304 H100 (12,288 DGX H100 nodes;
  98,304 = 2^15 x 3, the nearest whole number of 8-GPU nodes below 100,000 whose divisors give
  this model a valid space) at a global batch of 16,384 sequences of 8192 tokens (134M tokens;
  Llama 3 trained 405B with 2048 x 8192 = 16M tokens on 16,384 GPUs, Llama 3 paper Table 4; the
  batch is scaled up so that dp can grow with the device count: dp must divide it, and
  16,384 = 2^14 leaves tp x cp x pp = 6 or more). 100,000 itself = 2^5 x 5^5 would need a batch
  with a factor 5^k to use most of its factorisations and is no realistic setting.

A search over the whole space either finishes (the result is exact) or is cut by --time-limit;
a target is met only by a search that finished within it, never by a cut one.
The dense workloads are bf16 with Adam (TrainingWorkload defaults); the MoE rows (Mixtral
8x7B, Qwen3-235B-A22B, DeepSeek-V3: published workloads) train in the dtype of the run they
come from. The dtype changes the scores, not the size of the space.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner import DType, TrainingWorkload, load_cluster, load_model  # noqa: E402
from planner.errors import PlannerError  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    cluster: str
    devices: int
    global_batch: int
    seq_len: int
    quick: bool = False          # part of the --quick smoke run
    note: str = ""
    dtype: str = "bf16"
    fixed: tuple[tuple[str, object], ...] = ()   # --fix values (the whole default space: none)


SCENARIOS = [
    Scenario("1.7b-8", "narayanan-1.7b", "dgx-a100", 8, 512, 2048, quick=True,
             note="one node; Narayanan Table 1 batch"),
    Scenario("1.7b-64", "narayanan-1.7b", "dgx-a100", 64, 512, 2048, quick=True),
    Scenario("18b-256", "narayanan-18b", "dgx-a100", 256, 1024, 2048,
             note="Narayanan Table 1 row"),
    Scenario("145b-1536", "narayanan-145b", "dgx-a100", 1536, 2304, 2048,
             note="Narayanan Table 1 row"),
    Scenario("1t-3072", "narayanan-1t", "dgx-a100", 3072, 3072, 2048,
             note="Narayanan Table 1 row; target: < 2 s"),
    Scenario("gpt3-4096", "gpt3-175b", "dgx-h100", 4096, 1536, 2048,
             note="GPT-3 batch (Megatron's 1536)"),
    Scenario("gpt3-16384", "gpt3-175b", "dgx-h100", 16384, 1536, 2048),
    Scenario("405b-16384", "llama3-405b", "dgx-h100", 16384, 2048, 8192,
             note="Llama 3 Table 4 (8K context)"),
    Scenario("405b-98304", "llama3-405b", "dgx-h100", 98304, 16384, 8192,
             note="12,288 nodes; target: < 30 s. dp must divide 16,384 = 2^14 and "
                  "98,304 = 2^15 x 3, so pp carries the factor 3 (pp in 3, 6, ..., 96): many "
                  "factorisations fail batch divisibility, a smaller space than the device "
                  "count alone suggests"),
    # Mixture of experts: ep (folded with dp x cp, as Megatron-Core does), expert tp, the
    # all-to-all overlap and the dispatcher join the space. Workloads of published runs
    # (benchmarks/data/moe_runs.json, nemo_moe_more_runs.json).
    Scenario("mixtral-64", "mixtral-8x7b", "dgx-h100", 64, 256, 4096,
             note="NeMo docs' Mixtral 8x7B workload (global batch 256 x 4096)"),
    Scenario("qwen3-235b-256", "qwen3-235b-a22b", "dgx-h100", 256, 8192, 4096, dtype="fp8",
             note="Megatron-Bridge's Qwen3-235B-A22B H100 workload, FP8"),
    Scenario("dsv3-256", "deepseek-v3", "gb200-nvl72", 256, 4096, 4096, dtype="fp8",
             note="Megatron-Bridge's DeepSeek-V3 GB200 workload, FP8"),
    Scenario("dsv3-1024", "deepseek-v3", "dgx-h100", 1024, 8192, 4096, dtype="fp8",
             note="Megatron-Bridge's DeepSeek-V3 H100 workload, FP8"),
    # DualPipe is searched only when held fixed (--fix schedule=dualpipe): DeepSeek-V3's own
    # run (its report, Sec. 3.2 and 4.2), with its EP64
    Scenario("dsv3-2048-dualpipe", "deepseek-v3", "hgx-h800", 2048, 15360, 4096, dtype="fp8",
             fixed=(("schedule", "dualpipe"), ("ep", 64)),
             note="DeepSeek-V3 report's pre-training run (2048 H800, 15,360 x 4096, FP8) with "
                  "--fix schedule=dualpipe,ep=64: the DualPipe space"),
]

TARGET_1T = ("1t-3072", 2.0,
             "narayanan-1t on 3072 A100 (dgx-a100), whole space, under 2 s on 2 cores")
TARGET_100K = ("405b-98304", 30.0,
               "~100,000 devices (llama3-405b on 98,304 H100), whole space, under 30 s")


def machine() -> dict[str, str]:
    try:
        cores = len(os.sched_getaffinity(0))     # what `nproc` prints
    except AttributeError:
        cores = os.cpu_count() or 0
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"], cwd=ROOT,   # not our own output
                               text=True, capture_output=True, check=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import numpy

    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": str(cores), "cpu": cpu, "python": platform.python_version(),
            "numpy": numpy.__version__, "commit": commit}


def fmt_params(n: int) -> str:
    return f"{n / 1e12:.2f}T" if n >= 1e12 else f"{n / 1e9:.1f}B"


def run_one(sc: Scenario, time_limit: float) -> dict[str, Any]:
    from planner.api import search

    model, cluster = load_model(sc.model), load_cluster(sc.cluster)
    wl = TrainingWorkload(global_batch_size=sc.global_batch, seq_len=sc.seq_len,
                          dtype=DType(sc.dtype))
    row: dict[str, Any] = {"sc": sc, "params": model.params}
    start = time.perf_counter()
    try:
        res = search(model, cluster, wl, devices=sc.devices, time_limit_s=time_limit,
                     fixed=dict(sc.fixed) or None)
    except PlannerError as err:      # InfeasibleError (nothing fits) or a bad scenario
        row.update(wall_s=time.perf_counter() - start, error=f"{type(err).__name__}: {err}")
        return row
    row.update(wall_s=time.perf_counter() - start, candidates=res.stats.candidates,
               pruned=sum(res.stats.pruned.values()), pruned_by=res.stats.pruned,
               cut=res.stats.cut, plan=res.best.plan["plan"],
               step_s=res.best.estimate.step_time_s, mfu=res.best.estimate.mfu)
    return row


def render_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | model | params | cluster | devices | global batch x seq | dtype "
             "| wall s | candidates | pruned | cut | best plan | step s | MFU |",
             "|---|---|--:|---|--:|---|---|--:|--:|--:|---|---|--:|--:|"]
    for r in rows:
        sc = r["sc"]
        name = sc.name + (" (--fix " + ",".join(f"{k}={v}" for k, v in sc.fixed) + ")"
                          if sc.fixed else "")
        head = (f"| {name} | {sc.model} | {fmt_params(r['params'])} | {sc.cluster} | "
                f"{sc.devices:,} | {sc.global_batch:,} x {sc.seq_len} | {sc.dtype} | "
                f"{r['wall_s']:.2f} |")
        if "error" in r:
            lines.append(f"{head} - | - | - | {r['error']} | - | - |")
        else:
            lines.append(f"{head} {r['candidates']:,} | {r['pruned']:,} | "
                         f"{'**yes**' if r['cut'] else 'no'} | `{r['plan']}` | "
                         f"{r['step_s']:.3f} | {r['mfu']:.1%} |")
    return "\n".join(lines) + "\n"


def render_pruned(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | pruned by reason |", "|---|---|"]
    for r in rows:
        if "pruned_by" in r:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r["pruned_by"].items()))
            lines.append(f"| {r['sc'].name} | {reasons} |")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, Any]], target: tuple[str, float, str], nproc: str,
            time_limit: float) -> str:
    name, limit_s, text = target
    row = next((r for r in rows if r["sc"].name == name), None)
    if row is None:
        return f"- {text}: **not run** (excluded by --only/--quick)"
    if "error" in row:
        return f"- {text}: **not met** (the search failed: {row['error']})"
    cores = "" if nproc == "2" else f"; measured on {nproc} cores, not 2"
    if row["cut"]:
        return (f"- {text}: **not met**: the search was cut by the {time_limit:g} s time limit "
                f"after {row['wall_s']:.2f} s (the whole space was not searched){cores}")
    ok = row["wall_s"] < limit_s
    return (f"- {text}: **{'met' if ok else 'not met'}**: {row['wall_s']:.2f} s "
            f"({row['wall_s'] / limit_s:.1f}x the target){cores}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/search_scaling.md")
    ap.add_argument("--time-limit", type=float, default=120.0,
                    help="seconds per scenario before the search returns its best so far (default 120)")
    ap.add_argument("--only", default=None,
                    help="only scenarios whose name, model or cluster contains this")
    ap.add_argument("--quick", action="store_true", help="only the small scenarios (smoke run)")
    args = ap.parse_args()

    chosen = [s for s in SCENARIOS
              if (not args.quick or s.quick)
              and (not args.only or any(args.only in x for x in (s.name, s.model, s.cluster)))]
    if not chosen:
        print("no scenario matches", file=sys.stderr)
        return 2
    # Import the cost model and search before timing anything, so the first row does not pay
    # for module imports.
    import cost_models.training  # noqa: F401
    import planner.api  # noqa: F401
    import search.driver  # noqa: F401

    info = machine()
    rows = []
    for sc in chosen:
        print(f"{sc.name}: {sc.model} on {sc.devices:,} ({sc.cluster}) ...", file=sys.stderr, flush=True)
        row = run_one(sc, args.time_limit)
        print(f"  {row['wall_s']:.2f} s" + (" (cut by the time limit)" if row.get("cut") else "")
              + (f" {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
        rows.append(row)

    table = render_rows(rows)
    targets = "\n".join(verdict(rows, t, info["nproc"], args.time_limit)
                        for t in (TARGET_1T, TARGET_100K)) + "\n"
    print(table)
    print(targets)
    notes = "\n".join(f"- {r['sc'].name}: {r['sc'].note}" for r in rows if r["sc"].note)
    cmd = " ".join(["python", "benchmarks/bench_search.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Plan search wall time against model size and device count\n\n"
        f"- date: {info['date']}\n"
        f"- machine: `nproc` = {info['nproc']}, {info['cpu']}\n"
        f"- python {info['python']}, numpy {info['numpy']}, commit {info['commit']}\n"
        f"- command: `{cmd}`\n"
        f"- search: `planner.api.search`, whole default space (a row's --fix restricts it), "
        f"top 5, time limit "
        f"{args.time_limit:g} s per scenario; Adam; bf16 unless the row's dtype says fp8\n\n"
        "Wall time is time.perf_counter around the search call (specs loaded and modules "
        "imported beforehand). `cut` = the time limit stopped the search (the plan is the best "
        "found so far, not the optimum). `pruned` adds all reasons; `bound` and `time_limit` "
        "count whole groups of candidates.\n\n"
        f"{table}\n## Targets\n\n{targets}\n## Pruned by reason\n\n{render_pruned(rows)}\n"
        f"## Scenarios\n\n{notes}\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
