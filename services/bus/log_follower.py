"""The reader's side of `ank/logs/<agent>/<workload>`: one way to ask for a
workload's log and to follow it, shared by `ank logs [-f]` (services/cli)
and the Control Interface's LogsRequest (services/agent/control_interface).

Following is a stream, never a re-read (the agent's side is
services/agent/logs.py): the follower subscribes to
`ank/logs/<agent>/<workload>/stream` *before* it asks with `follow=1`, so no
chunk pushed after the answer is missed; the agent then pushes the new lines
there while the follower renews its lease every FOLLOW_RENEW_S with
`offset=<shown>;follow=1`. A renewal's answer also fills the gap a lost
chunk left (chunks are put best effort), and a renewal nobody answers means
the workload is gone (or its agent): the follow ends.

A consumer is handed the text of the lines it has not seen yet, each line
ending in "\\n" (a line may hold a "\\r": split on "\\n" to keep it whole).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from schemas import keys
from schemas.messages import LogsReply
from services.bus.protocol import BusLike

FOLLOW_RENEW_S = 2.0  # how often a follower renews its lease (the agent's lease: services.agent.logs.FOLLOW_LEASE_S)
STOP_CHECK_S = 0.5  # how soon a follower notices its stop flag (the CLI: how soon SIGTERM is acted upon)


def ask_logs(bus: BusLike, agent: str, workload: str, params: str, timeout: float) -> LogsReply | None:
    """One query on the workload's logs key (`tail=N`, `offset=N`, `follow=1`,
    `;`-separated); None when its agent does not answer with a LogsReply
    (no such workload there, or no agent). ValueError: the names are not
    one agent's and one workload's (a wildcard, a '/')."""
    key = _logs_key(agent, workload)
    for reply_key, payload in bus.get(f"{key}?{params}" if params else key, timeout=timeout):
        reply = bus.decode(reply_key, payload, LogsReply)
        if reply is not None:
            return reply
    return None


def _logs_key(agent: str, workload: str) -> str:
    key = keys.logs_key(agent, workload)
    if keys.parse_logs_key(key) != (agent, workload):
        raise ValueError(f"logs of {workload!r} on {agent!r}: not one agent's and one workload's name")
    return key


def text_from(reply: LogsReply, shown: int) -> str:
    """The reply's lines from line `shown` of the log on."""
    # each line of a reply ends in "\n" (only: a line may hold a "\r")
    *lines, last = reply.text.split("\n")
    whole = [line + "\n" for line in lines] + ([last] if last else [])
    return "".join(whole[max(0, shown - reply.start) :])


def follow_logs(
    bus: BusLike,
    agent: str,
    workload: str,
    on_text: Callable[[str], None],
    stop: threading.Event,
    *,
    tail: int | None = None,
    timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Hands `on_text` the log (its last `tail` lines, or all of it), then
    each batch of lines the agent pushes, until `stop` is set (True) or the
    agent no longer answers for the workload (False). Blocks the calling
    thread: never call it in a bus callback. ValueError: as ask_logs."""
    _logs_key(agent, workload)  # before subscribing: a wildcard would follow every workload it matches
    chunks: queue.SimpleQueue[LogsReply] = queue.SimpleQueue()
    subscriber = bus.subscribe(keys.logs_stream_key(agent, workload), LogsReply, lambda _k, c: chunks.put(c))
    try:
        params = ";".join(filter(None, [f"tail={tail}" if tail is not None else "", "follow=1"]))
        reply = ask_logs(bus, agent, workload, params, timeout)
        if reply is None:
            return False
        _hand(on_text, text_from(reply, reply.start))
        shown = reply.offset  # the lines of the log handed on so far
        renew_at = clock() + FOLLOW_RENEW_S
        while not stop.is_set():
            try:
                chunk: LogsReply | None = chunks.get(timeout=max(0.0, min(STOP_CHECK_S, renew_at - clock())))
            except queue.Empty:
                chunk = None
            if stop.is_set():
                break
            if chunk is not None and chunk.start <= shown < chunk.offset:
                _hand(on_text, text_from(chunk, shown))
                shown = chunk.offset
            # a chunk after a gap (one was lost) waits for the renewal, which answers from `shown`
            if clock() >= renew_at:
                renew_at = clock() + FOLLOW_RENEW_S
                again = ask_logs(bus, agent, workload, f"offset={shown};follow=1", timeout)
                if again is None:  # the workload is gone, or its agent
                    return False
                if again.offset > shown:
                    _hand(on_text, text_from(again, shown))
                    shown = again.offset
        return True
    finally:
        try:
            subscriber.undeclare()
        except Exception:  # the bus is closing: nothing left to withdraw
            pass


def _hand(on_text: Callable[[str], None], text: str) -> None:
    if text:
        on_text(text)
