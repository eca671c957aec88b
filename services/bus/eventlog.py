"""Recent events, kept by the planner so that `ank get events` shows what
happened before it was started (rejections, drops, scheduling failures,
restarts). Subscribes `ank/events/**` and answers queries on it.

Bounded in count and in bytes: the oldest events go first once either cap
is reached (each event is itself capped by the bus, services.bus.checks)."""

from __future__ import annotations

import collections
import threading

import msgspec

from schemas import keys
from schemas.messages import Event
from services.bus.protocol import BusLike

DEFAULT_MAX_BYTES = 1024 * 1024


def _size(entry: tuple[str, bytes]) -> int:
    return len(entry[0]) + len(entry[1])


class RecentEvents:
    def __init__(self, bus: BusLike, capacity: int = 1000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._events: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=capacity)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._bus = bus
        bus.subscribe(keys.EVENTS, Event, self._on_event)
        bus.queryable(keys.EVENTS, self._answer)

    def _on_event(self, key: str, event: Event) -> None:
        entry = (key, msgspec.json.encode(event))
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self._bytes -= _size(self._events[0])
            self._events.append(entry)
            self._bytes += _size(entry)
            while self._bytes > self._max_bytes and self._events:
                self._bytes -= _size(self._events.popleft())

    def _answer(self, key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._events)

    @property
    def bytes(self) -> int:
        """The bytes the kept events take (keys and payloads)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
