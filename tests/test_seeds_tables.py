"""benchmarks/seeds_tables.py: the seeds' claims against physical bounds and meshplan."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "seeds_tables.py"


def _load():
    spec = importlib.util.spec_from_file_location("seeds_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["seeds_tables"] = mod
    spec.loader.exec_module(mod)
    return mod


st = _load()


@pytest.fixture(scope="module")
def rows() -> dict[str, object]:
    return {r.id: r for r in (st.judge(c) for c in st.load_claims())}


def test_every_claim_has_a_source_and_seed(rows):
    claims = st.load_claims()
    assert {c["seed"] for c in claims} == {"001", "002", "004"}
    assert len({c["id"] for c in claims}) == len(claims)
    seeds = Path("/work/shared/seeds")
    for c in claims:
        if seeds.is_dir():
            assert (seeds / c["file"]).is_file(), c["file"]
        assert c["section"] and c["claim"]
        assert c["file"].startswith(c["seed"] + "_")


@pytest.mark.parametrize("cid, prefix", [
    ("s001-params", st.INCONSISTENT),
    ("s001-tpot-baseline", st.IMPOSSIBLE),
    ("s001-tpot-proposed", st.IMPOSSIBLE),
    ("s002-peak-flops", st.DATASHEET),
    ("s002-memory", st.DATASHEET),
    ("s002-bandwidth", st.DATASHEET),
    ("s002-expert-bytes", st.INCONSISTENT),
    ("s002-kv-per-token", st.INCONSISTENT),
    ("s004-params-tp8", st.INCONSISTENT),
    ("s004-params-pp2", st.INCONSISTENT),
    ("s004-mem-pp2", st.IMPOSSIBLE),
    ("s004-mem-tp8", st.IMPOSSIBLE),
])
def test_known_bad_claims_are_flagged(rows, cid, prefix):
    assert rows[cid].verdict.startswith(prefix), rows[cid].verdict


@pytest.mark.parametrize("cid", ["s001-tps-baseline", "s001-tps-proposed", "s002-mfu",
                                 "s004-thr-ma", "s004-tpot-tp8", "s004-t57-ma-512"])
def test_possible_claims_pass(rows, cid):
    assert rows[cid].verdict == st.POSSIBLE, rows[cid].verdict


def test_numbers_of_the_known_examples(rows):
    # seed 001: 6.44e9 params, 12.9 GB in bf16; weights alone over 16 x 3.35 TB/s = 0.240 ms.
    assert "6.443e9" in rows["s001-params"].verdict and "4.66x" in rows["s001-params"].verdict
    assert "weights alone 0.240 ms" in rows["s001-tpot-proposed"].bound
    assert "needs >= 15 sequences" in rows["s001-tpot-proposed"].verdict
    # seed 002: a full GELU expert is 2 x 7168 x 18432 x 2 B = 528.5 MB; 264 MB is one matrix.
    assert "528.5 MB" in rows["s002-expert-bytes"].verdict
    assert "989.4 TFLOP/s" in rows["s002-peak-flops"].verdict
    assert "14,336 B" in rows["s002-kv-per-token"].verdict


def test_synthetic_claims():
    base = {"id": "x", "seed": "001", "file": "f", "section": "s", "claim": "c",
            "model": "seed001-dense-4l", "cluster": "dgx-h100", "gpus": 16}
    # 1,000 tokens/s of training on 16 H100 is far below the FLOP bound.
    ok = st.judge({**base, "kind": "train_throughput", "seq_len": 10000, "value": 1000.0})
    assert ok.verdict == st.POSSIBLE
    # 10 million tokens/s needs more FLOP/s than 16 H100 have.
    bad = st.judge({**base, "kind": "train_throughput", "seq_len": 10000, "value": 1e7})
    assert bad.verdict.startswith(st.IMPOSSIBLE)
    # a 10 ms TPOT at batch 1 is slower than the bandwidth bound: possible.
    slow = st.judge({**base, "kind": "decode_tpot", "context": 1000, "value": 10e-3})
    assert slow.verdict == st.POSSIBLE
    assert st.judge({**base, "kind": "utilization", "value": 1.2}).verdict.startswith(st.IMPOSSIBLE)
    assert st.judge({**base, "kind": "param_count", "value": 6.44e9}).verdict == st.POSSIBLE
    mem = {**base, "kind": "memory_per_gpu", "tp": 1, "pp": 1, "ep": 1}
    assert st.judge({**mem, "value": 5e9}).verdict.startswith(st.IMPOSSIBLE)  # < 12.9 GB of weights
    assert st.judge({**mem, "value": 40e9}).verdict.startswith(st.POSSIBLE)


def test_meshplan_predictions_respect_the_bounds():
    """meshplan never predicts faster than physics allows (sanity check of both sides)."""
    for c in st.load_claims():
        if c["kind"] == "decode_tpot" and "plan" in c:
            m, cl = st.model_of(c["model"]), st.cluster_of(c["cluster"])
            plan = st.parse_plan(c["plan"], devices=c["gpus"])
            wl = st.InferenceWorkload(batch_size=plan.dp, prompt_len=c["context"], output_len=1)
            est = st.estimate_inference(m, cl, wl, plan)
            w = st.decode_weight_bytes(m)
            assert est.tpot_s >= w / (plan.tp * cl.device.memory_bandwidth_bytes_per_s)
        if c["kind"] == "train_throughput" and "plan" in c:
            m, cl = st.model_of(c["model"]), st.cluster_of(c["cluster"])
            est = st.training(c)
            fpt = 3 * m.forward_flops_per_token(c["seq_len"])
            assert est.tokens_per_s * fpt <= c["gpus"] * cl.device.peak_flops(st.DType.BF16)


def test_script_writes_the_committed_tables(tmp_path):
    """The script runs (the 60 s timeout only guards against a hang: speed is measured in
    benchmarks/, not asserted) and writes exactly the committed results file."""
    out = tmp_path / "t.md"
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    for seed in ("Seed 001", "Seed 002", "Seed 004"):
        assert f"## {seed}" in text
    assert "| claim | source | claimed value | physical bound | meshplan prediction | verdict |" in text
    assert text == (ROOT / "benchmarks" / "results" / "seeds_tables.md").read_text()
