"""Compare the training cost model with published training runs.

Usage:
    python benchmarks/validate_published.py [--data benchmarks/data/published_runs.json]
        [--out benchmarks/results/validation.md] [--only SUBSTRING]

For every record it builds the model from the record's dimensions, picks the cluster preset
for the record's hardware, builds the plan from the record's parallel configuration, and
prints the published and predicted step time (seconds per iteration) and the error; then the
mean absolute percentage error per source. The table is also written to --out (Markdown).

The mapping uses only facts about each run, stated in the record or its source:
- Megatron-LM (Narayanan 2021 Table 1, the 2020 README): GPT architecture (LayerNorm, biases,
  learned positions, tied embeddings, GELU), fp16, full activation recomputation (their
  TFLOP/s accounting counts 4 passes), unfused attention (FlashAttention appeared in 2022),
  and the gradient all-reduce after the backward pass, not overlapped with it (dp_overlap=off:
  Megatron-LM's default `--DDP-impl local` all-reduced in train_step once
  forward_backward_func had returned; overlap came with Megatron-Core's --overlap-grad-reduce).
- Data-parallel overlap otherwise: a record's `dp_overlap` or `overlap_grad_reduce`, else by the
  code base its source names (records.dp_overlap_for: off for DeepSpeed's pipeline engine and
  Megatron-LM before 2023, on otherwise).
- MosaicML MPT: learned positions and linear biases (MPTConfig defaults alibi=False and
  no_bias=False, which the pretrain yamls keep: with them the model's parameter count equals
  the table's NumParams column exactly, for every MPT row), tied embeddings, GELU, no dropout
  (MPTConfig defaults),
  fused cross entropy (llm-foundry's default loss_fn), bf16 with bf16 gradient reduction
  (FSDP mixed precision PURE), FSDP FULL_SHARD = ZeRO-3,
  llm-foundry's Triton FlashAttention (attn_impl: triton, a FlashAttention-1 port: attn=flash1),
  recomputation as recorded.
- Any other source: benchmarks/records.py maps the record from what it states (device and
  node size, the inter-node bandwidth its link text gives, a gated or GELU MLP by the stated
  parameter count, the attention kernel by the source's year, the ZeRO stage from its text, and
  an interleaved pipeline whose chunks the blocks do not fill evenly laid out as Megatron-Core's
  embedding/loss accounting lays it out).
  A record that cannot be evaluated as stated (a device without a preset, an impossible plan)
  is listed under the table with the reason and left out of the means.
- Gradient reduction dtype: a record's `parallel.grad_reduce` ("bf16": NVIDIA's performance
  scripts set grad_reduce_in_fp32 = False), else bf16 for MPT, else meshplan's default
  (records.grad_dtype_for).
- Activation offloading: a record's `parallel.cpu_offload_layers` (Megatron-Bridge's
  cpu_offloading_num_layers, from the perf config its notes cite) is the plan key offload.
- Published step times: measured iteration_s (or step_time_s) where given; otherwise the
  record's derived iteration_s (Narayanan: Eq. 3 FLOPs / (GPUs * TFLOP/s)); otherwise global
  tokens divided by the measured tokens/s (per GPU or device, or in total), or sequences by
  sequences/s; a record stating only a utilisation is converted by its source's FLOP
  convention (`implied_step_s`: MFU over model FLOPs, HFU over FLOPs counting full
  recomputation, TFLOP/s per GPU by the convention its notes name, none for fp8/fp4), and the
  table lists those conversions; a record stating none of these is reported.
- A record without a micro-batch size (Narayanan Table 1) is evaluated at the micro-batch
  size the cost model itself finds fastest among those that fit (the tuning the authors
  describe in Sec. 5.9), never at a value chosen to match the published number.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from planner import Attention, DType, LossKernel, ModelSpec, Plan, Recompute, TrainingWorkload  # noqa: E402
from cost_models.training import full_recompute_flops_per_token  # noqa: E402
from planner.api import evaluate  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.model import default_grad_dtype  # noqa: E402
from planner.result import Estimate  # noqa: E402
from records import (  # noqa: E402
    NOT_EVALUATED,
    UnmappedRecord,
    attention_kernel,
    cluster_name,
    cluster_spec,
    data_parallel,
    dp_overlap_for,
    generic_model,
    global_batch,
    grad_dtype_for,
    interleaved_layout,
    load_records,
    recompute_mode,
    require_mapped,
    stated_flag,
    zero_stage,
    zero_with_pipeline,
)


def source_family(record: dict[str, Any]) -> str:
    rid = record["id"]
    for prefix, name in (("narayanan2021", "Narayanan et al. 2021 Table 1"),
                         ("megatron_readme2020", "Megatron-LM README 2020"),
                         ("mpt_", "MosaicML llm-foundry MPT"),
                         ("mbridge", "NVIDIA Megatron-Bridge"),
                         ("nemodocs", "NVIDIA NeMo docs")):
        if rid.startswith(prefix):
            return name
    return record["source"].split(",")[0]


def cluster_for(record: dict[str, Any]) -> str:
    """The cluster preset for the record's device (records.cluster_name)."""
    return cluster_name(record)


