"""The event loop of a service shell: Zenoh callbacks (and child watchers,
timers) post events; one thread takes them in order and calls the core. So a
core is never called from two threads at once, and callbacks never block."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ank_common.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("ank.loop")

# The longest the loop thread blocks at once. A signal (SIGTERM from
# `ank up`'s death, systemd's stop) may be delivered to any thread of the
# process, most often one of Zenoh's: Python's handler then only raises a flag
# that the main thread acts on when it next runs, and an endless wait would
# never see it.
MAX_WAIT_S = 0.5


class EventLoop:
    """`clock`: what timers (call_later) count in; a test may pass its own
    (after moving it on, post anything to wake the loop: it recomputes which
    timers are due). Whatever the clock, the loop waits at most MAX_WAIT_S
    of real time at once."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._counter = itertools.count()
        self._timer_lock = threading.Lock()
        self._stop = threading.Event()
        # Held while a posted function runs (on the loop thread or inline):
        # never two at once. `_pending`: posted and not yet run.
        self._run_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = 0
        self._running = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the loop thread, soon. Safe from any thread."""
        with self._pending_lock:
            self._pending += 1
        self._queue.put((fn, args))

    def post_or_call(self, fn: Callable[..., None], *args: Any) -> None:
        """As post, but when the running loop is idle (nothing queued, nothing
        running) fn(*args) runs at once on the calling thread, still never
        beside another posted function and never ahead of one posted
        earlier: saves waking the loop thread on a latency-critical path
        (the agent's workload exit → state)."""
        if self._running and self._run_lock.acquire(blocking=False):
            try:
                with self._pending_lock:
                    idle = self._pending == 0
                if idle:
                    self._call(fn, args)
                    return
            finally:
                self._run_lock.release()
        self.post(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the loop thread after `delay` seconds."""
        with self._timer_lock:
            heapq.heappush(self._timers, (self._clock.monotonic() + delay, next(self._counter), fn, args))
        self.post(_noop)  # wake the loop so it recomputes its timeout

    def stop(self) -> None:
        self._stop.set()
        self.post(_noop)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        self._running = True
        try:
            self._run()
        finally:
            self._running = False

    def _run(self) -> None:
        while not self._stop.is_set():
            due: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
            with self._timer_lock:
                now = self._clock.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._timers)
                    due.append((fn, args))
                timeout = min(self._timers[0][0] - now, MAX_WAIT_S) if self._timers else MAX_WAIT_S
            for fn, args in due:
                with self._run_lock:
                    self._call(fn, args)
            if not due:
                self._run_posted(timeout)

    def _run_posted(self, timeout: float) -> None:
        """Runs the next posted function, waiting at most `timeout` for one."""
        try:
            fn, args = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        with self._run_lock:
            self._call(fn, args)
        with self._pending_lock:
            self._pending -= 1

    def drain(self, until: Callable[[], bool], timeout_s: float) -> bool:
        """Once the loop has stopped: runs what is posted (timers excepted) on
        the calling thread until `until()` holds or `timeout_s` of the clock
        has passed; returns `until()`. For a shell's last, bounded wait (the
        agent's exits at shutdown)."""
        deadline = self._clock.monotonic() + timeout_s
        while not until():
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return False
            self._run_posted(min(remaining, MAX_WAIT_S))
        return True

    @staticmethod
    def _call(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in %s", getattr(fn, "__qualname__", fn))


def _noop() -> None:
    pass
