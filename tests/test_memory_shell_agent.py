"""The agent's shell (services.agent.shell.AgentShell) on the in-memory bus
with a fake runtime and an injected clock: its wiring, without a router or a
real workload. The real-Zenoh tests (tests/test_agent_shell.py,
tests/test_system.py) remain the integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from schemas.manifest import Workload
from schemas.messages import AgentPlan, AgentStatus, Event, PlannedWorkload, WorkloadState, WorkloadUsage
from services.agent.runtimes.base import Notify, RunHandle, Runtime, RuntimeEvent, StartSpec
from services.agent.shell import AgentOptions, AgentShell, InstanceRecord
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus, MemoryHub
from tests.helpers import Collector, wait_for
from tests.memory_helpers import ManualClock, memory_hub, on_loop_idle, running_loop


class FakeRuntime:
    """A runtime whose workloads run at once and exit when stopped or told to."""

    name = "fake"

    def __init__(self) -> None:
        self.created: list[StartSpec] = []
        self.stopped: list[str] = []
        self._notify: dict[str, Notify] = {}
        self._lock = threading.Lock()

    def available(self) -> bool:
        return True

    def create(self, spec: StartSpec, notify: Notify) -> RunHandle:
        with self._lock:
            self.created.append(spec)
            self._notify[spec.workload] = notify
        notify(RuntimeEvent(spec.workload, spec.instance, "running"))
        return RunHandle(spec.workload, spec.instance, self.name, id=f"fake-{len(self.created)}")

    def exit(self, workload: str, instance: str, code: int) -> None:
        self._notify[workload](RuntimeEvent(workload, instance, "exited", exit_code=code))

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        self.stopped.append(handle.workload)
        self.exit(handle.workload, handle.instance, 143)

    def remove(self, handle: RunHandle) -> None:
        pass

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        return []

    def logs(self, handle: RunHandle, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        return iter(["hello\n"])

    def usage(self, handles: list[RunHandle]) -> dict[str, WorkloadUsage]:
        return {}

    def close(self) -> None:
        pass


@dataclass
class Stack:
    hub: MemoryHub
    shell: AgentShell
    runtime: FakeRuntime
    planner: MemoryBus
    states: Collector
    clock: ManualClock

    def plan(self, generation: int, *workloads: PlannedWorkload) -> None:
        self.planner.put(
            "ank/plan/robot", AgentPlan(agent="robot", epoch=1, generation=generation, workloads=list(workloads))
        )

    def state(self, workload: str, state: str) -> WorkloadState:
        def found(items: list[tuple[str, object]]) -> WorkloadState | None:
            for key, msg in reversed(items):
                if key == f"ank/state/robot/{workload}" and isinstance(msg, WorkloadState):
                    return msg if msg.execution_state.state == state else None
            return None

        return self.states.wait(found, 5, f"{workload} {state}")


def make_stack(hub: MemoryHub, run_dir: Path, runtime: FakeRuntime) -> Stack:
    """The agent "robot" on the hub (not started; its loop not running) and a
    planner's bus that collects its states."""
    clock = ManualClock()
    planner = MemoryBus(hub, "planner")
    states = Collector()
    planner.subscribe("ank/state/robot/**", WorkloadState, states)
    options = AgentOptions(name="robot", run_dir=str(run_dir), status_period_s=3600)
    shell = AgentShell(options, MemoryBus(hub, "agent/robot"), EventLoop(clock), {"fake": runtime}, clock)
    return Stack(hub, shell, runtime, planner, states, clock)


@contextmanager
def started(stack: Stack) -> Iterator[Stack]:
    """The shell started, its loop running, until the block ends."""
    with running_loop(stack.shell.loop):
        stack.shell.start()
        try:
            yield stack
        finally:
            stack.shell.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    runtime = FakeRuntime()
    _: Runtime = runtime
    with memory_hub() as hub, started(make_stack(hub, tmp_path / "run", runtime)) as running:
        yield running


def web(instance: str = "i1") -> PlannedWorkload:
    return PlannedWorkload(name="web", instance=instance, workload=Workload(runtime="fake", agent="robot"))


def test_it_announces_itself_and_answers_its_status(stack: Stack) -> None:
    assert stack.hub.tokens() == ["ank/agents/robot"]
    (status,) = stack.planner.get_decoded("ank/agents/robot/status", AgentStatus, timeout=5)
    assert status.agent == "robot" and status.os == "linux"


def test_a_plan_on_the_bus_creates_the_workload_and_its_state_is_published(stack: Stack) -> None:
    stack.plan(1, web())
    running = stack.state("web", "Running")
    assert running.instance == "i1" and running.sender == "agent/robot"
    assert [(s.workload, s.instance, s.agent) for s in stack.runtime.created] == [("web", "i1", "robot")]
    # a late joiner asks: the agent answers with what it published
    (late,) = stack.planner.get_decoded("ank/state/robot/*", WorkloadState, timeout=5)
    assert late.execution_state.state == "Running"


