"""The Kubernetes scheduler's shell (services.scheduler.kube_shell.KubeShell)
in memory: an in-memory stand-in for the API server at the shell's boundary
(the KubeApi protocol, services.scheduler.kube_api), energy over the
in-memory bus, the loop on a clock the test moves. It proves the wiring —
list then watch, re-list on 410, bind, pods/status and Events, energy to an
at-once retry, backoff on the injected clock — in milliseconds. The wire-level
tests against an API server (tests/test_scheduler_kube_apiserver.py) remain
the integration tests of the real client."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from schemas.messages import EnergyReport
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus
from services.scheduler.kube_api import KubeApiError, WatchStream
from services.scheduler.kube_core import KubeConfig, KubeState, PodRef
from services.scheduler.kube_shell import KubeShell
from tests.helpers import wait_for
from tests.memory_helpers import ManualClock, memory_hub, on_loop_idle, running_loop

_END = object()


class MemoryWatch:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.closed = threading.Event()

    def lines(self) -> Iterator[str]:
        while True:
            item = self.queue.get(timeout=10)  # bounded: a stuck test fails instead of hanging
            if item is _END or self.closed.is_set():
                return
            assert isinstance(item, str)
            yield item

    def close(self) -> None:
        self.closed.set()
        self.queue.put(_END)


class MemoryKubeApi:
    """The API server as the shell sees it: pods, nodes, binds, writes; errors injected per call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.bindings: list[tuple[str, str]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        self.list_calls = 0
        self.watches: list[tuple[str, MemoryWatch]] = []
        self.failures: dict[str, list[Exception]] = {}
        self.version = 100

    def fail(self, call: str, *errors: Exception) -> None:
        with self.lock:
            self.failures.setdefault(call, []).extend(errors)

    def _injected(self, call: str) -> None:
        with self.lock:
            errors = self.failures.get(call) or []
            if errors:
                raise errors.pop(0)

    # -- KubeApi ----------------------------------------------------------------
    def list_pending_pods(self, scheduler_name: str) -> tuple[list[dict[str, Any]], str]:
        self._injected("list")
        with self.lock:
            self.list_calls += 1
            return list(self.pending.values()), str(self.version)

    def watch_pending_pods(self, scheduler_name: str, resource_version: str, timeout_s: float) -> WatchStream:
        self._injected("watch")
        watch = MemoryWatch()
        with self.lock:
            self.watches.append((resource_version, watch))
        return watch

    def list_nodes(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.nodes)

    def list_assigned_pods(self) -> list[dict[str, Any]]:
        return []

    def bind(self, pod: PodRef, node: str) -> int:
        self._injected("bind")
        with self.lock:
            self.bindings.append((pod.key, node))
            self.pending.pop(pod.key, None)
        return 201

    def patch_pod_status(self, pod: PodRef, patch: dict[str, Any]) -> None:
        with self.lock:
            self.statuses.append((pod.key, patch))

    def create_event(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(body)

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def write_lease(self, namespace: str, name: str, body: dict[str, Any], *, create: bool) -> bool:
        return True

    # -- the test's side -------------------------------------------------------------
    def watch(self, number: int = 1) -> MemoryWatch:
        """The shell's `number`th watch, once it has started."""
        return wait_for(lambda: len(self.watches) >= number and self.watches[number - 1][1], 5, f"watch {number}")

    def send(self, watch: MemoryWatch, kind: str, obj: Any) -> None:
        self.version += 1
        watch.queue.put(json.dumps({"type": kind, "object": obj}))

    def bound(self, key: str) -> str:
        def found() -> str | None:
            with self.lock:
                return next((node for pod, node in self.bindings if pod == key), None)

        return wait_for(found, 5, f"a bind of {key}")

    def reasons(self, key: str) -> list[str]:
        with self.lock:
            return [e["reason"] for e in self.events if e["regarding"]["name"] == key.split("/")[1]]


def node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64"}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"pods": "110"}},
    }


def pod(name: str, *, gated: bool = False, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": "u1", "annotations": annotations or {}},
        "spec": {
            "schedulerName": "sdi-scheduler",
            "containers": [{"name": "c", "image": "i"}],
            **({"schedulingGates": [{"name": "wait"}]} if gated else {}),
        },
        "status": {"phase": "Pending"},
    }


@dataclass
class Stack:
    api: MemoryKubeApi
    robots: MemoryBus
    clock: ManualClock
    loop: EventLoop
    shell: KubeShell

    def energy(self, robot: str, wh: float) -> None:
        """A robot's report on the bus, once the shell's core has it."""
        self.robots.put(f"ank/energy/{robot}", EnergyReport(node=robot, energy_wh=wh, time_ms=self.clock.wall_ms()))

        def known() -> bool:
            report = self.shell.core.energy.get(robot)
            return report is not None and report.energy_wh == wh

        wait_for(known, 5, f"the energy of {robot}")


@pytest.fixture
def api() -> MemoryKubeApi:
    api = MemoryKubeApi()
    api.nodes = [node("poor"), node("rich")]
    return api


@pytest.fixture
def stack(api: MemoryKubeApi) -> Iterator[Stack]:
    clock = ManualClock()
    with memory_hub() as hub:
        loop = EventLoop(clock)
        shell = KubeShell(None, KubeState(KubeConfig()), loop, api=api, clock=clock, node_cache_s=0.0)
        shell.listen_energy(MemoryBus(hub, "scheduler"))
        with running_loop(loop):
            shell.start()
            try:
                yield Stack(api, MemoryBus(hub, "robots"), clock, loop, shell)
            finally:
                shell.stop()


def test_a_listed_pod_is_bound_to_the_node_with_the_most_energy_and_recorded(api: MemoryKubeApi, stack: Stack) -> None:
    stack.energy("poor", 5.0)
    stack.energy("rich", 80.0)
    api.send(api.watch(), "ADDED", pod("job"))
    assert api.bound("default/job") == "rich"
    wait_for(lambda: api.reasons("default/job") == ["Scheduled"], 5, "the Scheduled event")
    assert api.list_calls == 1 and api.watches[0][0] == "100"  # watched from the list's resourceVersion


def test_expired_history_in_the_watch_makes_the_shell_list_again_and_bind_what_it_lists(
    api: MemoryKubeApi, stack: Stack
) -> None:
    stack.energy("rich", 80.0)
    first = api.watch()
    api.pending["default/missed"] = pod("missed")  # created while the watch's history was lost
    first.queue.put(json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}))
    assert api.bound("default/missed") == "rich"
    assert api.list_calls == 2 and first.closed.is_set()


