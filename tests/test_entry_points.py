"""Every console entry point of pyproject.toml exists, and runs from bin/ in a checkout."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_points_at_a_main_function(name: str) -> None:
    module, func = SCRIPTS[name].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bin_script_runs_from_the_checkout(name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bin" / name), "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
