"""`ank logs` and `ank logs -f` (services/agent/logs.py, services/cli/main.py
cmd_logs): the typed LogsReply, the agent reading logs on its own thread
(never in a Zenoh callback), and `-f` as a stream the agent pushes while the
follower renews its lease."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import keys
from schemas.messages import LogsReply
from services.agent import logs
from services.bus import Bus
from tests.helpers import ROOT, Collector, wait_for
from tests.system import System, running_system

# -- the pure part ---------------------------------------------------------------


def test_a_reply_holds_all_the_lines_the_tail_or_those_after_an_offset() -> None:
    lines = ["one", "two", "three"]
    assert logs.logs_reply("w", lines, {}) == LogsReply(workload="w", text="one\ntwo\nthree\n", start=0, offset=3)
    assert logs.logs_reply("w", lines, {"tail": "1"}) == LogsReply(workload="w", text="three\n", start=2, offset=3)
    assert logs.logs_reply("w", lines, {"offset": "2"}) == LogsReply(workload="w", text="three\n", start=2, offset=3)
    assert logs.logs_reply("w", lines, {"offset": "3"}).text == ""
    assert logs.logs_reply("w", lines, {"offset": "9"}) == LogsReply(workload="w", text="", start=3, offset=3)


@pytest.mark.parametrize("params", ["tail=x", "offset=-1", "tail=1.5"])
def test_a_bad_parameter_is_refused_naming_it(params: str) -> None:
    name = params.split("=")[0]
    with pytest.raises(logs.LogsQueryError, match=name):
        logs.logs_reply("w", ["a"], logs.parse_params(params))


def test_parameters_parse_with_a_bare_follow() -> None:
    assert logs.parse_params("tail=3;follow") == {"tail": "3", "follow": "1"}
    assert logs.wants_follow(logs.parse_params("follow=1"))
    assert not logs.wants_follow(logs.parse_params("tail=1"))
    assert not logs.wants_follow(logs.parse_params("follow=0"))


def test_a_log_larger_than_the_budget_is_answered_with_its_last_lines() -> None:
    line = "x" * 1000
    lines = [line] * 2000  # ~2 MB
    reply = logs.logs_reply("w", lines, {})
    assert len(reply.text.encode()) <= logs.TEXT_BUDGET_BYTES
    assert reply.offset == 2000
    assert reply.start == 2000 - reply.text.count("\n")
    huge = logs.logs_reply("w", ["y" * (logs.TEXT_BUDGET_BYTES * 3)], {})
    assert len(huge.text.encode()) <= logs.TEXT_BUDGET_BYTES and huge.start == 0


def test_a_follower_is_pushed_only_new_lines_and_its_lease_ends() -> None:
    followers = logs.Followers()
    followers.follow("w", now=100.0, answered=2)
    assert followers.due(100.0) == ["w"]
    assert logs.next_chunk("w", ["a", "b"], followers.sent("w")) is None
    chunk = logs.next_chunk("w", ["a", "b", "c"], followers.sent("w"))
    assert chunk == LogsReply(workload="w", text="c\n", start=2, offset=3)
    followers.pushed("w", 3)
    followers.follow("w", now=105.0, answered=0)  # a renewal keeps what was pushed
    assert followers.sent("w") == 3
    assert followers.due(105.0 + logs.FOLLOW_LEASE_S - 0.1) == ["w"]
    assert followers.due(105.0 + logs.FOLLOW_LEASE_S) == []
    assert "w" not in followers


def test_a_log_that_shrank_is_pushed_from_its_start() -> None:
    assert logs.next_chunk("w", ["new"], 5) == LogsReply(workload="w", text="new\n", start=0, offset=1)


def test_the_logs_server_pushes_a_followed_workloads_new_lines_from_its_own_thread() -> None:
    lines = ["a"]
    pushed = Collector()
    threads: set[str] = set()

    def read(workload: str) -> list[str] | None:
        threads.add(threading.current_thread().name)
        return list(lines) if workload == "w" else None

    server = logs.LogsServer("car1", read, lambda key, chunk: pushed(key, chunk))
    try:
        answered: list[list[tuple[str, LogsReply]]] = []
        assert server.defer(lambda: answered.append(server.answer(keys.logs_key("car1", "w"), "follow=1")))
        wait_for(lambda: answered, 5, "the answer")
        assert answered[0][0][1] == LogsReply(workload="w", text="a\n", start=0, offset=1)
        lines.extend(["b", "c"])
        pushed.wait(lambda items: items, 5, "a pushed chunk")
        assert pushed.items[0] == (
            keys.logs_stream_key("car1", "w"),
            LogsReply(workload="w", text="b\nc\n", start=1, offset=3),
        )
        assert threads == {"agent-car1-logs"}
        with pytest.raises(LookupError, match="names no one workload"):
            server.answer("ank/logs/car1/*", "")
        with pytest.raises(LookupError, match="no workload 'x' on agent car1"):
            server.answer(keys.logs_key("car1", "x"), "")
    finally:
        server.close()
        server.join(5)


# -- the deferred queryable (real Zenoh) -----------------------------------------------


def test_a_deferred_query_is_answered_on_the_deferring_thread_and_a_full_queue_is_refused(
    make_bus: Callable[[str], Bus],
) -> None:
    server, client = make_bus("server"), make_bus("client")
    ran_on: list[str] = []
    jobs: list[Callable[[], None]] = []
    accept = threading.Event()
    accept.set()

    def handler(key: str, _payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        ran_on.append(threading.current_thread().name)
        return [(key, params.encode())]

    def defer(job: Callable[[], None]) -> bool:
        if not accept.is_set():
            return False
        jobs.append(job)
        return True

    server.queryable("test/deferred/*", handler, defer=defer)
    wait_for(lambda: server.session.info.zid() is not None, 5, "the server's session")
    replies: list[list[tuple[str, bytes]]] = []

    def ask() -> None:
        # A query sent before the router knows the queryable ends at once,
        # unanswered: ask again (bounded) until one reaches it.
        for _ in range(100):
            got = client.get("test/deferred/a?x=1", timeout=10)
            if got:
                replies.append(got)
                return
            time.sleep(0.05)

    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(lambda: jobs, 10, "the query handed to the deferring thread")
    assert ran_on == []  # nothing ran in Zenoh's callback
    worker = threading.Thread(target=jobs.pop(), name="the-logs-thread")
    worker.start()
    worker.join(10)
    asker.join(15)
    assert ran_on == ["the-logs-thread"]
    assert replies == [[("test/deferred/a", b"x=1")]]
    accept.clear()
    assert client.get("test/deferred/b", timeout=5) == []  # refused (an error reply), not left hanging
    assert ran_on == ["the-logs-thread"]


# -- the real system ----------------------------------------------------------------------


@pytest.fixture
def system(router: str, tmp_path: Path) -> Iterator[System]:
    with running_system(router, tmp_path) as s:
        s.planner()
        s.agent("car1")
        wait_for(lambda: s.ank("get", "state", timeout=20).returncode == 0, 40, "the planner answers")
        wait_for(lambda: '"car1"' in s.ank("get", "agents", "-o", "json").stdout, 40, "agent car1 is alive")
        yield s


TICKER = textwrap.dedent("""\
    apiVersion: v1
    workloads:
      ticker:
        runtime: process
        agent: car1
        restartPolicy: NEVER
        runtimeConfig: |
          command: sh
          args: ["-c", "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo tick $i; sleep 0.1; done; sleep 300"]
