"""The in-memory bus (services.bus.memory): the Bus contract over a hub, no
router. The shells' in-memory tests (tests/test_memory_shell_*.py) rely on
what is shown here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zenoh

from ank_common.clock import Clock
from schemas.messages import Event, HealthReport
from services.bus import Bus
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus, MemoryHub
from services.bus.protocol import BusLike
from tests.helpers import Collector
from tests.memory_helpers import ManualClock, on_loop_idle, running_loop


def _conforms(bus: Bus, memory: MemoryBus) -> tuple[BusLike, BusLike]:
    """Checked by mypy: both buses are what a shell takes."""
    return bus, memory


@pytest.fixture
def hub() -> Iterator[MemoryHub]:
    hub = MemoryHub()
    yield hub
    for session in list(hub.sessions):
        session.close()


def _report(status: str = "healthy") -> HealthReport:
    return HealthReport(workload="web", agent="a1", status=status)  # type: ignore[arg-type]


def test_a_put_reaches_every_matching_subscriber_before_it_returns(hub: MemoryHub) -> None:
    sender, receiver = MemoryBus(hub, "sender"), MemoryBus(hub, "receiver")
    got, other = Collector(), Collector()
    receiver.subscribe("ank/health/*/*", HealthReport, got)
    receiver.subscribe("ank/state/**", HealthReport, other)
    sender.put("ank/health/a1/web", _report())
    assert [(k, m.sender) for k, m in got.items] == [("ank/health/a1/web", "sender")]  # type: ignore[attr-defined]
    assert other.items == []


def test_a_repeated_message_is_dropped_as_stale_and_counted(hub: MemoryHub) -> None:
    sender, receiver = MemoryBus(hub, "sender"), MemoryBus(hub, "receiver")
    got = Collector()
    receiver.subscribe("ank/health/**", HealthReport, got)
    payload = sender.encode(_report())
    sender.put("ank/health/a1/web", payload)
    sender.put("ank/health/a1/web", payload)  # the same seq again
    sender.put("ank/health/a1/web", b"{not json")
    assert len(got.items) == 1
    assert receiver.dropped["ank/health/a1/web"] == 2


def test_an_invalid_key_is_refused_as_zenoh_refuses_it(hub: MemoryHub) -> None:
    bus = MemoryBus(hub, "b")
    with pytest.raises(zenoh.ZError):
        bus.put("ank/state//web", _report())


def test_an_exact_queryable_refuses_a_wildcard_query(hub: MemoryHub) -> None:
    server, client = MemoryBus(hub, "server"), MemoryBus(hub, "client")
    asked: list[str] = []

    def answer(key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        asked.append(f"{key}?{params}:{payload!r}")
        return [(key, b"{}")]

    server.queryable("ank/cmd/state", answer, exact=True)
    assert client.get("ank/cmd/state?since=5", payload=b"x") == [("ank/cmd/state", b"{}")]
    assert client.get("ank/cmd/*") == []
    assert asked == ["ank/cmd/state?since=5:b'x'"]
    assert server.dropped["ank/cmd/*"] == 1


def test_a_reply_outside_the_query_is_refused(hub: MemoryHub) -> None:
    server, client = MemoryBus(hub, "server"), MemoryBus(hub, "client")
    server.queryable("ank/a/*", lambda key, payload, params: [("ank/b/x", b"{}")])
    assert client.get("ank/a/x") == []


def test_a_query_waits_for_a_slow_queryable_at_most_its_timeout(hub: MemoryHub) -> None:
    server, client = MemoryBus(hub, "server"), MemoryBus(hub, "client")
    release = threading.Event()

    def slow(key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        release.wait(10)
        return [(key, b"late")]

    server.queryable("ank/slow", slow)
    server.queryable("ank/**", lambda key, payload, params: [("ank/slow", b"quick")])
    started = time.monotonic()
    assert client.get("ank/slow", timeout=0.2) == [("ank/slow", b"quick")]
    assert time.monotonic() - started < 5
    release.set()


def test_a_deferred_answer_reaches_the_asker_after_the_callback_returned(hub: MemoryHub) -> None:
    """`Bus.queryable(defer=)` answers on another thread, after Zenoh's
    callback returned: the query lasts until it is dropped, as in Zenoh."""
    server, client = MemoryBus(hub, "server"), MemoryBus(hub, "client")
    jobs: list[threading.Thread] = []

    def defer(answer: Callable[[], None]) -> bool:
        def late() -> None:
            time.sleep(0.05)  # the answering thread is late: the callback has long returned
            answer()

        job = threading.Thread(target=late)
        jobs.append(job)
        job.start()
        return True

    server.queryable("ank/logs/*", lambda key, payload, params: [(key, b"lines")], defer=defer)
    assert client.get("ank/logs/x", timeout=5) == [("ank/logs/x", b"lines")]
    for job in jobs:
        job.join(5)


def test_liveliness_history_changes_and_a_closed_session(hub: MemoryHub) -> None:
    agent, planner = MemoryBus(hub, "agent"), MemoryBus(hub, "planner")
    agent.liveliness_token("ank/agents/a1")
    seen: list[tuple[str, bool]] = []
    planner.watch_liveliness("ank/agents/*", lambda key, up: seen.append((key, up)))
    assert planner.alive("ank/agents/*") == ["ank/agents/a1"]
    agent.close()  # the process went away: its token vanishes
    assert seen == [("ank/agents/a1", True), ("ank/agents/a1", False)]
    assert planner.alive("ank/agents/*") == []
    with pytest.raises(RuntimeError):
        agent.session.put("ank/x", b"{}")


def test_a_drop_is_reported_as_an_event(hub: MemoryHub) -> None:
    receiver, watcher = MemoryBus(hub, "receiver"), MemoryBus(hub, "watcher")
    events = Collector()
    watcher.subscribe("ank/events/dropped", Event, events)
    receiver.subscribe("ank/health/**", HealthReport, lambda key, msg: None)
    watcher.put("ank/health/a1/web", b"[]")
    assert len(events.items) == 1


def test_the_event_loop_counts_timers_on_its_clock() -> None:
    clock = ManualClock()
    _: Clock = clock
    fired = threading.Event()
    with running_loop(EventLoop(clock)) as loop:
        loop.call_later(3600, fired.set)  # an hour of the loop's clock
        on_loop_idle(loop)
        assert not fired.is_set()
        clock.advance(3600, loop)  # wakes it: it recomputes what is due
        assert fired.wait(5)


def test_an_oversized_payload_is_dropped_and_a_failing_callback_stays_with_its_receiver(hub: MemoryHub) -> None:
    sender, receiver = MemoryBus(hub, "sender"), MemoryBus(hub, "receiver")
    got = Collector()
    receiver.subscribe("ank/health/**", HealthReport, got)
    sender.session.declare_subscriber("ank/**", _fail)  # a raw callback that raises: logged, not raised
    sender.put("ank/health/a1/web", b"{" + b" " * 5_000_000 + b"}")  # 5 MB
    assert got.items == [] and receiver.dropped["ank/health/a1/web"] == 1
    sender.put("ank/health/a1/web", _report())
    assert len(got.items) == 1


def _fail(sample: object) -> None:
    raise RuntimeError("a broken callback")


def test_events_are_dated_by_the_buss_clock(hub: MemoryHub) -> None:
    clock = ManualClock(wall_ms=1_234_567_890_000)
    seen: list[Event] = []
    listener = MemoryBus(hub, "listener")
    listener.subscribe("ank/events/**", Event, lambda _k, ev: seen.append(ev))
    MemoryBus(hub, "dated", clock=clock).event("note", "hello")
    assert [ev.time_ms for ev in seen] == [1_234_567_890_000]
