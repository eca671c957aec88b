"""The agent core's decisions, with an injected clock: no Zenoh, no processes."""

from __future__ import annotations

import msgspec

from schemas.manifest import RestartPolicy, Workload
from schemas.messages import AgentPlan, HealthReport, PlannedWorkload, WorkloadState
from services.agent import core
from services.agent.core import (
    AgentState,
    Backoff,
    Create,
    CreateFailed,
    Exited,
    FoundRecord,
    HealthChanged,
    Now,
    PlanReceived,
    Publish,
    RecordsFound,
    Remove,
    Started,
    Step,
    Stop,
    Wake,
    WakeAt,
)

AGENT = "a1"


def planned(name: str = "w", policy: RestartPolicy = "NEVER", instance: str = "i1", hold: str = "") -> PlannedWorkload:
    workload = Workload(runtime="process", runtime_config="command: /bin/true", restart_policy=policy)
    return PlannedWorkload(name, instance, workload, hold)  # type: ignore[arg-type]


def plan(generation: int, *workloads: PlannedWorkload) -> PlanReceived:
    return PlanReceived(AgentPlan(agent=AGENT, generation=generation, workloads=list(workloads)))


class Driver:
    """Feeds events to the core with a hand-moved clock and keeps the actions."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.state = AgentState(agent=AGENT, backoff=backoff or Backoff(0.1, 10.0, 10.0), stop_grace_s=3.0)
        self.mono = 100.0
        self.actions: list[core.Action] = []

    def feed(self, event: core.AgentEvent) -> list[core.Action]:
        result: Step = core.step(self.state, event, Now(self.mono, int(self.mono * 1000)))
        self.state = result.state
        self.actions = [a for a in result.actions if not isinstance(a, core.Note)]
        return self.actions

    def published(self) -> list[str]:
        return [str(a.state.execution_state) for a in self.actions if isinstance(a, Publish)]

    def last_state(self) -> WorkloadState:
        states = [a.state for a in self.actions if isinstance(a, Publish)]
        return states[-1]

    def kinds(self) -> list[str]:
        return [type(a).__name__ for a in self.actions]

    def run(self, p: PlannedWorkload, generation: int = 1) -> None:
        """Plan it and let the runtime report it running."""
        self.feed(plan(generation, p))
        self.feed(Started(p.name, p.instance))


def test_plan_creates_a_workload_and_it_runs() -> None:
    d = Driver()
    d.feed(plan(1, planned()))
    assert d.published() == ["Pending(Starting)"]
    assert any(isinstance(a, Create) for a in d.actions)
    d.feed(Started("w", "i1"))
    assert d.published() == ["Running(Ok)"]


def test_never_does_not_restart_after_exit_0_or_1() -> None:
    for code, expected in ((0, "Succeeded(Ok)"), (1, "Failed(ExecFailed)")):
        d = Driver()
        d.run(planned(policy="NEVER"))
        d.feed(Exited("w", "i1", code))
        assert d.published() == [expected]
        assert not any(isinstance(a, Create | WakeAt) for a in d.actions)


def test_failed_state_carries_the_exit_code() -> None:
    d = Driver()
    d.run(planned())
    d.feed(Exited("w", "i1", 3))
    state = d.last_state()
    assert state.execution_state.additional_info == "exit code 3"
    assert state.exit_code == 3


def test_on_failure_does_not_restart_after_exit_0() -> None:
    d = Driver()
    d.run(planned(policy="ON_FAILURE"))
    d.feed(Exited("w", "i1", 0))
    assert d.published() == ["Succeeded(Ok)"]
    assert not any(isinstance(a, Create) for a in d.actions)


def test_on_failure_restarts_after_exit_1_at_once() -> None:
    d = Driver()
    d.run(planned(policy="ON_FAILURE"))
    d.feed(Exited("w", "i1", 1))
    assert d.published() == ["Failed(ExecFailed)", "Pending(Starting)"]
    assert d.kinds() == ["Publish", "Remove", "Publish", "Create"]
    assert d.last_state().restart_count == 1
    assert d.last_state().last_restart_ms == 100_000


def test_on_failure_restarts_after_an_external_sigkill() -> None:
    d = Driver()
    d.run(planned(policy="ON_FAILURE"))
    d.feed(Exited("w", "i1", -9))
    assert d.published()[0] == "Failed(ExecFailed)"
    assert "signal 9" in next(a.state for a in d.actions if isinstance(a, Publish)).execution_state.additional_info
    assert any(isinstance(a, Create) for a in d.actions)


def test_always_restarts_after_exit_0_exit_1_and_sigkill() -> None:
    for code in (0, 1, -9):
        d = Driver()
        d.run(planned(policy="ALWAYS"))
        d.feed(Exited("w", "i1", code))
        assert any(isinstance(a, Create) for a in d.actions), code


def test_on_failure_restarts_after_an_unknown_exit_of_an_adopted_process() -> None:
    d = Driver()
    d.feed(RecordsFound([FoundRecord("w", "i1", "process", planned=planned(policy="ON_FAILURE"), restart_count=4)]))
    assert d.published() == ["Running(Ok)"]
    assert d.last_state().restart_count == 4
    d.feed(Exited("w", "i1", None))
    assert d.published()[0] == "Failed(Unknown)"
    assert d.last_state().restart_count == 5


def test_on_failure_does_not_restart_after_a_stop_the_agent_asked_for() -> None:
    d = Driver()
    d.run(planned(policy="ON_FAILURE"))
    d.feed(plan(2))  # deleted
    assert d.published() == ["Stopping(Stopping)"]
    assert [type(a) for a in d.actions if isinstance(a, Stop)] == [Stop]
    assert d.actions[-1] == Stop("w", "i1", "process", 3.0)
    d.feed(Exited("w", "i1", -15))
    assert d.published() == ["Removed"]
    assert any(isinstance(a, Remove) for a in d.actions)
    assert not any(isinstance(a, Create) for a in d.actions)
    assert "w" not in d.state.slots


def test_backoff_sequence_then_reset_after_a_stable_run() -> None:
    d = Driver(Backoff(initial_s=0.1, max_s=0.5, stable_after_s=10.0))
    d.run(planned(policy="ALWAYS"))
    delays = []
    for _ in range(6):
        d.mono += 1.0  # short runs: not stable
        d.feed(Exited("w", "i1", 1))
        wake = [a for a in d.actions if isinstance(a, WakeAt)]
        if wake:
            delays.append(round(wake[0].at_mono - d.mono, 6))
            assert d.state.slots["w"].phase == "backoff"
            d.feed(Wake("w", wake[0].token - 1))  # a stale timer does nothing
            assert not d.actions
            d.mono = wake[0].at_mono
            d.feed(Wake("w", wake[0].token))
            assert any(isinstance(a, Create) for a in d.actions)
        else:
            delays.append(0.0)
        d.feed(Started("w", "i1"))
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert d.state.slots["w"].restart_count == 6
    d.mono += 10.0  # a stable run
    d.feed(Exited("w", "i1", 1))
    assert any(isinstance(a, Create) for a in d.actions)  # immediate again
    assert d.state.slots["w"].restart_count == 7


def test_stale_plan_is_ignored() -> None:
    d = Driver()
    d.run(planned(), generation=5)
    d.feed(plan(4))
    assert d.actions == []
    assert d.state.slots["w"].phase == "running"


def test_a_resent_plan_makes_the_agent_say_every_state_again() -> None:
    # The planner re-sends the same plan when it (re)discovers the agent, and
    # may have published AgentDisconnected meanwhile.
    d = Driver()
    d.run(planned(), generation=5)
    d.feed(plan(5))
    assert [type(a).__name__ for a in d.actions] == ["Publish"]
    assert d.state.slots["w"].phase == "running"


def test_plan_for_another_agent_is_ignored() -> None:
    d = Driver()
    d.feed(PlanReceived(AgentPlan(agent="other", generation=1, workloads=[planned()])))
    assert d.actions == [] and d.state.slots == {}


def test_same_plan_again_changes_nothing() -> None:
    d = Driver()
    d.run(planned())
    d.feed(plan(2, planned()))
    assert d.actions == []


def test_hold_waiting_to_start_does_not_start_until_released() -> None:
    d = Driver()
    d.feed(plan(1, planned(hold="WaitingToStart")))
    assert d.published() == ["Pending(WaitingToStart)"]
    assert not any(isinstance(a, Create) for a in d.actions)
    d.feed(plan(2, planned()))
    assert d.published() == ["Pending(Starting)"]
    assert any(isinstance(a, Create) for a in d.actions)


def test_hold_waiting_to_stop_keeps_it_running_then_deletes() -> None:
    d = Driver()
    d.run(planned(policy="ALWAYS"))
    d.feed(plan(2, planned(policy="ALWAYS", hold="WaitingToStop")))
    assert d.published() == ["Stopping(WaitingToStop)"]
    assert not any(isinstance(a, Stop) for a in d.actions)
    d.feed(plan(3))
    assert d.published() == ["Stopping(Stopping)"]
    d.feed(Exited("w", "i1", 0))
    assert d.published() == ["Removed"]


def test_update_stops_the_old_instance_then_creates_the_new() -> None:
    d = Driver()
    d.run(planned(policy="ALWAYS"))
    d.feed(plan(2, planned(policy="ALWAYS", instance="i2")))
    assert d.published() == ["Stopping(Stopping)"]
    assert d.actions[-1] == Stop("w", "i1", "process", 3.0)
    assert not any(isinstance(a, Create) for a in d.actions)
    d.feed(Exited("w", "i1", -15))  # ALWAYS, yet no restart of the old one: the agent stopped it
    assert d.kinds() == ["Remove", "Publish", "Create"]
    create = d.actions[-1]
    assert isinstance(create, Create) and create.planned.instance == "i2"
    d.feed(Started("w", "i2"))
    assert d.published() == ["Running(Ok)"]
    assert d.last_state().instance == "i2"


def test_update_of_an_ended_workload_creates_the_new_instance_at_once() -> None:
    d = Driver()
    d.run(planned())
    d.feed(Exited("w", "i1", 0))
    d.feed(plan(2, planned(instance="i2")))
    assert d.kinds() == ["Remove", "Publish", "Create"]


def test_delete_of_a_waiting_workload_publishes_removed() -> None:
    d = Driver()
    d.feed(plan(1, planned(hold="WaitingToStart")))
    d.feed(plan(2))
    assert d.published() == ["Removed"]
    assert not any(isinstance(a, Stop) for a in d.actions)


def test_delete_during_backoff_cancels_the_restart() -> None:
    d = Driver()
    d.run(planned(policy="ALWAYS"))
    d.feed(Exited("w", "i1", 1))  # immediate restart
    d.feed(Started("w", "i1"))
    d.feed(Exited("w", "i1", 1))  # now backing off
    wake = next(a for a in d.actions if isinstance(a, WakeAt))
    d.feed(plan(2))
    assert d.published() == ["Removed"]
    d.feed(Wake("w", wake.token))
    assert d.actions == []


def test_permanent_create_failure_is_starting_failed() -> None:
    d = Driver()
    d.feed(plan(1, planned(policy="ALWAYS")))
    d.feed(CreateFailed("w", "i1", "cannot execute 'nope': No such file", permanent=True))
    state = d.last_state()
    assert str(state.execution_state) == "Pending(StartingFailed)"
    assert "No such file" in state.execution_state.additional_info
    assert not any(isinstance(a, WakeAt | Create) for a in d.actions)


def test_retryable_create_failure_retries_with_backoff() -> None:
    d = Driver()
    d.feed(plan(1, planned()))
    d.feed(CreateFailed("w", "i1", "image not found", permanent=False))
    assert d.last_state().execution_state.additional_info == "Retry 1: image not found"
    wake = next(a for a in d.actions if isinstance(a, WakeAt))
    assert round(wake.at_mono - d.mono, 6) == 0.1
    d.mono = wake.at_mono
    d.feed(Wake("w", wake.token))
    assert any(isinstance(a, Create) for a in d.actions)
    assert d.last_state().restart_count == 0  # a retried create is not a restart


def test_unhealthy_on_failure_stops_and_restarts_counting_a_restart() -> None:
    d = Driver()
    d.run(planned(policy="ON_FAILURE"))
    report = HealthReport(workload="w", agent=AGENT, status="unhealthy", last_error="tcp refused")
    d.feed(HealthChanged(report))
    state = d.last_state()
    assert str(state.execution_state) == "Failed(ExecFailed)"
    assert state.execution_state.additional_info == "unhealthy: tcp refused"
    assert state.health == "unhealthy"
    assert d.actions[-1] == Stop("w", "i1", "process", 3.0)
    d.feed(HealthChanged(report))  # repeated verdicts while stopping do nothing
    assert d.actions == []
    d.feed(Exited("w", "i1", -15))
    assert any(isinstance(a, Create) for a in d.actions)
    assert d.last_state().restart_count == 1


def test_unhealthy_never_ends_failed_and_is_not_restarted() -> None:
    d = Driver()
    d.run(planned(policy="NEVER"))
    d.feed(HealthChanged(HealthReport(workload="w", agent=AGENT, status="unhealthy", last_error="x")))
    assert d.actions[-1] == Stop("w", "i1", "process", 3.0)
    d.feed(Exited("w", "i1", -15))
    assert not any(isinstance(a, Create) for a in d.actions)
    state = d.last_state()
    assert str(state.execution_state) == "Failed(ExecFailed)"
    assert "unhealthy" in state.execution_state.additional_info


def test_healthy_verdict_is_published_in_the_state() -> None:
    d = Driver()
    d.run(planned())
    d.feed(HealthChanged(HealthReport(workload="w", agent=AGENT, status="healthy")))
    assert d.last_state().health == "healthy"
    assert d.published() == ["Running(Ok)"]


def test_events_about_a_replaced_instance_are_ignored() -> None:
    d = Driver()
    d.run(planned())
    d.feed(Exited("w", "old-instance", 1))
    assert d.actions == []


def test_adopted_instance_confirmed_by_the_plan_is_left_running() -> None:
    d = Driver()
    d.feed(RecordsFound([FoundRecord("w", "i1", "process", restart_count=2)]))
    d.feed(plan(1, planned(policy="ALWAYS")))
    assert d.actions == []
    assert d.state.slots["w"].policy == "ALWAYS"
    assert d.state.slots["w"].restart_count == 2


def test_adopted_instance_with_another_instance_in_the_plan_is_replaced() -> None:
    d = Driver()
    d.feed(RecordsFound([FoundRecord("w", "i0", "process")]))
    d.feed(plan(1, planned(instance="i1")))
    assert d.actions[-1] == Stop("w", "i0", "process", 3.0)


def test_current_states_lists_every_workload() -> None:
    d = Driver()
    d.run(planned("a"))
    d.feed(plan(2, planned("a"), planned("b", hold="WaitingToStart")))
    states = core.current_states(d.state, Now(0, 0))
    assert sorted((s.workload, str(s.execution_state)) for s in states) == [
        ("a", "Running(Ok)"),
        ("b", "Pending(WaitingToStart)"),
    ]


def test_core_state_is_a_msgspec_value() -> None:
    d = Driver()
    d.run(planned())
    encoded = msgspec.json.encode(d.state)
    assert msgspec.json.decode(encoded, type=AgentState) == d.state


def test_plan_entries_with_invalid_names_are_ignored() -> None:
    d = Driver()
    d.feed(plan(1, planned("../../etc/evil"), planned(""), planned("ok")))
    assert set(d.state.slots) == {"ok"}
    assert [a.planned.name for a in d.actions if isinstance(a, Create)] == ["ok"]


def test_workload_planned_again_while_stopping_is_created_after_the_stop() -> None:
    d = Driver()
    d.run(planned())
    d.feed(plan(2))  # deleted: stopping
    d.feed(plan(3, planned()))  # back before the exit arrived
    assert not any(isinstance(a, Remove | Create) for a in d.actions)  # the stop goes on
    d.feed(Exited("w", "i1", -15))
    assert d.kinds() == ["Remove", "Publish", "Create"]
    assert d.published() == ["Pending(Starting)"]


def test_update_while_stopping_waits_for_the_exit_before_removing() -> None:
    d = Driver()
    d.run(planned(instance="i1"))
    d.feed(plan(2, planned(instance="i2")))  # update: stopping i1
    d.feed(plan(3, planned(instance="i3")))  # another update before i1 is gone
    assert not any(isinstance(a, Remove | Create) for a in d.actions)
    d.feed(Exited("w", "i1", -15))
    create = next(a for a in d.actions if isinstance(a, Create))
    assert create.planned.instance == "i3"


def test_other_instance_waiting_to_stop_is_stopped_and_removed() -> None:
    d = Driver()
    d.run(planned(instance="i1"))
    d.feed(plan(2, planned(instance="i2", hold="WaitingToStop")))
    assert d.actions[-1] == Stop("w", "i1", "process", 3.0)
    d.feed(Exited("w", "i1", -15))
    assert d.published() == ["Removed"]
    assert not any(isinstance(a, Create) for a in d.actions)


def test_an_instance_that_vanishes_is_failed_lost_as_in_ankaios() -> None:
    # ended, then removed outside the agent (podman's --rm): Failed(Lost)
    d = Driver()
    d.run(planned(policy="NEVER"))
    d.feed(Exited("w", "i1", 0))
    assert d.published() == ["Succeeded(Ok)"]
    d.feed(Exited("w", "i1", None, core.LOST + "container removed outside the agent"))
    assert d.published() == ["Failed(Lost)"]
    assert d.last_state().execution_state.additional_info == "container removed outside the agent"
    # vanished while running: Failed(Lost) too, not Failed(Unknown)
    d = Driver()
    d.run(planned(policy="NEVER"))
    d.feed(Exited("w", "i1", None, core.LOST + "gone"))
    assert d.published() == ["Failed(Lost)"]
    # a plain unknown exit stays Failed(Unknown)
    d = Driver()
    d.run(planned(policy="NEVER"))
    d.feed(Exited("w", "i1", None))
    assert d.published() == ["Failed(Unknown)"]
