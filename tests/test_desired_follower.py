"""The one desired-state follower (services.bus.follow.DesiredStateFollower)
on the in-memory bus with the loop's clock in the test's hands: when it asks
`ank/cmd/state`, what it delivers, and what it survives."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import pytest

from schemas.manifest import Manifest, Workload
from schemas.messages import CompleteState, WorkloadState
from schemas.state import RUNNING
from services.bus.follow import DesiredStateFollower
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus, MemoryHub
from services.dashboard.shell import DashboardShell
from services.dashboard.web import Fanout
from tests.helpers import wait_for
from tests.memory_helpers import ManualClock, advance_idle, memory_hub, on_loop_idle, running_loop

WORKLOAD = Workload(runtime="process", agent="robot", runtime_config="command: sleep\n")


@dataclass
class FakePlanner:
    """Answers ank/cmd/state: with `reply()` (None: no reply at all), after `gate` opens."""

    bus: MemoryBus
    workloads: dict[str, Workload] = field(default_factory=lambda: {"web": WORKLOAD})
    seq: int = 0  # 0: stamped by the bus
    garbage: bool = False
    silent: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    asked: int = 0

    def __post_init__(self) -> None:
        self.gate.set()
        self.bus.queryable("ank/cmd/state", self.answer, exact=True)

    def answer(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        self.asked += 1
        self.gate.wait(10)
        if self.silent:
            return []
        if self.garbage:
            return [(key, b'{"desired": "not a manifest"}'), (key, b"\xff not json")]
        state = CompleteState(desired=Manifest(api_version="v1", workloads=dict(self.workloads)))
        if self.seq:
            return [(key, msgspec.json.encode(msgspec.structs.replace(state, sender="planner", seq=self.seq)))]
        return [(key, self.bus.encode(state))]


@dataclass
class Stack:
    hub: MemoryHub
    loop: EventLoop
    clock: ManualClock
    planner: FakePlanner
    delivered: list[CompleteState]
    threads: list[str]
    make: Callable[..., DesiredStateFollower]

    def deliveries(self, n: int) -> list[CompleteState]:
        wait_for(lambda: len(self.delivered) >= n, 5, f"{n} deliveries")
        on_loop_idle(self.loop)
        return self.delivered

    def asked(self, n: int, follower: DesiredStateFollower) -> None:
        """The planner asked `n` times, and the follower done with the answer."""
        wait_for(lambda: self.planner.asked >= n, 5, f"{n} queries")
        wait_for(lambda: follower.idle, 5, "the follower to have nothing more to ask")
        on_loop_idle(self.loop)

    def advance(self, seconds: float) -> None:
        advance_idle(self.clock, self.loop, seconds)


@pytest.fixture
def stack() -> Iterator[Stack]:
    clock = ManualClock()
    followers: list[DesiredStateFollower] = []
    with memory_hub() as hub:
        planner = FakePlanner(MemoryBus(hub, "planner"))
        loop = EventLoop(clock)
        delivered: list[CompleteState] = []
        threads: list[str] = []

        def on_state(complete: CompleteState) -> None:
            threads.append(threading.current_thread().name)
            delivered.append(complete)

        def make(**options: object) -> DesiredStateFollower:
            options = {"clock": clock, "coalesce_s": 0.0, **options}
            follower = DesiredStateFollower(MemoryBus(hub, "follower"), loop, on_state, **options)  # type: ignore[arg-type]
            followers.append(follower)
            follower.start()
            return follower

        with running_loop(loop):
            try:
                yield Stack(hub, loop, clock, planner, delivered, threads, make)
            finally:
                planner.gate.set()
                for follower in followers:
                    follower.stop()


def test_the_desired_state_is_asked_at_start_and_delivered_on_the_loop_thread(stack: Stack) -> None:
    stack.make()
    (complete,) = stack.deliveries(1)
    assert list(complete.desired.workloads) == ["web"]
    assert stack.threads == ["shell-loop"]


def test_a_put_on_desired_is_followed_by_a_query_after_the_settle_delay(stack: Stack) -> None:
    stack.make(settle_s=0.3)
    stack.deliveries(1)
    stack.planner.workloads["db"] = WORKLOAD
    MemoryBus(stack.hub, "cli").put("ank/desired", b"apiVersion: v0.1\n")
    stack.advance(0.29)
    assert stack.planner.asked == 1  # the planner is given time to apply the put
    stack.advance(0.02)
    assert set(stack.deliveries(2)[1].desired.workloads) == {"web", "db"}


def test_triggers_while_a_query_is_in_flight_become_one_query(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ank.bus.follow")
    stack.planner.gate.clear()
    follower = stack.make(coalesce_s=0.05)
    wait_for(lambda: stack.planner.asked == 1, 5, "the start query")
    for reason in ("a", "b", "a", "c"):
        follower.refresh(reason)
    MemoryBus(stack.hub, "cli").put("ank/desired", b"apiVersion: v0.1\n")
    stack.advance(0.3)  # the put's settle delay passes while the query is still in flight
    stack.planner.gate.set()
    stack.deliveries(2)
    wait_for(lambda: follower.idle, 5, "the follower to have nothing more to ask")
    on_loop_idle(stack.loop)
    assert stack.planner.asked == 2 and len(stack.delivered) == 2
    assert "desired state read (a; b; c; ank/desired changed): 1 workloads" in caplog.text


def test_the_desired_state_is_asked_again_after_refresh_s_without_a_query(stack: Stack) -> None:
    follower = stack.make(refresh_s=5.0)
    stack.deliveries(1)
    stack.advance(3.0)
    follower.refresh("asked")  # a query now postpones the periodic one
    stack.deliveries(2)
    stack.advance(2.5)
    assert stack.planner.asked == 2
    stack.advance(2.5)
    stack.deliveries(3)
    stack.advance(5.0)
    stack.deliveries(4)


def test_without_a_planner_it_asks_again_and_says_so_once(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ank.bus.follow")
    stack.planner.silent = True
    follower = stack.make(retry_s=1.0)
    stack.asked(1, follower)
    stack.advance(1.0)
    stack.asked(2, follower)
    stack.advance(1.0)
    stack.asked(3, follower)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["no reply to ank/cmd/state (start); is the planner up?; asking again in 1 s"]
    assert stack.delivered == []
    stack.planner.silent = False
    stack.advance(1.0)
    stack.deliveries(1)
    assert "ank/cmd/state answers again" in caplog.text


def test_a_planner_that_did_not_answer_is_not_asked_again_before_the_retry(stack: Stack) -> None:
    """Triggers while the planner is silent (an overloaded one times out)
    wait for the retry and go with it: one query, not one per trigger."""
    stack.planner.silent = True
    follower = stack.make(retry_s=1.0)
    stack.asked(1, follower)
    for i in range(5):
        follower.refresh(f"trigger {i}")
    stack.advance(0.5)  # (returns once the loop is idle)
    assert stack.planner.asked == 1 and not follower.idle  # held: wanted, not asked before the retry
    stack.planner.silent = False
    stack.advance(0.5)  # the retry: the triggers' query, once
    stack.deliveries(1)
    assert stack.planner.asked == 2


def test_a_state_older_than_the_last_delivered_is_ignored(stack: Stack) -> None:
    stack.planner.seq = 100
    follower = stack.make()
    stack.deliveries(1)
    stack.planner.seq, stack.planner.workloads = 50, {}
    follower.refresh("older")
    stack.asked(2, follower)
    stack.planner.seq = 200
    follower.refresh("newer")
    assert [c.seq for c in stack.deliveries(2)] == [100, 200]


def test_garbage_on_the_state_query_changes_nothing_and_the_follower_goes_on(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.planner.garbage = True
    follower = stack.make(retry_s=1.0)
    stack.asked(1, follower)
    assert stack.delivered == [] and "dropped a part on ank/cmd/state" in caplog.text
    stack.planner.garbage = False
    stack.advance(1.0)  # retried as if no planner had answered
    stack.deliveries(1)
    assert follower.running


def test_a_failing_handler_does_not_stop_the_following(stack: Stack) -> None:
    calls: list[CompleteState] = []

    def fails_once(complete: CompleteState) -> None:
        calls.append(complete)
        if len(calls) == 1:
            raise RuntimeError("a bug in the shell")

    follower = DesiredStateFollower(
        MemoryBus(stack.hub, "follower"), stack.loop, fails_once, clock=stack.clock, coalesce_s=0
    )
    follower.start()
    try:
        wait_for(lambda: len(calls) == 1, 5, "the first delivery")
        follower.refresh("again")
        wait_for(lambda: len(calls) == 2, 5, "the second delivery")
    finally:
        follower.stop()


def test_min_gap_skips_a_refresh_asked_too_soon_after_a_query(stack: Stack) -> None:
    follower = stack.make()
    stack.deliveries(1)
    follower.refresh("unknown workload", min_gap_s=1.0)
    on_loop_idle(stack.loop)
    assert stack.planner.asked == 1
    stack.advance(1.0)
    follower.refresh("unknown workload", min_gap_s=1.0)
    stack.deliveries(2)


def test_the_agents_states_are_asked_with_the_first_query_only(stack: Stack) -> None:
    robot = MemoryBus(stack.hub, "agent/robot")
    asked: list[str] = []
    running = WorkloadState(workload="web", agent="robot", execution_state=RUNNING, instance="i1")

    def states(key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        asked.append(key)
        return [("ank/state/robot/web", robot.encode(running))]

    robot.queryable("ank/state/robot/*", states)
    follower = stack.make(states_at_start="ank/state/**")
    (first,) = stack.deliveries(1)
    assert [(s.workload, s.agent) for s in first.workload_states] == [("web", "robot")]
    follower.refresh("again")
    assert stack.deliveries(2)[1].workload_states == [] and len(asked) == 1


def test_stop_returns_within_its_bound_while_a_query_hangs(stack: Stack) -> None:
    stack.planner.gate.clear()  # the planner hangs
    follower = stack.make(timeout_s=5.0)
    wait_for(lambda: stack.planner.asked == 1, 5, "the start query")
    began = time.monotonic()
    follower.stop(wait_s=0.3)
    assert time.monotonic() - began < 2.0
    follower.refresh("after stop")
    stack.planner.gate.set()
    wait_for(lambda: not follower.running, 10, "the query thread to end")
    on_loop_idle(stack.loop)
    assert stack.delivered == [] and stack.planner.asked == 1


def test_the_dashboard_follows_the_desired_state_on_its_web_loop(stack: Stack) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="web-loop", daemon=True)
    thread.start()
    fanout = Fanout()
    fanout.bind(loop)
    shell = DashboardShell(MemoryBus(stack.hub, "dashboard"), fanout)
    follower = shell.follow_desired(0)
    try:
        wait_for(
            lambda: shell.view.desired is not None and "web" in shell.view.desired.workloads,
            5,
            "the desired workload in the view",
        )
    finally:
        follower.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
