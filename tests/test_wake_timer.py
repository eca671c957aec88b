"""The shells' one wake-up timer (services.bus.timers.WakeTimer): the core is
woken once, at the earliest time it asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from services.bus.loop import EventLoop
from services.bus.timers import Timers, WakeTimer
from tests.memory_helpers import ManualClock, on_loop_idle, running_loop


class RecordedTimers:
    """Timers whose call_later calls the test fires by hand."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.later.append((delay, fn, args))

    def fire(self, index: int) -> None:
        _delay, fn, args = self.later[index]
        fn(*args)


def _timer(now_ms: int = 10_000, slack_s: float = 0.0) -> tuple[RecordedTimers, WakeTimer, list[int]]:
    timers = RecordedTimers()
    fired: list[int] = []
    wake = WakeTimer(timers, lambda: fired.append(len(fired)), lambda: now_ms, slack_s=slack_s)
    return timers, wake, fired


def test_the_loop_and_the_web_fanout_are_timers() -> None:
    from services.dashboard.web import Fanout

    loops: list[Timers] = [EventLoop(), Fanout(), RecordedTimers()]  # checked by mypy
    assert len(loops) == 3


def test_a_later_time_is_not_armed_while_an_earlier_one_is() -> None:
    timers, wake, fired = _timer()
    wake.arm(11_000)
    wake.arm(12_000)
    wake.arm(11_000)
    wake.arm(None)
    assert [delay for delay, _, _ in timers.later] == [1.0] and wake.due_ms == 11_000
    timers.fire(0)
    assert fired == [0] and wake.due_ms is None


def test_an_earlier_time_supersedes_and_the_stale_wake_up_is_ignored() -> None:
    timers, wake, fired = _timer()
    wake.arm(12_000)
    wake.arm(10_500)
    assert [delay for delay, _, _ in timers.later] == [2.0, 0.5]
    timers.fire(1)
    timers.fire(0)  # the superseded one still fires on the loop: the core is not woken for it
    assert fired == [0]


def test_a_time_already_past_wakes_at_once_plus_the_slack() -> None:
    timers, wake, _fired = _timer(slack_s=0.001)
    wake.arm(9_000)
    assert timers.later[0][0] == 0.001


def test_on_the_event_loop_it_fires_when_the_loops_clock_reaches_the_time() -> None:
    clock = ManualClock()
    loop = EventLoop(clock)
    fired: list[float] = []
    wake = WakeTimer(loop, lambda: fired.append(clock.monotonic()), lambda: int(clock.monotonic() * 1000))
    with running_loop(loop):
        due = int(clock.monotonic() * 1000) + 1500
        loop.post(wake.arm, due)
        on_loop_idle(loop)
        clock.advance(1.4, loop)
        on_loop_idle(loop)
        assert fired == []
        clock.advance(0.1, loop)
        on_loop_idle(loop)
        on_loop_idle(loop)
        assert fired == [pytest.approx(due / 1000)]
