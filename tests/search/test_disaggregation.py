"""Prefill/decode disaggregated serving (search/disaggregation.py) and
`meshplan search --mode inference --disaggregate`.

The search is checked against a brute force that scores every prefill (plan, batch), every
decode (plan, instance count) and every prefill instance count, with no pruning; the
steady-state arithmetic against hand calculation from the cost model's own estimates.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from meshplan_cli.testing import cli_runner

from cli import app
from cost_models import comm
from cost_models.inference import estimate_inference
from planner import InferenceWorkload, load_cluster, load_model
from planner.errors import InfeasibleError, PlanError, SpecError
from search.disaggregation import (
    evaluate_disaggregated,
    instance_sizes,
    kv_bytes_per_prompt,
    one_group,
    pool_plan,
    search_disaggregated,
    shards,
)
from search.inference import enumerate_plans

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_MODEL, TINY_CLUSTER = str(DATA / "tiny-gpt.toml"), str(DATA / "tiny-cluster.toml")
RUNNER = cli_runner()


def tiny() -> tuple[Any, Any]:
    return load_model(TINY_MODEL), load_cluster(TINY_CLUSTER)


def brute_force_best(model: Any, cluster: Any, wl: InferenceWorkload, devices: int,
                     ttft_ms: float, tpot_ms: float | None) -> float | None:
    """The most output tokens/s of any prefill pool and decode pool on `devices`: every
    instance size, plan, prefill batch (powers of two up to B, no early stop), decode count
    dividing B and prefill count, scored from the cost model's estimates directly."""
    B, O = wl.batch_size, wl.output_len
    network = devices > cluster.devices_per_node
    prefills, decodes = [], []
    for g in range(1, devices):
        try:
            view = cluster.job_view(g)
        except SpecError:           # an instance size the cluster cannot hold
            continue
        if devices % g:
            continue
        for b in (2 ** i for i in range(int(math.log2(B)) + 1)):
            w = wl.model_copy(update={"batch_size": b, "output_len": 1})
            for p in enumerate_plans(model, view, w, g, {}, Counter()):
                e = estimate_inference(model, view, w, p)
                if one_group(p) and e.fits and e.ttft_s * 1e3 <= ttft_ms:
                    prefills.append((g, b, p, e))
        for n in range(1, devices // g + 1):
            if B % n:
                continue
            w = wl.model_copy(update={"batch_size": B // n})
            for p in enumerate_plans(model, view, w, g, {}, Counter()):
                # a decode instance holds one step's activations: a token per sequence
                step = w.model_copy(update={"prefill_chunk_tokens": -(-w.batch_size // p.dp)})
                e = estimate_inference(model, view, step, p)
                if one_group(p) and e.fits and (tpot_ms is None or e.tpot_s * 1e3 <= tpot_ms):
                    decodes.append((g, n, p, e))
    best = None
    for (gp, b, pp_, pe), (gd, n, dp_, de) in itertools.product(prefills, decodes):
        left = devices - n * gd
        links = min(shards(model, pp_) * pp_.dp,
                    shards(model, dp_) * min(b, n * dp_.dp))
        t_kv = comm.p2p_s(cluster, kv_bytes_per_prompt(model, wl) * b / links,
                          crosses_nodes=network)
        r_p = b / max(pe.ttft_s, t_kv)
        r_d = B / (O * de.tpot_s)
        for n_p in range(1, left // gp + 1):
            rate = min(r_d, n_p * r_p) * O
            best = rate if best is None or rate > best else best
    return best


def test_steady_state_arithmetic_is_the_cost_models_own_estimates() -> None:
    m, c = tiny()
    wl = InferenceWorkload(batch_size=8, prompt_len=128, output_len=32)
    r = search_disaggregated(m, c, wl, devices=4, max_ttft_ms=50.0)
    best = r.best
    d, p = best.decode, best.prefill
    # each pool's estimate is the cost model's for one instance at its batch
    from planner import Plan

    d_plan = Plan(**d.plan)
    d_wl = wl.model_copy(update={"batch_size": d.batch_per_instance,
                                 "prefill_chunk_tokens": d.batch_per_instance // d_plan.dp})
    d_est = estimate_inference(m, c.job_view(d.devices_per_instance), d_wl, d_plan)
    assert d_est == d.estimate
    # no prefill activations in decode: the workspace is one step's tokens and the logits
    full = estimate_inference(m, c.job_view(d.devices_per_instance),
                              wl.model_copy(update={"batch_size": d.batch_per_instance}), d_plan)
    assert d_est.workspace_gib < full.workspace_gib and d_est.tpot_s == full.tpot_s
    p_wl = wl.model_copy(update={"batch_size": p.batch_per_instance, "output_len": 1})
    p_est = estimate_inference(m, c.job_view(p.devices_per_instance), p_wl, Plan(**p.plan))
    assert p_est == p.estimate
    # decode rate: B sequences, each leaving after O steps
    r_d = wl.batch_size / (wl.output_len * d.estimate.tpot_s)
    # KV: 128 prompt tokens x (2 x 4 heads x 64 x 2 bytes) x 4 layers per prompt
    assert kv_bytes_per_prompt(m, wl) == 128 * 2 * 4 * 64 * 2 * 4
    r_p = p.batch_per_instance / max(p.estimate.ttft_s, best.kv_transfer_s)
    assert best.requests_per_s == pytest.approx(min(r_d, p.instances * r_p))
    assert best.tokens_per_s == pytest.approx(best.requests_per_s * wl.output_len)
    assert best.devices == p.instances * p.devices_per_instance + d.instances * d.devices_per_instance
    assert best.devices <= 4
    assert best.ttft_s == p.estimate.ttft_s and best.tpot_s == d.estimate.tpot_s
    # the fewest prefill instances that keep up, unless the devices run out
    assert (p.instances - 1) * r_p < r_d or best.bound == "prefill"
    assert d.instances * d.batch_per_instance == wl.batch_size


def test_colocated_steady_state_is_the_static_estimates_end_to_end_rate() -> None:
    m, c = tiny()
    wl = InferenceWorkload(batch_size=8, prompt_len=128, output_len=32)
    r = search_disaggregated(m, c, wl, devices=4, max_ttft_ms=1e4)
    co = r.colocated
    assert co is not None
    e = co.plan.estimate
    # a step decodes B sequences and prefills B/O prompts: TPOT + TTFT/O
    assert co.tpot_s == pytest.approx(e.tpot_s + e.ttft_s / wl.output_len)
    assert co.tokens_per_s == pytest.approx(e.e2e_tokens_per_s)
    dp = co.plan.plan["dp"]
    assert co.ttft_s == pytest.approx(max(1.0, dp * wl.output_len / wl.batch_size) * co.tpot_s)
    assert r.speedup == pytest.approx(r.best.tokens_per_s / co.tokens_per_s)


def test_kv_transfer_over_the_network_when_the_deployment_spans_nodes() -> None:
    m, c = tiny()                    # 2 devices per node: 4 devices span two nodes
    wl = InferenceWorkload(batch_size=8, prompt_len=256, output_len=32)
    r = search_disaggregated(m, c, wl, devices=4, max_ttft_ms=100.0)
    b = r.best
    assert b.kv_link == "network"
    links = min(shards(m, _plan(b.prefill.plan)) * b.prefill.plan["dp"],
                shards(m, _plan(b.decode.plan)) * min(b.prefill.batch_per_instance,
                                                      b.decode.instances * b.decode.plan["dp"]))
    nbytes = kv_bytes_per_prompt(m, wl) * b.prefill.batch_per_instance / links
    # 25 GB/s HDR per GPU at the inter-node efficiency, plus its 5 us latency
    assert b.kv_transfer_s == pytest.approx(nbytes / (25e9 * comm.INTER_NODE_LINK_EFFICIENCY)
                                            + 5e-6)
    one_node = search_disaggregated(m, c, wl, devices=2, max_ttft_ms=100.0)
    assert one_node.best.kv_link == "intra-node"


def _plan(d: dict[str, Any]) -> Any:
    from planner import Plan

    return Plan(**d)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.sampled_from([1, 2, 3, 4, 6, 8, 16]), prompt=st.integers(16, 400),
       output=st.integers(1, 100), devices=st.sampled_from([2, 4, 6, 8]),
       ttft_ms=st.floats(0.05, 50.0), tpot_ms=st.none() | st.floats(0.05, 5.0))
# prefill-bound: the best prefill batch is 8 (2 under the tighter limit), not a power of 4
@example(batch=8, prompt=400, output=1, devices=4, ttft_ms=0.5, tpot_ms=None)
@example(batch=16, prompt=400, output=2, devices=4, ttft_ms=0.2, tpot_ms=None)
def test_search_finds_the_brute_force_optimum(batch: int, prompt: int, output: int,
                                              devices: int, ttft_ms: float,
                                              tpot_ms: float | None) -> None:
    m, c = tiny()
    wl = InferenceWorkload(batch_size=batch, prompt_len=prompt, output_len=output)
    want = brute_force_best(m, c, wl, devices, ttft_ms, tpot_ms)
    try:
        r = search_disaggregated(m, c, wl, devices=devices, max_ttft_ms=ttft_ms,
                                 max_tpot_ms=tpot_ms)
    except InfeasibleError:
        assert want is None
        return
    assert want is not None
    assert r.best.tokens_per_s == pytest.approx(want, rel=1e-9)
    for d in r.top:
        assert d.ttft_s * 1e3 <= ttft_ms and d.devices <= devices
        assert tpot_ms is None or d.tpot_s * 1e3 <= tpot_ms
    keys = [(-d.tokens_per_s, d.devices) for d in r.top]
    assert keys == sorted(keys)


def test_same_inputs_give_the_same_deployments_in_the_same_order() -> None:
    m = load_model("llama3-8b")
    c = load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=256, prompt_len=1000, output_len=200)

    def run() -> dict[str, Any]:
        data = search_disaggregated(m, c, wl, devices=16, max_ttft_ms=300.0,
                                    max_tpot_ms=30.0).model_dump(mode="json")
        data["stats"].pop("search_time_s")
        return data

    assert run() == run()


def test_instance_sizes_are_the_divisors_the_cluster_can_hold() -> None:
    c = load_cluster("dgx-b200")
    assert instance_sizes(c, 32) == [1, 2, 4, 8, 16]
    # inside one 72-GPU domain any count is a job (3 and 9 included); beyond it a job spreads
    # evenly over the fewest racks in whole 4-GPU trays (ClusterSpec.job_view): 128 = 2 x 64
    assert instance_sizes(load_cluster("gb200-nvl72"), 144) == [
        1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 36, 48, 72]
    assert instance_sizes(load_cluster("gb200-nvl72"), 256) == [1, 2, 4, 8, 16, 32, 64, 128]


def test_wide_ep_instances_keep_exactly_the_replicas_that_share_the_experts() -> None:
    from planner import Plan

    assert one_group(Plan(tp=1, dp=1))
    assert not one_group(Plan(tp=1, dp=2))              # two independent instances
    assert one_group(Plan(tp=2, dp=8, ep=16))           # 8 replicas share 16 expert ranks
    assert not one_group(Plan(tp=2, dp=8, ep=8))        # 2 groups of 4 replicas


def test_errors_name_the_problem() -> None:
    m, c = tiny()
    wl = InferenceWorkload(batch_size=8, prompt_len=128, output_len=32)
    with pytest.raises(SpecError, match="at least 2 devices"):
        search_disaggregated(m, c, wl, devices=1, max_ttft_ms=50.0)
    with pytest.raises(InfeasibleError, match="--max-ttft-ms 1e-06"):
        search_disaggregated(m, c, wl, devices=4, max_ttft_ms=1e-6)
    with pytest.raises(InfeasibleError, match="--max-tpot-ms 1e-06"):
        search_disaggregated(m, c, wl, devices=4, max_ttft_ms=50.0, max_tpot_ms=1e-6)
    with pytest.raises(SpecError, match="top_k"):
        search_disaggregated(m, c, wl, devices=4, max_ttft_ms=50.0, top_k=0)
    # 140 GB of weights fit no single H100: memory, not the limit, is named
    with pytest.raises(InfeasibleError, match="smaller than the 2 devices .* holds its weights"):
        search_disaggregated(load_model("llama3-70b"), load_cluster("dgx-h100"), wl, devices=2,
                             max_ttft_ms=1e6)
    # a decode share that fits nowhere below 4 devices (at best 131,072 sequences of 260
    # tokens x 4 kB on one 40 GB device): memory again
    big = InferenceWorkload(batch_size=262144, prompt_len=256, output_len=4)
    with pytest.raises(InfeasibleError, match="holds batch 262144 of 260 tokens"):
        search_disaggregated(m, c, big, devices=4, max_ttft_ms=50.0)


# ----- CLI -------------------------------------------------------------------------------------
ARGS = ("search", "--mode", "inference", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER,
        "--gpus", "4", "--batch", "8", "--prompt-len", "128", "--output-len", "32",
        "--disaggregate")


def test_cli_table_and_json() -> None:
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50"])
    assert res.exit_code == 0, res.output
    assert "best deployments (by output tokens/s)" in res.stdout
    assert "colocated on all 4 devices" in res.stdout
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50", "--max-tpot-ms", "5", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["disaggregated"] is True
    assert set(data) >= {"best", "top", "colocated", "speedup", "stats", "notes", "inputs"}
    assert set(data["best"]) >= {"prefill", "decode", "devices", "ttft_s", "kv_transfer_s",
                                 "tpot_s", "requests_per_s", "tokens_per_s", "bound"}
    assert data["inputs"]["max_ttft_ms"] == 50 and data["inputs"]["max_tpot_ms"] == 5


@pytest.mark.parametrize("extra, code, text", [
    ((), 2, "--disaggregate needs --max-ttft-ms"),
    (("--max-ttft-ms", "50", "--fix", "tp=1"), 2, "--fix is not used with --disaggregate"),
    (("--max-ttft-ms", "50", "--export", "vllm"), 4, "vLLM cannot express this plan"),
    (("--max-ttft-ms", "1e-6"), 3, "no prefill instance"),
])
def test_cli_errors(extra: tuple[str, ...], code: int, text: str) -> None:
    res = RUNNER.invoke(app, [*ARGS, *extra])
    assert res.exit_code == code, res.output
    assert text in res.output and "Traceback" not in res.output


def test_cli_refuses_disaggregate_for_training() -> None:
    res = RUNNER.invoke(app, ["search", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER,
                              "--gpus", "4", "--global-batch", "8", "--seq-len", "128",
                              "--disaggregate"])
    assert res.exit_code == 2 and "use it with --mode inference" in res.output


def test_export_of_a_disaggregated_result(tmp_path: Path) -> None:
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50", "--json"])
    f = tmp_path / "d.json"
    f.write_text(res.stdout)
    res = RUNNER.invoke(app, ["export", str(f), "--to", "vllm"])
    assert res.exit_code == 4 and "disaggregated prefill" in res.output
    res = RUNNER.invoke(app, ["export", str(f), "--to", "sglang"])
    assert res.exit_code == 0 and "--disaggregation-mode decode" in res.stdout


# ----- evaluating one deployment ---------------------------------------------------------------
def test_evaluating_the_searched_best_reproduces_it() -> None:
    m = load_model("llama3-8b")
    c = load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=256, prompt_len=1000, output_len=200)
    best = search_disaggregated(m, c, wl, devices=16, max_ttft_ms=300.0).best
    again = evaluate_disaggregated(
        m, c, wl, prefill=_plan(best.prefill.plan),
        prefill_batch=best.prefill.batch_per_instance, decode=_plan(best.decode.plan),
        decode_instances=best.decode.instances, devices=16)
    assert again == best
    # given the instance count instead of the device count: the same deployment
    again = evaluate_disaggregated(
        m, c, wl, prefill=_plan(best.prefill.plan),
        prefill_batch=best.prefill.batch_per_instance, decode=_plan(best.decode.plan),
        decode_instances=best.decode.instances, prefill_instances=best.prefill.instances,
        devices=16)
    assert again == best


def test_evaluate_fills_the_prefill_pool_to_keep_up_and_flags_a_misfit() -> None:
    m, c = tiny()
    wl = InferenceWorkload(batch_size=8, prompt_len=256, output_len=4)
    d = evaluate_disaggregated(m, c, wl, prefill=pool_plan("tp=1"), prefill_batch=1,
                               decode=pool_plan("tp=1"), decode_instances=1)
    r_p = 1 / max(d.prefill.estimate.ttft_s, d.kv_transfer_s)
    r_d = 8 / (4 * d.decode.estimate.tpot_s)
    assert d.prefill.instances == math.ceil(r_d / r_p)          # the fewest that keep up
    assert d.bound == "decode" and d.devices == d.prefill.instances + 1
    # one prefill instance only: prefill-bound at its own rate
    one = evaluate_disaggregated(m, c, wl, prefill=pool_plan("tp=1"), prefill_batch=1,
                                 decode=pool_plan("tp=1"), prefill_instances=1)
    assert one.bound == "prefill" and one.requests_per_s == pytest.approx(r_p)
    big = InferenceWorkload(batch_size=65536, prompt_len=256, output_len=4)   # 68 GB of KV
    assert not evaluate_disaggregated(m, c, big, prefill=pool_plan("tp=1"), prefill_batch=1,
                                      decode=pool_plan("tp=1")).fits


def test_pool_plan_defaults_to_one_instance() -> None:
    assert pool_plan("tp=2").dp == 1
    assert pool_plan("tp=4,ep=320").dp == 80          # the replicas that share the experts
    assert pool_plan("tp=4,dp=8,ep=32,ep_overlap=on").ep_overlap
    with pytest.raises(PlanError, match="training only"):
        pool_plan("tp=2,mbs=2")


EVAL = ("evaluate", "--mode", "inference", "--model", TINY_MODEL, "--cluster", TINY_CLUSTER,
        "--batch", "8", "--prompt-len", "128", "--output-len", "32")


def test_cli_evaluate_one_deployment() -> None:
    res = RUNNER.invoke(app, [*EVAL, "--disaggregate", "--prefill-plan", "tp=1",
                              "--prefill-batch", "2", "--decode-plan", "tp=2"])
    assert res.exit_code == 0, res.output
    assert "prefill instance: prefills 2 prompts in" in res.stdout
    res = RUNNER.invoke(app, [*EVAL, "--disaggregate", "--prefill-plan", "tp=1",
                              "--prefill-batch", "2", "--decode-plan", "tp=2", "--json"])
    data = json.loads(res.stdout)
    assert data["prefill"]["batch_per_instance"] == 2 and data["decode"]["instances"] == 1


@pytest.mark.parametrize("extra, text", [
    (("--prefill-plan", "tp=1"), "--prefill-plan is for --disaggregate"),
    (("--disaggregate", "--prefill-plan", "tp=1"), "--disaggregate needs --prefill-batch"),
    (("--disaggregate", "--plan", "tp=1", "--prefill-plan", "tp=1", "--prefill-batch", "1",
      "--decode-plan", "tp=1"), "--plan is not used with --disaggregate"),
    (("--disaggregate", "--prefill-plan", "tp=1", "--prefill-batch", "1", "--decode-plan",
      "tp=1", "--decode-instances", "3"), "does not divide the batch 8"),
    (("--disaggregate", "--prefill-plan", "tp=2", "--prefill-batch", "1", "--decode-plan",
      "tp=2", "--gpus", "2"), "the pools need 4 devices"),
    (("--disaggregate", "--prefill-plan", "tp=1,pp=3", "--prefill-batch", "1", "--decode-plan",
      "tp=1"), "do not spread evenly"),
])
def test_cli_evaluate_errors(extra: tuple[str, ...], text: str) -> None:
    res = RUNNER.invoke(app, [*EVAL, *extra])
    assert res.exit_code == 2, res.output
    assert text in res.output and "Traceback" not in res.output


def test_cli_report_of_a_disaggregated_search(tmp_path: Path) -> None:
    out = tmp_path / "d.html"
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50", "--report", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    for heading in ("Ranked deployments", "Output tokens per second",
                    "Prefill instance: time to first token", "Decode instance: time per output "
                    "token", "Memory per device", "device maps of one instance per pool"):
        assert heading in html
    assert "colocated on 4" in html and "search_time" not in html
    # the same result gives the same bytes; an existing file is not replaced
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50", "--report", str(out)])
    assert res.exit_code == 5
    res = RUNNER.invoke(app, [*ARGS, "--max-ttft-ms", "50", "--report", str(out), "--overwrite"])
    assert res.exit_code == 0 and out.read_text() == html


def test_a_prefill_bound_deployment_settles_its_decode_concurrency() -> None:
    """Prefill feeds fewer requests than decode could take, so fewer sequences decode at a
    time (Little's law) and each step is quicker than at the full batch."""
    m, c = load_model("llama3-70b"), load_cluster("dgx-h100")
    wl = InferenceWorkload(batch_size=256, prompt_len=2000, output_len=500)
    best = search_disaggregated(m, c, wl, devices=16, max_ttft_ms=1000.0).best
    assert best.bound == "prefill"
    full = best.decode.estimate.tpot_s                      # at 256 / n sequences per instance
    assert best.tpot_s < full
    assert best.decode_sequences < wl.batch_size
    assert best.decode_sequences == pytest.approx(best.requests_per_s * 500 * best.tpot_s)
    # the settled TPOT is the estimate's at the settled batch: one more sequence per instance
    # than Little's law needs would not lower the count below it
    per = math.ceil(best.decode_sequences / best.decode.instances - 1e-9)
    plan = _plan(best.decode.plan)
    step = wl.model_copy(update={"batch_size": per, "prefill_chunk_tokens": per})
    again = estimate_inference(m, c.job_view(best.decode.devices_per_instance), step, plan)
    assert again.tpot_s <= best.tpot_s + 1e-12
    # a decode-bound deployment keeps the full batch
    d = search_disaggregated(m, c, wl, devices=16, max_ttft_ms=1000.0, top_k=5).top
    for dep in d:
        if dep.bound == "decode":
            assert dep.decode_sequences == pytest.approx(wl.batch_size)
