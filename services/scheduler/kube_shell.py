"""`ank-scheduler --kubernetes`: binds pods whose spec.schedulerName is the
scheduler's (default `sdi-scheduler`) through the API server, with the same
framework and policies as native mode (decisions in services.scheduler.kube_core).

Every call to the API server goes through `KubeApi` (services.scheduler.kube_api;
the `kubernetes` client by default), so the shell is tested in memory too.

Threads: the pod watcher (it asks `kube_core.next_request` whether to list
or to watch, feeds what happened — the list's resourceVersion, each watch
line, the watch's end, a failed request — to `kube_core.watch_step` and
carries out its actions: deliver a pod to the loop, end the stream, pause;
the 410/backoff/re-list policy is there, not here), the event recorder
(Scheduled / FailedScheduling Events are not worth delaying a bind for), the
energy source (bus subscription or InfluxDB poller), the bind pool (at most
--bind-workers binds at once, so a slow API server does not serialise the
loop; the core keeps each pod's in-flight reservation until its bind's
outcome is back) and the loop thread, which alone calls `kube_core.step` and
lists nodes and the pods bound to them (cached for --node-cache-s).

A bind's answer is classified by the core (`classify_bind_answer`: only a 201
is a bind; a 409 by its Status message); any other exception — a client-side
ValueError included — is an error, retried with backoff. Unschedulable pods
get PodScheduled=False through pods/status; Events go to events.k8s.io/v1
(both from the writer thread, never delaying a bind).
With --leader-elect nothing of this starts before the Lease is held
(decisions in services.scheduler.kube_leader).
Configuration: in-cluster service account, falling back to --kubeconfig /
KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import queue
import random
import signal
import socket
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from ank_common.clock import SYSTEM_CLOCK, Clock
from schemas import keys
from schemas.messages import EnergyReport
from services.bus import Bus, BusConfigError
from services.bus.loop import EventLoop
from services.bus.protocol import BusLike
from services.bus.timers import WakeTimer
from services.scheduler import kube_leader
from services.scheduler.framework import EnergyReported, Tick
from services.scheduler.influx import InfluxConfigError, InfluxEnergySource, InfluxSettings, poll_until_stopped
from services.scheduler.kube_api import ClientKubeApi, KubeApi, KubeApiError, WatchStream
from services.scheduler.kube_core import (
    BOUND,
    ERROR,
    BindAnswered,
    BindPod,
    Decision,
    DeliverPod,
    EndWatch,
    KubeConfig,
    KubeEvent,
    KubeState,
    ListPods,
    NodesListed,
    Pause,
    PodBound,
    PodRef,
    PodsListed,
    PodUnschedulable,
    PodWatched,
    RequestFailed,
    WatchEnded,
    WatchEvent,
    WatchLine,
    WatchListed,
    WatchState,
    classify_bind_answer,
    event_body,
    next_request,
    next_wake_ms,
    nodes_due,
    pod_scheduled_patch,
    step,
    watch_step,
)
from services.scheduler.kube_leader import LeaderConfig, LeaderNow, LeaderState, LeaseRead, LeaseWritten, Releasing
from services.scheduler.options import shared_settings

log = logging.getLogger("ank.scheduler.kube")


class KubeSetupError(Exception):
    """No usable cluster configuration; the message says what was tried."""


def load_api_client(
    kubeconfig: str | None, *, service_account_dir: str | None = None, token_refresh_s: float | None = None
) -> tuple[Any, str]:
    """An ApiClient from the in-cluster service account (its mount directory
    `service_account_dir`, default /var/run/secrets/kubernetes.io/serviceaccount;
    the token is re-read every `token_refresh_s`, the client's default 60 s),
    else the kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config import incluster_config

    configuration = client.Configuration()
    try:
        if service_account_dir is None:
            loader = incluster_config.InClusterConfigLoader(
                token_filename=incluster_config.SERVICE_TOKEN_FILENAME,
                cert_filename=incluster_config.SERVICE_CERT_FILENAME,
            )
        else:
            loader = incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(service_account_dir, "token"),
                cert_filename=os.path.join(service_account_dir, "ca.crt"),
            )
        if token_refresh_s is not None:
            loader._token_refresh_period = dt.timedelta(seconds=token_refresh_s)
        loader.load_and_set(configuration)
        where = "in-cluster service account"
    except config.ConfigException as in_cluster:
        if service_account_dir is not None:
            raise KubeSetupError(f"service account {service_account_dir}: {in_cluster}") from in_cluster
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except Exception as exc:
            raise KubeSetupError(
                f"no cluster configuration: not in a cluster ({in_cluster}); kubeconfig "
                f"{kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}: {exc}"
            ) from exc
        where = f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}"
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
    return client.ApiClient(configuration), where


