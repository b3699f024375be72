"""Self-contained HTML report of a search result (`meshplan search ... --report plan.html`).

`render_report` turns the JSON dict of a training or inference search result (with its
`inputs` block) into one HTML file: inline CSS, inline SVG charts, a small inline script, no
network access. The same dict always gives the same bytes. `write_report` writes it, refusing
to replace an existing file unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.errors import OutputExistsError, SpecError
from planner.report.disaggregated import disaggregated_report
from planner.report.inference import inference_report
from planner.report.template import page
from planner.report.training import training_report

__all__ = ["check_report_path", "render_report", "write_report"]


def render_report(result: dict[str, Any]) -> str:
    """The report of a search result as one HTML document.

    Args:
        result: `SearchResult.model_dump(mode="json")` (training) or the inference search's
            equivalent; `inputs.workload.mode` tells them apart, and `disaggregated` marks a
            `search --mode inference --disaggregate` result.

    Returns:
        The HTML text.
    """
    if not isinstance(result, dict) or "best" not in result:
        raise SpecError("not a meshplan search result (no 'best' plan); pass the JSON that "
                        "'meshplan search ... --json' prints")
    mode = ((result.get("inputs") or {}).get("workload") or {}).get("mode", "training")
    if mode not in ("training", "inference"):
        raise SpecError(f"inputs.workload.mode '{mode}' is not training or inference; rerun "
                        "'meshplan search ... --json'")
    if result.get("disaggregated"):
        title, body = disaggregated_report(result)
    else:
        title, body = (inference_report if mode == "inference" else training_report)(result)
    return page(title=title, body=body)


def check_report_path(path: Path, *, overwrite: bool) -> None:
    """Refuse a report path that exists (unless `overwrite`) or whose folder does not."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"--report {path} is a directory; give a file name such as "
                        f"{path / 'plan.html'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"--report {path} already exists; pass --overwrite to replace "
                                "it or choose another file name")
    if not path.parent.is_dir():
        raise SpecError(f"--report {path}: the directory {path.parent} does not exist; create "
                        "it first or choose another path")


def write_report(result: dict[str, Any], path: Path, *, overwrite: bool) -> None:
    """Render the report and write it to `path` (UTF-8).

    Raises:
        OutputExistsError: `path` exists and `overwrite` is false.
        SpecError: the folder of `path` does not exist, `path` is a directory, or the file
            cannot be written.
    """
    check_report_path(path, overwrite=overwrite)
    html = render_report(result)
    try:
        Path(path).write_text(html, encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot write --report {path}: {e.strerror or e}") from None
