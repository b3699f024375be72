"""Published-run records -> meshplan inputs, for records of any source.

The validation harnesses (validate_published.py, validate_moe.py) read records with the schema
of ../shared/published (model dimensions, hardware, parallel configuration, batch, measured
speed, source). Sources the harness knows (Megatron-LM 2020-2021, MosaicML MPT) get the
architecture facts of their code base; every other record is mapped from what it states, with
the same rules for all records:

- Device: the GPU/TPU named in `hardware.gpu` (A100 40/80 GB, A800, V100, H100, H800, H200,
  B200, GB200, B300, GB300, AMD MI300X/MI325X/MI355X, TPU v3/v4/v5e/v5p/v6e/7x; the export parts
  H800 and A800 on their own nodes, whose NVLink is cut to 400 GB/s). A device meshplan has no
  preset for is reported, not guessed.
- Node size: `hardware.gpus_per_node` when stated, else the preset's. Network: the inter-node
  bandwidth stated in `hardware.inter_node_link` ("8x 200 Gb/s ... per node", "1600 Gbps
  node-node", "400 Gbps EFA", "3.2 Tbps", "50 GB/s per GPU") when it can be read, divided over
  the node's GPUs unless it says per GPU; else the preset's.
- Architecture, when the source is not one of the known code bases: a gated MLP (SwiGLU) when
  the record says so (`model.activation`, `model.attention`/notes naming SwiGLU/GeGLU) or, when
  it states the parameter count, the variant (gated or not, tied embeddings or not) whose count
  is nearest it; otherwise gated exactly when ffn_hidden is not 4 x hidden (4h is the GELU
  MLP of GPT/BLOOM/OPT; Llama-family MLPs are 8h/3-3.5h). GQA from `kv_heads`. A sliding-
  window attention from `model.sliding_window` and `model.global_attention_every` when the
  record states them as data (Gemma 3's 1024-token window on five of every six blocks); a
  window mentioned only in the notes is not read, and the model attends globally.
- Attention kernel: unfused when the record says so ("unfused", or FlashAttention negated:
  "no flash attention", "without FlashAttention", "flash attention: false"); FlashAttention
  when the record names it ("flash": FlashAttention-2 class
  from 2024 on, -1 class in 2022-2023), unfused for runs published before 2023 (Megatron,
  DeepSpeed and Mesh-TensorFlow had no fused attention before FlashAttention, Dao et al. 2022,
  was integrated in 2023), FlashAttention-2 class from 2024 on. The year is the earliest one
  the record's `source` names.
- Recomputation: full (also "true", Megatron's "uniform"/"block"), selective or none; any
  other wording is reported (`recompute_mode`).
- Data-parallel overlap (plan key dp_overlap): as stated (`dp_overlap`, `overlap_grad_reduce`),
  else by the code base the record names: off for DeepSpeed's pipeline engine (DeepSpeed with
  pp > 1; deepspeed/runtime/pipe/schedule.py appends ReduceGrads after the batch's last
  backward) and for Megatron-LM runs published before 2023 (default --DDP-impl local:
  train_step all-reduces after forward_backward_func); on for everything else (PyTorch DDP's
  buckets, FSDP, Megatron-Core/NeMo with --overlap-grad-reduce, XLA) (`dp_overlap_for`).
- ZeRO: "ZeRO-3"/"FULL_SHARD"/FSDP -> 3, "ZeRO-2"/"SHARD_GRAD_OP" -> 2, "ZeRO-1"/"distributed
  optimizer" -> 1, an integer as given; hybrid sharding (HSDP, HYBRID_SHARD: sharded inside a
  group, replicated across groups) is reported, since no zero stage is that. Stage 2 or 3 with
  pipeline parallelism is read as stage 1 (`zero_with_pipeline`): DeepSpeed and Megatron-LM
  refuse it, so such a run is PyTorch FSDP under torch.distributed.pipelining (torchtitan,
  Llama 3), whose stages keep parameters and gradients unsharded until the step's last
  backward and reduce-scatter once there: stage 1's memory and traffic.
- Interleaved pipelines whose virtual stages do not split the blocks evenly: Megatron-Core
  refuses such a split unless told how to lay it out, and the layout NVIDIA's recipes use is
  `account_for_embedding_in_pipeline_split` and `account_for_loss_in_pipeline_split` (Llama 3.1
  405B's 126 blocks over pp=8 x vpp=8: the embedding and the loss count as one block each, so
  every virtual stage holds 2 and the first and last hold 1 beside them). Where L + 2 does not
  split evenly either, the blocks are spread as evenly as possible, earlier chunks taking the
  remainder (`interleaved_layout`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from planner import Attention, ClusterSpec, DType, ModelSpec, load_cluster
from planner.errors import PlannerError
from planner.plan import Recompute

GB = 1e9


class UnmappedRecord(ValueError):
    """A record meshplan cannot evaluate as stated (named device without a preset, ...)."""


NOT_EVALUATED = (UnmappedRecord, PlannerError, KeyError, TypeError, ValueError)
"""What the harnesses catch per record: a record raising one of these is listed as not
evaluated with the reason, and the others are still scored."""


# (substring of hardware.gpu, lower case) -> cluster preset; first match wins, so the more
# specific names come first.
_DEVICE_CLUSTERS = (
    ("gb300", "gb300-nvl72"),
    ("gb200", "gb200-nvl72"),
    ("b300", "dgx-b300"),
    ("b200", "dgx-b200"),
    ("h200", "dgx-h200"),
    ("h100", "dgx-h100"),
    ("h800", "hgx-h800"),          # H100 silicon, NVLink cut to 400 GB/s
    ("a100", None),                # 40 or 80 GB: cluster_name() decides
    ("a800", "hgx-a800"),          # A100 80GB silicon, NVLink cut to 400 GB/s
    ("v100", None),
    ("mi250x", "frontier-mi250x"),  # HPE EX235a (Frontier, LUMI-G); a "GPU" there is a GCD
    ("mi355x", "mi355x-platform"),
    ("mi325x", "mi325x-platform"),
    ("mi300x", "mi300x-platform"),
    ("tpu v5p", "tpu-v5p-pod"), ("tpu-v5p", "tpu-v5p-pod"), ("v5p", "tpu-v5p-pod"),
    ("tpu v5e", "tpu-v5e-pod"), ("tpu-v5e", "tpu-v5e-pod"), ("v5e", "tpu-v5e-pod"),
    ("v5 lite", "tpu-v5e-pod"), ("v5litepod", "tpu-v5e-pod"),
    ("tpu v6e", "tpu-v6e-pod"), ("tpu-v6e", "tpu-v6e-pod"), ("v6e", "tpu-v6e-pod"),
    ("trillium", "tpu-v6e-pod"),
    ("tpu7x", "tpu7x-pod"), ("tpu v7", "tpu7x-pod"), ("tpu-v7", "tpu7x-pod"), ("v7x", "tpu7x-pod"),
    ("ironwood", "tpu7x-pod"),
    ("tpu v4", "tpu-v4-pod"), ("tpu-v4", "tpu-v4-pod"), ("tpuv4", "tpu-v4-pod"),
    ("tpu v3", "tpu-v3-pod"), ("tpu-v3", "tpu-v3-pod"), ("tpuv3", "tpu-v3-pod"),
)


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of a data file: a JSON list of records (the schema of ../shared/published),
    or an object holding that list under "runs" or "records", or a single record."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        for key in ("runs", "records"):
            if isinstance(data.get(key), list):
                return data[key]
        if "id" in data:
            return [data]
        raise UnmappedRecord(f"{path}: a JSON object with no list of records under 'runs' or "
                             "'records'")
    if not isinstance(data, list):
        raise UnmappedRecord(f"{path}: not a JSON list of records")
    return data


def require_mapped(record: dict[str, Any]) -> None:
    """Raise UnmappedRecord when the record itself says why meshplan cannot evaluate it as
    stated (its `unmapped` field: a model shape meshplan has no term for, a parallel layout the
    source leaves ambiguous). Such a record stays in the data, with its published figures, and
    is listed under the table with that reason."""
    why = record.get("unmapped")
    if why:
        raise UnmappedRecord(str(why))


_OTHER_PARTS = (
    (re.compile(r"pcie"), "a PCIe card (a lower power limit, NVLink bridges between pairs at "
                          "most, no NVSwitch)"),
    (re.compile(r"\bnvl\b"), "an NVL card (two PCIe boards joined by an NVLink bridge)"),
    (re.compile(r"gh200|grace\s*hopper"), "a GH200 superchip (its GPU's NVLink-C2C to a Grace "
                                          "CPU, nodes of 1-4, not an 8-GPU NVSwitch board)"),
    (re.compile(r"v100.*\b16\s*gb"), "a 16 GB V100 (the V100 presets hold 32 GB)"),
    (re.compile(r"mi250(?!x)"), "an MI250 (104 CUs per GCD, not the MI250X's 110)"),
)
"""Parts whose name contains a preset's but which are other hardware: reported, not mapped to
the SXM board of the same name."""


def cluster_name(record: dict[str, Any]) -> str:
    """The cluster preset for the record's device (UnmappedRecord when there is none)."""
    hw = record["hardware"]
    gpu = str(hw.get("gpu", "")).lower()
    for pattern, what in _OTHER_PARTS:
        if pattern.search(gpu):
            raise UnmappedRecord(f"'{hw.get('gpu')}' is {what}: no preset models it")
    for key, preset in _DEVICE_CLUSTERS:
        if key not in gpu:
            continue
        if preset is not None:
            return preset
        if key == "v100":
            return "dgx2-v100" if hw.get("gpus_per_node") == 16 else "v100x4"
        # A100: the 2020 Megatron README ran on the DGX A100 of 2020 (A100-SXM4-40GB).
        if "40gb" in gpu or "40 gb" in gpu or record["id"].startswith("megatron_readme2020"):
            return "dgx-a100-40gb"
        return "dgx-a100"
    raise UnmappedRecord(f"no device preset for '{hw.get('gpu')}'")