def model_for(record: dict[str, Any]) -> ModelSpec:
    m, rid = record["model"], record["id"]
    common = dict(name=rid, num_layers=m["layers"], hidden_size=m["hidden"],
                  num_attention_heads=m["heads"], num_kv_heads=m.get("kv_heads"),
                  ffn_hidden_size=m["ffn_hidden"], vocab_size=m["vocab"])
    if rid.startswith("mpt_"):
        # llm-foundry MPTConfig defaults: resid_pdrop = emb_pdrop = attn_config.attn_pdrop =
        # 0.0, which the pretrain yamls keep: no dropout.
        return ModelSpec(**common, positional="learned", max_position_embeddings=m["seq_len"],
                         linear_bias=True, tied_embeddings=True, norm="layernorm",
                         activation="gelu", dropout=False)
    if rid.startswith(("narayanan2021", "megatron_readme2020")):
        return ModelSpec(**common, positional="learned", max_position_embeddings=m["seq_len"],
                         linear_bias=True, tied_embeddings=True, norm="layernorm",
                         activation="gelu")
    return generic_model(record)     # any other source: from what the record states


def dtype_for(record: dict[str, Any]) -> DType:
    """The number format of the record's GEMMs, from the first format its precision names, in
    this order: NVFP4 is meshplan's fp4 (Transformer Engine's NVFP4BlockScaling recipe), and
    a format meshplan does not model (MXFP4, int8, int4) is reported, not read as bf16; FP8
    by any of its names (fp8, float8, E4M3, E5M2, MXFP8, FP8-CS); bf16 ("bfloat16"); fp16
    ("float16", "half"); tf32; fp32 ("float32"). A precision that names none of them (an
    unstated 16-bit mixed precision) is read as bf16."""
    p = record["precision"].lower()
    if p == "nvfp4":
        return DType.FP4
    if any(k in p for k in ("fp4", "int8", "int4")):
        raise UnmappedRecord(f"precision '{record['precision']}' is not modelled (meshplan "
                             "trains in fp32, tf32, bf16, fp16, fp8 or NVFP4)")
    for names, dtype in ((("fp8", "float8", "e4m3", "e5m2"), DType.FP8),
                         (("bf16", "bfloat16"), DType.BF16),
                         (("fp16", "float16", "half"), DType.FP16),
                         (("tf32",), DType.TF32),
                         (("fp32", "float32"), DType.FP32)):
        if any(name in p for name in names):
            return dtype
    return DType.BF16


