"""`ank-scheduler` (native mode) as a real process on a real Zenoh router.
The planner and the agents are faked from the test: a queryable answering
ank/cmd/state, liveliness tokens, AgentStatus and EnergyReport puts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import pytest

from schemas.manifest import Manifest, Scheduling, Workload
from schemas.messages import AgentStatus, Binding, CompleteState, EnergyReport, Event, WorkloadState
from schemas.state import NOT_SCHEDULED
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, stop_process


@dataclass
class FakePlanner:
    bus: Bus
    workloads: dict[str, Workload] = field(default_factory=dict)
    queries: int = 0

    def answer(self, key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        self.queries += 1
        state = CompleteState(desired=Manifest(api_version="v1", workloads=dict(self.workloads)))
        return [("ank/cmd/state", self.bus.encode(state))]

    def add(self, name: str, workload: Workload) -> None:
        """A new NotScheduled workload, announced as the planner does."""
        self.workloads[name] = workload
        ws = WorkloadState(workload=name, agent="", execution_state=NOT_SCHEDULED)
        self.bus.put(f"ank/state/~/{name}", ws)


@dataclass
class Harness:
    planner: FakePlanner
    bindings: Collector
    events: Collector
    agents: dict[str, Bus]
    make_bus: Callable[[str], Bus]

    def agent(self, name: str, wh: float, arch: str = "arm64", **tags: str) -> Bus:
        bus = self.make_bus(f"agent-{name}")
        bus.liveliness_token(f"ank/agents/{name}")
        status = AgentStatus(agent=name, arch=arch, os="linux", tags={"name": name, **tags})
        bus.put(f"ank/agents/{name}/status", status)
        bus.put(f"ank/energy/{name}", EnergyReport(node=name, energy_wh=wh, time_ms=time.time_ns() // 1_000_000))
        self.agents[name] = bus
        return bus

    def known(self, *names: str) -> None:
        """Waits until the scheduler knows these agents (alive, status, energy):
        a probe workload pinned to each (by its `name` tag, no energy cost)
        gets bound only then. Agents publish from their own sessions, so
        their arrival order at the scheduler is not the order of the test."""
        for name in names:
            hints = Scheduling(selector={"name": name}, energy_cost_wh=0.0)
            self.planner.add(f"probe-{name}", Workload(runtime="process", scheduling=hints))
        for name in names:
            assert self.binding_of(f"probe-{name}").agent == name

    def binding_of(self, workload: str, *, not_to: str = "", timeout: float = 10.0) -> Binding:
        def found(items: list[tuple[str, object]]) -> Binding | None:
            for key, msg in reversed(items):
                if key == f"ank/bind/{workload}" and isinstance(msg, Binding) and msg.agent != not_to:
                    return msg
            return None

        return self.bindings.wait(found, timeout, f"a binding of {workload}")


def scheduler_process(router: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.scheduler.shell", "--resync-s", "2", *args],
        cwd=ROOT,
        env=child_env(router),
    )


@pytest.fixture
def harness(router: str, make_bus: Callable[[str], Bus]) -> Iterator[Harness]:
    planner = FakePlanner(make_bus("planner"))
    planner.bus.queryable("ank/cmd/state", planner.answer)
    watcher = make_bus("watcher")
    bindings, events = Collector(), Collector()
    watcher.subscribe("ank/bind/**", Binding, bindings)
    watcher.subscribe("ank/events/**", Event, events)
    proc = scheduler_process(router)
    try:
        deadline = time.monotonic() + 15
        while planner.queries == 0:  # the scheduler reads the desired state first thing
            assert proc.poll() is None, "ank-scheduler exited"
            assert time.monotonic() < deadline, "ank-scheduler never queried ank/cmd/state"
            time.sleep(0.02)
        yield Harness(planner, bindings, events, {}, make_bus)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, f"ank-scheduler exited with {proc.returncode} on SIGTERM"


def test_not_scheduled_workload_gets_a_binding_to_the_richest_matching_agent(harness: Harness) -> None:
    harness.agent("bot-a", 40)
    harness.agent("bot-b", 95, arch="amd64")  # richest, but the wrong arch
    harness.agent("bot-c", 70)
    harness.known("bot-a", "bot-b", "bot-c")
    harness.planner.add("nav", Workload(runtime="process", agent="", scheduling=Scheduling(selector={"arch": "arm64"})))
    binding = harness.binding_of("nav")
    assert binding.agent == "bot-c"
    assert binding.policy == "MALE" and binding.sender == "scheduler" and "70.0 Wh" in binding.reason
    harness.events.wait(
        lambda items: any(isinstance(m, Event) and m.kind == "Scheduled" and m.subject == "nav" for _, m in items),
        what="a Scheduled event",
    )


def test_nothing_fits_publishes_failed_scheduling_with_the_reason(harness: Harness) -> None:
    harness.agent("bot-low", 3)
    harness.known("bot-low")
    harness.planner.add("heavy", Workload(runtime="process", scheduling=Scheduling(min_energy_wh=50.0)))

    def failed(items: list[tuple[str, object]]) -> Event | None:
        for key, msg in items:
            if key == "ank/events/FailedScheduling" and isinstance(msg, Event) and msg.subject == "heavy":
                return msg
        return None

    event = harness.events.wait(failed, what="FailedScheduling for heavy")
    assert "bot-low: energy below reserve" in event.message and event.severity == "warning"
    assert not [m for _, m in harness.bindings.items if isinstance(m, Binding) and m.workload == "heavy"]
    # energy arrives: placed at once, not after the backoff
    harness.agents["bot-low"].put(
        "ank/energy/bot-low", EnergyReport(node="bot-low", energy_wh=80.0, time_ms=time.time_ns() // 1_000_000)
    )
    assert harness.binding_of("heavy", timeout=3.0).agent == "bot-low"


def test_agent_lost_re_binds_its_workload_to_another_agent(harness: Harness) -> None:
    rich = harness.agent("bot-rich", 90)
    harness.agent("bot-spare", 50)
    harness.known("bot-rich", "bot-spare")
    harness.planner.add("cam", Workload(runtime="process"))
    assert harness.binding_of("cam").agent == "bot-rich"
    rich.close()  # its liveliness token vanishes
    moved = harness.binding_of("cam", not_to="bot-rich", timeout=5.0)
    assert moved.agent == "bot-spare" and "agent bot-rich lost" in moved.reason


def test_bindings_are_answered_to_late_joiners(harness: Harness, make_bus: Callable[[str], Bus]) -> None:
    harness.agent("bot-q", 60)
    harness.planner.add("late", Workload(runtime="process"))
    harness.binding_of("late")
    replies = make_bus("late-planner").get_decoded("ank/bind/*", Binding)
    assert [(b.workload, b.agent) for b in replies] == [("late", "bot-q")]


def test_garbage_on_the_bus_changes_nothing_and_does_not_crash(harness: Harness) -> None:
    noise = harness.make_bus("noise")
    for key in ("ank/energy/bot-x", "ank/agents/bot-x/status", "ank/state/~/junk", "ank/desired"):
        noise.put(key, b"\xff not json {")
    noise.put("ank/energy/bot-y", msgspec.json.encode({"node": "bot-y", "energyWh": "lots"}))
    harness.agent("bot-ok", 30)
    harness.planner.add("after-noise", Workload(runtime="process"))
    assert harness.binding_of("after-noise").agent == "bot-ok"


def test_bad_configuration_exits_with_a_clear_message(router: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.scheduler.shell", "--influx"],
        cwd=ROOT,
        env={**child_env(router), "INFLUX_URL": ""},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"INFLUX_URL is not set" in proc.stderr
