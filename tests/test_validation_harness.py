"""benchmarks/records.py and the validation harnesses on records of sources they do not know.

The harnesses are also run on published runs that are not in the repository (other papers,
other hardware), so a record of any source must map from what it states, and one that cannot
be evaluated must be listed with its reason rather than stop the table.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from planner.errors import PlannerError

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


records = _load("records")
vp = _load("validate_published")
vm = _load("validate_moe")


def record(**over: Any) -> dict[str, Any]:
    """A Llama-2-70B-shaped run (80 x 8192, 64 heads / 8 KV, SwiGLU 28672, 32000 vocab)."""
    base = {
        "id": "other_llama2_70b", "source": "Some paper 2024, Table 3", "source_ref": "",
        "workload": "pretraining", "precision": "bf16",
        "model": {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8,
                  "ffn_hidden": 28672, "vocab": 32000, "seq_len": 4096, "params_B": 68.98},
        "hardware": {"gpu": "NVIDIA H100 SXM5 80GB", "gpus": 64, "gpus_per_node": 8,
                     "intra_node_link": "NVLink4", "inter_node_link": "8x 400 Gb/s NDR per node"},
        "parallel": {"tp": 8, "pp": 2, "dp": 4, "zero": "ZeRO-1", "recompute": "selective",
                     "sp": True},
        "batch": {"micro": 1, "global_seqs": 256, "global": 256},
        "measured": {"tokens_per_s_per_gpu": 1000.0},
        "notes": "",
    }
    return _merged(base, over)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s entries: a dict merged into base's dict of that key, else set."""
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


@pytest.mark.parametrize(("gpu", "per_node", "want"), [
    ("NVIDIA H200 SXM 141GB", 8, "dgx-h200"),
    ("NVIDIA H100 80GB HBM3", 8, "dgx-h100"),
    ("NVIDIA A100-SXM4-40GB", 8, "dgx-a100-40gb"),
    ("NVIDIA A100 80GB", 8, "dgx-a100"),
    ("NVIDIA H800 80GB", 8, "hgx-h800"),
    ("NVIDIA A800-SXM4-80GB", 8, "hgx-a800"),
    ("NVIDIA V100 32GB (DGX-1)", 8, "v100x4"),
    ("NVIDIA V100 (DGX-2)", 16, "dgx2-v100"),
    ("Google TPU v4", 4, "tpu-v4-pod"),
    ("TPU v3", 4, "tpu-v3-pod"),
    ("Google Cloud TPU v5p", 4, "tpu-v5p-pod"),
    ("TPU v5e (v5litepod-256)", 8, "tpu-v5e-pod"),
    ("Google TPU v6e (Trillium)", 4, "tpu-v6e-pod"),
    ("Google TPU7x (Ironwood)", 128, "tpu7x-pod"),
    ("TPU v7x", 4, "tpu7x-pod"),
    ("AMD Instinct MI300X", 8, "mi300x-platform"),
    ("AMD Instinct MI250X (Frontier)", 8, "frontier-mi250x"),
    ("AMD MI250X GCD", 8, "frontier-mi250x"),
    ("AMD Instinct MI355X OAM", 8, "mi355x-platform"),
    ("NVIDIA GB200 (NVL72 rack)", 4, "gb200-nvl72"),
    ("NVIDIA GB300 (NVL72 rack)", 4, "gb300-nvl72"),
    ("NVIDIA B300 (DGX-B300)", 8, "dgx-b300"),
    ("NVIDIA B200 (DGX-B200)", 8, "dgx-b200"),
])
def test_device_names_map_to_presets(gpu: str, per_node: int, want: str) -> None:
    rec = record(hardware={"gpu": gpu, "gpus_per_node": per_node})
    assert records.cluster_name(rec) == want


def test_unknown_device_is_reported_not_guessed() -> None:
    with pytest.raises(records.UnmappedRecord, match="Gaudi"):
        records.cluster_name(record(hardware={"gpu": "Intel Gaudi 2"}))


def test_mi250_is_not_read_as_mi250x() -> None:
    """The MI250 (104 CUs per GCD) contains the MI250X preset's name minus the X: reported."""
    with pytest.raises(records.UnmappedRecord, match="MI250 .*104 CUs"):
        records.cluster_name(record(hardware={"gpu": "AMD Instinct MI250"}))


@pytest.mark.parametrize(("text", "per_node", "want"), [
    ("8x 200 Gb/s HDR InfiniBand per node", 8, 25e9),
    ("1600 Gbps node-node (RoCE)", 8, 25e9),
    ("400 Gbps EFA", 8, 6.25e9),                  # AWS p4d: one 400 Gb/s network per instance
    ("3.2 Tbps EFAv2 per instance", 8, 50e9),
    ("50 GB/s per GPU", 8, 50e9),                 # bytes, per device
    ("8 x 400Gb/s NDR", 8, 50e9),
    ("not stated", 8, None),
    (None, 8, None),
])
def test_inter_node_bandwidth_read_from_the_record(text: str | None, per_node: int,
                                                   want: float | None) -> None:
    assert records.inter_node_bytes_per_s(text, per_node) == want


def test_cluster_takes_the_record_node_size_and_network() -> None:
    c = records.cluster_spec(record(hardware={"gpu": "NVIDIA A100 40GB",
                                              "inter_node_link": "400 Gbps EFA"}))
    assert c.device.name == "a100-sxm4-40gb" and c.devices_per_node == 8
    assert c.inter_node.bandwidth_bytes_per_s == 6.25e9
    # a multi-host NVLink domain keeps its size: GB200 records give the 4 GPUs of a host
    nvl = records.cluster_spec(record(hardware={"gpu": "NVIDIA GB200 (NVL72 rack)",
                                                "gpus_per_node": 4}))
    assert nvl.devices_per_node == 72


@pytest.mark.parametrize(("value", "stage"), [
    ("ZeRO-1", 1), ("zero2", 2), ("FSDP FULL_SHARD (ZeRO-3)", 3), ("SHARD_GRAD_OP", 2),
    ("Megatron distributed optimizer", 1), (2, 2), (None, 0), ("none", 0), (True, 3),
])
def test_zero_stage(value: Any, stage: int) -> None:
    assert records.zero_stage(value) == stage


def test_generic_model_picks_the_variant_matching_the_stated_parameters() -> None:
    spec = records.generic_model(record())
    assert spec.activation.gated and spec.kv_heads == 8 and not spec.tied_embeddings
    assert abs(spec.params - 68.98e9) / 68.98e9 < 0.01
    gpt = records.generic_model(record(model={"heads": 96, "kv_heads": None, "hidden": 12288,
                                              "layers": 96, "ffn_hidden": 49152, "vocab": 50257,
                                              "params_B": None}))
    assert not gpt.activation.gated           # 4h MLP, no stated count: GELU


def test_generic_model_reads_a_stated_sliding_window_and_only_a_stated_one() -> None:
    """A window stated as data becomes ModelSpec fields (less attention work at long
    sequences); one named only in the notes is not read, and the blocks attend globally."""
    full = records.generic_model(record(notes="5:1 local (sliding window 1024):global"))
    assert full.sliding_window is None and full.global_attention_every is None
    windowed = records.generic_model(record(model={"sliding_window": 1024,
                                                   "global_attention_every": 6}))
    assert (windowed.sliding_window, windowed.global_attention_every) == (1024, 6)
    s = 32768
    assert windowed.attended_context(s) < full.attended_context(s)
    # the Gemma 3 records of the TPU v6e data state it (MaxText's gemma3-12b.yml)
    data = json.loads((ROOT / "benchmarks/data/maxtext_tpu_v6e_runs.json").read_text())
    gemma = [r for r in data if "gemma3" in r["id"]]
    assert gemma and all(records.generic_model(r).sliding_window == 1024 for r in gemma)


@pytest.mark.parametrize(("source", "note", "want"), [
    ("Smith et al. 2022 (MT-NLG)", "", "unfused"),
    ("Some paper 2023", "attn_impl: flash", "flash1"),
    ("Some paper 2025", "", "flash"),
    ("Some paper 2024", "no flash attention (ALiBi)", "unfused"),
    ("Some paper 2024", "trained without FlashAttention", "unfused"),
    ("Some paper 2024", "use_flash_attn: false", "unfused"),
    ("Some paper 2024", "flash_attention=False", "unfused"),
    ("Some paper 2024", "attention: unfused softmax", "unfused"),
    ("Some paper 2024", "flash_attention: true", "flash"),
])
def test_attention_kernel_by_source_year(source: str, note: str, want: str) -> None:
    rec = record(source=source, notes=note)
    assert records.attention_kernel(rec).value == want


