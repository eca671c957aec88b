"""Recent events, kept by the planner so that `ank get events` shows what
happened before it was started (rejections, drops, scheduling failures,
restarts). Subscribes `ank/events/**` and answers queries on it."""

from __future__ import annotations

import collections
import threading

import msgspec

from schemas.messages import Event
from services.bus import Bus


class RecentEvents:
    def __init__(self, bus: Bus, capacity: int = 1000) -> None:
        self._events: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._bus = bus
        bus.subscribe("ank/events/**", Event, self._on_event)
        bus.queryable("ank/events/**", self._answer)

    def _on_event(self, key: str, event: Event) -> None:
        with self._lock:
            self._events.append((key, msgspec.json.encode(event)))

    def _answer(self, key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
