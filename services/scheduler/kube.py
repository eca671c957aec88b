"""Kubernetes mode's decisions (pure: no I/O, no clock): which pods are ours,
what the nodes look like to the framework, when to bind and when to retry.

Theory of operation
-------------------
Pods and nodes arrive as the API server's JSON (plain dicts); this module
turns them into the framework's values:

- a pod is ours while `spec.schedulerName` is the scheduler's name, it has no
  `spec.nodeName` and it is not being deleted; its `nodeSelector` becomes the
  request's selector, the configured arch (`kubernetes.io/arch`, default
  arm64, the seed's filter) is added as `arch`, its tolerations are kept,
  and the annotations `sdi.scheduler/policy`, `sdi.scheduler/min-energy-wh`
  and `sdi.scheduler/energy-cost-wh` tune it;
- a node becomes a NodeView: Ready condition, `spec.unschedulable`, taints,
  labels, arch from the arch label; its energy is the last report of its
  robot (the `--bot-label` value, or the node name, as the seed's
  `make_node_map`).

`KubeScheduler` keeps the pending pods, each with its backoff, and the
placements in flight. `decide(now)` runs one cycle per due pod and returns
`BindPod` / `PodUnschedulable` decisions; the shell binds and reports back
with `on_bind_result`:

| bind outcome | what happens                                                 |
|--------------|--------------------------------------------------------------|
| bound (201)  | pod done; its energy cost stays in flight on the node        |
| conflict 409 | pod already bound by someone else: done, not an error        |
| gone 404     | pod deleted meanwhile: done                                  |
| error        | back to pending with backoff                                 |

An unschedulable pod is retried with backoff (1 s doubling to 10 s), and at
once when the nodes or a node's energy change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.messages import EnergyReport
from services.scheduler.core import (
    CycleContext,
    NodeView,
    NoFit,
    Placement,
    PlacementRequest,
    Taint,
    Toleration,
    backoff_ms,
    schedule,
)

ANNOTATION_POLICY = "sdi.scheduler/policy"
ANNOTATION_MIN_ENERGY = "sdi.scheduler/min-energy-wh"
ANNOTATION_ENERGY_COST = "sdi.scheduler/energy-cost-wh"


class KubeConfig(msgspec.Struct, frozen=True, kw_only=True):
    scheduler_name: str = "sdi-scheduler"
    arch: str = "arm64"  # "" accepts any arch
    arch_label: str = "kubernetes.io/arch"
    bot_label: str = ""  # "" -> the node name names the robot
    require_energy: bool = True
    max_energy_age_ms: int = 30_000
    default_energy_cost_wh: float = 1.0
    in_flight_ms: int = 30_000
    backoff_initial_ms: int = 1_000
    backoff_max_ms: int = 10_000


class PodRef(msgspec.Struct, frozen=True):
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class BindPod(msgspec.Struct, frozen=True):
    pod: PodRef
    placement: Placement


class PodUnschedulable(msgspec.Struct, frozen=True):
    pod: PodRef
    message: str


Decision = BindPod | PodUnschedulable


@dataclass
class PendingPod:
    ref: PodRef
    request: PlacementRequest | None
    invalid: str = ""  # why the pod's own settings cannot be used
    attempts: int = 0
    next_try_ms: int = 0
    binding: bool = False  # a bind is under way
    last_failure: str = ""
    rejected: dict[str, str] = field(default_factory=dict)


# -- translations --------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    return PodRef(
        namespace=str(_get(pod, "metadata", "namespace") or "default"),
        name=str(_get(pod, "metadata", "name") or ""),
        uid=str(_get(pod, "metadata", "uid") or ""),
    )


def is_ours_and_pending(pod: Mapping[str, Any], scheduler_name: str) -> bool:
    return (
        _get(pod, "spec", "schedulerName") == scheduler_name
        and not _get(pod, "spec", "nodeName")
        and not _get(pod, "metadata", "deletionTimestamp")
        and _get(pod, "status", "phase") in (None, "Pending")
    )


def request_for_pod(pod: Mapping[str, Any], config: KubeConfig) -> PlacementRequest:
    """The placement request of a pod; ValueError naming the bad field."""
    ref = pod_ref(pod)
    selector = {str(k): str(v) for k, v in (_get(pod, "spec", "nodeSelector") or {}).items()}
    if config.arch:
        selector["arch"] = config.arch
    annotations = _get(pod, "metadata", "annotations") or {}
    tolerations = tuple(
        Toleration(
            key=str(t.get("key") or ""),
            operator=str(t.get("operator") or "Equal"),
            value=str(t.get("value") or ""),
            effect=str(t.get("effect") or ""),
        )
        for t in (_get(pod, "spec", "tolerations") or [])
        if isinstance(t, Mapping)
    )
    return PlacementRequest(
        workload=ref.key,
        selector=selector,
        policy=str(annotations.get(ANNOTATION_POLICY) or "MALE"),
        min_energy_wh=_number(annotations, ANNOTATION_MIN_ENERGY, 0.0),
        energy_cost_wh=_number(annotations, ANNOTATION_ENERGY_COST, config.default_energy_cost_wh),
        tolerations=tolerations,
    )


def _number(annotations: Mapping[str, Any], key: str, default: float) -> float:
    raw = annotations.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"annotation {key} must be a number of Wh, got {raw!r}") from None
    if value < 0 or value != value:
        raise ValueError(f"annotation {key} must not be negative, got {raw!r}")
    return value


def node_view(node: Mapping[str, Any], energy: Mapping[str, EnergyReport], config: KubeConfig) -> NodeView:
    name = str(_get(node, "metadata", "name") or "")
    labels = {str(k): str(v) for k, v in (_get(node, "metadata", "labels") or {}).items()}
    conditions = _get(node, "status", "conditions") or []
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        Taint(key=str(t.get("key") or ""), value=str(t.get("value") or ""), effect=str(t.get("effect") or ""))
        for t in (_get(node, "spec", "taints") or [])
        if isinstance(t, Mapping)
    )
    bot = labels.get(config.bot_label, name) if config.bot_label else name
    report = energy.get(bot)
    return NodeView(
        name=name,
        ready=ready,
        unschedulable=bool(_get(node, "spec", "unschedulable")),
        arch=labels.get(config.arch_label, ""),
        labels=labels,
        taints=taints,
        energy_wh=report.energy_wh if report else None,
        capacity_wh=report.capacity_wh if report else None,
        energy_time_ms=report.time_ms if report else None,
    )


def binding_body(pod: PodRef, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name, "namespace": pod.namespace, **({"uid": pod.uid} if pod.uid else {})},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def event_body(pod: PodRef, reason: str, message: str, *, warning: bool, component: str, now_ms: int) -> dict[str, Any]:
    """A core/v1 Event about the pod, as kube-scheduler records them."""
    stamp = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "namespace": pod.namespace,
            **({"uid": pod.uid} if pod.uid else {}),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


# -- the state machine -------------------------------------------------------


class KubeScheduler:
    def __init__(self, config: KubeConfig | None = None) -> None:
        self.config = config or KubeConfig()
        self.pending: dict[str, PendingPod] = {}
        self.nodes: list[dict[str, Any]] = []
        self.energy: dict[str, EnergyReport] = {}
        self.in_flight: dict[str, tuple[str, float, int]] = {}  # pod key -> (node, cost, until)
        self.placements = 0
        self._views: list[NodeView] | None = None

    # inputs
    def on_pod(self, kind: str, pod: Mapping[str, Any], now_ms: int) -> None:
        """A watch event (ADDED, MODIFIED, DELETED) or a listed pod (ADDED)."""
        ref = pod_ref(pod)
        if kind == "DELETED" or not is_ours_and_pending(pod, self.config.scheduler_name):
            entry = self.pending.pop(ref.key, None)
            if entry is not None and entry.binding:
                self.pending[ref.key] = entry  # our bind is under way; its result decides
            return
        try:
            request: PlacementRequest | None = request_for_pod(pod, self.config)
            invalid = ""
        except ValueError as exc:
            request, invalid = None, str(exc)
        entry = self.pending.get(ref.key)
        if entry is None:
            self.pending[ref.key] = PendingPod(ref=ref, request=request, invalid=invalid, next_try_ms=now_ms)
        elif entry.request != request or entry.invalid != invalid:
            entry.ref, entry.request, entry.invalid = ref, request, invalid
            entry.next_try_ms, entry.last_failure = now_ms, ""

    def on_relist(self, pods: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        """A full list: pods no longer listed are forgotten."""
        seen = set()
        for pod in pods:
            seen.add(pod_ref(pod).key)
            self.on_pod("ADDED", pod, now_ms)
        for key in list(self.pending):
            if key not in seen and not self.pending[key].binding:
                del self.pending[key]

    def on_nodes(self, nodes: list[dict[str, Any]], now_ms: int) -> None:
        if nodes != self.nodes:
            self.nodes = nodes
            self._views = None
            self._retry_failed(now_ms, lambda entry: True)

    def on_energy(self, report: EnergyReport, now_ms: int) -> None:
        if report.time_ms <= 0:
            report = msgspec.structs.replace(report, time_ms=now_ms)
        old = self.energy.get(report.node)
        if old is not None and old.time_ms > report.time_ms:
            return
        self.energy[report.node] = report
        self._views = None
        self._retry_failed(
            now_ms, lambda entry: any(r.startswith(("energy", "no energy")) for r in entry.rejected.values())
        )

    def on_bind_result(self, pod: PodRef, outcome: str, now_ms: int, detail: str = "") -> PodUnschedulable | None:
        """outcome: "bound", "conflict", "gone" or "error"."""
        entry = self.pending.get(pod.key)
        if outcome in ("bound", "conflict", "gone"):
            self.pending.pop(pod.key, None)
            if outcome != "bound":
                self._release(pod.key)
            return None
        self._release(pod.key)
        if entry is None:
            return None
        entry.binding = False
        entry.attempts += 1
        entry.next_try_ms = now_ms + self._backoff(entry.attempts)
        return PodUnschedulable(entry.ref, f"binding failed: {detail}")

    # decisions
    def decide(self, now_ms: int) -> list[Decision]:
        for key, (_, _, until) in list(self.in_flight.items()):
            if until <= now_ms:
                self._release(key)
        due = sorted((e.next_try_ms, k) for k, e in self.pending.items() if not e.binding and e.next_try_ms <= now_ms)
        decisions: list[Decision] = []
        for _, key in due:
            entry = self.pending[key]
            decision = self._cycle(entry, now_ms)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def next_wake_ms(self) -> int | None:
        times = [e.next_try_ms for e in self.pending.values() if not e.binding]
        times += [until for _, _, until in self.in_flight.values()]
        return min(times) if times else None

    def node_views(self) -> list[NodeView]:
        if self._views is None:
            reserved: dict[str, float] = {}
            for node, cost, _ in self.in_flight.values():
                reserved[node] = reserved.get(node, 0.0) + cost
            views = [node_view(n, self.energy, self.config) for n in self.nodes]
            self._views = sorted(
                (msgspec.structs.replace(v, reserved_wh=reserved[v.name]) if v.name in reserved else v for v in views),
                key=lambda v: v.name,
            )
        return self._views

    # internals
    def _cycle(self, entry: PendingPod, now_ms: int) -> Decision | None:
        if entry.request is None:
            entry.attempts += 1
            entry.next_try_ms = now_ms + self.config.backoff_max_ms
            return self._failure(entry, f"invalid pod: {entry.invalid}")
        ctx = CycleContext(
            now_ms=now_ms,
            max_energy_age_ms=self.config.max_energy_age_ms,
            require_energy=self.config.require_energy,
            cursor=self.placements,
            ring=tuple(v.name for v in self.node_views()),
        )
        result = schedule(entry.request, self.node_views(), ctx)
        if isinstance(result, NoFit):
            entry.attempts += 1
            entry.rejected = dict(result.reasons)
            entry.next_try_ms = now_ms + self._backoff(entry.attempts)
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(result.reasons.items()))
            return self._failure(entry, result.message + (f" ({detail})" if detail else ""))
        entry.binding = True
        entry.last_failure = ""
        self.placements += 1
        self.in_flight[entry.ref.key] = (result.node, entry.request.energy_cost_wh, now_ms + self.config.in_flight_ms)
        self._views = None
        return BindPod(entry.ref, result)

    def _failure(self, entry: PendingPod, message: str) -> PodUnschedulable | None:
        if message == entry.last_failure:
            return None  # an identical event only repeats itself
        entry.last_failure = message
        return PodUnschedulable(entry.ref, message)

    def _backoff(self, attempts: int) -> int:
        return backoff_ms(attempts, self.config.backoff_initial_ms, self.config.backoff_max_ms)

    def _release(self, key: str) -> None:
        if self.in_flight.pop(key, None) is not None:
            self._views = None

    def _retry_failed(self, now_ms: int, relevant: Callable[[PendingPod], bool]) -> None:
        for entry in self.pending.values():
            if entry.attempts and not entry.binding and entry.request is not None and relevant(entry):
                entry.next_try_ms = min(entry.next_try_ms, now_ms)


def _rejected_for_energy(entry: PendingPod) -> bool:
    return any(reason.startswith(("energy", "no energy")) for reason in entry.rejected.values())
