"""The scheduling framework: which node runs a workload (pure: no I/O, no clock).

Theory of operation
-------------------
A placement decision is split into the extension points of the Kubernetes
scheduling framework, and a policy is only a choice of plugins for them:

    filter     may this node run it?        every FilterPlugin must pass; the
                                            first that fails names the reason
    score      how good is this node?       each ScorePlugin scores every
                                            node that passed all filters
    normalise  make scores comparable       each plugin's scores are scaled
                                            to 0..100 (min-max), then weighted
    (choose)   highest total wins; ties go to the node name that sorts first,
               so a decision never depends on dict or arrival order
    reserve    count it before it lands     `Reservations` counts the
                                            workload's energy cost against
                                            its node while in flight, so a
                                            burst of placements spreads
    bind       tell the world               an action the mode's core returns
                                            (native: PublishBinding; Kubernetes:
                                            BindPod) and its shell carries out

A node a filter rejects is recorded with the filter's name (`NoFit.filters`),
so a caller decides from that typed reason — e.g. "retry when energy changes"
for the ENERGY_FILTERS — never from the text of the message.

Nodes and requests are plain values (`NodeView`, `PlacementRequest`); both
modes (native agents on the bus, Kubernetes nodes) translate into them. The
time of a decision (`CycleContext.now_ms`, wall clock) is passed in.

Policies (`POLICIES`):

| policy        | filters                                   | score                |
|---------------|-------------------------------------------|----------------------|
| MALE          | alive, ready, selector, taints, energy    | most projected Wh    |
| round-robin   | alive, ready, selector, taints, energy    | next in ring order   |
| random        | alive, ready, selector, taints, energy    | seeded hash          |

A new policy is a new `Profile` in `POLICIES` (or passed by the caller); the
loop in `schedule()` never changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ank_common.digest import blake2b
from schemas.messages import EnergyReport

# Taint effects that keep a pod off a node unless tolerated (PreferNoSchedule
# only prefers, so it never filters).
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


class Taint(msgspec.Struct, frozen=True):
    key: str
    value: str = ""
    effect: str = "NoSchedule"


class Toleration(msgspec.Struct, frozen=True):
    key: str = ""  # "" with operator Exists tolerates every taint
    operator: str = "Equal"  # "Equal" or "Exists"
    value: str = ""
    effect: str = ""  # "" tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    """A node as the framework sees it: an agent (native) or a Kubernetes node."""

    name: str
    alive: bool = True
    has_status: bool = True  # native: its AgentStatus (arch, tags) is known
    ready: bool = True
    unschedulable: bool = False
    arch: str = ""
    labels: dict[str, str] = {}  # agent tags, or Kubernetes node labels
    taints: tuple[Taint, ...] = ()
    energy_wh: float | None = None
    capacity_wh: float | None = None
    energy_time_ms: int | None = None  # when the energy was measured (wall clock)
    reserved_wh: float = 0.0  # energy cost of placements in flight on this node

    @property
    def projected_wh(self) -> float:
        """The energy left once the placements in flight have landed."""
        return (self.energy_wh or 0.0) - self.reserved_wh


class PlacementRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What must be placed: a workload (native) or a pod (Kubernetes)."""

    workload: str
    selector: dict[str, str] = {}  # label/tag equality; the key `arch` matches the node's arch
    policy: str = "MALE"
    min_energy_wh: float = 0.0  # the reserve a node must keep after placement
    energy_cost_wh: float = 1.0  # counted against the node while in flight
    tolerations: tuple[Toleration, ...] = ()