def plan_fields(record: dict[str, Any]) -> dict[str, Any]:
    p, rid = record["parallel"], record["id"]
    recompute = recompute_mode(p.get("recompute"))
    # a record that names the modules it recomputes (MaxText's custom remat policy: the
    # tensors it names are saved, the norms and the MLP recomputed) is taken at its word
    modules = tuple(p["recompute_modules"]) if recompute == Recompute.SELECTIVE and \
        p.get("recompute_modules") else None
    stage = zero_with_pipeline(
        zero_stage(p.get("zero") if p.get("zero") is not None else p.get("fsdp")),
        p.get("pp") or 1)
    overlap = dp_overlap_for(record)     # Megatron-LM 2020-21: off (its local DDP)
    if rid.startswith(("narayanan2021", "megatron_readme2020")):
        recompute, attn = Recompute.FULL, Attention.UNFUSED
    elif rid.startswith("mpt_"):
        attn = Attention.FLASH1      # llm-foundry's Triton FlashAttention (2023 benchmarks)
    else:
        attn = attention_kernel(record)
    # llm-foundry's ComposerMPTCausalLM defaults loss_fn to 'fused_crossentropy' (flash-attn's
    # CrossEntropyLoss, gradient in place over the bf16 logits); Megatron keeps fp32 softmax.
    loss = LossKernel.FUSED if rid.startswith("mpt_") else LossKernel.UNFUSED
    pp, vpp = p.get("pp") or 1, p.get("vpp") or 1
    fields = dict(loss=loss, tp=p.get("tp") or 1, pp=pp,
                  dp=data_parallel(p, record["hardware"]["gpus"]), cp=p.get("cp") or 1,
                  vpp=vpp, sp=stated_flag(p.get("sp")),
                  recompute=recompute, recompute_modules=modules, zero=stage, attn=attn,
                  offload=int(p.get("cpu_offload_layers") or 0), dp_overlap=overlap)
    layout = interleaved_layout(record["model"]["layers"], pp, vpp)
    if layout is not None:
        fields["stage_layers"] = layout
    return fields


def published_step_s(record: dict[str, Any]) -> float:
    """Seconds per step as the record states them: a measured iteration (or step) time, else
    the record's derived one, else the global batch over the measured throughput, in tokens
    per second per GPU (or device) or in total, or in sequences per second. A record that
    states only a utilisation is reported here; `published_with_basis` converts it by its
    source's FLOP convention (`implied_step_s`)."""
    meas, der = record.get("measured") or {}, record.get("derived") or {}
    for value in (meas.get("iteration_s"), meas.get("step_time_s"), der.get("iteration_s")):
        if value:
            return float(value)
    seqs = global_batch(record)
    tokens = seqs * record["model"]["seq_len"]
    gpus = record["hardware"]["gpus"]
    per_gpu = meas.get("tokens_per_s_per_gpu") or meas.get("tokens_per_s_per_device")
    if per_gpu:
        return tokens / (float(per_gpu) * gpus)
    total = meas.get("tokens_per_s_total") or meas.get("tokens_per_s")
    if total:
        return tokens / float(total)
    samples = meas.get("samples_per_s") or meas.get("sequences_per_s")
    if samples:
        return seqs / float(samples)
    raise UnmappedRecord("the record states no step time, tokens/s or sequences/s, and no "
                         "MFU, HFU or TFLOP/s whose FLOP convention it names: give "
                         "derived.iteration_s converted with its source's convention")


_HARDWARE_CONVENTION = re.compile(r"\beq(?:uation)?\.?\s*\(?3\b|counts? (?:activation )?recomput"
                                  r"|hardware flops"
                                  r"|\bhfu\b|4 passes|including recomput|incl\.? recomput")
_MODEL_CONVENTION = re.compile(r"model flops|\bmfu\b|no recomput|without recomput"
                               r"|excluding recomput|korthikanti|3 passes")
"""Wording by which a record's notes name the FLOP convention of its TFLOP/s per GPU."""


