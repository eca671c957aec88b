"""The bus adapter against a real Zenoh router on loopback."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import msgspec

from schemas import Event, ExecutionState, WorkloadState
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, free_port


def _state(name: str) -> WorkloadState:
    return WorkloadState(workload=name, agent="a1", execution_state=ExecutionState("Running", "Ok"))


def test_message_round_trip_is_stamped_and_decoded(make_bus: Callable[[str], Bus]) -> None:
    sub, pub = make_bus("sub"), make_bus("pub")
    got = Collector()
    sub.subscribe("ank/state/**", WorkloadState, got)
    assert _retry_put(pub, got), "no message arrived"
    key, msg = got.items[0]
    assert key == "ank/state/a1/w"
    assert isinstance(msg, WorkloadState)
    assert msg.sender == "pub" and msg.seq > 0 and msg.v == 1
    assert msg.execution_state == ExecutionState("Running", "Ok")


def _retry_put(pub: Bus, got: Collector) -> bool:
    """Puts until the subscriber has one message (subscriptions take a moment
    to reach the router); bounded."""
    for _ in range(100):
        pub.put("ank/state/a1/w", _state("w"))
        try:
            got.wait(lambda items: items, timeout=0.05)
            return True
        except AssertionError:
            continue
    return False


def test_seq_grows_and_stale_messages_are_dropped(make_bus: Callable[[str], Bus]) -> None:
    bus = make_bus("x")
    first, second = bus.stamp(_state("w")), bus.stamp(_state("w"))
    assert second.seq > first.seq
    receiver = make_bus("r")
    assert receiver.decode("k", msgspec.json.encode(second), WorkloadState) is not None
    assert receiver.decode("k", msgspec.json.encode(first), WorkloadState) is None
    assert receiver.dropped["k"] == 1


def test_garbage_payload_is_dropped_counted_and_reported(make_bus: Callable[[str], Bus]) -> None:
    sub, pub, watcher = make_bus("sub"), make_bus("pub"), make_bus("watch")
    good, events = Collector(), Collector()
    sub.subscribe("ank/state/**", WorkloadState, good)
    watcher.subscribe("ank/events/dropped", Event, events)
    garbage = [
        b"\xff\xfe",
        b"{}",
        b'{"workload": 3}',
        b"[1,2",
        b'{"v":1,"workload":"w","agent":"a","executionState":{"state":"Running","substate":"Lost"}}',
    ]
    for _ in range(100):
        for g in garbage:
            pub.put("ank/state/a1/w", g)
        pub.put("ank/state/a1/w", _state("w"))
        try:
            good.wait(lambda items: items, timeout=0.05)
            break
        except AssertionError:
            continue
    good.wait(lambda items: items, timeout=5, what="a first valid message")
    # The route is up now: garbage then one more valid message, which arrives
    # after all the garbage (one publisher, one key: order is kept).
    before = len(good.items)
    for g in garbage:
        pub.put("ank/state/a1/w", g)
    pub.put("ank/state/a1/w", _state("w"))
    good.wait(lambda items: len(items) > before, timeout=5, what="the valid message after the garbage")
    assert all(isinstance(m, WorkloadState) for _, m in good.items)
    assert sub.dropped["ank/state/a1/w"] >= len(garbage)
    _, ev = events.wait(lambda items: items[0] if items else None, timeout=5, what="a dropped event")
    assert isinstance(ev, Event) and "ank/state/a1/w" in ev.message


def test_queryable_answers_and_failing_handler_gives_error_not_silence(make_bus: Callable[[str], Bus]) -> None:
    server, client = make_bus("server"), make_bus("client")

    def answer(key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        if payload == b"boom":
            raise RuntimeError("boom")
        return [(key, b'"pong:' + (payload or b"") + b'"')]

    server.queryable("ank/test/ping", answer)
    from tests.helpers import wait_for

    replies = wait_for(lambda: client.get("ank/test/ping", b"x", timeout=1.0), timeout=10, what="a reply")
    assert replies == [("ank/test/ping", b'"pong:x"')]
    assert client.get("ank/test/ping", b"boom", timeout=1.0) == []  # an error reply, logged, not a hang


def test_liveliness_token_vanishes_when_its_process_is_killed(router: str, make_bus: Callable[[str], Bus]) -> None:
    watcher = make_bus("watcher")
    seen = Collector()
    watcher.watch_liveliness("ank/agents/*", seen)
    code = textwrap.dedent(
        """
        import sys, time
        from services.bus import Bus
        bus = Bus("child")
        bus.liveliness_token("ank/agents/child1")
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=child_env(router), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        seen.wait(lambda items: ("ank/agents/child1", True) in items, timeout=5, what="token appears")
        proc.kill()
        seen.wait(lambda items: ("ank/agents/child1", False) in items, timeout=5, what="token vanishes")
    finally:
        proc.kill()
        proc.wait()


def test_router_exits_on_sigterm_even_when_its_close_hangs_holding_the_interpreter() -> None:
    # A close that blocks in native code without releasing the interpreter lock
    # (libc pause() through ctypes.PyDLL) would also hold a Python watchdog
    # thread: the bound on the router's exit must be the kernel's.
    port = free_port()
    code = textwrap.dedent(f"""\
        import ctypes, os, signal, threading, time, zenoh
        import services.bus.router as router
        router.CLOSE_TIMEOUT_S = 1.0
        zenoh.Session.close = lambda self: ctypes.PyDLL(None).pause()

        def term_once_handled():  # SIGTERM once the router's handler is in place (bounded)
            for _ in range(1000):
                if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=term_once_handled, daemon=True).start()
        router.main(["--listen", "tcp/127.0.0.1:{port}"])
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=child_env(f"tcp/127.0.0.1:{port}"))
    try:
        assert proc.wait(25) == -signal.SIGALRM  # ended by the bound, not hung
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_router_stops_on_a_sigterm_the_kernel_gave_to_another_of_its_threads() -> None:
    port = free_port()
    code = textwrap.dedent(f"""\
        import signal, threading, time
        import services.bus.router as router

        def term_from_another_thread():
            for _ in range(1000):  # until the router has its handler in place (bounded)
                if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                    break
                time.sleep(0.01)
            main = threading.main_thread().native_id
            for _ in range(500):  # until the main thread sleeps in its wait (bounded)
                with open(f"/proc/self/task/{{main}}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "S":
                        break
                time.sleep(0.01)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=term_from_another_thread, daemon=True).start()
        raise SystemExit(router.main(["--listen", "tcp/127.0.0.1:{port}"]))
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=child_env(f"tcp/127.0.0.1:{port}"))
    try:
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
