"""manifests/police.yaml: the seed's police monitoring system, as process
workloads that `ank up` can run with its one agent."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from ank_common.manifest import parse_manifest
from schemas import ProcessConfig
from tests.helpers import ROOT

POLICE = ROOT / "manifests" / "police.yaml"

# From shared/seeds/ankaios-detailed-guide.ko.md: the dependency graph of
# §3 and the multi-node manifest of §10, the restart policies of §1.2/§6/§8;
# the two websocket servers start after the bridge whose data they show.
SEED_DEPENDENCIES = {
    "zenoh-router": {},
    "carla-spawner": {"zenoh-router": "ADD_COND_RUNNING"},
    "kuksa-bridge": {"zenoh-router": "ADD_COND_RUNNING", "carla-spawner": "ADD_COND_RUNNING"},
    "camera-bridge": {"zenoh-router": "ADD_COND_RUNNING", "carla-spawner": "ADD_COND_RUNNING"},
    "camera-websocket": {"zenoh-router": "ADD_COND_RUNNING", "camera-bridge": "ADD_COND_RUNNING"},
    "police-websocket": {"zenoh-router": "ADD_COND_RUNNING", "kuksa-bridge": "ADD_COND_RUNNING"},
}


def _document() -> dict[str, Any]:
    loaded = yaml.safe_load(POLICE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_police_manifest_has_the_seed_workloads_dependencies_and_restart_policies() -> None:
    workloads = _document()["workloads"]
    assert _document()["apiVersion"] == "v1"
    assert set(workloads) == set(SEED_DEPENDENCIES)
    for name, deps in SEED_DEPENDENCIES.items():
        assert (workloads[name].get("dependencies") or {}) == deps, name
        assert "agent" not in workloads[name], f"{name}: `ank up --agent` places it"
    assert workloads["zenoh-router"]["restartPolicy"] == "ALWAYS"
    assert all(w["restartPolicy"] == "ON_FAILURE" for n, w in workloads.items() if n != "zenoh-router")


@pytest.mark.parametrize("name", sorted(SEED_DEPENDENCIES))
def test_each_police_workload_runs_a_stand_in_program_that_exists(name: str) -> None:
    workload = _document()["workloads"][name]
    assert workload["runtime"] == "process"
    config = msgspec.yaml.decode(workload["runtimeConfig"], type=ProcessConfig)
    assert config.command == "python3"
    assert config.args[0] == "-m" and config.args[1].startswith("manifests.police.")
    spec = importlib.util.find_spec(config.args[1])
    assert spec is not None and spec.origin is not None and Path(spec.origin).is_file()


def test_police_manifest_is_valid_with_an_agent_given() -> None:
    parsed = parse_manifest(POLICE.read_text(), agent="police_agent")
    assert parsed.errors == [] and parsed.manifest is not None
    assert {w.agent for w in parsed.manifest.workloads.values()} == {"police_agent"}
