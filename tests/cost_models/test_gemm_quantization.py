"""GEMM dimension quantization (efficiency.shape_efficiency): output tiles fill waves over the
compute units, and a partial tile computes as much as a full one (NVIDIA, "Matrix
Multiplication Background User's Guide", Sec. 3.1 tile and 3.2 wave quantization)."""

from __future__ import annotations

import math

import numpy as np

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_models.compute import Roofline
from cost_models.efficiency import device_efficiency, shape_efficiency
from planner import DType
from planner.presets import load_device

DEV = load_device("h100-sxm5-80gb")
EFF = device_efficiency(DEV)[0]


def _math_s(m: float, n: float, k: float) -> float:
    return 2 * m * n * k / (DEV.peak_flops(DType.BF16) * shape_efficiency(EFF, 0.8, m, n, k))


def test_a_partial_tile_costs_a_full_one() -> None:
    """129 rows take as long as 256 (two row tiles), and 128 rows half as long: n spans 4 x
    132 column tiles, so 128 rows fill exactly 4 waves of the 132 SMs and 256 rows 8."""
    n, k = 4 * EFF.compute_units * EFF.tile, 4096
    assert _math_s(129, n, k) == pytest.approx(_math_s(256, n, k))
    assert _math_s(128, n, k) == pytest.approx(_math_s(256, n, k) / 2)


def test_fill_by_hand() -> None:
    """m = 415 (a decode batch), n = 1000: 4 x 8 tiles of 128 x 128 hold 415 x 1000 outputs."""
    full = shape_efficiency(EFF, 0.8, 512, 1024, 4096)
    part = shape_efficiency(EFF, 0.8, 415, 1000, 4096)
    assert part == pytest.approx(full * 415 * 1000 / (512 * 1024))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20_000), st.integers(1, 20_000), st.integers(1, 20_000),
       st.integers(1, 2_000))
def test_more_rows_never_take_less_time(m: int, n: int, k: int, extra: int) -> None:
    """Adding rows (or columns) to a GEMM never makes its math faster."""
    assert _math_s(m + extra, n, k) >= _math_s(m, n, k) * (1 - 1e-12)
    assert _math_s(m, n + extra, k) >= _math_s(m, n, k) * (1 - 1e-12)


def test_a_dimension_within_one_tile_pays_no_fill() -> None:
    """Below one tile the library picks a smaller tile (or a matrix-vector kernel): 100 rows
    are not padded to 128, 129 rows are (to 256)."""
    from cost_models.efficiency import tile_fill
    assert tile_fill(100, 128) == tile_fill(128, 128) == 1.0
    assert tile_fill(129, 128) == pytest.approx(129 / 256)
    assert tile_fill(415, 128) == pytest.approx(415 / 512)


def test_whole_tiles_are_unchanged() -> None:
    """Multiples of the tile pay no fill: the fraction is the wave term alone."""
    m, n, k = 8192, 8192, 8192
    tiles = math.ceil(m / EFF.tile) * math.ceil(n / EFF.tile)
    waves = math.ceil(tiles / EFF.compute_units)
    roof = Roofline(DEV, EFF, DType.BF16)
    assert roof.efficiency(m, n, k) == pytest.approx(
        roof.matmul_fraction * EFF.sustained_clock * tiles / (waves * EFF.compute_units)
        * min(1.0, (k / (k + 128)) / (2048 / (2048 + 128))))


def test_decode_gemm_rows_pay_tile_quantization() -> None:
    """A decode step's GEMMs have the batch as rows: 129 sequences cost the math of 256 (two
    row tiles), 100 the math of 100 (one tile or less: no padding)."""
    from cost_models import comm
    from cost_models.inference import _decode_stage, ep_links_of
    from planner import InferenceWorkload, load_cluster, load_model
    from planner.plan import Plan
    model, cluster, plan = load_model("llama3-70b"), load_cluster("dgx-h100"), Plan()
    eff = device_efficiency(cluster.device)[0]
    roof = Roofline(cluster.device, eff, DType.BF16)
    tp = comm.group_links(cluster, size=1, stride=1)
    wl = InferenceWorkload(batch_size=256, prompt_len=128, output_len=128)

    def math_s(batch: int) -> float:
        st = _decode_stage(model, plan, wl, roof, eff, tp, ep_links_of(cluster, plan), cluster,
                           0, 0, model.num_layers - 1, batch)
        return st["_gemm_math_s"]

    assert math_s(129) == pytest.approx(math_s(256))
    assert math_s(100) == pytest.approx(math_s(128) * 100 / 128)


