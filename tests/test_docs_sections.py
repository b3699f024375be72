"""docs/check_sections.py: the README holds every docs/sections file as it is, and the checker's
block parsing and '...' elision work (the command reruns themselves run in .ci/run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_sections", ROOT / "docs" / "check_sections.py")
check = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(check)  # type: ignore[union-attr]


def test_readme_holds_every_section() -> None:
    assert check.check_readme()


def test_commands_and_expected_lines() -> None:
    block = ["$ meshplan a \\", "    --b", "out 1", "out 2", "$ echo $?", "0"]
    assert check._commands(block) == [(["$ meshplan a \\", "    --b"], ["out 1", "out 2"]),
                                      (["$ echo $?"], ["0"])]


def test_ellipsis_matches_any_lines() -> None:
    assert check._matches(["a", "... (table)", "z"], ["a", "b", "c", "z"])
    assert check._matches(["a", "... (table)", "z"], ["a", "z"])
    assert not check._matches(["a", "... (table)", "z"], ["a", "b", "y"])
    assert not check._matches(["a"], ["a", "b"])


def test_several_ellipses_and_trailing_spaces() -> None:
    expected = ["title", "...", "middle", "... (trimmed)", "end"]
    assert check._matches(expected, ["title", "x", "middle", "y", "z", "end"])
    assert check._matches(expected, ["title", "middle", "end"])
    assert not check._matches(expected, ["title", "x", "end"])           # no "middle"
    assert not check._matches(expected, ["title", "middle", "end", "more"])
    assert check._matches(["a table row"], ["a table row      "])        # rich's padding
    assert not check._matches(["a table row"], ["  a table row"])


def test_readme_blocks_inside_the_sections_are_left_to_the_section_files(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("\n".join([
        "```", "$ echo outside", "outside", "```",
        check.START, "```", "$ echo inside", "not what it prints", "```", check.END, ""]))
    assert check.check_file(readme, fix=False)
    readme.write_text(readme.read_text().replace("$ echo outside\noutside", "$ echo outside\nwrong"))
    assert not check.check_file(readme, fix=False)


def test_block_runs_in_one_shell(tmp_path: Path) -> None:
    """`echo $?` sees the exit status of the command before it, across the marker lines."""
    outputs = check._run_block([["$ (exit 5)"], ["$ echo $?"], ["$ echo hi >&2"]], tmp_path)
    assert outputs == [[], ["5"], ["hi"]]


def test_search_wall_time_is_not_compared() -> None:
    stats = "144 separated plans scored, pruned: attn_tp 20, memory 3; {} s"
    assert check._matches(["x", stats.format("0.37")], ["x", stats.format("1.85")])
    assert check._matches(["... (table)", stats.format("0.37")], ["t", stats.format("12.00")])
    # the counts before the time still have to match, and other timings are compared
    assert not check._matches([stats.format("0.37")], [stats.format("0.37").replace("3;", "4;")])
    assert not check._matches(["step 8.06 s"], ["step 8.46 s"])
