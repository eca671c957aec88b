"""The planner's whole decision logic, pure: no I/O, no clock, no Zenoh, no threads.

Theory of operation
-------------------
The planner owns the desired state (a normalised manifest, its rendering and
the instance id of every rendered workload), the scheduler's bindings, which
workload instances were released, and which deleted instances must still be
kept running for their dependents. That part is `Durable`: the shell persists
it before it acknowledges anything and reloads it on start.

Everything else is observed: which agents are alive (liveliness tokens),
which agents were ever seen, and the latest WorkloadState of every workload
(`ank/state/**`). From desired + observed the planner derives, in `_settle`:

1. release: a workload instance gets hold "" once every dependency is in the
   state its condition names (ADD_CONDITION_MET_BY); until then its hold is
   "WaitingToStart". Once released it stays released (Ankaios never stops a
   started workload because a dependency changes later).
2. delete ordering: an instance that leaves an agent's plan (deleted, updated,
   moved) while workloads need it with ADD_COND_RUNNING stays in the plan with
   hold "WaitingToStop" (a `Retiring` entry) until every such dependent is
   neither Running nor Pending (KEEPS_DEPENDENCY_ALIVE); then it leaves the
   plan and the agent stops it. An update is delete-then-create: the old
   instance retires first, the new one follows under its own release rule.
3. the states no live agent owns (DERIVED_STATE): NotScheduled (no agent),
   Pending(Initial) (agent never seen), AgentDisconnected (agent lost), and
   Removed when such a workload leaves that key.
4. one AgentPlan per agent; a plan whose workloads changed gets a new
   generation, higher than any before, also across restarts (persisted, and
   never below the wall clock in microseconds).

The shell feeds every input as an event to `step(state, event, now_ms)`
(`now_ms`: the wall clock) — Started, ApplyRequest, DeleteRequest,
DesiredPut, StatesObserved, AgentLiveliness, AgentStatusSeen, Binding — and
gets a `Step`: the
new state and the actions to run in order (Persist first, then publications,
then the Reply to a query, as data like the rest). What the shell only reads
(complete_state, plan_for, owned_states, desired_at) are queries: functions
of the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, NamedTuple, assert_never

import msgspec

from ank_common.manifest.identity import instance_id
from ank_common.manifest.masks import apply_update_masks
from ank_common.manifest.name_rules import agent_name_problem
from ank_common.manifest.parse import parse_manifest, parse_state_file
from ank_common.manifest.render import render_manifest
from ank_common.manifest.validate import find_dependency_cycle
from ank_common.names import valid_name
from schemas import keys
from schemas.limits import MAX_ENTRY_BYTES, MAX_MESSAGE_BYTES, size_of
from schemas.liveliness import AgentLiveliness
from schemas.manifest import Manifest
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    Binding,
    CompleteState,
    DeleteRequest,
    PlannedWorkload,
    ValidationIssue,
    WorkloadState,
)
from schemas.state import ADD_CONDITION_MET_BY, ExecutionState

Hold = Literal["", "WaitingToStart", "WaitingToStop"]
UNSCHEDULED = keys.UNSCHEDULED  # the agent segment of state keys of workloads without an agent
# How far back `ank/cmd/state?since=` can see the desired state (covers an
# `ank get events` start-up under load), and how many changes it keeps.
HISTORY_MS = 3000
HISTORY_LEN = 16

# States of a dependent that keep a deleted ADD_COND_RUNNING dependency alive
# (Ankaios's DelCondNotPendingNorRunning). Pending(WaitingToStart) is left out,
# as in Ankaios: a dependent waiting to start must not deadlock a delete.
KEEPS_DEPENDENCY_ALIVE: frozenset[tuple[str, str]] = frozenset(
    {("Running", "Ok"), ("Pending", "Initial"), ("Pending", "Starting"), ("Pending", "StartingFailed")}
)


def derived_state(agent: str, seen: bool, alive: bool) -> ExecutionState | None:
    """The state the planner publishes for a workload placed on `agent`, or
    None when a live agent owns it.

    | agent         | seen | alive | state                     |
    |---------------|------|-------|---------------------------|
    | "" (none)     |  -   |   -   | NotScheduled              |
    | name          |  -   |  yes  | (the agent publishes)     |
    | name          |  no  |  no   | Pending(Initial)          |
    | name          | yes  |  no   | AgentDisconnected         |
    """
    if not agent:
        return ExecutionState("NotScheduled", "", "waiting for the scheduler to place it")
    if alive:
        return None
    if not seen:
        return ExecutionState("Pending", "Initial", f"agent {agent} has not connected yet")
    return ExecutionState("AgentDisconnected", "", f"agent {agent} is not connected")


# -- state ------------------------------------------------------------------


class Retiring(msgspec.Struct, frozen=True, rename="camel"):
    """A deleted (or replaced) instance kept running for its dependents."""

    agent: str
    planned: PlannedWorkload  # hold "WaitingToStop"
    blockers: list[str]  # the dependents that need it with ADD_COND_RUNNING


class Durable(msgspec.Struct, frozen=True, rename="camel", kw_only=True):
    """What the planner persists (and must never lose)."""

    format: int = 1
    desired: Manifest = Manifest(api_version="v1")  # as applied: unrendered, normalised
    rendered: Manifest = Manifest(api_version="v1")
    instances: dict[str, str] = {}  # workload name -> instance id of its rendering
    bindings: dict[str, str] = {}  # workload name -> agent the scheduler chose
    released: dict[str, str] = {}  # workload name -> the instance released (hold "")
    retiring: list[Retiring] = []
    agents_seen: list[str] = []
    generation: int = 0  # the last plan generation handed out
    epoch: int = 0  # the epoch of this planner run (new at each start, higher than any before)
    journal: int = 0  # (the store's) how many journal records this snapshot holds


class PlannerState(msgspec.Struct, frozen=True, kw_only=True):
    durable: Durable = Durable()
    alive: frozenset[str] = frozenset()
    states: dict[str, WorkloadState] = {}  # state key "agent/workload" ("~/workload") -> latest
    owned: frozenset[str] = frozenset()  # state keys whose latest state the planner published
    plans: dict[str, AgentPlan] = {}  # the last plan published per agent
    # workload name -> the desired workloads that depend on it (an index of
    # durable.rendered; None: not built yet, built on first use)
    dependents: dict[str, list[str]] | None = None
    # agent ("" for none) -> the desired workloads placed on it (an index of
    # durable.rendered and durable.bindings, built with `dependents`)
    by_agent: dict[str, frozenset[str]] | None = None
    departing: frozenset[str] = frozenset()  # state keys recorded for instances no longer placed there
    # (when it was replaced, the desired state it replaced), for the last
    # HISTORY_MS: `ank get events` starts its stream at its own start, not at
    # the end of its start-up (desired_at)
    history: tuple[tuple[int, Manifest], ...] = ()
    # agent -> the boots of its last statuses, most recent last (at most
    # BOOTS_KEPT), and the agents reported as two live agents of one name
    boots: dict[str, tuple[str, ...]] = {}
    twins: frozenset[str] = frozenset()


# -- actions ----------------------------------------------------------------


class Persist(msgspec.Struct, frozen=True):
    durable: Durable


class PublishPlan(msgspec.Struct, frozen=True):
    plan: AgentPlan


class PublishState(msgspec.Struct, frozen=True):
    key: str  # the bus key, ank/state/<agent or ~>/<workload>
    state: WorkloadState


class PublishEvent(msgspec.Struct, frozen=True):
    kind: str
    message: str
    subject: str = ""
    severity: Literal["info", "warning", "error"] = "info"


class Log(msgspec.Struct, frozen=True):
    message: str
    level: Literal["info", "warning"] = "info"


class Reply(msgspec.Struct, frozen=True):
    """The answer to the query that brought the event (ApplyRequest,
    DeleteRequest): always the last action, so that the shell hands it back
    only once the change is persisted and published."""

    result: ApplyResult


class AskStates(msgspec.Struct, frozen=True):
    """Ask the agent's own states (its late-joiner queryable): it
    (re)connected, and they may have changed while it was away. The answers
    come back as StatesObserved."""

    agent: str


Action = Persist | PublishPlan | PublishState | PublishEvent | Log | AskStates | Reply


class Step(NamedTuple):
    state: PlannerState
    actions: list[Action]


# -- events -------------------------------------------------------------------
#
# The bus messages the planner acts on are events as they are: an
# ApplyRequest (`ank/cmd/apply`, also the startup manifest), a DeleteRequest
# (`ank/cmd/delete`), a Binding (`ank/bind/<workload>`), an AgentLiveliness
# (`ank/agents/<agent>`, built by the shell from the token).


class Started(msgspec.Struct, frozen=True):
    """The shell started: the agents alive and the states agents reported
    before it answers anyone (late joiner). Publishes every plan (with new
    generations) and every state the planner owns."""

    agents: list[str] = []
    states: list[tuple[str, WorkloadState]] = []


class DesiredPut(msgspec.Struct, frozen=True):
    """A manifest put on `ank/desired` (its raw payload: not even UTF-8 yet)."""

    payload: bytes


class StatesObserved(msgspec.Struct, frozen=True):
    """WorkloadStates from `ank/state/**` as (bus key, state), in the order
    they arrived (the shell batches what arrived while the loop was busy)."""

    items: list[tuple[str, WorkloadState]]


class AgentStatusSeen(msgspec.Struct, frozen=True):
    """An agent's status (`ank/agents/<agent>/status`). A status proves its
    agent alive, and its `boot` tells two live agents of one name (their
    boots alternate) from a restart (the boot changes once)."""

    status: AgentStatus


PlannerEvent = (
    Started | ApplyRequest | DeleteRequest | DesiredPut | StatesObserved | AgentLiveliness | AgentStatusSeen | Binding
)


# -- small helpers ----------------------------------------------------------


def state_key(agent: str, workload: str) -> str:
    return f"{agent or UNSCHEDULED}/{workload}"


def bus_state_key(agent: str, workload: str) -> str:
    return keys.state_key(agent, workload)


def _bus_key(key: str) -> str:
    """The bus key of a state key (`<agent or ~>/<wl>`)."""
    agent, _, workload = key.partition("/")
    return keys.state_key(agent, workload)


def placed_agent(durable: Durable, name: str) -> str:
    """The agent a desired workload runs on: its manifest's, else the
    scheduler's binding, else "" (not scheduled). A workload with the
    `scheduling` extension is the scheduler's to move: its binding, once
    there, overrides the manifest's agent (which is then only the start)."""
    workload = durable.rendered.workloads[name]
    if workload.scheduling is not None and durable.bindings.get(name):
        return durable.bindings[name]
    return workload.agent or durable.bindings.get(name, "")


