"""`ank-scheduler --kubernetes`: binds pods whose spec.schedulerName is the
scheduler's (default `sdi-scheduler`) through the API server, with the same
framework and policies as native mode (decisions in services.scheduler.kube).

Threads: the pod watcher (list, then watch from the list's resourceVersion;
a 410 Gone — as an HTTP status or as an ERROR watch event — means re-list;
every request has a client-side timeout so a dead connection cannot hang it),
the event recorder (Scheduled / FailedScheduling Events are not worth
delaying a bind for), the energy source (bus subscription or InfluxDB
poller) and the loop thread, which alone calls the core, lists nodes (cached
for --node-cache-s) and binds.

Binding goes through pods/binding with `_preload_content=False`: the API
answers 201 with a Status, which the client would try to read as a Binding
and fail on (ValueError); a ValueError from the client is still taken as
bound. 409 Conflict means the pod is already bound: not an error.
Configuration: in-cluster service account, falling back to --kubeconfig /
KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
from types import FrameType
from typing import Any

from schemas.messages import EnergyReport
from services.bus import Bus, BusConfigError
from services.bus.loop import EventLoop
from services.clock import SYSTEM_CLOCK, Clock
from services.scheduler.influx import InfluxConfigError, InfluxEnergySource, InfluxSettings, poll_until_stopped
from services.scheduler.kube import (
    BindPod,
    KubeConfig,
    KubeScheduler,
    PodRef,
    PodUnschedulable,
    binding_body,
    event_body,
)

log = logging.getLogger("ank.scheduler.kube")


class KubeSetupError(Exception):
    """No usable cluster configuration; the message says what was tried."""


def load_api_client(kubeconfig: str | None) -> tuple[Any, str]:
    """An ApiClient from the in-cluster service account, else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        where = "in-cluster service account"
    except config.ConfigException as in_cluster:
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except Exception as exc:
            raise KubeSetupError(
                f"no cluster configuration: not in a cluster ({in_cluster}); kubeconfig "
                f"{kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}: {exc}"
            ) from exc
        where = f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}"
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 8)
    return client.ApiClient(configuration), where