def _binomial_expected_tiles(n: int, p: float, tile: int) -> float:
    """E[ceil(X / tile)] for X ~ Binomial(n, p), summed exactly over the pmf (log-space)."""
    log_pmf = [math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
               + x * math.log(p) + (n - x) * math.log1p(-p) for x in range(n + 1)]
    return sum(math.exp(lp) * math.ceil(x / tile) for x, lp in enumerate(log_pmf) if lp > -60)


@pytest.mark.parametrize(("n", "p"), [(20000, 8 / 128), (32768, 8 / 128), (4096, 0.5),
                                      (65536 * 4, 4 / 128)])
def test_expected_tiles_match_the_binomial(n: int, p: float) -> None:
    """An expert's rows under random routing are binomial: the normal tail sum of
    expected_tiles is within 0.01 tile of the exact expectation over the pmf."""
    from cost_models.efficiency import expected_tiles

    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert expected_tiles(mean, sd, 128) == pytest.approx(
        _binomial_expected_tiles(n, p, 128), abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0, 1e5), st.floats(0.0, 2e3))
def test_expected_tiles_bounds(mean: float, sd: float) -> None:
    """mean/tile <= E[ceil(X/tile)] (a ceiling never rounds down) and, for spreads far below
    the mean, at most mean/tile + 1; no spread gives ceil(mean/tile) exactly."""
    from cost_models.efficiency import expected_tiles

    e = expected_tiles(mean, sd, 128)
    assert e >= mean / 128 - 1e-9
    if sd < mean / 10:
        assert e <= mean / 128 + 1 + 1e-9
    assert expected_tiles(mean, 0.0, 128) == math.ceil(mean / 128)


def test_random_expert_rows_pay_half_a_tile() -> None:
    """A mean of exactly 16 tiles with a spread of a third of a tile: half the time the rows
    spill into a 17th tile, so the GEMM runs as 16.5 tiles' worth (fill 16 / 16.5)."""
    n, k = 4 * EFF.compute_units * EFF.tile, 4096
    exact = shape_efficiency(EFF, 0.8, 2048, n, k)
    spread = shape_efficiency(EFF, 0.8, 2048, n, k, m_sd=45.0)
    assert exact == pytest.approx(0.8 * min(1.0, (k / (k + 128)) / (2048 / (2048 + 128))))
    assert spread < exact
    assert 2048 / (spread / exact) == pytest.approx(16.5 * 128, rel=2e-3)