def _next_generation(last: int, now_ms: int) -> int:
    return max(last + 1, now_ms * 1000)


def _error(path: str, message: str) -> ValidationIssue:
    return ValidationIssue(path=path, message=message)


# -- derivations ------------------------------------------------------------


class _Derived(NamedTuple):
    execution_state: ExecutionState
    agent: str
    workload: str
    instance: str
    runtime: str


def _placed_keys(durable: Durable) -> set[str]:
    """The state keys of every desired and retiring instance."""
    keys = {state_key(placed_agent(durable, name), name) for name in durable.rendered.workloads}
    keys.update(state_key(r.agent, r.planned.name) for r in durable.retiring)
    return keys


def _derived_states(durable: Durable, alive: frozenset[str]) -> dict[str, _Derived]:
    return _derived_subset(durable, alive, durable.rendered.workloads, durable.retiring)


def _derived_subset(
    durable: Durable, alive: frozenset[str], names: Iterable[str], retiring: Iterable[Retiring]
) -> dict[str, _Derived]:
    """`_derived_states` for the desired workloads `names` and the entries
    `retiring` only."""
    seen = set(durable.agents_seen)
    out: dict[str, _Derived] = {}
    for entry in retiring:
        es = derived_state(entry.agent, entry.agent in seen, entry.agent in alive)
        if es is not None:
            key = state_key(entry.agent, entry.planned.name)
            out[key] = _Derived(
                es, entry.agent, entry.planned.name, entry.planned.instance, entry.planned.workload.runtime
            )
    bindings = durable.bindings
    rendered = durable.rendered.workloads
    for name in names:
        workload = rendered[name]
        # placed_agent(), inlined: this loop runs over every workload
        if workload.scheduling is not None and bindings.get(name):
            agent = bindings[name]
        else:
            agent = workload.agent or bindings.get(name, "")
        if agent and agent in alive:
            continue  # its agent publishes its state
        es = derived_state(agent, agent in seen, agent in alive)
        key = state_key(agent, name)
        if es is not None and key not in out:
            out[key] = _Derived(es, agent, name, durable.instances[name], workload.runtime)
    return out


def _current_state(state: PlannerState, name: str) -> ExecutionState | None:
    """The execution state of the desired instance of `name`, if known."""
    durable = state.durable
    if name not in durable.rendered.workloads:
        return None
    ws = state.states.get(state_key(placed_agent(durable, name), name))
    if ws is None or (ws.instance and ws.instance != durable.instances[name]):
        return None
    return ws.execution_state


