"""`ank-scheduler`: the scheduler's shell. Native mode (default) places
workloads over the bus; `--kubernetes` binds pods (services.scheduler.kube_core).

Native mode wiring (decisions are all in services.scheduler.core; each
input is an event given to its `step`):

    ank/cmd/state (query)          -> DesiredStateRead   (services.bus.follow: at start,
                                                           on ank/desired, on Requery,
                                                           and every --resync-s)
    ank/state/**                   -> WorkloadStateSeen
    liveliness ank/agents/*        -> AgentLiveliness
    ank/agents/*/status            -> AgentStatusSeen
    ank/energy/**                  -> EnergyReported
    timer (next_wake_ms)           -> Tick
    actions: Binding -> ank/bind/<wl>; events -> ank/events/<kind>
    queryable ank/bind/*           <- the current bindings (for a restarted planner)

With `--influx` (settings from INFLUX_* env) a poller thread reads InfluxDB
every `--influx-interval-s` and publishes the reports on ank/energy/<bot>.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ank_common.clock import SYSTEM_CLOCK, Clock
from ank_common.logsetup import setup_logging
from schemas import keys
from schemas.liveliness import AgentLiveliness
from schemas.messages import AgentStatus, Binding, EnergyReport, WorkloadState
from services.bus import Bus, BusConfigError
from services.bus.follow import DesiredStateFollower
from services.bus.loop import EventLoop
from services.bus.protocol import BusLike
from services.bus.timers import WakeTimer
from services.scheduler.core import (
    Action,
    AgentStatusSeen,
    DesiredStateRead,
    NativeConfig,
    NativeEvent,
    NativeState,
    PublishBinding,
    PublishEvent,
    Requery,
    WorkloadStateSeen,
    bindings,
    next_wake_ms,
    step,
)
from services.scheduler.framework import EnergyReported, Tick
from services.scheduler.influx import InfluxConfigError, InfluxEnergySource, InfluxSettings, poll_until_stopped
from services.scheduler.options import shared_settings

log = logging.getLogger("ank.scheduler")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ank-scheduler", description="ank-zenoh's energy-aware scheduler")
    p.add_argument("--zenoh-config", default=None, help="Zenoh configuration file (default: zenoh.json5)")
    p.add_argument("--server", default=None, help="router endpoint host:port (env ANK_SERVER)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--name", default="scheduler", help="sender name on the bus")
    p.add_argument("--kubernetes", action="store_true", help="bind Kubernetes pods instead of bus workloads")
    p.add_argument("--max-energy-age-s", type=float, default=30.0, help="an older energy report is stale")
    p.add_argument("--energy-cost-wh", type=float, default=1.0, help="default in-flight energy cost of a placement")
    p.add_argument("--in-flight-s", type=float, default=30.0, help="how long a placement counts as in flight")
    p.add_argument("--hysteresis-wh", type=float, default=2.0, help="re-place only below reserve minus this")
    p.add_argument("--min-dwell-s", type=float, default=10.0, help="never re-place for energy sooner than this")
    p.add_argument("--backoff-initial-s", type=float, default=1.0)
    p.add_argument("--backoff-max-s", type=float, default=10.0)
    p.add_argument("--allow-unmetered", action="store_true", help="nodes with no energy report at all are candidates")
    p.add_argument("--resync-s", type=float, default=10.0, help="re-read the desired state this often")
    p.add_argument("--influx", action="store_true", help="poll InfluxDB (INFLUX_* env) into ank/energy/<bot>")
    p.add_argument("--influx-interval-s", type=float, default=5.0)
    # Kubernetes mode
    p.add_argument("--scheduler-name", default="sdi-scheduler", help="pods with this spec.schedulerName")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig when not running in a cluster")
    p.add_argument("--arch", default="arm64", help="required node arch ('' for any)")
    p.add_argument("--arch-label", default="kubernetes.io/arch")
    p.add_argument("--bot-label", default="", help="node label naming its robot (default: the node name)")
    p.add_argument(
        "--energy-source",
        choices=("bus", "influx", "none"),
        default=None,
        help="Kubernetes mode: where node energy comes from (default: influx if INFLUX_URL is set, else bus)",
    )
    p.add_argument("--watch-timeout-s", type=float, default=60.0, help="Kubernetes watch: server-side timeout")
    p.add_argument("--request-timeout-s", type=float, default=10.0, help="Kubernetes API: client-side timeout")
    p.add_argument("--node-cache-s", type=float, default=2.0, help="Kubernetes: re-list nodes at most this often")
    from services.scheduler.kube_shell import add_kube_arguments

    add_kube_arguments(p)
    return p


def native_config(args: argparse.Namespace) -> NativeConfig:
    shared = shared_settings(args)  # the options both modes share
    for name in ("min_dwell_s", "hysteresis_wh"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    return NativeConfig(
        **shared,
        hysteresis_wh=args.hysteresis_wh,
        min_dwell_ms=int(args.min_dwell_s * 1000),
        require_energy=not args.allow_unmetered,
    )


class NativeShell:
    """Connects the native scheduler's core to the bus. Core calls happen on the loop thread only."""

    def __init__(
        self, bus: BusLike, loop: EventLoop, core: NativeState, *, clock: Clock = SYSTEM_CLOCK, resync_s: float = 10.0
    ) -> None:
        self.bus, self.loop, self.core, self.clock = bus, loop, core, clock
        self.resync_s = resync_s
        # wall-clock times (the core's), counted in whole ms: 1 ms of slack so that the tick finds its work due
        self._wake = WakeTimer(loop, self._tick, clock.wall_ms, slack_s=0.001)
        self.desired = DesiredStateFollower(
            bus, loop, lambda complete: self._step(DesiredStateRead(complete)), clock=clock, refresh_s=resync_s, log=log
        )
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- wiring ------------------------------------------------------------
    def start(self) -> None:
        b = self.bus
        b.queryable(keys.BINDINGS, self._answer_bindings)
        b.subscribe(keys.STATES, WorkloadState, lambda k, m: self._post(WorkloadStateSeen, m))
        b.subscribe(keys.AGENT_STATUSES, AgentStatus, lambda k, m: self._post(AgentStatusSeen, m))
        # a report naming another node than its key is dropped by the bus (checks.disagreement)
        b.subscribe(keys.ALL_ENERGY, EnergyReport, lambda k, m: self._post(EnergyReported, m))
        b.watch_liveliness(keys.AGENT_TOKENS, self._on_liveliness)
        self.desired.start()

    def stop(self) -> None:
        self._stopping.set()
        self.desired.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"scheduler-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- inputs (Zenoh threads: only post) --------------------------------
    def _post(self, event: Callable[[Any], NativeEvent], msg: Any) -> None:
        self.loop.post(self._call, event, msg)

    def _on_liveliness(self, key: str, alive: bool) -> None:
        agent = keys.parse_agent_token_key(key)
        if agent is None:
            return
        self.loop.post(self._call_agent, agent, alive)

    def _answer_bindings(self, key: str, payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        # Runs on a Zenoh thread: the core belongs to the loop thread, so ask it there (bounded wait).
        done = threading.Event()
        snapshot: list[Binding] = []

        def read() -> None:
            snapshot.extend(bindings(self.core))
            done.set()

        self.loop.post(read)
        if not done.wait(timeout=1.0):
            raise TimeoutError("the scheduler's loop did not answer within 1 s")
        return [(keys.bind_key(b.workload), self.bus.encode(b)) for b in snapshot]

    # -- loop thread -------------------------------------------------------
    def _call(self, event: Callable[[Any], NativeEvent], msg: Any) -> None:
        self._step(event(msg))

    def _call_agent(self, agent: str, alive: bool) -> None:
        log.info("agent %s %s", agent, "alive" if alive else "lost")
        self._step(AgentLiveliness(agent, alive))

    def _tick(self) -> None:
        self._step(Tick())

    def _step(self, event: NativeEvent) -> None:
        decided = step(self.core, event, self.clock.wall_ms())
        self.core = decided.state
        self._execute(decided.actions)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                if isinstance(action, PublishBinding):
                    b = action.binding
                    log.info("bind %s -> %s (%s, score %.1f): %s", b.workload, b.agent, b.policy, b.score, b.reason)
                    self.bus.put(keys.bind_key(b.workload), b)
                elif isinstance(action, PublishEvent):
                    log.info("%s %s: %s", action.kind, action.subject, action.message)
                    self.bus.event(action.kind, action.message, subject=action.subject, severity=action.severity)
                elif isinstance(action, Requery):
                    self.desired.refresh(action.reason)
            except Exception:
                log.exception("could not carry out %r", action)
        self._wake.arm(next_wake_ms(self.core))

    # -- InfluxDB ----------------------------------------------------------
    def start_influx(self, source: InfluxEnergySource, interval_s: float) -> None:
        def publish(reports: list[EnergyReport]) -> None:
            for report in reports:
                self.bus.put(keys.energy_key(report.node), report, reliable=False)

        self._spawn(
            "influx", lambda: poll_until_stopped(source, publish, self._stopping, interval_s, self.clock.wall_ms)
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("ank-scheduler", args.verbose)
    if args.kubernetes:
        from services.scheduler.kube_shell import run_kubernetes

        return run_kubernetes(args)
    try:
        config = native_config(args)
        influx = InfluxEnergySource(InfluxSettings.from_env(os.environ)) if args.influx else None
    except (ValueError, InfluxConfigError) as exc:
        print(f"ank-scheduler: {exc}", file=sys.stderr)
        return 2
    try:
        bus = Bus(args.name, config=args.zenoh_config, server=args.server)
    except BusConfigError as exc:
        print(f"ank-scheduler: {exc}", file=sys.stderr)
        return 2
    loop = EventLoop()
    shell = NativeShell(bus, loop, NativeState(config), resync_s=args.resync_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        shell.start()
        if influx is not None:
            shell.start_influx(influx, args.influx_interval_s)
        log.info("ank-scheduler (native) started: policies MALE, round-robin, random")
        loop.run()
    finally:
        shell.stop()
        bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