def test_an_http_410_on_the_watch_request_lists_again_at_once(api: MemoryKubeApi) -> None:
    api.fail("watch", KubeApiError(410, "Expired"))
    clock = ManualClock()
    loop = EventLoop(clock)
    shell = KubeShell(None, KubeState(), loop, api=api, clock=clock)
    with running_loop(loop):
        shell.start()
        try:
            api.watch()
            assert api.list_calls == 2 and shell.relists == 2
        finally:
            shell.stop()


def test_an_unschedulable_pod_is_marked_and_bound_as_soon_as_a_node_reports_enough_energy(
    api: MemoryKubeApi, stack: Stack
) -> None:
    stack.energy("poor", 5.0)
    api.send(api.watch(), "ADDED", pod("job", annotations={"sdi.scheduler/min-energy-wh": "20"}))
    wait_for(lambda: api.reasons("default/job") == ["FailedScheduling"], 5, "FailedScheduling")
    [(key, patch)] = api.statuses
    assert key == "default/job" and patch["status"]["conditions"][0]["reason"] == "Unschedulable"
    # No clock moves: the retry comes from the report of the node that refused it for energy.
    stack.energy("rich", 80.0)
    assert api.bound("default/job") == "rich"


def test_an_energy_report_on_another_robots_key_is_ignored(api: MemoryKubeApi, stack: Stack) -> None:
    stack.energy("poor", 5.0)
    stack.energy("rich", 10.0)
    stack.robots.put("ank/energy/rich", EnergyReport(node="poor", energy_wh=99.0, time_ms=stack.clock.wall_ms()))
    api.send(api.watch(), "ADDED", pod("job"))
    assert api.bound("default/job") == "rich"


def test_a_gated_pod_is_marked_scheduling_gated_without_an_event_and_bound_once_ungated(
    api: MemoryKubeApi, stack: Stack
) -> None:
    stack.energy("rich", 80.0)
    watch = api.watch()
    api.send(watch, "ADDED", pod("job", gated=True))
    wait_for(lambda: api.statuses, 5, "the SchedulingGated condition")
    assert api.statuses[0][1]["status"]["conditions"][0]["reason"] == "SchedulingGated"
    assert api.reasons("default/job") == [] and api.bindings == []
    api.send(watch, "MODIFIED", pod("job"))
    assert api.bound("default/job") == "rich"


def test_a_failed_bind_is_retried_after_its_backoff_on_the_shells_clock(api: MemoryKubeApi, stack: Stack) -> None:
    stack.energy("rich", 80.0)
    api.fail("bind", KubeApiError(500, "etcdserver: leader changed"))
    api.send(api.watch(), "ADDED", pod("job"))
    wait_for(lambda: api.reasons("default/job") == ["FailedScheduling"], 5, "FailedScheduling after the 500")
    assert api.bindings == []
    stack.clock.advance(0.5, stack.loop)
    on_loop_idle(stack.loop)
    assert not stack.shell.core.pending["default/job"].binding  # not before the 1 s backoff
    stack.clock.advance(0.6, stack.loop)
    assert api.bound("default/job") == "rich"


def test_malformed_watch_lines_are_skipped_and_the_watch_goes_on(api: MemoryKubeApi, stack: Stack) -> None:
    stack.energy("rich", 80.0)
    watch = api.watch()
    for junk in ("not json", '{"type": "ADDED"}', "[]", json.dumps({"type": "ADDED", "object": "x" * 5_000_000})):
        watch.queue.put(junk)
    api.send(watch, "ADDED", pod("job"))
    assert api.bound("default/job") == "rich"
    assert len(api.watches) == 1 and api.list_calls == 1  # the same watch: no re-list, no failure
