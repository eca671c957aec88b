"""Filter plugins for what the kubelet enforces (pure: no I/O, no clock).

A pod the scheduler binds to a node the kubelet then rejects fails (OutOfcpu,
NodeAffinity, ...) and its controller recreates it, possibly onto the same
node. So Kubernetes mode adds kube-scheduler's filters for those checks to
the framework's (services.scheduler.framework), as plugins of the same
`FilterPlugin` Protocol:

- NodeAffinity: nodeSelector and the required nodeAffinity terms
  ("node(s) didn't match Pod's node affinity/selector");
- NodeResourcesFit: requests against allocatable minus the requests of the
  pods bound to the node and of our binds in flight ("Insufficient cpu",
  "Too many pods");
- NodePorts: a hostPort already used on the node, same protocol and
  overlapping host IP ("node(s) didn't have free ports for the requested
  pod ports");
- InterPodAntiAffinity: the incoming pod's required anti-affinity terms
  against the pods in the node's topology domain ("node(s) didn't match pod
  anti-affinity rules"); existing pods' terms against it are not checked.

The Kubernetes values travel in `KubeNodeView` / `KubeRequest`, subclasses
of the framework's `NodeView` / `PlacementRequest`; the plugins let any
other value pass, so native mode is unaffected.

Quantities are parsed to integer milli-units (`"500m"` cpu -> 500,
`"128Mi"` -> 128 * 2**20 * 1000), so every resource compares exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from services.scheduler.framework import CycleContext, NodeView, PlacementRequest

REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(text: object) -> int:
    """A Kubernetes quantity in milli-units (rounded up, as the API server does); ValueError if malformed."""
    raw = str(text).strip()
    m = _QUANTITY.match(raw)
    if m is None:
        raise ValueError(f"not a quantity: {raw!r}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        raise ValueError(f"not a quantity: {raw!r}") from None
    if number < 0:
        raise ValueError(f"negative quantity: {raw!r}")
    value = number * Decimal(_SUFFIXES[m.group(2) or ""]) * 1000
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def format_milli(resource: str, milli: int) -> str:
    if resource == "cpu":
        return f"{milli}m"
    return str(milli // 1000)


Port = tuple[str, str, int]  # (hostIP, protocol, hostPort)
Requirement = tuple[str, str, tuple[str, ...]]  # (key, operator, values)


class AffinityTerm(msgspec.Struct, frozen=True):
    """One nodeSelectorTerm: all its requirements must hold."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()  # only metadata.name exists


class AntiAffinityTerm(msgspec.Struct, frozen=True):
    topology_key: str
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()
    namespaces: tuple[str, ...] = ()  # () -> the pod's own namespace


class PodOnNode(msgspec.Struct, frozen=True):
    namespace: str
    labels: dict[str, str]


class KubeNodeView(NodeView, frozen=True, kw_only=True):
    allocatable: dict[str, int] | None = None  # milli-units; None: the node reports none
    requested: dict[str, int] = {}  # bound + in flight, milli-units; "pods" counts pods * 1000
    used_ports: frozenset[Port] = frozenset()
    pods: tuple[PodOnNode, ...] = ()


class KubeRequest(PlacementRequest, frozen=True, kw_only=True):
    namespace: str = "default"
    node_selector: dict[str, str] = {}
    affinity_terms: tuple[AffinityTerm, ...] = ()  # ORed; () -> no required node affinity
    requests: dict[str, int] = {}  # milli-units
    ports: tuple[Port, ...] = ()
    anti_affinity: tuple[AntiAffinityTerm, ...] = ()
    labels: dict[str, str] = {}  # the pod's own (for other pods' anti-affinity while it is in flight)


# -- reading a pod ---------------------------------------------------------------


def _requirements(items: object, where: str) -> tuple[Requirement, ...]:
    out: list[Requirement] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: a requirement must be an object")
        op = str(item.get("operator") or "")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"):
            raise ValueError(f"{where}: unknown operator {op!r}")
        values = tuple(str(v) for v in item.get("values") or ())
        out.append((str(item.get("key") or ""), op, values))
    return tuple(out)


def pod_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """Effective requests: the sum over containers, at least each init container's, plus overhead."""
    total: dict[str, int] = {}
    for container in spec.get("containers") or ():
        for name, q in ((container.get("resources") or {}).get("requests") or {}).items():
            total[str(name)] = total.get(str(name), 0) + parse_quantity(q)
    for container in spec.get("initContainers") or ():
        for name, q in ((container.get("resources") or {}).get("requests") or {}).items():
            total[str(name)] = max(total.get(str(name), 0), parse_quantity(q))
    for name, q in (spec.get("overhead") or {}).items():
        total[str(name)] = total.get(str(name), 0) + parse_quantity(q)
    return total


def pod_ports(spec: Mapping[str, Any]) -> tuple[Port, ...]:
    ports: list[Port] = []
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            host_port = int(port.get("hostPort") or 0)
            if host_port:
                ports.append((str(port.get("hostIP") or "0.0.0.0"), str(port.get("protocol") or "TCP"), host_port))
    return tuple(ports)