def implied_step_s(record: dict[str, Any], model: ModelSpec) -> list[tuple[str, float]]:
    """The step times a record's stated utilisations imply, each with its basis, by the
    conventions the records' sources use: MFU = model FLOPs (3 passes, attention scores over
    the whole sequence: Korthikanti et al. 2022, MosaicML's 3*(2N+attn)) / (time x GPUs x the
    number format's dense peak); HFU the same with full recomputation's fourth pass of the
    blocks (Narayanan et al. 2021 Eq. 3, MosaicML's HFU); `tflops_per_gpu` by whichever of the
    two the record's notes name (`_HARDWARE_CONVENTION`, `_MODEL_CONVENTION`; neither or both:
    not converted). HFU and hardware TFLOP/s need full or no recomputation (selective
    recomputation's FLOPs depend on its modules). No conversion is made for 8- or 4-bit
    formats, whose utilisations sources quote against different peaks, nor for mixtures of
    experts or sliding-window attention, whose FLOPs sources count by formulas of their own
    (NeMo's TFLOP/s of GPT-OSS imply times 13-28% off its measured ones here)."""
    meas = record.get("measured") or {}
    dtype = dtype_for(record)
    if dtype in (DType.FP8, DType.FP4) or model.moe is not None or model.sliding_window:
        return []
    seq = record["model"]["seq_len"]
    tokens = global_batch(record) * seq
    gpus = record["hardware"]["gpus"]
    fwd = model.training_forward_flops_per_token(seq)
    model_flops = 3 * fwd * tokens
    recompute = plan_fields(record)["recompute"]     # as the run is evaluated
    hardware_flops = None
    if recompute == Recompute.FULL:     # the blocks again, as the estimate's HFU counts it
        hardware_flops = model_flops + full_recompute_flops_per_token(model, seq) * tokens
    elif recompute == Recompute.NONE:
        hardware_flops = model_flops
    peak = cluster_spec(record).device.peak_flops(dtype)
    out: list[tuple[str, float]] = []
    if meas.get("mfu"):
        out.append(("MFU", model_flops / (float(meas["mfu"]) * peak * gpus)))
    if meas.get("hfu") and hardware_flops is not None:
        out.append(("HFU", hardware_flops / (float(meas["hfu"]) * peak * gpus)))
    tflops = meas.get("tflops_per_gpu") or meas.get("tflops_per_device")
    if tflops:
        text = " ".join(str(x) for x in (record.get("notes", ""), record["parallel"].get(
            "recompute", ""), (record.get("derived") or {}).get("iteration_s_note", ""))).lower()
        hardware, modelled = _HARDWARE_CONVENTION.search(text), _MODEL_CONVENTION.search(text)
        if hardware and not modelled and hardware_flops is not None:
            out.append(("TFLOP/s (counting recomputation)",
                        hardware_flops / (float(tflops) * 1e12 * gpus)))
        elif modelled and not hardware:
            out.append(("TFLOP/s (model FLOPs)", model_flops / (float(tflops) * 1e12 * gpus)))
    return out


def predict(record: dict[str, Any]) -> tuple[Estimate, int]:
    """Evaluate the record's configuration; choose mbs only when the record lacks it."""
    require_mapped(record)
    model, cluster = model_for(record), cluster_spec(record)
    gb = global_batch(record)
    wl = TrainingWorkload(global_batch_size=gb, seq_len=record["model"]["seq_len"],
                          dtype=dtype_for(record), grad_dtype=grad_dtype_for(record))
    fields = plan_fields(record)
    n = record["hardware"]["gpus"]
    micro = record["batch"].get("micro")
    if micro:
        mbs_options = [micro]
    else:
        per_replica = gb // fields["dp"]
        mbs_options = [b for b in (1, 2, 4, 8, 16, 32) if per_replica % b == 0]
    best: tuple[Estimate, int] | None = None
    for mbs in mbs_options:
        plan = Plan(**fields, mbs=mbs)
        try:
            est = evaluate(model, cluster, wl, plan, devices=n)
        except PlannerError:
            # Micro-batching engines (llm-foundry) accept a micro-batch that does not divide
            # the per-replica batch; evaluate the nearest whole number of micro-batches.
            per = gb // fields["dp"]
            wl2 = wl.model_copy(update={"global_batch_size": max(1, round(per / mbs)) * mbs
                                        * fields["dp"]})
            est = evaluate(model, cluster, wl2, plan, devices=n)
            est = est.model_copy(update={"step_time_s": est.step_time_s * gb
                                         / wl2.global_batch_size})
        if micro or best is None or (est.fits and (not best[0].fits
                                                   or est.step_time_s < best[0].step_time_s)):
            best = (est, mbs)
    assert best is not None
    return best


