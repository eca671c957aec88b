"""Helpers of the in-memory shell tests: a clock the test moves, an event
loop running on a thread, a hub whose sessions are closed at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.bus.loop import EventLoop
from services.bus.memory import MemoryHub


class ManualClock:
    """A ank_common.clock.Clock that moves only when the test moves it."""

    def __init__(self, mono: float = 1000.0, wall_ms: int = 1_800_000_000_000) -> None:
        self.mono = mono
        self.wall0 = wall_ms - int(mono * 1000)

    def monotonic(self) -> float:
        return self.mono

    def wall_ms(self) -> int:
        return self.wall0 + int(self.mono * 1000)

    def advance(self, seconds: float, loop: EventLoop | None = None) -> None:
        """Moves on; wakes `loop` so that it fires the timers now due."""
        self.mono += seconds
        if loop is not None:
            loop.post(lambda: None)


@contextmanager
def running_loop(loop: EventLoop) -> Iterator[EventLoop]:
    """The loop running on a thread until the block ends."""
    thread = threading.Thread(target=loop.run, name="shell-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop()
        thread.join(5)


@contextmanager
def memory_hub() -> Iterator[MemoryHub]:
    hub = MemoryHub()
    try:
        yield hub
    finally:
        for session in list(hub.sessions):
            session.close()


def on_loop_idle(loop: EventLoop, timeout: float = 5.0) -> None:
    """Returns once everything posted before the call has run."""
    done = threading.Event()
    loop.post(done.set)
    if not done.wait(timeout):
        raise AssertionError(f"the loop did not run a posted call within {timeout}s")


def advance_idle(clock: ManualClock, loop: EventLoop, seconds: float) -> None:
    """Once the loop is idle, moves the clock on; returns once the timers then due have run."""
    on_loop_idle(loop)
    clock.advance(seconds, loop)
    on_loop_idle(loop)