def test_harness_runs_records_of_unknown_sources(tmp_path: Path) -> None:
    data = [record(), record(id="other_gaudi2", hardware={"gpu": "Intel Gaudi 2"}),
            record(id="other_tpu", hardware={"gpu": "TPU v4", "gpus": 64, "gpus_per_node": 4})]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(data))
    rows = vp.run(path, None)
    done = [r for r in rows if "skipped" not in r]
    assert [r["id"] for r in done] == ["other_llama2_70b", "other_tpu"]
    assert all(r["predicted_s"] > 0 for r in done)
    table = vp.render(rows)
    assert "Not evaluated (1; not in the means)" in table and "Gaudi 2" in table
    assert "| Some paper 2024 | 2 |" in table
    # one source over two devices: a per-device summary too, and the count of fast predictions
    assert "| device | runs | mean abs error | max abs error |" in table
    assert "| h100-sxm5-80gb, bf16 | 1 |" in table and "| tpu-v4, bf16 | 1 |" in table
    fast = sum(r["error"] < 0 for r in done)
    assert f"{fast} of 2 predictions are faster than the published step time." in table


def test_out_of_sample_mpt_rows_are_new_and_all_evaluate() -> None:
    """benchmarks/data/mpt_more_runs.json: the rows of MosaicML's benchmark tables that are not
    among the calibration records (H100 BF16 and FP8, the rest of A100 40/80 GB), all mapped."""
    ROOT_DATA = ROOT / "benchmarks" / "data"
    more = json.loads((ROOT_DATA / "mpt_more_runs.json").read_text())
    seen = {r["id"] for r in json.loads((ROOT_DATA / "published_runs.json").read_text())}
    ids = [r["id"] for r in more]
    assert len(ids) == len(set(ids)) == 138 and not set(ids) & seen
    for r in more:   # the table's own invariant: micro x accumulation x GPUs >= global batch
        b = r["batch"]
        assert b["micro"] * b["grad_accum"] * r["hardware"]["gpus"] >= b["global"]
    rows = vp.run(ROOT_DATA / "mpt_more_runs.json", None)
    assert not [r for r in rows if "skipped" in r]
    assert {r["device"] for r in rows} == {"a100-sxm4-40gb, bf16", "a100-sxm4-80gb, bf16",
                                            "h100-sxm5-80gb, bf16", "h100-sxm5-80gb, fp8"}


def test_moe_harness_builds_models_without_a_preset(tmp_path: Path) -> None:
    moe = record(id="other_moe_8x22b", model={
        "layers": 56, "hidden": 6144, "heads": 48, "kv_heads": 8, "ffn_hidden": 16384,
        "vocab": 32768, "seq_len": 4096, "params_B": None,
        "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 16384}},
        parallel={"tp": 2, "pp": 4, "dp": 8, "ep": 8, "cp": 1, "vpp": 1, "fsdp": None},
        batch={"micro": 1, "global": 256, "global_seqs": 256})
    mla = record(id="other_mla", model={**moe["model"], "attention": "MLA"}, parallel=moe["parallel"],
                 batch=moe["batch"])
    path = tmp_path / "moe.json"
    path.write_text(json.dumps([moe, mla]))
    rows = vm.run(path, None)
    assert rows[0]["predicted_s"] > 0
    assert "MLA attention without its dimensions" in rows[1]["skipped"]


vb = _load("validate_baselines")


def test_baselines_table_scores_each_baseline_as_search_does() -> None:
    from planner.api import evaluate
    from planner.baselines import load_baselines
    from planner.presets import load_cluster, load_model

    rows = vb.run("gpt3-175b:korthikanti")
    assert [r["key"] for r in rows] == ["gpt3-175b:korthikanti-sp-selective",
                                        "gpt3-175b:korthikanti-full-recompute"]
    for r in rows:
        b = next(x for x in load_baselines("gpt3-175b") if f"gpt3-175b:{x.id}" == r["key"])
        est = evaluate(load_model("gpt3-175b"), load_cluster(b.cluster), b.workload(), b.to_plan(),
                       devices=b.gpus)
        assert r["predicted_s"] == est.step_time_s
        assert r["error"] == pytest.approx(est.step_time_s / b.published_step_time_s - 1)
    assert "| all dense | 2 |" in vb.render(rows)


def test_baselines_published_step_from_tokens_per_s() -> None:
    from planner.baselines import load_baselines

    b = next(x for x in load_baselines("qwen3-30b-a3b") if x.published_step_time_s is None)
    assert b.published_tokens_per_s_per_gpu is not None
    want = b.global_batch * b.seq_len / (b.published_tokens_per_s_per_gpu * b.gpus)
    assert vb.published_step_s(b) == pytest.approx(want)
    # seeds' claims are not measurements: left to seeds_tables.py
    assert not any(r["key"].startswith("seed") or ":seed" in r["key"] for r in vb.run("seed"))


@pytest.mark.parametrize(("layers", "pp", "vpp", "want"), [
    (126, 8, 8, (1,) + (2,) * 62 + (1,)),     # Llama 3.1 405B: (126 + 2) / 64 = 2 per chunk
    (126, 16, 4, (1,) + (2,) * 62 + (1,)),
    (94, 8, 3, (3,) + (4,) * 22 + (3,)),      # Qwen3-235B: (94 + 2) / 24 = 4
    (61, 4, 2, (8,) * 5 + (7,) * 3),          # neither splits: as even as possible
    (128, 8, 8, None), (126, 7, 1, None),     # even, or not interleaved
])
def test_interleaved_layout(layers: int, pp: int, vpp: int, want: tuple[int, ...] | None) -> None:
    got = records.interleaved_layout(layers, pp, vpp)
    assert got == want
    if got is not None:
        assert sum(got) == layers and len(got) == pp * vpp


def test_uneven_interleaved_record_is_evaluated_with_megatron_layout(tmp_path: Path) -> None:
    """A Llama-3.1-405B run at pp=8, vpp=8 (NVIDIA's recipes) would be an invalid even plan
    (126 blocks over 64 chunks); the harness lays it out as Megatron-Core does and scores it."""
    rec = record(id="other_llama31_405b", model={
        "layers": 126, "hidden": 16384, "heads": 128, "kv_heads": 8, "ffn_hidden": 53248,
        "vocab": 128256, "seq_len": 8192, "params_B": 405.9},
        hardware={"gpus": 1024}, batch={"micro": 1, "global": 512, "global_seqs": 512},
        parallel={"tp": 8, "pp": 8, "dp": 8, "cp": 2, "vpp": 8, "zero": "ZeRO-1",
                  "recompute": "none", "sp": True})
    fields = vp.plan_fields(rec)
    assert fields["stage_layers"] == (1,) + (2,) * 62 + (1,)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([rec]))
    (row,) = vp.run(path, None)
    assert "skipped" not in row and row["predicted_s"] > 0


def test_mpt_models_have_the_tables_parameter_counts() -> None:
    """MosaicML's tables give each run's NumParams; the architecture the harness builds for MPT
    (learned positions sized to the sequence, linear biases, tied embeddings: MPTConfig's
    defaults) must count exactly that many parameters, for every MPT row in both data files."""
    data = ROOT / "benchmarks" / "data"
    runs = [r for f in ("published_runs.json", "mpt_more_runs.json")
            for r in json.loads((data / f).read_text()) if r["id"].startswith("mpt_")]
    assert len(runs) == 201
    for r in runs:
        assert vp.model_for(r).params == r["model"]["params"], r["id"]


def test_a_precision_meshplan_does_not_model_is_listed_not_read_as_bf16(tmp_path: Path) -> None:
    """MXFP4 (or int8) training is not a meshplan number format: the record is listed with the
    reason instead of being scored as bf16; NVFP4 is meshplan's fp4 and is scored as such."""
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([record(precision="MXFP4"), record(id="x_fp8", precision="FP8-CS"),
                                record(id="x_fp4", precision="NVFP4")]))
    rows = vp.run(path, None)
    assert "precision 'MXFP4' is not modelled" in rows[0]["skipped"]
    assert "skipped" not in rows[1] and rows[1]["device"].endswith("fp8")
    assert "skipped" not in rows[2] and rows[2]["device"].endswith("fp4")


