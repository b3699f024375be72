"""Check the README's generated sections against the commands they quote.

Run from the repository root with meshplan installed: `python docs/check_sections.py
[docs/sections/NAME.md ... | README.md]` (default: every section; README.md checks the README's
own blocks, outside its sections markers). For each ``` block, every `$ ` line (with
its `\\` continuation lines) is run, in order, by one bash (so `echo $?` reads the command
before it), stdout and stderr together, in a scratch folder that sees the repository's tests/
(the sections read tests/data and tests/exports/data), and what it prints is compared with the
lines the block shows under it. A shown line starting with `...` stands for any lines there
(as many such lines as the block needs); trailing spaces (rich pads to the terminal width) and
a search's statistics line's wall time (`... scored, pruned: ...; 0.37 s`) are not compared. Exits 1 on any difference,
printing a unified diff; `--fix` rewrites the section files with the real outputs instead.

It also checks that README.md holds every section verbatim between its sections markers;
`--fix` puts a rewritten section in place of its old text there.
"""

from __future__ import annotations

import difflib
import re
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ROOT / "docs" / "sections"
START = "<!-- sections:start (generated from docs/sections/*.md) -->"
END = "<!-- sections:end -->"


def _commands(block: list[str]) -> list[tuple[list[str], list[str]]]:
    """[(command lines, expected output lines)] of one fenced block."""
    out: list[tuple[list[str], list[str]]] = []
    i = 0
    while i < len(block):
        if not block[i].startswith("$ "):
            i += 1
            continue
        cmd = [block[i]]
        while cmd[-1].endswith("\\") and i + 1 < len(block):
            i += 1
            cmd.append(block[i])
        i += 1
        expected = []
        while i < len(block) and not block[i].startswith("$ "):
            expected.append(block[i])
            i += 1
        out.append((cmd, expected))
    return out


MARK = "@@check_sections {}@@"


def _run_block(cmds: list[list[str]], cwd: Path) -> list[list[str]]:
    """What each command of one block prints, run in order by one bash."""
    script = ["exec 2>&1"]
    for i, cmd in enumerate(cmds):
        # the marker keeps the previous exit status for a following `echo $?`
        script += [f"__rc=$?; echo '{MARK.format(i)}'; (exit $__rc)", "\n".join(cmd)[2:]]
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    res = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, capture_output=True,
                         text=True, env=env, check=False)
    outputs: list[list[str]] = []
    for line in res.stdout.rstrip("\n").split("\n"):
        if line == MARK.format(len(outputs)):
            outputs.append([])
        elif outputs:
            outputs[-1].append(line)
    return outputs + [[] for _ in range(len(cmds) - len(outputs))]


WALL_TIME = re.compile(r"(scored, pruned: .*; )\d+\.\d+ s$")
"""A search's statistics line ends with its wall time, which no two runs share: compared
without it (the counts before it still have to match)."""


def _same(e: str, g: str) -> bool:
    # rich pads some lines to the terminal width: trailing spaces are not compared
    e, g = e.rstrip(), g.rstrip()
    return e == g or (WALL_TIME.search(e) is not None
                      and WALL_TIME.sub(r"\1", e) == WALL_TIME.sub(r"\1", g))


def _equal(expected: list[str], got: list[str]) -> bool:
    return len(expected) == len(got) and all(_same(e, g) for e, g in zip(expected, got))


def _matches(expected: list[str], got: list[str]) -> bool:
    """Equal, where each expected line starting with '...' matches any run of lines (none
    included), wherever it stands and however many there are."""
    if not any(e.startswith("...") for e in expected):
        return _equal(expected, got)
    k = next(i for i, e in enumerate(expected) if e.startswith("..."))
    head, tail = expected[:k], expected[k + 1:]
    if len(got) < len(head) or not _equal(head, got[:len(head)]):
        return False
    rest = got[len(head):]
    return any(_matches(tail, rest[skip:]) for skip in range(len(rest) + 1))


def check_file(path: Path, *, fix: bool) -> bool:
    lines = path.read_text().split("\n")
    ok, new_lines, i = True, [], 0
    # the README's copy of the sections is checked through the section files themselves
    in_sections = False
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tests").symlink_to(ROOT / "tests")
        while i < len(lines):
            new_lines.append(lines[i])
            if lines[i] in (START, END):
                in_sections = lines[i] == START
            if in_sections or not lines[i].startswith("```"):
                i += 1
                continue
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            block = lines[i + 1:j]
            commands = _commands(block)
            if not commands:
                new_lines += block
            else:
                new_lines += block[:next(k for k, b in enumerate(block) if b.startswith("$ "))]
                outputs = _run_block([c for c, _ in commands], Path(tmp))
                for (cmd, expected), got in zip(commands, outputs):
                    if _matches(expected, got):
                        got = expected
                    else:
                        ok = False
                        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                        print(f"{shown}: {cmd[0][:100]}")
                        sys.stdout.writelines(difflib.unified_diff(
                            [e + "\n" for e in expected], [g + "\n" for g in got],
                            "README", "now", n=1))
                    new_lines += cmd + got
            if j < len(lines):
                new_lines.append(lines[j])
            i = j + 1
    if fix and not ok:
        old, new = path.read_text(), "\n".join(new_lines)
        path.write_text(new)
        readme = ROOT / "README.md"
        text = readme.read_text()
        if old.strip() in text:
            readme.write_text(text.replace(old.strip(), new.strip()))
    return ok


def check_readme() -> bool:
    """Every section file's text lies between the README's sections markers."""
    text = (ROOT / "README.md").read_text()
    if START not in text or END not in text:
        print("README.md has no sections markers")
        return False
    body = text.split(START, 1)[1].split(END, 1)[0]
    missing = [p.name for p in sorted(SECTIONS.glob("*.md")) if p.read_text().strip() not in body]
    for name in missing:
        print(f"README.md does not hold docs/sections/{name} as it is now")
    return not missing


def main(argv: list[str]) -> int:
    fix = "--fix" in argv
    files = [Path(a).resolve() for a in argv if a != "--fix"] or sorted(SECTIONS.glob("*.md"))
    ok = all([check_file(f, fix=fix) for f in files])
    ok = check_readme() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
