"""The one bus adapter every ank-zenoh process uses to talk to Zenoh.

- opens a Zenoh session from zenoh.json5 (or --zenoh-config), optionally
  pointing it at another router (--server / ANK_SERVER);
- stamps the envelope (`sender`, monotonic `seq`) on every message it puts;
- decodes every payload it receives with the schemas; whatever is malformed,
  stale, larger than its kind's cap or contradicts its key (services.bus.checks)
  is dropped, counted (`Bus.dropped`), logged and reported on
  `ank/events/dropped` (rate-limited) — nothing ever raises into Zenoh's threads;
- a queryable declared `exact=True` answers only a query on its exact key:
  a wildcard query that matches it gets an error reply and no action;
- always closes its session (a session with callbacks left open hangs the
  process at exit; ZENOH.md).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zenoh

from ank_common.clock import SYSTEM_CLOCK, Clock
from schemas import keys
from schemas.messages import Event, Message
from services.bus import checks

T = TypeVar("T", bound=msgspec.Struct)
E = TypeVar("E")
log = logging.getLogger("ank.bus")

JSON = zenoh.Encoding.APPLICATION_JSON
# Where a checkout keeps its configuration; an installed package falls back to
# the copy shipped inside it.
_CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "zenoh.json5"
_PACKAGED_CONFIG = Path(__file__).resolve().parent / "zenoh.json5"
MAX_PAYLOAD = checks.MAX_PAYLOAD
# Drops are reported as events at most once per key per window, and at most
# DROP_REPORTS_PER_WINDOW times per window in all: an attacker's flood is
# seen, not amplified.
# ANK_DROP_REPORT_WINDOW_S=0 reports every drop (e.g. to audit a fuzzing run).
DROP_REPORT_WINDOW_S = float(os.environ.get("ANK_DROP_REPORT_WINDOW_S", "10") or 10)
DROP_REPORTS_PER_WINDOW = 10


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_DECODERS_LOCK = threading.Lock()


def _decoder(schema: type[T]) -> msgspec.json.Decoder[T]:
    """One decoder per schema, made under a lock: msgspec builds a type's
    information on first use, and two threads doing that at once crashed
    processes (see schemas.prepare). Reusing the decoder is faster too."""
    decoder = _DECODERS.get(schema)
    if decoder is None:
        with _DECODERS_LOCK:
            decoder = _DECODERS.get(schema)
            if decoder is None:
                decoder = _DECODERS[schema] = msgspec.json.Decoder(schema)
    return decoder


class BusConfigError(Exception):
    """A Zenoh configuration that cannot be used; the message names the problem."""


def default_config_path() -> Path:
    env = os.environ.get("ANK_ZENOH_CONFIG")
    if env:
        return Path(env)
    return _CHECKOUT_CONFIG if _CHECKOUT_CONFIG.exists() else _PACKAGED_CONFIG


def load_config(path: str | Path | None = None, server: str | None = None) -> zenoh.Config:
    """Reads a Zenoh configuration; `server` (or ANK_SERVER) replaces the
    endpoints it connects to."""
    path = Path(path) if path else default_config_path()
    try:
        conf = zenoh.Config.from_file(str(path))
    except Exception as exc:  # zenoh raises ZError with its own text
        raise BusConfigError(f"cannot read Zenoh configuration {path}: {exc}") from exc
    server = server or os.environ.get("ANK_SERVER")
    if server:
        scheme = "tls" if _uses_tls(conf) else "tcp"
        endpoints = [_endpoint(s, scheme) for s in server.split(",") if s.strip()]
        try:
            conf.insert_json5("connect/endpoints", json.dumps(endpoints))
        except Exception as exc:
            raise BusConfigError(f"bad --server {server!r}: {exc}") from exc
    return conf


def insert_settings(
    conf: zenoh.Config, settings: Mapping[str, Any], *, error: type[BusConfigError] = BusConfigError, where: str = ""
) -> zenoh.Config:
    """Sets each `path -> JSON value` of `settings` in `conf` (as
    `zenoh.Config.insert_json5` takes them); the first one Zenoh refuses
    raises `error`, naming the path."""
    for path, value in settings.items():
        try:
            conf.insert_json5(path, json.dumps(value))
        except Exception as exc:  # zenoh raises ZError with its own text
            raise error(f"cannot set {path}{where}: {exc}") from exc
    return conf


def uses_tls(conf: zenoh.Config) -> bool:
    """Whether a client configuration connects with a certificate (a secured bus)."""
    return _uses_tls(conf)


def _uses_tls(conf: zenoh.Config) -> bool:
    try:
        return json.loads(conf.get_json("transport/link/tls/connect_certificate")) is not None
    except Exception:
        return False


def _endpoint(text: str, scheme: str = "tcp") -> str:
    text = text.strip()
    if "/" in text:
        return text
    return f"{scheme}/{text}"  # "host:port", as Ankaios's --server takes it


class _SeqStamp:
    """Monotonic sequence numbers that keep growing across restarts: the wall
    clock in microseconds, never repeated, never going back."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


