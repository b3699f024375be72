"""Compare the training cost model with published MoE training runs (issue 5).

Usage:
    python benchmarks/validate_moe.py [--data benchmarks/data/moe_runs.json]
        [--out benchmarks/results/validation_moe.md] [--only SUBSTRING]

Same harness as validate_published.py (same table, same per-source mean absolute error), for the
NVIDIA Megatron-Bridge / NeMo performance tables of DeepSeek-V3, Qwen3, GPT-OSS and Mixtral on
B200 and GB200. The mapping uses only facts stated in each record or its source:

- Model: the built-in preset of the named model (DeepSeek-V3 with MLA, Qwen3, GPT-OSS, Mixtral;
  each preset names its config source); the record's own dimensions (layers, hidden, heads,
  experts, top-k, expert FFN, vocabulary) are checked against the preset and a mismatch stops
  the run, so a record never silently scores another model.
- Precision: MXFP8/FP8 records run the matmuls in FP8 (dtype fp8), BF16 records in bf16.
- Plan: tp, pp, dp, cp, ep and vpp as recorded; expert tensor parallelism 1 (the tables' ETP
  column is 1 or absent); ZeRO-3 where `fsdp` is set, else the stage `zero` states
  (records.zero_stage), else Megatron's distributed optimizer (zero=1), which these recipes
  enable (Megatron-Bridge performance recipes, `use_distributed_optimizer=True`); recomputation as
  below, FlashAttention (cuDNN fused attention in the NeMo containers).
- Routing: the benchmarks force-balance routing and are dropless (record notes), so the
  expert load is the mean load: no imbalance and no capacity factor.
- DeepSeek-V3 trains its multi-token-prediction module (Megatron-Bridge's DeepSeek-V3 recipe
  sets `mtp_num_layers = 1`; the preset's mtp_layers = 1), except in rows the source labels
  'w/o MTP'. Its 61 blocks sit on the pipeline as that recipe lays them out for the record's
  (pp, vpp) (`layout_map`: the last virtual stage holds fewer blocks, beside the MTP module and
  the loss; DEEPSEEK_V3_RECIPE_LAYOUTS below).
- EP all-to-all overlap (plan key ep_overlap, Megatron-Core's combined 1F1B) and selective
  recomputation of modules (recompute_modules) as the Megatron-Bridge performance preset of
  the record's exact configuration sets them (MEGATRON_BRIDGE_PRESETS below: the overlap for
  DeepSeek-V3 MXFP8 on GB200 pp4 x vpp4 ep64 and on B200 pp8 x vpp2 ep32 and GPT-OSS-120B on
  GB200 ep64 at global batch 1280; mla_up_proj, mlp, layernorm or moe_act per preset);
  DeepSeek-V3 rows without a matching preset recompute mla_up_proj (the earlier script);
  otherwise no overlap and no recomputation.
- Other uneven virtual pipelines (the records give no layout): the blocks are spread as evenly
  as possible over the pp*vpp virtual stages, earlier chunks taking the remainder (`layers=`
  with pp*vpp counts); the bubble then follows the largest chunk.
- Token dispatcher: the flex dispatcher (a token crosses the network once per destination
  node), except Qwen3-235B-A22B on H100 and B200, which Megatron-Bridge's performance script
  runs with the NCCL all-to-all dispatcher (plan key dispatcher=alltoall; ALLTOALL_DISPATCHER
  below). The two differ only where the EP group spans nodes.
- GB200 jobs of 256 GPUs run on four NVL72 racks of 64 GPUs (the cluster's allocation unit is
  a 4-GPU compute tray; see ClusterSpec.job_view).
- Published step time: the record's derived iteration_s, else global tokens / measured tokens/s.
- A record that states its own settings in `parallel` is taken at its word, over the preset
  lookups above: `recompute` (read as the dense harness reads it, records.recompute_mode:
  full, also "true" and Megatron's uniform/block; selective; none; other wordings reported),
  `recompute_modules` (a list; selective), `ep_overlap` (bool), `dp_overlap` or
  `overlap_grad_reduce` (records.dp_overlap_for), `dispatcher` ("flex" or "alltoall"), `etp`,
  and `fsdp` (1: Megatron-FSDP, sharding weights, gradients and optimizer states: zero=3).
  The Megatron-Bridge tables state none of these beyond fsdp = 0; Megatron-MoE-ModelZoo's
  tables state them all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from planner import (  # noqa: E402
    Attention, Dispatcher, ModelSpec, Plan, Recompute, TrainingWorkload, load_model)
from planner.api import evaluate  # noqa: E402
from cost_models.efficiency import device_efficiency  # noqa: E402
from cost_models.training import MANY_LOCAL_EXPERTS, local_experts_warned  # noqa: E402
from planner.result import Estimate  # noqa: E402
from records import (  # noqa: E402
    NOT_EVALUATED,
    cluster_spec,
    data_parallel,
    dp_overlap_for,
    even_chunks,
    generic_moe_model,
    global_batch,
    grad_dtype_for,
    load_records,
    recompute_mode,
    require_mapped,
    stated_flag,
    zero_stage,
    zero_with_pipeline,
)
from validate_published import (  # noqa: E402
    config_key,
    device_label,
    dtype_for,
    evaluated_as,
    published_with_basis,
    render,
    signed_summary,
    skipped_row,
    source_family,
)

PRESETS = (("DeepSeekV3", "deepseek-v3"), ("Qwen3_235B", "qwen3-235b-a22b"),
           ("Qwen3_30B", "qwen3-30b-a3b"), ("GPTOSS120B", "gpt-oss-120b"),
           ("Mixtral-8x7B", "mixtral-8x7b"),
           # MaxText's model names (tpu-recipes record ids)
           ("deepseek3-671b", "deepseek-v3"), ("qwen3-235b-a22b", "qwen3-235b-a22b"),
           ("gpt-oss-120b", "gpt-oss-120b"))
"""Record-id fragment -> model preset."""


def model_for(record: dict[str, Any]) -> ModelSpec:
    """The preset named by the record, after checking the record's dimensions against it."""
    rid = record["id"]
    name = next((p for frag, p in PRESETS if frag in rid), None)
    if name is None:
        return generic_moe_model(record)      # a model without a preset: from the record
    spec, m = load_model(name), record["model"]
    stated = {"layers": spec.num_layers, "hidden": spec.hidden_size,
              "heads": spec.num_attention_heads, "vocab": spec.vocab_size}
    if spec.moe is not None and "moe" in m:
        stated |= {"experts": spec.moe.num_experts, "top_k": spec.moe.top_k,
                   "expert_ffn_hidden": spec.moe.expert_ffn_hidden_size}
    for key, want in stated.items():
        got = m.get("moe", {}).get(key) if key in ("experts", "top_k", "expert_ffn_hidden") else m.get(key)
        if got is not None and got != want:
            raise ValueError(f"{rid}: record says {key}={got}, preset {name} has {want}")
    return spec


