"""The CLI's pure views: rows, detail lines, settle rule."""

from __future__ import annotations

from schemas import ExecutionState, Manifest, Workload, WorkloadState
from schemas.state import State, Substate
from services.cli import views


def _st(name: str, state: State, sub: Substate, t: int, agent: str = "a1", **kw: object) -> WorkloadState:
    return WorkloadState(
        workload=name,
        agent=agent,
        execution_state=ExecutionState(state, sub),
        time_ms=t,
        **kw,  # type: ignore[arg-type]
    )


DESIRED = Manifest(
    api_version="v1",
    workloads={
        "router": Workload(runtime="process", agent="a1", restart_policy="ALWAYS"),
        "app": Workload(runtime="process", agent="a1", dependencies={"router": "ADD_COND_RUNNING"}),
    },
)


def test_rows_take_the_newest_state_per_workload_and_have_the_json_fields() -> None:
    rows = views.workload_rows(
        DESIRED,
        [
            _st("router", "Pending", "Starting", 1),
            _st("router", "Running", "Ok", 2, restart_count=3),
            _st("app", "Pending", "WaitingToStart", 1),
        ],
    )
    by_name = {r["name"]: r for r in rows}
    assert by_name["router"]["state"] == "Running" and by_name["router"]["substate"] == "Ok"
    assert by_name["router"]["restartCount"] == 3
    assert {"name", "agent", "runtime", "state", "substate", "additionalInfo", "restartCount"} <= set(rows[0])


def test_rows_filter_by_agent_state_and_name() -> None:
    states = [_st("router", "Running", "Ok", 1), _st("app", "Pending", "WaitingToStart", 1, agent="a2")]
    assert [r["name"] for r in views.workload_rows(DESIRED, states, agent="a2")] == ["app"]
    assert [r["name"] for r in views.workload_rows(DESIRED, states, state="running")] == ["router"]
    assert [r["name"] for r in views.workload_rows(DESIRED, states, names=["app"])] == ["app"]


def test_removed_workloads_no_longer_desired_are_not_listed() -> None:
    states = [_st("old", "Removed", "", 5)]
    assert "old" not in [r["name"] for r in views.workload_rows(DESIRED, states)]


def test_detail_shows_each_dependency_with_its_condition_and_current_state() -> None:
    lines = dict(views.workload_detail("app", DESIRED, [_st("router", "Pending", "Starting", 1)]))
    assert lines["Dependency"] == "router: ADD_COND_RUNNING: WAITING (current: Pending(Starting))"
    lines = dict(views.workload_detail("app", DESIRED, [_st("router", "Running", "Ok", 1)]))
    assert lines["Dependency"] == "router: ADD_COND_RUNNING: MET (current: Running(Ok))"


def test_apply_waits_through_transient_states_only() -> None:
    assert not views.settled(None, deleting=False)
    assert not views.settled(("Pending", "Starting"), deleting=False)
    assert not views.settled(("Pending", "Initial"), deleting=False)
    assert views.settled(("Running", "Ok"), deleting=False)
    assert views.settled(("Pending", "WaitingToStart"), deleting=False)
    assert views.settled(("Failed", "ExecFailed"), deleting=False)
    assert not views.settled(("Stopping", "WaitingToStop"), deleting=True)
    assert views.settled(("Removed", ""), deleting=True)
