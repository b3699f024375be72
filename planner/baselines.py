"""Published hand-tuned configurations ("baselines"), as data with sources, and their checks.

A baseline is one configuration that a paper, a model card, a vendor benchmark or one of the
seed documents states for a model: the cluster, the GPU count *as the source states it*, the
global batch, the sequence length, the parallel plan (a `--plan` string) and, where published,
what it achieved. They live in `planner/presets/baselines/<model preset>.toml`, one file per
model preset, each a list of `[[baseline]]` tables; they are read lazily (nothing happens at
import) with `importlib.resources`, like the other presets.

`problems` / `inconsistencies` check a baseline against its model and cluster: whether its
degrees multiply to the stated GPU count, whether the batch divides, whether tp divides the
heads, ... (the rules of `planner.validate.plan_problems`), whether the GPUs are a whole number
of the cluster's nodes, and whether the published metrics agree with each other. Sources do get
this wrong (seed 000 states MT-NLG 530B as TP=8, PP=35, DP=12 on 17920 GPUs; 8*35*12 = 3360),
and such entries are kept as stated so that meshplan flags them.

`matching_baselines` finds the baselines a search request can be compared with.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError, field_validator

from planner.errors import PlanError, PlannerError, PresetNotFoundError, SpecError
from planner.hardware import DeviceSpec
from planner.model import DType, ModelSpec, Spec
from planner.plan import Plan, parse_plan_fields
from planner.presets import list_presets, load_cluster, load_model, validate_spec
from planner.validate import plan_problems
from planner.workload import TrainingWorkload

METRIC_TOLERANCE = 0.02
"""Absolute tolerance (in utilisation, 0.02 = 2 percentage points) when a published TFLOP/s
per GPU is compared with a published MFU or HFU over the device's datasheet peak."""

RATE_TOLERANCE = 0.03
"""Relative tolerance when published step time, tokens/s and tokens/s per GPU are compared."""


class Baseline(Spec):
    """One published configuration of one model, with its source."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$",
                    description="short key, unique within its model's file (lower case, - . _)")
    label: str = Field(min_length=1, description="who ran it, e.g. 'Narayanan et al. 2021 Table 1'")
    source: str = Field(min_length=1, description="paper / model card / benchmark page and the table or section")
    cluster: str = Field(min_length=1, description="cluster preset name")
    gpus: PositiveInt = Field(description="the device count the source STATES (not derived)")
    global_batch: PositiveInt = Field(description="sequences per optimizer step")
    seq_len: PositiveInt = Field(description="tokens per sequence")
    plan: str = Field(min_length=1, description="--plan string; dp as the source states it (left out = derived)")
    dtype: DType | None = Field(None, description="math dtype of the run; None = not stated")
    grad_dtype: DType | None = Field(
        None, description="dtype the run reduces gradients in, where its configuration says "
        "(e.g. NVIDIA's performance recipes' grad_reduce_in_fp32=False: bf16); None = meshplan's "
        "default for the dtype")
    published_tflops_per_gpu: PositiveFloat | None = Field(
        None, description="achieved TFLOP/s per device as the source counts them (see notes)")
    published_mfu: NonNegativeFloat | None = Field(None, le=1, description="model FLOPs utilisation, 0..1")
    published_hfu: NonNegativeFloat | None = Field(None, le=1, description="hardware FLOPs utilisation (recompute counted), 0..1")
    published_step_time_s: PositiveFloat | None = Field(None, description="seconds per optimizer step")
    published_tokens_per_s: PositiveFloat | None = Field(None, description="tokens per second, whole job")
    published_tokens_per_s_per_gpu: PositiveFloat | None = Field(None, description="tokens per second per device")
    notes: str = Field("", description="what is derived, assumed or uncertain, and known source errors")

    @field_validator("plan")
    @classmethod
    def _plan_syntax(cls, v: str) -> str:
        parse_plan_fields(v)  # raises PlanError naming the bad item
        return v

    def plan_fields(self) -> dict[str, object]:
        """The plan's fields as the source states them (no defaults, dp only if stated)."""
        return parse_plan_fields(self.plan)

    def to_plan(self) -> Plan:
        """The plan as a `Plan`: dp as stated, or gpus / (tp*pp*cp) when the source gives none.

        Raises:
            PlanError: dp is not stated and tp*pp*cp does not divide the stated GPUs, or a value
                is out of range.
        """
        fields = self.plan_fields()
        if "dp" not in fields:
            denom = _int(fields, "tp") * _int(fields, "pp") * _int(fields, "cp")
            if self.gpus % denom:
                raise PlanError(
                    f"baseline '{self.id}': tp*pp*cp = {denom} does not divide the {self.gpus} "
                    "stated GPUs, so dp cannot be derived"
                )
            fields["dp"] = self.gpus // denom
        try:
            return Plan(**fields)  # type: ignore[arg-type]
        except PlanError as err:
            raise PlanError(f"baseline '{self.id}': {err}") from None
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise PlanError(f"baseline '{self.id}': plan key '{loc}': {first['msg']}") from None

    def workload(self) -> TrainingWorkload:
        """The training step the baseline describes (bf16 when the source states no dtype)."""
        return TrainingWorkload(global_batch_size=self.global_batch, seq_len=self.seq_len,
                                dtype=self.dtype or DType.BF16, grad_dtype=self.grad_dtype)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


