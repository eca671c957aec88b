"""An in-memory bus: a shell's wiring tested without a router.

    hub = MemoryHub()
    planner_bus = MemoryBus(hub, "planner")
    agent_bus = MemoryBus(hub, "agent/robot")

A `MemoryBus` *is* a `services.bus.Bus` — the same stamping, decoding,
size/stale/key checks, drop counting and reporting, `exact` queryables and
error replies — over a `MemorySession` instead of a Zenoh session. Only the
transport is replaced, so what a test shows about the contract holds for the
real bus; the real-Zenoh tests remain the integration tests.

What the hub models of Zenoh: key expressions matched by `zenoh.KeyExpr`
(`*`, `**`, invalid keys rejected as Zenoh rejects them); a session's own
subscribers and queryables see its own puts and queries; a query's selector
`key?parameters`; a reply on a key outside the query's key expression is
refused; liveliness tokens, watchers with history, `alive`; closing a session
withdraws its tokens (watchers see the token vanish, as when a process dies).

Delivery is synchronous: a put calls every matching subscriber's callback on
the putting thread before it returns, and liveliness changes likewise. A
test can therefore put and then wait only on the shell's own loop, never on
a delivery thread, and a callback's failure shows in that thread's stack.
(Shell callbacks only post to their event loop, the rule Zenoh's threads
impose anyway.) Queries run each matching queryable on a thread of its own
and `get` waits for them at most its timeout, as a Zenoh query does: a
handler that waits on its shell's loop cannot block the caller forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zenoh

from ank_common.clock import SYSTEM_CLOCK, Clock
from services.bus import Bus

log = logging.getLogger("ank.bus.memory")


def _deliver(callback: Callable[[Any], None], sample: _Sample) -> None:
    """As Zenoh does: a callback's failure is logged, never raised into the putter."""
    try:
        callback(sample)
    except Exception:
        log.exception("error in a callback on %s", sample.key_expr)


