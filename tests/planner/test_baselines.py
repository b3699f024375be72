"""Published baselines: every file loads, names real presets, and the checks flag exactly the
configurations whose numbers do not add up (seed 000's MT-NLG and 1T layouts) or that meshplan
cannot express; lookup by request."""

from __future__ import annotations

import pytest

from planner import Plan, PlanError, Recompute
from planner.baselines import (
    Baseline,
    baselines_for,
    inconsistencies,
    list_baseline_models,
    load_baselines,
    matching_baselines,
    parse_baselines,
    problems,
)
from planner.errors import SpecError
from planner.presets import list_presets, load_model

ALL = [(m, b) for m in list_baseline_models() for b in load_baselines(m)]
NARAYANAN = [m for m in list_presets("model") if m.startswith("narayanan-")]

# NVIDIA's 256-GPU GB200 runs are spread evenly over 4 NVL72 racks of 64 GPUs (whole 4-GPU
# trays: ClusterSpec.job_view) and flag nothing; their uneven virtual stages are written out
# with layers= (the summary gives no layout).
EXPECTED_PROBLEMS: dict[tuple[str, str], set[str]] = {
    ("mt-nlg-530b", "seed000"): {"device_count"},
    ("megatron-1t", "seed000"): {"device_count"},
}


def _get(model: str, id_: str) -> Baseline:
    return next(b for b in load_baselines(model) if b.id == id_)


# ----- the files ---------------------------------------------------------------------------------

def test_every_file_loads_and_names_presets() -> None:
    models, clusters = set(list_presets("model")), set(list_presets("cluster"))
    assert list_baseline_models(), "no baselines files found"
    for name in list_baseline_models():
        entries = load_baselines(name)
        assert entries, name
        assert name in models, f"baselines file '{name}.toml' is not named after a model preset"
        assert len({b.id for b in entries}) == len(entries)
        for b in entries:
            assert b.cluster in clusters, (name, b.id, b.cluster)
            assert b.source and b.label


def test_coverage() -> None:
    """Every model with a published configuration has a file (the Narayanan sizes, the big
    named runs, the seeds' models and the NVIDIA MoE benchmarks)."""
    want = {*NARAYANAN, "mt-nlg-530b", "megatron-1t", "gpt3-175b", "bloom-176b", "megatron-gpt-8.3b",
            "palm-540b", "gopher-280b", "llama3-405b", "seed001-dense-4l", "seed002-moe-61l",
            "seed004-moe-4l", "mixtral-8x7b", "deepseek-v3", "qwen3-235b-a22b"}
    assert want <= set(list_baseline_models())
    assert len(NARAYANAN) == 10


def test_no_file_means_no_baselines() -> None:
    assert load_baselines("llama3-8b") == []
    assert load_baselines("no-such-model") == []
    assert matching_baselines("no-such-model", cluster="dgx-a100", gpus=8, global_batch=8,
                              seq_len=2048) == []


def test_plans_parse_and_keep_dp_as_stated() -> None:
    for _, b in ALL:
        fields = b.plan_fields()
        plan = b.to_plan()
        if "dp" in fields:
            assert plan.dp == fields["dp"], b.id
        else:
            assert plan.devices == b.gpus, b.id


# ----- the checks --------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "b"), ALL, ids=[f"{m}:{b.id}" for m, b in ALL])
def test_problems_are_exactly_the_known_ones(model: str, b: Baseline) -> None:
    keys = {k for k, _ in problems(b, load_model(model))}
    assert keys == EXPECTED_PROBLEMS.get((model, b.id), set()), inconsistencies(b, model)


def test_seed000_mtnlg_flagged_with_both_numbers() -> None:
    b = _get("mt-nlg-530b", "seed000")
    assert (b.gpus, b.to_plan().devices) == (17920, 3360)
    msgs = inconsistencies(b, load_model("mt-nlg-530b"))
    assert any("3360" in m and "17920" in m for m in msgs), msgs


def test_seed000_1t_flagged_with_both_numbers() -> None:
    b = _get("megatron-1t", "seed000")
    assert (b.gpus, b.to_plan().devices) == (3360, 512)
    msgs = inconsistencies(b, "megatron-1t")
    assert any("512" in m and "3360" in m for m in msgs), msgs