DEEPSEEK_V3_RECIPE_LAYOUTS: dict[tuple[int, int], tuple[int, ...]] = {
    (4, 1): (16, 16, 16, 13),
    (8, 1): (8,) * 7 + (5,),
    (4, 2): (8,) * 7 + (5,),
    (16, 1): (4,) * 15 + (1,),
    (8, 2): (4,) * 15 + (1,),
    (4, 4): (4,) * 15 + (1,),
    (2, 8): (4,) * 15 + (1,),      # GB300 preset pp_layout 'Et*4|(t*4|)*14tmL'
}
"""Decoder blocks per virtual stage of Megatron-Bridge's DeepSeek-V3 recipe for (pp, vpp)
(src/megatron/bridge/recipes/deepseek/deepseek_v3.py, `layout_map`, which the performance
scripts use by passing layout=None): the embedding rides with the first chunk, the MTP module
and the loss with the last, which therefore holds fewer blocks."""


RecipeKey = tuple[str, str, frozenset[str], int, int, int, int, int]
MEGATRON_BRIDGE_PRESETS: tuple[tuple[RecipeKey, bool, tuple[str, ...]], ...] = (
    # ((record-id fragment, GPU, precisions, pp, vpp, ep, global batch, micro-batch),
    #  moe_a2a_overlap, recompute_modules)
    # scripts/performance/configs/deepseek/deepseek_workload_base_configs.py
    (("DeepSeekV3", "GB200", frozenset({"MXFP8"}), 4, 4, 64, 4096, 1), True, ("mla_up_proj",)),
    (("DeepSeekV3", "GB200", frozenset({"BF16"}), 4, 4, 64, 4096, 1), False, ("mla_up_proj",)),
    (("DeepSeekV3", "GB200", frozenset({"FP8"}), 4, 4, 64, 2048, 1), False, ("mlp",)),
    (("DeepSeekV3", "B200", frozenset({"FP8", "FP8-MX"}), 16, 1, 8, 2048, 1), False,
     ("mla_up_proj",)),
    (("DeepSeekV3", "B200", frozenset({"MXFP8"}), 8, 2, 32, 4096, 1), True,
     ("mla_up_proj", "mlp")),
    # scripts/performance/configs/gpt_oss/gpt_oss_workload_base_configs.py
    (("GPTOSS120B", "GB200", frozenset({"MXFP8"}), 1, 1, 64, 1280, 4), True, ()),
    (("GPTOSS120B", "GB200", frozenset({"BF16"}), 1, 1, 64, 1280, 4), True,
     ("layernorm", "moe_act")),
    (("GPTOSS120B", "B200", frozenset({"BF16"}), 1, 1, 8, 1280, 4), False,
     ("layernorm", "moe_act")),
    # Blackwell Ultra: the same two files @042641823051 (deepseek) and @07eea52d4523 (gpt_oss)
    (("DeepSeekV3", "GB300", frozenset({"MXFP8"}), 2, 8, 32, 4096, 1), True, ()),
    (("DeepSeekV3", "GB300", frozenset({"MXFP8"}), 2, 8, 32, 15360, 1), True, ()),
    (("GPTOSS120B", "GB300", frozenset({"MXFP8"}), 1, 1, 16, 1280, 4), True, ()),
    (("GPTOSS120B", "GB300", frozenset({"BF16"}), 1, 1, 64, 1280, 4), False, ()),
    (("GPTOSS120B", "B300", frozenset({"MXFP8"}), 1, 1, 8, 1280, 4), True, ()),
    (("GPTOSS120B", "B300", frozenset({"BF16"}), 1, 1, 8, 1280, 4), False, ()),
)
"""Megatron-Bridge performance presets whose GPU, precision, parallel sizes, global batch and
micro-batch equal a record's, with what they set beyond the published table: `moe_a2a_overlap`
(Megatron-Core's combined 1F1B, plan key ep_overlap; the WorkloadBaseConfig default is False)
and `recompute_modules` (selective recomputation of those modules; an empty list recomputes
nothing). Qwen3's presets turn recomputation off (configs/qwen/qwen3_llm_pretrain.py,
`recompute_granularity = None`) and leave the overlap off."""