def config_key(model: ModelSpec, record: dict[str, Any], plan: dict[str, Any], *,
               per_gpu: bool = False) -> str:
    """Everything the harness gives `evaluate` for a record, the record's id aside, plus the
    record's own precision recipe: records with equal keys get the same prediction whatever
    their published times (`noise_floor`). The recipe is kept apart (MXFP8 and 'FP8-MX' are one
    recipe, per-tensor 'FP8' another) although both run as fp8 here, so that the floor is one
    that even a model telling the scaling recipes apart could not beat.

    per_gpu: leave out the GPU count, the data-parallel degree and the global batch, and put
    in the micro-batches per step instead: records with equal keys then do the same work on
    each GPU and differ only in how many GPUs share it (`scaling_inversions`)."""
    recipe = record["precision"].lower().replace("-", "").replace("fp8mx", "mxfp8")
    dp = plan.get("dp") or 1
    if per_gpu:
        steps = global_batch(record) / (dp * (plan.get("mbs") or 1))
        scale: list[Any] = [round(steps, 6), {k: v for k, v in plan.items() if k != "dp"}]
    else:
        scale = [global_batch(record), plan, record["hardware"]["gpus"]]
    return json.dumps([model.model_dump(mode="json", exclude={"name"}),
                       cluster_spec(record).model_dump(mode="json"),
                       record["model"]["seq_len"], dtype_for(record).value, recipe, *scale],
                      sort_keys=True, default=str)


def run(data: Path, only: str | None) -> list[dict[str, Any]]:
    records = load_records(data)
    rows = []
    for r in records:
        if only and only not in r["id"]:
            continue
        try:
            model = model_for(r)
            pub, basis = published_with_basis(r, model)
            est, mbs = predict(r)
        except NOT_EVALUATED as e:
            rows.append(skipped_row(r, e))
            continue
        plan = {**plan_fields(r), "mbs": mbs}
        implied = [] if basis else [(b, t / pub - 1) for b, t in implied_step_s(r, model)]
        rows.append({"id": r["id"], "source": source_family(r), "device": device_label(r),
                     "evaluated_as": evaluated_as(r, est.plan),
                     "published_s": pub, "published_basis": basis, "implied": implied,
                     "predicted_s": est.step_time_s, "error": est.step_time_s / pub - 1,
                     "mbs": mbs, "microbatches": est.num_microbatches,
                     "mfu": est.mfu, "fits": est.fits,
                     "peak_gib": est.peak_memory_gib,
                     "gpus": r["hardware"]["gpus"],
                     "config": config_key(model, r, plan),
                     "work": config_key(model, r, plan, per_gpu=True)})
    return rows


def published_with_basis(record: dict[str, Any], model: ModelSpec | None = None
                         ) -> tuple[float, str | None]:
    """The record's published step time, and None when it states a time or a throughput, or
    the utilisation it was converted from (`implied_step_s`, with `model`, by default the
    dense harness's reading of the record) when it states only that."""
    try:
        return published_step_s(record), None
    except UnmappedRecord:
        implied = implied_step_s(record, model if model is not None else model_for(record))
        if not implied:
            raise
        basis, seconds = implied[0]
        return seconds, basis


INCONSISTENT = 0.05
"""A stated utilisation implying a step time this far from the stated one marks the record's
inputs as inconsistent (the conventions of the sources agree within a few percent)."""


def utilisation_check(rows: list[dict[str, Any]]) -> list[str]:
    """Lines on how far the utilisations records state beside their step time (MFU, HFU,
    TFLOP/s of a named convention) imply another step time (`implied_step_s`): the largest
    difference, and every record beyond INCONSISTENT, whose inputs contradict each other."""
    figures = [(r["id"], basis, d) for r in rows for basis, d in r.get("implied") or []]
    if not figures:
        return []
    rid, basis, worst = max(figures, key=lambda f: abs(f[2]))
    out = ["", f"Stated utilisations against stated times: the {len(figures)} MFU, HFU or "
           f"TFLOP/s figures the records give beside a time imply it within {abs(worst):.1%} "
           f"(largest: {rid}, {basis}, {worst:+.1%}; validate_published.implied_step_s)."]
    bad = [f for f in figures if abs(f[2]) > INCONSISTENT]
    if bad:
        out += ["", f"Inconsistent inputs (a stated utilisation more than {INCONSISTENT:.0%} "
                "from the stated time):", ""]
        out += [f"- {i}: {b} implies {d:+.1%}" for i, b, d in bad]
    return out