_SCALE = {"m": 1e6, "g": 1e9, "t": 1e12}
_RATE = re.compile(r"(?:(\d+)\s*[x\u00d7]\s*)?(\d+(?:\.\d+)?)\s*([MGTmgt])(bps|bit/s|b/s|B/s)")


def inter_node_bytes_per_s(text: str | None, gpus_per_node: int) -> float | None:
    """Per-GPU, per-direction inter-node bandwidth stated in a link description, or None.

    Reads 'N x R Gb/s' (N links of R), 'R Gbps'/'R Tbps'/'R Gb/s' (bits) and 'R GB/s'
    (bytes). The rate is the node's (instance's) unless the text says per GPU/device/chip."""
    if not text:
        return None
    m = _RATE.search(text)
    if not m:
        return None
    count = int(m.group(1)) if m.group(1) else 1
    value = count * float(m.group(2)) * _SCALE[m.group(3).lower()]
    nbytes = value if m.group(4) == "B/s" else value / 8
    per_device = re.search(r"per\s+(gpu|device|chip|accelerator)", text, re.I) is not None
    return nbytes if per_device else nbytes / max(1, gpus_per_node)


def cluster_spec(record: dict[str, Any]) -> ClusterSpec:
    """The preset cluster for the record's device, with the node size and the inter-node
    bandwidth the record states. The node size is only taken from the record where the
    preset's fast domain is one host (DGX-style servers); a multi-host NVLink domain (GB200
    NVL72, whose records give the 4 GPUs of a host) or a TPU pod keeps the preset's."""
    base = load_cluster(cluster_name(record))
    hw = record["hardware"]
    update: dict[str, Any] = {}
    host = hw.get("gpus_per_node")
    host = host if isinstance(host, int) and not isinstance(host, bool) and host >= 1 else None
    single_host = base.allocation_devices is None and base.devices_per_node < 1000
    if host is not None and single_host and host != base.devices_per_node:
        update["devices_per_node"] = host
    bw = inter_node_bytes_per_s(hw.get("inter_node_link"), host or base.devices_per_node)
    if bw is not None and base.devices_per_node < 1000:
        update["inter_node"] = base.inter_node.model_copy(update={
            "bandwidth_bytes_per_s": bw,
            "name": f"{base.inter_node.name}; record: {hw.get('inter_node_link')}"})
    if not update:
        return base
    return ClusterSpec.model_validate({**base.model_dump(), **update})