class CycleContext(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about the moment of one decision."""

    now_ms: int
    max_energy_age_ms: int = 30_000
    require_energy: bool = True  # False: a node with no energy report at all is a candidate
    cursor: int = 0  # placements made so far (round-robin position)
    seed: int = 0  # the random policy's seed
    ring: tuple[str, ...] = ()  # every node's name in ring order (round-robin)


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    workload: str
    node: str
    policy: str
    score: float  # the winner's weighted, normalised total (0..100 per unit weight)
    reason: str
    candidates: int


class NoFit(msgspec.Struct, frozen=True, kw_only=True):
    """Nothing fits: why, per node (as kube-scheduler's FailedScheduling)."""

    workload: str
    policy: str
    reasons: dict[str, str]  # node -> why the first filter that rejected it did
    filters: dict[str, str] = {}  # node -> the name of that filter (the typed reason)

    @property
    def message(self) -> str:
        if not self.reasons:
            return "0/0 nodes are available: no nodes known"
        counts = Counter(_reason_class(r) for r in self.reasons.values())
        parts = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        return f"0/{len(self.reasons)} nodes are available: {parts}"


def _reason_class(reason: str) -> str:
    # The per-node reasons carry numbers; the summary groups them by kind.
    return reason.split(":", 1)[0]


# -- plugin interfaces ------------------------------------------------------


class FilterPlugin(Protocol):
    name: str

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        """None if the node may run it; otherwise the reason it may not."""
        ...


class ScorePlugin(Protocol):
    name: str

    def score(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> float:
        """Higher is better. Scores are normalised across nodes afterwards."""
        ...


@dataclass(frozen=True)
class Profile:
    """A policy: its filters and weighted scorers."""

    name: str
    filters: tuple[FilterPlugin, ...]
    scorers: tuple[tuple[ScorePlugin, float], ...]
    describe: str = ""  # how the reason of a placement reads


# -- filters -----------------------------------------------------------------


class Alive:
    name = "Alive"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not node.alive:
            return "agent not alive"
        if not node.has_status:
            return "agent status unknown"
        return None


class ReadyAndSchedulable:
    name = "NodeReady"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not node.ready:
            return "node not Ready"
        if node.unschedulable:
            return "node unschedulable"
        return None


class Selector:
    name = "Selector"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not request.selector:
            return None
        for key, want in sorted(request.selector.items()):
            have = node.arch if key == "arch" else node.labels.get(key)
            if have != want:
                return f"selector mismatch: {key}={have!r}, wants {want!r}"
        return None


class TaintToleration:
    name = "TaintToleration"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if not node.taints:
            return None
        for taint in node.taints:
            if taint.effect not in BLOCKING_EFFECTS:
                continue
            if not any(t.tolerates(taint) for t in request.tolerations):
                return f"untolerated taint: {taint.key}={taint.value}:{taint.effect}"
        return None


class EnergyFresh:
    name = "EnergyFresh"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if node.energy_wh is None or node.energy_time_ms is None:
            return None if not ctx.require_energy else "no energy report"
        age = ctx.now_ms - node.energy_time_ms
        if age > ctx.max_energy_age_ms:
            return f"energy report stale: {age / 1000:.1f} s old > {ctx.max_energy_age_ms / 1000:.1f} s"
        return None


class EnergyReserve:
    name = "EnergyReserve"

    def filter(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> str | None:
        if node.energy_wh is None:
            return None  # unmetered node (allowed only when energy is not required)
        left = node.projected_wh - request.energy_cost_wh
        if left < request.min_energy_wh:
            return f"energy below reserve: {left:.1f} Wh after placement < {request.min_energy_wh:.1f} Wh"
        return None


# -- scorers -----------------------------------------------------------------


class MostEnergy:
    """MALE: the node with the most projected energy (Wh) wins."""

    name = "MostEnergy"

    def score(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> float:
        return node.projected_wh


class RoundRobin:
    """The next node in ring order after the last placement."""

    name = "RoundRobin"

    def score(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> float:
        ring = ctx.ring
        if node.name not in ring:
            return -float(len(ring) + 1)
        return -float((ring.index(node.name) - ctx.cursor) % len(ring))


class SeededRandom:
    """A uniform pseudo-random choice, reproducible from the seed."""

    name = "Random"

    def score(self, request: PlacementRequest, node: NodeView, ctx: CycleContext) -> float:
        digest = blake2b(f"{ctx.seed}/{ctx.cursor}/{request.workload}/{node.name}".encode(), digest_size=8)
        return float(int.from_bytes(digest.digest(), "big"))


# The filters whose verdict a new energy report can change.
ENERGY_FILTERS = frozenset({EnergyFresh.name, EnergyReserve.name})
# ... and "": a node that was not among the nodes of the last attempt.
_ENERGY_OR_UNKNOWN = ENERGY_FILTERS | {""}


def energy_may_admit(rejected_by: Mapping[str, str], nodes: Iterable[str]) -> bool:
    """Whether a new energy report of `nodes` may let a failed placement fit:
    the typed reason (`NoFit.filters`, node -> filter name) of one of them is
    an energy filter, or it was not among the nodes of the last attempt.
    Both modes retry at once on this, never on a message's text."""
    return any(rejected_by.get(node, "") in _ENERGY_OR_UNKNOWN for node in nodes)


FILTERS: tuple[FilterPlugin, ...] = (
    Alive(),
    ReadyAndSchedulable(),
    Selector(),
    TaintToleration(),
    EnergyFresh(),
    EnergyReserve(),
)

POLICIES: dict[str, Profile] = {
    "MALE": Profile("MALE", FILTERS, ((MostEnergy(), 1.0),), describe="most projected energy"),
    "round-robin": Profile("round-robin", FILTERS, ((RoundRobin(), 1.0),), describe="next in ring order"),
    "random": Profile("random", FILTERS, ((SeededRandom(), 1.0),), describe="seeded random choice"),
}


# -- the loop ----------------------------------------------------------------


def normalise(scores: Mapping[str, float]) -> dict[str, float]:
    """Min-max to 0..100; all equal -> all 100 (the tie-break decides)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 100.0)
    span = high - low
    return {name: 100.0 * (value - low) / span for name, value in scores.items()}


def feasible(
    request: PlacementRequest, nodes: Iterable[NodeView], filters: Sequence[FilterPlugin], ctx: CycleContext
) -> tuple[list[NodeView], dict[str, str], dict[str, str]]:
    """The nodes that pass every filter; of the others, the first failing
    filter's reason and that filter's name."""
    passed: list[NodeView] = []
    rejected: dict[str, str] = {}
    rejected_by: dict[str, str] = {}
    checks = [(plugin.name, plugin.filter) for plugin in filters]  # bound once: this loop is the hot path
    for node in nodes:
        for name, check in checks:
            reason = check(request, node, ctx)
            if reason is not None:
                rejected[node.name] = reason
                rejected_by[node.name] = name
                break
        else:
            passed.append(node)
    return passed, rejected, rejected_by


def schedule(
    request: PlacementRequest, nodes: Iterable[NodeView], ctx: CycleContext, profile: Profile | None = None
) -> Placement | NoFit:
    """One scheduling cycle: filter, score, normalise, choose."""
    profile = profile or POLICIES.get(request.policy)
    node_list = list(nodes)
    if profile is None:
        return NoFit(
            workload=request.workload,
            policy=request.policy,
            reasons={n.name: f"unknown policy: {request.policy!r} (known: {', '.join(POLICIES)})" for n in node_list}
            or {"-": f"unknown policy: {request.policy!r}"},
        )
    passed, rejected, rejected_by = feasible(request, node_list, profile.filters, ctx)
    if not passed:
        return NoFit(workload=request.workload, policy=profile.name, reasons=rejected, filters=rejected_by)
    totals = dict.fromkeys((n.name for n in passed), 0.0)
    for plugin, weight in profile.scorers:
        score = plugin.score
        raw = {n.name: score(request, n, ctx) for n in passed}
        for name, value in normalise(raw).items():
            totals[name] += weight * value
    best = max(totals.values())
    winner = min((n for n in passed if totals[n.name] == best), key=lambda n: n.name)
    reason = f"{profile.name}: {profile.describe}; {winner.name}"
    if winner.energy_wh is not None:
        reason += f" projected {winner.projected_wh:.1f} Wh"
    reason += f" of {len(passed)} candidate(s)"
    return Placement(
        workload=request.workload,
        node=winner.name,
        policy=profile.name,
        score=round(totals[winner.name], 3),
        reason=reason,
        candidates=len(passed),
    )


class Reservation(msgspec.Struct, frozen=True):
    node: str
    cost_wh: float
    until_ms: int


class Reservations:
    """The reserve phase, for both modes: the energy cost of each placement
    in flight (workload or pod -> its node), counted against the node until
    the placement lands (`release`) or `until_ms` passes (`expire`)."""

    def __init__(self) -> None:
        self._by_item: dict[str, Reservation] = {}
        self._by_node: dict[str, float] = {}  # node -> sum of its in-flight costs

    def add(self, item: str, node: str, cost_wh: float, until_ms: int) -> None:
        self.release(item)
        self._by_item[item] = Reservation(node, cost_wh, until_ms)
        self._by_node[node] = self._by_node.get(node, 0.0) + cost_wh

    def release(self, item: str) -> str | None:
        """Forget the item's reservation; the node it was counted on, if any."""
        held = self._by_item.pop(item, None)
        if held is None:
            return None
        left = self._by_node.get(held.node, 0.0) - held.cost_wh
        if left > 1e-9:
            self._by_node[held.node] = left
        else:
            self._by_node.pop(held.node, None)
        return held.node

    @classmethod
    def of(cls, held: Mapping[str, Reservation]) -> Reservations:
        reservations = cls()
        for item, reservation in held.items():
            reservations.add(item, reservation.node, reservation.cost_wh, reservation.until_ms)
        return reservations

    def held(self) -> dict[str, Reservation]:
        """Every reservation, by item (a copy: a frozen state may keep it)."""
        return dict(self._by_item)

    def expired(self, now_ms: int) -> list[str]:
        """The items whose reservation is due by now (for the caller to release)."""
        return [item for item, held in self._by_item.items() if held.until_ms <= now_ms]

    def reserved_wh(self, node: str) -> float:
        return self._by_node.get(node, 0.0)

    def node_of(self, item: str) -> str | None:
        held = self._by_item.get(item)
        return held.node if held is not None else None

    def next_expiry_ms(self) -> int | None:
        return min((held.until_ms for held in self._by_item.values()), default=None)

    def __contains__(self, item: object) -> bool:
        return item in self._by_item

    def __len__(self) -> int:
        return len(self._by_item)


# -- events both modes' cores take ---------------------------------------------


class EnergyReported(msgspec.Struct, frozen=True):
    """A node's energy report (bus or InfluxDB)."""

    report: EnergyReport


class Tick(msgspec.Struct, frozen=True):
    """The shell's timer (armed at the core's `next_wake_ms`) fired, or a cycle is wanted."""


def newer_energy(known: Mapping[str, EnergyReport], report: EnergyReport, now_ms: int) -> EnergyReport | None:
    """The report to keep (stamped `now_ms` when it carries no time), or None
    when it is older than the one already known for its node."""
    if report.time_ms <= 0:
        report = msgspec.structs.replace(report, time_ms=now_ms)
    old = known.get(report.node)
    if old is not None and old.time_ms > report.time_ms:
        return None  # an older measurement arriving late
    return report


def backoff_ms(attempts: int, initial_ms: int = 1_000, max_ms: int = 10_000) -> int:
    """Delay before retry number `attempts` (1-based): initial, doubling, capped."""
    if attempts <= 0:
        return 0
    return int(min(max_ms, initial_ms * 2 ** min(attempts - 1, 30)))
