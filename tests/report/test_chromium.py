"""The report in a real browser: headless Chromium loads it without script errors, runs the
tab script, lays out the charts, and takes a screenshot.

Needs Debian's `chromium` package (the CI script installs it); skipped where it is absent.
The test installs nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from planner.report import write_report

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
CHARTS = ("breakdown", "memory", "memory-stages", "schedule", "device-map")

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="Chromium not installed: apt-get install chromium (the CI script installs it)")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=60, check=False)


def test_report_loads_without_script_errors(tmp_path: Path, moe_interleaved: dict[str, Any]) -> None:
    page = tmp_path / "plan.html"
    write_report(moe_interleaved, page, overwrite=False)
    run = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert 'data-ready="1"' in dom, "the page script did not finish"
    errors = re.search(r'<ol id="script-errors"[^>]*>(.*?)</ol>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors and errors.group(1)
    for chart in CHARTS:
        assert f'data-chart="{chart}"' in dom, chart
    # the tab script shows plan #1 and hides the others
    assert re.search(r'<section class="panel" id="plan-1">', dom)
    assert re.search(r'<section class="panel" id="plan-2" hidden="">', dom)
    assert 'aria-selected="true"' in dom


def test_inference_report_loads_without_script_errors(tmp_path: Path,
                                                     inference_pp: dict[str, Any]) -> None:
    """The serving report (MoE with pp=2, ep=2) in the browser: no script errors, its charts laid out."""
    page = tmp_path / "serve.html"
    write_report(inference_pp, page, overwrite=False)
    run = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert 'data-ready="1"' in dom, "the page script did not finish"
    errors = re.search(r'<ol id="script-errors"[^>]*>(.*?)</ol>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors and errors.group(1)
    charts = set(re.findall(r'data-chart="([a-z-]+)"', dom))
    assert charts == {"ttft", "tpot", "memory", "device-map"}, charts


def test_error_trap_records_script_errors(tmp_path: Path, moe_interleaved: dict[str, Any]) -> None:
    """A page whose script throws shows the error in the dumped DOM: the check above can fail."""
    page = tmp_path / "broken.html"
    write_report(moe_interleaved, page, overwrite=False)
    html = page.read_text(encoding="utf-8").replace("</body>", "<script>undefinedCall();</script></body>")
    page.write_text(html, encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    errors = re.search(r'<ol id="script-errors"[^>]*>(.*?)</ol>', dom, re.S)
    assert errors is not None and "undefinedCall" in errors.group(1)


def test_screenshot(tmp_path: Path, with_baseline: dict[str, Any]) -> None:
    page, shot = tmp_path / "plan.html", tmp_path / "x.png"
    write_report(with_baseline, page, overwrite=False)
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 3000)