ALLTOALL_DISPATCHER: tuple[tuple[str, str], ...] = (("Qwen3_235B", "H100"), ("Qwen3_235B", "B200"))
"""(record-id fragment, GPU) whose Megatron-Bridge performance script sets Megatron-Core's
NCCL all-to-all dispatcher: scripts/performance/configs/qwen/qwen3_llm_pretrain.py,
`qwen3_235b_a22b_pretrain_config_h100` and `..._b200` set `moe_token_dispatcher_type =
"alltoall"` (the GB200 functions and every Qwen3-30B-A3B function set "flex"). Read at
Megatron-Bridge 05c0c90f; the records do not say which script version ran, so all containers
take it. Every other record keeps the plan default, the flex dispatcher (plan key dispatcher;
the two differ only where the EP group spans nodes)."""

DEEPSEEK_V3_DEFAULT_RECOMPUTE = ("mla_up_proj",)
"""DeepSeek-V3 rows that match no preset above (older containers' configurations): the earlier
performance script, configs/deepseek/deepseek_llm_pretrain.py, sets selective recomputation of
`mla_up_proj` for every B200 and GB200 configuration."""


def gpu_of(record: dict[str, Any]) -> str:
    """The DGX system the record's id names ('GB300', 'GB200', 'B300', 'B200', 'H100'), or ''."""
    return next((g for g in ("GB300", "GB200", "B300", "B200", "H100")
                 if f"DGX-{g}_" in record["id"]), "")


def preset_for(record: dict[str, Any]) -> tuple[bool, tuple[str, ...] | None]:
    """(ep_overlap, recompute_modules or None for no recomputation) of the record's run."""
    rid, p, b = record["id"], record["parallel"], record["batch"]
    gpu = gpu_of(record)
    key = (p.get("pp") or 1, p.get("vpp") or 1, p.get("ep") or 1, global_batch(record),
           b["micro"])
    for (frag, g, prec, *cfg), overlap, modules in MEGATRON_BRIDGE_PRESETS:
        if frag in rid and gpu == g and record["precision"] in prec and key == tuple(cfg):
            return overlap, (modules or None)
    return False, DEEPSEEK_V3_DEFAULT_RECOMPUTE if "DeepSeekV3" in rid else None


