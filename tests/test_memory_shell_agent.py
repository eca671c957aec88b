"""The agent's shell (services.agent.shell.AgentShell) on the in-memory bus
with a fake runtime and an injected clock: its wiring, without a router or a
real workload. The real-Zenoh tests (tests/test_agent_shell.py,
tests/test_system.py) remain the integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.manifest import Workload
from schemas.messages import AgentPlan, AgentStatus, PlannedWorkload, WorkloadState, WorkloadUsage
from services.agent.runtimes.base import Notify, RunHandle, Runtime, RuntimeEvent, StartSpec
from services.agent.shell import AgentOptions, AgentShell
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


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    clock = ManualClock()
    runtime = FakeRuntime()
    _: Runtime = runtime
    with memory_hub() as hub:
        planner = MemoryBus(hub, "planner")
        states = Collector()
        planner.subscribe("ank/state/robot/**", WorkloadState, states)
        loop = EventLoop(clock)
        options = AgentOptions(name="robot", run_dir=str(tmp_path / "run"), status_period_s=3600)
        shell = AgentShell(options, MemoryBus(hub, "agent/robot"), loop, {"fake": runtime}, clock)
        with running_loop(loop):
            shell.start()
            try:
                yield Stack(hub, shell, runtime, planner, states, clock)
            finally:
                shell.close()


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
