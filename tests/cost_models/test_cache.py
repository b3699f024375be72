"""Cache-aware layer-wise partitioning (cost_models/cache.py) and `meshplan cache-fit`.

Hand-checked numbers use tests/data/tiny-gpt.toml (h=256, 4 heads, ffn 1024, vocab 1000,
biases, LayerNorm, tied embeddings, learned positions):
- one block: attention 4h^2 + 4h = 263,168; MLP 2*h*ffn + ffn + h = 525,568; two LayerNorms
  2*2h = 1,024; total 789,760 parameters.
- LM head on the last stage: vocab*h + final norm = 256,000 + 512 = 256,512 (the embedding
  table is looked up, not resident).
- one decode step's activations at batch 1, tp=1 (bf16): (2h + (4+2*4)*64 + 2*ffn) * 2 B
  = (512 + 768 + 2048) * 2 = 6,656, plus vocab fp32 logits 1000*4 = 4,000: 10,656 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import app
from cost_models.cache import (
    PERSISTING_FRACTION,
    cache_fit,
    cache_partitions,
    smallest_fits,
    stage_working_sets,
)
from cost_models.inference import estimate_inference
from meshplan_cli.testing import cli_runner
from planner import ClusterSpec, DeviceSpec, LinkSpec, ModelSpec
from planner.errors import SpecError
from planner.plan import Plan
from planner.presets import load_cluster, load_model
from planner.workload import InferenceWorkload
from planner.validate import divisors

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "data" / "tiny-gpt.toml")
RUNNER = cli_runner()
MIB = 2**20

BLOCK = 789_760
HEAD = 256_512
ACT_TP1 = 10_656


def cluster(l2_bytes: int, l2_bw: float | None = 4e12) -> ClusterSpec:
    """Two devices per node; HBM 1 TB/s; the cache under test."""
    dev = DeviceSpec(name="toy", peak_flops_per_s={"bf16": 100e12}, memory_bytes=16 * 2**30,
                     memory_bandwidth_bytes_per_s=1e12, onchip_cache_bytes=l2_bytes,
                     onchip_cache_bandwidth_bytes_per_s=l2_bw, power_w=300)
    return ClusterSpec(name="toy-cluster", device=dev, devices_per_node=2,
                       intra_node=LinkSpec(name="fast", bandwidth_bytes_per_s=100e9, latency_s=1e-6),
                       inter_node=LinkSpec(name="slow", bandwidth_bytes_per_s=10e9, latency_s=5e-6))


BIG = cluster(40 * MIB)     # usable 31,457,280 B
SMALL = cluster(4 * MIB)    # usable 3,145,728 B


@pytest.fixture(scope="module")
def tiny() -> ModelSpec:
    return load_model(TINY)


def wl(batch: int = 1, out_len: int = 5) -> InferenceWorkload:
    return InferenceWorkload(batch_size=batch, prompt_len=16, output_len=out_len)


# ----- working set by hand -----------------------------------------------------------------
def test_block_params_match_hand_count(tiny: ModelSpec) -> None:
    assert tiny.dense_layer_params == BLOCK


def test_working_set_tp1_fits_large_cache(tiny: ModelSpec) -> None:
    fit = cache_fit(tiny, BIG, wl(), Plan())
    (s,) = fit.stages
    assert s.resident_weight_bytes == (4 * BLOCK + HEAD) * 2 == 6_831_104
    assert s.activation_bytes == ACT_TP1
    assert fit.working_set_bytes == 6_841_760
    assert fit.usable_cache_bytes == 0.75 * 40 * MIB
    assert fit.feasible and fit.margin_bytes == 0.75 * 40 * MIB - 6_841_760


def test_working_set_tp1_does_not_fit_small_cache(tiny: ModelSpec) -> None:
    fit = cache_fit(tiny, SMALL, wl(), Plan())
    assert not fit.feasible
    assert fit.margin_bytes == 0.75 * 4 * MIB - 6_841_760
    assert fit.tpot_change_s == 0.0 and fit.speedup == 1.0
    assert fit.tokens_per_s_cached == fit.tokens_per_s


def test_working_set_tp2_pp2_by_hand(tiny: ModelSpec) -> None:
    stages = stage_working_sets(tiny, wl(), Plan(tp=2, pp=2), usable_bytes=1e9)
    # tp=2 activations: (512 + 768/2 + 2048/2) * 2 + 1000/2 * 4 = 3,840 + 2,000
    act = 5_840
    assert [s.resident_weight_bytes for s in stages] == [2 * BLOCK / 2 * 2,
                                                        (2 * BLOCK + HEAD) / 2 * 2]
    assert all(s.activation_bytes == act for s in stages)
    assert [(s.first_block, s.last_block) for s in stages] == [(0, 1), (2, 3)]


def test_smallest_fit_on_small_cache(tiny: ModelSpec) -> None:
    # usable 3,145,728 B: 3 devices cannot fit (tp=1,pp=3: blocks 0-1 = 3,169,696 B), 4 can;
    # of the 4-device splits tp=4,pp=1 has the smallest working set:
    # (4*BLOCK + HEAD)/4*2 + (512 + 192 + 512)*2 + 250*4 = 1,707,776 + 3,432.
    best, closest = smallest_fits(tiny, wl(), 0.75 * 4 * MIB)
    assert best is not None and (best.tp, best.pp, best.devices) == (4, 1, 4)
    assert best.working_set_bytes == 1_707_776 + 3_432
    assert closest.working_set_bytes <= best.working_set_bytes


# ----- effect by hand ----------------------------------------------------------------------
def test_effect_is_hand_computed_tpot_difference(tiny: ModelSpec) -> None:
    # The toy device has no efficiency entry: generic memory fraction 0.8 for HBM and cache.
    # Weights 6,831,104 B; O = 5 output tokens; HBM 0.8e12 B/s; cache 4e12 * 0.8 = 3.2e12 B/s.
    # Math (~2*3.4e6 FLOP at 75 TFLOP/s, 0.09 us) stays under the memory time, so only the
    # weight read changes: w * (O-1)/O * (1/0.8e12 - 1/3.2e12).
    fit = cache_fit(tiny, BIG, wl(out_len=5), Plan())
    want = 6_831_104 * 4 / 5 * (1 / 0.8e12 - 1 / 3.2e12)
    assert fit.tpot_s == pytest.approx(estimate_inference(tiny, BIG, wl(out_len=5), Plan()).tpot_s)
    assert fit.tpot_s - fit.tpot_cached_s == pytest.approx(want, rel=1e-12)
    assert fit.tpot_change_s == pytest.approx(-want, rel=1e-12)
    assert fit.speedup == pytest.approx(fit.tpot_s / (fit.tpot_s - want))


def test_one_output_token_has_no_effect(tiny: ModelSpec) -> None:
    fit = cache_fit(tiny, BIG, wl(out_len=1), Plan())
    assert fit.feasible and fit.tpot_change_s == pytest.approx(0.0, abs=1e-18)


def test_device_without_cache_bandwidth_is_a_spec_error(tiny: ModelSpec) -> None:
    with pytest.raises(SpecError, match="onchip_cache_bandwidth_bytes_per_s"):
        cache_fit(tiny, cluster(40 * MIB, None), wl(), Plan())


# ----- seed 001 ----------------------------------------------------------------------------
def test_seed001_is_infeasible_with_bounds() -> None:
    m, c = load_model("seed001-dense-4l"), load_cluster("dgx-h100")
    fit = cache_fit(m, c, InferenceWorkload(batch_size=1, prompt_len=10000, output_len=128),
                    Plan(tp=4, pp=4))
    layer = 1_610_678_272          # 4h^2 + 2*h*16384 + 2 LayerNorms of 2h, h = 16384
    assert m.dense_layer_params == layer
    assert not fit.feasible and fit.tpot_change_s == 0.0
    assert fit.stages[0].resident_weight_bytes == layer / 4 * 2
    assert fit.weight_bound_devices == -(-4 * layer * 2 // int(0.75 * 50 * MIB)) == 328
    assert fit.smallest_fit is None
    assert (fit.closest.tp, fit.closest.pp) == (32, 4)


# ----- partitions --------------------------------------------------------------------------
def test_cache_partitions_lists_fitting_first(tiny: ModelSpec) -> None:
    parts = cache_partitions(tiny, SMALL, wl(batch=4), 4)
    assert {(q.tp, q.pp, q.dp) for q in parts} == {
        (t, p, 4 // (t * p)) for t in (1, 2, 4) for p in (1, 2, 4) if 4 % (t * p) == 0}
    fits = [q.fits for q in parts]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    for q in parts:
        assert q.fits == (q.working_set_bytes <= PERSISTING_FRACTION * 4 * MIB)
        assert (q.tpot_cached_s < q.tpot_s) if q.fits else (q.tpot_cached_s == q.tpot_s)


# ----- monotonic: more devices never grow the per-device working set -----------------------
@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    return ModelSpec(name="rand", num_layers=draw(st.integers(1, 8)),
                     hidden_size=heads * draw(st.sampled_from([16, 32, 64])),
                     num_attention_heads=heads, ffn_hidden_size=draw(st.sampled_from([64, 256])),
                     vocab_size=draw(st.sampled_from([0, 500])), positional="rope")


@settings(max_examples=60, deadline=None)
@given(models(), st.data(), st.integers(1, 64))
def test_more_devices_never_grow_working_set(m: ModelSpec, data: st.DataObject, batch: int) -> None:
    tps = divisors(m.num_attention_heads)
    t1 = data.draw(st.sampled_from(tps))
    t2 = data.draw(st.sampled_from([t for t in tps if t % t1 == 0]))
    p1 = data.draw(st.integers(1, m.num_layers))
    p2 = data.draw(st.integers(p1, m.num_layers))
    w = InferenceWorkload(batch_size=batch, prompt_len=8, output_len=4)

    def ws(t: int, p: int) -> float:
        return max(s.working_set_bytes for s in stage_working_sets(m, w, Plan(tp=t, pp=p), 0.0))

    assert ws(t2, p2) <= ws(t1, p1) * (1 + 1e-12)


# ----- CLI ---------------------------------------------------------------------------------
SEED = ("cache-fit", "--model", "seed001-dense-4l", "--cluster", "dgx-h100", "--gpus", "16",
        "--batch", "1", "--prompt-len", "10000", "--output-len", "128")


def test_cli_seed001_verdict() -> None:
    res = RUNNER.invoke(app, [*SEED, "--plan", "tp=4,pp=4"])
    assert res.exit_code == 0, res.stderr
    assert "does NOT fit" in res.stdout and "328 devices" in res.stderr
    data = json.loads(RUNNER.invoke(app, [*SEED, "--plan", "tp=8,pp=2", "--json"]).stdout)
    assert data["feasible"] is False and data["tpot_change_s"] == 0.0
    assert data["smallest_fit"] is None and data["weight_bound_devices"] == 328


def test_cli_partitions_json(tiny: ModelSpec) -> None:
    res = RUNNER.invoke(app, ["cache-fit", "--model", TINY, "--cluster", "dgx-h100", "--gpus",
                              "2", "--plan", "tp=2", "--batch", "2", "--prompt-len", "16",
                              "--output-len", "8", "--partitions", "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["feasible"] is True and data["tpot_change_s"] < 0
    assert sorted(p["plan"] for p in data["partitions"]) == [
        "tp=1,pp=1,dp=2", "tp=1,pp=2,dp=1", "tp=2,pp=1,dp=1"]
    assert all(p["fits"] for p in data["partitions"])
    best = data["partitions"][0]
    assert best["tokens_per_s_cached"] == max(p["tokens_per_s_cached"] for p in data["partitions"])


@pytest.mark.parametrize("args,needle", [
    (["--plan", "tp=3,pp=4"], "tp*pp*cp"),
    (["--plan", "tp=4,pp=4,dp=2"], "uses 32 devices"),
    (["--plan", "tp=2,pp=8"], "pp=8 exceeds"),
    (["--plan", "tp=4,pp=4", "--dtype", "int4"], "--dtype"),
    (["--plan", "tp=4,pp=2,cp=2,dp=1"], "context parallelism"),
])
def test_cli_bad_input_exits_2(args: list[str], needle: str) -> None:
    res = RUNNER.invoke(app, [*SEED, *args])
    assert res.exit_code == 2, res.stdout
    assert needle in res.stderr and res.stderr.count("\n") == 1


def _mystery_cluster(tmp_path: Path, name: str, cache_lines: str) -> Path:
    """A one-device-type cluster file whose inline device has `cache_lines` for its cache."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ndevices_per_node = 8\n'
        '[device]\nname = "mystery"\nmemory_bytes = 85899345920\n'
        f'memory_bandwidth_bytes_per_s = 3.35e12\n{cache_lines}'
        '[device.peak_flops_per_s]\nbf16 = 989.4e12\n'
        '[intra_node]\nname = "nvlink"\nbandwidth_bytes_per_s = 450e9\nlatency_s = 2e-6\n'
        '[inter_node]\nname = "ib"\nbandwidth_bytes_per_s = 50e9\nlatency_s = 5e-6\n')
    return path


