"""Native mode's decisions: which workloads the scheduler owns, when it places
them, when it re-places them (pure: no I/O, no clock, no threads).

Theory of operation
-------------------
`NativeState` (frozen) holds what the scheduler knows — the workloads it must
place (from the desired state), the live agents and their status, the last
energy report of every node, the bindings it made and the placements still
in flight. The shell feeds every input as an event to
`step(state, event, now_ms)` (wall clock): DesiredStateRead,
WorkloadStateSeen, AgentLiveliness, AgentStatusSeen, EnergyReported, and
Tick when its timer fires; it carries out the returned actions
(`PublishBinding`, `PublishEvent`, `Requery`), keeps the returned state and
arms its timer at `next_wake_ms(state)`. Within one step the handlers work
on a copy (`_Working`) whose dicts they update; the workloads are frozen
values replaced, never changed.

A workload is the scheduler's when its `agent` is empty or absent
(NotScheduled) or when it carries the `scheduling` extension (the binding
then overrides its `agent`). Each such workload is in one of these states:

| state     | meaning                                   | leaves on                                   |
|-----------|-------------------------------------------|---------------------------------------------|
| unplaced  | needs a node; tried at `next_try_ms`      | fit -> bound (Binding + Scheduled event)    |
|           |                                           | no fit -> unplaced, backoff 1 s .. 10 s     |
|           |                                           | (FailedScheduling event)                    |
| bound     | runs (or will run) on `agent`             | agent lost -> unplaced (re-place at once)   |
|           |                                           | energy < reserve - hysteresis for a         |
|           |                                           | binding older than min_dwell -> re-place    |
| moving    | bound, but should leave its node          | fit elsewhere -> bound there                |
|           | (low energy); keeps its binding until     | node recovers to >= reserve -> bound        |
|           | another node fits                         | no fit -> moving, backoff                   |

An unplaced or moving workload whose last attempt failed is retried at once
(not waiting for its backoff) when an agent appears or changes, or when an
energy report arrives for a node that rejected it for energy.

In flight: a binding counts its `energyCostWh` against its node until the
workload is reported from that node, or `in_flight_ms` passes — so a burst of
placements spreads over the nodes instead of piling onto the richest.

Hysteresis: a node is a candidate only when its projected energy after the
placement stays >= the reserve, but a workload leaves a node only when the
node's energy falls below reserve - `hysteresis_wh`, and not within
`min_dwell_ms` of being bound there. So a node hovering around its reserve
does not make workloads flap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from schemas.liveliness import AgentLiveliness
from schemas.manifest import Manifest, Scheduling, Workload
from schemas.messages import AgentStatus, Binding, CompleteState, EnergyReport, WorkloadState
from services.scheduler.framework import (
    CycleContext,
    EnergyReported,
    NodeView,
    NoFit,
    Placement,
    PlacementRequest,
    Reservation,
    Reservations,
    Tick,
    backoff_ms,
    energy_may_admit,
    newer_energy,
    schedule,
)


class NativeConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_energy_age_ms: int = 30_000
    default_energy_cost_wh: float = 1.0
    in_flight_ms: int = 30_000
    backoff_initial_ms: int = 1_000
    backoff_max_ms: int = 10_000
    hysteresis_wh: float = 2.0
    min_dwell_ms: int = 10_000
    require_energy: bool = True
    seed: int = 0


# -- actions -----------------------------------------------------------------


class PublishBinding(msgspec.Struct, frozen=True):
    binding: Binding


class PublishEvent(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # "Scheduled", "FailedScheduling"
    subject: str
    message: str
    severity: str = "info"


class Requery(msgspec.Struct, frozen=True):
    """Re-read the desired state (`ank/cmd/state`)."""

    reason: str


Action = PublishBinding | PublishEvent | Requery


# -- events ------------------------------------------------------------------


class DesiredStateRead(msgspec.Struct, frozen=True):
    """The reply to `ank/cmd/state`: the desired state and the known workload states."""

    complete: CompleteState


class WorkloadStateSeen(msgspec.Struct, frozen=True):
    state: WorkloadState


class AgentStatusSeen(msgspec.Struct, frozen=True):
    status: AgentStatus


NativeEvent = DesiredStateRead | WorkloadStateSeen | AgentLiveliness | AgentStatusSeen | EnergyReported | Tick

# States that say nothing about where a workload runs.
_PLACELESS_STATES = ("NotScheduled", "Removed")


class Tracked(msgspec.Struct, frozen=True, kw_only=True):
    """One workload the scheduler owns."""

    request: PlacementRequest
    agent: str = ""  # "" unplaced
    bound_at_ms: int = 0
    sent_ms: int = 0  # when we last published its binding (0: adopted, never sent)
    needs_placement: bool = True  # unplaced, or moving
    why: str = "new workload"
    attempts: int = 0
    next_try_ms: int = 0
    last_failure: str = ""
    rejected_by: dict[str, str] = {}  # node -> the filter that rejected it


class NativeState(msgspec.Struct, frozen=True):
    """What the scheduler knows between two events."""

    config: NativeConfig = msgspec.field(default_factory=NativeConfig)
    workloads: dict[str, Tracked] = {}
    alive: frozenset[str] = frozenset()  # agents whose liveliness token is up
    status: dict[str, AgentStatus] = {}
    energy: dict[str, EnergyReport] = {}  # node -> its latest report
    in_flight: dict[str, Reservation] = {}  # workload -> its node, while its binding is in flight
    placements: int = 0
    desired_known: bool = False
    desired_names: frozenset[str] = frozenset()  # every workload of the desired state, ours or not


def request_for(name: str, workload: Workload, config: NativeConfig) -> PlacementRequest | None:
    """The placement request of a workload, or None if it is not the scheduler's."""
    if workload.scheduling is None and workload.agent:
        return None  # a fixed agent and no scheduling extension: the planner places it
    hints = workload.scheduling or Scheduling()
    cost = hints.energy_cost_wh if hints.energy_cost_wh is not None else config.default_energy_cost_wh
    return PlacementRequest(
        workload=name,
        selector=dict(hints.selector),
        policy=hints.policy or "MALE",
        min_energy_wh=hints.min_energy_wh,
        energy_cost_wh=cost,
    )