def test_nvidia_out_of_sample_runs_are_new_and_evaluate() -> None:
    """benchmarks/data/nemo_dense_runs.json and nemo_moe_more_runs.json: runs of NVIDIA's
    Megatron-Bridge performance summaries that the calibration records do not hold; every one
    is scored, the NVFP4 rows as fp4."""
    data = ROOT / "benchmarks" / "data"
    dense = json.loads((data / "nemo_dense_runs.json").read_text())
    moe = json.loads((data / "nemo_moe_more_runs.json").read_text())
    known = {r["id"] for r in json.loads((data / "moe_runs.json").read_text())}
    ids = [r["id"] for r in dense + moe]
    assert len(ids) == len(set(ids)) and not set(ids) & known
    _assert_table_invariants(dense + moe)
    _assert_all_scored(data / "nemo_dense_runs.json", dense)
    assert not [r for r in vm.run(data / "nemo_moe_more_runs.json", None) if "skipped" in r]


def _assert_table_invariants(recs: list[dict]) -> None:
    """The tables' own invariants: the parallel sizes multiply to the GPUs, and GA = GBS /
    (DP x MBS)."""
    for r in recs:
        p, b = r["parallel"], r["batch"]
        assert p["tp"] * p["pp"] * p["dp"] * (p.get("cp") or 1) == r["hardware"]["gpus"], r["id"]
        assert b["global"] == b["grad_accum"] * p["dp"] * b["micro"], r["id"]


def _assert_all_scored(path: Path, recs: list[dict]) -> None:
    """Every dense record of `path` is scored, and exactly the NVFP4 ones in fp4."""
    rows = vp.run(path, None)
    assert not [r for r in rows if "skipped" in r]
    fp4 = [r for r in rows if r["device"].endswith("fp4")]
    assert fp4 and len(fp4) == sum(r["precision"] == "NVFP4" for r in recs)


def test_blackwell_ultra_runs_map_to_their_presets_and_evaluate() -> None:
    """benchmarks/data/nemo_blackwell_ultra_*_runs.json: the GB300 and B300 rows of the same
    summaries, scored on the gb300/b300 presets (not B200/GB200's), NVFP4 rows listed; a GB300
    DeepSeek-V3 preset row takes the preset's EP overlap and its (pp 2, vpp 8) layout."""
    data = ROOT / "benchmarks" / "data"
    dense = json.loads((data / "nemo_blackwell_ultra_dense_runs.json").read_text())
    moe = json.loads((data / "nemo_blackwell_ultra_moe_runs.json").read_text())
    others = [json.loads((data / f).read_text()) for f in
              ("moe_runs.json", "nemo_moe_more_runs.json", "nemo_dense_runs.json")]
    known = {r["id"] for rs in others for r in rs}
    ids = [r["id"] for r in dense + moe]
    assert len(ids) == len(set(ids)) and not set(ids) & known
    _assert_table_invariants(dense + moe)
    assert {records.cluster_name(r) for r in dense + moe} == {"gb300-nvl72", "dgx-b300"}
    _assert_all_scored(data / "nemo_blackwell_ultra_dense_runs.json", dense)
    mrows = vm.run(data / "nemo_blackwell_ultra_moe_runs.json", None)
    assert not [r for r in mrows if "skipped" in r]
    assert {r["device"].split(",")[0] for r in mrows} == {"gb300", "b300"}
    ds = next(r for r in moe if r["id"] == "mbridge_26p08_DGX-GB300_DeepSeekV3_MXFP8_256gpu_tp1pp2cp1ep32")
    assert vm.preset_for(ds) == (True, None)
    plan = vm.plan_for(ds, vm.mapped_model(ds))
    assert plan.ep_overlap and plan.chunk_layers == (4,) * 15 + (1,)


def test_modelzoo_records_are_scored_with_the_settings_they_state() -> None:
    """benchmarks/data/moe_modelzoo_runs.json: Megatron-MoE-ModelZoo's Qwen3-235B-A22B rows on
    256 H100 state their recomputation, dispatcher, EP overlap and FSDP; the harness takes them
    at their word over the Megatron-Bridge preset lookups (which would give no recomputation,
    the all-to-all dispatcher and no overlap for Qwen3-235B on H100)."""
    data = ROOT / "benchmarks" / "data" / "moe_modelzoo_runs.json"
    recs = json.loads(data.read_text())
    _assert_table_invariants(recs)
    plans = {r["id"].rsplit("256gpu_", 1)[1]: vm.plan_for(r, vm.mapped_model(r)) for r in recs}
    base = plans["deepep_tp2pp8vpp4ep32_mbs1"]
    assert base.recompute_modules == ("layernorm", "moe_act") and base.dispatcher == "flex"
    assert not base.ep_overlap and base.zero == 1
    assert plans["deepep_tp2pp8vpp4ep32_mbs1_1f1b_overlap"].ep_overlap
    fsdp = plans["deepep_tp2ep8edp32_fsdp_mbs4"]
    assert fsdp.zero == 3 and fsdp.recompute == "full" and fsdp.recompute_modules is None
    assert plans["a2a_tp2pp32vpp3ep8_mbs1"].dispatcher == "alltoall"
    bare = plans["deepep_tp4pp8vpp4ep8_mbs1"]
    assert bare.recompute == "none" and bare.recompute_modules is None
    rows = vm.run(data, None)
    assert not [r for r in rows if "skipped" in r] and len(rows) == len(recs)
    # the overlap row differs from its twin only by the overlap, and is predicted faster
    by = {r["id"].rsplit("256gpu_", 1)[1]: r for r in rows}
    assert (by["deepep_tp2pp8vpp4ep32_mbs1_1f1b_overlap"]["predicted_s"]
            < by["deepep_tp2pp8vpp4ep32_mbs1"]["predicted_s"])


def test_tpu_v6e_runs_map_to_their_preset_and_evaluate() -> None:
    """benchmarks/data/maxtext_tpu_v6e_runs.json: MaxText's logged steps on TPU v6e, scored on
    the tpu-v6e-pod preset with FSDP (zero=3); the int8 row is listed, not read as bf16."""
    data = ROOT / "benchmarks" / "data" / "maxtext_tpu_v6e_runs.json"
    recs = json.loads(data.read_text())
    _assert_table_invariants(recs)
    assert {records.cluster_name(r) for r in recs} == {"tpu-v6e-pod"}
    assert all(records.zero_stage(r["parallel"]["zero"]) == 3 for r in recs)
    for r in recs:   # the log's tokens per step: the configuration's global batch x sequence
        m = r["measured"]
        tokens = m["tokens_per_s_per_device"] * r["hardware"]["gpus"] * m["step_time_s"]
        assert tokens == pytest.approx(r["batch"]["global"] * r["model"]["seq_len"], rel=1e-3)
    rows = vp.run(data, None)
    skipped = [r for r in rows if "skipped" in r]
    assert [r["id"] for r in skipped] == [r["id"] for r in recs if r["precision"] == "INT8"]
    assert len(rows) - len(skipped) == len(recs) - 1


def test_tpu7x_runs_map_to_their_preset_and_evaluate() -> None:
    """benchmarks/data/maxtext_tpu7x_runs.json: the Ironwood summary table of tpu-recipes,
    scored per chip on tpu7x-pod with FSDP; each chip is two JAX devices, so MaxText's
    per_device_batch_size x 2 x chips is the global batch. Rows the project cannot state at
    chip level (context parallelism over devices) or whose model has no single layer shape
    (Gemma 4) are listed with their reason, never scored."""
    data = ROOT / "benchmarks" / "data" / "maxtext_tpu7x_runs.json"
    recs = json.loads(data.read_text())
    _assert_table_invariants([r for r in recs if r["parallel"]["dp"] is not None])
    assert {records.cluster_name(r) for r in recs} == {"tpu7x-pod"}
    for r in recs:
        m = r["measured"]
        tokens = m["tokens_per_s_per_device"] * r["hardware"]["gpus"] * m["step_time_s"]
        assert tokens == pytest.approx(r["batch"]["global"] * r["model"]["seq_len"], rel=7e-3)
        pdbs = float(r["id"].rsplit("_pdbs", 1)[1])
        assert pdbs * 2 * r["hardware"]["gpus"] == r["batch"]["global"]
    rows = vp.run(data, None)
    skipped = {r["id"]: r["skipped"] for r in rows if "skipped" in r}
    assert set(skipped) == {r["id"] for r in recs if r.get("unmapped")}
    assert all(why.startswith("UnmappedRecord") for why in skipped.values())
    scored = [r for r in rows if "skipped" not in r]
    assert len(scored) == 6 and all(r["device"].startswith("tpu7x") for r in scored)


