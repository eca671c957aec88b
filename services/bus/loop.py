"""The event loop of a service shell: Zenoh callbacks (and child watchers,
timers) post events; one thread takes them in order and calls the core. So a
core is never called from two threads at once, and callbacks never block."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ank.loop")


class EventLoop:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._counter = itertools.count()
        self._timer_lock = threading.Lock()
        self._stop = threading.Event()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the loop thread, soon. Safe from any thread."""
        self._queue.put((fn, args))

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the loop thread after `delay` seconds."""
        with self._timer_lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._counter), fn, args))
        self._queue.put((_noop, ()))  # wake the loop so it recomputes its timeout

    def stop(self) -> None:
        self._stop.set()
        self._queue.put((_noop, ()))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        while not self._stop.is_set():
            due: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
            with self._timer_lock:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._timers)
                    due.append((fn, args))
                timeout = self._timers[0][0] - now if self._timers else None
            for fn, args in due:
                self._call(fn, args)
            if due:
                continue
            try:
                fn, args = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            self._call(fn, args)

    @staticmethod
    def _call(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in %s", getattr(fn, "__qualname__", fn))


def _noop() -> None:
    pass
