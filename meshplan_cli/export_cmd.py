"""`meshplan export`: a saved search result as an engine's launch settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshplan_cli.common import DebugOpt, app, err, handle_errors
from planner.errors import OutputExistsError, SpecError
from planner.exports import FORMATS, export_result


@app.command("export")
@handle_errors
def export(
    result_file: Annotated[Path, typer.Argument(help="the JSON saved from `meshplan search ... --json`")],
    to: Annotated[str, typer.Option("--to", help=f"engine: {', '.join(FORMATS)}")],
    rank: Annotated[int, typer.Option("--rank", min=0, help="which of the result's top plans (0 = best)")] = 0,
    model_path: Annotated[str | None, typer.Option("--model-path", help="checkpoint id or path for vllm/sglang (default: $MODEL_PATH in the command)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --output replace an existing file")] = False,
    debug: DebugOpt = False,
) -> None:
    """Print one plan of a saved search result as Megatron-LM flags, a torchtitan TOML, a
    DeepSpeed JSON, or vLLM / SGLang serve arguments. Plans an engine cannot express are
    refused (exit 4) with the reason."""
    if output is not None:
        _check_output(output, overwrite=overwrite)
    text = export_result(_load(result_file), to, rank=rank, model_path=model_path)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as e:
        raise SpecError(f"cannot write --output {output}: {e.strerror or e}") from None
    err.print(f"{to} export of plan {rank} written to {output}", markup=False, soft_wrap=True)


def _check_output(output: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an --output that is a directory, exists (without --overwrite)
    or lies in a directory that does not exist."""
    if output.is_dir():
        raise SpecError(f"--output {output} is a directory; give a file name such as "
                        f"{output / 'launch.sh'}")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists; pass --overwrite to replace it or choose "
                                "another --output")
    if not output.parent.is_dir():
        raise SpecError(f"--output {output}: the directory {output.parent} does not exist; "
                        "create it first or choose another path")


def _load(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}; give the file saved from "
                        "`meshplan search ... --json`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path} is not JSON ({e.msg} at line {e.lineno}); save the output of "
                        "`meshplan search ... --json` to a file and export that") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} holds a JSON {type(data).__name__}, not a search result; save the "
                        "output of `meshplan search ... --json` to a file and export that")
    return data