def test_the_published_runs_behind_seed000_are_consistent() -> None:
    """The layouts seed 000 garbles: MT-NLG on 280 nodes (DP=8) and on 420 nodes (DP=12 =
    3360 GPUs), and the 1T model on 512 GPUs (Korthikanti) and 3072 GPUs (Narayanan)."""
    for model, id_, gpus in (("mt-nlg-530b", "smith-280-nodes", 2240),
                             ("mt-nlg-530b", "smith-420-nodes", 3360),
                             ("megatron-1t", "korthikanti-sp-selective", 512),
                             ("megatron-1t", "narayanan-table1", 3072)):
        b = _get(model, id_)
        assert b.gpus == gpus and b.to_plan().devices == gpus
        assert inconsistencies(b, model) == []


@pytest.mark.parametrize("model", NARAYANAN)
def test_narayanan_table1_rows_are_consistent(model: str) -> None:
    b = _get(model, "table1")
    assert b.label == "Narayanan et al. 2021 Table 1"
    assert (b.cluster, b.seq_len, b.dtype) == ("dgx-a100", 2048, "fp16")
    plan = b.to_plan()
    assert plan.recompute == Recompute.FULL and not plan.attn.fused
    assert "mbs" not in b.plan_fields()        # not given in Table 1
    assert b.published_tflops_per_gpu and b.published_hfu
    assert inconsistencies(b, load_model(model)) == []


def test_table1_values() -> None:
    """Spot checks against Narayanan et al. 2021 Table 1."""
    rows = {m: _get(m, "table1") for m in NARAYANAN}
    b = rows["narayanan-145b"]
    assert (b.gpus, b.global_batch, b.to_plan().tp, b.to_plan().pp, b.to_plan().dp) == (1536, 2304, 8, 8, 24)
    assert (b.published_tflops_per_gpu, b.published_hfu) == (148.0, 0.47)
    b = rows["narayanan-1t"]
    assert (b.gpus, b.global_batch, b.to_plan().pp, b.to_plan().dp) == (3072, 3072, 64, 6)
    assert b.published_tflops_per_gpu == 163.0
    assert rows["narayanan-1.7b"].to_plan().tp == 1 and rows["narayanan-1.7b"].gpus == 32


def test_device_count_message_without_stated_dp() -> None:
    """With dp left out it is derived; when tp*pp*cp does not divide the stated GPUs the
    device count is flagged with both numbers."""
    b = Baseline(id="x", label="x", source="x", cluster="dgx-a100", gpus=3360, global_batch=512,
                 seq_len=2048, plan="tp=8,pp=64")
    with pytest.raises(PlanError, match="512 does not divide the 3360"):
        b.to_plan()
    assert [k for k, _ in problems(b, "megatron-1t")] == ["device_count"]
    ok = b.model_copy(update={"gpus": 3072, "global_batch": 3072})
    assert ok.to_plan().dp == 6 and inconsistencies(ok, "megatron-1t") == []


def test_other_rules_are_reported() -> None:
    b = Baseline(id="x", label="x", source="x", cluster="dgx-a100", gpus=1540, global_batch=2305,
                 seq_len=2048, plan="tp=7,pp=11,dp=20")
    keys = {k for k, _ in problems(b, "narayanan-145b")}
    assert {"tp_heads", "batch_divisibility", "gpus_nodes"} <= keys
    msg = next(m for k, m in problems(b, "narayanan-145b") if k == "gpus_nodes")
    assert "1540" in msg and "8-device nodes" in msg and "1536" in msg and "1544" in msg


def test_gpus_on_a_cluster_allocated_in_trays() -> None:
    """gb200-nvl72 hands out 4-GPU trays: 256 GPUs spread as 4 racks of 64 pass; 260 GPUs
    (65 trays) cannot spread evenly over the fewest 4 racks and are flagged with the numbers
    to use instead."""
    b = Baseline(id="x", label="x", source="x", cluster="gb200-nvl72", gpus=256, global_batch=256,
                 seq_len=4096, plan="tp=1,pp=1,dp=256")
    assert "gpus_nodes" not in {k for k, _ in problems(b, "llama3-8b")}
    odd = b.model_copy(update={"gpus": 260, "plan": "tp=1,pp=1,dp=260", "global_batch": 260})
    msg = next(m for k, m in problems(odd, "llama3-8b") if k == "gpus_nodes")
    assert "260 devices do not spread evenly" in msg and "use 256 or 272" in msg