def _megablox_rows(group_sizes: "np.ndarray", tile: int) -> float:
    """Rows Megablox computes: its grid visits each row tile once per non-empty group in it
    (tiles_m + num_groups - 1 steps at most), each visit a whole tile."""
    ends = np.cumsum(group_sizes)
    starts = ends - group_sizes
    touched = np.where(group_sizes > 0, -(-ends // tile) - starts // tile, 0)
    return float(touched.sum() * tile)


@pytest.mark.parametrize(("tokens", "experts", "top_k"), [
    (32768, 256, 8), (16384, 128, 8), (40960, 128, 4), (2048, 256, 8), (256, 256, 8)])
def test_grouped_rows_match_a_simulated_megablox_grid(tokens: int, experts: int,
                                                      top_k: int) -> None:
    """Route `tokens` at random (each to top_k distinct experts), pack the rows by expert as
    MaxText does, count Megablox's tile visits: the rows it computes per expert agree with
    grouped_rows_computed within 3% (the offsets are only nearly uniform)."""
    from cost_models.efficiency import grouped_rows_computed

    rng = np.random.default_rng(0)
    sims = []
    for _ in range(8):
        picks = np.argpartition(rng.random((tokens, experts)), top_k, axis=1)[:, :top_k]
        sizes = np.bincount(picks.ravel(), minlength=experts)
        sims.append(_megablox_rows(sizes, 512) / experts)
    mean = tokens * top_k / experts
    assert grouped_rows_computed(mean, 512) == pytest.approx(float(np.mean(sims)), rel=0.03)


def test_grouped_kernels_each_pay_their_boundary_tiles() -> None:
    """Two kernels (TPU7x's two JAX devices per chip) over half the rows each: one extra tile
    per kernel, and nothing for an expert no token reaches."""
    from cost_models.efficiency import grouped_rows_computed

    assert grouped_rows_computed(4096, 512, 2) == pytest.approx(4096 + 2 * 511)
    assert grouped_rows_computed(4096, 512, 1) == pytest.approx(4096 + 511)
    assert grouped_rows_computed(0.0, 512) == 0.0
    assert grouped_rows_computed(1e-3, 512) == pytest.approx(1e-3 + 511 * 1e-3, rel=1e-3)


@pytest.mark.parametrize(("mean", "sd"), [(1e5, 256.0), (12345.6, 300.0), (1e7, 3000.0)])
def test_wide_spreads_take_the_uniform_remainder(mean: float, sd: float) -> None:
    """Past two tiles of spread, expected_tiles returns mean/tile + 1/2 without the tail sum;
    the sum agrees to 1e-9."""
    from cost_models.efficiency import expected_tiles

    lo, hi = math.floor((mean - 8 * sd) / 128), math.ceil((mean + 8 * sd) / 128)
    tail = lo + sum(0.5 * math.erfc((j * 128 - mean) / (sd * math.sqrt(2)))
                    for j in range(lo, hi + 1))
    assert expected_tiles(mean, sd, 128) == pytest.approx(tail, abs=1e-9)


def test_tpu_experts_run_as_one_grouped_matmul() -> None:
    """On TPU v5p (Megablox, 512-row tiles) an MoE block's routed experts cost exactly their
    GEMMs over grouped_rows_computed rows; with per-expert GEMMs (grouped_row_tile = 0) the
    same block is faster, and its FLOPs do not change (padding is not model FLOPs)."""
    import dataclasses

    from cost_models.compute import Shard, _add_experts, block_compute
    from cost_models.efficiency import grouped_rows_computed
    from planner.presets import load_model

    model = load_model("qwen3-30b-a3b")
    dev = load_device("tpu-v5p")
    eff = device_efficiency(dev)[0]
    assert eff.grouped_row_tile == 512 and eff.grouped_kernels == 1
    per_expert_eff = dataclasses.replace(eff, grouped_row_tile=0)
    sh = Shard(mbs=2, seq_len=4096)
    grouped = block_compute(model, Roofline(dev, eff, DType.BF16), sh, moe=True)
    separate = block_compute(model, Roofline(dev, per_expert_eff, DType.BF16), sh, moe=True)
    assert grouped.fwd_s > separate.fwd_s and grouped.bwd_s > separate.bwd_s
    assert grouped.fwd_flops == pytest.approx(separate.fwd_flops)

    roof = Roofline(dev, eff, DType.BF16)
    fwd, _, bwd, _, _ = _add_experts(model, roof, sh, 0.0, 0.0, 0.0, 0.0)
    moe = model.moe
    assert moe is not None
    rows = grouped_rows_computed(sh.moe_tokens * moe.top_k / moe.num_experts, 512)
    want_f = want_b = 0.0
    for n, k in [(2 * moe.expert_ffn_hidden_size, model.hidden_size),
                 (model.hidden_size, moe.expert_ffn_hidden_size)]:
        tf, _, tb, _ = roof.gemm_fwd_bwd(rows, n, k)
        want_f, want_b = want_f + tf * moe.num_experts, want_b + tb * moe.num_experts
    assert fwd == pytest.approx(want_f) and bwd == pytest.approx(want_b)
