"""`ank logs`: the agent's side.

Pure part: what a query on `ank/logs/<agent>/<workload>` answers
(`logs_reply`), what a followed workload's next pushed chunk is
(`next_chunk`), and the followers' leases (`Followers`).

Shell part (`LogsServer`): one thread that reads the logs (a runtime's
`logs` may run `podman logs`: never in a Zenoh callback). Queries are handed
to it by Bus.queryable's `defer`; every FOLLOW_PERIOD_S it reads each
followed workload's log and pushes the new lines on
`ank/logs/<agent>/<workload>/stream`.

A follower asks with `follow=1` and is followed for FOLLOW_LEASE_S after
its last such query: a follower (`ank logs -f`, a Control Interface's
LogsRequest: services/bus/log_follower.py) renews every FOLLOW_RENEW_S
(asking `offset=N;follow=1`, whose reply also fills a gap a lost chunk left). A
follower that goes away (Ctrl-C, kill -9, network cut) costs the agent at
most FOLLOW_LEASE_S of reading and pushing; no liveliness token is needed
(the `cli` identity declares none under the secured policy).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas import keys
from schemas.messages import LogsReply

log = logging.getLogger("ank.agent.logs")

FOLLOW_LEASE_S = 10.0  # a follower is served this long after its last follow=1 query
FOLLOW_PERIOD_S = 0.25  # how often the agent reads a followed workload's log
# The text of one reply or chunk, in UTF-8 bytes: JSON escapes at most 6x,
# which stays below the bus's payload cap (4 MiB). Longer: the last lines.
TEXT_BUDGET_BYTES = 512 * 1024
QUEUE_MAX = 64  # queries waiting for the logs thread; more are refused (busy)


class LogsQueryError(ValueError):
    """A query's parameters are not understood."""


def parse_params(params: str) -> dict[str, str]:
    """Zenoh selector parameters (`a=1;b=2`; a bare `follow` counts as set)."""
    out: dict[str, str] = {}
    for part in params.split(";"):
        if not part:
            continue
        name, _sep, value = part.partition("=")
        out[name] = value if _sep else "1"
    return out


def _count(args: dict[str, str], name: str) -> int:
    raw = args.get(name, "") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise LogsQueryError(f"{name}={raw!r} is not a number of lines") from None
    if value < 0:
        raise LogsQueryError(f"{name}={raw!r} is negative")
    return value


def wants_follow(args: dict[str, str]) -> bool:
    return args.get("follow", "0") not in ("", "0", "false")


def _text(lines: list[str], start: int) -> tuple[str, int]:
    """The text of lines[start:] within the budget: (text, first line's index)."""
    out: list[str] = []
    size = 0
    first = len(lines)
    while first > start:
        line = lines[first - 1]
        line = line if line.endswith("\n") else line + "\n"
        encoded = len(line.encode(errors="replace"))
        if size + encoded > TEXT_BUDGET_BYTES:
            if not out:  # one line longer than the budget: its end
                out.append(line.encode(errors="replace")[-TEXT_BUDGET_BYTES:].decode(errors="replace"))
                first -= 1
            break
        out.append(line)
        size += encoded
        first -= 1
    return "".join(reversed(out)), first


def logs_reply(workload: str, lines: list[str], args: dict[str, str]) -> LogsReply:
    """`tail=N`: the last N lines; `offset=N`: the lines after the first N;
    neither: all of them (within the budget)."""
    tail, offset = _count(args, "tail"), _count(args, "offset")
    if "offset" in args:
        start = min(offset, len(lines))
    elif tail > 0:
        start = max(0, len(lines) - tail)
    else:
        start = 0
    text, first = _text(lines, start)
    return LogsReply(workload=workload, text=text, start=first, offset=len(lines))


def next_chunk(workload: str, lines: list[str], sent: int) -> LogsReply | None:
    """The lines a follower has not been pushed yet (None: nothing new).
    A log shorter than what was sent (rotated, restarted): from its start."""
    if len(lines) == sent:
        return None
    text, first = _text(lines, sent if len(lines) > sent else 0)
    return LogsReply(workload=workload, text=text, start=first, offset=len(lines))


@dataclass
class _Follow:
    until: float
    sent: int


class Followers:
    """The followed workloads: each with its lease's end and how many lines
    were pushed (or answered) so far. Pure: times are passed in."""

    def __init__(self) -> None:
        self._follows: dict[str, _Follow] = {}

    def follow(self, workload: str, now: float, answered: int) -> None:
        """A follow=1 query was answered up to line `answered`."""
        current = self._follows.get(workload)
        if current is None:
            self._follows[workload] = _Follow(now + FOLLOW_LEASE_S, answered)
        else:
            current.until = now + FOLLOW_LEASE_S

    def due(self, now: float) -> list[str]:
        """The workloads still followed (expired leases are dropped)."""
        for workload in [w for w, f in self._follows.items() if f.until <= now]:
            del self._follows[workload]
        return list(self._follows)

    def sent(self, workload: str) -> int:
        return self._follows[workload].sent

    def pushed(self, workload: str, offset: int) -> None:
        if workload in self._follows:
            self._follows[workload].sent = offset

    def forget(self, workload: str) -> None:
        self._follows.pop(workload, None)

    def __contains__(self, workload: str) -> bool:
        return workload in self._follows


ReadLines = Callable[[str], "list[str] | None"]  # a workload's log lines, None: no such workload here
Publish = Callable[[str, LogsReply], None]


def _tick() -> None:
    """No query: only the followers' push is due."""


class LogsServer:
    """The agent's logs thread: answers the deferred queries and pushes the
    followed workloads' new lines."""

    def __init__(
        self, agent: str, read_lines: ReadLines, publish: Publish, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.agent = agent
        self._read = read_lines
        self._publish = publish
        self._clock = clock
        self.followers = Followers()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUE_MAX)
        self._thread = threading.Thread(target=self._run, name=f"agent-{agent}-logs", daemon=True)
        self._thread.start()

    def defer(self, job: Callable[[], None]) -> bool:
        """Runs `job` (a query's answer) on the logs thread; False if too
        many wait (the query is then refused, not left hanging)."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def answer(self, key: str, params: str) -> list[tuple[str, LogsReply]]:
        """A query on `ank/logs/<agent>/<workload>` (on the logs thread)."""
        parsed = keys.parse_logs_key(key)
        if parsed is None:
            raise LookupError(f"{key!r} names no one workload (ank/logs/<agent>/<workload>)")
        args = parse_params(params)
        lines = self._read(parsed.workload)
        if lines is None:
            raise LookupError(f"no workload {parsed.workload!r} on agent {self.agent}")
        reply = logs_reply(parsed.workload, lines, args)
        if wants_follow(args):
            self.followers.follow(parsed.workload, self._clock(), reply.offset)
        return [(key, reply)]

    def close(self) -> None:
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        next_push = self._clock()
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, next_push - self._clock()))
            except queue.Empty:
                job = _tick
            if job is None:
                return
            try:
                job()
                if self._clock() >= next_push:
                    next_push = self._clock() + FOLLOW_PERIOD_S
                    self._push()
            except Exception:
                log.exception("ank logs: answering or pushing failed")

    def _push(self) -> None:
        for workload in self.followers.due(self._clock()):
            lines = self._read(workload)
            if lines is None:
                self.followers.forget(workload)
                continue
            chunk = next_chunk(workload, lines, self.followers.sent(workload))
            if chunk is not None:
                self._publish(keys.logs_stream_key(self.agent, workload), chunk)
                self.followers.pushed(workload, chunk.offset)
