"""The native scheduler's shell (services.scheduler.shell.NativeShell) on the
in-memory bus: its wiring, without a router. The real-Zenoh tests
(tests/test_scheduler_shell.py) remain the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from schemas.manifest import Manifest, Scheduling, Workload
from schemas.messages import AgentStatus, Binding, CompleteState, EnergyReport, WorkloadState
from schemas.state import NOT_SCHEDULED
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus
from services.scheduler.core import NativeState
from services.scheduler.shell import NativeShell
from tests.helpers import Collector
from tests.memory_helpers import ManualClock, memory_hub, running_loop


@dataclass
class FakePlanner:
    """Answers ank/cmd/state with its workloads, as the planner does."""

    bus: MemoryBus
    workloads: dict[str, Workload] = field(default_factory=dict)

    def answer(self, key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        state = CompleteState(desired=Manifest(api_version="v1", workloads=dict(self.workloads)))
        return [(key, self.bus.encode(state))]

    def add(self, name: str, workload: Workload) -> None:
        self.workloads[name] = workload
        self.bus.put(f"ank/state/~/{name}", WorkloadState(workload=name, agent="", execution_state=NOT_SCHEDULED))


@dataclass
class Stack:
    planner: FakePlanner
    agents: MemoryBus
    bindings: Collector
    clock: ManualClock

    def agent(self, name: str, wh: float, *, time_ms: int | None = None) -> None:
        """An agent: its token, its status, its energy (measured now on the scheduler's clock)."""
        self.agents.liveliness_token(f"ank/agents/{name}")
        self.agents.put(f"ank/agents/{name}/status", AgentStatus(agent=name, arch="arm64", os="linux"))
        measured = self.clock.wall_ms() if time_ms is None else time_ms
        self.agents.put(f"ank/energy/{name}", EnergyReport(node=name, energy_wh=wh, time_ms=measured))

    def binding_of(self, workload: str) -> Binding:
        def found(items: list[tuple[str, object]]) -> Binding | None:
            for key, msg in reversed(items):
                if key == f"ank/bind/{workload}" and isinstance(msg, Binding):
                    return msg
            return None

        return self.bindings.wait(found, 5, f"a binding of {workload}")


@pytest.fixture
def stack() -> Iterator[Stack]:
    clock = ManualClock()
    with memory_hub() as hub:
        planner = FakePlanner(MemoryBus(hub, "planner"))
        planner.bus.queryable("ank/cmd/state", planner.answer, exact=True)
        bindings = Collector()
        planner.bus.subscribe("ank/bind/*", Binding, bindings)
        loop = EventLoop(clock)
        shell = NativeShell(MemoryBus(hub, "scheduler"), loop, NativeState(), clock=clock, resync_s=60)
        with running_loop(loop):
            shell.start()
            try:
                yield Stack(planner, MemoryBus(hub, "agents"), bindings, clock)
            finally:
                shell.stop()


def movable(**selector: str) -> Workload:
    return Workload(runtime="process", scheduling=Scheduling(selector=selector, energy_cost_wh=0.5))


def test_a_workload_without_agent_is_bound_to_the_agent_with_energy(stack: Stack) -> None:
    stack.agent("low", 5.0)
    stack.agent("high", 80.0)
    stack.planner.add("job", movable())
    binding = stack.binding_of("job")
    assert binding.agent == "high" and binding.sender == "scheduler"


def test_the_bindings_are_answered_to_a_restarted_planner(stack: Stack) -> None:
    stack.agent("only", 50.0)
    stack.planner.add("job", movable())
    stack.binding_of("job")
    (key, _payload), *rest = stack.planner.bus.get("ank/bind/*", timeout=5)
    assert key == "ank/bind/job" and rest == []


def test_energy_measured_long_ago_on_the_schedulers_clock_is_not_used(stack: Stack) -> None:
    stack.agent("stale", 90.0, time_ms=stack.clock.wall_ms() - 3_600_000)  # an hour old
    stack.agent("fresh", 10.0)
    stack.planner.add("job", movable())
    assert stack.binding_of("job").agent == "fresh"


def test_an_energy_report_naming_another_node_than_its_key_is_ignored(stack: Stack) -> None:
    stack.agent("low", 5.0)
    stack.agent("high", 10.0)
    # on high's key, a report claiming low is full: taken, it would make low the best
    stack.agents.put("ank/energy/high", EnergyReport(node="low", energy_wh=99.0, time_ms=stack.clock.wall_ms()))
    stack.planner.add("job", movable())
    assert stack.binding_of("job").agent == "high"