def dependencies_met(state: PlannerState, name: str) -> bool:
    workload = state.durable.rendered.workloads[name]
    for dep, condition in workload.dependencies.items():
        current = _current_state(state, dep)
        if current is None or (current.state, current.substate) != ADD_CONDITION_MET_BY[condition]:
            return False
    return True


def _states_by_workload(state: PlannerState) -> dict[str, list[WorkloadState]]:
    """Every known state, by workload name (a workload may have states on
    several agents while it moves)."""
    out: dict[str, list[WorkloadState]] = {}
    for key, ws in state.states.items():
        out.setdefault(key.split("/", 1)[1], []).append(ws)
    return out


def _keeps_dependency_alive(states: Iterable[WorkloadState | None]) -> bool:
    """Whether one of a dependent's states (None: none there) keeps a
    deleted ADD_COND_RUNNING dependency alive."""
    return any(
        (ws.execution_state.state, ws.execution_state.substate) in KEEPS_DEPENDENCY_ALIVE
        for ws in states
        if ws is not None
    )


def _index_dependents(rendered: Manifest) -> dict[str, list[str]]:
    """workload name -> the workloads that depend on it."""
    out: dict[str, list[str]] = {}
    for name, workload in rendered.workloads.items():
        for dep in workload.dependencies:
            out.setdefault(dep, []).append(name)
    return out


def _index_placement(durable: Durable) -> dict[str, frozenset[str]]:
    """agent ("" for none) -> the desired workloads placed on it."""
    out: dict[str, set[str]] = {}
    for name in durable.rendered.workloads:
        out.setdefault(placed_agent(durable, name), set()).add(name)
    return {agent: frozenset(names) for agent, names in out.items()}


def _with_index(state: PlannerState) -> PlannerState:
    return msgspec.structs.replace(
        state, dependents=_index_dependents(state.durable.rendered), by_agent=_index_placement(state.durable)
    )


def _plan_entries(durable: Durable) -> dict[str, list[PlannedWorkload]]:
    entries: dict[str, dict[str, PlannedWorkload]] = {}
    for retiring in durable.retiring:
        entries.setdefault(retiring.agent, {})[retiring.planned.name] = retiring.planned
    for name, workload in durable.rendered.workloads.items():
        agent = placed_agent(durable, name)
        if not agent:
            continue
        per_agent = entries.setdefault(agent, {})
        if name in per_agent:
            continue  # its old instance retires first (delete-then-create)
        instance = durable.instances[name]
        hold: Hold = "" if durable.released.get(name) == instance else "WaitingToStart"
        per_agent[name] = PlannedWorkload(name, instance, msgspec.structs.replace(workload, agent=agent), hold)
    return {agent: [per[n] for n in sorted(per)] for agent, per in entries.items()}


# -- the settling pass --------------------------------------------------------


def _publish_derived(
    before: Mapping[str, _Derived],
    now: Mapping[str, _Derived],
    placed: set[str],
    states: dict[str, WorkloadState],
    owned: set[str],
    now_ms: int,
    log: list[Action],
) -> list[Action]:
    """The states no live agent owns that changed from `before` to `now`:
    recorded into `states`/`owned` and returned as publications; a key left
    while no agent owned it (not `placed`) is published Removed and forgotten."""
    publications: list[Action] = []
    for key in sorted(before.keys() | now.keys()):
        new, old = now.get(key), before.get(key)
        if new is not None:
            if new != old:
                states[key] = _as_state(new, now_ms)
                owned.add(key)
                publications.append(PublishState(_bus_key(key), states[key]))
                log.append(Log(f"{new.workload} on {new.agent or '(no agent)'} is {new.execution_state}"))
        elif old is not None:
            owned.discard(key)
            if key not in placed:
                states.pop(key, None)
                removed = _as_state(old, now_ms, ExecutionState("Removed"))
                publications.append(PublishState(_bus_key(key), removed))
                log.append(Log(f"{old.workload} on {old.agent or '(no agent)'} is Removed"))
    return publications


def _as_state(derived: _Derived, now_ms: int, execution_state: ExecutionState | None = None) -> WorkloadState:
    return WorkloadState(
        workload=derived.workload,
        agent=derived.agent,
        execution_state=execution_state or derived.execution_state,
        runtime=derived.runtime,
        instance=derived.instance,
        time_ms=now_ms,
    )


class _Settled(NamedTuple):
    """What a settling pass decides about the states it publishes."""

    states: dict[str, WorkloadState]
    owned: set[str]
    departing: set[str]
    publications: list[Action]


def _settle(before: PlannerState, state: PlannerState, now_ms: int, actions: list[Action]) -> Step:
    """Brings releases, retirements, derived states and plans in line with
    the desired and observed state; `before` is the state the last
    publications were made from."""
    log: list[Action] = []
    derived_before = _derived_states(before.durable, before.alive)
    derived_mid = _derived_states(state.durable, state.alive)
    view = _with_derived_observed(state, derived_before, derived_mid, now_ms)
    released = _releases(state.durable, view, log)
    retiring = _retirements(before.durable, state.durable, view, released, log)
    durable = msgspec.structs.replace(state.durable, released=released, retiring=retiring)
    retired_some = len(retiring) != len(state.durable.retiring)
    derived_now = _derived_states(durable, state.alive) if retired_some else derived_mid
    settled = _settle_states(state, durable, derived_before, derived_now, now_ms, log)
    entries = _plan_entries(durable)
    changed = ((agent, entries.get(agent, [])) for agent in sorted(entries.keys() | state.plans.keys() | state.alive))
    plans, durable = _new_plans(state, durable, changed, now_ms, settled.publications, log)
    new_state = _with_settled(state, durable, settled, plans)
    persist = durable if durable != before.durable else None
    return Step(new_state, _in_order(actions, log, persist, settled.publications))


def _with_derived_observed(
    state: PlannerState, derived_before: Mapping[str, _Derived], derived_now: Mapping[str, _Derived], now_ms: int
) -> PlannerState:
    """The state with the derived states that changed counted as observed
    (an agent just lost no longer keeps a dependency alive): the view the
    releases and retirements are decided on."""
    observed = dict(state.states)
    for key, derived in derived_now.items():
        if derived != derived_before.get(key):
            observed[key] = _as_state(derived, now_ms)
    return msgspec.structs.replace(state, states=observed)


def _still_placed(durable: Durable, name: str, agent: str, instance: str) -> bool:
    """Whether `instance` is still the desired instance of `name` on `agent`."""
    return (
        name in durable.rendered.workloads
        and placed_agent(durable, name) == agent
        and durable.instances[name] == instance
    )


