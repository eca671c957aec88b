"""The dashboard's data model: what the system looks like from the bus.

Theory of operation: a `DashboardView` is a frozen value. Every input the
shell receives — the `ank/cmd/state` reply (CompleteState), a WorkloadState
from `ank/state/**`, an agent's liveliness token, its AgentStatus, an
EnergyReport, an Event — is an event given to the one pure
`step(view, event, now_ms)`, which returns the next view and the `Update`s
to push to open pages (`now_ms` is not used yet: the view keeps no timers;
it keeps the signature every core has). Nothing here
reads a clock, a socket or Zenoh, so the tests need none of them.

Workload states are keyed by (agent, workload), as Ankaios keys instances:
during a move a workload can briefly be on two agents. Rules:

    input                                   | effect on the view
    ----------------------------------------+------------------------------------------------
    WorkloadState, older than the one held  | ignored (a late reply or a reordered put)
    WorkloadState Removed                   | the instance leaves the view
    WorkloadState of W on agent A (not "")  | also drops W's NotScheduled entry (it was placed)
    WorkloadState otherwise                 | replaces the instance
    CompleteState                           | desired manifest replaced; its states applied as above;
                                            | its agents known; pushed as a whole snapshot
    liveliness / AgentStatus / EnergyReport | the agent's row (created if new)
    Event                                   | appended; only the newest `max_events` are kept
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import msgspec

from ank_common.views import dashboard_agent_row, dashboard_workload_row, event_row, is_newer
from schemas import AgentStatus, CompleteState, EnergyReport, Event, Manifest, WorkloadState
from schemas.liveliness import AgentLiveliness

UpdateKind = Literal["snapshot", "workload", "workloadRemoved", "agent", "event"]


class Update(msgspec.Struct, frozen=True):
    """One change to push to the open pages: `data` is the JSON-ready row
    (or the whole snapshot)."""

    kind: UpdateKind
    data: dict[str, Any]


class AgentView(msgspec.Struct, frozen=True):
    name: str
    alive: bool | None = None  # None: no liveliness seen (e.g. a robot that only reports energy)
    status: AgentStatus | None = None
    energy: EnergyReport | None = None


class DashboardView(msgspec.Struct, frozen=True):
    desired: Manifest | None = None
    workloads: dict[tuple[str, str], WorkloadState] = {}  # (agent, workload) → latest state
    agents: dict[str, AgentView] = {}
    events: tuple[Event, ...] = ()
    max_events: int = 100
    max_event_bytes: int = 256 * 1024  # the kept events' text, in all


# -- events --------------------------------------------------------------------


# The bus messages are events as they are; only liveliness needs a value.
ViewEvent = CompleteState | WorkloadState | AgentLiveliness | AgentStatus | EnergyReport | Event


class Step(NamedTuple):
    state: DashboardView
    actions: list[Update]


def step(view: DashboardView, event: ViewEvent, now_ms: int) -> Step:
    """The view's reaction to one event: the next view and the updates to push."""
    if isinstance(event, CompleteState):
        return Step(*_on_complete_state(view, event))
    if isinstance(event, WorkloadState):
        return Step(*_on_state(view, event))
    if isinstance(event, AgentLiveliness):
        return Step(*_on_liveliness(view, event.agent, event.alive))
    if isinstance(event, AgentStatus):
        return Step(*_on_agent_status(view, event))
    if isinstance(event, EnergyReport):
        return Step(*_on_energy(view, event))
    return Step(*_on_event(view, event))


# -- inputs --------------------------------------------------------------------


def _on_complete_state(view: DashboardView, complete: CompleteState) -> tuple[DashboardView, list[Update]]:
    view = msgspec.structs.replace(view, desired=complete.desired)
    for state in complete.workload_states:
        view, _ = _on_state(view, state)
    for name in complete.agents:
        if name not in view.agents:
            view = _with_agent(view, AgentView(name, alive=True))
    return view, [Update("snapshot", snapshot(view))]


def _on_liveliness(view: DashboardView, agent: str, alive: bool) -> tuple[DashboardView, list[Update]]:
    current = view.agents.get(agent, AgentView(agent))
    if current.alive == alive:
        return view, []
    return _changed_agent(view, msgspec.structs.replace(current, alive=alive))