def _cache_fit_cli(path: Path):
    return RUNNER.invoke(app, ["cache-fit", "--model", TINY, "--cluster", str(path), "--gpus",
                               "1", "--plan", "tp=1", "--batch", "1", "--prompt-len", "16",
                               "--output-len", "8"])


def test_cli_device_without_cache_bandwidth_exits_2(tmp_path: Path) -> None:
    res = _cache_fit_cli(_mystery_cluster(tmp_path, "no-l2-bw",
                                          "onchip_cache_bytes = 52428800\npower_w = 700\n"))
    assert res.exit_code == 2
    assert "add onchip_cache_bandwidth_bytes_per_s" in res.stderr and "mystery" in res.stderr


def test_cli_device_without_cache_size_exits_2(tmp_path: Path) -> None:
    """A device file may leave out its on-chip cache size (and its power) when no source gives
    them; training and serving estimates do not need them, cache-fit asks for the size."""
    path = _mystery_cluster(tmp_path, "no-l2", "")
    res = _cache_fit_cli(path)
    assert res.exit_code == 2
    assert "add onchip_cache_bytes" in res.stderr and "mystery" in res.stderr
    res = RUNNER.invoke(app, ["evaluate", "--model", TINY, "--cluster", str(path), "--gpus", "8",
                              "--global-batch", "8", "--seq-len", "64", "--plan", "tp=1",
                              "--json"])
    assert res.exit_code == 0, res.stderr


def test_cache_fit_refuses_two_batch_overlap() -> None:
    from planner import InferenceWorkload, Plan, load_cluster, load_model
    from planner.errors import PlanError

    with pytest.raises(PlanError, match="drop ep_overlap"):
        cache_fit(load_model("mixtral-8x7b"), load_cluster("dgx-h100"),
                  InferenceWorkload(batch_size=64, prompt_len=64, output_len=8),
                  Plan(tp=2, dp=4, ep=8, ep_overlap=True))
