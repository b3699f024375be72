"""The device map's arithmetic: rank decomposition, interleaved chunks, experts, aggregation."""

from __future__ import annotations

from planner.report.devices import (
    MAX_FULL_DEVICES, MapInputs, device_roles, drawn_ranks, rank_coords, stage_chunks,
)


def test_rank_coords_first_key_varies_fastest() -> None:
    sizes = {"tp": 2, "cp": 1, "dp": 3, "pp": 4}
    order = ("tp", "cp", "dp", "pp")
    # rank = tp_i + 2*(cp_i + 1*(dp_i + 3*pp_i))
    assert rank_coords(0, sizes, order) == {"tp": 0, "cp": 0, "dp": 0, "pp": 0}
    assert rank_coords(1, sizes, order) == {"tp": 1, "cp": 0, "dp": 0, "pp": 0}
    assert rank_coords(2, sizes, order) == {"tp": 0, "cp": 0, "dp": 1, "pp": 0}
    assert rank_coords(6, sizes, order) == {"tp": 0, "cp": 0, "dp": 0, "pp": 1}
    assert rank_coords(23, sizes, order) == {"tp": 1, "cp": 0, "dp": 2, "pp": 3}
    # pp innermost: consecutive ranks are consecutive stages
    assert rank_coords(1, sizes, ("pp", "tp", "cp", "dp"))["pp"] == 1


def test_interleaved_chunks_match_narayanan_example() -> None:
    """Sec. 2.2.2: 16 layers on 4 devices with 2 chunks: device 1 holds layers 1, 2, 9, 10
    (1-based), device 2 layers 3, 4, 11, 12."""
    chunks = stage_chunks((4, 4, 4, 4), 2)
    assert chunks[0] == [(0, 1), (8, 9)]
    assert chunks[1] == [(2, 3), (10, 11)]
    assert chunks[3] == [(6, 7), (14, 15)]
    assert stage_chunks((3, 5), 1) == [[(0, 2)], [(3, 7)]]


def _inputs(**over: object) -> MapInputs:
    base = dict(sizes={"tp": 2, "cp": 1, "dp": 4, "pp": 2}, order=("tp", "cp", "dp", "pp"),
                layers_per_stage=(2, 2), vpp=1, ep=4, etp=1, num_experts=8,
                moe_layers=(False, True, True, True))
    return MapInputs(**{**base, **over})  # type: ignore[arg-type]


def test_experts_are_contiguous_per_expert_parallel_rank() -> None:
    roles = {r.rank: r for r in device_roles(_inputs(), list(range(16)))}
    # stage-local index = tp_i + 2*dp_i; ep rank = local % 4; 8 experts / ep 4 = 2 each
    assert roles[0].experts == (0, 1)
    assert roles[1].experts == (2, 3)
    assert roles[2].experts == (4, 5)
    assert roles[3].experts == (6, 7)
    assert roles[4].experts == (0, 1)
    assert roles[0].embedding and not roles[0].head
    assert roles[8].coords["pp"] == 1 and roles[8].head and roles[8].chunks == ((2, 3),)


def test_expert_tensor_parallel_ranks_share_experts() -> None:
    roles = {r.rank: r for r in device_roles(_inputs(etp=2, ep=2), list(range(8)))}
    assert roles[0].experts == roles[1].experts == (0, 3)
    assert roles[2].experts == (4, 7)


def test_stage_without_moe_blocks_holds_no_experts() -> None:
    roles = device_roles(_inputs(moe_layers=(False, False, True, True)), [0, 8])
    assert roles[0].experts is None and roles[1].experts == (0, 1)


def test_large_layouts_draw_one_data_parallel_replica() -> None:
    big = _inputs(sizes={"tp": 8, "cp": 1, "dp": 24, "pp": 8}, num_experts=None, ep=1)
    ranks, caption = drawn_ranks(big)
    assert len(ranks) == 64 and all(rank_coords(r, big.sizes, big.order)["dp"] == 0 for r in ranks)
    assert "x dp 24" in caption and "64 of 1536" in caption
    small = _inputs()
    assert 16 <= MAX_FULL_DEVICES and drawn_ranks(small)[0] == list(range(16))


def test_serving_maps_fold_ep_into_tp_or_spread_whole_experts_over_replicas() -> None:
    from planner import Plan, load_model
    from planner.report.inference import serving_map_inputs

    model = load_model("mixtral-8x7b")                                  # 8 experts
    folded = serving_map_inputs(Plan(tp=4, dp=2, ep=2), model)
    roles = {r.rank: r for r in device_roles(folded, list(range(8)))}
    # etp = tp/ep = 2: ranks 0-1 hold experts 0-3, ranks 2-3 experts 4-7, in each replica
    assert folded.etp == 2
    assert roles[0].experts == roles[1].experts == (0, 3) and roles[2].experts == (4, 7)
    assert roles[4].experts == (0, 3)
    wide = serving_map_inputs(Plan(tp=2, dp=4, ep=8), model)
    roles = {r.rank: r for r in device_roles(wide, list(range(8)))}
    # etp 1: one whole expert per device, over the 4 replicas' 8 ranks
    assert wide.etp == 1 and [roles[r].experts for r in range(8)] == [(e, e) for e in range(8)]


def test_serving_map_numbers_the_slots_when_ep_does_not_divide_the_experts() -> None:
    from planner import Plan, load_model
    from planner.report.inference import serving_map_inputs

    inp = serving_map_inputs(Plan(tp=1, dp=16, ep=16), load_model("mixtral-8x7b"))
    roles = {r.rank: r for r in device_roles(inp, list(range(16)))}
    assert inp.num_experts == 16 and [roles[r].experts for r in range(16)] == [(e, e) for e in range(16)]