def evaluated_as(record: dict[str, Any], plan: str) -> str:
    """What the record was scored as, so that a reader can check it or rerun it with `meshplan
    evaluate`: the cluster (its preset, node size and network as the record states them), the
    number format, the gradient dtype and the full --plan string (`plan`: the estimate's own,
    Estimate.plan)."""
    c, dtype = cluster_spec(record), dtype_for(record)
    grads = grad_dtype_for(record) or default_grad_dtype(dtype)
    return (f"{c.name} ({c.devices_per_node} per node, "
            f"{c.inter_node.bandwidth_bytes_per_s / 1e9:g} GB/s per device across nodes), "
            f"{dtype.value}, gradients in {grads.value}; --plan \"{plan}\"")


def device_label(record: dict[str, Any]) -> str:
    """The device preset the record is evaluated on and its number format, e.g.
    'h100-sxm5-80gb, fp8' (the per-device summary groups by it: one source can span several
    devices, as MosaicML's tables do)."""
    return f"{cluster_spec(record).device.name}, {dtype_for(record).value}"


def skipped_row(record: dict[str, Any], why: Exception) -> dict[str, Any]:
    """A record the harness could not evaluate: listed with the reason, left out of the means."""
    return {"id": record.get("id", "?"), "source": source_family(record) if "source" in record
            else "?", "skipped": f"{type(why).__name__}: {why}".replace("|", "/")}


def error_summary(by: dict[str, list[float]], *, group: str, count: str) -> list[str]:
    """Markdown rows of the mean and max absolute error of each group, in the given order
    (after a blank line and the header)."""
    lines = ["", f"| {group} | {count} | mean abs error | max abs error |", "|---|--:|--:|--:|"]
    for name, errs in by.items():
        lines.append(f"| {name} | {len(errs)} | {statistics.mean(errs):.1%} | {max(errs):.1%} |")
    return lines


def signed_summary(groups: dict[str, list[float]], *, group: str) -> list[str]:
    """A table of runs, mean signed and mean absolute error per group, from signed errors:
    where the errors lean one way, the sign says which."""
    lines = [f"| {group} | runs | mean signed error | mean abs error |", "|---|--:|--:|--:|"]
    for label, errs in groups.items():
        lines.append(f"| {label} | {len(errs)} | {sum(errs) / len(errs):+.1%} | "
                     f"{sum(abs(e) for e in errs) / len(errs):.1%} |")
    return lines


