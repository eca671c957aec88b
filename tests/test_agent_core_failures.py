"""The agent core's decisions that used to sit in the shell: when an instance
is recorded final, what a runtime failure leads to, and the shutdown (which
workloads to stop, what to remove, when the exit may go on). Pure."""

from __future__ import annotations

from typing import TypeVar

from schemas.manifest import RestartPolicy, Workload
from schemas.messages import AgentPlan, PlannedWorkload
from services.agent import core

AGENT = "a1"
A = TypeVar("A")


def planned(name: str = "w", policy: RestartPolicy = "NEVER", instance: str = "i1") -> PlannedWorkload:
    return PlannedWorkload(name, instance, Workload(runtime="process", restart_policy=policy))


class Driver:
    def __init__(self) -> None:
        self.state = core.AgentState(agent=AGENT, backoff=core.Backoff(0.1, 10.0, 10.0), stop_grace_s=3.0)
        self.mono = 100.0
        self.actions: list[core.Action] = []

    def feed(self, event: core.AgentEvent) -> list[core.Action]:
        result = core.step(self.state, event, core.Now(self.mono, int(self.mono * 1000)))
        self.state = result.state
        self.actions = [a for a in result.actions if not isinstance(a, core.Note)]
        return self.actions

    def plan(self, generation: int, *workloads: PlannedWorkload) -> list[core.Action]:
        return self.feed(core.PlanReceived(AgentPlan(agent=AGENT, generation=generation, workloads=list(workloads))))

    def run(self, *workloads: PlannedWorkload) -> None:
        self.plan(1, *workloads)
        for p in workloads:
            self.feed(core.Started(p.name, p.instance))

    def of(self, kind: type[A]) -> list[A]:
        return [a for a in self.actions if isinstance(a, kind)]


def test_an_instance_is_recorded_final_when_it_ends_for_good_right_after_its_state() -> None:
    d = Driver()
    d.run(planned())
    d.feed(core.Exited("w", "i1", 1))
    assert [type(a) for a in d.actions] == [core.Publish, core.RecordFinal]
    [final] = d.of(core.RecordFinal)
    assert final.runtime == "process"
    assert final.state.execution_state.state == "Failed" and final.state.instance == "i1"


def test_an_instance_that_is_restarted_or_never_ran_is_not_recorded_final() -> None:
    d = Driver()
    d.run(planned(policy="ALWAYS"))
    d.feed(core.Exited("w", "i1", 0))
    assert d.of(core.Create) and not d.of(core.RecordFinal)  # restarted at once
    d = Driver()
    d.plan(1, planned())
    d.feed(core.CreateFailed("w", "i1", "no such image", permanent=True))
    assert d.state.slots["w"].phase == "done" and not d.of(core.RecordFinal)  # no instance to run again


def test_a_failed_stop_is_retried_after_the_backoff_and_alerted_once() -> None:
    d = Driver()
    d.run(planned())
    d.plan(2)
    assert d.of(core.Stop)
    d.feed(core.OperationFailed("w", "i1", "stop", "podman: connection refused"))
    [alert] = d.of(core.Alert)
    assert alert.kind == "stop-failed" and alert.subject == "w"
    [wake] = d.of(core.WakeAt)
    assert wake.at_mono > d.mono
    d.mono = wake.at_mono
    assert d.feed(core.Wake("w", wake.token)) == [core.Stop("w", "i1", "process", 3.0)]
    d.feed(core.OperationFailed("w", "i1", "stop", "podman: connection refused"))
    assert not d.of(core.Alert) and d.of(core.WakeAt)  # retried again, not alerted again
    d.feed(core.Exited("w", "i1", 143))
    assert d.of(core.Remove) and [str(a.state.execution_state) for a in d.of(core.Publish)] == ["Removed"]


def test_a_failed_remove_or_record_write_is_alerted_and_changes_nothing() -> None:
    d = Driver()
    d.run(planned())
    before = d.state
    for event, kind in (
        (core.OperationFailed("w", "i0", "remove", "busy"), "remove-failed"),
        (core.OperationFailed("w", "i1", "record", "disk full"), "record-failed"),
        (core.OperationFailed("w", "i1", "record-final", "disk full"), "record-failed"),
    ):
        d.feed(event)
        assert [a.kind for a in d.of(core.Alert)] == [kind]
        assert d.state == before


def test_shutdown_keeping_the_workloads_does_nothing_and_ignores_later_plans() -> None:
    d = Driver()
    d.run(planned())
    assert d.feed(core.Shutdown(stop_workloads=False)) == []
    assert d.plan(2) == [] and core.stops_pending(d.state) == []


def test_shutdown_stops_what_runs_removes_what_ended_and_publishes_nothing() -> None:
    d = Driver()
    d.run(planned("a"), planned("b"), planned("ended"))
    d.feed(core.Exited("ended", "i1", 0))
    d.feed(core.Shutdown(stop_workloads=True))
    assert [a.workload for a in d.of(core.Remove)] == ["ended"]
    assert [a.workload for a in d.of(core.Stop)] == ["a", "b"] and len(d.actions) == 3
    assert core.stops_pending(d.state) == ["a", "b"]
    d.feed(core.Exited("a", "i1", 143))
    assert d.actions == [core.Remove("a", "i1", "process")]
    assert d.plan(5, planned("c")) == [] and d.feed(core.Exited("b", "other", 1)) == []  # nothing else matters
    d.feed(core.StopsAbandoned())  # the shell stopped waiting: what still stops is removed anyway
    assert d.actions == [core.Remove("b", "i1", "process")] and core.stops_pending(d.state) == []


def test_a_stop_failing_at_shutdown_leaves_the_instance_and_its_record() -> None:
    d = Driver()
    d.run(planned())
    d.feed(core.Shutdown(stop_workloads=True))
    assert d.feed(core.OperationFailed("w", "i1", "stop", "podman gone")) == []
    assert core.stops_pending(d.state) == []