def test_tpu7x_moe_runs_score_on_the_presets_without_expert_parallelism() -> None:
    """benchmarks/data/maxtext_tpu7x_moe_runs.json: MaxText shards the experts over the FSDP
    axis and sets no expert parallelism, so every row is ep=1 with zero=3 on the model preset;
    MaxText's DeepSeek-V3 config trains no MTP module; Gemma 4 is listed, not scored."""
    data = ROOT / "benchmarks" / "data" / "maxtext_tpu7x_moe_runs.json"
    recs = json.loads(data.read_text())
    _assert_table_invariants(recs)
    assert {records.cluster_name(r) for r in recs} == {"tpu7x-pod"}
    for r in recs:
        assert r["parallel"]["ep"] == 1
        pdbs = float(r["id"].rsplit("_pdbs", 1)[1])
        assert pdbs * 2 * r["hardware"]["gpus"] == r["batch"]["global"]
    scored = [r for r in recs if not r.get("unmapped")]
    for r in scored:
        model = vm.mapped_model(r)
        assert model.name in {"deepseek-v3", "qwen3-235b-a22b", "gpt-oss-120b"}
        plan = vm.plan_for(r, model)
        assert plan.ep == 1 and plan.zero == 3 and plan.recompute.value == "full"
        if model.name == "deepseek-v3":
            assert model.mtp_layers == 0
    rows = vm.run(data, None)
    assert {r["id"] for r in rows if "skipped" in r} == {r["id"] for r in recs if r.get("unmapped")}
    assert len([r for r in rows if "skipped" not in r]) == len(scored) == 8


def test_tpu_v5p_runs_map_and_evaluate() -> None:
    """benchmarks/data/maxtext_tpu_v5p_runs.json and ..._moe_runs.json: MaxText's logged steps on
    TPU v5p (one JAX device per chip: pdbs x chips is the global batch). The int8 GPT-3 row and
    the Scout row whose slice size is not stated are listed, not scored; Llama 4 Maverick is
    built from its record, every other layer an MoE layer."""
    data = ROOT / "benchmarks" / "data"
    dense = json.loads((data / "maxtext_tpu_v5p_runs.json").read_text())
    moe = json.loads((data / "maxtext_tpu_v5p_moe_runs.json").read_text())
    _assert_table_invariants(dense + moe)
    assert {records.cluster_name(r) for r in dense + moe} == {"tpu-v5p-pod"}
    for r in dense + moe:
        m = r["measured"]
        tokens = m["tokens_per_s_per_device"] * r["hardware"]["gpus"] * m["step_time_s"]
        assert tokens == pytest.approx(r["batch"]["global"] * r["model"]["seq_len"], rel=1e-3)
    rows = vp.run(data / "maxtext_tpu_v5p_runs.json", None)
    assert [r["id"] for r in rows if "skipped" in r] == [
        r["id"] for r in dense if r["precision"] == "INT8"]
    mrows = vm.run(data / "maxtext_tpu_v5p_moe_runs.json", None)
    assert [r["id"] for r in mrows if "skipped" in r] == [r["id"] for r in moe if r.get("unmapped")]
    maverick = vm.mapped_model(next(r for r in moe if "17b-128e" in r["id"]))
    assert maverick.moe is not None and maverick.moe.layer_freq == 2
    assert maverick.num_moe_layers == 24
    ds = vm.mapped_model(next(r for r in moe if "deepseek3" in r["id"]))
    assert ds.name == "deepseek-v3" and ds.mtp_layers == 0


def test_a_record_stating_why_it_cannot_be_scored_is_listed_with_that_reason(
        tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([record(unmapped="layers of two shapes"), record(id="ok")]))
    rows = vp.run(path, None)
    assert rows[0]["skipped"] == "UnmappedRecord: layers of two shapes"
    assert "skipped" not in rows[1]
    with pytest.raises(records.UnmappedRecord, match="two shapes"):
        vm.mapped_model(record(unmapped="layers of two shapes"))


def test_recompute_modules_a_record_names_are_scored_as_named() -> None:
    """MaxText's custom remat (named tensors saved, the norms and MLP recomputed) reaches the
    plan as selective recomputation of those modules; without a list, Megatron's default."""
    named = record(parallel={"recompute": "selective", "recompute_modules": ["mlp", "layernorm"]})
    assert vp.plan_fields(named)["recompute_modules"] == ("mlp", "layernorm")
    assert vp.plan_fields(record())["recompute_modules"] is None
    est_named, _ = vp.predict(named)
    est_default, _ = vp.predict(record())
    assert est_named.breakdown["recompute"] > est_default.breakdown["recompute"]


# --- repeated configurations and scaling inversions (what a source says against itself) ----

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6), st.floats(0.01, 100.0))
def test_best_single_error_is_a_floor(published: list[float], p: float) -> None:
    """No single prediction p scores a lower mean error than best_single_error, and a
    configuration published once (or with equal times) has floor 0."""
    floor = vp.best_single_error(published)
    assert floor <= sum(abs(p / t - 1) for t in published) / len(published) + 1e-12
    assert vp.best_single_error(published[:1] * 3) == 0.0


def _row(i: str, pub: float, *, config: str, work: str = "", gpus: int = 8,
         pred: float = 1.0, source: str = "S") -> dict[str, Any]:
    return {"id": i, "source": source, "published_s": pub, "predicted_s": pred,
            "config": config, "work": work or config, "gpus": gpus, "error": pred / pub - 1,
            "mbs": 1, "microbatches": 1, "mfu": 0.5, "fits": True, "device": "d"}


def test_noise_floor_counts_repeated_configurations_only() -> None:
    rows = [_row("a", 1.0, config="x"), _row("b", 2.0, config="x"), _row("c", 5.0, config="y"),
            _row("d", 3.0, config="z", source="T")]
    floors = vp.noise_floor(rows)
    # x: p = 1 scores (0 + 0.5) / 2, p = 2 scores (1 + 0) / 2; y alone scores 0
    assert floors["S"] == (pytest.approx(0.5 / 3), [[1.0, 2.0]])
    assert "T" not in floors                   # no repeated configuration: no line
    table = vp.render(rows)
    assert "| S | 1 | 2 | 2.00x | 16.7% |" in table


def test_scaling_inversions_flag_faster_runs_on_more_gpus() -> None:
    rows = [_row("small", 1.30, config="c1", work="w", gpus=32),
            _row("big", 1.08, config="c2", work="w", gpus=64),
            _row("bigger", 1.27, config="c3", work="w", gpus=128),   # within the 5% margin
            _row("other", 0.50, config="c4", work="v", gpus=128)]
    pairs = vp.scaling_inversions(rows)
    assert [(a["id"], b["id"]) for a, b in pairs] == [("small", "big")]
    assert "- small (32 GPUs, 1.300 s) vs big (64 GPUs, 1.080 s, -17%)" in vp.render(rows)


def test_config_keys_of_real_records() -> None:
    """Records that differ only in id (or in how the source spells MXFP8) share a key; the
    per-GPU key also ignores the GPU count when the work per GPU is the same."""
    a = record()
    assert vp.config_key(vp.model_for(a), a, vp.plan_fields(a)) == vp.config_key(
        vp.model_for(record(id="x")), record(id="x"), vp.plan_fields(record(id="x")))
    mx, fpmx, fp8 = (record(precision=p) for p in ("MXFP8", "FP8-MX", "FP8"))
    keys = [vp.config_key(vp.model_for(r), r, vp.plan_fields(r)) for r in (mx, fpmx, fp8)]
    assert keys[0] == keys[1] != keys[2]
    big = record(hardware={"gpus": 128}, parallel={"dp": 8}, batch={"global": 512})
    per = [vp.config_key(vp.model_for(r), r, {**vp.plan_fields(r), "mbs": 1}, per_gpu=True)
           for r in (a, big)]
    assert per[0] == per[1]
    assert vp.config_key(vp.model_for(a), a, vp.plan_fields(a)) != vp.config_key(
        vp.model_for(big), big, vp.plan_fields(big))


