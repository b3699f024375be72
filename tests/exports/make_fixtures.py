"""Regenerate the search results the export tests read (tests/exports/data/*.json).

Run from the repository root: `python tests/exports/make_fixtures.py`. Five come straight from
`meshplan search ... --json` (one a prefill/decode disaggregated serving search); the interleaved uneven-stage one takes a real search result and
puts an explicit plan, scored by `planner.api.evaluate`, in front of its top list (the search
does not pick an uneven interleaved split for any small case, and --fix cannot fix layers=).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"

SEARCHES = {
    "dense.json": ["--model", "narayanan-7.5b", "--cluster", "dgx-a100", "--gpus", "16",
                   "--global-batch", "64", "--seq-len", "2048"],
    "moe.json": ["--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--gpus", "32",
                 "--global-batch", "256", "--seq-len", "4096", "--fix", "ep=8"],
    "inference.json": ["--mode", "inference", "--model", "llama3-8b", "--cluster", "dgx-h100",
                       "--gpus", "8", "--batch", "16", "--prompt-len", "512", "--output-len", "128"],
    "moe-inference.json": ["--mode", "inference", "--model", "mixtral-8x7b", "--cluster",
                           "dgx-h100", "--gpus", "8", "--batch", "32", "--prompt-len", "1024",
                           "--output-len", "256"],
    "disaggregated.json": ["--mode", "inference", "--disaggregate", "--model", "mixtral-8x7b",
                           "--cluster", "dgx-h100", "--gpus", "32", "--batch", "256",
                           "--prompt-len", "1024", "--output-len", "256", "--max-ttft-ms", "500",
                           "--max-tpot-ms", "30"],
    "interleaved-base.json": ["--model", "llama3-8b", "--cluster", "dgx-a100", "--gpus", "32",
                              "--global-batch", "128", "--seq-len", "2048", "--fix",
                              "tp=2,pp=4,vpp=2,sp=on"],
}

UNEVEN_PLANS = {
    # 32 blocks: first and last stages lighter, equal middle (Megatron first/last flags)
    "interleaved-firstlast.json": "tp=2,pp=4,dp=4,vpp=2,mbs=1,sp=on,zero=1,layers=6/10/10/6",
    # per-virtual-stage split that no first/last rule gives (Megatron pipeline layout)
    "interleaved-layout.json": "tp=2,pp=4,dp=4,vpp=2,mbs=1,sp=on,zero=0,layers=3/4/4/4/5/4/4/4",
}


def search(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "planner", "search", *args, "--top", "5", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def with_plan_first(base: dict, plan_text: str) -> dict:
    from planner.api import evaluate, plan_dict
    from planner.hardware import ClusterSpec
    from planner.model import ModelSpec
    from planner.plan import parse_plan
    from planner.workload import TrainingWorkload

    inputs = base["inputs"]
    model = ModelSpec.model_validate(inputs["model"])
    cluster = ClusterSpec.model_validate(inputs["cluster"])
    workload = TrainingWorkload.model_validate(inputs["workload"])
    plan = parse_plan(plan_text, devices=inputs["devices"])
    estimate = evaluate(model, cluster, workload, plan, devices=inputs["devices"])
    scored = {"plan": plan_dict(plan, model.num_layers), "estimate": estimate.model_dump(mode="json")}
    return {**base, "best": scored, "top": [scored, *base["top"][:2]],
            "notes": [*base.get("notes", []), f"tests: top[0] is the explicit plan {plan_text}"]}


def main() -> None:
    DATA.mkdir(exist_ok=True)
    results = {name: search(args) for name, args in SEARCHES.items()}
    base = results.pop("interleaved-base.json")
    for name, plan_text in UNEVEN_PLANS.items():
        results[name] = with_plan_first(base, plan_text)
    for name, data in results.items():
        (DATA / name).write_text(json.dumps(data, indent=1) + "\n")
        best = data["best"]
        print(name, best["prefill"]["plan"] | {"decode": best["decode"]["plan"]}
              if data.get("disaggregated") else best["plan"].get("plan", best["plan"]))


if __name__ == "__main__":
    main()