def by_accumulation(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Signed errors per device and number format, split by whether the step runs one
    micro-batch per replica or accumulates several, for the devices that have both. With one,
    the data-parallel traffic of the step (ZeRO-3's first gather, the last gradient bucket)
    and the optimizer step have a single micro-batch to hide behind."""
    split: dict[str, dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        split[r["device"]][r["microbatches"] == 1].append(r["error"])
    out: dict[str, list[float]] = {}
    for device, kinds in sorted(split.items()):
        if len(kinds) == 2:
            out[f"{device}, one micro-batch per step"] = kinds[True]
            out[f"{device}, several"] = kinds[False]
    return out


def best_single_error(published: list[float]) -> float:
    """The least mean absolute error one prediction p can score against several published
    times t of the same configuration: min over p of mean |p/t - 1|. The sum is convex and
    piecewise linear in p with its kinks at the t, so the minimum lies at one of them."""
    return min(sum(abs(p / t - 1) for t in published) for p in published) / len(published)


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, tuple[float, list[list[float]]]]:
    """Per source: the least mean absolute error any model could score on its rows, given that
    rows of equal `config` (the same inputs, hence the same prediction) were published with
    different times, and those repeated configurations' published times. Sources with no
    repeated configuration are left out."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["source"], r.get("config") or r["id"])].append(r["published_s"])
    out: dict[str, tuple[float, list[list[float]]]] = {}
    for source in sorted({s for s, _ in groups}):
        mine = [ts for (s, _), ts in groups.items() if s == source]
        repeated = [sorted(ts) for ts in mine if len(ts) > 1]
        if repeated:
            total = sum(best_single_error(ts) * len(ts) for ts in mine)
            out[source] = (total / sum(len(ts) for ts in mine), repeated)
    return out


INVERSION_MARGIN = 0.05
"""How much faster a run on more GPUs must be published, for the same work per GPU, before
`scaling_inversions` lists it (5%: well above the run-to-run noise of a step time)."""


def scaling_inversions(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs (fewer GPUs, more GPUs) of one source with the same work per GPU (`work`) whose
    run on more GPUs was published faster by over INVERSION_MARGIN. Spreading the same
    per-GPU work over more GPUs only adds communication (longer rings, more hops), so no
    physical model predicts such a pair: the source is inconsistent with itself there, and
    one of the two runs carries an error the model cannot follow."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("work") and r.get("gpus"):
            groups[(r["source"], r["work"])].append(r)
    out = []
    for _, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: (r["gpus"], r["id"]))
        for i, small in enumerate(rs):
            for big in rs[i + 1:]:
                if (big["gpus"] > small["gpus"]
                        and big["published_s"] < small["published_s"] * (1 - INVERSION_MARGIN)):
                    out.append((small, big))
    return out


def render(rows: list[dict[str, Any]]) -> str:
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    lines = ["| run | source | mbs | published s | predicted s | error | MFU | fits |",
             "|---|---|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {r['source']} | {r['mbs']} | {r['published_s']:.3f} | "
                     f"{r['predicted_s']:.3f} | {r['error']:+.1%} | {r['mfu']:.1%} | "
                     f"{'yes' if r['fits'] else 'NO'} |")
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[r["source"]].append(abs(r["error"]))
    lines += error_summary(dict(sorted(by.items())), group="source", count="runs")
    devices: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        devices[r["device"]].append(abs(r["error"]))
    if len(devices) > 1:
        lines += error_summary(dict(sorted(devices.items())), group="device", count="runs")
    accumulation = by_accumulation(rows)
    if accumulation:
        lines += ["", "By micro-batches per step (per device, where both occur):", ""]
        lines += signed_summary(accumulation, group="device, micro-batches per step")
    floors = noise_floor(rows)
    if floors:
        lines += ["", "Repeated configurations: runs with the same inputs (so the same "
                  "prediction) published with different step times. No model can score a "
                  "source's mean below its floor:", "",
                  "| source | repeated configurations | runs in them | widest spread | floor |",
                  "|---|--:|--:|--:|--:|"]
        for source, (floor, repeated) in floors.items():
            spread = max(ts[-1] / ts[0] for ts in repeated)
            lines.append(f"| {source} | {len(repeated)} | {sum(map(len, repeated))} | "
                         f"{spread:.2f}x | {floor:.1%} |")
    inversions = scaling_inversions(rows)
    if inversions:
        lines += ["", "Scaling inversions: the same work per GPU published faster on more GPUs "
                  "(physically, more GPUs only add communication):", ""]
        lines += [f"- {a['id']} ({a['gpus']} GPUs, {a['published_s']:.3f} s) vs {b['id']} "
                  f"({b['gpus']} GPUs, {b['published_s']:.3f} s, "
                  f"{b['published_s'] / a['published_s'] - 1:+.0%}); predicted "
                  f"{a['predicted_s']:.3f} s and {b['predicted_s']:.3f} s"
                  for a, b in inversions]
    if rows:
        fast = sum(r["error"] < 0 for r in rows)
        lines += ["", f"{fast} of {len(rows)} predictions are faster than the published step time."]
    lines += utilisation_check(rows)
    converted = [r for r in rows if r.get("published_basis")]
    if converted:
        lines += ["", "Published step times converted from the only figure the record states, "
                  "by its source's FLOP convention (MFU: model FLOPs; HFU: counting full "
                  "recomputation; validate_published.implied_step_s):", ""]
        lines += [f"- {r['id']}: {r['published_basis']}" for r in converted]
    if skipped:
        lines += ["", f"Not evaluated ({len(skipped)}; not in the means):", ""]
        lines += [f"- {r['id']} ({r['source']}): {r['skipped']}" for r in skipped]
    if any("evaluated_as" in r for r in rows):
        lines += ["", "Evaluated as (cluster, number format, gradients, plan):", ""]
        lines += [f"- {r['id']}: {r['evaluated_as']}" for r in rows if "evaluated_as" in r]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks/data/published_runs.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/validation.md")
    ap.add_argument("--only", default=None, help="only records whose id contains this")
    args = ap.parse_args()
    try:
        rows = run(args.data, args.only)
    except (OSError, ValueError) as e:        # unreadable or not records (UnmappedRecord)
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = render(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Cost model vs published runs ({args.data.name})\n\n{table}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