def grad_dtype_for(record: dict[str, Any]) -> DType | None:
    """The dtype the run reduces gradients in: the record's `parallel.grad_reduce` ("fp32" or
    "bf16", read from the configuration its notes cite); llm-foundry's MPT runs reduce in bf16
    (FSDP mixed precision PURE: param, reduce and buffer dtypes all bf16, the benchmark yamls'
    `mixed_precision: PURE`); otherwise None, meshplan's default (fp32 in bf16/fp8 training,
    planner.model.default_grad_dtype)."""
    stated = (record.get("parallel") or {}).get("grad_reduce")
    if stated is not None:
        return DType(stated)
    return DType.BF16 if record["id"].startswith("mpt_") else None


def source_year(record: dict[str, Any]) -> int | None:
    """The earliest year (2015-2035) the record's source names, else its source_ref's."""
    for field in ("source", "source_ref"):
        years = [int(y) for y in re.findall(r"(?<!\d)(20[1-3]\d)(?!\d)", str(record.get(field, "")))]
        if years:
            return min(years)
    return None


_NO_FLASH = re.compile(r"\b(?:no|without|not|w/o)\s+(?:using\s+|the\s+)?flash[\s_-]?attn"
                       r"|\b(?:no|without|not|w/o)\s+(?:using\s+|the\s+)?flash[\s_-]?attention"
                       r"|flash[\s_-]?(?:attn|attention)\s*[:=]\s*(?:false|no|off|none)")
