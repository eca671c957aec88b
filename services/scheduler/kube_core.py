"""Kubernetes mode's decisions (pure: no I/O, no clock): which pods are ours,
what the nodes look like to the framework, when to bind and when to retry.

Theory of operation
-------------------
Pods and nodes arrive as the API server's JSON (plain dicts); this module
turns them into the framework's values:

- a pod is ours while `spec.schedulerName` is the scheduler's name, it has no
  `spec.nodeName` and it is not being deleted; its `nodeSelector` goes to
  the NodeAffinity filter, the configured arch (`kubernetes.io/arch`, default
  arm64, the seed's filter) is added as `arch`, its tolerations are kept,
  and the annotations `sdi.scheduler/policy`, `sdi.scheduler/min-energy-wh`
  and `sdi.scheduler/energy-cost-wh` tune it;
- a node becomes a NodeView: Ready condition, `spec.unschedulable`, taints,
  labels, arch from the arch label; its energy is the last report of its
  robot (the `--bot-label` value, or the node name, as the seed's
  `make_node_map`).

Kubelet-enforced filters (services.scheduler.kube_plugins): NodeAffinity
(nodeSelector + required node affinity), NodeResourcesFit (requests against
allocatable minus the requests of the pods bound to the node — listed by the
shell — and of our binds in flight), NodePorts, InterPodAntiAffinity (the
pod's own required terms). They run after the taint filter, before energy.

`KubeState` (frozen) keeps the pending pods, each with its backoff, and
the placements in flight. The shell feeds every input as an event to
`step(state, event, now_ms)`: PodWatched, PodsListed, NodesListed,
EnergyReported, BindAnswered, and Tick when a cycle is due. A Tick runs one
cycle per due pod and returns `BindPod` / `PodUnschedulable` actions, at most
`max_binds_in_flight` binds outstanding; the shell binds (in a pool) and
reports back with BindAnswered. Within one step the handlers work on a
copy (`_Working`) whose dicts they update; the pods are frozen values
replaced, never changed. Only a 201 is a bind;
every 409 is classified by the API server's message (`classify_bind_failure`):

- bound (201): done (PodBound: a Scheduled Event); its energy cost and requests stay in flight on the node;
- already-bound (409): someone else bound it: done, not an error;
- deleting (409): the pod is being deleted: forgotten;
- gated (409): it has scheduling gates: waits for the watch to ungate it;
- precondition (409, UID): the pod was recreated under its name: the old one
  is forgotten, a successor already known is tried at once;
- gone (404): deleted meanwhile: done;
- error (anything else, client-side errors included): back to pending with
  backoff and a FailedScheduling.

An answer about a pod whose successor (same name, new uid) the watch has
already brought is about the old pod: the successor is tried at once.

Pods with a non-empty `spec.schedulingGates` are never attempted: they get
PodScheduled=False / SchedulingGated and wait for the gates to go.
An unschedulable pod is retried with backoff (1 s doubling to 10 s), and at
once when the nodes or the pods bound to them change, or when the energy of
a node whose energy filter rejected it changes (the filter's name, never the
message: `framework.energy_may_admit`).

The pod watch has its own small machine at the end of this module
(`WatchState`, `watch_step`, `next_request`): when to list, when to watch,
how to react to 410 Gone, ERROR events, 429 and connection errors — a table
the shell's watch thread carries out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ank_common.nested import dig
from schemas.messages import EnergyReport
from services.scheduler.framework import (
    POLICIES,
    CycleContext,
    EnergyReported,
    FilterPlugin,
    NodeView,
    NoFit,
    Placement,
    PlacementRequest,
    Profile,
    Reservation,
    Reservations,
    Taint,
    Tick,
    Toleration,
    backoff_ms,
    energy_may_admit,
    newer_energy,
    schedule,
)
from services.scheduler.kube_plugins import (
    InterPodAntiAffinity,
    KubeNodeView,
    KubeRequest,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodOnNode,
    Port,
    kube_fields,
    node_allocatable,
    pod_ports,
    pod_requests,
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
    max_binds_in_flight: int = 16  # binds under way at once (the shell's bind pool)


# Bind outcomes (BindAnswered.outcome)
BOUND = "bound"
ALREADY_BOUND = "already-bound"
DELETING = "deleting"
GATED = "gated"
PRECONDITION = "precondition"
GONE = "gone"
ERROR = "error"

GATED_MESSAGE = "Scheduling is blocked due to non-empty scheduling gates"


def classify_bind_failure(status: int, message: str) -> str:
    """The outcome of a pods/binding answer other than 201, from its HTTP
    status and the API server's Status message (pkg/registry/core/pod/storage:
    the 409s of setPodNodeAndMetadata and of the UID precondition)."""
    if status == 404:
        return GONE
    if status != 409:
        return ERROR
    if "is already assigned to node" in message or "already assigned to" in message:
        return ALREADY_BOUND
    if "is being deleted" in message:
        return DELETING
    if "schedulingGates" in message:
        return GATED
    if "Precondition failed" in message or "UID in precondition" in message:
        return PRECONDITION
    return ERROR


def classify_bind_answer(status: int, message: str = "") -> tuple[str, str]:
    """The outcome of any pods/binding answer and, unless bound, why: only a
    201 is a bind (another 2xx is not what the API server answers)."""
    if status == 201:
        return BOUND, ""
    if 200 <= status < 300:
        return ERROR, f"HTTP {status} where 201 Created was expected"
    return classify_bind_failure(status, message), f"HTTP {status}: {message}"


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
    reason: str = "Unschedulable"  # PodScheduled=False reason: Unschedulable or SchedulingGated

    @property
    def records_event(self) -> bool:
        """A FailedScheduling Event goes with it (kube-scheduler records none for a gated pod)."""
        return self.reason != "SchedulingGated"


class PodBound(msgspec.Struct, frozen=True):
    """Our bind landed (201): a Scheduled Event says where and why."""

    pod: PodRef
    placement: Placement

    @property
    def message(self) -> str:
        return f"Successfully assigned {self.pod.key} to {self.placement.node}: {self.placement.reason}"


Decision = BindPod | PodUnschedulable | PodBound


# -- events ------------------------------------------------------------------


class PodWatched(msgspec.Struct, frozen=True):
    """A watch event (ADDED, MODIFIED, DELETED) about a pod."""

    kind: str
    pod: dict[str, Any]


class PodsListed(msgspec.Struct, frozen=True):
    """A full list of the pods: pods no longer listed are forgotten."""

    pods: list[dict[str, Any]]


class NodesListed(msgspec.Struct, frozen=True):
    """The nodes, and (when given) every pod bound to a node and not finished."""

    nodes: list[dict[str, Any]]
    assigned_pods: list[dict[str, Any]] | None = None


class BindAnswered(msgspec.Struct, frozen=True):
    """The outcome of a bind (BOUND, ALREADY_BOUND, DELETING, GATED,
    PRECONDITION, GONE, ERROR) and, unless bound, why."""

    pod: PodRef
    outcome: str
    detail: str = ""


KubeEvent = PodWatched | PodsListed | NodesListed | EnergyReported | BindAnswered | Tick


class PendingPod(msgspec.Struct, frozen=True, kw_only=True):
    ref: PodRef
    request: PlacementRequest | None
    invalid: str = ""  # why the pod's own settings cannot be used
    attempts: int = 0
    next_try_ms: int = 0
    binding: bool = False  # a bind is under way
    gated: bool = False  # non-empty spec.schedulingGates: not attempted
    last_failure: str = ""
    rejected_by: dict[str, str] = {}  # node -> the filter that rejected it
    placement: Placement | None = None  # where its bind under way goes


# -- translations --------------------------------------------------------------


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    return PodRef(
        namespace=str(dig(pod, "metadata", "namespace") or "default"),
        name=str(dig(pod, "metadata", "name") or ""),
        uid=str(dig(pod, "metadata", "uid") or ""),
    )


def is_ours_and_pending(pod: Mapping[str, Any], scheduler_name: str) -> bool:
    return (
        dig(pod, "spec", "schedulerName") == scheduler_name
        and not dig(pod, "spec", "nodeName")
        and not dig(pod, "metadata", "deletionTimestamp")
        and dig(pod, "status", "phase") in (None, "Pending")
    )


def scheduling_gates(pod: Mapping[str, Any]) -> list[str]:
    gates = dig(pod, "spec", "schedulingGates") or []
    return [str(g.get("name") if isinstance(g, Mapping) else g) for g in gates] if isinstance(gates, list) else []


def request_for_pod(pod: Mapping[str, Any], config: KubeConfig) -> KubeRequest:
    """The placement request of a pod; ValueError naming the bad field."""
    ref = pod_ref(pod)
    selector = {"arch": config.arch} if config.arch else {}
    annotations = dig(pod, "metadata", "annotations") or {}
    tolerations = tuple(
        Toleration(
            key=str(t.get("key") or ""),
            operator=str(t.get("operator") or "Equal"),
            value=str(t.get("value") or ""),
            effect=str(t.get("effect") or ""),
        )
        for t in (dig(pod, "spec", "tolerations") or [])
        if isinstance(t, Mapping)
    )
    labels = dig(pod, "metadata", "labels") or {}
    return KubeRequest(
        workload=ref.key,
        selector=selector,
        policy=str(annotations.get(ANNOTATION_POLICY) or "MALE"),
        min_energy_wh=_number(annotations, ANNOTATION_MIN_ENERGY, 0.0),
        energy_cost_wh=_number(annotations, ANNOTATION_ENERGY_COST, config.default_energy_cost_wh),
        tolerations=tolerations,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        **kube_fields(pod),
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


def robot_of(node: Mapping[str, Any], config: KubeConfig) -> str:
    """The robot whose energy reports are the node's: its `bot_label` value, else its name."""
    name = str(dig(node, "metadata", "name") or "")
    if not config.bot_label:
        return name
    labels = dig(node, "metadata", "labels") or {}
    return str(labels.get(config.bot_label, name)) if isinstance(labels, Mapping) else name


