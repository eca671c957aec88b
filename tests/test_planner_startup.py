"""The planner's startup manifest (`ank-planner --startup-manifest`, which
`ank-server -c` passes): applied through the core's step before anyone is
answered, persisted, or refused with its errors and nothing changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.bus import Bus
from services.bus.loop import EventLoop
from services.planner import store
from services.planner.shell import Planner, _apply_startup

MakeBus = Callable[[str], Bus]

GOOD = """apiVersion: v1
workloads:
  web:
    runtime: process
    agent: a1
    runtimeConfig: |
      command: sleep
      args: ['1']
"""


def test_a_startup_manifest_is_applied_and_persisted(make_bus: MakeBus, tmp_path: Path) -> None:
    (tmp_path / "startup.yaml").write_text(GOOD)
    planner = Planner(make_bus("planner-startup"), EventLoop(), tmp_path / "state", None)
    assert _apply_startup(planner, str(tmp_path / "startup.yaml"))
    assert list(planner.state.durable.desired.workloads) == ["web"]
    loaded = store.load(tmp_path / "state")
    assert loaded is not None and list(loaded.desired.workloads) == ["web"]


def test_a_bad_startup_manifest_is_refused_naming_the_error_and_changes_nothing(
    make_bus: MakeBus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "startup.yaml").write_text(
        GOOD.replace("agent: a1", "agent: a1\n    dependencies: {web: ADD_COND_RUNNING}")
    )
    planner = Planner(make_bus("planner-startup"), EventLoop(), tmp_path / "state", None)
    assert not _apply_startup(planner, str(tmp_path / "startup.yaml"))
    assert "rejected: workloads.web.dependencies" in capsys.readouterr().err
    assert planner.state.durable.desired.workloads == {}
    assert store.load(tmp_path / "state") is None