def test_metric_checks() -> None:
    base = _get("narayanan-145b", "table1")
    bad_tflops = base.model_copy(update={"published_tflops_per_gpu": 200.0})
    assert [k for k, _ in problems(bad_tflops, "narayanan-145b")] == ["metrics"]
    bad_rate = base.model_copy(update={"published_step_time_s": 10.0, "published_tokens_per_s": 1e6})
    assert "metrics" in {k for k, _ in problems(bad_rate, "narayanan-145b")}
    good_rate = base.model_copy(update={"published_step_time_s": 10.0,
                                        "published_tokens_per_s": 2304 * 2048 / 10.0})
    assert inconsistencies(good_rate, "narayanan-145b") == []
    mfu_over_hfu = base.model_copy(update={"published_mfu": 0.6, "published_tflops_per_gpu": None})
    assert [k for k, _ in problems(mfu_over_hfu, "narayanan-145b")] == ["metrics"]


def test_seed_layouts() -> None:
    tp8, pp2, both = (_get("seed004-moe-4l", i).to_plan()
                      for i in ("baseline-tp8", "baseline-pp2", "baseline-tp8-pp2"))
    assert (tp8.tp, tp8.pp, tp8.dp) == (8, 1, 2)      # TP=8 alone on 16 GPUs implies dp=2
    assert (pp2.tp, pp2.pp, pp2.dp) == (1, 2, 8)
    assert (both.tp, both.pp, both.dp) == (8, 2, 1)
    a, b = (_get("seed001-dense-4l", i).to_plan() for i in ("baseline-tp8-pp2", "proposed-4x4"))
    assert (a.tp, a.pp, b.tp, b.pp) == (8, 2, 4, 4)
    eps = sorted((x.gpus, x.to_plan().ep) for x in load_baselines("seed002-moe-61l"))
    assert (16, 16) in eps and (64, 64) in eps and (128, 128) in eps and (128, 8) in eps


# ----- lookup ------------------------------------------------------------------------------------

def test_matching_is_exact() -> None:
    hits = matching_baselines("narayanan-145b", cluster="dgx-a100", gpus=1536, global_batch=2304,
                              seq_len=2048)
    assert [b.id for b in hits] == ["table1"]
    for change in ({"gpus": 1024}, {"global_batch": 2048}, {"seq_len": 4096}, {"cluster": "dgx-h100"}):
        req = {"cluster": "dgx-a100", "gpus": 1536, "global_batch": 2304, "seq_len": 2048, **change}
        assert matching_baselines("narayanan-145b", **req) == []  # type: ignore[arg-type]
    hits = matching_baselines("llama3-405b", cluster="dgx-h100", gpus=16384, global_batch=2048,
                              seq_len=8192)
    assert [b.id for b in hits] == ["table4-8k-16384gpu"]


def test_baselines_for_filters_by_cluster() -> None:
    allq = baselines_for("qwen3-235b-a22b")
    b200 = baselines_for("qwen3-235b-a22b", cluster="dgx-b200")
    assert b200 and len(b200) < len(allq) and all(b.cluster == "dgx-b200" for b in b200)
    assert baselines_for("gpt3-175b", cluster="tpu-v4-pod") == []


# ----- the file format ---------------------------------------------------------------------------

_GOOD = {"id": "a", "label": "L", "source": "S", "cluster": "dgx-a100", "gpus": 8,
         "global_batch": 8, "seq_len": 2048, "plan": "tp=8"}


def test_parse_accepts_a_minimal_entry() -> None:
    (b,) = parse_baselines({"baseline": [_GOOD]})
    assert b.to_plan() == Plan(tp=8, dp=1)
    assert b.dtype is None and b.notes == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"baseline": [{**_GOOD, "gpu": 8}]}, "field 'gpu': Extra inputs are not permitted"),
        ({"baseline": [{k: v for k, v in _GOOD.items() if k != "seq_len"}]}, "field 'seq_len'"),
        ({"baseline": [{**_GOOD, "plan": "tp=8,tq=2"}]}, "unknown plan key 'tq'"),
        ({"baseline": [{**_GOOD, "cluster": "dgx-a1000"}]}, "unknown cluster preset 'dgx-a1000'"),
        ({"baseline": [_GOOD, _GOOD]}, "id 'a' is used twice"),
        ({"baseline": [{**_GOOD, "published_mfu": 46.2}]}, "field 'published_mfu'"),
        ({"baseline": [{**_GOOD, "dtype": "fp12"}]}, "field 'dtype'"),
        ({"baselines": [_GOOD]}, "unknown top-level key"),
        ({"baseline": []}, "no \\[\\[baseline\\]\\] tables"),
    ],
)
def test_parse_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_baselines(data, where="test file")


def test_baseline_is_frozen() -> None:
    b = _get("bloom-176b", "bigscience-tr11")
    with pytest.raises(Exception):
        b.gpus = 1  # type: ignore[misc]
    assert b.to_plan().stage_layers == (5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 5)
