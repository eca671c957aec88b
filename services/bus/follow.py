"""`DesiredStateFollower`: the one way a shell follows the desired state.

The health-watcher, the scheduler and the dashboard learn what the planner
wants by asking `ank/cmd/state` (`paging.get_complete_state`): at start,
shortly after each put on `ank/desired` (the planner needs a moment to apply
it), every so often in case a put was missed, when the shell asks (a state of
a workload it does not know), and again soon when no planner answered. This
component does that once for all of them:

- one query thread asks; never a Zenoh callback, never the shell's loop;
- triggers are coalesced: at most one query in flight, and the next one no
  sooner than `coalesce_s` (real time: it bounds the load on the planner)
  after an answer; triggers meanwhile become one query (their reasons
  joined, for the log);
- after a put on `ank/desired` it waits `settle_s` before asking;
- `refresh_s`: a query when none was made for that long (None: never);
- `retry_s`: after a query no planner answered (or answered with garbage, or
  with an incomplete state), it asks again after that long (None: never),
  and not sooner, whatever triggers meanwhile: a planner too busy to answer
  is not asked more often (they are asked together then);
- an answer older (`seq`) than the last one delivered is ignored;
- `on_state(complete)` is called on the shell's loop thread (`Timers.post`),
  as is all of the follower's bookkeeping;
- `stop` ends the thread, waiting at most `wait_s` (a query in flight ends
  within its timeout; its answer is dropped).

Every delay but the coalescing pause is a timer of the loop
(`Timers.call_later`), so a test moving the loop's clock moves them too.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ank_common.clock import SYSTEM_CLOCK, Clock
from schemas import keys
from schemas.messages import CompleteState, WorkloadState
from services.bus import paging
from services.bus.protocol import BusLike, Declared
from services.bus.timers import Timers

SETTLE_S = 0.3  # after a put on ank/desired, give the planner time to apply it before asking
COALESCE_S = 0.2  # at most one query per this long, however many triggers
RETRY_S = 1.0  # ask again this soon when no planner answered
QUERY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Query:
    reason: str
    states: str | None  # also ask this selector's workload states (agents answer)


class DesiredStateFollower:
    """Follows the desired state for one shell; see the module's docstring.

    `states_at_start`: a selector of workload states (e.g. `ank/state/**`)
    also asked, of the agents, with each query until one is delivered; the
    states answered are added to that CompleteState's `workload_states`
    (a late joiner sees the states of workloads the planner does not report).
    `no_answer_level`: how loudly to say that no planner answers (once per
    outage; `info` when it answers again)."""

    def __init__(
        self,
        bus: BusLike,
        timers: Timers,
        on_state: Callable[[CompleteState], None],
        *,
        clock: Clock = SYSTEM_CLOCK,
        settle_s: float = SETTLE_S,
        refresh_s: float | None = None,
        retry_s: float | None = RETRY_S,
        coalesce_s: float = COALESCE_S,
        timeout_s: float = QUERY_TIMEOUT_S,
        states_at_start: str | None = None,
        no_answer_level: int = logging.WARNING,
        log: logging.Logger | None = None,
    ) -> None:
        self._bus = bus
        self._timers = timers
        self._on_state = on_state
        self._clock = clock
        self._settle_s = settle_s
        self._refresh_s = refresh_s if refresh_s is not None and refresh_s > 0 else None
        self._retry_s = retry_s
        self._coalesce_s = coalesce_s
        self._timeout_s = timeout_s
        self._states = states_at_start
        self._no_answer_level = no_answer_level
        self._log = log or logging.getLogger("ank.bus.follow")
        # Loop thread only:
        self._reasons: list[str] = []
        self._busy = False  # the query thread is asking, or pausing after an answer
        self._last_start_s = float("-inf")
        self._retry_armed = False
        self._retry_at_s = float("-inf")  # after an unanswered query: no query before this (loop clock)
        self._last_seq = 0
        self._silent = False  # the last query had no answer (said once)
        # Between the loop and the query thread:
        self._requests: queue.SimpleQueue[_Query | None] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription: Declared | None = None

    # -- any thread ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Follows puts on `ank/desired`, asks now, and then every `refresh_s`."""
        self._thread = threading.Thread(target=self._query_forever, name="desired-follower", daemon=True)
        self._thread.start()
        self._subscription = self._bus.subscribe_raw(keys.DESIRED, self._on_desired_put)
        self.refresh("start")
        if self._refresh_s is not None:
            self._timers.call_later(self._refresh_s, self._periodic)

    def refresh(self, reason: str, *, min_gap_s: float = 0.0) -> None:
        """Asks soon (coalesced with other triggers); not at all if a query
        started less than `min_gap_s` ago. Safe from any thread."""
        self._timers.post(self._want, reason, min_gap_s)

    def stop(self, wait_s: float = QUERY_TIMEOUT_S + 1.0) -> None:
        """No more queries or deliveries; waits at most `wait_s` for the query thread."""
        self._stopped.set()
        self._requests.put(None)
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # a session already closed
                self._subscription.undeclare()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def idle(self) -> bool:
        """No query in flight, pausing after its answer, or wanted (for tests and diagnostics)."""
        return not self._busy and not self._reasons

    @property
    def running(self) -> bool:
        """Whether the query thread is still there (it ends after `stop`, once its query in flight returns)."""
        return self._thread is not None and self._thread.is_alive()

    def _on_desired_put(self, _key: str, _payload: bytes) -> None:
        # A Zenoh thread: only hand over (the loop's timer counts the settle delay).
        self._timers.call_later(self._settle_s, self._want, f"{keys.DESIRED} changed", 0.0)

    # -- loop thread --------------------------------------------------------------------------------------------------
    def _want(self, reason: str, min_gap_s: float) -> None:
        if self.stopped or self._clock.monotonic() - self._last_start_s < min_gap_s:
            return
        self._reasons.append(reason)
        self._kick()

    def _kick(self) -> None:
        """Starts the query wanted, unless the query thread is busy or the planner left unanswered."""
        if self.stopped or self._busy or not self._reasons or self._holding():
            return
        self._busy = True
        self._ask_now()

    def _ready(self) -> None:
        """The query thread has paused after its answer: what was wanted meanwhile is asked now
        (after an unanswered query: at the retry, which asks for it)."""
        if self._reasons and not self.stopped and not self._holding():
            self._ask_now()
        else:
            self._busy = False

    def _holding(self) -> bool:
        return self._silent and self._clock.monotonic() < self._retry_at_s

    def _ask_now(self) -> None:
        reason = "; ".join(dict.fromkeys(self._reasons))
        self._reasons = []  # (busy already: `idle` never reads true in between)
        self._last_start_s = self._clock.monotonic()
        self._requests.put(_Query(reason, self._states))

    def _periodic(self) -> None:
        if self.stopped or self._refresh_s is None:
            return
        since = self._clock.monotonic() - self._last_start_s
        if since >= self._refresh_s:
            self._want("periodic resync", 0.0)
            since = 0.0
        self._timers.call_later(self._refresh_s - since, self._periodic)

    def _retry(self, reason: str) -> None:
        self._retry_armed = False
        self._retry_at_s = float("-inf")  # the hold ends here (a timer may fire a hair early on another clock)
        if self._silent:  # unless a query was answered meanwhile
            self._want(reason, 0.0)

    def _answered(self, query: _Query, complete: CompleteState | None) -> None:
        if self.stopped:
            return
        if complete is None:
            self._no_answer(query.reason)
        elif complete.seq and complete.seq < self._last_seq:
            self._log.debug("ignoring an older CompleteState (seq %d < %d)", complete.seq, self._last_seq)
        else:
            self._deliver(query, complete)

    def _no_answer(self, reason: str) -> None:
        retrying = f"; asking again in {self._retry_s:g} s" if self._retry_s is not None else ""
        if self._silent:
            self._log.debug("still no reply to %s (%s)", keys.CMD_STATE, reason)
        else:
            self._silent = True
            self._log.log(
                self._no_answer_level, "no reply to %s (%s); is the planner up?%s", keys.CMD_STATE, reason, retrying
            )
        if self._retry_s is not None and not self._retry_armed:
            self._retry_armed = True
            self._retry_at_s = self._clock.monotonic() + self._retry_s
            again = reason if reason.startswith("retry: ") else f"retry: {reason}"
            self._timers.call_later(self._retry_s, self._retry, again)

    def _deliver(self, query: _Query, complete: CompleteState) -> None:
        if self._silent:
            self._silent = False
            self._log.info("%s answers again", keys.CMD_STATE)
        if query.states is not None:
            self._states = None  # asked of the agents until once delivered
        self._last_seq = max(self._last_seq, complete.seq)
        self._log.debug("desired state read (%s): %d workloads", query.reason, len(complete.desired.workloads))
        try:
            self._on_state(complete)
        except Exception:  # the shell's bug must not stop the following
            self._log.exception("handling the desired state read (%s)", query.reason)

    # -- the query thread ---------------------------------------------------------------------------------------------
    def _query_forever(self) -> None:
        while True:
            query = self._requests.get()
            if query is None or self.stopped:
                return
            complete = self._ask(query)
            if self.stopped:
                return
            self._timers.post(self._answered, query, complete)
            if self._stopped.wait(self._coalesce_s):  # triggers meanwhile make one query after the pause
                return
            self._timers.post(self._ready)

    def _ask(self, query: _Query) -> CompleteState | None:
        try:
            replies = paging.get_complete_state(self._bus, timeout=self._timeout_s)
            complete = max(replies, key=lambda c: c.seq, default=None)
            if complete is not None and query.states is not None:
                states = self._bus.get_decoded(query.states, WorkloadState, timeout=self._timeout_s)
                complete = msgspec.structs.replace(complete, workload_states=[*complete.workload_states, *states])
            return complete
        except Exception as exc:  # a closing session, a Zenoh error: as if no planner answered
            if not self.stopped:  # said once per outage, as a silence is
                level = logging.DEBUG if self._silent else logging.WARNING
                self._log.log(level, "querying %s failed: %s", keys.CMD_STATE, exc)
            return None
