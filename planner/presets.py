"""Presets and spec files: find, read and validate models, devices and clusters.

A `--model`/`--cluster`/`--device` argument is a preset name (a file stem under
`planner/presets/<kind>s/`), or a path to a TOML, JSON or YAML file with the same schema; a
model may also be a Hugging Face `config.json` (recognised by its `model_type` key).
Reading is lazy (nothing happens at import) and every failure becomes a `SpecError` or
`PresetNotFoundError` naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from planner.errors import PlannerError, PresetNotFoundError, SpecError
from planner.hardware import ClusterSpec, DeviceSpec
from planner.model import ModelSpec

Kind = Literal["model", "device", "cluster"]
KINDS: tuple[Kind, ...] = ("model", "device", "cluster")
SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def _preset_dir(kind: Kind) -> Any:
    return resources.files("planner") / "presets" / f"{kind}s"


def list_presets(kind: Kind) -> list[str]:
    """Names of the presets of one kind, sorted."""
    return sorted(p.name[:-5] for p in _preset_dir(kind).iterdir() if p.name.endswith(".toml"))


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(SUFFIXES) or "/" in ref or "\\" in ref or Path(ref).exists()


def read_data_file(path: Path) -> dict[str, Any]:
    """Parse a TOML, JSON or YAML file into a dict (by its suffix; unknown suffixes try all).
    A directory stands for the Hugging Face `config.json` inside it."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecError(f"'{path}' is a directory without a config.json; pass a model file")
        path = path / "config.json"
    if not path.is_file():
        raise SpecError(f"file '{path}' does not exist; check the path or use a preset name")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    parsers = {".toml": _toml, ".json": _json, ".yaml": _yaml, ".yml": _yaml}
    order = [parsers[suffix]] if suffix in parsers else [_toml, _json, _yaml]
    errors = []
    for parse in order:
        try:
            data = parse(text)
        except ValueError as err:
            errors.append(str(err).splitlines()[0])
            continue
        if not isinstance(data, dict):
            raise SpecError(f"file '{path}': the top level must be a table/object of fields")
        return data
    raise SpecError(
        f"file '{path}' is not valid TOML, JSON or YAML ({errors[0]}); fix its syntax"
    )


def _toml(text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"TOML: {err}") from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"JSON: {err}") from None


def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"YAML: {' '.join(str(err).split())}") from None


def validate_spec(cls: type[BaseModel], data: Any, where: str) -> Any:
    """Validate `data` as `cls`; any problem becomes one SpecError line that starts with
    `where` and names the first bad field (and how many more there are)."""
    try:
        return cls.model_validate(data)
    except PlannerError as err:
        raise SpecError(f"{where}: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
        more = f"; {err.error_count() - 1} more problem(s)" if err.error_count() > 1 else ""
        raise SpecError(f"{where}: field '{field}': {first['msg']}{got}{more}") from None


def _load(kind: Kind, ref: str) -> tuple[dict[str, Any], str]:
    """Return the raw data of a preset or file, and a label for messages."""
    if _looks_like_path(ref):
        path = Path(ref)
        return read_data_file(path), f"file '{path}'"
    names = list_presets(kind)
    if ref not in names:
        raise PresetNotFoundError(kind, ref, names)
    text = (_preset_dir(kind) / f"{ref}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text), f"{kind} preset '{ref}'"


@cache
def load_model(ref: str) -> ModelSpec:
    """A model from a preset name, a meshplan model file, or a Hugging Face config.json."""
    data, where = _load("model", ref)
    if "model_type" in data:
        from planner.hf import model_from_hf_config

        path = Path(ref)
        name = path.name if path.is_dir() else (path.parent.name or path.stem)
        return model_from_hf_config(data, name=name, where=where)
    if _looks_like_path(ref):
        data.setdefault("name", Path(ref).stem)
    return validate_spec(ModelSpec, data, where)


@cache
def load_device(ref: str) -> DeviceSpec:
    """A device from a preset name or a device file."""
    data, where = _load("device", ref)
    if _looks_like_path(ref):
        data.setdefault("name", Path(ref).stem)
    return validate_spec(DeviceSpec, data, where)


@cache
def load_cluster(ref: str) -> ClusterSpec:
    """A cluster from a preset name or a cluster file; `device` may name a device preset."""
    data, where = _load("cluster", ref)
    if _looks_like_path(ref):
        data.setdefault("name", Path(ref).stem)
    device = data.get("device")
    if isinstance(device, str):
        try:
            data = {**data, "device": load_device(device).model_dump()}
        except PresetNotFoundError as err:
            raise SpecError(f"{where}: field 'device': {err}") from None
    return validate_spec(ClusterSpec, data, where)
