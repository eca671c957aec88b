"""One view model: the CLI prints and the dashboard serves the same row for
the same workload, agent and event (ank_common.views), and the planner and
the CLI judge a dependency by one condition table (schemas.state)."""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any, cast

import pytest

from ank_common import views as shared
from schemas import AgentStatus, CompleteState, EnergyReport, Event, ExecutionState, Manifest, Workload, WorkloadState
from schemas.liveliness import AgentLiveliness
from schemas.manifest import DependencyCondition
from schemas.messages import WorkloadUsage
from schemas.state import ADD_CONDITION_MET_BY, SUBSTATES, State, Substate
from services.cli import main, views
from services.cli.client import Client
from services.dashboard import core
from services.dashboard.core import DashboardView
from services.planner import core as planner_core

NOW = 1_700_000_000_000

# The CLI's JSON rows (`ank get workloads -o json`, `ank get agents -o json`), field by field, in order.
CLI_WORKLOAD_FIELDS = [
    "name",
    "agent",
    "runtime",
    "state",
    "substate",
    "additionalInfo",
    "restartCount",
    "exitCode",
    "health",
    "lastError",
    "lastRestartMs",
    "instance",
]
CLI_AGENT_FIELDS = [
    "name",
    "alive",
    "arch",
    "os",
    "tags",
    "cpuPercent",
    "freeMemoryBytes",
    "runtimes",
    "workloads",
    "energyWh",
    "pose",
]


def _st(
    name: str, agent: str, state: State, sub: Substate = "", t: int = 1, info: str = "", **kw: Any
) -> WorkloadState:
    return WorkloadState(workload=name, agent=agent, execution_state=ExecutionState(state, sub, info), time_ms=t, **kw)


class _Planner:
    """What the CLI's commands ask the planner and the agents, answered from fixed values."""

    def __init__(
        self,
        complete: CompleteState,
        statuses: dict[str, AgentStatus] | None = None,
        energy: dict[str, EnergyReport] | None = None,
    ) -> None:
        self.complete = complete
        self.statuses = statuses or {}
        self.reports = energy or {}

    def state(self, since_ms: int | None = None) -> CompleteState:
        return self.complete

    def agent_statuses(self) -> dict[str, AgentStatus]:
        return self.statuses

    def energy(self) -> dict[str, EnergyReport]:
        return self.reports


def _cli_workloads(desired: Manifest, states: list[WorkloadState], capsys: pytest.CaptureFixture[str]) -> Any:
    client = cast(Client, _Planner(CompleteState(desired=desired, workload_states=states)))
    args = argparse.Namespace(watch=False, output="json", names=[], agent=None, state=None)
    assert main.cmd_get_workloads(client, args) == 0
    return json.loads(capsys.readouterr().out)


def _dashboard_workloads(desired: Manifest, states: list[WorkloadState]) -> tuple[Any, Any]:
    """The dashboard's rows from the state query (one CompleteState) and from
    the same states arriving one by one on the bus."""
    queried, _ = core.step(DashboardView(), CompleteState(desired=desired, workload_states=states), NOW)
    live, _ = core.step(DashboardView(), CompleteState(desired=desired), NOW)
    for state in states:
        live, _ = core.step(live, state, NOW)
    return core.workload_rows(queried), core.workload_rows(live)


def _cli_part(row: dict[str, Any], dashboard_only: tuple[str, ...]) -> dict[str, Any]:
    """The dashboard's row without what only its page shows, which comes last."""
    assert list(row)[-len(dashboard_only) :] == list(dashboard_only)
    return {k: v for k, v in row.items() if k not in dashboard_only}


DESIRED = Manifest(
    api_version="v1",
    workloads={
        "router": Workload(runtime="process", agent="a1", restart_policy="ALWAYS"),
        "app": Workload(runtime="podman", agent="a1", dependencies={"router": "ADD_COND_RUNNING"}),
        "floating": Workload(runtime="process"),
    },
)

