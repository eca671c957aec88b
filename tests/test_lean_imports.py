"""What a process loads at start (issue 17): each service and the CLI's
`get workloads` leave out the modules only some commands or workloads need.
Each check runs in a fresh interpreter, where sys.modules shows what an
import really pulled in."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from ank_common import digest
from tests.helpers import ROOT


def _loaded(imports: list[str], wanted: list[str]) -> dict[str, bool]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}: importlib.import_module(name)\n"
        f"print(json.dumps({{w: w in sys.modules for w in {wanted!r}}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result: dict[str, bool] = json.loads(out)
    return result


def test_the_cli_parser_loads_neither_yaml_nor_the_fleet_study_nor_rich() -> None:
    loaded = _loaded(
        ["services.cli.main"], ["yaml", "services.scheduler.sim", "services.scheduler.framework", "rich", "_hashlib"]
    )
    assert not any(loaded.values()), loaded


def test_the_cli_still_parses_every_subcommands_options() -> None:
    from services.cli.main import build_parser

    args = build_parser().parse_args(["sim", "fleet", "--robots", "3", "--no-plots"])
    assert (args.robots, args.no_plots, args.seeds) == (3, True, 5)
    args = build_parser().parse_args(["get", "workloads", "-o", "yaml"])
    assert args.output == "yaml"


@pytest.mark.parametrize("service", ["planner", "agent", "scheduler", "health_watcher"])
def test_a_service_loads_neither_openssl_nor_the_control_interface_protocol(service: str) -> None:
    loaded = _loaded([f"services.{service}.shell"], ["_hashlib", "google.protobuf", "ankaios_sdk"])
    assert not any(loaded.values()), loaded


@pytest.mark.parametrize("data", [b"", b"abc", b"\x00" * 100_000])
def test_the_builtin_digests_equal_hashlibs(data: bytes) -> None:
    assert digest.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.blake2b(data, digest_size=8).digest() == hashlib.blake2b(data, digest_size=8).digest()
