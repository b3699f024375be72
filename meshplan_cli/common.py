"""What every meshplan command shares: the typer app, consoles, error handling, options.

This is the only place where errors become output: a `PlannerError` prints one line
(`error: ...`) on stderr and exits with its code (2 bad input, 3 nothing feasible); anything
else exits 1 with a one-line notice, and `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

import planner
from planner.errors import PlannerError

app = typer.Typer(
    name="meshplan",
    help="Auto-parallel plan search for large neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])
_STATE = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]


def handle_errors(fn: F) -> F:
    """Turn known errors into one line and an exit code; unknown ones into exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False) or _STATE["debug"]
        try:
            return fn(*args, **kwargs)
        except PlannerError as e:
            if debug:
                raise
            err.print(f"error: {e}", markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI edge: report, never a traceback
            if debug:
                raise
            err.print(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the "
                      "traceback and report it)", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"meshplan {planner.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: DebugOpt = False,
) -> None:
    """meshplan: find the best way to split a model over a cluster."""
    _STATE["debug"] = debug


def print_json(data: Any) -> None:
    """Deterministic JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"



ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model preset, model file or HF config.json")]
ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="cluster preset or file")]
GpusOpt = Annotated[int | None, typer.Option("--gpus", help="number of devices")]
NodesOpt = Annotated[int | None, typer.Option("--nodes", help="number of nodes (instead of --gpus)")]
BatchOpt = Annotated[int, typer.Option("--global-batch", min=1, help="sequences per step")]
SeqOpt = Annotated[int, typer.Option("--seq-len", min=1, help="tokens per sequence")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16, fp16, fp8 or fp4 (NVFP4, Blackwell)")]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="adam, adamw, sgd or adafactor")]
GradDtypeOpt = Annotated[str | None, typer.Option(
    "--grad-dtype", help="fp32, bf16 or fp16: the dtype gradients are accumulated and reduced "
    "in (default: fp32 for bf16/fp8/fp32 training, as Megatron-LM, torchtitan and DeepSpeed do; "
    "fp16 for fp16)")]


DTYPES = ("bf16", "fp16", "fp8", "fp4", "fp32", "tf32")
"""The --dtype values (planner.DType)."""

MODE_OPTIONS = {"training": ("--global-batch", "--seq-len"),
                "inference": ("--batch", "--prompt-len", "--output-len")}
"""The options each --mode requires."""


def check_mode(mode: str) -> None:
    """One-line SpecError for a --mode that is neither training nor inference."""
    if mode not in MODE_OPTIONS:
        raise planner.SpecError(f"--mode '{mode}' is not one of {', '.join(MODE_OPTIONS)}")


def check_mode_options(mode: str, given: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> None:
    """One-line SpecError when --mode lacks one of its required options (MODE_OPTIONS) or got
    an option in `given` that is neither required nor `allowed` for it."""
    required = MODE_OPTIONS[mode]
    missing = [k for k in required if given[k] is None]
    if missing:
        raise planner.SpecError(f"--mode {mode} needs {', '.join(missing)}")
    extra = [k for k, v in given.items() if v is not None and k not in required + allowed]
    if extra:
        raise planner.SpecError(f"--mode {mode} does not use {', '.join(extra)}")


def check_dtype(dtype: str) -> None:
    """One-line SpecError for a --dtype that is not one of DTYPES."""
    if dtype not in DTYPES:
        raise planner.SpecError(f"--dtype '{dtype}' is not one of {', '.join(DTYPES)}")


def inference_workload(batch: int, prompt_len: int, output_len: int, dtype: str,
                       prefill_chunk: int | None = None) -> planner.InferenceWorkload:
    """The --mode inference workload from CLI values (one message for a bad --dtype)."""
    check_dtype(dtype)
    return planner.InferenceWorkload(batch_size=batch, prompt_len=prompt_len,
                                     output_len=output_len, dtype=planner.DType(dtype),
                                     prefill_chunk_tokens=prefill_chunk)


def training_workload(global_batch: int, seq_len: int, dtype: str, optimizer: str,
                      grad_dtype: str | None = None) -> planner.TrainingWorkload:
    """Build the workload, turning unknown dtypes/optimizers into one-line errors."""
    check_dtype(dtype)
    opts = [o.value for o in planner.Optimizer]
    if optimizer not in opts:
        raise planner.SpecError(f"--optimizer '{optimizer}' is not one of {', '.join(opts)}")
    if grad_dtype is not None and grad_dtype not in ("fp32", "bf16", "fp16"):
        raise planner.SpecError(f"--grad-dtype '{grad_dtype}' is not one of fp32, bf16, fp16")
    return planner.TrainingWorkload(global_batch_size=global_batch, seq_len=seq_len,
                                    dtype=planner.DType(dtype),
                                    optimizer=planner.Optimizer(optimizer),
                                    grad_dtype=grad_dtype and planner.DType(grad_dtype))