class KubeShell:
    """Connects the Kubernetes core (kube_core.step, watch_step) to the API
    server (`api`: a KubeApi; by default the `kubernetes` client on
    `api_client`). Core calls happen on the loop thread only."""

    def __init__(
        self,
        api_client: Any,
        core: KubeState,
        loop: EventLoop,
        *,
        api: KubeApi | None = None,
        clock: Clock = SYSTEM_CLOCK,
        watch_timeout_s: float = 60.0,
        request_timeout_s: float = 10.0,
        node_cache_s: float = 2.0,
        instance: str = "",
    ) -> None:
        self.api: KubeApi = api if api is not None else ClientKubeApi(api_client, request_timeout_s=request_timeout_s)
        self.core, self.loop, self.clock = core, loop, clock
        self.watch_timeout_s = watch_timeout_s
        self.node_cache_s = node_cache_s
        self.component = core.config.scheduler_name
        self.instance = instance or f"{self.component}-{socket.gethostname()}"
        self._stopping = threading.Event()
        self._writes: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max(1, core.config.max_binds_in_flight), thread_name_prefix="kube-bind")
        self._cycle_posted = False
        self._wake = WakeTimer(loop, self._cycle, clock.wall_ms, slack_s=0.001)
        self._nodes_read_at: float | None = None
        self._watch = WatchState()  # the watch thread's
        self._watch_stream: WatchStream | None = None
        self._watch_ended = False  # the last watch event ended the stream (EndWatch)
        self.bound = 0
        self.relists = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._spawn("pods", self._watch_pods)
        self._spawn("writer", self._write_loop)

    def stop(self) -> None:
        self._stopping.set()
        self._writes.put(None)
        stream = self._watch_stream
        if stream is not None:
            stream.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=1)  # daemon threads: a blocked read must not hold up the exit

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"kube-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the pod watcher (own thread; when to list or watch: kube_core.watch_step) --
    def _watch_pods(self) -> None:
        while not self._stopping.is_set():
            request = next_request(self._watch)
            try:
                if isinstance(request, ListPods):
                    pause = self._list_pods()
                else:
                    pause = self._watch_from(request.resource_version)
            except KubeApiError as exc:
                if exc.status == 410:
                    log.info("watch: resourceVersion %s expired (410 Gone); re-listing", self._watch.resource_version)
                else:
                    log.warning("watch pods: HTTP %s %s", exc.status, exc.message)
                pause = self._watch_event(RequestFailed(exc.status, str(exc), exc.retry_after_s))
            except Exception as exc:  # connection refused/reset, read timeout, bad JSON
                if self._stopping.is_set():
                    return
                log.warning("watch pods: %s: %s", type(exc).__name__, exc)
                pause = self._watch_event(RequestFailed(None, f"{type(exc).__name__}: {exc}"))
            if pause is not None:
                self._stopping.wait(pause.seconds)

    def _watch_event(self, event: WatchEvent) -> Pause | None:
        """Steps the watch policy; delivers pods; the pause it asks for, if any.
        An EndWatch is noted in `_watch_ended` for the reading loop."""
        decided = watch_step(self._watch, event, self.clock.wall_ms())
        self._watch = decided.state
        pause: Pause | None = None
        self._watch_ended = False
        for action in decided.actions:
            if isinstance(action, DeliverPod):
                self.loop.post(self._pod_event, action.kind, action.pod)
            elif isinstance(action, EndWatch):
                log.info("watch: %s", action.why)
                self._watch_ended = True
            elif isinstance(action, Pause):
                pause = action
            else:
                log.warning("watch: ignoring a malformed line: %.200s", action.line)
        return pause

    def _list_pods(self) -> Pause | None:
        items, version = self.api.list_pending_pods(self.component)
        self.relists += 1
        log.info("listed %d pending pod(s) for %s", len(items), self.component)
        self.loop.post(self._relisted, items)
        return self._watch_event(WatchListed(version))

    def _watch_from(self, resource_version: str) -> Pause | None:
        stream = self.api.watch_pending_pods(self.component, resource_version, self.watch_timeout_s)
        self._watch_stream = stream
        try:
            for line in stream.lines():
                if self._stopping.is_set():
                    return None
                pause = self._watch_event(WatchLine(line))
                if self._watch_ended:
                    return pause  # the stream is closed before the pause
        finally:
            self._watch_stream = None
            stream.close()
        return self._watch_event(WatchEnded())

    # -- loop thread -------------------------------------------------------
    def _relisted(self, items: list[dict[str, Any]]) -> None:
        self._step(PodsListed(items))
        self._want_cycle()

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        self._step(PodWatched(kind, pod))
        self._want_cycle()

    def listen_energy(self, bus: BusLike) -> None:
        """Energy from the bus: `ank/energy/<robot>` (a report naming another
        robot than its key is dropped by the bus itself: `checks.disagreement`)."""
        bus.subscribe(keys.ALL_ENERGY, EnergyReport, lambda _key, report: self.on_energy([report]))

    def on_energy(self, reports: list[EnergyReport]) -> None:
        """From any thread. A poll's reports arrive together: no cycle runs on half of them."""
        self.loop.post(self._energy, reports)

    def _energy(self, reports: list[EnergyReport]) -> None:
        now = self.clock.wall_ms()
        for report in reports:
            self._step(EnergyReported(report), now)
        self._want_cycle()

    def _want_cycle(self) -> None:
        # Coalesce: a burst of watch events makes one cycle, not one per event.
        if not self._cycle_posted:
            self._cycle_posted = True
            self.loop.post(self._cycle)

    def _cycle(self) -> None:
        self._cycle_posted = False
        now = self.clock.monotonic()
        age = None if self._nodes_read_at is None else now - self._nodes_read_at
        if nodes_due(self.core, age, self.node_cache_s):
            self._refresh_nodes(now)
        self._execute(self._step(Tick()))
        self._wake.arm(next_wake_ms(self.core))

    def _step(self, event: KubeEvent, now_ms: int | None = None) -> list[Decision]:
        decided = step(self.core, event, self.clock.wall_ms() if now_ms is None else now_ms)
        self.core = decided.state
        return decided.actions

    def _execute(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, BindPod):
                self._bind(decision)
            elif isinstance(decision, PodBound):
                self.bound += 1
                log.info("bind %s -> %s: %s", decision.pod.key, decision.placement.node, decision.placement.reason)
                self._record(decision.pod, "Scheduled", decision.message)
            else:
                self._unschedulable(decision)

    def _refresh_nodes(self, now: float) -> None:
        try:
            nodes = self.api.list_nodes()
            assigned = self.api.list_assigned_pods()
        except Exception as exc:
            log.warning("listing nodes and bound pods failed: %s", exc)
            return
        self._nodes_read_at = now
        self._step(NodesListed(nodes, assigned))

    def _bind(self, decision: BindPod) -> None:
        """Hands the bind to the pool; its outcome comes back to the loop thread."""
        try:
            self._pool.submit(self._bind_in_pool, decision)
        except RuntimeError:  # the pool is shut down: we are stopping
            self._step(BindAnswered(decision.pod, ERROR, "stopping"))

    def _bind_in_pool(self, decision: BindPod) -> None:
        outcome, detail = self.bind_outcome(decision.pod, decision.placement.node)
        self.loop.post(self._bind_done, decision, outcome, detail)

    def bind_outcome(self, pod: PodRef, node: str) -> tuple[str, str]:
        """POST pods/binding (any thread): the outcome and, unless bound, why."""
        try:
            status = self.api.bind(pod, node)
        except KubeApiError as exc:
            return classify_bind_answer(exc.status, exc.message)
        except Exception as exc:  # client-side: timeouts, connection errors, ValueError from the client
            return ERROR, f"{type(exc).__name__}: {exc}"
        return classify_bind_answer(status)

    def _bind_done(self, decision: BindPod, outcome: str, detail: str) -> None:
        pod, placement = decision.pod, decision.placement
        if outcome != BOUND:
            log.info("bind %s -> %s: %s (%s)", pod.key, placement.node, outcome, detail)
        self._execute(self._step(BindAnswered(pod, outcome, detail)))
        self._want_cycle()  # a place in the bind pool is free again

    def _unschedulable(self, failure: PodUnschedulable) -> None:
        log.info("%s %s: %s", failure.reason, failure.pod.key, failure.message)
        if failure.records_event:
            self._record(failure.pod, "FailedScheduling", failure.message, warning=True)
        self._writes.put(
            ("status", (failure.pod, pod_scheduled_patch(failure.reason, failure.message, self.clock.wall_ms())))
        )

    def _record(self, pod: PodRef, reason: str, message: str, *, warning: bool = False) -> None:
        body = event_body(
            pod,
            reason,
            message,
            warning=warning,
            component=self.component,
            now_ms=self.clock.wall_ms(),
            instance=self.instance,
        )
        self._writes.put(("event", body))

    # -- the writer: events and pod conditions (own thread) ---------------------
    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            what, payload = item
            try:
                if what == "event":
                    self.api.create_event(payload)
                else:
                    pod, patch = payload
                    self.api.patch_pod_status(pod, patch)
            except Exception as exc:
                log.warning("writing %s failed: %s", what, exc)