"""Wording that names FlashAttention only to say the run did not use it."""


def attention_kernel(record: dict[str, Any]) -> Attention:
    """The attention kernel a record of an unknown source ran (module docstring)."""
    year = source_year(record)
    text = " ".join(str(record["model"].get(k, "")) for k in ("attention", "attn_impl")).lower()
    text += " " + str(record.get("notes", "")).lower()
    if "unfused" in text or _NO_FLASH.search(text):
        return Attention.UNFUSED
    if "flash" in text:
        return Attention.FLASH1 if year is not None and year <= 2023 else Attention.FLASH
    if year is not None and year < 2023:
        return Attention.UNFUSED
    return Attention.FLASH


def zero_stage(value: Any) -> int:
    """ZeRO stage from a record's `parallel.zero` (or `fsdp`) value (module docstring)."""
    if isinstance(value, bool):
        return 3 if value else 0
    if isinstance(value, int):
        return value
    text = str(value or "").lower()
    if "hybrid" in text or "hsdp" in text:
        # sharded inside a group, replicated across groups: not a meshplan zero stage, whose
        # shards span the whole data-parallel group; read as either it would misstate memory
        raise UnmappedRecord(f"sharding '{value}' is hybrid (HSDP: ZeRO inside a shard group, "
                             "replicated across groups); meshplan's zero stages shard over "
                             "the whole data-parallel group")
    if any(k in text for k in ("zero-3", "zero3", "zero 3", "full_shard", "fsdp")):
        return 3
    if any(k in text for k in ("zero-2", "zero2", "zero 2", "shard_grad_op")):
        return 2
    if any(k in text for k in ("zero-1", "zero1", "zero 1", "distributed optimizer",
                               "distributed_optimizer")):
        return 1
    m = re.search(r"\d", text)
    return int(m.group(0)) if m and int(m.group(0)) <= 3 else 0


def zero_with_pipeline(stage: int, pp: int) -> int:
    """The ZeRO stage a run with `pp` pipeline stages actually runs at when its record states
    `stage`: 1 for a stated 2 or 3 with pp > 1, else the stage. DeepSpeed's pipeline engine and
    Megatron-LM refuse ZeRO-2/3 with a pipeline, so such a run is PyTorch FSDP under
    torch.distributed.pipelining, whose `_PipelineStageBase.backward_maybe_with_nosync` sets
    `set_reshard_after_backward(False)` and `set_requires_gradient_sync(False)` on every
    micro-batch's backward ("we need to accumulate gradients on previous steps and reduce them
    on the last step") and reduce-scatters in the last one's post-backward: parameters and
    gradients stay whole through the step, only the optimizer state is sharded (Llama 3, Sec.
    3.3.2: "we do not reshard after forward computation"). That is ZeRO stage 1: its memory,
    and one all-gather and one reduce-scatter of the stage's parameters per step."""
    return 1 if stage >= 2 and pp > 1 else stage


def global_batch(record: dict[str, Any]) -> int:
    """Sequences per step: `batch.global` (the schema's), else `batch.global_seqs`, else
    `batch.global_tokens` over the sequence length."""
    b = record["batch"]
    for key in ("global", "global_seqs"):
        if b.get(key):
            return int(b[key])
    if b.get("global_tokens"):
        return round(b["global_tokens"] / record["model"]["seq_len"])
    raise UnmappedRecord("the record states no global batch (batch.global in sequences, "
                         "global_seqs or global_tokens)")


def data_parallel(parallel: dict[str, Any], gpus: int) -> int:
    """The record's dp; unstated, the GPUs over tp x pp x cp, as `meshplan evaluate --plan`
    derives it (where those do not divide the GPUs, 1, so that the plan check names the
    rule)."""
    if parallel.get("dp"):
        return int(parallel["dp"])
    model_parallel = 1
    for key in ("tp", "pp", "cp"):
        model_parallel *= int(parallel.get(key) or 1)
    return gpus // model_parallel if gpus % model_parallel == 0 else 1


