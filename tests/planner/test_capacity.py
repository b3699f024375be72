"""planner.capacity against hand calculations on a bare 8-block stack and a 2 GiB test device.

Hand numbers (tests/data/capacity-stack.toml, capacity-cluster.toml):
- A bare GPT block with biases and LayerNorm holds 12 h^2 + 13 h parameters (attention 4h^2 + 4h,
  MLP 8h^2 + 5h, two LayerNorms 4h); h = 1024 gives 12,596,224 per block.
- Mixed-precision Adam holds 2 + 2 + 12 = 16 bytes per parameter (ZeRO Sec. 3.1).
- The cost model adds 5% fragmentation and 1.5 GiB framework overhead per device
  (cost_models/memory.py), so a 2 GiB device has 0.5 GiB = 536,870,912 bytes for
  1.05 x states (+ tiny activations at seq_len 8, batch 1).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import TrainingWorkload, load_cluster, load_model
from planner import capacity as cap
from planner.errors import InfeasibleError, SpecError
from planner.model import GIB

CLUSTER = load_cluster("tests/data/capacity-cluster.toml")
STACK = load_model("tests/data/capacity-stack.toml")
# 16-bit gradients: the ZeRO paper's 2 + 2 + 12 bytes the hand calculations below use (the
# default in bf16 training is fp32 gradients, 18 bytes: test_default_states_are_18_bytes)
WL = TrainingWorkload(global_batch_size=1, seq_len=8, grad_dtype="bf16")
H = 1024
BLOCK = 12 * H * H + 13 * H                  # 12,596,224 parameters per block
USABLE = 2 * GIB - int(1.5 * GIB)            # bytes per device left after the overhead


def stack(layers: int, hidden: int = H, heads: int = 8) -> object:
    return STACK.model_copy(update={"num_layers": layers, "hidden_size": hidden,
                                    "num_attention_heads": heads, "ffn_hidden_size": 4 * hidden})


STACKS = cap.ShapeFamily("stack", "bare 1024-wide blocks, one more per member",
                         lambda i: stack(i))


def test_params_and_states_by_hand() -> None:
    assert STACK.params == 8 * BLOCK == 100_769_792
    assert cap.state_bytes_per_param(WL) == 16
    assert cap.state_bytes_per_param(TrainingWorkload(global_batch_size=1, seq_len=8)) == 18
    assert cap.states_bytes(STACK, WL) == 16 * 100_769_792


def test_states_count_the_mtp_modules_training_updates() -> None:
    """An MTP module (one more block of the last layer's type, the 2h x h projection and three
    norms) is trained, so its weights, gradients and optimizer states count; ModelSpec.params
    (the published size) leaves it out. By hand on the bare stack: one module adds a block,
    2h^2 and three LayerNorms (2h each)."""
    mtp = STACK.model_copy(update={"mtp_layers": 1})
    assert mtp.params == STACK.params                          # the published size
    assert cap.trained_params(mtp) == STACK.params + BLOCK + 2 * H * H + 3 * 2 * H
    assert cap.states_bytes(mtp, WL) == 16 * (100_769_792 + BLOCK + 2 * H * H + 6 * H)
    dsv3 = load_model("deepseek-v3")
    assert cap.states_bytes(dsv3, WL) == 16 * (dsv3.params + dsv3.mtp_module_params)


def test_lower_bound_by_hand() -> None:
    # 1.05 * 16 * 100,769,792 = 1,692,932,506 bytes over 536,870,912 per device -> 3.15 -> 4
    assert cap.lower_bound_devices(STACK, CLUSTER, WL) == 4
    assert cap.lower_bound_nodes(STACK, CLUSTER, WL) == 2
    # max params on 2 devices: 2 * 536,870,912 / (1.05 * 16) = 63,913,203.8
    assert cap.max_params_by_states(CLUSTER, WL, 2) == 63_913_203


def test_min_devices_by_hand() -> None:
    """1 node (2 devices): each holds >= 1.05 * 16 * P / 2 = 846 MB > 537 MB; 2 nodes with
    tp=2, pp=2 (batch 1 forces dp=1): 1.05 * 16 * P / 4 = 423 MB fits."""
    r = cap.min_devices(STACK, CLUSTER, WL)
    assert (r.lower_bound_nodes, r.min_nodes) == (2, 2)
    assert [p.nodes for p in r.points] == [2, 4, 8]
    first = r.points[0]
    assert first.fits and first.peak_memory_gib is not None
    hand_gib = (1.05 * 16 * STACK.params / 4 + 1.5 * GIB) / GIB
    assert first.peak_memory_gib == pytest.approx(hand_gib, abs=2e-3)  # + activations, p2p buffer
    miss = r.one_fewer
    assert miss is not None and miss.nodes == 1
    assert miss.least_memory_gib == pytest.approx((1.05 * 16 * STACK.params / 2 + 1.5 * GIB) / GIB,
                                                  abs=2e-3)
    assert miss.over_gib is not None and miss.over_gib > 0.28
    assert not cap.fits(STACK, CLUSTER, WL, 2) and cap.fits(STACK, CLUSTER, WL, 4)


def test_min_devices_infeasible_within_limit() -> None:
    with pytest.raises(InfeasibleError, match="at least 2 nodes"):
        cap.min_devices(STACK, CLUSTER, WL, max_nodes=1)


def test_capacity_by_hand() -> None:
    """On one node (tp=2), a member of i blocks needs 1.05 * 16 * i * BLOCK / 2 bytes per
    device: i = 5 needs 529.0 MB <= 536.9 MB, i = 6 needs 634.8 MB."""
    per_device = [1.05 * 16 * i * BLOCK / 2 for i in (5, 6)]
    assert per_device[0] < USABLE < per_device[1]
    r = cap.largest_trainable(STACKS, CLUSTER, WL, devices=2)
    assert r.largest.num_layers == 5 and r.largest.params == 5 * BLOCK
    assert r.next_up is not None and r.next_up.num_layers == 6
    assert r.best.fits and r.best.plan is not None and r.best.plan.startswith("tp=2,pp=1")
    miss = r.next_up_miss
    assert miss is not None
    assert miss.least_memory_gib == pytest.approx((per_device[1] + 1.5 * GIB) / GIB, abs=2e-3)
    assert r.largest.params <= r.max_params_by_states < r.next_up.params
    # the boundary itself: the answer fits and the next member does not
    assert cap.fits(stack(5), CLUSTER, WL, 2, max_tp=2)
    assert not cap.fits(stack(6), CLUSTER, WL, 2, max_tp=2)


def test_capacity_nothing_fits() -> None:
    huge = cap.ShapeFamily("huge", "test", lambda i: stack(8 + i))
    with pytest.raises(InfeasibleError, match="not even the smallest huge member that can be split"):
        cap.largest_trainable(huge, CLUSTER, WL, devices=2)


def test_capacity_table_family_whose_last_row_fits() -> None:
    rows = cap.ShapeFamily("rows", "test", lambda i: stack(i), size=3)
    r = cap.largest_trainable(rows, CLUSTER, WL, devices=2)
    assert r.largest.num_layers == 3 and r.next_up is None
    assert any("largest row" in n for n in r.notes)


def test_train_time_is_tokens_over_throughput() -> None:
    r = cap.train_time(STACK, CLUSTER, WL, devices=4, tokens=3e9)
    assert r.best.tokens_per_s is not None
    assert r.days == 3e9 / r.best.tokens_per_s / 86400
    assert r.gpu_hours == pytest.approx(r.days * 24 * 4)
    assert r.steps == math.ceil(3e9 / 8)


def test_train_time_infeasible() -> None:
    with pytest.raises(InfeasibleError):
        cap.train_time(STACK, CLUSTER, WL, devices=2, tokens=1e9)


@pytest.mark.parametrize(("text", "value"), [("300B", 3e11), ("1.5T", 1.5e12), ("450m", 4.5e8),
                                             ("2e11", 2e11), ("10K", 1e4), (" 7 ", 7.0),
                                             ("3G", 3e9)])
def test_parse_tokens(text: str, value: float) -> None:
    assert cap.parse_tokens(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-5B", "0", "1.5X", "B300", "1e400T"])
def test_parse_tokens_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="--tokens"):
        cap.parse_tokens(text)


def test_gpt3_family_passes_through_the_published_rows() -> None:
    fam = cap.get_family("gpt3", load_cluster("v100x4"))
    big = fam.member(96)
    ref = load_model("gpt3-175b")
    assert (big.num_layers, big.hidden_size, big.num_attention_heads) == (96, 12288, 96)
    assert big.params == ref.params
    assert (fam.member(32).hidden_size, fam.member(32).num_attention_heads) == (4096, 32)
    assert fam.member(33).num_attention_heads == 36      # rounded up to a multiple of tp 4
    assert cap.tp_multiple(load_cluster("v100x4")) == 4
    assert cap.tp_multiple(load_cluster("dgx-a100")) == 8


def test_gpt3_table_rows_match_published_sizes() -> None:
    fam = cap.get_family("gpt3-table", CLUSTER)
    published = (125e6, 350e6, 760e6, 1.3e9, 2.7e9, 6.7e9, 13.0e9, 175.0e9)  # Table 2.1 n_params
    assert fam.size == len(published)
    for i, n in enumerate(published, 1):
        assert fam.member(i).params == pytest.approx(n, rel=0.03), fam.member(i).name
    nar = cap.get_family("narayanan", CLUSTER)
    sizes = [nar.member(i).params for i in range(1, (nar.size or 0) + 1)]
    assert sizes == sorted(sizes) and len(sizes) == 10


def test_unknown_family() -> None:
    with pytest.raises(SpecError, match="--family 'gpt4'"):
        cap.get_family("gpt4", CLUSTER)


def test_device_without_room_for_the_overhead() -> None:
    tiny = CLUSTER.model_copy(update={"device": CLUSTER.device.model_copy(
        update={"memory_bytes": GIB})})
    with pytest.raises(SpecError, match="framework overhead"):
        cap.lower_bound_devices(STACK, tiny, WL)


SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.sampled_from([8, 16]))
def test_more_nodes_never_lower_capacity(nodes: int, batch: int, seq: int) -> None:
    wl = TrainingWorkload(global_batch_size=batch, seq_len=seq)
    small = cap.find_boundary(STACKS, CLUSTER, wl, devices=2 * nodes, max_tp=2)
    large = cap.find_boundary(STACKS, CLUSTER, wl, devices=2 * (nodes + 1), max_tp=2)
    assert large.largest >= small.largest


@SETTINGS
@given(st.integers(2, 12), st.sampled_from([512, 768, 1024]), st.sampled_from([1, 2, 4]))
def test_min_devices_fits_and_one_node_fewer_does_not(layers: int, hidden: int, batch: int) -> None:
    model = stack(layers, hidden)
    wl = TrainingWorkload(global_batch_size=batch, seq_len=8)
    lb, fewest, probes = cap.fewest_nodes(model, CLUSTER, wl, max_nodes=32)
    assert lb <= fewest and probes == fewest - lb + 1
    assert cap.fits(model, CLUSTER, wl, 2 * fewest)
    if fewest > 1:
        assert not cap.fits(model, CLUSTER, wl, 2 * (fewest - 1))
    if lb > 1:   # the bound is sound: one node below it nothing fits
        assert not cap.fits(model, CLUSTER, wl, 2 * (lb - 1))


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 10), st.integers(1, 3))
def test_feasibility_is_monotone_along_the_family(i: int, j: int, nodes: int) -> None:
    lo, hi = sorted((i, j))
    fam = cap.gpt3_family(2)
    if cap.fits(fam.member(hi), CLUSTER, WL, 2 * nodes, max_tp=2):
        assert cap.fits(fam.member(lo), CLUSTER, WL, 2 * nodes, max_tp=2)