def _releases(durable: Durable, view: PlannerState, log: list[Action]) -> dict[str, str]:
    """The released instances (of instances still desired), with every
    desired workload whose dependencies are now met added."""
    released = {n: i for n, i in durable.released.items() if durable.instances.get(n) == i}
    for name in sorted(durable.rendered.workloads):
        instance = durable.instances[name]
        if released.get(name) != instance and dependencies_met(view, name):
            released[name] = instance
            log.append(Log(f"release {name} ({instance}): its dependencies are met"))
    return released


def _retirements(
    before: Durable, durable: Durable, view: PlannerState, released: dict[str, str], log: list[Action]
) -> list[Retiring]:
    """The retiring entries still kept for a dependent that is Running or
    Pending. An entry desired again as it runs leaves the list and its
    instance is recorded into `released` (it keeps running)."""
    retiring: list[Retiring] = []
    by_workload = _states_by_workload(view) if durable.retiring else {}
    for entry in durable.retiring:
        name, agent = entry.planned.name, entry.agent
        if _still_placed(durable, name, agent, entry.planned.instance):
            released[name] = entry.planned.instance  # re-applied as it runs: keep it running
            log.append(Log(f"keep {name} on {agent}: desired again as it runs"))
            continue
        waiting_for = [d for d in entry.blockers if _keeps_dependency_alive(by_workload.get(d, []))]
        if waiting_for:
            retiring.append(entry)
            if not any(r == entry for r in before.retiring):
                log.append(Log(f"keep {name} ({entry.planned.instance}) on {agent} until {waiting_for} stop"))
        else:
            log.append(Log(f"stop {name} ({entry.planned.instance}) on {agent}: no dependent needs it running"))
    return retiring


def _settle_states(
    state: PlannerState,
    durable: Durable,
    derived_before: Mapping[str, _Derived],
    derived_now: Mapping[str, _Derived],
    now_ms: int,
    log: list[Action],
) -> _Settled:
    """The states no live agent owns that changed, published; the states of
    instances no longer placed kept as departing, except on agents that are
    gone (the agent reports Removed itself when it returns)."""
    states = dict(state.states)
    owned = set(state.owned)
    placed = _placed_keys(durable)
    publications = _publish_derived(derived_before, derived_now, placed, states, owned, now_ms, log)
    departing = {k for k in states if k not in placed}
    for key in [k for k in departing if k.split("/", 1)[0] not in state.alive]:
        del states[key]
        owned.discard(key)
        departing.discard(key)
    return _Settled(states, owned, departing, publications)


def _new_plans(
    state: PlannerState,
    durable: Durable,
    candidates: Iterable[tuple[str, list[PlannedWorkload]]],
    now_ms: int,
    publications: list[Action],
    log: list[Action],
) -> tuple[dict[str, AgentPlan], Durable]:
    """The plans, with a new one (and a new generation) for every candidate
    agent whose workloads differ from its last plan's; each new plan is
    appended to `publications`. Returns the plans and `durable` with the
    last generation handed out (`durable` itself if none was)."""
    plans = dict(state.plans)
    generation = durable.generation
    for agent, workloads in candidates:
        previous = plans.get(agent)
        if previous is not None and previous.workloads == workloads:
            continue
        generation = _next_generation(generation, now_ms)
        plans[agent] = AgentPlan(agent=agent, generation=generation, workloads=workloads, epoch=durable.epoch)
        publications.append(PublishPlan(plans[agent]))
        listed = ", ".join(f"{w.name}[{w.hold}]" if w.hold else w.name for w in workloads) or "nothing"
        log.append(Log(f"plan {generation} for {agent}: {listed}"))
    if generation == durable.generation:
        return plans, durable
    return plans, msgspec.structs.replace(durable, generation=generation)


def _with_settled(
    state: PlannerState,
    durable: Durable,
    settled: _Settled,
    plans: dict[str, AgentPlan],
    *,
    by_agent: dict[str, frozenset[str]] | None = None,
    dependents: dict[str, list[str]] | None = None,
) -> PlannerState:
    """The state after a settling pass (with the indexes it built, if any)."""
    return msgspec.structs.replace(
        state,
        durable=durable,
        states=settled.states,
        owned=frozenset(settled.owned),
        plans=plans,
        departing=frozenset(settled.departing),
        by_agent=state.by_agent if by_agent is None else by_agent,
        dependents=state.dependents if dependents is None else dependents,
    )


def _in_order(
    actions: list[Action], log: list[Action], persist: Durable | None, publications: list[Action]
) -> list[Action]:
    """A settling pass's actions as the shell runs them: the event's own and
    the decisions (logs), Persist if the durable state changed, then the
    publications."""
    out: list[Action] = [*actions, *log]
    if persist is not None:
        out.append(Persist(persist))
    out.extend(publications)
    return out


def _agent_entries(durable: Durable, agent: str, names: Iterable[str]) -> list[PlannedWorkload]:
    """`_plan_entries` for one agent, given the desired workloads placed on it."""
    per_agent: dict[str, PlannedWorkload] = {r.planned.name: r.planned for r in durable.retiring if r.agent == agent}
    for name in names:
        if name in per_agent:
            continue  # its old instance retires first (delete-then-create)
        instance = durable.instances[name]
        hold: Hold = "" if durable.released.get(name) == instance else "WaitingToStart"
        workload = durable.rendered.workloads[name]
        per_agent[name] = PlannedWorkload(name, instance, msgspec.structs.replace(workload, agent=agent), hold)
    return [per_agent[n] for n in sorted(per_agent)]


def _settle_agent(before: PlannerState, state: PlannerState, agent: str, now_ms: int, actions: list[Action]) -> Step:
    """`_settle` for one agent's liveliness change (`state` differs from
    `before` only in whether `agent` is alive and seen). Its work is
    proportional to that agent's workloads, their dependents and the
    retiring entries, never to the whole desired state: only the states of
    the agent's workloads change, so only their dependents can be released,
    only retirements can end, and only the plans of the agents these touch
    can change. After each settling pass no unreleased workload has its
    dependencies met and no state of an instance no longer placed is kept
    for an agent that is gone; this pass keeps both true."""
    durable = state.durable
    by_agent = state.by_agent if state.by_agent is not None else _index_placement(durable)
    dependents = state.dependents if state.dependents is not None else _index_dependents(durable.rendered)
    mine = sorted(by_agent.get(agent, frozenset()))
    retiring_names = {r.planned.name for r in durable.retiring}
    scope = sorted(set(mine) | (retiring_names & durable.rendered.workloads.keys()))
    log: list[Action] = []
    derived_before = _derived_subset(before.durable, before.alive, scope, before.durable.retiring)
    derived_mid = _derived_subset(durable, state.alive, scope, durable.retiring)
    view = _with_derived_observed(state, derived_before, derived_mid, now_ms)
    touched: set[str] = {agent}  # the agents whose plans may change
    candidates = sorted({d for n in mine for d in dependents.get(n, [])})
    released = _agent_releases(durable, view, candidates, touched, log)
    released, retiring = _agent_retirements(durable, view, released, touched, log)
    if len(retiring) != len(durable.retiring) or released is not durable.released:
        durable = msgspec.structs.replace(durable, released=released, retiring=retiring)
    derived_now = _derived_subset(durable, state.alive, scope, durable.retiring)
    settled = _settle_agent_states(state, durable, agent, scope, derived_before, derived_now, now_ms, log)
    plans, durable = _new_plans(
        state, durable, _touched_plans(state, durable, by_agent, touched), now_ms, settled.publications, log
    )
    new_state = _with_settled(state, durable, settled, plans, by_agent=by_agent, dependents=dependents)
    persist = durable if durable is not before.durable else None
    return Step(new_state, _in_order(actions, log, persist, settled.publications))