def _on_agent_status(view: DashboardView, status: AgentStatus) -> tuple[DashboardView, list[Update]]:
    current = view.agents.get(status.agent, AgentView(status.agent))
    return _changed_agent(view, msgspec.structs.replace(current, status=status))


def _on_energy(view: DashboardView, report: EnergyReport) -> tuple[DashboardView, list[Update]]:
    current = view.agents.get(report.node, AgentView(report.node))
    if current.energy is not None and report.time_ms and current.energy.time_ms > report.time_ms:
        return view, []
    return _changed_agent(view, msgspec.structs.replace(current, energy=report))


def _on_event(view: DashboardView, event: Event) -> tuple[DashboardView, list[Update]]:
    events = (*view.events, event)[-view.max_events :]
    total = sum(event_size(e) for e in events)
    while total > view.max_event_bytes and events:
        total -= event_size(events[0])
        events = events[1:]
    return msgspec.structs.replace(view, events=events), [Update("event", event_row(event))]


def _on_state(view: DashboardView, state: WorkloadState) -> tuple[DashboardView, list[Update]]:
    key = (state.agent, state.workload)
    held = view.workloads.get(key)
    if not is_newer(state, held):
        return view, []
    workloads = dict(view.workloads)
    updates: list[Update] = []
    if state.execution_state.state == "Removed":
        if workloads.pop(key, None) is None:
            return view, []
        updates.append(Update("workloadRemoved", {"name": state.workload, "agent": state.agent}))
    else:
        workloads[key] = state
        if state.agent and workloads.pop(("", state.workload), None) is not None:
            updates.append(Update("workloadRemoved", {"name": state.workload, "agent": ""}))
        updates.append(Update("workload", workload_row(state, view.desired)))
    return msgspec.structs.replace(view, workloads=workloads), updates


def _with_agent(view: DashboardView, agent: AgentView) -> DashboardView:
    return msgspec.structs.replace(view, agents={**view.agents, agent.name: agent})


def _changed_agent(view: DashboardView, agent: AgentView) -> tuple[DashboardView, list[Update]]:
    view = _with_agent(view, agent)
    return view, [Update("agent", agent_row(agent))]


# -- outputs (JSON-ready rows: ank_common.views, the CLI's rows) -----------------


def workload_row(state: WorkloadState, desired: Manifest | None) -> dict[str, Any]:
    """One instance's row."""
    return dashboard_workload_row(state.workload, desired, state)


def workload_rows(view: DashboardView, name: str | None = None) -> list[dict[str, Any]]:
    """Every instance (or those of workload `name`) plus desired workloads no
    state has been seen for yet (Pending(Initial), as the CLI shows them)."""
    rows = [
        workload_row(state, view.desired)
        for (_agent, workload), state in sorted(view.workloads.items(), key=lambda item: (item[0][1], item[0][0]))
        if name is None or workload == name
    ]
    if view.desired is not None:
        seen = {workload for _agent, workload in view.workloads}
        for wl_name in sorted(view.desired.workloads):
            if wl_name not in seen and (name is None or wl_name == name):
                rows.append(dashboard_workload_row(wl_name, view.desired, None))
    return rows


def agent_row(agent: AgentView) -> dict[str, Any]:
    return dashboard_agent_row(agent.name, alive=agent.alive, status=agent.status, energy=agent.energy)


def agent_rows(view: DashboardView) -> list[dict[str, Any]]:
    return [agent_row(agent) for _name, agent in sorted(view.agents.items())]


def event_size(event: Event) -> int:
    """What an event kept by the dashboard costs, roughly (its text, in bytes)."""
    return len(event.kind) + len(event.subject) + len(event.message) + len(event.sender) + 64


def event_rows(view: DashboardView) -> list[dict[str, Any]]:
    """Newest first."""
    return [event_row(event) for event in reversed(view.events)]


def snapshot(view: DashboardView) -> dict[str, Any]:
    return {"workloads": workload_rows(view), "agents": agent_rows(view), "events": event_rows(view)}