class LeaseKeeper:
    """The I/O of leader election (decisions in kube_leader.step): reads
    and writes the Lease every retry period from its own thread."""

    def __init__(
        self,
        api_client: Any,
        state: LeaderState,
        *,
        request_timeout_s: float,
        clock: Clock = SYSTEM_CLOCK,
        api: KubeApi | None = None,
    ) -> None:
        self.api: KubeApi = api if api is not None else ClientKubeApi(api_client, request_timeout_s=request_timeout_s)
        self.state, self.clock = state, clock
        self.config = state.config

    def _now(self) -> LeaderNow:
        return LeaderNow(self.clock.monotonic(), self.clock.wall_ms())

    def _read(self) -> dict[str, Any] | None:
        return self.api.read_lease(self.config.namespace, self.config.name)

    def _write(self, write: kube_leader.WriteLease) -> bool:
        return self.api.write_lease(self.config.namespace, self.config.name, write.body, create=write.create)

    def attempt(self) -> None:
        decided = kube_leader.step(self.state, LeaseRead(self._read()), self._now())
        self.state = decided.state
        for write in decided.actions:
            self.state = kube_leader.step(self.state, LeaseWritten(self._write(write)), self._now()).state

    def run(self, started: Any, lost: Any, stopping: threading.Event) -> None:
        announced = False
        while not stopping.is_set():
            try:
                self.attempt()
            except Exception as exc:
                log.warning("leader election: %s: %s", type(exc).__name__, exc)
            if kube_leader.lost(self.state, self.clock.monotonic()):
                log.error(
                    "leader election lost: no renewal of lease %s for %.0f s",
                    self.config.name,
                    self.config.renew_deadline_s,
                )
                lost()
                return
            if self.state.leading and not announced:
                announced = True
                log.info(
                    "leader election: %s holds lease %s/%s",
                    self.config.identity,
                    self.config.namespace,
                    self.config.name,
                )
                started()
            stopping.wait(kube_leader.retry_delay_s(self.state, random.random()))

    def release(self) -> None:
        try:
            for write in kube_leader.step(self.state, Releasing(self._read()), self._now()).actions:
                self._write(write)
        except Exception as exc:
            log.warning("releasing the lease failed: %s", exc)