def _agent_releases(
    durable: Durable, view: PlannerState, candidates: list[str], touched: set[str], log: list[Action]
) -> dict[str, str]:
    """`_releases` for the `candidates` only (the dependents of the agent's
    workloads: only they can be released now). Returns `durable.released`
    itself when nothing is released; adds the agents of released workloads
    to `touched`."""
    released = durable.released
    for name in candidates:
        instance = durable.instances.get(name)
        if instance is not None and released.get(name) != instance and dependencies_met(view, name):
            released = {**released} if released is durable.released else released
            released[name] = instance
            touched.add(placed_agent(durable, name))
            log.append(Log(f"release {name} ({instance}): its dependencies are met"))
    return released


def _agent_retirements(
    durable: Durable, view: PlannerState, released: dict[str, str], touched: set[str], log: list[Action]
) -> tuple[dict[str, str], list[Retiring]]:
    """`_retirements`, a blocker's states looked up on the agents that can
    hold them (not over every state). Returns the released instances (a new
    dict only if one is added) and the entries still kept; adds the agents
    of entries that end to `touched`."""
    retiring: list[Retiring] = []
    holders = sorted(view.plans.keys() | view.alive | {""})
    for entry in durable.retiring:
        name, on = entry.planned.name, entry.agent
        if _still_placed(durable, name, on, entry.planned.instance):
            released = {**released} if released is durable.released else released
            released[name] = entry.planned.instance
            touched.add(on)
            log.append(Log(f"keep {name} on {on}: desired again as it runs"))
            continue
        waiting_for = [
            d for d in entry.blockers if _keeps_dependency_alive(view.states.get(state_key(a, d)) for a in holders)
        ]
        if waiting_for:
            retiring.append(entry)
        else:
            touched.add(on)
            log.append(Log(f"stop {name} ({entry.planned.instance}) on {on}: no dependent needs it running"))
    return released, retiring


def _settle_agent_states(
    state: PlannerState,
    durable: Durable,
    agent: str,
    scope: list[str],
    derived_before: Mapping[str, _Derived],
    derived_now: Mapping[str, _Derived],
    now_ms: int,
    log: list[Action],
) -> _Settled:
    """`_settle_states` for the derived states of `scope`. States of
    instances no longer placed: departing (tracked until Removed) while
    their agent lives, forgotten on an agent that is gone."""
    states = dict(state.states)
    owned = set(state.owned)
    departing = set(state.departing)
    placed = {state_key(placed_agent(durable, n), n) for n in scope}
    placed.update(state_key(r.agent, r.planned.name) for r in durable.retiring)
    publications = _publish_derived(derived_before, derived_now, placed, states, owned, now_ms, log)
    left = {state_key(r.agent, r.planned.name) for r in state.durable.retiring} - placed
    if agent not in state.alive:
        left.update(k for k in departing if k.split("/", 1)[0] == agent)
    for key in sorted(left):
        if key in placed or key not in states:
            departing.discard(key)
        elif key.split("/", 1)[0] in state.alive:
            departing.add(key)
        else:
            del states[key]
            owned.discard(key)
            departing.discard(key)
    return _Settled(states, owned, departing, publications)


def _touched_plans(
    state: PlannerState, durable: Durable, by_agent: Mapping[str, frozenset[str]], touched: set[str]
) -> Iterator[tuple[str, list[PlannedWorkload]]]:
    """(agent, its plan's workloads) for every touched agent, except one
    that never had a plan, has nothing to run and is not alive."""
    for name in sorted(touched):
        if not name:
            continue
        workloads = _agent_entries(durable, name, sorted(by_agent.get(name, frozenset())))
        if name not in state.plans and not workloads and name not in state.alive:
            continue
        yield name, workloads


def _retire_leavers(state: PlannerState, durable: Durable) -> Durable:
    """Adds a Retiring entry for every instance that ran under its plan (hold
    "") and is no longer desired there, if workloads of the old desired state
    need it with ADD_COND_RUNNING. `_settle` drops the ones nobody needs now."""
    old = state.durable
    retiring = list(durable.retiring)
    held = {(r.agent, r.planned.name) for r in retiring}
    for agent, plan in state.plans.items():
        for planned in plan.workloads:
            if planned.hold != "" or (agent, planned.name) in held:
                continue
            name = planned.name
            if _still_placed(durable, name, agent, planned.instance):
                continue
            blockers = sorted(
                d
                for d, w in old.rendered.workloads.items()
                if w.dependencies.get(name) == "ADD_COND_RUNNING" and d != name
            )
            if blockers:
                keep = msgspec.structs.replace(planned, hold="WaitingToStop")
                retiring.append(Retiring(agent=agent, planned=keep, blockers=blockers))
    return msgspec.structs.replace(durable, retiring=retiring)


def _change_desired(state: PlannerState, durable: Durable, now_ms: int, actions: list[Action]) -> Step:
    durable = _retire_leavers(state, durable)
    return _settle(state, msgspec.structs.replace(state, durable=durable), now_ms, actions)


# -- the step -----------------------------------------------------------------


def step(state: PlannerState, event: PlannerEvent, now_ms: int) -> Step:
    """The planner's reaction to one event: its new state and the actions,
    in order (Persist first, then publications, then the Reply if any)."""
    if isinstance(event, StatesObserved):
        return _observe_states(state, event.items, now_ms)
    if isinstance(event, AgentLiveliness):
        return _agent_liveliness(state, event.agent, event.alive, now_ms)
    if isinstance(event, AgentStatusSeen):
        return _status_seen(state, event.status, now_ms)
    if isinstance(event, Binding):
        return _binding(state, event, now_ms)
    if isinstance(event, DesiredPut):
        return _desired_put(state, event.payload, now_ms)
    if isinstance(event, ApplyRequest):
        return _replied(
            *apply_manifest(state, event.manifest, now_ms, agent=event.agent, delete=event.delete, masks=event.masks)
        )
    if isinstance(event, DeleteRequest):
        return _replied(*_delete_workloads(state, event.workloads, now_ms))
    if isinstance(event, Started):
        return _start(_with_observed_states(_with_live_agents(state, event.agents), event.states), now_ms)
    assert_never(event)