def stated_flag(value: Any, default: bool = False) -> bool:
    """A yes/no a record states, as a bool or in words ("on", "true", "yes", "enabled", 1;
    "off", "false", "no", "disabled", 0); absent: `default`. Other words are reported."""
    if value is None:
        return default
    if isinstance(value, (bool, int)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "enabled", "1"):
        return True
    if text in ("off", "false", "no", "disabled", "0", "none", ""):
        return False
    raise UnmappedRecord(f"'{value}' is not a yes or a no")


def dp_overlap_for(record: dict[str, Any]) -> bool:
    """Whether the run overlapped its data-parallel gradient reduction (plan key dp_overlap;
    module docstring): as the record states it (`parallel.dp_overlap`, or Megatron's
    `overlap_grad_reduce`, a yes/no: `stated_flag`), else from the code base its source,
    source_ref, framework or notes name. Off for DeepSpeed's pipeline engine (any DeepSpeed
    run with pp > 1: TrainSchedule reduces the gradients after the batch's last backward) and
    for Megatron-LM before 2023 (its default local DDP all-reduced after the backward;
    Megatron-Core's --overlap-grad-reduce came in 2023; NeMo and Megatron-Core runs overlap).
    On otherwise: PyTorch DDP and FSDP, Megatron-Core, XLA."""
    p = record.get("parallel") or {}
    value = p.get("dp_overlap")
    if value is None:
        value = p.get("overlap_grad_reduce")
    if value is not None:
        return stated_flag(value)
    text = " ".join(str(record.get(k, "")) for k in ("source", "source_ref", "framework",
                                                      "notes")).lower()
    if "deepspeed" in text and int(p.get("pp") or 1) > 1:
        return False
    year = source_year(record)
    modern = any(k in text for k in ("megatron-core", "megatron core", "nemo", "megatron-bridge"))
    if "megatron" in text and "deepspeed" not in text and not modern and year is not None \
            and year < 2023:
        return False
    return True


def recompute_mode(value: Any) -> Recompute:
    """Activation recomputation from a record's `parallel.recompute`: any wording naming
    "selective" -> selective; "full...", activation checkpointing, Megatron's
    `--recompute-method` names uniform and block, or a yes (`stated_flag`) -> full; a no or
    nothing -> none. A value that says none of these is reported, not read as none."""
    text = str(value if value is not None else "").strip().lower()
    if "selective" in text:
        return Recompute.SELECTIVE
    if text.startswith("full") or any(k in text for k in ("checkpoint", "uniform", "block")):
        return Recompute.FULL
    try:
        return Recompute.FULL if stated_flag(value) else Recompute.NONE
    except UnmappedRecord:
        raise UnmappedRecord(f"recompute '{value}' is not full, selective or none") from None


def even_chunks(num_layers: int, pp: int, vpp: int) -> tuple[int, ...]:
    """Blocks per virtual stage, as even as possible, earlier chunks taking the remainder."""
    base, extra = divmod(num_layers, pp * vpp)
    return tuple(base + (1 if c < extra else 0) for c in range(pp * vpp))


def interleaved_layout(num_layers: int, pp: int, vpp: int) -> tuple[int, ...] | None:
    """Blocks per virtual stage (pp*vpp counts, pipeline order) for an interleaved pipeline
    whose chunks the blocks do not fill evenly; None when they do, or without interleaving
    (module docstring: Megatron-Core's embedding/loss accounting, else as even as possible)."""
    chunks = pp * vpp
    if vpp <= 1 or num_layers % chunks == 0:
        return None
    if (num_layers + 2) % chunks == 0 and (num_layers + 2) // chunks >= 2:
        per = (num_layers + 2) // chunks
        return (per - 1,) + (per,) * (chunks - 2) + (per - 1,)
    return even_chunks(num_layers, pp, vpp)


_PARAMS_TEXT = re.compile(r"^\s*([\d.]+)\s*([kmbt])\b", re.I)
_PARAMS_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _stated_params(record: dict[str, Any]) -> float | None:
    """The parameter count a record states: `model.params` as a number or as text with its
    unit ("70B", "6.7 B", "1T", "350M"), or `model.params_B` in billions; else None."""
    m = record["model"]
    if isinstance(m.get("params"), (int, float)):
        return float(m["params"])
    if isinstance(m.get("params"), str):
        hit = _PARAMS_TEXT.match(m["params"])
        if hit:
            return float(hit.group(1)) * _PARAMS_SCALE[hit.group(2).lower()]
    if isinstance(m.get("params_B"), (int, float)):
        return float(m["params_B"]) * 1e9
    return None