def test_published_runs_have_one_scaling_inversion() -> None:
    """MosaicML's MPT-1B on A100 40 GB: 32 GPUs published slower than 64 and 128 GPUs for the
    same per-GPU work (micro-batch 10, one micro-batch per step): the harness lists both pairs."""
    rows = [r for r in vp.run(ROOT / "benchmarks/data/published_runs.json", "mpt_a10040gb_bf16_1b")
            if "skipped" not in r]
    pairs = [(a["gpus"], b["gpus"]) for a, b in vp.scaling_inversions(rows)]
    assert pairs == [(32, 64), (32, 128)]


def test_cuda_graph_groups_take_exact_matches_by_gpu_and_setting() -> None:
    rows = [{"id": "mbridge_x_DGX-B200_Qwen3_30B", "error": -0.4},
            {"id": "mbridge_y_DGX-B200_Qwen3_30B", "error": -0.2},
            {"id": "mbridge_z_DGX-GB200_Qwen3_30B", "error": -0.1},
            {"id": "mbridge_w_DGX-GB200_GPTOSS120B", "error": -0.5},     # left out
            {"id": "mbridge_v_DGX-GB200_Qwen3_235B", "error": -0.3},     # partial match
            {"id": "mbridge_u_DGX-B200_Qwen3_235B", "skipped": "why"}]
    graphs = {"mbridge_x_DGX-B200_Qwen3_30B": {"match": "exact", "cuda_graph_impl": None},
              "mbridge_y_DGX-B200_Qwen3_30B": {"match": "exact", "cuda_graph_impl": None},
              "mbridge_z_DGX-GB200_Qwen3_30B": {"match": "exact",
                                                "cuda_graph_impl": "transformer_engine"},
              "mbridge_w_DGX-GB200_GPTOSS120B": {"match": "exact", "cuda_graph_impl": None},
              "mbridge_v_DGX-GB200_Qwen3_235B": {"match": "partial", "cuda_graph_impl": None},
              "mbridge_u_DGX-B200_Qwen3_235B": {"match": "exact", "cuda_graph_impl": None}}
    groups = vm.cuda_graph_groups(rows, graphs)
    assert groups == {("B200", "none"): [-0.4, -0.2], ("GB200", "transformer_engine"): [-0.1]}
    table = vm.render_cuda_graphs(groups)
    assert "| B200 | none | 2 | -30.0% |" in table


def test_every_moe_record_has_a_cuda_graph_reading_with_its_source() -> None:
    graphs = json.loads((ROOT / "benchmarks/data/moe_cuda_graphs.json").read_text())["records"]
    ids = {g["id"] for g in graphs}
    for name in ("moe_runs.json", "nemo_moe_more_runs.json"):
        for r in json.loads((ROOT / "benchmarks/data" / name).read_text()):
            assert r["id"] in ids, r["id"]
    for g in graphs:
        assert g["match"] in ("exact", "partial", "none")
        if g["match"] != "none":
            assert "@" in g["source"] and g["preset"]