def test_an_exit_is_published_and_a_plan_without_it_removes_it(stack: Stack) -> None:
    stack.plan(1, web())
    stack.state("web", "Running")
    stack.runtime.exit("web", "i1", 3)
    failed = stack.state("web", "Failed")
    assert failed.exit_code == 3
    stack.plan(2)
    stack.state("web", "Removed")


def test_a_plan_without_it_stops_a_running_workload(stack: Stack) -> None:
    stack.plan(1, web())
    stack.state("web", "Running")
    stack.plan(2)
    stack.state("web", "Removed")
    assert stack.runtime.stopped == ["web"]


def test_a_plan_for_another_agent_on_its_key_creates_nothing(stack: Stack) -> None:
    stack.planner.put("ank/plan/robot", AgentPlan(agent="other", epoch=1, generation=1, workloads=[web()]))
    stack.plan(1)  # a plan of its own after it: once taken, the other one was refused
    wait_for(lambda: stack.shell.state.generation == 1, 5, "the agent's own plan applied")
    assert stack.runtime.created == []


def test_a_restart_waits_for_its_backoff_on_the_agents_clock(stack: Stack) -> None:
    always = PlannedWorkload(
        name="web", instance="i1", workload=Workload(runtime="fake", agent="robot", restart_policy="ALWAYS")
    )
    stack.plan(1, always)
    stack.state("web", "Running")
    stack.runtime.exit("web", "i1", 1)  # the first restart is at once
    wait_for(lambda: len(stack.runtime.created) == 2, 5, "the first restart")
    stack.states.wait(lambda items: _count(items, "Running") == 2, 5, "running again")
    stack.runtime.exit("web", "i1", 1)  # the second one waits the initial backoff (0.1 s)
    stack.state("web", "Failed")
    on_loop_idle(stack.shell.loop)
    assert len(stack.runtime.created) == 2  # the agent's clock has not moved
    stack.clock.advance(1.0, stack.shell.loop)
    wait_for(lambda: len(stack.runtime.created) == 3, 5, "the restart after the backoff")


def _count(items: list[tuple[str, object]], state: str) -> int:
    return sum(1 for _, m in items if isinstance(m, WorkloadState) and m.execution_state.state == state)


class FailingStops(FakeRuntime):
    """A runtime whose stops fail the first `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("podman: connection refused")
        super().stop(handle, grace_s)


def test_a_failed_stop_is_alerted_and_retried_after_the_backoff(tmp_path: Path) -> None:
    runtime = FailingStops(failures=1)
    with memory_hub() as hub, started(make_stack(hub, tmp_path / "run", runtime)) as stack:
        events = Collector()
        stack.planner.subscribe("ank/events/**", Event, events)
        stack.plan(1, web())
        stack.state("web", "Running")
        stack.plan(2)
        events.wait(lambda items: any(isinstance(e, Event) and e.kind == "stop-failed" for _, e in items), 5, "event")
        on_loop_idle(stack.shell.loop)
        assert runtime.stopped == []  # not retried before the backoff on the agent's clock
        stack.clock.advance(1.0, stack.shell.loop)
        stack.state("web", "Removed")
        assert runtime.stopped == ["web"]


def test_stop_all_stops_through_the_core_and_leaves_no_record(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    with memory_hub() as hub:
        stack = make_stack(hub, tmp_path / "run", runtime)
        records = tmp_path / "run" / "records"
        try:
            with running_loop(stack.shell.loop):
                stack.shell.start()
                stack.plan(1, web())
                stack.state("web", "Running")
                wait_for(lambda: (records / "web.json").exists(), 5, "the instance record")
            stack.shell.stop_all()  # the loop has stopped: the shell awaits the exits, bounded
            assert runtime.stopped == ["web"]
            assert list(records.glob("*.json")) == []
            assert stack.shell.state.slots == {} and stack.shell.state.exiting
        finally:
            stack.shell.close()


class Survivor(FakeRuntime):
    """A runtime that finds the recorded instance of "web" still running."""

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        return [r for r in records if r.workload == "web"]


def test_a_restarted_agent_reclaims_what_runs_and_forgets_what_is_gone(tmp_path: Path) -> None:
    records = tmp_path / "run" / "records"
    records.mkdir(parents=True)
    for name in ("web", "gone"):
        record = InstanceRecord(RunHandle(name, "i1", "fake", id="x"), web() if name == "web" else None)
        (records / f"{name}.json").write_bytes(msgspec.json.encode(record))
    (records / "junk.json").write_text("{not json")
    runtime = Survivor()
    with memory_hub() as hub, started(make_stack(hub, tmp_path / "run", runtime)) as stack:
        stack.state("web", "Running")
        assert sorted(p.name for p in records.glob("*.json")) == ["web.json"]
        assert list(stack.shell.workers["fake"].handles) == ["web"] and runtime.created == []