def attention_window(m: dict[str, Any]) -> dict[str, int]:
    """A sliding-window attention the record states as data (`model.sliding_window`, tokens,
    and `model.global_attention_every`: every k-th block attends globally), as ModelSpec
    fields; nothing when it states none. A window named only in free text is not read."""
    return {k: int(m[k]) for k in ("sliding_window", "global_attention_every")
            if m.get(k) is not None}


def generic_model(record: dict[str, Any]) -> ModelSpec:
    """ModelSpec of a record from an unknown source (module docstring)."""
    m = record["model"]
    h, ffn = m["hidden"], m["ffn_hidden"]
    common = dict(name=record["id"], num_layers=m["layers"], hidden_size=h,
                  num_attention_heads=m["heads"], num_kv_heads=m.get("kv_heads") or None,
                  ffn_hidden_size=ffn, vocab_size=m["vocab"],
                  head_dim=m.get("head_dim") or None, **attention_window(m))
    described = " ".join(str(x) for x in (m.get("activation", ""), m.get("attention", ""),
                                          record.get("notes", ""))).lower()
    candidates = []
    for gated in (True, False):
        for tied in (False, True):
            act = "swiglu" if gated else "gelu"
            norm = "rmsnorm" if gated else "layernorm"
            pos = "rope" if gated else "learned"
            try:
                spec = ModelSpec(**common, activation=act, tied_embeddings=tied, norm=norm,
                                 positional=pos, linear_bias=not gated,
                                 max_position_embeddings=m["seq_len"])
            except PlannerError:
                continue
            candidates.append((gated, tied, spec))
    if not candidates:
        raise UnmappedRecord(f"{record['id']}: its dimensions make no valid model")
    stated = _stated_params(record)
    if "swiglu" in described or "geglu" in described or "gated" in described:
        pool = [c for c in candidates if c[0]]
    elif "gelu" in described or "relu" in described:
        pool = [c for c in candidates if not c[0]]
    else:
        pool = candidates
    if stated:
        return min(pool, key=lambda c: (abs(c[2].params - stated), not c[0], c[1]))[2]
    want_gated = ffn != 4 * h
    return next(c[2] for c in pool if c[0] == want_gated or len(pool) < len(candidates))


def generic_moe_model(record: dict[str, Any]) -> ModelSpec:
    """ModelSpec of an MoE record with no preset: the dense skeleton of `generic_model` with a
    SwiGLU MLP (every MoE family of the records: Mixtral, DeepSeek, Qwen, GPT-OSS) and the
    record's `moe` block. MLA needs its dimensions (`model.mla`), which a bare "MLA" does not
    give."""
    m = record["model"]
    moe = m.get("moe") or {}
    if str(m.get("attention", "")).upper().startswith("MLA") and not isinstance(m.get("mla"), dict):
        raise UnmappedRecord(f"{record['id']}: MLA attention without its dimensions "
                             "(kv_lora_rank, q_lora_rank, qk_nope/rope and v head dims)")
    mla = m.get("mla")
    if isinstance(mla, dict):    # MaxText's names (q_lora_rank, ...) or ModelSpec's (..._dim)
        mla = {(k + "_dim" if k in ("q_lora_rank", "kv_lora_rank") else k): v
               for k, v in mla.items()}
    try:
        spec = ModelSpec(
            name=record["id"], num_layers=m["layers"], hidden_size=m["hidden"],
            num_attention_heads=m["heads"], num_kv_heads=m.get("kv_heads") or None,
            head_dim=m.get("head_dim") or None, ffn_hidden_size=m["ffn_hidden"],
            vocab_size=m["vocab"], activation="swiglu", norm="rmsnorm", positional="rope",
            dropout=False, **attention_window(m),
            mla=mla,
            moe={"num_experts": moe["experts"], "top_k": moe["top_k"],
                 "expert_ffn_hidden_size": moe["expert_ffn_hidden"],
                 "num_shared_experts": moe.get("shared_experts") or 0,
                 "first_k_dense": (moe.get("dense_layers_first")
                                   or moe.get("first_dense_layers") or 0),
                 # every n-th layer MoE (Llama 4 Maverick's interleave_moe_layer_step 2)
                 "layer_freq": moe.get("moe_layer_step") or 1})
    except (KeyError, PlannerError) as e:
        raise UnmappedRecord(f"{record['id']}: cannot build the MoE model ({e})") from None
    return spec
