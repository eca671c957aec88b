"""The dashboard's shell (services.dashboard.shell.DashboardShell) on the
in-memory bus, its web loop on a thread and an injected clock: its wiring,
without a router or a browser. tests/test_dashboard.py (real Zenoh, the HTTP
API, WebSockets) and tests/test_dashboard_browser.py remain the integration
tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from schemas import keys
from schemas.manifest import Manifest, Workload
from schemas.messages import CompleteState, Event, WorkloadState
from schemas.state import RUNNING
from services.bus.follow import DesiredStateFollower
from services.bus.memory import MemoryBus, MemoryHub
from services.dashboard import core
from services.dashboard.shell import DashboardShell
from services.dashboard.web import Fanout, Outgoing
from tests.helpers import wait_for
from tests.memory_helpers import ManualClock, memory_hub

WEB = Workload(runtime="process", agent="robot", runtime_config="command: sleep\n")


class RecordingFanout(Fanout):
    """The real Fanout, keeping what it publishes to the pages."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    def publish(self, message: Outgoing) -> None:
        self.sent.append(msgspec.json.decode(message))
        super().publish(message)

    def updates(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.sent if m["type"] == kind]


@dataclass
class Stack:
    hub: MemoryHub
    shell: DashboardShell
    fanout: RecordingFanout
    robot: MemoryBus
    clock: ManualClock

    def rows(self) -> list[dict[str, Any]]:
        return core.workload_rows(self.shell.view)

    def row(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["name"] == name), None)


@pytest.fixture
def stack() -> Iterator[Stack]:
    clock = ManualClock()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="web-loop", daemon=True)
    thread.start()
    with memory_hub() as hub:
        planner = MemoryBus(hub, "planner")
        desired = CompleteState(desired=Manifest(api_version="v1", workloads={"web": WEB}))
        planner.queryable(keys.CMD_STATE, lambda key, p, q: [(key, planner.encode(desired))], exact=True)
        fanout = RecordingFanout()
        fanout.bind(loop)
        shell = DashboardShell(MemoryBus(hub, "dashboard"), fanout, clock=clock)
        shell.subscribe()  # before the first query, as the web app's start-up does
        follower: DesiredStateFollower = shell.follow_desired(0)
        try:
            wait_for(lambda: shell.view.desired is not None, 5, "the desired state in the view")
            yield Stack(hub, shell, fanout, MemoryBus(hub, "robot"), clock)
        finally:
            follower.stop()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def test_a_desired_workload_shows_before_its_state_and_then_with_it(stack: Stack) -> None:
    assert stack.row("web") == {**(stack.row("web") or {}), "state": "Pending", "substate": "Initial"}
    running = WorkloadState(workload="web", agent="robot", execution_state=RUNNING, instance="i1", time_ms=1)
    stack.robot.put(keys.state_key("robot", "web"), running)
    wait_for(lambda: (stack.row("web") or {}).get("state") == "Running", 5, "web Running in the view")
    pushed = wait_for(lambda: stack.fanout.updates("workload"), 5, "a workload update pushed to the pages")
    assert pushed[-1]["name"] == "web" and pushed[-1]["state"] == "Running"


def test_an_agents_token_makes_it_alive_and_its_end_lost(stack: Stack) -> None:
    def alive() -> bool | None:
        agent = stack.shell.view.agents.get("robot")
        return None if agent is None else agent.alive

    token = stack.robot.liveliness_token(keys.agent_token_key("robot"))
    wait_for(lambda: alive() is True, 5, "the robot alive in the view")
    token.undeclare()
    wait_for(lambda: alive() is False, 5, "the robot lost in the view")


def test_garbage_and_a_foreign_agents_state_change_nothing_and_the_shell_goes_on(stack: Stack) -> None:
    before = stack.rows()
    stack.robot.session.put(keys.state_key("robot", "web"), b"\xff not json")  # raw bytes, past the Bus's encoder
    spoofed = WorkloadState(workload="web", agent="other", execution_state=RUNNING, instance="i9", time_ms=2)
    stack.robot.put(keys.state_key("robot", "web"), spoofed)  # payload names another agent than its key
    event = Event(kind="note", message="after the garbage")
    stack.robot.put(keys.event_key("note"), event)
    wait_for(lambda: stack.fanout.updates("event"), 5, "the event after the garbage")
    assert stack.rows() == before


def test_the_view_is_stepped_on_the_injected_clock(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_step = core.step

    def spy(view: core.DashboardView, event: core.ViewEvent, now_ms: int) -> core.Step:
        seen.append(now_ms)
        return real_step(view, event, now_ms)

    monkeypatch.setattr(core, "step", spy)
    stack.clock.advance(60.0)  # a clock a minute on: the shell's, not the machine's
    stack.robot.put(keys.event_key("note"), Event(kind="note", message="x"))
    wait_for(lambda: seen, 5, "a step")
    assert seen == [stack.clock.wall_ms()]