class Bus:
    """A Zenoh session with the ank-zenoh contract on top. Use as a context
    manager, or call close()."""

    def __init__(
        self,
        name: str,
        *,
        config: str | Path | None = None,
        server: str | None = None,
        zenoh_config: zenoh.Config | None = None,
        session: zenoh.Session | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`session`: an already open session to use instead of opening one
        (services.bus.memory passes its in-memory stand-in); `clock`: what
        events are dated by and drop reports are windowed on."""
        self.name = name
        self.clock = clock
        if session is not None:
            self.session = session
        else:
            conf = zenoh_config if zenoh_config is not None else load_config(config, server)
            try:
                self.session = zenoh.open(conf)
            except Exception as exc:
                raise BusConfigError(f"cannot open Zenoh session (is the router up?): {exc}") from exc
        self._seq = _SeqStamp()
        self._entities: list[Any] = []
        self._publishers: dict[str, zenoh.Publisher] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.received = 0
        self._closed = False
        self._drop_window = 0.0
        self._drop_reported: set[str] = set()
        self._drop_unreported = 0

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for entity in reversed(self._entities):
            try:
                entity.undeclare()
            except Exception:
                pass
        try:
            self.session.close()
        except Exception as exc:
            log.warning("closing the Zenoh session: %s", exc)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _declared(self, entity: E) -> E:
        """Keeps an entity for close(); callers may undeclare() it earlier."""
        self._entities.append(entity)
        return entity

    # -- publishing --------------------------------------------------------
    def stamp(self, msg: T) -> T:
        """The message with this bus's envelope (sender, seq)."""
        if isinstance(msg, Message):
            return msgspec.structs.replace(msg, sender=self.name, seq=self._seq.next())  # type: ignore[return-value]
        return msg

    def encode(self, msg: msgspec.Struct) -> bytes:
        return msgspec.json.encode(self.stamp(msg))

    def put(self, key: str, msg: msgspec.Struct | bytes, *, reliable: bool = True) -> None:
        """Publishes a message. `reliable` uses congestion control BLOCK: a
        state message must not be silently dropped (ZENOH.md)."""
        payload = msg if isinstance(msg, bytes) else self.encode(msg)
        cc = zenoh.CongestionControl.BLOCK if reliable else zenoh.CongestionControl.DROP
        self.session.put(key, payload, encoding=JSON, congestion_control=cc)

    def event(self, kind: str, message: str, *, subject: str = "", severity: str = "info") -> None:
        """Publishes a human-readable event on `ank/events/<kind>`; a long
        message is truncated so that the event fits its size cap."""
        if len(message) > checks.EVENT_MESSAGE_CHARS:
            message = message[: checks.EVENT_MESSAGE_CHARS] + " ... (truncated)"
        ev = Event(
            kind=kind,
            subject=subject[: checks.EVENT_SUBJECT_CHARS],
            message=message,
            severity=severity,  # type: ignore[arg-type]
            time_ms=self.clock.wall_ms(),
        )
        try:
            self.put(keys.event_key(kind), ev, reliable=False)
        except Exception as exc:
            log.warning("could not publish event %s: %s", kind, exc)

    # -- receiving ---------------------------------------------------------
    def decode(self, key: str, payload: bytes, schema: type[T]) -> T | None:
        """Decodes a payload; None (counted, logged, reported) if it is
        malformed, oversized or stale."""
        cap = checks.max_size(schema)
        if len(payload) > cap:
            self._drop(key, f"{schema.__name__} payload of {len(payload)} bytes exceeds {cap}")
            return None
        try:
            msg = _decoder(schema).decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            self._drop(key, f"invalid {schema.__name__}: {exc}")
            return None
        disagreement = checks.disagreement(key, msg)
        if disagreement is not None:
            self._drop(key, disagreement)
            return None
        if isinstance(msg, Message):
            if msg.v != 1:
                self._drop(key, f"unsupported contract version {msg.v}")
                return None
            if msg.seq:
                slot = (key, msg.sender)
                with self._lock:
                    last = self._last_seq.get(slot, 0)
                    if msg.seq <= last:
                        stale = True
                    else:
                        stale = False
                        self._last_seq[slot] = msg.seq
                if stale:
                    self._drop(key, f"stale message seq {msg.seq} <= {last} from {msg.sender!r}", report=False)
                    return None
        return msg

    def drop(self, key: str, reason: str) -> None:
        """Drops a message the schema admits but its receiver cannot use
        (e.g. a payload that contradicts its key): counted, logged, reported."""
        self._drop(key, reason)

    def _drop(self, key: str, reason: str, *, report: bool = True) -> None:
        self.dropped[key] += 1
        if not report:
            log.info("dropped message on %s: %s", key, reason)
            return
        now = self.clock.monotonic()
        with self._lock:
            if DROP_REPORT_WINDOW_S <= 0 or now - self._drop_window >= DROP_REPORT_WINDOW_S:
                self._drop_window = now
                self._drop_reported.clear()
            first = key not in self._drop_reported and len(self._drop_reported) < DROP_REPORTS_PER_WINDOW
            if first:
                self._drop_reported.add(key)
                unreported, self._drop_unreported = self._drop_unreported, 0
            else:
                self._drop_unreported += 1
        if not first:
            log.debug("dropped message on %s: %s", key, reason)
            return
        log.warning("dropped message on %s: %s", key, reason)
        more = f" ({unreported} more dropped since the last report)" if unreported else ""
        self.event(
            "dropped", f"{self.name} dropped a message on {key}: {reason}{more}", subject=key, severity="warning"
        )

    def subscribe(self, key_expr: str, schema: type[T], callback: Callable[[str, T], None]) -> zenoh.Subscriber[None]:
        """Calls callback(key, message) for every valid message on key_expr."""

        def on_payload(key: str, payload: bytes) -> None:
            msg = self.decode(key, payload, schema)
            if msg is not None:
                callback(key, msg)

        return self.subscribe_raw(key_expr, on_payload)

    def subscribe_raw(self, key_expr: str, callback: Callable[[str, bytes], None]) -> zenoh.Subscriber[None]:
        """Calls callback(key, payload) for every put on key_expr (for payloads
        that are not a contract Struct, such as a manifest on ank/desired)."""

        def on_sample(sample: zenoh.Sample) -> None:
            key = str(sample.key_expr)
            try:
                if sample.kind != zenoh.SampleKind.PUT:
                    return
                self.received += 1
                callback(key, sample.payload.to_bytes())
            except Exception:
                log.exception("error handling a message on %s", key)

        return self._declared(self.session.declare_subscriber(key_expr, on_sample))

    def queryable(
        self,
        key_expr: str,
        handler: Callable[[str, bytes | None, str], list[tuple[str, bytes]]],
        *,
        exact: bool = False,
        defer: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None:
        """Answers queries on key_expr: handler(key, payload, parameters)
        returns (key, payload) replies. A failing handler answers with an
        error reply naming the problem instead of leaving the caller with none.
        `exact`: only a query on key_expr itself is answered (a command);
        a wildcard query that merely matches it (`ank/cmd/*`, `**`) gets an
        error reply, is counted as dropped, and the handler never runs.
        `defer`: the handler may block (it reads files, runs programs), so
        it does not run in Zenoh's callback: defer(answer) hands `answer` to
        the caller's thread, which replies when it runs it; defer returns
        False when it cannot take more, and the query gets a `busy` error."""

        def answer(query: zenoh.Query, key: str, payload: bytes | None, params: str) -> None:
            try:
                for reply_key, reply in handler(key, payload, params):
                    query.reply(reply_key, reply, encoding=JSON)
            except Exception as exc:
                _reply_failure(query, key, exc)
            finally:
                query.drop()

        def on_query(query: zenoh.Query) -> None:
            key = str(query.key_expr)
            handed_off = False  # `answer` replies and drops the query
            try:
                if exact and key != key_expr:
                    self._drop(key, f"a query on {key!r} is not one on {key_expr!r}: not answered")
                    query.reply_err(f"{key_expr} answers only a query on exactly {key_expr}, not {key}")
                    return
                payload = query.payload.to_bytes() if query.payload is not None else None
                params = str(query.parameters)
                if defer is None:
                    handed_off = True
                    answer(query, key, payload, params)
                    return
                handed_off = defer(lambda: answer(query, key, payload, params))
                if not handed_off:
                    query.reply_err(f"busy: too many queries waiting on {key_expr}; ask again")
            except Exception as exc:
                _reply_failure(query, key, exc)
            finally:
                if not handed_off:
                    query.drop()

        self._entities.append(self.session.declare_queryable(key_expr, on_query))

    def get(self, selector: str, payload: bytes | None = None, timeout: float = 2.0) -> list[tuple[str, bytes]]:
        """A query; the (key, payload) of every OK reply received before the timeout."""
        # No consolidation: several replies may share a key (recent events),
        # and Zenoh's default keeps only the latest per key.
        replies = self.session.get(
            selector, payload=payload, timeout=timeout, consolidation=zenoh.ConsolidationMode.NONE
        )
        out = []
        for reply in replies:
            if reply.ok is not None:
                out.append((str(reply.ok.key_expr), reply.ok.payload.to_bytes()))
            elif reply.err is not None:
                log.warning("query %s: error reply: %s", selector, reply.err.payload.to_string())
        return out

    def get_decoded(
        self, selector: str, schema: type[T], payload: bytes | None = None, timeout: float = 2.0
    ) -> list[T]:
        out = []
        for key, data in self.get(selector, payload, timeout):
            msg = self.decode(key, data, schema)
            if msg is not None:
                out.append(msg)
        return out

    # -- liveliness --------------------------------------------------------
    def liveliness_token(self, key: str) -> zenoh.LivelinessToken:
        return self._declared(self.session.liveliness().declare_token(key))

    def watch_liveliness(self, key_expr: str, callback: Callable[[str, bool], None], *, history: bool = True) -> None:
        """callback(key, alive) when a token matching key_expr appears or vanishes."""

        def on_sample(sample: zenoh.Sample) -> None:
            key = str(sample.key_expr)
            try:
                callback(key, sample.kind == zenoh.SampleKind.PUT)
            except Exception:
                log.exception("error handling liveliness of %s", key)

        self._entities.append(self.session.liveliness().declare_subscriber(key_expr, on_sample, history=history))

    def alive(self, key_expr: str, timeout: float = 1.0) -> list[str]:
        """The keys of the liveliness tokens alive now."""
        return [str(r.ok.key_expr) for r in self.session.liveliness().get(key_expr, timeout=timeout) if r.ok]


def _reply_failure(query: zenoh.Query, key: str, exc: Exception) -> None:
    """A handler failed: the asker gets an error reply naming it, not silence."""
    log.exception("error answering a query on %s", key)
    try:
        query.reply_err(f"{type(exc).__name__}: {exc}")
    except Exception:
        pass
