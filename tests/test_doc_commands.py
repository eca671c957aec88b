"""Every command line a user is told to type (README.md, docs/*.md) works.

Each shell line of a fenced block is taken apart with shlex:
- every line of one of our programs (the console scripts, `python -m
  services...`, `python examples/X.py`) is parsed by that program's own
  argument parser, in this process: an option the program does not take, or a
  value it refuses, fails the test;
- the lines that need no running system (`--help`, `ank apply --dry-run`,
  `ank sim fleet`) are run for real and must exit 0;
- the rest (those that talk to a running system) are exercised by the system
  tests; lines of other programs (make, podman, curl, shell syntax) are listed
  in OTHER_PROGRAMS so that a new kind of line is a decision, not an accident.

Synopsis lines (`ank apply FILE [--agent NAME]`, `NAME...`) are not commands
and are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, child_env

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL_TAGS = {"", "sh", "bash", "shell", "console"}
OTHER_PROGRAMS = {
    "make",  # make test runs this very test; make demo is `ank up`, tested by tests/test_up.py
    ".",
    "for",
    "done",
    "scripts/make-certs.sh",  # run by tests/test_security.py
    ".venv/bin/pytest",
    "podman",
    "curl",
    "systemctl",
    "journalctl",
    "sudo",
    "export",
    "cp",
    "install",
    "#",
}


@dataclass(frozen=True)
class Line:
    where: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def _is_synopsis(text: str) -> bool:
    """A usage synopsis or a drawing, not a command."""
    drawing = any("\u2190" <= c <= "\u25ff" for c in text)  # arrows, box drawing
    return drawing or "[" in text or "..." in text or "|" in text or "<" in text


def _starts_with_a_program(block: str) -> bool:
    first = next((raw.removeprefix("$ ") for raw in block.splitlines() if raw.strip()), "")
    program = first.split(" ", 1)[0].removeprefix(".venv/bin/")
    return program in SCRIPTS or program in OTHER_PROGRAMS or program in ("python", "python3")


def doc_lines() -> Iterator[Line]:
    for doc in DOCS:
        text = doc.read_text()
        for fence in FENCE.finditer(text):
            if fence.group(1) not in SHELL_TAGS:
                continue
            block = fence.group(2).replace("\\\n", " ")
            if not fence.group(1) and not _starts_with_a_program(block):
                continue  # an untagged block of text or a drawing
            prompted = any(raw.startswith("$ ") for raw in block.splitlines())
            lineno = text[: fence.start()].count("\n") + 2
            for i, raw in enumerate(block.splitlines()):
                if prompted:
                    if not raw.startswith("$ "):
                        continue  # the program's output
                    raw = raw[2:]
                command = raw.split(" #", 1)[0].strip()
                if not command or command.startswith("#") or _is_synopsis(command):
                    continue
                try:
                    argv = tuple(shlex.split(command))
                except ValueError:
                    continue  # not a shell line (a table drawn in a code block)
                yield Line(f"{doc.relative_to(ROOT)}:{lineno + i}", argv)


def _console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["scripts"])


SCRIPTS = _console_scripts()


def _entry(argv: tuple[str, ...]) -> tuple[Callable[[list[str]], Any], list[str]] | None:
    """The `main` function of one of our programs and the arguments it gets, or None."""
    program = argv[0].removeprefix(".venv/bin/")
    if program in SCRIPTS:
        name, func = SCRIPTS[program].split(":")
        return getattr(importlib.import_module(name), func), list(argv[1:])
    if program in ("python", "python3") and argv[1:2] == ("-m",):
        return importlib.import_module(argv[2]).main, list(argv[3:])
    if program in ("python", "python3") and argv[1].endswith(".py"):
        spec = importlib.util.spec_from_file_location("doc_program", ROOT / argv[1])
        assert spec and spec.loader, argv[1]
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded.main, list(argv[2:])
    return None


def _is_offline(argv: tuple[str, ...]) -> bool:
    words = [w for w in argv if not w.startswith("-")]
    return "--help" in argv or ("apply" in words and "--dry-run" in argv) or words[1:3] == ["sim", "fleet"]


LINES = list(doc_lines())


class _Parsed(BaseException):
    """Raised once a program's parser accepted its arguments (nothing runs)."""


def test_the_docs_have_command_lines_of_every_kind() -> None:
    ours = [line for line in LINES if _entry(line.argv)]
    assert len(ours) >= 20
    assert any(_is_offline(line.argv) for line in ours)
    assert any(line.argv[:3] == ("ank", "sim", "fleet") for line in ours)


@pytest.mark.parametrize("line", LINES, ids=str)
def test_command_line_is_accepted_by_its_program(line: Line, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(line.argv)
    if entry is None:
        assert line.argv[0] in OTHER_PROGRAMS, f"{line}: unknown program; run it here or list it in OTHER_PROGRAMS"
        return
    main, args = entry
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **kw: Any) -> Any:
        original(self, *a, **kw)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        main(args)
    except _Parsed:
        return
    except SystemExit as exc:
        if exc.code == 0 and "--help" in args:
            return
        raise AssertionError(f"{line}: its program refused the arguments (exit {exc.code})") from exc
    raise AssertionError(f"{line}: the program never parsed its arguments")


@pytest.mark.parametrize("line", [line for line in LINES if _entry(line.argv) and _is_offline(line.argv)], ids=str)
def test_command_line_that_needs_no_system_runs_and_exits_0(line: Line, tmp_path: Path) -> None:
    (tmp_path / "manifests").symlink_to(ROOT / "manifests")
    program = line.argv[0].removeprefix(".venv/bin/")
    argv = [str(Path(sys.executable).parent / program), *line.argv[1:]] if program in SCRIPTS else list(line.argv)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    out = subprocess.run(
        argv, cwd=tmp_path, env=child_env("tcp/127.0.0.1:9"), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{line}: exit {out.returncode}\n{out.stderr[-2000:]}"
