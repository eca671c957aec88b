"""`ank-planner`: the shell around services.planner.core.

It subscribes to `ank/desired`, `ank/state/**`, `ank/bind/*` and the agents'
liveliness tokens, answers `ank/cmd/{apply,delete,state}` (only a query on exactly that key:
a wildcard query such as `ank/cmd/*` gets an error reply), `ank/plan/*` and
`ank/state/**` (only the states it owns), and runs the core's actions: persist
first (an apply is acknowledged only once its state is on disk), then publish.
The core runs only on the event loop's thread; Zenoh callbacks just post.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import msgspec
import zenoh

from ank_common.clock import SYSTEM_CLOCK, Clock
from ank_common.lifecycle import Busy, DirLock, default_state_dir
from ank_common.logsetup import setup_logging
from schemas import keys
from schemas.limits import PART_BUDGET_BYTES, size_of
from schemas.liveliness import AgentLiveliness
from schemas.manifest import Manifest
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    Binding,
    CompleteState,
    DeleteRequest,
    ValidationIssue,
    WorkloadState,
)
from services.bus import Bus, BusConfigError, paging
from services.bus.eventlog import RecentEvents
from services.bus.loop import EventLoop
from services.bus.protocol import BusLike
from services.planner import core, store

R = TypeVar("R")
log = logging.getLogger("ank.planner")

DEFAULT_STATE_DIR = str(default_state_dir())
QUERY_TIMEOUT_S = 10.0  # how long a query waits for the loop before it is answered with an error
LATE_JOIN_TIMEOUT_S = 2.0
SLOW_STEP_S = 1.0  # a step's persistence and publications taking longer are logged


class Planner:
    """Holds the core's state and runs its steps against the bus and the store."""

    def __init__(
        self,
        bus: BusLike,
        loop: EventLoop,
        state_dir: str | Path,
        durable: core.Durable | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.bus = bus
        self.loop = loop
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.state = core.PlannerState(durable=durable or core.Durable())
        self.store = store.Store(self.state_dir, durable)
        self._pending_states: list[tuple[str, WorkloadState]] = []
        self._pending_lock = threading.Lock()
        self._drain_posted = False
        self._sent_plans: dict[str, AgentPlan] = {}  # the last plan published per agent (updates go against it)
        log.info(
            "loaded %d workloads from %s",
            len(self.state.durable.desired.workloads),
            store.state_path(self.state_dir) if durable else "nowhere (first start)",
        )

    # -- running core steps (loop thread only) -------------------------------
    def commit(self, step: core.Step) -> str | None:
        """Runs a step's actions; adopts its state only if it could be
        persisted. Returns the persistence error, if any."""
        started = time.monotonic()
        for action in step.actions:
            if isinstance(action, core.Persist):
                try:
                    self.store.save(action.durable)
                except store.StoreError as exc:
                    log.error("%s: change not applied", exc)
                    return str(exc)
        self.state = step.state
        persisted = time.monotonic()
        for action in step.actions:
            try:
                self._run(action)
            except Exception as exc:  # a publication failing must not lose the rest
                log.error("could not %s: %s", type(action).__name__, exc)
        done = time.monotonic()
        if done - started > SLOW_STEP_S:
            log.warning(
                "slow step: %.1f s to persist, %.1f s for %d actions (a slow disk or bus?)",
                persisted - started,
                done - persisted,
                len(step.actions),
            )
        return None

    def _run(self, action: core.Action) -> None:
        if isinstance(action, core.Log):
            log.log(logging.WARNING if action.level == "warning" else logging.INFO, "%s", action.message)
        elif isinstance(action, core.PublishPlan):
            plan = action.plan
            update = paging.plan_update(self._sent_plans.get(plan.agent), plan)
            self._sent_plans[plan.agent] = plan
            for part in paging.split_plan(update):
                self.bus.put(keys.plan_key(plan.agent), part)
        elif isinstance(action, core.PublishState):
            self.bus.put(action.key, action.state)
        elif isinstance(action, core.PublishEvent):
            self.bus.event(action.kind, action.message, subject=action.subject, severity=action.severity)
        elif isinstance(action, core.AskStates):
            self._reread_states(action.agent)
        # core.Persist ran first (commit); core.Reply is the query's answer (acknowledge)

    def now_ms(self) -> int:
        return self.clock.wall_ms()

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        """Subscribes, learns who is alive, publishes every plan and owned
        state, catches up on states (late joiner), then answers queries."""
        self.bus.subscribe_raw(keys.DESIRED, lambda _key, payload: self.loop.post(self.on_desired, payload))
        self.bus.subscribe(keys.STATES, WorkloadState, self.on_state)
        self.bus.subscribe(keys.BINDINGS, Binding, lambda _key, b: self.loop.post(self.on_binding, b))
        self.bus.subscribe(keys.AGENT_STATUSES, AgentStatus, lambda _key, st: self.loop.post(self.on_status, st))
        # Asked before the liveliness subscriber exists: with one declared in
        # the same session, Zenoh 1.x answers this query with nothing. The
        # subscriber's history then reports whatever appeared meanwhile.
        agents = [_agent_of(key) for key in self.bus.alive(keys.AGENT_TOKENS)]
        self.bus.watch_liveliness(keys.AGENT_TOKENS, lambda key, up: self.loop.post(self.on_liveliness, key, up))
        reported = []
        for key, payload in self.bus.get(keys.STATES, timeout=LATE_JOIN_TIMEOUT_S):
            ws = self.bus.decode(key, payload, WorkloadState)
            if ws is not None and ws.sender != self.bus.name:
                reported.append((key, ws))
        live = [a for a in agents if a]
        log.info("%d agents alive, %d workload states reported", len(set(live)), len(reported))
        self.commit(core.step(self.state, core.Started(agents=live, states=reported), self.now_ms()))
        self.bus.queryable(keys.CMD_APPLY, self._answer_apply, exact=True)
        self.bus.queryable(keys.CMD_DELETE, self._answer_delete, exact=True)
        self.bus.queryable(keys.CMD_STATE, self._answer_state, exact=True)
        self.bus.queryable(keys.PLANS, self._answer_plan)
        self.bus.queryable(keys.STATES, self._answer_states)
        # Keeps recent events so that `ank get events` shows what came before.
        self.recent_events = RecentEvents(self.bus)
        log.info("planner up: agents alive %s", sorted(self.state.alive) or "none")

    # -- events (loop thread) ------------------------------------------------
    def on_desired(self, payload: bytes) -> None:
        self.commit(core.step(self.state, core.DesiredPut(payload), self.now_ms()))

    def on_state(self, key: str, ws: WorkloadState) -> None:
        """A state (any thread): queued; the loop records the queued states
        in one batch (one core step however many arrived meanwhile)."""
        if ws.sender == self.bus.name:
            return  # our own publication, already in the state
        with self._pending_lock:
            self._pending_states.append((key, ws))
            if self._drain_posted:
                return
            self._drain_posted = True
        self.loop.post(self._drain_states)

    def _drain_states(self) -> None:
        with self._pending_lock:
            batch, self._pending_states = self._pending_states, []
            self._drain_posted = False
        if batch:
            self.commit(core.step(self.state, core.StatesObserved(batch), self.now_ms()))

    def on_binding(self, bound: Binding) -> None:
        self.commit(core.step(self.state, bound, self.now_ms()))

    def on_liveliness(self, key: str, alive: bool) -> None:
        agent = _agent_of(key)
        if agent:
            self.commit(core.step(self.state, AgentLiveliness(agent, alive), self.now_ms()))

    def on_status(self, status: AgentStatus) -> None:
        self.commit(core.step(self.state, core.AgentStatusSeen(status), self.now_ms()))

    def _reread_states(self, agent: str) -> None:
        """An agent (re)connected: its states may have changed while it was
        away; ask its late-joiner queryable, off the loop thread."""

        def query() -> None:
            for key, payload in self.bus.get(keys.agent_states(agent), timeout=LATE_JOIN_TIMEOUT_S):
                ws = self.bus.decode(key, payload, WorkloadState)
                if ws is not None:
                    self.on_state(key, ws)

        threading.Thread(target=query, name=f"states-of-{agent}", daemon=True).start()

    # -- queries (Zenoh threads: the work is done on the loop) ---------------
    def _on_loop(self, fn: Callable[[], R]) -> R:
        if self.loop.stopped:
            raise RuntimeError("the planner is stopping")
        future: Future[R] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the query gave up waiting: it must not act later
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.post(run)
        try:
            return future.result(QUERY_TIMEOUT_S)
        except TimeoutError:
            if future.cancel():
                raise PlannerBusy(
                    f"the planner was busy for {QUERY_TIMEOUT_S:g} s; nothing was done, try again"
                ) from None
            return future.result()  # it started meanwhile: its result stands

    def _answer_apply(self, key: str, payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        def run(request: ApplyRequest) -> ApplyResult:
            return self.acknowledge(core.step(self.state, request, self.now_ms()))

        return self._answer_command(key, payload, ApplyRequest, run)

    def _answer_delete(self, key: str, payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        def run(request: DeleteRequest) -> ApplyResult:
            return self.acknowledge(core.step(self.state, request, self.now_ms()))

        return self._answer_command(key, payload, DeleteRequest, run)

    def acknowledge(self, step: core.Step) -> ApplyResult:
        """The reply to a command (the step's Reply): its result once its
        change is persisted and published, or the persistence error (and
        nothing changed)."""
        result = _reply_of(step)
        if not result.ok:
            log.warning("rejected: %s", "; ".join(str(e) for e in result.errors))
            return result
        error = self.commit(step)
        if error is not None:
            return ApplyResult(ok=False, errors=[ValidationIssue(path="", message=error)])
        return result

    def _answer_command(
        self,
        key: str,
        payload: bytes | None,
        schema: type[ApplyRequest] | type[DeleteRequest],
        run: Callable[[ApplyRequest], ApplyResult] | Callable[[DeleteRequest], ApplyResult],
    ) -> list[tuple[str, bytes]]:
        try:
            request = msgspec.json.decode(payload or b"", type=schema)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            result = ApplyResult(
                ok=False, errors=[ValidationIssue(path="", message=f"invalid {schema.__name__}: {exc}")]
            )
            log.warning("query on %s: %s", key, result.errors[0].message)
            return [(key, self.bus.encode(result))]
        try:
            result = self._on_loop(lambda: run(request))  # type: ignore[arg-type]
        except PlannerBusy as exc:
            log.warning("query on %s: %s", key, exc)
            result = ApplyResult(ok=False, errors=[ValidationIssue(path="", message=str(exc))])
        except Exception as exc:
            log.exception("query on %s failed", key)
            result = ApplyResult(ok=False, errors=[ValidationIssue(path="", message=f"planner error: {exc}")])
        return [(key, self.bus.encode(result))]

    def _answer_state(self, key: str, _payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        since = _since_param(params)
        now_ms = self.now_ms()

        def read() -> tuple[CompleteState, Manifest | None]:
            before = core.desired_at(self.state, since, now_ms) if since is not None else None
            return core.complete_state(self.state), before

        complete, before = self._on_loop(read)
        parts = paging.split_complete_state(complete, paging.now_snapshot())
        if before is not None and len(parts) == 1 and size_of(before) <= PART_BUDGET_BYTES:
            parts = [msgspec.structs.replace(parts[0], desired_since=before)]
        return [(key, self.bus.encode(part)) for part in parts]

    def _answer_plan(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        def plans() -> list[AgentPlan]:
            agent = keys.parse_plan_key(key)
            if agent is None:
                return [core.plan_for(self.state, a) for a in sorted(self.state.plans)]
            return [core.plan_for(self.state, agent)]

        selector = zenoh.KeyExpr(key)
        replies: list[tuple[str, bytes]] = []
        for plan in self._on_loop(plans):
            reply_key = keys.plan_key(plan.agent)
            if selector.intersects(zenoh.KeyExpr(reply_key)):
                replies.extend((reply_key, self.bus.encode(part)) for part in paging.split_plan(plan))
        return replies

    def _answer_states(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        selector = zenoh.KeyExpr(key)
        owned = self._on_loop(lambda: core.owned_states(self.state))
        return [(k, self.bus.encode(ws)) for k, ws in owned if selector.intersects(zenoh.KeyExpr(k))]


def _reply_of(step: core.Step) -> ApplyResult:
    """The result a step answers its query with (its Reply action)."""
    for action in step.actions:
        if isinstance(action, core.Reply):
            return action.result
    raise RuntimeError("the planner's step gave no reply to the query")


class PlannerBusy(Exception):
    """A query waited too long for the planner's loop; it was not acted on."""


def _agent_of(liveliness_key: str) -> str:
    """`ank/agents/<agent>` -> agent ("" if the key is not an agent token)."""
    return keys.parse_agent_token_key(liveliness_key) or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ank-planner", description="The ank-zenoh planner.")
    parser.add_argument("--zenoh-config", help="Zenoh configuration file (default: zenoh.json5)")
    parser.add_argument("--server", help="router endpoint host:port or tcp/host:port (env ANK_SERVER)")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("ANK_PLANNER_STATE_DIR", DEFAULT_STATE_DIR),
        help=f"where the desired state is persisted (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--name", default="planner", help="sender name on the bus")
    parser.add_argument("--startup-manifest", help="apply this manifest before answering anyone (ank-server -c)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging("ank-planner", args.verbose)
    args.state_dir = str(Path(args.state_dir).resolve())
    # One writer per state: held for the planner's whole life.
    lock = DirLock(args.state_dir, "planner state directory")
    try:
        store.check_writable(args.state_dir)
        lock.acquire()
        durable = store.load(args.state_dir)
        bus = Bus(args.name, config=args.zenoh_config, server=args.server)
    except (store.StoreError, BusConfigError, Busy, OSError) as exc:
        print(f"ank-planner: {exc}", file=sys.stderr)
        return 2
    print(f"ank-planner: state in {args.state_dir}", file=sys.stderr, flush=True)
    loop = EventLoop()
    try:
        planner = Planner(bus, loop, args.state_dir, durable)
        if args.startup_manifest and not _apply_startup(planner, args.startup_manifest):
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.stop())
        planner.start()
        loop.run()
        log.info("planner stopped")
        return 0
    finally:
        loop.stop()
        bus.close()


def _apply_startup(planner: Planner, path: str) -> bool:
    """The startup manifest, applied before the queryables exist: no client
    ever sees the state without it (as Ankaios's server starts with it)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        print(f"ank-planner: cannot read startup manifest {path}: {exc.strerror}", file=sys.stderr)
        return False
    step = core.step(planner.state, ApplyRequest(manifest=text), planner.now_ms())
    result = _reply_of(step)
    if not result.ok:
        errors = "; ".join(f"{e.path}: {e.message}" for e in result.errors)
        print(f"ank-planner: startup manifest {path} rejected: {errors}", file=sys.stderr)
        return False
    return planner.commit(step) is None


if __name__ == "__main__":
    raise SystemExit(main())


def _since_param(params: str) -> int | None:
    """`since=<ms>` of a state query (anything else: None)."""
    for item in params.split(";"):
        name, _, value = item.partition("=")
        if name == "since" and value.isdigit() and len(value) <= 16:
            return int(value)
    return None