def add_kube_arguments(p: argparse.ArgumentParser) -> None:
    """Kubernetes mode's options beyond the basic ones in shell.py."""
    p.add_argument("--bind-workers", type=int, default=16, help="Kubernetes: binds under way at once")
    p.add_argument(
        "--service-account-dir",
        default=None,
        help="Kubernetes: the service-account mount (token, ca.crt; default the in-cluster one)",
    )
    p.add_argument("--token-refresh-s", type=float, default=None, help="Kubernetes: re-read the token this often")
    p.add_argument("--leader-elect", action="store_true", help="Kubernetes: act only while holding the Lease")
    p.add_argument("--leader-elect-lease-duration-s", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline-s", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period-s", type=float, default=2.0)
    p.add_argument("--leader-elect-resource-name", default="", help="Lease name (default: the scheduler name)")
    p.add_argument("--leader-elect-resource-namespace", default="kube-system")
    p.add_argument("--leader-elect-identity", default="", help="holderIdentity (default: hostname_<random>)")


def check_kube_options(args: argparse.Namespace) -> None:
    """ValueError naming the first nonsensical Kubernetes option."""
    if not args.request_timeout_s > 0 or args.request_timeout_s == float("inf"):
        raise ValueError(f"--request-timeout-s must be a positive number of seconds, got {args.request_timeout_s}")
    if not args.watch_timeout_s >= 1 or args.watch_timeout_s == float("inf"):
        raise ValueError(f"--watch-timeout-s must be at least 1 s, got {args.watch_timeout_s}")
    if not args.node_cache_s >= 0 or args.node_cache_s == float("inf"):
        raise ValueError(f"--node-cache-s must not be negative, got {args.node_cache_s}")
    if not 1 <= args.bind_workers <= 256:
        raise ValueError(f"--bind-workers must be 1..256, got {args.bind_workers}")
    if args.token_refresh_s is not None and not args.token_refresh_s > 0:
        raise ValueError(f"--token-refresh-s must be positive, got {args.token_refresh_s}")
    if args.leader_elect:
        lease = args.leader_elect_lease_duration_s
        renew = args.leader_elect_renew_deadline_s
        retry = args.leader_elect_retry_period_s
        if not (0 < retry < renew < lease) or lease == float("inf"):
            # kube-scheduler's rule: leaseDuration > renewDeadline > retryPeriod (x JitterFactor 1.2)
            raise ValueError(
                "--leader-elect-*: need lease-duration > renew-deadline > retry-period > 0, "
                f"got {lease}, {renew}, {retry}"
            )