def _replied(step: Step, result: ApplyResult) -> Step:
    return Step(step.state, [*step.actions, Reply(result)])


# -- events -----------------------------------------------------------------


def _start(state: PlannerState, now_ms: int) -> Step:
    """After a (re)start: publish every plan (with new generations) and every
    state the planner owns. `state` holds the loaded durable state and what
    was observed so far (live agents, states)."""
    durable = msgspec.structs.replace(state.durable, epoch=max(state.durable.epoch + 1, now_ms * 1000))
    fresh = _with_index(msgspec.structs.replace(state, durable=durable, plans={}, owned=frozenset()))
    # Settling against "nothing published yet" publishes everything.
    return _settle(PlannerState(), fresh, now_ms, [])


def _apply_result_failure(errors: list[ValidationIssue], warnings: list[ValidationIssue]) -> ApplyResult:
    return ApplyResult(ok=False, errors=errors, warnings=warnings)


def apply_manifest(
    state: PlannerState,
    text: str | bytes,
    now_ms: int,
    *,
    agent: str | None = None,
    delete: bool = False,
    masks: list[str] | None = None,
) -> tuple[Step, ApplyResult]:
    """`ank apply` (merge the manifest's workloads and configs into the
    desired state), `ank apply -d` (`delete`: remove them) or `ank set state`
    (`masks`). Invalid input changes nothing and names every error."""
    if masks is not None and delete:
        return Step(state, []), _apply_result_failure([_error("", "delete and masks cannot be combined")], [])
    parsed = parse_state_file(text, agent) if masks is not None else parse_manifest(text, agent=agent)
    if parsed.errors or parsed.manifest is None:
        errors = parsed.errors or [_error("", "the manifest is empty")]
        return Step(state, []), _apply_result_failure(list(errors), list(parsed.warnings))
    request = parsed.manifest
    warnings: list[ValidationIssue] = list(parsed.warnings)
    current = state.durable.desired
    if masks is not None:
        merged = apply_update_masks(current, request, masks)
        if merged.errors or merged.manifest is None:
            errors = merged.errors or [_error("", "the update masks select nothing")]
            return Step(state, []), _apply_result_failure(list(errors), warnings + list(merged.warnings))
        warnings += merged.warnings
        desired = merged.manifest
    else:
        if not request.workloads and not request.configs:
            return Step(state, []), _apply_result_failure(
                [_error("workloads", "No workload provided in manifests!")], warnings
            )
        if delete:
            workloads = {n: w for n, w in current.workloads.items() if n not in request.workloads}
            configs = {k: v for k, v in current.configs.items() if k not in request.configs}
        else:
            workloads = {**current.workloads, **request.workloads}
            configs = {**current.configs, **request.configs}
        desired = Manifest(api_version="v1", workloads=workloads, configs=configs)
    step, result = _replace_desired(state, desired, now_ms, mentioned=set(request.workloads), warnings=warnings)
    return step, result


def _replace_desired(
    state: PlannerState,
    desired: Manifest,
    now_ms: int,
    *,
    mentioned: set[str],
    warnings: list[ValidationIssue],
) -> tuple[Step, ApplyResult]:
    rendered, render_errors = render_manifest(desired)
    if render_errors or rendered is None:
        return Step(state, []), _apply_result_failure(list(render_errors) or [_error("", "cannot render")], warnings)
    cycle = find_dependency_cycle(rendered.workloads)
    if cycle:
        issue = _error(f"workloads.{cycle[0]}.dependencies", f"dependency cycle: {' -> '.join(cycle)}")
        return Step(state, []), _apply_result_failure([issue], warnings)
    old = state.durable
    instances = {
        name: old.instances[name] if old.rendered.workloads.get(name) == w else instance_id(w)
        for name, w in rendered.workloads.items()
    }
    added = sorted(n for n in instances if n not in old.instances)
    updated = sorted(n for n in instances if n in old.instances and old.instances[n] != instances[n])
    deleted = sorted(n for n in old.instances if n not in instances)
    unchanged = sorted(n for n in mentioned if n in instances and old.instances.get(n) == instances[n])
    too_large = _size_problems(old, desired, rendered, instances, [*added, *updated])
    if too_large:
        return Step(state, []), _apply_result_failure(too_large, warnings)
    bindings = {n: a for n, a in old.bindings.items() if n in instances}
    durable = msgspec.structs.replace(old, desired=desired, rendered=rendered, instances=instances, bindings=bindings)
    history = _remember(state.history, now_ms, old.desired) if desired != old.desired else state.history
    state = msgspec.structs.replace(
        state, dependents=_index_dependents(rendered), by_agent=_index_placement(durable), history=history
    )
    summary = f"added {added or '-'}, updated {updated or '-'}, deleted {deleted or '-'}, unchanged {unchanged or '-'}"
    step = _change_desired(state, durable, now_ms, [Log(f"desired state changed: {summary}")])
    result = ApplyResult(ok=True, added=added, updated=updated, deleted=deleted, unchanged=unchanged, warnings=warnings)
    return step, result


def _size_problems(
    old: Durable, desired: Manifest, rendered: Manifest, instances: dict[str, str], changed: list[str]
) -> list[ValidationIssue]:
    """Every entry of the new desired state that could not be delivered: a
    workload (as planned for its agent, and as listed) or a config larger
    than one plan or state part may carry. Only what changed is measured."""
    problems = []
    for name in changed:
        workload = rendered.workloads[name]
        planned = PlannedWorkload(name, instances[name], workload, "WaitingToStart")
        size = max(size_of(planned), size_of(desired.workloads.get(name)))
        if size > MAX_ENTRY_BYTES:
            problems.append(
                _error(
                    f"workloads.{name}",
                    f"workload {name} is {size} bytes once rendered; one workload may be at most "
                    f"{MAX_ENTRY_BYTES} bytes (the limit of one plan entry: bus messages are at most "
                    f"{MAX_MESSAGE_BYTES} bytes)",
                )
            )
    for key, item in desired.configs.items():
        if old.desired.configs.get(key) == item:
            continue
        size = size_of(item)
        if size > MAX_ENTRY_BYTES:
            problems.append(
                _error(
                    f"configs.{key}",
                    f"config {key} is {size} bytes; one config may be at most {MAX_ENTRY_BYTES} bytes "
                    f"(the limit of one state entry: bus messages are at most {MAX_MESSAGE_BYTES} bytes)",
                )
            )
    return problems