def kube_fields(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The KubeRequest fields of a pod; ValueError naming the bad field."""
    spec = pod.get("spec") or {}
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    try:
        requests = pod_requests(spec)
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"spec.containers[].resources.requests: {exc}") from None
    try:
        ports = pod_ports(spec)
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"spec.containers[].ports: {exc}") from None
    affinity = spec.get("affinity") or {}
    required = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")) or {}
    terms = tuple(
        AffinityTerm(
            labels=_requirements(t.get("matchExpressions"), "nodeAffinity matchExpressions"),
            fields=_requirements(t.get("matchFields"), "nodeAffinity matchFields"),
        )
        for t in required.get("nodeSelectorTerms") or ()
        if isinstance(t, Mapping)
    )
    anti: list[AntiAffinityTerm] = []
    for t in (affinity.get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or ():
        selector = t.get("labelSelector") or {}
        anti.append(
            AntiAffinityTerm(
                topology_key=str(t.get("topologyKey") or ""),
                match_labels=tuple(sorted((str(k), str(v)) for k, v in (selector.get("matchLabels") or {}).items())),
                expressions=_requirements(selector.get("matchExpressions"), "podAntiAffinity matchExpressions"),
                namespaces=tuple(str(n) for n in t.get("namespaces") or ()),
            )
        )
    return {
        "namespace": namespace,
        "node_selector": {str(k): str(v) for k, v in (spec.get("nodeSelector") or {}).items()},
        "affinity_terms": terms,
        "requests": requests,
        "ports": ports,
        "anti_affinity": tuple(anti),
    }


def node_allocatable(node: Mapping[str, Any]) -> dict[str, int] | None:
    raw = (node.get("status") or {}).get("allocatable")
    if not isinstance(raw, Mapping):
        return None
    out: dict[str, int] = {}
    for name, q in raw.items():
        try:
            out[str(name)] = parse_quantity(q)
        except ValueError:
            continue
    return out


# -- matching -------------------------------------------------------------------


def requirement_holds(req: Requirement, value: str | None) -> bool:
    _, op, values = req
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if value is None or len(values) != 1:
        return False
    try:
        have, want = int(value), int(values[0])
    except ValueError:
        return False
    return have > want if op == "Gt" else have < want


def node_matches_affinity(request: KubeRequest, node: NodeView) -> bool:
    for key, want in request.node_selector.items():
        if node.labels.get(key) != want:
            return False
    if not request.affinity_terms:
        return True
    for term in request.affinity_terms:
        if not term.labels and not term.fields:
            continue  # an empty term matches nothing
        if all(requirement_holds(r, node.labels.get(r[0])) for r in term.labels) and all(
            requirement_holds(r, node.name if r[0] == "metadata.name" else None) for r in term.fields
        ):
            return True
    return False


def _selects(term: AntiAffinityTerm, pod: PodOnNode, own_namespace: str) -> bool:
    if pod.namespace not in (term.namespaces or (own_namespace,)):
        return False
    if not term.match_labels and not term.expressions:
        return False  # kube-scheduler: an empty selector selects nothing here
    return all(pod.labels.get(k) == v for k, v in term.match_labels) and all(
        requirement_holds(r, pod.labels.get(r[0])) for r in term.expressions
    )


def ports_conflict(a: Port, b: Port) -> bool:
    if a[1] != b[1] or a[2] != b[2]:
        return False
    return a[0] == b[0] or "0.0.0.0" in (a[0], b[0]) or "::" in (a[0], b[0])


# -- the plugins ----------------------------------------------------------------


class NodeAffinity:
    name = "NodeAffinity"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not isinstance(request, KubeRequest) or node_matches_affinity(request, node):
            return None
        return REASON_AFFINITY


class NodeResourcesFit:
    name = "NodeResourcesFit"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not isinstance(request, KubeRequest) or not isinstance(node, KubeNodeView) or node.allocatable is None:
            return None
        alloc, used = node.allocatable, node.requested
        if "pods" in alloc and used.get("pods", 0) + 1000 > alloc["pods"]:
            return f"Too many pods: {used.get('pods', 0) // 1000} of {alloc['pods'] // 1000}"
        for resource, want in sorted(request.requests.items()):
            if want <= 0:
                continue
            if resource not in alloc and resource in ("cpu", "memory", "ephemeral-storage"):
                continue  # kube-scheduler: a node that does not report it is not limited
            free = alloc.get(resource, 0) - used.get(resource, 0)
            if want > free:
                return (
                    f"Insufficient {resource}: requested {format_milli(resource, want)}, "
                    f"free {format_milli(resource, max(0, free))}"
                )
        return None


class NodePorts:
    name = "NodePorts"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not isinstance(request, KubeRequest) or not request.ports or not isinstance(node, KubeNodeView):
            return None
        for want in request.ports:
            if any(ports_conflict(want, used) for used in node.used_ports):
                return f"{REASON_PORTS}: {want[1]} {want[2]}"
        return None


class InterPodAntiAffinity:
    """The incoming pod's required anti-affinity (not existing pods' terms
    against it). Needs every node to find the topology domains: built per
    cycle with the cycle's node views."""

    name = "InterPodAntiAffinity"

    def __init__(self, nodes: Iterable[NodeView]) -> None:
        self.nodes = [n for n in nodes if isinstance(n, KubeNodeView)]

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not isinstance(request, KubeRequest) or not request.anti_affinity:
            return None
        for term in request.anti_affinity:
            domain = node.labels.get(term.topology_key)
            if domain is None:
                continue  # the node is in no domain of this key
            for other in self.nodes:
                if other.labels.get(term.topology_key) != domain:
                    continue
                if any(_selects(term, pod, request.namespace) for pod in other.pods):
                    return REASON_ANTI_AFFINITY
        return None