def _int(fields: dict[str, object], key: str) -> int:
    return int(fields.get(key, 1))  # type: ignore[call-overload]


# ----- loading ---------------------------------------------------------------------------------

def _baseline_dir() -> Any:
    return resources.files("planner") / "presets" / "baselines"


def list_baseline_models() -> list[str]:
    """Model preset names that have a baselines file, sorted."""
    folder = _baseline_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_baselines(model: str) -> list[Baseline]:
    """The published baselines of a model preset, in file order; [] when there are none.

    Raises:
        SpecError: the model's baselines file is malformed (names the file, entry and field).
    """
    if model not in list_baseline_models():
        return []
    return list(_load(model))


@cache
def _load(model: str) -> tuple[Baseline, ...]:
    path = _baseline_dir() / f"{model}.toml"
    where = f"baselines file 'planner/presets/baselines/{model}.toml'"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{where}: not valid TOML ({err})") from None
    return parse_baselines(data, where=where)


def parse_baselines(data: dict[str, Any], *, where: str = "baselines") -> tuple[Baseline, ...]:
    """Validate the parsed contents of a baselines file: a `baseline` array of tables, each a
    `Baseline` with a unique id and a known cluster preset."""
    extra = sorted(set(data) - {"baseline"})
    if extra:
        raise SpecError(f"{where}: unknown top-level key(s) {', '.join(extra)}; "
                        "a baselines file holds only [[baseline]] tables")
    entries = data.get("baseline")
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{where}: no [[baseline]] tables; add at least one or delete the file")
    clusters = list_presets("cluster")
    out: list[Baseline] = []
    seen: set[str] = set()
    for i, raw in enumerate(entries):
        name = raw.get("id", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        at = f"{where}, baseline '{name}'"
        if not isinstance(raw, dict):
            raise SpecError(f"{at}: must be a table")
        b = validate_spec(Baseline, raw, at)
        if b.id in seen:
            raise SpecError(f"{at}: id '{b.id}' is used twice; ids must be unique within a file")
        if b.cluster not in clusters:
            raise SpecError(f"{at}: field 'cluster': {PresetNotFoundError('cluster', b.cluster, clusters)}")
        seen.add(b.id)
        out.append(b)
    return tuple(out)


# ----- checks ----------------------------------------------------------------------------------

def problems(b: Baseline, model: ModelSpec | str) -> list[tuple[str, str]]:
    """Everything that does not add up in a baseline, as (reason key, message).

    Keys: `device_count` (tp*pp*dp*cp differs from the stated GPUs), `plan` (the plan cannot be
    built), the keys of `planner.validate.plan_problems` (`batch_divisibility`, `tp_heads`,
    `pp_layers`, `vpp_layers`, `ep_fold`, ...), `gpus_nodes` (not a whole number of the
    cluster's nodes or, on a cluster allocated in smaller units, not spread evenly over its fast
    domains in whole units), `gpus_max` (more than the cluster can have), `cluster` (unknown preset),
    `metrics` (published numbers that contradict each other).
    """
    m = load_model(model) if isinstance(model, str) else model
    out: list[tuple[str, str]] = []
    fields = b.plan_fields()
    tp, pp, cp = _int(fields, "tp"), _int(fields, "pp"), _int(fields, "cp")
    plan: Plan | None = None
    try:
        plan = b.to_plan()
    except PlanError as err:
        key = "device_count" if "dp" not in fields and b.gpus % (tp * pp * cp) else "plan"
        out.append((key, str(err)))
    if plan is not None:
        if plan.devices != b.gpus:
            base = tp * pp * cp
            hint = (f"with tp={tp}, pp={pp}, cp={cp} as stated, {b.gpus} GPUs would mean "
                    f"dp={b.gpus // base}" if b.gpus % base == 0 else
                    f"tp*pp*cp = {base} does not divide {b.gpus}")
            out.append(("device_count",
                        f"tp*pp*dp*cp = {plan.tp}*{plan.pp}*{plan.dp}*{plan.cp} = {plan.devices} "
                        f"GPUs, but the source states {b.gpus} GPUs; {hint}"))
        out += plan_problems(m, b.workload(), plan, plan.devices)
    try:
        cluster = load_cluster(b.cluster)
    except PlannerError as err:
        out.append(("cluster", str(err)))
        return out
    per = cluster.devices_per_node
    try:        # the rule `evaluate` and `search` apply to a device count (hardware.py)
        cluster.check_devices(b.gpus)
    except SpecError as err:
        out.append(("gpus_nodes", str(err)))
    if cluster.max_nodes is not None and b.gpus > cluster.max_nodes * per:
        out.append(("gpus_max", f"{b.gpus} GPUs exceeds the {cluster.max_nodes * per} devices "
                    f"'{cluster.name}' can have"))
    out += _metric_problems(b, cluster.device)
    return out


def _metric_problems(b: Baseline, device: DeviceSpec) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if b.published_mfu is not None and b.published_hfu is not None and b.published_mfu > b.published_hfu:
        out.append(("metrics", f"published MFU {b.published_mfu:.1%} exceeds the published HFU "
                    f"{b.published_hfu:.1%} (hardware FLOPs include the model's)"))
    stated = [u for u in (b.published_mfu, b.published_hfu) if u is not None]
    if b.published_tflops_per_gpu is not None and stated:
        try:
            peak: float | None = device.peak_flops(b.dtype or DType.BF16)
        except SpecError as err:
            out.append(("metrics", f"cannot compare the published TFLOP/s with MFU/HFU: {err}"))
            peak = None
        util = b.published_tflops_per_gpu * 1e12 / peak if peak else None
        if peak and util is not None and all(abs(util - u) > METRIC_TOLERANCE for u in stated):
            names = " / ".join(f"{u:.1%}" for u in stated)
            out.append(("metrics", f"published {b.published_tflops_per_gpu:g} TFLOP/s per GPU is "
                        f"{util:.1%} of the {peak / 1e12:g} TFLOP/s peak, but the stated "
                        f"utilisation is {names}"))
    rates: list[tuple[str, float]] = []
    if b.published_step_time_s is not None:
        rates.append((f"step time {b.published_step_time_s:g} s", b.tokens_per_step / b.published_step_time_s))
    if b.published_tokens_per_s is not None:
        rates.append((f"{b.published_tokens_per_s:g} tokens/s", b.published_tokens_per_s))
    if b.published_tokens_per_s_per_gpu is not None:
        rates.append((f"{b.published_tokens_per_s_per_gpu:g} tokens/s per GPU x {b.gpus} GPUs",
                      b.published_tokens_per_s_per_gpu * b.gpus))
    for (name_a, a), (name_b, r) in zip(rates, rates[1:]):
        if abs(a - r) > RATE_TOLERANCE * max(a, r):
            out.append(("metrics", f"published {name_a} gives {a:,.0f} tokens/s "
                        f"({b.tokens_per_step:,} tokens per step) but {name_b} gives {r:,.0f}"))
    return out


def inconsistencies(b: Baseline, model: ModelSpec | str) -> list[str]:
    """Human-readable problems of a baseline against its model and cluster ([] = consistent).

    Device count (the product of the degrees against the stated GPUs, both numbers given),
    batch divisibility, tp against heads/KV heads/FFN, pp against layers, MoE folding, the
    GPUs as whole nodes of the cluster, and agreement of the published metrics.
    """
    return [msg for _, msg in problems(b, model)]


# ----- lookup ----------------------------------------------------------------------------------

def baselines_for(model_name: str, *, cluster: str | None = None) -> list[Baseline]:
    """A model's baselines, optionally only those on one cluster preset (any size or batch)."""
    return [b for b in load_baselines(model_name) if cluster is None or b.cluster == cluster]


def matching_baselines(model_name: str, *, cluster: str, gpus: int, global_batch: int,
                       seq_len: int) -> list[Baseline]:
    """The baselines a search request can be compared with directly: same model, cluster
    preset, stated GPU count, global batch and sequence length."""
    return [b for b in baselines_for(model_name, cluster=cluster)
            if (b.gpus, b.global_batch, b.seq_len) == (gpus, global_batch, seq_len)]