def step(state: NativeState, event: NativeEvent, now_ms: int) -> NativeStep:
    """The scheduler's reaction to one event: its new state and the actions."""
    work = _Working(state)
    if isinstance(event, DesiredStateRead):
        actions = work.on_complete_state(event.complete, now_ms)
    elif isinstance(event, WorkloadStateSeen):
        actions = work.on_workload_state(event.state, now_ms)
    elif isinstance(event, AgentLiveliness):
        actions = work.on_agent(event.agent, event.alive, now_ms)
    elif isinstance(event, AgentStatusSeen):
        actions = work.on_agent_status(event.status, now_ms)
    elif isinstance(event, EnergyReported):
        actions = work.on_energy(event.report, now_ms)
    else:
        actions = work.tick(now_ms)
    return NativeStep(work.freeze(), actions)


# -- queries -------------------------------------------------------------------


def next_wake_ms(state: NativeState) -> int | None:
    """When a Tick has something to do (None: nothing planned)."""
    times = [t.next_try_ms for t in state.workloads.values() if t.needs_placement]
    times += [held.until_ms for held in state.in_flight.values()]
    return min(times, default=None)


def bindings(state: NativeState) -> list[Binding]:
    """The current binding of every placed workload (for late joiners)."""
    return [
        Binding(workload=name, agent=t.agent, policy=t.request.policy, reason="current binding")
        for name, t in sorted(state.workloads.items())
        if t.agent
    ]


def node_views(state: NativeState, now_ms: int) -> list[NodeView]:
    """Every known node as the framework sees it."""
    return _Working(state).node_views(now_ms)


