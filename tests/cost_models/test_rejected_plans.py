"""Every rule of planner/validate.py: the message names the rule and the nearest valid values,
the CLI turns it into exit code 2 and one stderr line, and a plan that does not fit in
memory is not an error (it evaluates with fits=false)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner import ModelSpec, MoESpec, Plan, PlanError, TrainingWorkload, load_model
from planner.api import evaluate
from planner.validate import check_plan, plan_problems

GPT = load_model("narayanan-1.7b")        # 24 layers, 24 heads, FFN 9216
MIXTRAL = load_model("mixtral-8x7b")      # 8 experts of 14336, top-2
GQA = ModelSpec(name="gqa12", num_layers=4, hidden_size=768, num_attention_heads=12,
                num_kv_heads=3, ffn_hidden_size=3072, vocab_size=1000)
ODD_FFN = ModelSpec(name="odd-ffn", num_layers=4, hidden_size=512, num_attention_heads=8,
                    ffn_hidden_size=1002, vocab_size=1000)
TINY_MOE = ModelSpec(name="tiny-moe", num_layers=4, hidden_size=256, num_attention_heads=4,
                     ffn_hidden_size=1024, vocab_size=1000, activation="swiglu",
                     moe=MoESpec(num_experts=4, top_k=2, expert_ffn_hidden_size=512))


def wl(gb: int = 16, s: int = 2048) -> TrainingWorkload:
    return TrainingWorkload(global_batch_size=gb, seq_len=s)


# (rule key, model, workload, plan, devices, the exact message after "invalid plan: ")
CASES = [
    ("device_count", GPT, wl(), Plan(tp=2, dp=2), 8,
     "tp*pp*dp*cp = 2*1*2*1 = 4 must equal the 8 devices; with tp=2, pp=1, cp=1 use dp=4"),
    ("device_count", GPT, wl(), Plan(tp=3, dp=2), 8,
     "tp*pp*dp*cp = 6 must equal the 8 devices; tp*pp*cp = 3 does not divide 8"),
    ("tp_heads", GPT, wl(), Plan(tp=16), 16,
     "tp=16 must divide the 24 attention heads; nearest valid tp: 8 or 12"),
    ("tp_kv_heads", GQA, wl(), Plan(tp=4), 4,
     "tp=4 must divide the 3 KV heads or be a multiple of them; nearest valid tp: 3 or 6"),
    # 3 divides the FFN of 1002 but not the 8 heads: only tp values that pass every tp rule.
    ("tp_ffn", ODD_FFN, wl(), Plan(tp=4), 4,
     "tp=4 must divide the FFN size 1002; nearest valid tp: 1 or 2"),
    ("pp_layers", GPT, wl(), Plan(pp=32), 32, "pp=32 exceeds the 24 layers; use pp <= 24"),
    ("batch_divisibility", GPT, wl(12), Plan(dp=8), 8,
     "global batch 12 is not divisible by dp*mbs = 8*1 = 8; choose a global batch that is a "
     "multiple of dp=8, e.g. 8 or 16"),
    ("batch_divisibility", GPT, wl(12), Plan(dp=3, mbs=8), 3,
     "global batch 12 is not divisible by dp*mbs = 3*8 = 24; nearest valid mbs: 2 or 4"),
    ("interleave_microbatches", GPT, wl(3), Plan(pp=2, vpp=2), 2,
     "the interleaved schedule needs the 3 micro-batches per replica to be a multiple of pp=2 "
     "(Megatron-LM); change mbs or the global batch, or use vpp=1"),
    ("stage_layers", GPT, wl(), Plan(pp=2, stage_layers=(8, 8, 8)), 2,
     "layers= gives 3 stages but pp=2"),
    ("stage_layers", GPT, wl(), Plan(pp=2, stage_layers=(10, 10)), 2,
     "layers= sums to 20 blocks but the model has 24"),
    ("vpp_needs_pp", GPT, wl(), Plan(vpp=2), 1,
     "vpp=2 needs pipeline parallelism; use vpp=1 or pp>1"),
    ("vpp_layers", GPT, wl(), Plan(pp=2, vpp=5, dp=4), 8,
     "vpp=5 must divide the layers per stage (12/12); nearest valid vpp: 4 or 6 "
     "(or give all 10 virtual-stage counts with layers=)"),
    # Uneven stages: the hint divides every stage (15/9: 3 or 1, never the given 9).
    ("vpp_layers", GPT, wl(), Plan(pp=2, vpp=9, stage_layers=(15, 9)), 2,
     "vpp=9 must divide the layers per stage (15/9); nearest valid vpp: 1 or 3 "
     "(or give all 18 virtual-stage counts with layers=)"),
    ("cp_seq", GPT, wl(), Plan(cp=3), 3,
     "cp=3 needs the sequence length 2048 to split into 2*cp balanced chunks; nearest valid "
     "cp: 2 or 4"),
    ("zero_pp", GPT, wl(), Plan(zero=2, pp=2, dp=2), 4,
     "ZeRO stage 2 shards gradients, which pipeline parallelism accumulates over micro-batches "
     "(DeepSpeed and Megatron-LM refuse it); use zero=1 with pp>1, or pp=1"),
    ("zero_pp", GPT, wl(), Plan(zero=3, pp=2, dp=2), 4,
     "ZeRO stage 3 shards gradients, which pipeline parallelism accumulates over micro-batches "
     "(DeepSpeed and Megatron-LM refuse it); use zero=1 with pp>1, or pp=1"),
    ("ep_dense", GPT, wl(), Plan(ep=2, dp=2), 2, "ep=2 needs a mixture-of-experts model; use ep=1"),
    ("ep_experts", MIXTRAL, wl(12), Plan(ep=3, dp=3), 3,
     "ep=3 must divide the 8 experts; nearest valid ep: 2 or 4"),
    ("ep_fold", MIXTRAL, wl(), Plan(ep=4, dp=2), 2,
     "ep*etp = 4 must divide dp*cp*tp = 2 (expert parallelism is folded into those ranks); "
     "nearest valid ep: 1 or 2"),
    # With etp=4 on 4 ranks only ep=1 fits; ep=2 (the given value) must not be suggested.
    ("ep_fold", TINY_MOE, wl(), Plan(ep=2, etp=4, dp=4), 4,
     "ep*etp = 8 must divide dp*cp*tp = 4 (expert parallelism is folded into those ranks); "
     "nearest valid ep: 1"),
    ("etp_ffn", MIXTRAL, wl(12), Plan(etp=3, dp=3), 3,
     "etp=3 must divide the expert FFN size 14336"),
    ("ep_overlap_dense", GPT, wl(), Plan(dp=2, ep_overlap=True), 2,
     "ep_overlap=on needs a mixture-of-experts model; use ep_overlap=off"),
    ("ep_overlap_ep", MIXTRAL, wl(), Plan(dp=2, ep_overlap=True), 2,
     "ep_overlap=on overlaps the expert-parallel all-to-all, which ep=1 does not have; use "
     "ep>1 or ep_overlap=off"),
    ("ep_overlap_vpp", MIXTRAL, wl(), Plan(pp=2, dp=2, ep=2, ep_overlap=True), 4,
     "ep_overlap=on with pp=2 needs the interleaved schedule (Megatron-Core's combined 1F1B "
     "pairs micro-batches across virtual stages); use vpp>1, pp=1, or ep_overlap=off"),
    ("ep_overlap_recompute", MIXTRAL, wl(), Plan(dp=2, ep=2, ep_overlap=True,
                                                 recompute="full"), 2,
     "ep_overlap=on cannot run with full recomputation (Megatron-Core refuses it); use "
     "recompute=selective or none, or ep_overlap=off"),
    ("ep_overlap_mtp", TINY_MOE.model_copy(update={"mtp_layers": 2}), wl(),
     Plan(pp=2, vpp=2, dp=2, ep=2, ep_overlap=True), 4,
     "ep_overlap=on supports at most 1 MTP module, the model has 2; use ep_overlap=off"),
    ("recompute_modules", GPT, wl(), Plan(dp=2, recompute_modules=("layernorm",)), 2,
     "recompute_modules= picks what selective recomputation repeats, but recompute=none; use "
     "recompute=selective or drop recompute_modules"),
    ("recompute_modules", GPT, wl(), Plan(dp=2, recompute="selective",
                                          recompute_modules=("mla_up_proj",)), 2,
     "recompute_modules=mla_up_proj needs a model with multi-head latent attention"),
    ("recompute_modules", GPT, wl(), Plan(dp=2, recompute="selective",
                                          recompute_modules=("moe_act",)), 2,
     "recompute_modules=moe_act needs a mixture-of-experts model"),
    ("offload_layers", GPT, wl(), Plan(dp=2, offload=24), 2,
     "offload=24 must be below the model's 24 layers (Megatron-Core keeps at least the last "
     "layer's activations on the device); use offload <= 23"),
    ("offload_pp", GPT, wl(), Plan(pp=2, offload=4), 2,
     "offload=4 needs pp=1 (Megatron-Core does not offload activations with pipeline "
     "parallelism); use pp=1 or offload=0"),
    ("offload_recompute", GPT, wl(), Plan(dp=2, offload=4, recompute="selective"), 2,
     "offload=4 cannot run with recompute=selective (Megatron-Core refuses activation "
     "offloading with recomputation); use recompute=none or offload=0"),
    ("dualpipe_pp", GPT, wl(60), Plan(pp=3, schedule="dualpipe"), 3,
     "schedule=dualpipe needs an even pp of at least 2 (micro-batches enter from both ends of "
     "the pipeline), got pp=3; nearest valid pp: 4"),
    ("dualpipe_pp", GPT, wl(), Plan(dp=2, schedule="dualpipe"), 2,
     "schedule=dualpipe needs an even pp of at least 2 (micro-batches enter from both ends of "
     "the pipeline), got pp=1; nearest valid pp: 2"),
    ("dualpipe_vpp", GPT, wl(), Plan(pp=2, vpp=2, schedule="dualpipe"), 2,
     "schedule=dualpipe holds two stages on each rank already and takes no virtual stages; "
     "use vpp=1 (got vpp=2)"),
    ("dualpipe_microbatches", GPT, wl(), Plan(pp=4, dp=2, mbs=2, schedule="dualpipe"), 8,
     "schedule=dualpipe needs an even number of micro-batches per replica, at least 2*pp = 8 "
     "(DualPipe splits them between the two directions), got 4; nearest valid mbs: 1"),
    ("dualpipe_microbatches", GPT, wl(5), Plan(pp=2, dp=1, schedule="dualpipe"), 2,
     "schedule=dualpipe needs an even number of micro-batches per replica, at least 2*pp = 4 "
     "(DualPipe splits them between the two directions), got 5; use a global batch that is an "
     "even multiple of dp*mbs = 1, at least 4"),
    ("dualpipe_ep_overlap", MIXTRAL, wl(), Plan(pp=2, ep=2, dp=2, ep_overlap=True,
                                                schedule="dualpipe"), 4,
     "schedule=dualpipe overlaps the expert all-to-all with the paired chunk itself; use "
     "ep_overlap=off"),
    ("ep_overlap_mtp", TINY_MOE.model_copy(update={"mtp_layers": 1}), wl(),
     Plan(dp=2, ep=2, ep_overlap=True), 2,
     "ep_overlap=on with an MTP module needs pipeline parallelism (Megatron-Core); use pp>1 "
     "with vpp>1, or ep_overlap=off"),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize(("key", "model", "workload", "plan", "devices", "message"), CASES, ids=IDS)
def test_rule_message(key: str, model: ModelSpec, workload: TrainingWorkload, plan: Plan,
                      devices: int, message: str) -> None:
    problems = plan_problems(model, workload, plan, devices)
    assert problems == [(key, message)]
    with pytest.raises(PlanError, match=f"^invalid plan: {re.escape(message)}$"):
        check_plan(model, workload, plan, devices)


def test_every_rule_is_covered() -> None:
    rules = {"device_count", "tp_heads", "tp_kv_heads", "tp_ffn", "pp_layers",
             "batch_divisibility", "interleave_microbatches", "stage_layers", "vpp_needs_pp",
             "vpp_layers", "cp_seq", "zero_pp", "ep_dense", "ep_experts", "ep_fold", "etp_ffn",
             "ep_overlap_dense", "ep_overlap_ep", "ep_overlap_vpp", "ep_overlap_recompute",
             "ep_overlap_mtp", "recompute_modules", "offload_layers", "offload_pp",
             "offload_recompute", "dualpipe_pp", "dualpipe_vpp", "dualpipe_microbatches",
             "dualpipe_ep_overlap"}
    assert {c[0] for c in CASES} == rules


def test_every_broken_rule_is_listed_and_the_first_is_raised() -> None:
    plan = Plan(tp=16, pp=32, dp=3, zero=2)
    keys = [k for k, _ in plan_problems(GPT, wl(16), plan, 8)]
    assert keys == ["device_count", "tp_heads", "pp_layers", "batch_divisibility", "zero_pp"]
    with pytest.raises(PlanError, match=r"^invalid plan: tp\*pp\*dp\*cp = 1536 must equal"):
        check_plan(GPT, wl(16), plan, 8)


def test_suggested_values_are_valid() -> None:
    """Each 'nearest valid' value above passes the rule it was suggested for."""
    for tp in (8, 12):
        assert not plan_problems(GPT, wl(), Plan(tp=tp), tp)
    for tp in (3, 6):
        assert not plan_problems(GQA, wl(), Plan(tp=tp), tp)
    for tp in (1, 2):
        assert not plan_problems(ODD_FFN, wl(), Plan(tp=tp), tp)
    for vpp in (4, 6):
        assert not plan_problems(GPT, wl(), Plan(pp=2, vpp=vpp, dp=4), 8)
    for vpp in (1, 3):
        assert not plan_problems(GPT, wl(), Plan(pp=2, vpp=vpp, stage_layers=(15, 9)), 2)
    assert not plan_problems(TINY_MOE, wl(), Plan(ep=1, etp=4, dp=4), 4)


@pytest.mark.parametrize(("plan", "message"), [
    ("tp=16", "tp=16 must divide the 24 attention heads"),
    ("tp=2,dp=2", "must equal the 8 devices"),
])
def test_api_evaluate_raises_the_same_errors(plan: str, message: str) -> None:
    devices = 16 if plan == "tp=16" else 8
    with pytest.raises(PlanError, match=re.escape(message)):
        evaluate(GPT, "dgx-a100", wl(), plan, devices=devices)


# ----- the command line ------------------------------------------------------------------


RUNNER = cli_runner()
ODD_FFN_TOML = """name = "odd-ffn"
num_layers = 4
hidden_size = 512
num_attention_heads = 8
ffn_hidden_size = 1002
vocab_size = 1000
"""


def evaluate_cli(*, model: str = "narayanan-1.7b", gpus: int = 8, gb: int = 16,
                 plan: str = "") -> tuple[int, str, str]:
    result = RUNNER.invoke(app, ["evaluate", "--model", model, "--cluster", "dgx-a100",
                                 "--gpus", str(gpus), "--global-batch", str(gb),
                                 "--seq-len", "2048", "--plan", plan])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    # tp*pp*dp*cp != devices (dp given explicitly; without it dp is derived)
    ({"plan": "tp=2,dp=2"}, "tp*pp*dp*cp = 2*1*2*1 = 4 must equal the 8 devices; with tp=2, "
                            "pp=1, cp=1 use dp=4"),
    # tp does not divide the heads
    ({"plan": "tp=16", "gpus": 16}, "tp=16 must divide the 24 attention heads; nearest valid "
                                    "tp: 8 or 12"),
    # pp above the layers
    ({"plan": "pp=32", "gpus": 32}, "pp=32 exceeds the 24 layers; use pp <= 24"),
    # global batch not divisible by dp*mbs
    ({"gb": 12}, "global batch 12 is not divisible by dp*mbs = 8*1 = 8; choose a global batch "
                 "that is a multiple of dp=8, e.g. 8 or 16"),
    ({"plan": "dp=8,mbs=4"}, "global batch 16 is not divisible by dp*mbs = 8*4 = 32; nearest "
                             "valid mbs: 1 or 2"),
    # vpp does not divide the layers per stage
    ({"plan": "pp=2,vpp=5"}, "vpp=5 must divide the layers per stage (12/12); nearest valid "
                             "vpp: 4 or 6 (or give all 10 virtual-stage counts with layers=)"),
    # ep_overlap on a pipeline without interleaving
    ({"model": "mixtral-8x7b", "plan": "pp=2,ep=4,ep_overlap=on"},
     "ep_overlap=on with pp=2 needs the interleaved schedule (Megatron-Core's combined 1F1B "
     "pairs micro-batches across virtual stages); use vpp>1, pp=1, or ep_overlap=off"),
    # activation offloading with pipeline parallelism
    ({"plan": "pp=2,offload=4"}, "offload=4 needs pp=1 (Megatron-Core does not offload "
                                 "activations with pipeline parallelism); use pp=1 or offload=0"),
])
def test_cli_exit_2_with_one_line(args: dict[str, object], message: str) -> None:
    code, stdout, stderr = evaluate_cli(**args)  # type: ignore[arg-type]
    assert code == 2
    assert stderr == f"error: invalid plan: {message}\n"
    assert "Traceback" not in stdout + stderr and stdout == ""


def test_cli_tp_not_dividing_the_ffn(tmp_path: Path) -> None:
    path = tmp_path / "odd-ffn.toml"
    path.write_text(ODD_FFN_TOML, encoding="utf-8")
    code, stdout, stderr = evaluate_cli(model=str(path), gpus=4, gb=4, plan="tp=4")
    assert code == 2 and stdout == ""
    assert stderr == ("error: invalid plan: tp=4 must divide the FFN size 1002; nearest valid tp: "
                      "1 or 2\n")


def test_cli_underivable_dp_is_a_plan_error_too() -> None:
    code, stdout, stderr = evaluate_cli(plan="tp=3")
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: tp*pp*cp = 3 does not divide the 8 devices")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


# ----- out of memory is not an error -----------------------------------------------------
def test_plan_that_does_not_fit_still_evaluates() -> None:
    est = evaluate("gpt3-175b", "dgx-a100", wl(64), Plan(tp=8), devices=8)
    assert not est.fits
    assert est.over_memory_gib > 0
    assert est.over_memory_gib == pytest.approx(est.peak_memory_gib - est.capacity_gib)
    assert est.step_time_s > 0 and est.peak_memory_gib > est.capacity_gib


def test_plan_that_fits_has_no_overshoot() -> None:
    est = evaluate("narayanan-1.7b", "dgx-a100", wl(16), Plan(dp=8), devices=8)
    assert est.fits and est.over_memory_gib == 0 and est.peak_memory_gib <= est.capacity_gib


def test_cli_plan_that_does_not_fit_exits_0() -> None:
    result = RUNNER.invoke(app, ["evaluate", "--model", "gpt3-175b", "--cluster", "dgx-a100",
                                 "--gpus", "8", "--global-batch", "64", "--seq-len", "2048",
                                 "--plan", "tp=8", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["over_memory_gib"] > 0


def test_explicit_even_virtual_layout_scores_like_the_default() -> None:
    import planner
    from planner.api import evaluate

    wl = planner.TrainingWorkload(global_batch_size=64, seq_len=2048)
    even = evaluate("narayanan-1.7b", "dgx-a100", wl, "tp=2,pp=4,vpp=2,mbs=1", devices=16)
    layout = evaluate("narayanan-1.7b", "dgx-a100", wl,
                      "tp=2,pp=4,vpp=2,mbs=1,layers=" + "/".join(["3"] * 8), devices=16)
    assert layout.step_time_s == pytest.approx(even.step_time_s, rel=1e-12)
    # 4/2 chunks on stage 0 (6 blocks, largest chunk 4/6) instead of 3/3: a larger bubble.
    skew = evaluate("narayanan-1.7b", "dgx-a100", wl,
                    "tp=2,pp=4,vpp=2,mbs=1,layers=4/3/3/3/2/3/3/3", devices=16)
    cmax = max(s.time_per_microbatch_s for s in skew.stages)
    assert skew.breakdown["bubble"] == pytest.approx(3 * cmax * 4 / 6, rel=1e-9)
