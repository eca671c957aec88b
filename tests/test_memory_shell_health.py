"""The health-watcher's shell (services.health_watcher.shell.HealthWatcher)
on the in-memory bus with an injected clock: its wiring, without a router.
The real-Zenoh tests (tests/test_health_watcher.py, tests/test_health_e2e.py)
remain the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from schemas.manifest import HealthCheck, Manifest, Workload
from schemas.messages import CompleteState, HealthReport, WorkloadState
from schemas.state import RUNNING
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus, MemoryHub
from services.health_watcher.probes import KeyFreshness, ProbeContext
from services.health_watcher.shell import HealthWatcher
from tests.helpers import Collector, wait_for
from tests.memory_helpers import ManualClock, advance_idle, memory_hub, running_loop

CHECK = HealthCheck(zenoh="robot/heartbeat", max_age_ms=5000, interval_ms=1000, retries=1, start_period_ms=0)
WORKLOAD = Workload(runtime="process", agent="robot", runtime_config="command: sleep\n", health_check=CHECK)


@dataclass
class Stack:
    hub: MemoryHub
    watcher: HealthWatcher
    loop: EventLoop
    robot: MemoryBus
    reports: Collector
    clock: ManualClock

    def report(self, status: str) -> HealthReport:
        def found(items: list[tuple[str, object]]) -> HealthReport | None:
            for key, msg in reversed(items):
                if key == "ank/health/robot/web" and isinstance(msg, HealthReport) and msg.status == status:
                    return msg
            return None

        return self.reports.wait(found, 5, f"a {status} report")

    def tick(self, seconds: float) -> None:
        """The watcher's clock moves on; its due probes run."""
        advance_idle(self.clock, self.loop, seconds)


@pytest.fixture
def stack() -> Iterator[Stack]:
    clock = ManualClock()
    with memory_hub() as hub:
        planner = MemoryBus(hub, "planner")
        running = WorkloadState(workload="web", agent="robot", execution_state=RUNNING, instance="i1")
        desired = CompleteState(
            desired=Manifest(api_version="v1", workloads={"web": WORKLOAD}), workload_states=[running]
        )
        planner.queryable("ank/cmd/state", lambda key, p, q: [(key, planner.encode(desired))], exact=True)
        reports = Collector()
        planner.subscribe("ank/health/**", HealthReport, reports)
        loop = EventLoop(clock)
        context = ProbeContext(freshness=KeyFreshness(clock.monotonic))
        watcher = HealthWatcher(MemoryBus(hub, "health-watcher"), loop, context=context, clock=clock, refresh_s=3600)
        with running_loop(loop):
            watcher.start()
            # the desired state read (on the watcher's query thread): it follows the check's key
            wait_for(lambda: "robot/heartbeat" in hub.subscriptions(), 5, "the watcher following robot/heartbeat")
            try:
                yield Stack(hub, watcher, loop, MemoryBus(hub, "robot"), reports, clock)
            finally:
                watcher.close()


def test_a_put_on_the_checked_key_makes_the_workload_healthy(stack: Stack) -> None:
    stack.robot.put("robot/heartbeat", b"{}")
    stack.tick(1.0)  # the first probe is due one interval after Running
    report = stack.report("healthy")
    assert report.probe == "zenoh" and report.sender == "health-watcher"
    assert report.time_ms == stack.clock.wall_ms()  # stamped on the injected clock


def test_no_put_on_the_checked_key_makes_it_unhealthy_and_the_verdict_is_queryable(stack: Stack) -> None:
    stack.tick(1.0)
    report = stack.report("unhealthy")
    assert "no update yet" in report.last_error
    (key, _payload), *rest = stack.robot.get("ank/health/robot/*", timeout=5)
    assert key == "ank/health/robot/web" and rest == []


def test_a_stale_key_on_the_watchers_clock_is_unhealthy(stack: Stack) -> None:
    stack.robot.put("robot/heartbeat", b"{}")
    stack.tick(1.0)
    stack.report("healthy")
    stack.tick(10.0)  # ten seconds of the watcher's clock without a put: older than maxAgeMs
    assert "ago (max 5000 ms)" in stack.report("unhealthy").last_error