def mtp_layers_for(record: dict[str, Any], model: ModelSpec) -> int:
    """DeepSeek-V3 trains its MTP module in Megatron-Bridge's recipe (`mtp_num_layers = 1`,
    same file); a row the source labels 'w/o MTP' ran without it, and a record that states
    `model.mtp_layers` (MaxText's configs set none) is taken at its word."""
    stated = record["model"].get("mtp_layers")
    if stated is not None:
        return int(stated)
    if "w/o MTP" in record.get("notes", ""):
        return 0
    return model.mtp_layers


def plan_for(record: dict[str, Any], model: ModelSpec) -> Plan:
    p = record["parallel"]
    pp, vpp = p.get("pp") or 1, p.get("vpp") or 1
    layers = None
    per_stage = Plan(pp=pp).layers_per_stage(model.num_layers)
    recipe = DEEPSEEK_V3_RECIPE_LAYOUTS.get((pp, vpp)) if model.name == "deepseek-v3" else None
    if recipe is not None and sum(recipe) == model.num_layers:
        layers = recipe
    elif vpp > 1 and any(n % vpp for n in per_stage):
        layers = even_chunks(model.num_layers, pp, vpp)
    overlap, modules = preset_for(record)
    alltoall = any(frag in record["id"] and gpu == gpu_of(record)
                   for frag, gpu in ALLTOALL_DISPATCHER)
    recompute = Recompute.SELECTIVE if modules else Recompute.NONE
    # What the record itself states wins over the preset lookups (module docstring), read by
    # the dense harness's rules (records.recompute_mode): full (also "true", uniform, block),
    # selective (its modules as listed, else the preset's, else Megatron's core_attn), none.
    stated = recompute_mode(p["recompute"]) if p.get("recompute") is not None else None
    if "recompute_modules" in p and stated in (None, Recompute.SELECTIVE):
        modules = tuple(p["recompute_modules"]) or None
        recompute = Recompute.SELECTIVE if modules or stated else Recompute.NONE
    elif stated == Recompute.SELECTIVE:
        recompute = Recompute.SELECTIVE
    elif stated is not None:
        recompute, modules = stated, None
    overlap = stated_flag(p.get("ep_overlap"), overlap)
    if "dispatcher" in p:
        alltoall = Dispatcher(p["dispatcher"]) == Dispatcher.ALLTOALL
    return Plan(tp=p.get("tp") or 1, pp=pp, dp=data_parallel(p, record["hardware"]["gpus"]),
                cp=p.get("cp") or 1,
                ep=p.get("ep") or 1, etp=p.get("etp"), vpp=vpp, mbs=record["batch"]["micro"],
                zero=zero_with_pipeline(3 if p.get("fsdp") else zero_stage(p["zero"])
                                        if p.get("zero") is not None else 1, pp),
                recompute=recompute, recompute_modules=modules, attn=Attention.FLASH,
                stage_layers=layers, ep_overlap=overlap, dp_overlap=dp_overlap_for(record),
                dispatcher=Dispatcher.ALLTOALL if alltoall else Dispatcher.FLEX)


def mapped_model(record: dict[str, Any]) -> ModelSpec:
    require_mapped(record)
    model = model_for(record)
    return model.model_copy(update={"mtp_layers": mtp_layers_for(record, model)})


def predict(record: dict[str, Any]) -> Estimate:
    model = mapped_model(record)
    return _estimate(record, model, plan_for(record, model))


def _estimate(record: dict[str, Any], model: ModelSpec, plan: Plan) -> Estimate:
    wl = TrainingWorkload(global_batch_size=global_batch(record),
                          seq_len=record["model"]["seq_len"], dtype=dtype_for(record),
                          grad_dtype=grad_dtype_for(record))
    return evaluate(model, cluster_spec(record), wl, plan, devices=record["hardware"]["gpus"])