def test_serving_records_map_and_score_as_stated() -> None:
    """benchmarks/data/trtllm_inference_runs.json: each id names its device, model, tp and
    lengths; every record evaluates at the largest batch that fits (never above its requests
    nor trtllm-bench's batch), and the prediction is the job's: requests x output over its full
    batches' and remainder's TTFT + output x TPOT."""
    import validate_inference as vi

    data = json.loads((ROOT / "benchmarks" / "data" / "trtllm_inference_runs.json").read_text())
    runs = data["runs"]
    assert len(runs) == 60 and len({r["id"] for r in runs}) == 60
    for r in runs:
        assert r["id"].endswith(f"_tp{r['tp']}_fp8_{r['prompt_len']}x{r['output_len']}")
        assert r["model"] in r["id"] and r["cluster"].removeprefix("dgx-") in r["id"]
    rows, skipped = vi.run(ROOT / "benchmarks" / "data" / "trtllm_inference_runs.json", None)
    assert not skipped and len(rows) == 60
    for row in rows:
        assert 1 <= row["batch"] <= min(row["num_requests"], row["max_batch"], row["fits"])
        e2e = row["ttft_s"] + row["output_len"] * row["tpot_s"]
        assert row["batch_tokens_per_s"] == pytest.approx(row["batch"] * row["output_len"] / e2e)
        assert row["waves"] == -(-row["num_requests"] // row["batch"])
        if row["num_requests"] % row["batch"] == 0:
            assert row["predicted"] == pytest.approx(row["batch_tokens_per_s"])
        else:
            # The remainder batch adds time, but never more than a full batch takes: decode
            # time per step is nondecreasing in the batch, tile quantization included (a batch
            # of b rows past one tile costs ceil(b / tile) tiles). Its tokens per second may
            # exceed a full batch's when the full batch spills into a partial tile.
            job_s = row["num_requests"] * row["output_len"] / row["predicted"]
            full = row["num_requests"] // row["batch"]
            assert full * e2e < job_s <= row["waves"] * e2e * (1 + 1e-9)
        assert row["error"] == pytest.approx(row["predicted"]
                                             / row["published_output_tokens_per_s"] - 1)
    text = vi.render(rows, skipped)
    assert "| llama3-405b on H100 SXM 80GB, tp=8 | 10 |" in text


def test_fp4_serving_records_score_as_nvfp4() -> None:
    """benchmarks/data/trtllm_inference_fp4_runs.json: the overview's FP4 columns, every record
    scored (none skipped) with dtype fp4 on its Blackwell cluster, at a batch its requests
    allow."""
    import validate_inference as vi

    path = ROOT / "benchmarks" / "data" / "trtllm_inference_fp4_runs.json"
    runs = json.loads(path.read_text())["runs"]
    assert len(runs) == 40 and len({r["id"] for r in runs}) == 40
    assert {r["cluster"] for r in runs} == {"dgx-b200", "gb200-nvl72"}
    for r in runs:
        assert r["precision"] == "NVFP4" and r["checkpoint"].endswith("-FP4")
        assert r["id"].endswith(f"_tp{r['tp']}_fp4_{r['prompt_len']}x{r['output_len']}")
    rows, skipped = vi.run(path, None)
    assert not skipped and len(rows) == 40
    fp4 = vi.predict(runs[0])
    from cost_models.inference import estimate_inference
    from planner import DType, load_cluster, load_model
    from planner.plan import Plan
    from planner.workload import InferenceWorkload

    r = runs[0]
    est = estimate_inference(load_model(r["model"]), load_cluster(r["cluster"]),
                             InferenceWorkload(batch_size=fp4["batch"], prompt_len=r["prompt_len"],
                                               output_len=r["output_len"], dtype=DType.FP4,
                                               prefill_chunk_tokens=fp4["chunk"]),
                             Plan(tp=r["tp"], dp=1))
    assert fp4["tpot_s"] == pytest.approx(est.tpot_s)


def test_trtllm_bench_settings_by_hand() -> None:
    """trtllm-bench's own batch and token settings (tensorrt_llm/bench/build/tuning.py) for
    Llama 3.1 8B FP8 on one H200 at 128/2048: KV 2 x 32 x 8 x 128 x 1 = 65,536 bytes per token;
    (141 GiB - 8.03e9 weight bytes) x 0.95 / (65,536 x 2,176) = 955 requests, rounded up to 1,024;
    955 x (1 + 128 / 2048) = 1,015 tokens, at least 2,048. At 128/128 the 4,096 cap binds."""
    import validate_inference as vi

    from planner import load_model

    model, h200 = load_model("llama3-8b"), 141 * 2**30
    free = (h200 - model.params) * 0.95
    assert free / (65536 * 2176) == pytest.approx(955, abs=1)
    assert vi.trtllm_bench_settings(model, 1, 1, 128, 2048, 1, 1, h200) == (1024, 2048)
    assert vi.trtllm_bench_settings(model, 1, 1, 128, 128, 1, 1, h200) == (4096, 8192)
    assert vi.trtllm_bench_settings(model, 1, 2, 128, 128, 1, 1, h200) == (2048, 4096)


def test_errors_by_micro_batches_per_step() -> None:
    """The harness splits each device's signed errors by one micro-batch per step against
    several, for the devices that have both, and tabulates runs, signed and absolute means."""
    rows = [{"device": "a", "microbatches": 1, "error": -0.2},
            {"device": "a", "microbatches": 1, "error": -0.1},
            {"device": "a", "microbatches": 8, "error": 0.1},
            {"device": "b", "microbatches": 4, "error": -0.3}]     # only several: left out
    groups = vp.by_accumulation(rows)
    assert groups == {"a, one micro-batch per step": [-0.2, -0.1], "a, several": [0.1]}
    table = vp.signed_summary(groups, group="device")
    assert table[2] == "| a, one micro-batch per step | 2 | -15.0% | 15.0% |"
    assert table[3] == "| a, several | 1 | +10.0% | 10.0% |"


@pytest.mark.parametrize(("precision", "want"), [
    ("bf16", "bf16"), ("BFloat16 mixed precision", "bf16"), ("amp_bf16", "bf16"),
    ("fp16", "fp16"), ("float16", "fp16"), ("half (Apex O2)", "fp16"), ("amp_fp16", "fp16"),
    ("FP8-CS", "fp8"), ("MXFP8", "fp8"), ("E4M3 hybrid", "fp8"), ("float8", "fp8"),
    ("NVFP4", "fp4"), ("tf32", "tf32"), ("fp32", "fp32"), ("float32", "fp32"),
    ("bf16 with fp32 gradients", "bf16"), ("mixed precision", "bf16"),
])
def test_precision_names_map_to_dtypes(precision: str, want: str) -> None:
    assert vp.dtype_for(record(precision=precision)).value == want


@pytest.mark.parametrize("precision", ["MXFP4", "int8", "W4A16 int4"])
def test_unmodelled_precisions_are_reported(precision: str) -> None:
    with pytest.raises(records.UnmappedRecord, match="not modelled"):
        vp.dtype_for(record(precision=precision))


@pytest.mark.parametrize("zero", ["HYBRID_SHARD", "HSDP (8-way shard)", "_HYBRID_SHARD_ZERO2"])
def test_hybrid_sharding_is_reported_not_misread(zero: str, tmp_path: Path) -> None:
    """FSDP's hybrid sharding is neither zero=3 over the whole dp group nor no sharding: the
    harness lists such a record as not evaluated, with the reason."""
    with pytest.raises(records.UnmappedRecord, match="hybrid"):
        records.zero_stage(zero)
    data = tmp_path / "runs.json"
    data.write_text(json.dumps([record(parallel={"zero": zero})]))
    (row,) = vp.run(data, None)
    assert "hybrid" in row["skipped"]


@pytest.mark.parametrize(("value", "want"), [
    ("full", "full"), ("full (activation checkpointing; Eq.3 counts 4 passes)", "full"),
    (True, "full"), ("true", "full"), ("activation checkpointing", "full"),
    ("uniform", "full"), ("block, 4 layers", "full"),
    ("selective", "selective"), ("selective (core attention)", "selective"),
    ("selective activation checkpointing", "selective"),
    (None, "none"), ("none", "none"), (False, "none"), ("off", "none"),
])
def test_recompute_wordings(value: Any, want: str) -> None:
    assert records.recompute_mode(value).value == want


def test_unknown_recompute_is_reported() -> None:
    with pytest.raises(records.UnmappedRecord, match="recompute 'partial'"):
        records.recompute_mode("partial")


@pytest.mark.parametrize(("measured", "derived", "want"), [
    ({"iteration_s": 4.0, "tokens_per_s_per_gpu": 1.0}, {"iteration_s": 9.0}, 4.0),
    ({"step_time_s": 5.0}, {}, 5.0),
    ({"tflops_per_gpu": 400.0}, {"iteration_s": 6.0}, 6.0),
    # 256 sequences x 4096 tokens over 64 GPUs
    ({"tokens_per_s_per_gpu": 2048.0}, {}, 256 * 4096 / (2048.0 * 64)),
    ({"tokens_per_s_per_device": 4096.0}, {}, 256 * 4096 / (4096.0 * 64)),
    ({"tokens_per_s_total": 262144.0}, {}, 4.0),
    ({"sequences_per_s": 32.0}, {}, 8.0),
])
def test_published_step_time_from_what_the_record_states(measured: dict[str, float],
                                                         derived: dict[str, float],
                                                         want: float) -> None:
    rec = record()
    rec["measured"], rec["derived"] = measured, derived       # exactly these, not merged
    assert vp.published_step_s(rec) == pytest.approx(want)


def test_a_record_with_only_tflops_is_reported(tmp_path: Path) -> None:
    """TFLOP/s follow the source's FLOP convention: when the notes do not name it and the
    record has no converted step time, it is listed as not evaluated, and the harness goes
    on; the same record with an MFU is converted by it."""
    rec = record(id="tflops_only")
    rec["measured"] = {"tflops_per_gpu": 400.0}
    with_mfu = record(id="with_mfu")
    with_mfu["measured"] = {"tflops_per_gpu": 400.0, "mfu": 0.4}
    data = tmp_path / "runs.json"
    data.write_text(json.dumps([rec, record(id="fine"), with_mfu]))
    rows = vp.run(data, None)
    assert "derived.iteration_s" in rows[0]["skipped"] and "skipped" not in rows[1]
    assert rows[2]["published_basis"] == "MFU" and rows[2]["published_s"] > 0


def test_an_unstated_dp_fills_the_gpus() -> None:
    """A record that gives tp, pp and the GPU count but not dp is evaluated at dp = GPUs /
    (tp x pp x cp), as `meshplan evaluate --plan` derives it; where they do not divide, the
    plan check reports the rule."""
    rec = record()
    del rec["parallel"]["dp"]
    assert vp.plan_fields(rec)["dp"] == 64 // (8 * 2)
    est, _ = vp.predict(rec)
    assert est.devices == 64
    odd = record(hardware={"gpus": 72})            # 9 nodes; tp x pp = 16 does not divide
    del odd["parallel"]["dp"]
    with pytest.raises(PlannerError, match="must equal"):
        vp.predict(odd)


def test_moe_records_derive_an_unstated_dp_too() -> None:
    """The MoE harness builds its plan with the same rule (records.data_parallel)."""
    assert records.data_parallel({"tp": 2, "pp": 4, "cp": 2}, 256) == 16
    assert records.data_parallel({"tp": 2, "dp": 3}, 256) == 3
    assert records.data_parallel({"tp": 3}, 256) == 1          # does not divide: plan check
    assert records.data_parallel({"tp": "8", "pp": "2"}, 64) == 4   # degrees written as text
    rec = json.loads((BENCH / "data/moe_runs.json").read_text())[0]
    del rec["parallel"]["dp"]
    model = vm.mapped_model(rec)
    assert vm.plan_for(rec, model).dp == json.loads(
        (BENCH / "data/moe_runs.json").read_text())[0]["parallel"]["dp"]


@pytest.mark.parametrize(("parallel", "want", "pp"), [
    ({"fsdp": 1}, 3, 1), ({"fsdp": 0}, 1, 1), ({}, 1, 1),
    ({"fsdp": 0, "zero": "ZeRO-2"}, 2, 1), ({"zero": 0}, 0, 1),
    ({"zero": "FSDP (ZeRO-3)", "fsdp": 1}, 3, 1),
    # under a pipeline, ZeRO-2/3 runs as stage 1 (records.zero_with_pipeline)
    ({"fsdp": 1}, 1, 4), ({"zero": "ZeRO-2"}, 1, 4), ({"zero": 0}, 0, 4),
])
def test_moe_records_zero_stage(parallel: dict[str, Any], want: int, pp: int) -> None:
    """fsdp set: ZeRO-3; else a stated zero; else the recipes' distributed optimizer."""
    runs = json.loads((BENCH / "data/moe_runs.json").read_text())
    rec = next(r for r in runs if (r["parallel"].get("pp") or 1) == pp)
    rec["parallel"] = {k: v for k, v in rec["parallel"].items() if k not in ("fsdp", "zero")}
    rec["parallel"].update(parallel)
    assert vm.plan_for(rec, vm.mapped_model(rec)).zero == want


@pytest.mark.parametrize(("params", "want"), [
    (68.98e9, 68.98e9), ("70B", 70e9), ("6.7 B", 6.7e9), ("1T", 1e12), ("350M", 350e6),
    ("about seventy billion", None),
])
def test_stated_parameter_counts(params: Any, want: float | None) -> None:
    rec = record()
    rec["model"] = {k: v for k, v in rec["model"].items() if k != "params_B"} | {"params": params}
    got = records._stated_params(rec)
    assert got == (pytest.approx(want) if want is not None else None)


@pytest.mark.parametrize(("batch", "want"), [
    ({"global": 256, "global_seqs": 999}, 256), ({"global_seqs": 512}, 512),
    ({"global_tokens": 4 * 1024 * 1024}, 1024),            # seq_len 4096
])
def test_global_batch_forms(batch: dict[str, int], want: int) -> None:
    rec = record()
    rec["batch"] = {"micro": 1, **batch}
    assert records.global_batch(rec) == want


def test_a_record_without_a_global_batch_is_reported() -> None:
    rec = record()
    rec["batch"] = {"micro": 1}
    with pytest.raises(records.UnmappedRecord, match="global batch"):
        records.global_batch(rec)


def test_record_files_in_other_wrappers(tmp_path: Path) -> None:
    """A data file may hold the list of records, an object with the list under "runs" or
    "records", or one record; anything else is refused with the reason."""
    rec = record()
    for i, content in enumerate(([rec], {"runs": [rec]}, {"records": [rec]}, rec)):
        path = tmp_path / f"data{i}.json"
        path.write_text(json.dumps(content))
        assert records.load_records(path) == [rec]
        (row,) = vp.run(path, None)
        assert "skipped" not in row
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [rec]}))
    with pytest.raises(records.UnmappedRecord, match="no list of records"):
        records.load_records(bad)


