"""EventLoop.post_or_call: the agent's exit → state path runs the core on the
notifying thread when the loop is idle, never beside another posted function
and never ahead of one posted earlier."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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