CASES: dict[str, list[WorkloadState]] = {
    "no state yet": [],
    "running": [
        _st("router", "a1", "Pending", "Starting", 1),
        _st("router", "a1", "Running", "Ok", 2, restart_count=2, instance="i1", health="healthy", last_restart_ms=NOW),
    ],
    "pending with dependencies": [
        _st("router", "a1", "Pending", "Starting", 1, instance="i1"),
        _st("app", "a1", "Pending", "WaitingToStart", 1, info="waiting for router", instance="i2"),
    ],
    "removed": [_st("gone", "a1", "Running", "Ok", 1), _st("gone", "a1", "Removed", "", 2)],
    "not scheduled": [_st("floating", "", "NotScheduled", "", 1, info="no node fits")],
    "failed": [_st("router", "a1", "Failed", "ExecFailed", 3, exit_code=3, last_error="exit 3", restart_count=5)],
    "deleted, still stopping": [_st("old", "a2", "Stopping", "WaitingToStop", 1, runtime="podman", instance="i9")],
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_and_dashboard_show_the_same_workload_rows(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    states = CASES[case]
    cli = _cli_workloads(DESIRED, states, capsys)
    for dashboard in _dashboard_workloads(DESIRED, states):
        assert sorted((_cli_part(r, shared.DASHBOARD_WORKLOAD_FIELDS) for r in dashboard), key=str) == sorted(
            cli, key=str
        )
        for row in cli:
            assert list(row) == CLI_WORKLOAD_FIELDS  # the CLI's JSON keeps its fields and their order


def test_a_workload_with_no_state_yet_is_pending_initial_in_both(capsys: pytest.CaptureFixture[str]) -> None:
    [cli] = [r for r in _cli_workloads(DESIRED, [], capsys) if r["name"] == "app"]
    [dashboard] = core.workload_rows(core.step(DashboardView(), CompleteState(desired=DESIRED), NOW)[0], "app")
    assert (cli["state"], cli["substate"], cli["agent"]) == ("Pending", "Initial", "a1")
    assert _cli_part(dashboard, shared.DASHBOARD_WORKLOAD_FIELDS) == cli
    assert (dashboard["restartPolicy"], dashboard["timeMs"]) == ("NEVER", 0)


def test_the_row_the_dashboard_pushes_is_the_row_it_serves(capsys: pytest.CaptureFixture[str]) -> None:
    view, _ = core.step(DashboardView(), CompleteState(desired=DESIRED), NOW)
    running = CASES["running"][-1]
    view, updates = core.step(view, running, NOW)
    [pushed] = [u.data for u in updates if u.kind == "workload"]
    assert [pushed] == core.workload_rows(view, "router")
    [cli] = [r for r in _cli_workloads(DESIRED, [running], capsys) if r["name"] == "router"]
    assert _cli_part(pushed, shared.DASHBOARD_WORKLOAD_FIELDS) == cli


STATUS = AgentStatus(
    agent="robot1",
    arch="aarch64",
    os="linux",
    tags={"zone": "lab"},
    cpu_percent=12.5,
    free_memory_bytes=2048,
    total_memory_bytes=4096,
    runtimes=["process"],
    workloads={"router": WorkloadUsage()},
)
ENERGY_CASES: dict[str, EnergyReport | None] = {
    "no energy": None,
    "energy, no pose": EnergyReport(node="robot1", energy_wh=31.5, capacity_wh=40.0, time_ms=10, source="agent"),
    "energy and pose": EnergyReport(node="robot1", energy_wh=31.5, x=1.0, y=-2.0, time_ms=10, source="sim"),
    "half a pose": EnergyReport(node="robot1", energy_wh=3.0, x=1.0, time_ms=10),
}


@pytest.mark.parametrize("case", list(ENERGY_CASES))
def test_cli_and_dashboard_show_the_same_agent_row(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    energy = ENERGY_CASES[case]
    client = _Planner(CompleteState(desired=DESIRED), {"robot1": STATUS}, {"robot1": energy} if energy else {})
    assert main.cmd_get_agents(cast(Client, client), argparse.Namespace(output="json")) == 0
    [cli] = json.loads(capsys.readouterr().out)
    assert list(cli) == CLI_AGENT_FIELDS

    view, _ = core.step(DashboardView(), AgentLiveliness("robot1", True), NOW)
    view, updates = core.step(view, STATUS, NOW)
    if energy is not None:
        view, updates = core.step(view, energy, NOW)
    [dashboard] = core.agent_rows(view)
    assert updates[-1].data == dashboard
    assert _cli_part(dashboard, shared.DASHBOARD_AGENT_FIELDS) == cli
    expected_pose = None if energy is None or energy.x is None else [energy.x, energy.y]
    assert cli["pose"] == expected_pose and cli["workloads"] == 1


def test_a_robot_known_only_by_its_energy_has_a_row_with_no_status() -> None:
    view, _ = core.step(DashboardView(), EnergyReport(node="bot", energy_wh=5.0, x=0.5, y=0.25), NOW)
    [row] = core.agent_rows(view)
    assert list(row)[: len(CLI_AGENT_FIELDS)] == CLI_AGENT_FIELDS
    assert (row["alive"], row["arch"], row["cpuPercent"], row["workloads"]) == (None, "", None, 0)
    assert (row["energyWh"], row["pose"]) == (5.0, [0.5, 0.25])


def test_cli_and_dashboard_show_the_same_event(capsys: pytest.CaptureFixture[str]) -> None:
    event = Event(kind="restart", subject="app", message="restarted\u2028(exit 1)", severity="warning", time_ms=5)
    main._print_event(event, "json")
    cli = json.loads(capsys.readouterr().out)
    view, updates = core.step(DashboardView(), event, NOW)
    assert core.event_rows(view) == [cli] and updates[0].data == cli


def test_the_dependency_condition_table_is_the_one_in_schemas() -> None:
    assert vars(planner_core)["ADD_CONDITION_MET_BY"] is ADD_CONDITION_MET_BY  # imported, not a copy
    assert set(ADD_CONDITION_MET_BY) == set(typing.get_args(DependencyCondition))
    for state, substate in ADD_CONDITION_MET_BY.values():
        assert substate in SUBSTATES[state]


@pytest.mark.parametrize("condition", typing.get_args(DependencyCondition))
def test_the_cli_calls_met_exactly_the_state_the_planner_releases_on(condition: DependencyCondition) -> None:
    for state, substates in SUBSTATES.items():
        for substate in substates:
            dep = _st("dep", "a1", cast(State, state), cast(Substate, substate))
            met = views.dependency_text(condition, dep).split(": ")[1].startswith("MET")
            assert met == ((state, substate) == ADD_CONDITION_MET_BY[condition]), (state, substate)
    assert "WAITING (current: absent)" in views.dependency_text(condition, None)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((100, 5), (100, 4)),  # same time, an older seq arrives second: dropped by both
        ((100, 5), (99, 9)),  # an older time arrives second: dropped by both
        ((100, 5), (100, 6)),  # same time, a newer seq: taken by both
        ((100, 5), (101, 1)),  # a newer time: taken by both
    ],
)
def test_cli_and_dashboard_agree_which_state_is_the_latest(first: tuple[int, int], second: tuple[int, int]) -> None:
    """One rule (`ank_common.views.is_newer`): the dashboard kept a state of
    the same time but an older seq, which the CLI drops."""
    a, b = (
        WorkloadState(
            workload="web",
            agent="robot",
            execution_state=ExecutionState(cast(State, state), "Ok"),
            instance="i",
            time_ms=t,
            seq=seq,
        )
        for state, (t, seq) in (("Running", first), ("Succeeded", second))
    )
    cli = views.latest_states([a, b])["web"].execution_state.state
    view, _ = core.step(DashboardView(), a, 0)
    view, _ = core.step(view, b, 0)
    assert view.workloads[("robot", "web")].execution_state.state == cli