class MemoryBus(Bus):
    """A Bus on a MemoryHub (no router, no network)."""

    def __init__(self, hub: MemoryHub, name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        # The hub's session stands in for zenoh.Session: it offers the calls Bus makes.
        super().__init__(name, session=cast(zenoh.Session, hub.open_session(name)), clock=clock)


class _Payload:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def to_bytes(self) -> bytes:
        return self._data

    def to_string(self) -> str:
        return self._data.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Sample:
    key_expr: zenoh.KeyExpr
    payload: _Payload
    kind: zenoh.SampleKind


@dataclass(frozen=True)
class _ReplyError:
    payload: _Payload


@dataclass(frozen=True)
class _Reply:
    ok: _Sample | None = None
    err: _ReplyError | None = None


class _Query:
    """One query as one queryable sees it. As in Zenoh, it ends when the
    queryable drops it (`Bus.queryable` always does: at once, or after a
    deferred answer on another thread), not when the callback returns."""

    def __init__(self, key_expr: zenoh.KeyExpr, parameters: str, payload: bytes | None) -> None:
        self.key_expr = key_expr
        self.parameters = parameters
        self.payload = _Payload(payload) if payload is not None else None
        self.replies: list[_Reply] = []
        self._lock = threading.Lock()
        self._open = True
        self.dropped = threading.Event()

    def reply(self, key: str, payload: bytes, **_options: Any) -> None:
        reply_key = zenoh.KeyExpr(key)
        if not self.key_expr.intersects(reply_key):
            raise ValueError(f"reply key {key!r} does not intersect the query's {str(self.key_expr)!r}")
        self._add(_Reply(ok=_Sample(reply_key, _Payload(bytes(payload)), zenoh.SampleKind.PUT)))

    def reply_err(self, message: str, **_options: Any) -> None:
        self._add(_Reply(err=_ReplyError(_Payload(message.encode()))))

    def drop(self) -> None:
        with self._lock:
            self._open = False
        self.dropped.set()

    def close(self) -> list[_Reply]:
        """The replies so far; later ones are discarded (the caller stopped waiting)."""
        with self._lock:
            self._open = False
            return list(self.replies)

    def _add(self, reply: _Reply) -> None:
        with self._lock:
            if self._open:
                self.replies.append(reply)


@dataclass(eq=False)
class _Entity:
    """A subscriber, queryable, liveliness token or liveliness watcher."""

    hub: MemoryHub
    session: MemorySession
    kind: str  # "subscriber", "queryable", "token", "watcher"
    key_expr: zenoh.KeyExpr
    callback: Callable[[Any], None] | None = None

    def undeclare(self) -> None:
        self.hub._undeclare(self)


class _Liveliness:
    def __init__(self, session: MemorySession) -> None:
        self._session = session

    def declare_token(self, key: str) -> _Entity:
        return self._session._declare("token", key, None)

    def declare_subscriber(self, key_expr: str, callback: Callable[[Any], None], *, history: bool = False) -> _Entity:
        return self._session._declare("watcher", key_expr, callback, history=history)

    def get(self, key_expr: str, timeout: float = 1.0) -> list[_Reply]:
        asked = zenoh.KeyExpr(key_expr)
        return [
            _Reply(ok=_Sample(e.key_expr, _Payload(b""), zenoh.SampleKind.PUT))
            for e in self._session.hub._entities_of("token")
            if asked.intersects(e.key_expr)
        ]


class MemorySession:
    """The calls services.bus.Bus makes on a zenoh.Session, served by a MemoryHub."""

    def __init__(self, hub: MemoryHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.closed = False

    def put(self, key: str, payload: bytes, **_options: Any) -> None:
        self._check_open()
        sample = _Sample(zenoh.KeyExpr(key), _Payload(bytes(payload)), zenoh.SampleKind.PUT)
        for entity in self.hub._entities_of("subscriber"):
            if entity.key_expr.intersects(sample.key_expr) and entity.callback is not None:
                _deliver(entity.callback, sample)

    def declare_subscriber(self, key_expr: str, callback: Callable[[Any], None]) -> _Entity:
        return self._declare("subscriber", key_expr, callback)

    def declare_queryable(self, key_expr: str, callback: Callable[[Any], None]) -> _Entity:
        return self._declare("queryable", key_expr, callback)

    def get(self, selector: str, payload: bytes | None = None, timeout: float = 10.0, **_options: Any) -> list[_Reply]:
        self._check_open()
        key, _, parameters = selector.partition("?")
        asked = zenoh.KeyExpr(key)
        threads: list[tuple[threading.Thread, _Query]] = []
        for entity in self.hub._entities_of("queryable"):
            if entity.key_expr.intersects(asked) and entity.callback is not None:
                query = _Query(asked, parameters, payload)
                thread = threading.Thread(target=entity.callback, args=(query,), name="memory-query", daemon=True)
                threads.append((thread, query))
        for thread, _ in threads:
            thread.start()
        deadline = time.monotonic() + timeout  # real time: the queryables run on threads
        replies: list[_Reply] = []
        for thread, query in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            query.dropped.wait(max(0.0, deadline - time.monotonic()))  # a deferred answer comes after the callback
            replies.extend(query.close())
        return replies

    def liveliness(self) -> _Liveliness:
        return _Liveliness(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub._close(self)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"session {self.name!r} is closed")

    def _declare(
        self, kind: str, key_expr: str, callback: Callable[[Any], None] | None, *, history: bool = False
    ) -> _Entity:
        self._check_open()
        return self.hub._declare(_Entity(self.hub, self, kind, zenoh.KeyExpr(key_expr), callback), history)


class MemoryHub:
    """What a Zenoh router and its sessions do for a bus, in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entities: list[_Entity] = []
        self.sessions: list[MemorySession] = []

    def open_session(self, name: str = "") -> MemorySession:
        session = MemorySession(self, name)
        with self._lock:
            self.sessions.append(session)
        return session

    def bus(self, name: str) -> MemoryBus:
        return MemoryBus(self, name)

    def tokens(self) -> list[str]:
        """The keys of the liveliness tokens declared now."""
        return [str(e.key_expr) for e in self._entities_of("token")]

    def subscriptions(self) -> list[str]:
        """The key expressions subscribed now (a test waits on a shell's wiring)."""
        return [str(e.key_expr) for e in self._entities_of("subscriber")]

    # -- entities ------------------------------------------------------------
    def _entities_of(self, kind: str) -> list[_Entity]:
        with self._lock:
            return [e for e in self._entities if e.kind == kind]

    def _declare(self, entity: _Entity, history: bool) -> _Entity:
        with self._lock:
            self._entities.append(entity)
            tokens = [e for e in self._entities if e.kind == "token"]
        if entity.kind == "token":
            self._liveliness(entity.key_expr, zenoh.SampleKind.PUT)
        elif entity.kind == "watcher" and history and entity.callback is not None:
            for token in tokens:
                if entity.key_expr.intersects(token.key_expr):
                    _deliver(entity.callback, _Sample(token.key_expr, _Payload(b""), zenoh.SampleKind.PUT))
        return entity

    def _undeclare(self, entity: _Entity) -> None:
        with self._lock:
            if entity not in self._entities:
                return
            self._entities.remove(entity)
        if entity.kind == "token":
            self._liveliness(entity.key_expr, zenoh.SampleKind.DELETE)

    def _close(self, session: MemorySession) -> None:
        for entity in reversed(self._owned_by(session)):
            self._undeclare(entity)

    def _owned_by(self, session: MemorySession) -> list[_Entity]:
        with self._lock:
            return [e for e in self._entities if e.session is session]

    def _liveliness(self, key: zenoh.KeyExpr, kind: zenoh.SampleKind) -> None:
        sample = _Sample(key, _Payload(b""), kind)
        for watcher in self._entities_of("watcher"):
            if watcher.key_expr.intersects(key) and watcher.callback is not None:
                _deliver(watcher.callback, sample)
