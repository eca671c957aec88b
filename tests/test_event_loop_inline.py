"""EventLoop.post_or_call: the agent's exit → state path runs the core on the
notifying thread when the loop is idle, never beside another posted function
and never ahead of one posted earlier."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bus.loop import EventLoop
from tests.helpers import wait_for


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop()
    thread = threading.Thread(target=ev.run, daemon=True)
    thread.start()
    ran = threading.Event()
    ev.post(ran.set)
    assert ran.wait(10)
    wait_for(lambda: ev._pending == 0, 10, "the loop idle")
    yield ev
    ev.stop()
    thread.join(10)


def test_before_the_loop_runs_it_only_posts() -> None:
    ev = EventLoop()
    threads: list[int] = []
    ev.post_or_call(lambda: threads.append(threading.get_ident()))
    assert threads == []


def test_an_idle_loop_runs_it_on_the_calling_thread(loop: EventLoop) -> None:
    threads: list[int] = []
    loop.post_or_call(lambda: threads.append(threading.get_ident()))
    assert threads == [threading.get_ident()]


def test_a_busy_loop_queues_it_after_what_was_posted_earlier(loop: EventLoop) -> None:
    release = threading.Event()
    started = threading.Event()
    order: list[str] = []
    running = 0
    overlap: list[int] = []

    def slow() -> None:
        nonlocal running
        running += 1
        started.set()
        release.wait(10)
        overlap.append(running)
        order.append("slow")
        running -= 1

    def quick(name: str) -> None:
        overlap.append(running)
        order.append(name)

    loop.post(slow)
    assert started.wait(10)
    loop.post(quick, "posted")
    loop.post_or_call(quick, "inline")  # the loop is busy: queued behind "posted"
    assert order == []
    release.set()
    wait_for(lambda: len(order) == 3, 10, "all three ran")
    assert order == ["slow", "posted", "inline"]
    assert overlap == [1, 0, 0]


def test_a_signal_delivered_to_another_thread_stops_an_idle_loop() -> None:
    # The kernel gives a process-directed signal to any thread, most often one
    # of Zenoh's: Python's handler then runs only once the main thread runs
    # again, so the loop must not block forever when it has nothing to do.
    ev = EventLoop()
    previous = signal.signal(signal.SIGUSR1, lambda *_: ev.stop())
    guard = threading.Timer(10, lambda: ev.post(lambda: None))  # a hung loop fails instead of hanging
    try:
        main = threading.main_thread().native_id

        def send() -> None:  # once the main thread sleeps in the loop's wait
            wait_for(lambda: _thread_state(main) == "S", 10, "the loop waiting")
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

        sender = threading.Thread(target=send)
        ev.post(sender.start)  # once the loop runs
        guard.start()
        started = time.monotonic()
        ev.run()  # on the main thread, as in every service
        assert time.monotonic() - started < 5
    finally:
        guard.cancel()
        signal.signal(signal.SIGUSR1, previous)


def _thread_state(tid: int | None) -> str:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]
