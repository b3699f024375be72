"""A `CliRunner` that keeps stderr apart from stdout on every supported click version.

Used by the test suite (and handy for scripts that drive the CLI in-process).
"""

from __future__ import annotations

from typer.testing import CliRunner


def cli_runner() -> CliRunner:
    """click >= 8.2 always keeps stderr apart (result.stderr); click 8.1 needs mix_stderr=False."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()
