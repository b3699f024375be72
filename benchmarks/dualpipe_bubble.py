"""DualPipe: the cost model's pipeline time (Table 2's bubble on the slowest rank) against
DualPipe's own order simulated chunk by chunk with the same per-rank chunk times.

Usage:
    python benchmarks/dualpipe_bubble.py [--out benchmarks/results/dualpipe_bubble.md]

For each plan below, `training.dualpipe_ranks` gives every rank's per-micro-batch forward F,
full backward B (everything of the chunk after its forward) and weight-gradient W (the blocks'
weight-gradient GEMMs); the cost model's pipeline time is m x the slowest rank's chunk pair +
(p/2 - 1)(F&B + B - 3W) of that rank (DeepSeek-V3 report Table 2, F&B = F + B).
`planner.report.schedule.simulate_dualpipe` runs DualPipe's reference order (its eight steps)
on the same chunk times. The table gives both, their difference as a share of the step time,
and the chunk ratios; the README quotes it ("The cost model", Pipeline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cost_models.tables import build_tables  # noqa: E402
from cost_models.training import dualpipe_ranks, make_context  # noqa: E402
from planner import TrainingWorkload, load_cluster, load_model  # noqa: E402
from planner.api import evaluate  # noqa: E402
from planner.plan import parse_plan  # noqa: E402
from planner.report.schedule import simulate_dualpipe  # noqa: E402

# (label, model, cluster, devices, global batch, seq, dtype, plan)
CASES = [
    ("DeepSeek-V3, its own run (baseline)", "deepseek-v3", "hgx-h800", 2048, 15360, 4096, "fp8",
     "tp=1,pp=16,ep=64,zero=1,schedule=dualpipe,recompute=selective,"
     "recompute_modules=layernorm+mla_up_proj+moe_act"),
    ("DeepSeek-V3, search's best DualPipe plan", "deepseek-v3", "hgx-h800", 2048, 15360, 4096,
     "fp8", "tp=2,pp=8,dp=64,cp=2,ep=64,mbs=1,sp=on,recompute=none,zero=1,schedule=dualpipe"),
    ("Mixtral 8x7B, pp=4", "mixtral-8x7b", "dgx-h100", 64, 256, 4096, "bf16",
     "tp=1,pp=4,ep=8,zero=1,schedule=dualpipe"),
    ("Llama 3 70B, pp=8", "llama3-70b", "dgx-h100", 64, 256, 8192, "bf16",
     "tp=8,pp=8,zero=1,schedule=dualpipe"),
    ("Llama 3 70B, pp=8, full recomputation", "llama3-70b", "dgx-h100", 64, 256, 8192, "bf16",
     "tp=8,pp=8,zero=1,schedule=dualpipe,recompute=full"),
]


def row(label: str, name: str, cluster_name: str, n: int, gb: int, seq: int, dtype: str,
        text: str) -> str:
    model, cluster = load_model(name), load_cluster(cluster_name)
    wl = TrainingWorkload(global_batch_size=gb, seq_len=seq, dtype=dtype)
    plan = parse_plan(text, devices=n)
    m = gb // (plan.dp * plan.mbs)
    ctx, _ = make_context(model, cluster.job_view(n), wl, plan)
    ranks = dualpipe_ranks(build_tables(ctx, m), plan.stage_ranges(model.num_layers))
    times = ranks.times()
    fwd = [k["fwd"] for k in ranks.kinds]
    bwd = [t - f for t, f in zip(times, fwd)]
    wgt = [k["wgrad"] for k in ranks.kinds]
    sim = simulate_dualpipe(forward_s=fwd, backward_s=bwd, weight_s=wgt, num_microbatches=m)
    step = evaluate(model, cluster, wl, plan, devices=n).step_time_s
    model_pipe = max(ranks.pipe(m))
    slow = max(range(plan.pp), key=lambda r: times[r])
    return (f"| {label} | `{text}` | {plan.pp} | {m} | {bwd[slow] / fwd[slow]:.2f} | "
            f"{wgt[slow] / bwd[slow]:.2f} | {max(times) / min(times):.2f} | {model_pipe:.3f} | "
            f"{sim.makespan_s:.3f} | {(model_pipe - sim.makespan_s) / step:+.1%} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dualpipe_bubble.md")
    args = ap.parse_args()
    lines = ["| plan | `--plan` | pp | m | B/F | W/B | slowest / fastest rank | cost model's "
             "pipeline s | simulated s | difference / step |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    lines += [row(*case) for case in CASES]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.write_text(
        "# DualPipe: Table 2's bubble against DualPipe's own order, simulated\n\n"
        "Command: `python benchmarks/dualpipe_bubble.py`. B/F, W/B: the slowest rank's chunk "
        "ratios (at F:B:W = 1:2:1, equal ranks, the two agree exactly: "
        "tests/report/test_schedule.py). Positive difference: the cost model is slower than "
        "the simulation.\n\n" + table)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