""")


def _ticks(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(r"tick (\d+)", line.strip()))]


class _Follower:
    """`ank logs -f` as a process, its output read on a thread."""

    def __init__(self, system: System, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "logs", "-f", *args],
            cwd=ROOT,
            env=system.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line)

    def ticks(self) -> list[int]:
        return _ticks(list(self.seen))

    def last(self) -> int | None:
        ticks = self.ticks()
        return ticks[-1] if ticks else None

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.slow
def test_logs_follow_prints_the_backlog_then_the_pushed_lines_until_sigterm(
    system: System, make_bus: Callable[[str], Bus]
) -> None:
    assert system.ank("apply", "-", input=TICKER).returncode == 0
    wait_for(lambda: len(_ticks(system.ank("logs", "ticker").stdout.splitlines())) >= 5, 30, "ticker's first lines")
    watcher = make_bus("watcher")
    pushed = Collector()
    watcher.subscribe(keys.logs_stream_key("car1", "ticker"), LogsReply, pushed)

    first = _Follower(system, "ticker")
    second: _Follower | None = None
    try:
        started = wait_for(first.last, 30, "the backlog")
        # a second follower, joining later with a tail, shares the agent's pushes
        wait_for(lambda: (first.last() or 0) >= started + 10, 30, "lines appended after the follower started")
        second = _Follower(system, "ticker", "-t", "3")
        joined = wait_for(second.last, 30, "the second follower's backlog")
        # lines written after `ank logs -f` started arrive, pushed by the agent
        wait_for(lambda: (second.last() or 0) >= joined + 20, 30, "lines appended after the second follower started")
        pushed.wait(lambda items: len(items) >= 5, 10, "chunks pushed on the stream key")
        assert first.terminate() == 0
        assert second.terminate() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    # every line once, in order, from the backlog through the stream
    ticks = first.ticks()
    assert ticks[0] == 1
    assert ticks == list(range(1, ticks[-1] + 1)), ticks
    assert len(second.ticks()) >= 20
    assert second.ticks() == list(range(second.ticks()[0], second.ticks()[-1] + 1)), second.ticks()
    assert second.ticks()[0] >= started + 8  # the tail: the last three lines when it asked


@pytest.mark.slow
def test_a_follower_killed_with_sigkill_stops_the_pushes_within_the_lease(
    system: System, make_bus: Callable[[str], Bus]
) -> None:
    assert system.ank("apply", "-", input=TICKER).returncode == 0
    wait_for(lambda: _ticks(system.ank("logs", "ticker").stdout.splitlines()), 30, "ticker's first lines")
    watcher = make_bus("watcher")
    pushed = Collector()
    watcher.subscribe(keys.logs_stream_key("car1", "ticker"), LogsReply, pushed)
    follower = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "logs", "-f", "ticker"],
        cwd=ROOT,
        env=system.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pushed.wait(lambda items: len(items) >= 3, 30, "chunks pushed while followed")
    finally:
        follower.kill()
        follower.wait(10)
    killed_at = time.monotonic()
    # The lease runs out: no chunk after it. An absence is observed over a
    # bounded window (the lease, a period, a second of slack; then 2 s quiet).
    time.sleep(max(0.0, killed_at + logs.FOLLOW_LEASE_S + logs.FOLLOW_PERIOD_S + 1.0 - time.monotonic()))
    count = len(pushed.items)
    time.sleep(2.0)
    assert len(pushed.items) == count