def node_view(node: Mapping[str, Any], energy: Mapping[str, EnergyReport], config: KubeConfig) -> KubeNodeView:
    name = str(dig(node, "metadata", "name") or "")
    labels = {str(k): str(v) for k, v in (dig(node, "metadata", "labels") or {}).items()}
    conditions = dig(node, "status", "conditions") or []
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        Taint(key=str(t.get("key") or ""), value=str(t.get("value") or ""), effect=str(t.get("effect") or ""))
        for t in (dig(node, "spec", "taints") or [])
        if isinstance(t, Mapping)
    )
    report = energy.get(robot_of(node, config))
    return KubeNodeView(
        name=name,
        allocatable=node_allocatable(node),
        ready=ready,
        unschedulable=bool(dig(node, "spec", "unschedulable")),
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


def micro_time(now_ms: int) -> str:
    """A metav1.MicroTime as the API server writes it."""
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(
    pod: PodRef, reason: str, message: str, *, warning: bool, component: str, now_ms: int, instance: str = ""
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about the pod, as kube-scheduler's recorder
    writes them (name `<pod>.<hex nanoseconds>`, action Binding/Scheduling,
    `regarding` the pod, `note` at most 1 kB)."""
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{pod.name}.{now_ms * 1_000_000:x}", "namespace": pod.namespace},
        "eventTime": micro_time(now_ms),
        "reportingController": component,
        "reportingInstance": instance or component,
        "action": "Binding" if reason == "Scheduled" else "Scheduling",
        "reason": reason,
        "regarding": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "namespace": pod.namespace,
            **({"uid": pod.uid} if pod.uid else {}),
        },
        "note": message[:1024],
        "type": "Warning" if warning else "Normal",
    }


def pod_scheduled_patch(reason: str, message: str, now_ms: int) -> dict[str, Any]:
    """The strategic-merge patch of pods/status kube-scheduler sends for an
    unschedulable pod (conditions merge on `type`)."""
    stamp = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": reason,
                    "message": message[:32768],
                    "lastProbeTime": None,
                    "lastTransitionTime": stamp,
                }
            ]
        }
    }


# -- the state machine -------------------------------------------------------


class _Assigned(msgspec.Struct, frozen=True):
    node: str
    requests: dict[str, int]
    ports: tuple[Port, ...]
    pod: PodOnNode


def _assigned(pod: Mapping[str, Any]) -> _Assigned | None:
    node = dig(pod, "spec", "nodeName")
    if not node or dig(pod, "status", "phase") in ("Succeeded", "Failed"):
        return None
    spec = dig(pod, "spec") or {}
    try:
        requests, ports = pod_requests(spec), pod_ports(spec)
    except (ValueError, AttributeError, TypeError):
        requests, ports = {}, ()  # the API server validated it; a quirk here must not stop scheduling
    labels = dig(pod, "metadata", "labels") or {}
    return _Assigned(
        node=str(node),
        requests=requests,
        ports=ports,
        pod=PodOnNode(namespace=pod_ref(pod).namespace, labels={str(k): str(v) for k, v in labels.items()}),
    )


class KubeState(msgspec.Struct, frozen=True):
    """What the scheduler knows between two events."""

    config: KubeConfig = msgspec.field(default_factory=KubeConfig)
    pending: dict[str, PendingPod] = {}  # pod key -> a pod of ours to place
    nodes: list[dict[str, Any]] = []
    assigned: dict[str, _Assigned] = {}  # pod key -> a pod bound to a node, not finished
    energy: dict[str, EnergyReport] = {}
    in_flight: dict[str, Reservation] = {}  # pod key -> its node, while its bind is under way or landing
    in_flight_requests: dict[str, KubeRequest] = {}  # pod key -> its request (resources, ports, labels)
    placements: int = 0


def step(state: KubeState, event: KubeEvent, now_ms: int) -> KubeStep:
    """The scheduler's reaction to one event: its new state and the actions."""
    work = _Working(state)
    actions: list[Decision] = []
    if isinstance(event, PodWatched):
        work.on_pod(event.kind, event.pod, now_ms)
    elif isinstance(event, PodsListed):
        work.on_relist(event.pods, now_ms)
    elif isinstance(event, NodesListed):
        work.on_nodes(event.nodes, now_ms, event.assigned_pods)
    elif isinstance(event, EnergyReported):
        work.on_energy(event.report, now_ms)
    elif isinstance(event, BindAnswered):
        failure = work.on_bind_result(event.pod, event.outcome, now_ms, event.detail)
        actions += [failure] if failure is not None else []
    else:
        actions = work.decide(now_ms)
    return KubeStep(work.freeze(), actions)


def next_wake_ms(state: KubeState) -> int | None:
    """When a Tick has something to do (None: nothing planned)."""
    times = [e.next_try_ms for e in state.pending.values() if not e.binding and not e.gated]
    times += [held.until_ms for held in state.in_flight.values()]
    return min(times, default=None)


def nodes_due(state: KubeState, age_s: float | None, cache_s: float) -> bool:
    """Whether a cycle first lists the nodes and the pods bound to them: only
    while pods are pending, and not again within `cache_s` of the last list
    (`age_s`; None: never listed) — the scheduler's largest request."""
    return bool(state.pending) and (age_s is None or age_s >= cache_s)


class _Working:
    """One step's working copy of a KubeState (its dicts copied, its values
    frozen), with the node views of that step."""

    def __init__(self, state: KubeState) -> None:
        self.config = state.config
        self.pending = dict(state.pending)
        self.nodes = state.nodes  # replaced as a whole, never changed
        self.assigned = state.assigned  # replaced as a whole, never changed
        self.energy = dict(state.energy)
        self.in_flight = Reservations.of(state.in_flight)
        self.in_flight_requests = dict(state.in_flight_requests)
        self.placements = state.placements
        self._views: list[NodeView] | None = None

    def freeze(self) -> KubeState:
        # Every field of KubeState is an attribute of the same name here.
        fields = {name: getattr(self, name) for name in KubeState.__struct_fields__}
        return KubeState(**{**fields, "in_flight": self.in_flight.held()})

    def _update(self, key: str, **changes: Any) -> None:
        self.pending[key] = msgspec.structs.replace(self.pending[key], **changes)

    # inputs (through step)
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
        gated = bool(scheduling_gates(pod))
        entry = self.pending.get(ref.key)
        if entry is None or (entry.ref.uid != ref.uid and not entry.binding):
            self.pending[ref.key] = PendingPod(
                ref=ref, request=request, invalid=invalid, next_try_ms=now_ms, gated=gated
            )
        elif entry.request != request or entry.invalid != invalid or entry.gated != gated or entry.ref != ref:
            self._update(
                ref.key, ref=ref, request=request, invalid=invalid, gated=gated, next_try_ms=now_ms, last_failure=""
            )

    def on_relist(self, pods: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        """A full list: pods no longer listed are forgotten."""
        seen = set()
        for pod in pods:
            seen.add(pod_ref(pod).key)
            self.on_pod("ADDED", pod, now_ms)
        for key in list(self.pending):
            if key not in seen and not self.pending[key].binding:
                del self.pending[key]

    def on_nodes(
        self, nodes: list[dict[str, Any]], now_ms: int, assigned_pods: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        """The nodes, and (when given) every pod bound to a node and not finished."""
        changed = nodes != self.nodes
        self.nodes = nodes
        if assigned_pods is not None:
            assigned = {}
            for pod in assigned_pods:
                entry = _assigned(pod)
                if entry is not None:
                    assigned[pod_ref(pod).key] = entry
            if assigned != self.assigned:
                self.assigned, changed = assigned, True
                for key in assigned:
                    self.in_flight_requests.pop(key, None)  # landed: counted from the list now
        if changed:
            self._views = None
            self._retry_failed(now_ms, lambda entry: True)

    def on_energy(self, report: EnergyReport, now_ms: int) -> None:
        newer = newer_energy(self.energy, report, now_ms)
        if newer is None:
            return
        self.energy[report.node] = newer
        self._views = None
        # The nodes this robot's report is about (bot_label); only their verdicts can change.
        reported = [
            str(dig(n, "metadata", "name") or "") for n in self.nodes if robot_of(n, self.config) == report.node
        ]
        self._retry_failed(now_ms, lambda entry: energy_may_admit(entry.rejected_by, reported))

    def on_bind_result(self, pod: PodRef, outcome: str, now_ms: int, detail: str = "") -> Decision | None:
        """outcome: one of BOUND, ALREADY_BOUND, DELETING, GATED, PRECONDITION, GONE, ERROR."""
        entry = self.pending.get(pod.key)
        if outcome == BOUND:
            self.pending.pop(pod.key, None)
            placement = entry.placement if entry is not None else None
            return PodBound(pod, placement) if placement is not None else None
        self._release(pod.key)
        if entry is None:
            return None
        successor = bool(pod.uid) and entry.ref.uid != pod.uid  # the watch brought a new pod of that name
        if outcome in (ALREADY_BOUND, DELETING, GONE, PRECONDITION):
            if successor:
                # The answer was about the old pod: try the new one now.
                self._update(pod.key, binding=False, placement=None, next_try_ms=now_ms)
            else:
                del self.pending[pod.key]  # done, or that pod is gone (a successor arrives by the watch)
            return None
        attempts = entry.attempts + 1
        # GATED: the watch ungates it; until then it is not attempted.
        gated = entry.gated or outcome == GATED
        self._update(
            pod.key,
            binding=False,
            placement=None,
            attempts=attempts,
            next_try_ms=now_ms + self._backoff(attempts),
            gated=gated,
        )
        if outcome == GATED:
            return None
        return PodUnschedulable(entry.ref, f"binding failed: {detail}")

    # decisions
    def decide(self, now_ms: int) -> list[Decision]:
        for key in self.in_flight.expired(now_ms):
            self._release(key)
        binding = sum(1 for e in self.pending.values() if e.binding)
        due = sorted(
            (e.next_try_ms, k)
            for k, e in self.pending.items()
            if not e.binding and (e.next_try_ms <= now_ms or (e.gated and not e.last_failure))
        )
        decisions: list[Decision] = []
        for _, key in due:
            entry = self.pending[key]
            if entry.gated:
                failure = self._failure(key, GATED_MESSAGE, reason="SchedulingGated")
                if failure is not None:
                    decisions.append(failure)
                continue
            if binding >= self.config.max_binds_in_flight and entry.request is not None:
                continue  # the bind pool is full: a finished bind brings the next cycle
            decision = self._cycle(key, now_ms)
            if decision is not None:
                decisions.append(decision)
                binding += isinstance(decision, BindPod)
        return decisions

    def node_views(self) -> list[NodeView]:
        if self._views is None:
            requested: dict[str, dict[str, int]] = {}
            ports: dict[str, set[Port]] = {}
            pods: dict[str, list[PodOnNode]] = {}

            def count(node: str, reqs: Mapping[str, int], used: Iterable[Port], pod: PodOnNode) -> None:
                total = requested.setdefault(node, {})
                for name, value in reqs.items():
                    total[name] = total.get(name, 0) + value
                total["pods"] = total.get("pods", 0) + 1000
                ports.setdefault(node, set()).update(used)
                pods.setdefault(node, []).append(pod)

            for a in self.assigned.values():
                count(a.node, a.requests, a.ports, a.pod)
            for key, req in self.in_flight_requests.items():
                node = self.in_flight.node_of(key)
                if node is not None and key not in self.assigned:
                    pod = PodOnNode(namespace=req.namespace, labels=req.labels)
                    count(node, req.requests, req.ports, pod)
            views: list[NodeView] = []
            for raw in self.nodes:
                v = node_view(raw, self.energy, self.config)
                v = msgspec.structs.replace(
                    v,
                    reserved_wh=self.in_flight.reserved_wh(v.name),
                    requested=requested.get(v.name, {}),
                    used_ports=frozenset(ports.get(v.name, ())),
                    pods=tuple(pods.get(v.name, ())),
                )
                views.append(v)
            self._views = sorted(views, key=lambda v: v.name)
        return self._views

    def profile(self, policy: str, views: list[NodeView]) -> Profile | None:
        """The policy's profile with the kubelet's filters after the taint filter."""
        base = POLICIES.get(policy)
        if base is None:
            return None
        kube: tuple[FilterPlugin, ...] = (
            NodeAffinity(),
            NodeResourcesFit(),
            NodePorts(),
            InterPodAntiAffinity(views),
        )
        names = [f.name for f in base.filters]
        at = names.index("EnergyFresh") if "EnergyFresh" in names else len(names)
        return Profile(base.name, base.filters[:at] + kube + base.filters[at:], base.scorers, base.describe)

    # internals
    def _cycle(self, key: str, now_ms: int) -> Decision | None:
        entry = self.pending[key]
        if entry.request is None:
            self._update(key, attempts=entry.attempts + 1, next_try_ms=now_ms + self.config.backoff_max_ms)
            return self._failure(key, f"invalid pod: {entry.invalid}")
        views = self.node_views()
        ctx = CycleContext(
            now_ms=now_ms,
            max_energy_age_ms=self.config.max_energy_age_ms,
            require_energy=self.config.require_energy,
            cursor=self.placements,
            ring=tuple(v.name for v in views),
        )
        result = schedule(entry.request, views, ctx, self.profile(entry.request.policy, views))
        if isinstance(result, NoFit):
            attempts = entry.attempts + 1
            self._update(
                key,
                attempts=attempts,
                rejected_by=dict(result.filters),
                next_try_ms=now_ms + self._backoff(attempts),
            )
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(result.reasons.items()))
            return self._failure(key, result.message + (f" ({detail})" if detail else ""))
        self._update(key, binding=True, last_failure="", placement=result)
        self.placements += 1
        self.in_flight.add(entry.ref.key, result.node, entry.request.energy_cost_wh, now_ms + self.config.in_flight_ms)
        if isinstance(entry.request, KubeRequest):
            self.in_flight_requests[entry.ref.key] = entry.request
        self._views = None
        return BindPod(entry.ref, result)

    def _failure(self, key: str, message: str, reason: str = "Unschedulable") -> PodUnschedulable | None:
        entry = self.pending[key]
        if message == entry.last_failure:
            return None  # an identical event only repeats itself
        self._update(key, last_failure=message)
        return PodUnschedulable(entry.ref, message, reason)

    def _backoff(self, attempts: int) -> int:
        return backoff_ms(attempts, self.config.backoff_initial_ms, self.config.backoff_max_ms)

    def _release(self, key: str) -> None:
        self.in_flight_requests.pop(key, None)
        if self.in_flight.release(key) is not None:
            self._views = None

    def _retry_failed(self, now_ms: int, relevant: Callable[[PendingPod], bool]) -> None:
        for key, entry in sorted(self.pending.items()):
            retry = entry.attempts and not entry.binding and entry.request is not None and relevant(entry)
            if retry and entry.next_try_ms > now_ms:
                self._update(key, next_try_ms=now_ms)


class KubeStep(msgspec.Struct, frozen=True):
    state: KubeState
    actions: list[Decision]


# -- the pod watch -------------------------------------------------------------
#
# When to list, when to watch and how to react to a failed request: the watch
# thread of the shell feeds what happened to `watch_step` (its docstring has
# the policy as a table, held to the code by tests/test_transition_tables.py)
# and asks `next_request` what to do next.

WATCH_RELIST_AFTER = 3  # failures in a row (without an HTTP status) that make the watch start again from a list


class WatchState(msgspec.Struct, frozen=True):
    resource_version: str | None = None  # where the watch resumes; None: list first
    failures: int = 0  # failed requests in a row


class ListPods(msgspec.Struct, frozen=True):
    """List the pods (then watch from the list's resourceVersion)."""


class WatchPods(msgspec.Struct, frozen=True):
    resource_version: str


class WatchListed(msgspec.Struct, frozen=True):
    """The list was answered at this resourceVersion (its pods go to the scheduler as PodsListed)."""

    resource_version: str


class WatchLine(msgspec.Struct, frozen=True):
    """One line of the watch stream (a JSON watch event)."""

    line: str


class WatchEnded(msgspec.Struct, frozen=True):
    """The API server ended the watch (its timeoutSeconds)."""


class RequestFailed(msgspec.Struct, frozen=True):
    """A list or watch request failed: its HTTP status (None: no answer — a
    connection error, a timeout), why, and the server's Retry-After."""

    status: int | None
    detail: str
    retry_after_s: float | None = None


WatchEvent = WatchListed | WatchLine | WatchEnded | RequestFailed


class DeliverPod(msgspec.Struct, frozen=True):
    """Give the scheduler's core this watch event (as PodWatched)."""

    kind: str
    pod: dict[str, Any]


class EndWatch(msgspec.Struct, frozen=True):
    """Stop reading this watch stream."""

    why: str


class Pause(msgspec.Struct, frozen=True):
    """Wait before the next request."""

    seconds: float
    why: str


class IgnoredLine(msgspec.Struct, frozen=True):
    line: str


WatchAction = DeliverPod | EndWatch | Pause | IgnoredLine


class WatchStep(msgspec.Struct, frozen=True):
    state: WatchState
    actions: list[WatchAction]


def next_request(state: WatchState) -> ListPods | WatchPods:
    """What the watch thread asks the API server next."""
    if state.resource_version is None:
        return ListPods()
    return WatchPods(state.resource_version)


def watch_backoff_s(failures: int) -> float:
    return min(10.0, 0.5 * 2 ** min(failures - 1, 5)) if failures > 0 else 0.0


def watch_step(state: WatchState, event: WatchEvent, now_ms: int) -> WatchStep:
    """The pod watch's reaction to one event (`now_ms`: the convention of
    every core's step; the policy needs no clock: pauses are durations). `failures`
    counts failed requests in a row; a `resourceVersion` of none makes
    `next_request` list again; backoff: 0.5 s doubling, at most 10 s
    (`watch_backoff_s`); "after 3 in a row" is `WATCH_RELIST_AFTER`.

    | what happened | failures | resourceVersion | then |
    |---|---|---|---|
    | list answered (WatchListed) | kept | the list's | - |
    | watch line ADDED/MODIFIED/DELETED | kept | the object's | DeliverPod |
    | watch line BOOKMARK | kept | the bookmark's | - |
    | watch line malformed | kept | kept | IgnoredLine |
    | watch line ERROR 410 (Expired) | 0 | none: re-list | EndWatch |
    | watch line ERROR other (500, 504 ...) | +1 | none after 3 in a row | EndWatch, Pause(backoff) |
    | watch ended by the server (its timeout) | 0 | kept | - |
    | request failed: HTTP 410 | kept | none: re-list | - |
    | request failed: HTTP 429 | +1 | kept | Pause(Retry-After <= 60, or 1 s) |
    | request failed: other HTTP status | +1 | kept | Pause(backoff) |
    | request failed: no HTTP status (connection, timeout) | +1 | none after 3 in a row | Pause(backoff) |
    """
    if isinstance(event, WatchListed):
        return WatchStep(msgspec.structs.replace(state, resource_version=event.resource_version), [])
    if isinstance(event, WatchEnded):
        return WatchStep(msgspec.structs.replace(state, failures=0), [])
    if isinstance(event, RequestFailed):
        return _request_failed(state, event)
    return _watch_line(state, event.line)


def _request_failed(state: WatchState, event: RequestFailed) -> WatchStep:
    if event.status == 410:
        return WatchStep(msgspec.structs.replace(state, resource_version=None), [])
    failures = state.failures + 1
    version = state.resource_version
    if event.status is None and failures >= WATCH_RELIST_AFTER:
        version = None  # the watch keeps failing: start again from a list
    if event.status == 429:
        delay = min(60.0, max(0.0, event.retry_after_s)) if event.retry_after_s is not None else 1.0
    else:
        delay = watch_backoff_s(failures)
    return WatchStep(WatchState(version, failures), [Pause(delay, event.detail)])


def _watch_line(state: WatchState, line: str) -> WatchStep:
    try:
        event = msgspec.json.decode(line)
        kind, obj = event["type"], event["object"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return WatchStep(state, [IgnoredLine(line)])
    if kind == "ERROR":
        if isinstance(obj, Mapping) and obj.get("code") == 410:
            why = f"{obj.get('message', 'expired')} (410 Gone); re-listing"
            return WatchStep(WatchState(None, 0), [EndWatch(why)])
        failed = _request_failed(state, RequestFailed(None, f"watch error event: {obj}"))
        return WatchStep(failed.state, [EndWatch(f"watch error event: {obj}"), *failed.actions])
    new_version = dig(obj, "metadata", "resourceVersion")
    if new_version:
        state = msgspec.structs.replace(state, resource_version=str(new_version))
    if kind != "BOOKMARK" and isinstance(obj, dict):
        return WatchStep(state, [DeliverPod(str(kind), obj)])
    return WatchStep(state, [])