def kube_config(args: argparse.Namespace, energy_source: str) -> KubeConfig:
    shared = shared_settings(args)  # the options both modes share
    if not args.scheduler_name:
        raise ValueError("--scheduler-name must not be empty")
    check_kube_options(args)
    return KubeConfig(
        **shared,
        scheduler_name=args.scheduler_name,
        arch=args.arch,
        arch_label=args.arch_label,
        bot_label=args.bot_label,
        require_energy=energy_source != "none" and not args.allow_unmetered,
        max_binds_in_flight=args.bind_workers,
    )


def run_kubernetes(args: argparse.Namespace) -> int:
    energy_source = args.energy_source or ("influx" if os.environ.get("INFLUX_URL") else "bus")
    try:
        config = kube_config(args, energy_source)
        influx = InfluxEnergySource(InfluxSettings.from_env(os.environ)) if energy_source == "influx" else None
        api_client, where = load_api_client(
            args.kubeconfig, service_account_dir=args.service_account_dir, token_refresh_s=args.token_refresh_s
        )
        bus = Bus(args.name, config=args.zenoh_config, server=args.server) if energy_source == "bus" else None
    except (ValueError, InfluxConfigError, KubeSetupError, BusConfigError) as exc:
        print(f"ank-scheduler: {exc}", file=sys.stderr)
        return 2
    loop = EventLoop()
    identity = args.leader_elect_identity or f"{socket.gethostname()}_{uuid.uuid4()}"
    shell = KubeShell(
        api_client,
        KubeState(config),
        loop,
        watch_timeout_s=args.watch_timeout_s,
        request_timeout_s=args.request_timeout_s,
        node_cache_s=args.node_cache_s,
        instance=identity,
    )
    stopping = threading.Event()
    exit_code = [0]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        loop.stop()

    def on_lost() -> None:
        exit_code[0] = 1
        stopping.set()
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    keeper: LeaseKeeper | None = None
    if args.leader_elect:
        keeper = LeaseKeeper(
            api_client,
            LeaderState(
                LeaderConfig(
                    identity=identity,
                    name=args.leader_elect_resource_name or config.scheduler_name,
                    namespace=args.leader_elect_resource_namespace,
                    lease_duration_s=args.leader_elect_lease_duration_s,
                    renew_deadline_s=args.leader_elect_renew_deadline_s,
                    retry_period_s=args.leader_elect_retry_period_s,
                )
            ),
            request_timeout_s=args.request_timeout_s,
        )
    try:
        if bus is not None:
            shell.listen_energy(bus)
        if influx is not None:
            threading.Thread(
                target=poll_until_stopped,
                args=(influx, shell.on_energy, stopping, args.influx_interval_s, SYSTEM_CLOCK.wall_ms),
                daemon=True,
            ).start()
        if keeper is None:
            shell.start()
        else:
            threading.Thread(
                target=keeper.run,
                args=(lambda: loop.post(shell.start), on_lost, stopping),
                name="kube-leader",
                daemon=True,
            ).start()
        log.info(
            "=== SDI Scheduler (MALE) started: pods with schedulerName=%s, arch=%s, energy from %s, %s%s ===",
            config.scheduler_name,
            config.arch or "any",
            energy_source,
            where,
            f", leader election as {identity}" if keeper is not None else "",
        )
        loop.run()
    finally:
        stopping.set()
        shell.stop()
        if keeper is not None and exit_code[0] == 0 and keeper.state.leading:
            keeper.release()
        if bus is not None:
            bus.close()
        api_client.close()
    return exit_code[0]