class KubeShell:
    def __init__(
        self,
        api_client: Any,
        core: KubeScheduler,
        loop: EventLoop,
        *,
        clock: Clock = SYSTEM_CLOCK,
        watch_timeout_s: float = 60.0,
        request_timeout_s: float = 10.0,
        node_cache_s: float = 2.0,
    ) -> None:
        from kubernetes import client

        # Any: the replies are raw urllib3 responses (_preload_content=False), not the typed models.
        self.api: Any = client.CoreV1Api(api_client)
        self.core, self.loop, self.clock = core, loop, clock
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.node_cache_s = node_cache_s
        self.component = core.config.scheduler_name
        self._stopping = threading.Event()
        self._events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._cycle_posted = False
        self._armed_ms: int | None = None
        self._nodes_read_at: float | None = None
        self._watch_response: Any = None
        self.bound = 0
        self.relists = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._spawn("pods", self._watch_pods)
        self._spawn("events", self._record_events)

    def stop(self) -> None:
        self._stopping.set()
        self._events.put(None)
        response = self._watch_response
        if response is not None:
            try:
                response.shutdown() if hasattr(response, "shutdown") else response.close()
            except Exception:
                pass
        for thread in self._threads:
            thread.join(timeout=1)  # daemon threads: a blocked read must not hold up the exit

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"kube-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the pod watcher (own thread) -----------------------------------------
    def _field_selector(self) -> str:
        return f"spec.schedulerName={self.component},spec.nodeName="

    def _watch_pods(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        resource_version: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_pods()
                response = self.api.list_pod_for_all_namespaces(
                    field_selector=self._field_selector(),
                    watch=True,
                    resource_version=resource_version,
                    timeout_seconds=max(1, int(self.watch_timeout_s)),
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                    _request_timeout=(self.request_timeout_s, self.watch_timeout_s + self.request_timeout_s),
                )
                self._watch_response = response
                try:
                    for line in iter_resp_lines(response):
                        if self._stopping.is_set():
                            return
                        resource_version = self._on_watch_line(line, resource_version)
                        if resource_version is None:
                            break  # 410 Gone: re-list
                finally:
                    self._watch_response = None
                    response.close()
                    response.release_conn()
                failures = 0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch: resourceVersion %s expired (410 Gone); re-listing", resource_version)
                    resource_version = None
                    continue
                failures += 1
                log.warning("watch pods: HTTP %s %s", exc.status, exc.reason)
            except Exception as exc:  # connection refused/reset, read timeout, bad JSON
                if self._stopping.is_set():
                    return
                failures += 1
                log.warning("watch pods: %s: %s", type(exc).__name__, exc)
                if failures >= 3:
                    resource_version = None  # the watch keeps failing: start again from a list
            if failures:
                self._stopping.wait(min(10.0, 0.5 * 2 ** min(failures - 1, 5)))

    def _list_pods(self) -> str:
        response = self.api.list_pod_for_all_namespaces(
            field_selector=self._field_selector(), _preload_content=False, _request_timeout=self.request_timeout_s
        )
        body = json.loads(response.data)
        _release(response)
        items = body.get("items") or []
        self.relists += 1
        log.info("listed %d pending pod(s) for %s", len(items), self.component)
        self.loop.post(self._relisted, items)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _on_watch_line(self, line: str, resource_version: str) -> str | None:
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError):
            log.warning("watch: ignoring a malformed line: %.200s", line)
            return resource_version
        if kind == "ERROR":
            if isinstance(obj, dict) and obj.get("code") == 410:
                log.info("watch: %s (410 Gone); re-listing", obj.get("message", "expired"))
                return None
            raise RuntimeError(f"watch error event: {obj}")
        new_version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
        if kind != "BOOKMARK" and isinstance(obj, dict):
            self.loop.post(self._pod_event, kind, obj)
        return str(new_version) if new_version else resource_version

    # -- loop thread -------------------------------------------------------
    def _relisted(self, items: list[dict[str, Any]]) -> None:
        self.core.on_relist(items, self.clock.wall_ms())
        self._want_cycle()

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        self.core.on_pod(kind, pod, self.clock.wall_ms())
        self._want_cycle()

    def on_energy(self, reports: list[EnergyReport]) -> None:
        """From any thread. A poll's reports arrive together: no cycle runs on half of them."""
        self.loop.post(self._energy, reports)

    def _energy(self, reports: list[EnergyReport]) -> None:
        now = self.clock.wall_ms()
        for report in reports:
            self.core.on_energy(report, now)
        self._want_cycle()

    def _want_cycle(self) -> None:
        # Coalesce: a burst of watch events makes one cycle, not one per event.
        if not self._cycle_posted:
            self._cycle_posted = True
            self.loop.post(self._cycle)

    def _timer(self) -> None:
        self._armed_ms = None
        self._cycle()

    def _cycle(self) -> None:
        self._cycle_posted = False
        if self.core.pending:
            self._refresh_nodes()
        for decision in self.core.decide(self.clock.wall_ms()):
            if isinstance(decision, BindPod):
                self._bind(decision)
            elif isinstance(decision, PodUnschedulable):
                self._unschedulable(decision)
        wake = self.core.next_wake_ms()
        if wake is not None and (self._armed_ms is None or wake < self._armed_ms):
            self._armed_ms = wake
            self.loop.call_later(max(0.0, (wake - self.clock.wall_ms()) / 1000) + 0.001, self._timer)

    def _refresh_nodes(self) -> None:
        now = self.clock.monotonic()
        if self._nodes_read_at is not None and now - self._nodes_read_at < self.node_cache_s:
            return
        try:
            response = self.api.list_node(_preload_content=False, _request_timeout=self.request_timeout_s)
            nodes = json.loads(response.data).get("items") or []
            _release(response)
        except Exception as exc:
            log.warning("listing nodes failed: %s", exc)
            return
        self._nodes_read_at = now
        self.core.on_nodes(nodes, self.clock.wall_ms())

    def _bind(self, decision: BindPod) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        pod, placement = decision.pod, decision.placement
        body = client.V1Binding.from_dict(binding_body(pod, placement.node))
        outcome, detail = "bound", ""
        try:
            response = self.api.create_namespaced_pod_binding(
                pod.name, pod.namespace, body, _preload_content=False, _request_timeout=self.request_timeout_s
            )
            _release(response)
        except ApiException as exc:
            outcome = {409: "conflict", 404: "gone"}.get(exc.status or 0, "error")
            detail = f"HTTP {exc.status} {exc.reason}"
        except ValueError:
            pass  # the client failed to read the 201 Status as a Binding: the bind succeeded
        except Exception as exc:
            outcome, detail = "error", f"{type(exc).__name__}: {exc}"
        now = self.clock.wall_ms()
        failure = self.core.on_bind_result(pod, outcome, now, detail)
        if outcome == "bound":
            self.bound += 1
            log.info("bind %s -> %s: %s", pod.key, placement.node, placement.reason)
            self._record(pod, "Scheduled", f"Successfully assigned {pod.key} to {placement.node}: {placement.reason}")
        elif outcome == "conflict":
            log.info("bind %s: already bound (409); nothing to do", pod.key)
        elif outcome == "gone":
            log.info("bind %s: pod is gone (404)", pod.key)
        if failure is not None:
            self._unschedulable(failure)

    def _unschedulable(self, failure: PodUnschedulable) -> None:
        log.info("FailedScheduling %s: %s", failure.pod.key, failure.message)
        self._record(failure.pod, "FailedScheduling", failure.message, warning=True)

    def _record(self, pod: PodRef, reason: str, message: str, *, warning: bool = False) -> None:
        self._events.put(
            event_body(pod, reason, message, warning=warning, component=self.component, now_ms=self.clock.wall_ms())
        )

    # -- the event recorder (own thread) ----------------------------------
    def _record_events(self) -> None:
        from kubernetes import client

        while True:
            body = self._events.get()
            if body is None:
                return
            try:
                event = client.CoreV1Event.from_dict(body)
                response = self.api.create_namespaced_event(
                    body["metadata"]["namespace"],
                    event,
                    _preload_content=False,
                    _request_timeout=self.request_timeout_s,
                )
                _release(response)
            except Exception as exc:
                log.warning("recording event %s failed: %s", body.get("reason"), exc)