def run(data: Path, only: str | None) -> list[dict[str, Any]]:
    rows = []
    for r in load_records(data):
        if only and only not in r["id"]:
            continue
        try:
            model = mapped_model(r)
            pub, basis = published_with_basis(r, model)
            plan = plan_for(r, model)
            est = _estimate(r, model, plan)
        except NOT_EVALUATED as e:
            rows.append(skipped_row(r, e))
            continue
        cluster = cluster_spec(r)
        warned = local_experts_warned(model, plan,
                                      device_efficiency(cluster.device)[0].grouped_row_tile)
        rows.append({"id": r["id"], "source": source_family(r), "device": device_label(r),
                     "evaluated_as": evaluated_as(r, est.plan),
                     "many_local_experts": warned,
                     "published_s": pub, "published_basis": basis,
                     "predicted_s": est.step_time_s, "error": est.step_time_s / pub - 1,
                     "mbs": r["batch"]["micro"], "microbatches": est.num_microbatches,
                     "mfu": est.mfu, "fits": est.fits,
                     "peak_gib": est.peak_memory_gib,
                     "gpus": r["hardware"]["gpus"],
                     "config": config_key(model, r, plan.model_dump(mode="json")),
                     "work": config_key(model, r, plan.model_dump(mode="json"), per_gpu=True)})
    return rows


CUDA_GRAPHS = ROOT / "benchmarks/data/moe_cuda_graphs.json"
"""The CUDA-graph setting of the Megatron-Bridge preset matching each record (its own
description says how it was read)."""


def cuda_graph_groups(rows: list[dict[str, Any]], graphs: dict[str, dict[str, Any]],
                      ) -> dict[tuple[str, str], list[float]]:
    """Signed errors of the scored rows whose preset matches exactly, by (GPU system, the
    preset's cuda_graph_impl or 'none'); GPT-OSS is left out (its gap is the attention sinks'
    question, README "Mixture-of-experts runs")."""
    out: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        g = graphs.get(r["id"])
        if "skipped" in r or g is None or g["match"] != "exact" or "GPTOSS" in r["id"]:
            continue
        key = (gpu_of({"id": r["id"]}), g.get("cuda_graph_impl") or "none")
        out.setdefault(key, []).append(r["error"])
    return dict(sorted(out.items()))


def render_cuda_graphs(groups: dict[tuple[str, str], list[float]]) -> str:
    if not groups:
        return ""
    lines = ["", "By the CUDA-graph setting of the Megatron-Bridge preset that matches the run "
             f"exactly ({CUDA_GRAPHS.relative_to(ROOT)}; GPT-OSS left out):", "",
             "| GPU | cuda_graph_impl | runs | mean signed error |", "|---|---|--:|--:|"]
    for (gpu, impl), errs in groups.items():
        lines.append(f"| {gpu} | {impl} | {len(errs)} | {sum(errs) / len(errs):+.1%} |")
    return "\n".join(lines) + "\n"


def local_expert_groups(rows: list[dict[str, Any]]) -> dict[bool, list[float]]:
    """Signed errors of the scored rows by whether the estimate carries the many-local-experts
    warning (cost_models.training.MANY_LOCAL_EXPERTS): the evidence the warning cites."""
    out: dict[bool, list[float]] = {}
    for r in rows:
        if "skipped" not in r:
            out.setdefault(r["many_local_experts"], []).append(r["error"])
    return out


def render_local_experts(groups: dict[bool, list[float]]) -> str:
    if not groups:
        return ""
    labels = {False: f"under {MANY_LOCAL_EXPERTS}, or grouped kernels",
              True: f"{MANY_LOCAL_EXPERTS} or more (warned)"}
    lines = ["", f"By routed experts per device (the warning at {MANY_LOCAL_EXPERTS} or more on a "
             "device that runs each expert as its own GEMM: host time not modelled, "
             "cost_models/training.py MANY_LOCAL_EXPERTS):", ""]
    lines += signed_summary({labels[w]: groups[w] for w in (False, True) if groups.get(w)},
                            group="experts per device")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks/data/moe_runs.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/validation_moe.md")
    ap.add_argument("--only", default=None, help="only records whose id contains this")
    args = ap.parse_args()
    try:
        rows = run(args.data, args.only)
    except (OSError, ValueError) as e:        # unreadable or not records (UnmappedRecord)
        print(f"error: {e}", file=sys.stderr)
        return 2
    graphs = {g["id"]: g for g in json.loads(CUDA_GRAPHS.read_text())["records"]}
    table = (render(rows) + render_cuda_graphs(cuda_graph_groups(rows, graphs))
             + render_local_experts(local_expert_groups(rows)))
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Cost model vs published MoE runs ({args.data.name})\n\n{table}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