class _Working:
    """One step's working copy of a NativeState (its dicts copied, its values
    frozen), with the view caches of that step."""

    def __init__(self, state: NativeState) -> None:
        self.config = state.config
        self.workloads = dict(state.workloads)
        self.alive = set(state.alive)
        self.status = dict(state.status)
        self.energy = dict(state.energy)
        self.in_flight = Reservations.of(state.in_flight)
        self.placements = state.placements
        self.desired_known = state.desired_known
        self.desired_names = state.desired_names
        self._views: dict[str, NodeView] = {}  # cache, rebuilt per node on change
        self._names: list[str] | None = None  # every known node, sorted (cache)
        self._ring_cache: tuple[str, ...] | None = None  # live agents, sorted (round-robin)

    def freeze(self) -> NativeState:
        return NativeState(
            config=self.config,
            workloads=self.workloads,
            alive=frozenset(self.alive),
            status=self.status,
            energy=self.energy,
            in_flight=self.in_flight.held(),
            placements=self.placements,
            desired_known=self.desired_known,
            desired_names=self.desired_names,
        )

    # -- inputs (through step) ---------------------------------------------

    def on_complete_state(self, state: CompleteState, now_ms: int) -> list[Action]:
        """The desired state and the known workload states (reply to ank/cmd/state)."""
        self.desired_known = True
        self.desired_names = frozenset(state.desired.workloads)
        where = _current_agents(state.workload_states)
        actions: list[Action] = []
        wanted = _requests(state.desired, self.config)
        for name in list(self.workloads):
            if name not in wanted:
                del self.workloads[name]
                self._release(name)
        for name, request in wanted.items():
            tracked = self.workloads.get(name)
            if tracked is None:
                tracked = Tracked(request=request, next_try_ms=now_ms)
                agent = where.get(name, "")
                if agent:
                    # Already placed (our earlier binding, or before we started): adopt it.
                    tracked = msgspec.structs.replace(tracked, agent=agent, bound_at_ms=now_ms, needs_placement=False)
                self.workloads[name] = tracked
                if agent and agent not in self.alive and self._liveness_known(agent):
                    self._unplace(name, now_ms, f"agent {agent} not alive")
            elif tracked.request != request:
                self._update(name, request=request)
                if tracked.agent and self._rejects(request, tracked.agent, now_ms, own=True):
                    self._unplace(name, now_ms, "its scheduling hints changed", moving=True)
                elif not tracked.agent:
                    self._update(name, next_try_ms=now_ms, attempts=0)
        actions += self._run(now_ms)
        return actions

    def on_workload_state(self, ws: WorkloadState, now_ms: int) -> list[Action]:
        tracked = self.workloads.get(ws.workload)
        state = ws.execution_state.state
        if tracked is None:
            if ws.workload not in self.desired_names and state not in ("Removed", "Stopping"):
                return [Requery(f"{ws.workload} is {state} and not in the desired state known to the scheduler")]
            return []
        if state == "NotScheduled":
            if not tracked.agent or tracked.needs_placement:
                return []
            if tracked.sent_ms and now_ms - tracked.sent_ms < self.config.in_flight_ms:
                return []  # our binding has not reached the planner yet
            # The planner lost the binding (e.g. it restarted): say it again.
            self._update(ws.workload, sent_ms=now_ms)
            binding = Binding(
                workload=ws.workload,
                agent=tracked.agent,
                policy=tracked.request.policy,
                reason=f"re-sent: the planner reported NotScheduled, bound to {tracked.agent}",
            )
            return [PublishBinding(binding)]
        if state in _PLACELESS_STATES or not ws.agent:
            return []
        if ws.agent == tracked.agent:
            self._release(ws.workload)  # landed: the node's own energy reports count it from now on
        elif not tracked.agent:
            self._update(ws.workload, agent=ws.agent, bound_at_ms=now_ms, needs_placement=False)
        return []

    def on_agent(self, agent: str, alive: bool, now_ms: int) -> list[Action]:
        """An agent's liveliness token appeared or vanished."""
        if alive:
            if agent in self.alive:
                return []
            self.alive.add(agent)
            self._ring_cache = None
            self._invalidate(agent)
            self._retry_failed(now_ms, lambda t: True)
            return self._run(now_ms)
        if agent not in self.alive:
            return []
        self.alive.discard(agent)
        self._ring_cache = None
        self._invalidate(agent)
        for name, tracked in sorted(self.workloads.items()):
            if tracked.agent == agent:
                self._unplace(name, now_ms, f"agent {agent} lost")
                self._release(name)
        return self._run(now_ms)

    def on_agent_status(self, status: AgentStatus, now_ms: int) -> list[Action]:
        old = self.status.get(status.agent)
        self.status[status.agent] = status
        if old is not None and (old.arch, old.tags) == (status.arch, status.tags):
            return []
        self._invalidate(status.agent)
        self._retry_failed(now_ms, lambda t: True)
        return self._run(now_ms)

    def on_energy(self, report: EnergyReport, now_ms: int) -> list[Action]:
        newer = newer_energy(self.energy, report, now_ms)
        if newer is None:
            return []
        report = self.energy[report.node] = newer
        self._invalidate(report.node)
        node = report.node
        for name, tracked in sorted(self.workloads.items()):
            if tracked.agent != node or tracked.needs_placement:
                continue
            floor = tracked.request.min_energy_wh - self.config.hysteresis_wh
            dwelt = now_ms - tracked.bound_at_ms >= self.config.min_dwell_ms
            if report.energy_wh < floor and dwelt:
                self._unplace(
                    name,
                    now_ms,
                    f"{node} energy {report.energy_wh:.1f} Wh below reserve {tracked.request.min_energy_wh:.1f} Wh"
                    f" - hysteresis {self.config.hysteresis_wh:.1f} Wh",
                    moving=True,
                )
        self._retry_failed(now_ms, lambda t: energy_may_admit(t.rejected_by, (node,)))
        return self._run(now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        for name in self.in_flight.expired(now_ms):
            self._release(name)
        return self._run(now_ms)

    # -- internals ---------------------------------------------------------

    def node_views(self, now_ms: int) -> list[NodeView]:
        if self._names is None:
            self._names = sorted(self.alive | set(self.status) | set(self.energy))
        views = []
        for name in self._names:
            view = self._views.get(name)
            if view is None:
                view = self._view(name)
                self._views[name] = view
            views.append(view)
        return views

    def _view(self, name: str) -> NodeView:
        status = self.status.get(name)
        report = self.energy.get(name)
        reserved = self.in_flight.reserved_wh(name)
        return NodeView(
            name=name,
            alive=name in self.alive,
            has_status=status is not None,
            arch=status.arch if status else "",
            labels=dict(status.tags) if status else {},
            energy_wh=report.energy_wh if report else None,
            capacity_wh=report.capacity_wh if report else None,
            energy_time_ms=report.time_ms if report else None,
            reserved_wh=reserved,
        )

    def _invalidate(self, node: str) -> None:
        self._views.pop(node, None)
        if self._names is not None and node not in self._names:
            self._names = None  # a node appeared: its name joins the sorted list

    def _liveness_known(self, agent: str) -> bool:
        # Before any liveliness sample arrived we cannot tell "lost" from "not seen yet".
        return bool(self.alive) or agent in self.status

    def _release(self, workload: str) -> None:
        node = self.in_flight.release(workload)
        if node is not None:
            self._invalidate(node)

    def _update(self, name: str, **changes: Any) -> None:
        self.workloads[name] = msgspec.structs.replace(self.workloads[name], **changes)

    def _unplace(self, name: str, now_ms: int, why: str, *, moving: bool = False) -> None:
        agent = self.workloads[name].agent if moving else ""
        self._update(name, needs_placement=True, why=why, attempts=0, next_try_ms=now_ms, last_failure="", agent=agent)

    def _retry_failed(self, now_ms: int, relevant: Callable[[Tracked], bool]) -> None:
        for name, tracked in sorted(self.workloads.items()):
            if tracked.needs_placement and tracked.attempts and relevant(tracked) and tracked.next_try_ms > now_ms:
                self._update(name, next_try_ms=now_ms)

    def _rejects(self, request: PlacementRequest, node: str, now_ms: int, *, own: bool) -> bool:
        """Whether the filters reject `node` for the workload (own: it already runs there)."""
        if own:
            request = msgspec.structs.replace(request, energy_cost_wh=0.0)
        view = self._views.get(node) or self._view(node)
        return isinstance(schedule(request, [view], self._context(now_ms)), NoFit)

    def _ring(self) -> tuple[str, ...]:
        if self._ring_cache is None:
            self._ring_cache = tuple(sorted(self.alive))
        return self._ring_cache

    def _context(self, now_ms: int) -> CycleContext:
        return CycleContext(
            now_ms=now_ms,
            max_energy_age_ms=self.config.max_energy_age_ms,
            require_energy=self.config.require_energy,
            cursor=self.placements,
            seed=self.config.seed,
            ring=self._ring(),
        )

    def _run(self, now_ms: int) -> list[Action]:
        if not self.desired_known:
            return []
        due = sorted(
            (t.next_try_ms, name) for name, t in self.workloads.items() if t.needs_placement and t.next_try_ms <= now_ms
        )
        actions: list[Action] = []
        for _, name in due:
            actions += self._attempt(name, self.workloads[name], now_ms)
        return actions

    def _attempt(self, name: str, tracked: Tracked, now_ms: int) -> list[Action]:
        moving_from = tracked.agent
        if (
            moving_from
            and moving_from in self.alive
            and not self._rejects(tracked.request, moving_from, now_ms, own=True)
        ):
            # Its node recovered (e.g. charged above the reserve): stay.
            self._update(name, needs_placement=False, attempts=0, last_failure="")
            return []
        candidates = [v for v in self.node_views(now_ms) if v.name != moving_from]
        result = schedule(tracked.request, candidates, self._context(now_ms))
        if isinstance(result, Placement):
            return self._bind(name, tracked, result, now_ms)
        attempts = tracked.attempts + 1
        message = result.message
        if moving_from:
            message = f"cannot move off {moving_from} ({tracked.why}): {message}"
        self._update(
            name,
            attempts=attempts,
            rejected_by=dict(result.filters),
            next_try_ms=now_ms + backoff_ms(attempts, self.config.backoff_initial_ms, self.config.backoff_max_ms),
            last_failure=message,
        )
        if message == tracked.last_failure:
            return []  # the same failure again: the event would only repeat itself
        detail = "; ".join(f"{n}: {r}" for n, r in sorted(result.reasons.items()))
        return [
            PublishEvent(
                kind="FailedScheduling",
                subject=name,
                message=f"{name}: {message}" + (f" ({detail})" if detail else ""),
                severity="warning",
            )
        ]

    def _bind(self, name: str, tracked: Tracked, placement: Placement, now_ms: int) -> list[Action]:
        previous = tracked.agent
        self._update(
            name,
            agent=placement.node,
            bound_at_ms=now_ms,
            needs_placement=False,
            attempts=0,
            last_failure="",
            rejected_by={},
            sent_ms=now_ms,
        )
        self.placements += 1
        self._release(name)
        self.in_flight.add(name, placement.node, tracked.request.energy_cost_wh, now_ms + self.config.in_flight_ms)
        self._invalidate(placement.node)
        why = tracked.why if previous or tracked.why != "new workload" else ""
        reason = placement.reason + (f" (re-placed: {why})" if why else "")
        binding = Binding(
            workload=name, agent=placement.node, policy=placement.policy, score=placement.score, reason=reason
        )
        moved = f" (was on {previous})" if previous else ""
        return [
            PublishBinding(binding),
            PublishEvent(kind="Scheduled", subject=name, message=f"{name} bound to {placement.node}{moved}: {reason}"),
        ]


def _requests(desired: Manifest, config: NativeConfig) -> dict[str, PlacementRequest]:
    out = {}
    for name, workload in desired.workloads.items():
        request = request_for(name, workload, config)
        if request is not None:
            out[name] = request
    return out


def _current_agents(states: Iterable[WorkloadState]) -> dict[str, str]:
    """workload -> the agent its latest placed state names."""
    latest: dict[str, tuple[int, int, str]] = {}
    for ws in states:
        if ws.execution_state.state in _PLACELESS_STATES or not ws.agent:
            continue
        stamp = (ws.time_ms, ws.seq, ws.agent)
        if ws.workload not in latest or stamp > latest[ws.workload]:
            latest[ws.workload] = stamp
    return {name: stamp[2] for name, stamp in latest.items()}


class NativeStep(msgspec.Struct, frozen=True):
    state: NativeState
    actions: list[Action]
