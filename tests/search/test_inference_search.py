"""The inference search (search/inference.py) and `meshplan search --mode inference`.

Small cases whose plan spaces can be counted by hand: tests/data/tiny-gpt.toml (4 blocks,
4 heads) on tests/data/tiny-cluster.toml (2 devices per node), and seed004-moe-4l (4 blocks,
32 heads, 16 experts) on dgx-h100 (8 per node) for the ep enumeration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models.inference import estimate_inference
from planner import InferenceWorkload, Plan, load_cluster, load_model
from planner.errors import InfeasibleError, SpecError
from search.inference import search_inference

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_MODEL, TINY_CLUSTER = str(DATA / "tiny-gpt.toml"), str(DATA / "tiny-cluster.toml")
WL = InferenceWorkload(batch_size=8, prompt_len=128, output_len=32)




RUNNER = cli_runner()
INFER = ("search", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER, "--gpus", "4",
         "--mode", "inference")


def tiny() -> tuple[Any, Any]:
    return load_model(TINY_MODEL), load_cluster(TINY_CLUSTER)


def test_space_is_counted_by_hand_and_best_is_the_cost_model_of_that_plan() -> None:
    m, c = tiny()
    r = search_inference(m, c, WL, devices=4, top_k=10)
    # tp=1: pp 1/2/4 (dp 4/2/1); tp=2: pp 1/2 (dp 2/1); tp=4 is beyond the 2-device node.
    assert r.stats.candidates == 5
    assert r.stats.pruned == {"memory": 0, "tp_beyond_node": 1, "tpot": 0}
    assert {tuple(s.plan.values()) for s in r.top} == {          # (tp, pp, dp, ep, ep_overlap)
        (1, 1, 4, 1, False), (1, 2, 2, 1, False), (1, 4, 1, 1, False), (2, 1, 2, 1, False),
        (2, 2, 1, 1, False)}
    best = r.best
    assert best == r.top[0]
    assert best.estimate == estimate_inference(m, c, WL, Plan(**best.plan))
    # Ranked by tokens/s, descending.
    tps = [s.estimate.tokens_per_s for s in r.top]
    assert tps == sorted(tps, reverse=True) and best.estimate.tokens_per_s == max(tps)
    # The batch chosen under memory: per replica x dp.
    assert r.max_batch_size == best.max_batch_size == best.estimate.max_batch_size * best.plan["dp"]
    assert best.max_batch_size > WL.batch_size and r.notes
    # Deterministic (search_time_s aside).
    again = search_inference(m, c, WL, devices=4, top_k=10)
    assert again.model_dump(exclude={"stats"}) == r.model_dump(exclude={"stats"})


def test_dp_is_at_most_the_batch_and_fix_holds_degrees() -> None:
    m, c = tiny()
    r = search_inference(m, c, InferenceWorkload(batch_size=1, prompt_len=128, output_len=32),
                         devices=4, top_k=10)
    assert r.stats.pruned["dp_batch"] == 3                    # dp 4, 2 (tp=1,pp=2), 2 (tp=2,pp=1)
    assert all(s.plan["dp"] == 1 for s in r.top) and r.stats.candidates == 2
    f = search_inference(m, c, WL, devices=4, fixed={"tp": 2})
    assert {s.plan["tp"] for s in f.top} == {2} and f.stats.candidates == 2
    with pytest.raises(SpecError, match="mbs"):
        search_inference(m, c, WL, devices=4, fixed={"mbs": 2})


def test_moe_enumerates_ep_dividing_tp_and_experts() -> None:
    m, c = load_model("seed004-moe-4l"), load_cluster("dgx-h100")
    r = search_inference(m, c, WL, devices=8, top_k=100)
    # Folded into tp: tp=1: pp 1/2/4 (pp=8 > 4 blocks); tp=2: 3 pp x ep 1/2; tp=4: 2 pp x
    # ep 1/2/4; tp=8: ep 1/2/4/8. Over replicas (ep = tp x g, g > 1 dividing dp, 16 experts):
    # tp=1: dp 8 -> ep 2/4/8, dp 4 -> 2/4, dp 2 -> 2; tp=2: dp 4 -> 4/8, dp 2 -> 4; tp=4: dp 2 -> 8;
    # each of those with and without ep_overlap (batch 8: every replica holds >= 2 sequences
    # except dp=8).
    assert r.stats.candidates == (3 + 6 + 6 + 4) + (3 + 2 * 3) + 2 * (3 + 1)
    assert r.stats.pruned["pp_layers"] == 1
    folded = [s for s in r.top if s.plan["ep"] <= s.plan["tp"]]
    wide = [s for s in r.top if s.plan["ep"] > s.plan["tp"]]
    assert len(folded) + len(wide) == len(r.top) and wide
    assert all(s.plan["tp"] % s.plan["ep"] == 0 for s in folded)
    assert all(s.plan["ep"] % s.plan["tp"] == 0
               and s.plan["dp"] % (s.plan["ep"] // s.plan["tp"]) == 0 for s in wide)
    assert all(s.estimate.tpot_breakdown["ep_comm"] == 0.0 for s in folded)
    assert all(s.estimate.tpot_breakdown["ep_comm"] > 0.0 for s in wide
               if not s.plan["ep_overlap"])               # with the overlap it may all hide
    assert not any(s.plan["ep_overlap"] for s in folded)
    assert {s.plan["ep"] for s in r.top} == {1, 2, 4, 8}
    fixed = search_inference(m, c, WL, devices=8, top_k=100, fixed={"ep": 8, "tp": 1})
    assert [s.plan for s in fixed.top] == [{"tp": 1, "pp": 1, "dp": 8, "ep": 8,
                                            "ep_overlap": False}]     # 1 sequence per replica
    both = search_inference(m, c, WL, devices=8, top_k=100, fixed={"ep": 8, "tp": 2})
    assert {s.plan["ep_overlap"] for s in both.top} == {False, True}
    on = search_inference(m, c, WL, devices=8, top_k=100, fixed={"ep": 8, "tp": 2,
                                                                  "ep_overlap": True})
    assert [s.plan for s in on.top] == [{"tp": 2, "pp": 1, "dp": 4, "ep": 8, "ep_overlap": True}]
    assert on.top[0].estimate.plan.endswith("ep_overlap=on")


def test_max_tpot_filters_and_nothing_left_is_infeasible() -> None:
    m, c = tiny()
    full = search_inference(m, c, WL, devices=4, top_k=10)
    tpots = sorted(s.estimate.tpot_s * 1e3 for s in full.top)
    limit = (tpots[1] + tpots[2]) / 2                           # keeps exactly the two fastest
    r = search_inference(m, c, WL, devices=4, top_k=10, max_tpot_ms=limit)
    assert len(r.top) == 2 and r.stats.pruned["tpot"] == 3
    assert all(s.estimate.tpot_s * 1e3 <= limit for s in r.top)
    with pytest.raises(InfeasibleError, match="max-tpot-ms"):
        search_inference(m, c, WL, devices=4, max_tpot_ms=tpots[0] / 2)


def test_max_ttft_filters_after_tpot_and_says_which_limit_failed() -> None:
    m, c = tiny()
    full = search_inference(m, c, WL, devices=4, top_k=10)
    ttfts = sorted(s.estimate.ttft_s * 1e3 for s in full.top)
    limit = (ttfts[0] + ttfts[1]) / 2                           # keeps exactly the quickest
    r = search_inference(m, c, WL, devices=4, top_k=10, max_ttft_ms=limit)
    assert len(r.top) == 1 and r.stats.pruned["ttft"] == len(full.top) - 1
    assert r.top[0].estimate.ttft_s * 1e3 == ttfts[0]
    with pytest.raises(InfeasibleError, match=r"--max-ttft-ms .* the quickest plan that fits"):
        search_inference(m, c, WL, devices=4, max_ttft_ms=ttfts[0] / 2)
    # both limits: TPOT is applied first, and the TTFT message names the plans within it
    tpots = sorted(s.estimate.tpot_s * 1e3 for s in full.top)
    with pytest.raises(InfeasibleError, match="within --max-tpot-ms"):
        search_inference(m, c, WL, devices=4, max_tpot_ms=tpots[-1], max_ttft_ms=ttfts[0] / 2)
    assert "ttft" not in full.stats.pruned                     # no limit, no counter


def test_batch_that_fits_nowhere_says_the_largest_that_does() -> None:
    m, c = tiny()
    cap = search_inference(m, c, WL, devices=4, top_k=10)
    # dp must divide the batch; find a batch larger than every eligible plan can hold.
    batch = max(s.max_batch_size for s in cap.top) + 1
    while True:
        eligible = [s.max_batch_size for s in cap.top if batch % s.plan["dp"] == 0]
        most = max(eligible)
        if batch > most:
            break
        batch += 1
    wl = InferenceWorkload(batch_size=batch, prompt_len=128, output_len=32)
    with pytest.raises(InfeasibleError, match=f"at most {most} sequences fit"):
        search_inference(m, c, wl, devices=4)


# ----- CLI -------------------------------------------------------------------------------
def test_cli_json_schema() -> None:
    res = RUNNER.invoke(app, [*INFER, "--batch", "8", "--prompt-len", "128", "--output-len", "32",
                              "--top", "3", "--json"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert set(d) == {"best", "top", "max_batch_size", "stats", "notes", "inputs"}
    assert d["inputs"]["devices"] == d["best"]["estimate"]["devices"]
    assert d["inputs"]["workload"]["batch_size"] == 8
    assert d["top"][0] == d["best"] and len(d["top"]) == 3
    assert set(d["best"]["plan"]) == {"tp", "pp", "dp", "ep", "ep_overlap"}
    for key in ("ttft_s", "tpot_s", "tokens_per_s", "decode_bound", "max_batch_size", "fits"):
        assert key in d["best"]["estimate"]
    assert set(d["stats"]) == {"candidates", "pruned", "search_time_s"}
    m, c = tiny()
    est = estimate_inference(m, c, WL, Plan(**d["best"]["plan"]))
    assert d["best"]["estimate"] == est.model_dump(mode="json")


def test_cli_prefill_chunk_reaches_the_workload_and_only_inference_takes_it() -> None:
    """--prefill-chunk N is the workload's prefill_chunk_tokens (saved in the JSON inputs) and
    can only raise the largest batch; training refuses it (exit 2)."""
    args = [*INFER, "--batch", "8", "--prompt-len", "128", "--output-len", "32", "--json"]
    plain = json.loads(RUNNER.invoke(app, args).stdout)
    res = RUNNER.invoke(app, [*args, "--prefill-chunk", "64"])
    assert res.exit_code == 0, res.stderr
    chunked = json.loads(res.stdout)
    assert chunked["inputs"]["workload"]["prefill_chunk_tokens"] == 64
    assert plain["inputs"]["workload"]["prefill_chunk_tokens"] is None
    assert chunked["max_batch_size"] >= plain["max_batch_size"]
    training = RUNNER.invoke(app, ["search", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER,
                                   "--gpus", "2", "--global-batch", "8", "--seq-len", "128",
                                   "--prefill-chunk", "64"])
    assert training.exit_code == 2 and "does not use --prefill-chunk" in training.stderr


def test_cli_table() -> None:
    res = RUNNER.invoke(app, [*INFER, "--batch", "8", "--prompt-len", "128", "--output-len", "32"])
    assert res.exit_code == 0, res.stderr
    assert "TPOT" in res.stdout and "5 plans scored" in res.stdout


@pytest.mark.parametrize("extra, code, text", [
    ((), 2, "--mode inference needs --batch"),
    (("--batch", "8", "--prompt-len", "128", "--output-len", "32", "--max-tpot-ms", "1e-6"), 3,
     "no plan meets --max-tpot-ms"),
    (("--batch", "100000", "--prompt-len", "1000", "--output-len", "32"), 3, "does not fit"),
])
def test_cli_errors_are_one_line(extra: tuple[str, ...], code: int, text: str) -> None:
    args = list(INFER) + ["--prompt-len", "128", "--output-len", "32"] if not extra else [*INFER, *extra]
    res = RUNNER.invoke(app, args)
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


def test_training_search_unaffected_and_still_needs_its_options() -> None:
    base = ["search", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER, "--gpus", "2"]
    res = RUNNER.invoke(app, [*base, "--global-batch", "8", "--seq-len", "128", "--json"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert "baselines" in d and "lower_bound_step_time_s" in d and d["best"]["plan"]["cp"] == 1
    res = RUNNER.invoke(app, [*base, "--seq-len", "128"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --mode training needs --global-batch"