def _release(response: Any) -> None:
    """Give a raw (_preload_content=False) response's connection back to the
    pool; left alone, every request would open a new connection."""
    try:
        response.drain_conn()
        response.release_conn()
    except Exception:
        pass


def kube_config(args: argparse.Namespace, energy_source: str) -> KubeConfig:
    if args.max_energy_age_s < 0 or args.energy_cost_wh < 0:
        raise ValueError("--max-energy-age-s and --energy-cost-wh must not be negative")
    if not args.scheduler_name:
        raise ValueError("--scheduler-name must not be empty")
    return KubeConfig(
        scheduler_name=args.scheduler_name,
        arch=args.arch,
        arch_label=args.arch_label,
        bot_label=args.bot_label,
        require_energy=energy_source != "none" and not args.allow_unmetered,
        max_energy_age_ms=int(args.max_energy_age_s * 1000),
        default_energy_cost_wh=args.energy_cost_wh,
        in_flight_ms=int(args.in_flight_s * 1000),
        backoff_initial_ms=int(args.backoff_initial_s * 1000),
        backoff_max_ms=int(args.backoff_max_s * 1000),
    )


def run_kubernetes(args: argparse.Namespace) -> int:
    energy_source = args.energy_source or ("influx" if os.environ.get("INFLUX_URL") else "bus")
    try:
        config = kube_config(args, energy_source)
        influx = InfluxEnergySource(InfluxSettings.from_env(os.environ)) if energy_source == "influx" else None
        api_client, where = load_api_client(args.kubeconfig)
    except (ValueError, InfluxConfigError, KubeSetupError) as exc:
        print(f"ank-scheduler: {exc}", file=sys.stderr)
        return 2
    bus: Bus | None = None
    if energy_source == "bus":
        try:
            bus = Bus(args.name, config=args.zenoh_config, server=args.server)
        except BusConfigError as exc:
            print(f"ank-scheduler: {exc}", file=sys.stderr)
            return 2
    loop = EventLoop()
    shell = KubeShell(
        api_client,
        KubeScheduler(config),
        loop,
        watch_timeout_s=args.watch_timeout_s,
        request_timeout_s=args.request_timeout_s,
        node_cache_s=args.node_cache_s,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if bus is not None:
            bus.subscribe("ank/energy/**", EnergyReport, lambda key, report: shell.on_energy([report]))
        if influx is not None:
            threading.Thread(
                target=poll_until_stopped,
                args=(influx, shell.on_energy, stopping, args.influx_interval_s, SYSTEM_CLOCK.wall_ms),
                daemon=True,
            ).start()
        shell.start()
        log.info(
            "=== SDI Scheduler (MALE) started: pods with schedulerName=%s, arch=%s, energy from %s, %s ===",
            config.scheduler_name,
            config.arch or "any",
            energy_source,
            where,
        )
        loop.run()
    finally:
        stopping.set()
        shell.stop()
        if bus is not None:
            bus.close()
        api_client.close()
    return 0