@pytest.mark.parametrize(("value", "want"), [
    (True, True), (1, True), ("on", True), ("True", True), ("enabled", True),
    (False, False), (0, False), ("off", False), ("false", False), (None, False),
])
def test_stated_flags(value: Any, want: bool) -> None:
    """sp and ep_overlap as records write them: "off" is not true."""
    assert records.stated_flag(value) is want
    assert vp.plan_fields(record(parallel={"sp": value}))["sp"] is want


def test_unclear_flags_are_reported() -> None:
    with pytest.raises(records.UnmappedRecord, match="not a yes or a no"):
        records.stated_flag("sometimes")
    assert records.stated_flag(None, default=True) is True


def test_a_malformed_record_is_reported_and_the_harness_goes_on(tmp_path: Path) -> None:
    """Wrong types (a GPU count as a list, a model block as a string) are listed as not
    evaluated with the reason; the other records are still scored."""
    bad = record(id="bad")
    bad["hardware"]["gpus"] = [64]
    worse = record(id="worse")
    worse["model"] = "Llama 2 70B"
    data = tmp_path / "runs.json"
    data.write_text(json.dumps([bad, worse, record(id="fine")]))
    rows = vp.run(data, None)
    assert "skipped" in rows[0] and "skipped" in rows[1] and "skipped" not in rows[2]


@pytest.mark.parametrize("gpu", ["NVIDIA A100 PCIe 40GB", "H100 PCIe", "NVIDIA H100 NVL",
                                 "NVIDIA GH200 Grace Hopper Superchip", "GH200 (Alps)",
                                 "Tesla V100-SXM2-16GB"])
def test_other_parts_of_a_preset_name_are_reported(gpu: str) -> None:
    """A PCIe or NVL card, a GH200 superchip or a 16 GB V100 is not the SXM board whose name
    it contains: reported, not evaluated on that board's preset."""
    with pytest.raises(records.UnmappedRecord, match="no preset models it"):
        records.cluster_name(record(hardware={"gpu": gpu}))


@pytest.mark.parametrize(("parallel", "want"), [
    ({}, True), ({"dp_overlap": "off"}, False), ({"overlap_grad_reduce": False}, False),
    ({"overlap_grad_reduce": "true"}, True), ({"dp_overlap": True, "overlap_grad_reduce": False}, True),
])
def test_data_parallel_overlap_as_stated(parallel: dict, want: bool) -> None:
    """A record's dp_overlap (or Megatron's overlap_grad_reduce) sets the plan key; unstated
    and with no code base named, the reduction overlaps (PyTorch DDP, FSDP, Megatron-Core)."""
    rec = record(parallel=parallel)
    assert records.dp_overlap_for(rec) is want
    assert vp.plan_fields(rec)["dp_overlap"] is want


@pytest.mark.parametrize(("source", "pp", "want"), [
    ("BigScience 2022, BLOOM, Megatron-DeepSpeed", 12, False),     # DeepSpeed's pipeline engine
    ("Black et al. 2022, GPT-NeoX-20B (DeepSpeed)", 4, False),
    ("Rajbhandari et al. 2020, ZeRO (DeepSpeed)", 1, True),        # no pipeline engine
    ("Narayanan et al. 2021, Megatron-LM", 8, False),              # local DDP
    ("NVIDIA NeMo 2023, Megatron-Core", 8, True),
    ("NVIDIA Megatron-Bridge performance summary, 25.09 NeMo container", 4, True),
    ("Megatron-LM README", 1, True),                               # no year: nothing to say
    ("Zhang et al. 2022, OPT-175B (Metaseq, FSDP)", 1, True),
])
def test_data_parallel_overlap_from_the_code_base(source: str, pp: int, want: bool) -> None:
    """Unstated, dp_overlap follows the code base the source names: DeepSpeed's pipeline engine
    reduces after the last backward (ReduceGrads), Megatron-LM before 2023 all-reduced after it
    (local DDP); everything else overlaps. A stated value wins."""
    rec = record(source=source, parallel={"pp": pp, "tp": 1})
    assert records.dp_overlap_for(rec) is want
    rec["parallel"]["dp_overlap"] = "on"
    assert records.dp_overlap_for(rec) is True


def test_megatron_lm_runs_all_reduce_after_the_backward() -> None:
    """Narayanan et al. 2021 and the 2020 README ran Megatron-LM's local DDP, which all-reduced
    after the batch's backward passes: dp_overlap off, unless the record says otherwise; and it
    costs those runs time (the 128-way data-parallel README rows most)."""
    rows = vp.load_records(vp.ROOT / "benchmarks/data/published_runs.json")
    for r in rows:
        fields = vp.plan_fields(r)
        assert fields["dp_overlap"] is (not r["id"].startswith(("narayanan2021",
                                                                  "megatron_readme2020")))
    (dp128,) = [r for r in rows if r["id"] == "megatron_readme2020_4B_dgxa100_tp4_dp128"]
    off, _ = vp.predict(dp128)
    on_record = json.loads(json.dumps(dp128))
    on_record["parallel"]["dp_overlap"] = "on"
    on, _ = vp.predict(on_record)
    assert off.breakdown["dp_comm"] > on.breakdown["dp_comm"]
    assert off.step_time_s > on.step_time_s


@pytest.mark.parametrize(("stated", "modules", "want", "want_modules"), [
    ("true", None, "full", None),
    ("uniform", None, "full", None),
    ("selective", None, "selective", None),            # Megatron's default module, core_attn
    ("selective", ["mlp"], "selective", ("mlp",)),
    ("none", None, "none", None),
    (None, ["moe_act"], "selective", ("moe_act",)),
])
def test_moe_harness_reads_recompute_like_the_dense_one(stated, modules, want, want_modules) -> None:
    """validate_moe reads a stated `recompute` with records.recompute_mode, as the dense
    harness does: "true" and Megatron's method names are full recomputation, and "selective"
    without modules is Megatron's default (the attention core)."""
    rec = json.loads(json.dumps(vm.load_records(vm.ROOT / "benchmarks/data/moe_modelzoo_runs.json")[0]))
    rec["parallel"].pop("recompute", None)
    rec["parallel"].pop("recompute_modules", None)
    if stated is not None:
        rec["parallel"]["recompute"] = stated
    if modules is not None:
        rec["parallel"]["recompute_modules"] = modules
    plan = vm.plan_for(rec, vm.model_for(rec))
    assert plan.recompute.value == want
    assert plan.recompute_modules == want_modules
    rec["parallel"]["recompute"] = "sometimes"
    with pytest.raises(records.UnmappedRecord):
        vm.plan_for(rec, vm.model_for(rec))


