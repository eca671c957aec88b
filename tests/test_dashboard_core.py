"""The dashboard's data model, pure: no Zenoh, no clock, no server."""

from __future__ import annotations

from schemas import (
    AgentStatus,
    CompleteState,
    EnergyReport,
    Event,
    ExecutionState,
    Manifest,
    Workload,
    WorkloadState,
)
from schemas.liveliness import AgentLiveliness
from services.dashboard import core
from services.dashboard.core import DashboardView

NOW = 1_700_000_000_000  # the view keeps no timers: any time will do


def _state(name: str, agent: str, state: str, substate: str = "", time_ms: int = 1, **kw: object) -> WorkloadState:
    return WorkloadState(
        workload=name,
        agent=agent,
        execution_state=ExecutionState(state, substate),  # type: ignore[arg-type]
        time_ms=time_ms,
        **kw,  # type: ignore[arg-type]
    )


def test_a_state_becomes_a_row_and_an_update_with_the_desired_restart_policy() -> None:
    desired = Manifest(api_version="v1", workloads={"nginx": Workload(runtime="podman", restart_policy="ALWAYS")})
    view = DashboardView(desired=desired)
    view, updates = core.step(view, _state("nginx", "a1", "Running", "Ok", restart_count=2), NOW)
    [row] = core.workload_rows(view)
    assert (row["name"], row["agent"], row["state"], row["substate"]) == ("nginx", "a1", "Running", "Ok")
    assert row["restartCount"] == 2 and row["restartPolicy"] == "ALWAYS" and row["runtime"] == "podman"
    assert [u.kind for u in updates] == ["workload"] and updates[0].data == row


def test_an_older_state_does_not_replace_a_newer_one() -> None:
    view, _ = core.step(DashboardView(), _state("w", "a1", "Failed", "ExecFailed", time_ms=200), NOW)
    view, updates = core.step(view, _state("w", "a1", "Running", "Ok", time_ms=100), NOW)
    assert updates == []
    assert core.workload_rows(view)[0]["state"] == "Failed"


def test_removed_takes_the_instance_out_and_says_so() -> None:
    view, _ = core.step(DashboardView(), _state("w", "a1", "Running", "Ok", time_ms=1), NOW)
    view, updates = core.step(view, _state("w", "a1", "Removed", time_ms=2), NOW)
    assert core.workload_rows(view) == []
    assert [(u.kind, u.data) for u in updates] == [("workloadRemoved", {"name": "w", "agent": "a1"})]
    _, again = core.step(view, _state("w", "a1", "Removed", time_ms=3), NOW)
    assert again == []


def test_placing_a_workload_drops_its_not_scheduled_entry() -> None:
    view, _ = core.step(DashboardView(), _state("w", "", "NotScheduled", time_ms=1), NOW)
    view, updates = core.step(view, _state("w", "robot1", "Pending", "Starting", time_ms=2), NOW)
    assert [(r["agent"], r["state"]) for r in core.workload_rows(view)] == [("robot1", "Pending")]
    assert ("workloadRemoved", {"name": "w", "agent": ""}) in [(u.kind, u.data) for u in updates]


def test_one_workload_on_two_agents_during_a_move_shows_both() -> None:
    view, _ = core.step(DashboardView(), _state("w", "a1", "Stopping", "Stopping"), NOW)
    view, _ = core.step(view, _state("w", "a2", "Pending", "Starting"), NOW)
    assert [r["agent"] for r in core.workload_rows(view, "w")] == ["a1", "a2"]
    assert core.workload_rows(view, "other") == []


def test_complete_state_gives_desired_rows_known_agents_and_a_snapshot() -> None:
    desired = Manifest(
        api_version="v1",
        workloads={"a": Workload(runtime="process", agent="car"), "b": Workload(runtime="process", agent="car")},
    )
    complete = CompleteState(desired=desired, workload_states=[_state("a", "car", "Running", "Ok")], agents=["car"])
    view, updates = core.step(DashboardView(), complete, NOW)
    rows = {r["name"]: r for r in core.workload_rows(view)}
    assert rows["a"]["state"] == "Running"
    # desired, no state seen yet: Pending(Initial), as `ank get workloads` shows it
    assert (rows["b"]["state"], rows["b"]["substate"], rows["b"]["agent"]) == ("Pending", "Initial", "car")
    assert [a["name"] for a in core.agent_rows(view)] == ["car"] and core.agent_rows(view)[0]["alive"] is True
    assert [u.kind for u in updates] == ["snapshot"]
    assert updates[0].data == core.snapshot(view)


def test_agent_row_joins_liveliness_status_and_energy() -> None:
    view, _ = core.step(DashboardView(), AgentLiveliness("robot1", True), NOW)
    status = AgentStatus(agent="robot1", arch="aarch64", os="linux", tags={"zone": "lab"}, cpu_percent=12.5)
    view, _ = core.step(view, status, NOW)
    view, updates = core.step(
        view, EnergyReport(node="robot1", energy_wh=31.5, capacity_wh=40.0, x=1.0, y=-2.0, time_ms=10), NOW
    )
    [row] = core.agent_rows(view)
    assert row["alive"] is True and row["arch"] == "aarch64" and row["tags"] == {"zone": "lab"}
    assert (row["energyWh"], row["capacityWh"], row["pose"]) == (31.5, 40.0, [1.0, -2.0])
    assert updates[0].kind == "agent" and updates[0].data == row
    view, updates = core.step(view, AgentLiveliness("robot1", False), NOW)
    assert core.agent_rows(view)[0]["alive"] is False and updates[0].data["alive"] is False
    _, unchanged = core.step(view, AgentLiveliness("robot1", False), NOW)
    assert unchanged == []


def test_an_older_energy_report_is_ignored() -> None:
    view, _ = core.step(DashboardView(), EnergyReport(node="n", energy_wh=20.0, time_ms=200), NOW)
    view, updates = core.step(view, EnergyReport(node="n", energy_wh=50.0, time_ms=100), NOW)
    assert updates == [] and core.agent_rows(view)[0]["energyWh"] == 20.0


def test_only_the_newest_events_are_kept_newest_first() -> None:
    view = DashboardView(max_events=3)
    for i in range(5):
        view, updates = core.step(view, Event(kind="restart", message=f"m{i}", time_ms=i), NOW)
    assert [e["message"] for e in core.event_rows(view)] == ["m4", "m3", "m2"]
    assert updates[0].data["message"] == "m4"