def _desired_put(state: PlannerState, payload: bytes, now_ms: int) -> Step:
    """A manifest put on `ank/desired`: applied, or rejected with an event
    naming every error (and nothing changes)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        step, result = Step(state, []), _apply_result_failure([_error("", f"not UTF-8 text: {exc}")], [])
    else:
        step, result = apply_manifest(state, text, now_ms)
    if result.ok:
        return step
    reasons = "; ".join(str(e) for e in result.errors)
    return Step(
        state,
        [
            Log(f"rejected a manifest on ank/desired: {reasons}", "warning"),
            PublishEvent("rejected", f"manifest on ank/desired rejected: {reasons}", keys.DESIRED, "error"),
        ],
    )


def _delete_workloads(state: PlannerState, names: list[str], now_ms: int) -> tuple[Step, ApplyResult]:
    """`ank delete workload NAME...`; unknown names are warnings."""
    current = state.durable.desired
    unknown = [n for n in names if n not in current.workloads]
    warnings = [_error(f"workloads.{n}", "no such workload") for n in unknown]
    if len(unknown) == len(names):
        return Step(state, []), ApplyResult(ok=True, warnings=warnings)
    workloads = {n: w for n, w in current.workloads.items() if n not in names}
    desired = msgspec.structs.replace(current, workloads=workloads)
    return _replace_desired(state, desired, now_ms, mentioned=set(), warnings=warnings)


def _binding(state: PlannerState, bound: Binding, now_ms: int) -> Step:
    """The scheduler placed (or, with agent "", unplaced) a workload."""
    durable = state.durable
    name = bound.workload
    workload = durable.rendered.workloads.get(name)
    if workload is None:
        return Step(state, [Log(f"ignored binding of {name}: no such workload", "warning")])
    if workload.agent and workload.scheduling is None:
        return Step(state, [Log(f"ignored binding of {name}: its manifest names agent {workload.agent}", "warning")])
    problem = agent_name_problem(bound.agent)
    if problem:
        return Step(state, [Log(f"ignored binding of {name}: {problem}", "warning")])
    if durable.bindings.get(name, "") == bound.agent:
        return Step(state, [])
    bindings = dict(durable.bindings)
    if bound.agent:
        bindings[name] = bound.agent
    else:
        bindings.pop(name, None)
    why = f" ({bound.policy}: {bound.reason})" if bound.policy or bound.reason else ""
    message = f"bind {name} to {bound.agent}{why}" if bound.agent else f"unbind {name}{why}"
    new = msgspec.structs.replace(durable, bindings=bindings)
    if state.by_agent is not None:
        by_agent = dict(state.by_agent)
        was, now = placed_agent(durable, name), placed_agent(new, name)
        by_agent[was] = by_agent.get(was, frozenset()) - {name}
        by_agent[now] = by_agent.get(now, frozenset()) | {name}
        state = msgspec.structs.replace(state, by_agent=by_agent)
    return _change_desired(state, new, now_ms, [Log(message)])


def _agent_liveliness(state: PlannerState, agent: str, alive: bool, now_ms: int) -> Step:
    """An agent's liveliness token appeared (`alive`) or vanished. One that
    connects is handed its plan and asked for its states; one that vanished
    is forgotten by the twin detection (a restart then starts afresh)."""
    if not alive and (agent in state.boots or agent in state.twins):
        boots = {a: b for a, b in state.boots.items() if a != agent}
        state = msgspec.structs.replace(state, boots=boots, twins=state.twins - {agent})
    if alive == (agent in state.alive):
        return Step(state, [])
    if state.dependents is None or state.by_agent is None:
        state = _with_index(state)
    if not alive:
        lost = msgspec.structs.replace(state, alive=state.alive - {agent})
        return _settle_agent(state, lost, agent, now_ms, [Log(f"agent {agent} lost", "warning")])
    durable = state.durable
    if agent not in durable.agents_seen:
        durable = msgspec.structs.replace(durable, agents_seen=sorted([*durable.agents_seen, agent]))
    back = msgspec.structs.replace(state, alive=state.alive | {agent}, durable=durable)
    step = _settle_agent(state, back, agent, now_ms, [Log(f"agent {agent} connected")])
    # Level-triggered: hand the agent its plan again even if it did not change.
    if not any(isinstance(a, PublishPlan) and a.plan.agent == agent for a in step.actions):
        step.actions.append(PublishPlan(step.state.plans[agent]))
    step.actions.append(AskStates(agent))
    return step


BOOTS_KEPT = 4  # boots remembered per agent for the twin detection


def _status_seen(state: PlannerState, status: AgentStatus, now_ms: int) -> Step:
    """A status proves its agent alive: an agent taken for lost whose status
    still arrives (its token missed, e.g. an access-control policy that
    denies tokens) is alive again within one status period. Two agents of
    one name are reported once, as an event (each would run every workload
    of the name)."""
    agent = status.agent
    before = state.boots.get(agent, ())
    boots, twin_boots = _seen_boot(before, status.boot)
    actions: list[Action] = []
    events: list[Action] = []
    if boots != before:
        state = msgspec.structs.replace(state, boots={**state.boots, agent: boots})
    if twin_boots and agent not in state.twins:
        state = msgspec.structs.replace(state, twins=state.twins | {agent})
        message = (
            f"two agents named {agent} are live (boots {', '.join(twin_boots)}): "
            "each runs the workloads of that name; stop one"
        )
        actions.append(Log(message, "warning"))
        events.append(PublishEvent("duplicate-agent", message, agent, "warning"))
    if agent in state.alive or not valid_name(agent):
        return Step(state, [*actions, *events])  # (a name no agent can have proves nothing)
    actions.append(Log(f"agent {agent} sends status while its token is gone: alive again", "warning"))
    step = _agent_liveliness(state, agent, True, now_ms)
    return Step(step.state, [*actions, *step.actions, *events])


def _seen_boot(boots: tuple[str, ...], boot: str) -> tuple[tuple[str, ...], list[str] | None]:
    """An agent's boots after a status from `boot`, and the two boots if
    `boot` comes back after another one (two live agents alternate: A, B,
    A; a restart changes the boot once: A, A, B, B)."""
    if not boot or (boots and boots[-1] == boot):
        return boots, None
    twin_boots = sorted({boots[-1], boot}) if boot in boots else None
    return (*(b for b in boots if b != boot), boot)[-BOOTS_KEPT:], twin_boots


def _record_into(
    durable: Durable,
    states: dict[str, WorkloadState],
    owned: set[str],
    departing: set[str],
    key: str,
    ws: WorkloadState,
) -> bool:
    """Records an agent's WorkloadState into `states` (and takes its key out
    of `owned`); False (nothing changed) if it is stale, misplaced or about
    something no longer desired there."""
    if not ws.agent or key != bus_state_key(ws.agent, ws.workload):
        return False
    skey = state_key(ws.agent, ws.workload)
    stored = states.get(skey)
    if stored is not None and stored.sender == ws.sender and ws.seq and ws.seq <= stored.seq:
        return False  # stale
    expected: set[str] = set()
    if ws.workload in durable.rendered.workloads and placed_agent(durable, ws.workload) == ws.agent:
        expected.add(durable.instances[ws.workload])
    expected.update(
        r.planned.instance for r in durable.retiring if (r.agent, r.planned.name) == (ws.agent, ws.workload)
    )
    if expected:
        if ws.instance and ws.instance not in expected and stored is not None and stored.instance in expected:
            return False  # an older instance's news; the current one's state stands
        states[skey] = ws
        departing.discard(skey)
    elif stored is None:
        return False  # not (or no longer) desired there
    elif ws.execution_state.state == "Removed":
        del states[skey]  # a departed instance is gone
        departing.discard(skey)
    else:
        states[skey] = ws  # a departing instance, tracked until Removed (it may keep a dependency alive)
        departing.add(skey)
    owned.discard(skey)
    return True


def _record_all(
    state: PlannerState, items: list[tuple[str, WorkloadState]]
) -> tuple[PlannerState, list[WorkloadState]]:
    """The state with every recordable item recorded (the maps copied once
    per batch, not once per state), and the states that were recorded."""
    states = dict(state.states)
    owned = set(state.owned)
    departing = set(state.departing)
    recorded = [ws for key, ws in items if _record_into(state.durable, states, owned, departing, key, ws)]
    if not recorded:
        return state, []
    return (
        msgspec.structs.replace(state, states=states, owned=frozenset(owned), departing=frozenset(departing)),
        recorded,
    )


def _observe_states(state: PlannerState, items: list[tuple[str, WorkloadState]], now_ms: int) -> Step:
    """WorkloadStates from agents, in the order they arrived. The work is
    proportional to the batch unless a state can change a decision (a
    dependency, a retiring instance, an agent gone): then one settling pass
    for the whole batch."""
    logs: list[Action] = []
    valid = []
    for key, ws in items:
        if not ws.agent or key != bus_state_key(ws.agent, ws.workload):
            logs.append(Log(f"ignored a state on {key}: it is about {ws.agent}/{ws.workload}", "warning"))
        else:
            valid.append((key, ws))
    observed, recorded = _record_all(state, valid)
    if not recorded:
        return Step(state, logs)
    if observed.dependents is None:
        observed = _with_index(observed)
    if any(_may_change_decisions(observed, ws) for ws in recorded):
        return _settle(state, observed, now_ms, logs)
    gone = [state_key(ws.agent, ws.workload) for ws in recorded if ws.agent not in observed.alive]
    if gone:
        observed = _forget_departing(observed, gone)
    return Step(observed, logs)  # nothing else `_settle` decides depends on them


def _forget_departing(state: PlannerState, keys: list[str]) -> PlannerState:
    """What a settling pass does with a state an agent that is gone just
    reported (its lease expired, its session still delivers): kept, unless it
    is about an instance no longer placed there, which is forgotten."""
    drop = [k for k in keys if k in state.departing]
    if not drop:
        return state
    states = dict(state.states)
    for key in drop:
        states.pop(key, None)
    return msgspec.structs.replace(
        state, states=states, owned=state.owned - set(drop), departing=state.departing - set(drop)
    )


def _may_change_decisions(state: PlannerState, ws: WorkloadState) -> bool:
    """Whether a newly recorded state can change what `_settle` decides:
    the release of a dependent not released yet, or a retiring instance it
    or its blockers are about. Derived states and plans depend only on the
    durable state and the live agents, which a workload state does not
    change; the state of an agent that is gone needs only
    `_forget_departing`."""
    durable = state.durable
    name = ws.workload
    if any(name == r.planned.name or name in r.blockers for r in durable.retiring):
        return True
    for dependent in (state.dependents or {}).get(name, []):
        instance = durable.instances.get(dependent)
        if instance is not None and durable.released.get(dependent) != instance:
            return True
    return False


def _with_observed_states(state: PlannerState, states: list[tuple[str, WorkloadState]]) -> PlannerState:
    """The state at start, knowing the states agents report (before `_start`,
    so that nothing is decided on missing knowledge)."""
    return _record_all(state, states)[0] if states else state


# -- queries ----------------------------------------------------------------


def _remember(
    history: tuple[tuple[int, Manifest], ...], now_ms: int, replaced: Manifest
) -> tuple[tuple[int, Manifest], ...]:
    kept = [(t, m) for t, m in history if t >= now_ms - HISTORY_MS]
    return (*kept[-(HISTORY_LEN - 1) :], (now_ms, replaced))


def desired_at(state: PlannerState, since_ms: int, now_ms: int) -> Manifest | None:
    """The desired state as it was at `since_ms` (the asker's clock, taken no
    further back than HISTORY_MS, so that a clock running behind cannot reach
    further), or None if it has not changed since then."""
    since = max(since_ms, now_ms - HISTORY_MS)
    return next((replaced for t, replaced in state.history if t > since), None)


def complete_state(state: PlannerState) -> CompleteState:
    return CompleteState(
        desired=state.durable.desired,
        workload_states=[state.states[k] for k in sorted(state.states)],
        agents=sorted(state.alive),
    )


def plan_for(state: PlannerState, agent: str) -> AgentPlan:
    """The agent's current plan (an empty one if it has none yet)."""
    plan = state.plans.get(agent)
    if plan is not None:
        return plan
    return AgentPlan(agent=agent, generation=state.durable.generation, epoch=state.durable.epoch)


def owned_states(state: PlannerState) -> list[tuple[str, WorkloadState]]:
    """(bus key, state) of every state the planner currently publishes itself."""
    return [(_bus_key(k), state.states[k]) for k in sorted(state.owned) if k in state.states]


def _with_live_agents(state: PlannerState, agents: list[str]) -> PlannerState:
    """The state at start, knowing which agents are alive (before `_start`)."""
    if not agents:
        return state
    seen = sorted(set(state.durable.agents_seen) | set(agents))
    return msgspec.structs.replace(
        state, alive=state.alive | frozenset(agents), durable=msgspec.structs.replace(state.durable, agents_seen=seen)
    )