def test_each_scored_run_says_what_it_was_evaluated_as(tmp_path: Path) -> None:
    """The table ends with each scored run's cluster, number format, gradient dtype and full
    --plan string, which parses back to the plan the harness scored (so a reader can check the
    reading of the record or rerun it with `meshplan evaluate`)."""
    from planner import parse_plan

    rec = record(parallel={"dp_overlap": "off"})
    data = tmp_path / "runs.json"
    data.write_text(json.dumps([rec]))
    (row,) = vp.run(data, None)
    text = vp.render([row])
    line = next(x for x in text.splitlines() if x.startswith(f"- {rec['id']}: "))
    assert "dgx-h100 (8 per node, 50 GB/s per device across nodes), bf16, gradients in fp32" in line
    plan_text = line.split('--plan "')[1].rstrip('"')
    want = vp.Plan(**vp.plan_fields(rec), mbs=1)
    assert parse_plan(plan_text, devices=64) == want
    assert "dp_overlap=off" in plan_text


def test_mi250x_record_is_read_as_stated() -> None:
    """benchmarks/data/mi250x_runs.json: Poro 34B on 1024 GCDs of LUMI-G. Its published step is
    the global batch over the stated tokens/s; its vocabulary is the one that reproduces the
    paper's own TFLOP/s with Megatron-DeepSpeed's formula (recomputation counted: factor 4);
    it runs on the MI250X preset, without FlashAttention, reducing after the last backward
    (DeepSpeed's pipeline engine)."""
    data = json.loads((ROOT / "benchmarks" / "data" / "mi250x_runs.json").read_text())
    (poro,) = data
    m, meas = poro["model"], poro["measured"]
    assert vp.published_step_s(poro) == pytest.approx(2048 * 2048 / 174378)
    l, h, s, v = m["layers"], m["hidden"], m["seq_len"], m["vocab"]
    per_token = 24 * 4 * l * h**2 * (1 + s / (6 * h) + v / (16 * l * h))
    assert per_token * meas["tokens_per_s_total"] / 1e12 == pytest.approx(meas["tflops_total"],
                                                                          abs=0.5)
    assert records.cluster_name(poro) == "frontier-mi250x"
    fields = vp.plan_fields(poro)
    assert fields["attn"].value == "unfused" and fields["dp_overlap"] is False
    assert (fields["tp"], fields["pp"], fields["dp"]) == (2, 4, 128)
    est, mbs = vp.predict(poro)
    assert mbs == 1 and est.step_time_s > 0


def _gpt(**over: Any) -> dict[str, Any]:
    """A GPT-3-shaped run (Narayanan's 18B row: 40 x 6144, 48 heads, 51200 vocab) on A100s that
    states only a utilisation, no time or throughput."""
    rec = record(id="gpt_18b_util_only", source="Some paper 2021, Table 1", precision="fp16",
                 model={"layers": 40, "hidden": 6144, "heads": 48, "kv_heads": None,
                        "ffn_hidden": 4 * 6144, "vocab": 51200, "seq_len": 2048,
                        "params_B": None},
                 hardware={"gpu": "NVIDIA A100 80GB", "gpus": 256},
                 parallel={"tp": 8, "pp": 2, "dp": 16, "zero": None, "recompute": "full",
                           "sp": False},
                 batch={"micro": 1, "global_seqs": 1024, "global": 1024})
    rec["measured"] = {}
    return _merged(rec, over)


def test_tflops_counting_recomputation_converts_by_narayanan_eq3() -> None:
    """A record with only TFLOP/s per GPU whose notes name Eq. 3 is converted by Eq. 3 exactly:
    96 B s l h^2 (1 + s/(6h) + V/(16 l h)) FLOPs per step over GPUs x TFLOP/s."""
    rec = _gpt(measured={"tflops_per_gpu": 135.0},
               notes="TFLOP/s by Eq. 3, which counts recomputation (4 passes)")
    B, s, l, h, V = 1024, 2048, 40, 6144, 51200
    eq3 = 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))
    seconds, basis = vp.published_with_basis(rec)
    assert basis == "TFLOP/s (counting recomputation)"
    assert seconds == pytest.approx(eq3 / (256 * 135e12), rel=1e-9)


def test_mfu_converts_by_model_flops_and_the_peak_of_the_format() -> None:
    """MFU counts the model's FLOPs, 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) for GPT (Korthikanti
    et al. 2022), against the format's dense peak (A100 fp16: 312 TFLOP/s)."""
    rec = _gpt(measured={"mfu": 0.4})
    B, s, l, h, V = 1024, 2048, 40, 6144, 51200
    model_flops = 72 * B * s * l * h**2 * (1 + s / (6 * h) + V / (12 * l * h))
    seconds, basis = vp.published_with_basis(rec)
    assert basis == "MFU"
    assert seconds == pytest.approx(model_flops / (0.4 * 312e12 * 256), rel=1e-9)


def test_a_utilisation_without_its_convention_is_reported() -> None:
    """TFLOP/s whose notes name no convention, or name both, and any utilisation of an fp8 run
    (sources quote those against different peaks), are reported, not guessed."""
    for rec in (_gpt(measured={"tflops_per_gpu": 135.0}, notes="from the paper's table"),
                _gpt(measured={"tflops_per_gpu": 135.0}, notes="MFU and HFU both given"),
                _gpt(measured={"mfu": 0.4}, precision="fp8")):
        with pytest.raises(records.UnmappedRecord, match="convention"):
            vp.published_with_basis(rec)
    # "seq 3..." is no Eq. 3
    assert not vp._HARDWARE_CONVENTION.search("seq 32768, remat full")
    assert vp._HARDWARE_CONVENTION.search("computed from eq. 3") is not None


def test_converted_runs_are_listed_under_the_table(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([record(), _gpt(measured={"hfu": 0.45})]))
    rows = vp.run(path, None)
    assert {r["id"]: r["published_basis"] for r in rows} == {
        "other_llama2_70b": None, "gpt_18b_util_only": "HFU"}
    table = vp.render(rows)
    assert "Published step times converted from the only figure the record states" in table
    assert "- gpt_18b_util_only: HFU" in table


def test_no_conversion_for_mixtures_of_experts() -> None:
    """Sources count an MoE's FLOPs by formulas of their own: an MoE record with only TFLOP/s
    is reported, not converted by meshplan's count."""
    data = json.loads((ROOT / "benchmarks" / "data" / "nemo_moe_more_runs.json").read_text())
    rec = next(r for r in data if "GPTOSS120B" in r["id"])
    model = vm.mapped_model(rec)
    assert model.moe is not None
    assert vp.implied_step_s(rec, model) == []


def test_a_utilisation_contradicting_the_stated_time_is_flagged(tmp_path: Path) -> None:
    """A record whose MFU implies a step time 20% off its own tokens/s has inconsistent inputs:
    the table says so, and says how close the consistent ones are."""
    good = _gpt(id="good", measured={"mfu": 0.4})
    seconds, _ = vp.published_with_basis(good)
    tokens = 1024 * 2048
    good["measured"]["tokens_per_s_total"] = tokens / seconds          # agrees exactly
    bad = _gpt(id="bad", measured={"mfu": 0.4, "tokens_per_s_total": tokens / seconds / 1.2})
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([good, bad]))
    table = vp.render(vp.run(path, None))
    assert "the 2 MFU, HFU or TFLOP/s figures the records give beside a time imply it within" in table
    assert "Inconsistent inputs" in table and "- bad: MFU implies -16.7%" in table
    assert "- good: MFU implies" not in table


@pytest.mark.parametrize(("zero", "pp", "want"), [
    ("FSDP (optimizer states and gradients sharded)", 16, 1),   # Llama 3: FSDP under a pipeline
    ("ZeRO-2", 4, 1),
    ("FULL_SHARD", 1, 3),                                       # no pipeline: as stated
    ("ZeRO-1", 8, 1),
    (None, 8, 0),
])
def test_zero_2_or_3_under_a_pipeline_runs_as_stage_1(zero: Any, pp: int, want: int) -> None:
    """DeepSpeed and Megatron-LM refuse ZeRO-2/3 with pipeline parallelism, so a record that
    states it ran PyTorch FSDP under torch.distributed.pipelining, which keeps parameters and
    gradients whole until the step's last backward: evaluated at stage 1, not refused."""
    rec = record(parallel={"tp": 8, "pp": pp, "dp": 64 // (8 * pp) or 1, "zero": zero},
                 hardware={"gpus": 8 * pp * max(1, 64 // (8 * pp))})
    assert vp.plan_fields(rec)["zero"] == want
    assert records.zero_with_pipeline(3, 2) == 1 and records.zero_with_pipeline(3, 1) == 3
