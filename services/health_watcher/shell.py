"""`ank-health-watcher`: runs the health checks of the manifest's workloads
and publishes their verdicts on `ank/health/<agent>/<workload>`.

The shell around services.health_watcher.core: it learns the desired state
through services.bus.follow.DesiredStateFollower (`ank/cmd/state` at start,
shortly after each put on `ank/desired`, when a state names a workload it has
not seen in the desired state, and every few seconds in case it missed one),
follows `ank/state/**`,
runs the probes the core asks for on a small thread pool and feeds their
results back through the event loop. It answers queries on `ank/health/**`
with its current verdicts, for late joiners.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import signal
import sys
from collections.abc import Callable

import msgspec
import zenoh

from ank_common.clock import SYSTEM_CLOCK, Clock
from ank_common.logsetup import setup_logging
from schemas import keys
from schemas.messages import CompleteState, HealthReport, WorkloadState
from services.bus import Bus, BusConfigError
from services.bus.follow import DesiredStateFollower
from services.bus.loop import EventLoop
from services.bus.protocol import BusLike
from services.bus.timers import WakeTimer
from services.health_watcher import core
from services.health_watcher.probes import ProbeContext, run_probe

log = logging.getLogger("ank.health")

REFRESH_S = 5.0  # the periodic desired-state query, in case a put on ank/desired was missed
UNKNOWN_WORKLOAD_REFRESH_S = 1.0  # at most this often because of states of workloads not in the desired state


class HealthWatcher:
    """The shell's state: one core state, touched only on the loop thread."""

    def __init__(
        self,
        bus: BusLike,
        loop: EventLoop,
        *,
        agent: str | None = None,
        context: ProbeContext | None = None,
        clock: Clock = SYSTEM_CLOCK,
        workers: int = 4,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.bus = bus
        self.loop = loop
        self.agent = agent
        self.clock = clock
        self.context = context or ProbeContext()
        self.refresh_s = refresh_s
        self.state = core.initial_state(agent, podman_health=self.context.podman is not None)
        self._probes = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        # The follower queries on a thread of its own: slow probes must not delay learning the desired state.
        # At start it also asks the agents for their states (a late joiner).
        self.desired = DesiredStateFollower(
            bus,
            loop,
            self._on_desired,
            clock=clock,
            refresh_s=refresh_s,
            states_at_start=keys.state_key(agent, "*") if agent else keys.STATES,
            no_answer_level=logging.DEBUG,  # a watcher without a planner has nothing to watch: not worth a warning
            log=log,
        )
        self._desired_names: set[str] = set()
        self._wake = WakeTimer(loop, self._on_wake, self._now_ms)
        self._zenoh_keys: set[str] = set()
        # key -> the exact payload last published; replaced whole (never mutated) so
        # that the queryable, on a Zenoh thread, can read it without a lock.
        self._published: dict[str, bytes] = {}

    # -- wiring -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        states = keys.state_key(self.agent, "*") if self.agent else keys.STATES
        self.bus.subscribe(states, WorkloadState, lambda _key, ws: self.loop.post(self._on_state, ws))
        health = keys.agent_health(self.agent) if self.agent else keys.HEALTH
        self.bus.queryable(health, self._answer_health_query)
        self.desired.start()
        log.info("watching %s", f"agent {self.agent}" if self.agent else "all agents")

    def close(self) -> None:
        self.desired.stop()
        self.context.close()
        self._probes.shutdown(wait=False, cancel_futures=True)

    def _now_ms(self) -> int:
        return int(self.clock.monotonic() * 1000)

    # -- the core's steps -------------------------------------------------------------------------------------------
    def _apply(self, step: core.Step) -> None:
        self.state = step.state
        for action in step.actions:
            if isinstance(action, core.StartProbe):
                self._start_probe(action)
            elif isinstance(action, core.PublishReport):
                self._publish(action.report)
            else:
                log.log(logging.WARNING if action.level == "warning" else logging.INFO, "%s", action.message)
        self._forget_ended_reports()
        self._wake.arm(core.next_due_ms(self.state))

    def _on_wake(self) -> None:
        self._apply(core.step(self.state, core.ProbesDue(), self._now_ms()))

    def _on_state(self, ws: WorkloadState) -> None:
        self._apply(core.step(self.state, core.StateObserved(ws), self._now_ms()))
        if ws.workload not in self._desired_names and ws.execution_state.state == "Running":
            self.desired.refresh(f"{ws.workload} is Running", min_gap_s=UNKNOWN_WORKLOAD_REFRESH_S)

    # -- desired state ----------------------------------------------------------------------------------------------
    def _on_desired(self, complete: CompleteState) -> None:
        """The follower's answer (loop thread): the desired state and the states known with it."""
        now = self._now_ms()
        names = set(complete.desired.workloads)
        if names != self._desired_names:
            log.info("desired state: %d workloads", len(names))
        self._desired_names = names
        self._apply(core.step(self.state, core.DesiredChanged(complete.desired), now))
        self._watch_zenoh_keys()
        for ws in complete.workload_states:
            self._apply(core.step(self.state, core.StateObserved(ws, snapshot=True), now))

    def _watch_zenoh_keys(self) -> None:
        # Subscribers stay declared until the bus closes: Bus has no way to
        # undeclare one, and a check's key expressions are few.
        for key_expr in sorted(core.zenoh_keys(self.state) - self._zenoh_keys):
            self._zenoh_keys.add(key_expr)
            try:
                self.bus.subscribe_raw(key_expr, self._touch(key_expr))
                log.info("following zenoh key %s for freshness checks", key_expr)
            except Exception as exc:
                log.warning("cannot subscribe to %s: %s", key_expr, exc)

    def _touch(self, key_expr: str) -> Callable[[str, bytes], None]:
        freshness = self.context.freshness
        return lambda _key, _payload: freshness.touch(key_expr)

    # -- probes -----------------------------------------------------------------------------------------------------
    def _start_probe(self, request: core.StartProbe) -> None:
        try:
            future = self._probes.submit(run_probe, request, self.context)
        except RuntimeError:  # shutting down
            return
        future.add_done_callback(lambda f: self.loop.post(self._on_probe_done, request, f))

    def _on_probe_done(self, request: core.StartProbe, future: concurrent.futures.Future[core.ProbeResult]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            result = future.result()
        else:  # run_probe does not raise; should it, the series must still go on
            result = core.ProbeResult(request.series_id, request.workload, ok=False, error=str(error))
        self._apply(core.step(self.state, result, self._now_ms()))

    # -- reports ----------------------------------------------------------------------------------------------------
    def _publish(self, report: HealthReport) -> None:
        key = keys.health_key(report.agent, report.workload)
        try:
            payload = self.bus.encode(msgspec.structs.replace(report, time_ms=self.clock.wall_ms()))
            self.bus.put(key, payload)
        except Exception as exc:
            log.warning("could not publish %s: %s", key, exc)
            return
        self._published = {**self._published, key: payload}

    def _forget_ended_reports(self) -> None:
        live = {keys.health_key(s.agent, s.workload) for s in self.state.series.values() if not s.inert}
        if set(self._published) - live:
            self._published = {k: v for k, v in self._published.items() if k in live}

    def _answer_health_query(self, key: str, _payload: bytes | None, _parameters: str) -> list[tuple[str, bytes]]:
        asked = zenoh.KeyExpr(key)
        return [(k, v) for k, v in self._published.items() if asked.intersects(zenoh.KeyExpr(k))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ank-health-watcher", description=__doc__)
    parser.add_argument("--agent", help="watch only this agent's workloads (default: all)")
    parser.add_argument("--zenoh-config", help="Zenoh configuration (json5; default zenoh.json5)")
    parser.add_argument("--server", help="router endpoint host:port (replaces the config's; env ANK_SERVER)")
    parser.add_argument("--workers", type=int, default=4, help="probes run at once (default 4)")
    parser.add_argument("--refresh", type=float, default=REFRESH_S, help="seconds between desired-state queries")
    parser.add_argument("--no-podman", action="store_true", help="do not use podman even where it is installed")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging("ank-health-watcher", args.verbose)
    if args.workers < 1 or args.refresh <= 0:
        print("ank-health-watcher: --workers must be at least 1 and --refresh positive", file=sys.stderr)
        return 2
    name = f"health-watcher-{args.agent}" if args.agent else "health-watcher"
    try:
        bus = Bus(name, config=args.zenoh_config, server=args.server)
    except BusConfigError as exc:
        print(f"ank-health-watcher: {exc}", file=sys.stderr)
        return 2
    loop = EventLoop()
    podman = None if args.no_podman else ProbeContext.find_podman()
    if podman is None:
        log.info("podman not found: podman HEALTHCHECK status is not reported")
    watcher = HealthWatcher(
        bus, loop, agent=args.agent, context=ProbeContext(podman=podman), workers=args.workers, refresh_s=args.refresh
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop())
    try:
        watcher.start()
        loop.run()
    finally:
        watcher.close()
        bus.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
