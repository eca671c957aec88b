"""The cores' docstring transition tables held to the code: every cell is
driven through the core (tests/transition_tables.py reads the tables), and
every table in a core's docstrings is one of those driven here."""

from __future__ import annotations

import itertools
import typing

import msgspec

from schemas.liveliness import AgentLiveliness
from schemas.manifest import Manifest, Scheduling, Workload
from schemas.messages import AgentPlan, AgentStatus, CompleteState, EnergyReport, PlannedWorkload
from schemas.state import ExecutionState
from services.agent import core as agent
from services.dashboard import core as dashboard
from services.health_watcher import core as health
from services.planner import core as planner
from services.scheduler import core as scheduler
from services.scheduler import kube_core, kube_leader
from services.scheduler.framework import EnergyReported, Tick
from tests.transition_tables import doc_table, doc_tables, hold_to_code

# -- the agent: what a plan does to a slot ---------------------------------------------------------------------------

PLAN_ROWS = {'run (hold "")': "", "WaitingToStart": "WaitingToStart", "WaitingToStop": "WaitingToStop"}
ABSENT_ROW = "not in plan"
RELATIONS = {"slot absent": None, "same instance": "i1", "other instance": "i2"}


class AgentDrive(msgspec.Struct):
    first: list[agent.Action]  # the plan's step
    then: list[agent.Action]  # the old instance's exit, when the plan stopped it
    state: agent.AgentState


def _planned(instance: str, hold: str) -> PlannedWorkload:
    workload = Workload(runtime="process", runtime_config="command: /bin/true")
    return PlannedWorkload("w", instance, workload, hold)  # type: ignore[arg-type]


def _step(state: agent.AgentState, event: agent.AgentEvent) -> tuple[agent.AgentState, list[agent.Action]]:
    done = agent.step(state, event, agent.Now(100.0, 100_000))
    return done.state, [a for a in done.actions if not isinstance(a, agent.Note)]


def _plan(generation: int, *entries: PlannedWorkload) -> agent.PlanReceived:
    return agent.PlanReceived(AgentPlan(agent="a1", generation=generation, workloads=list(entries)))


def drive_plan(row: str, column: str, slot_hold: str = "") -> AgentDrive:
    """A slot as the column says (instance i1, running unless `slot_hold` holds
    it), then a plan as the row says, then the old instance's exit if stopped."""
    state = agent.AgentState(agent="a1", stop_grace_s=3.0)
    if RELATIONS[column] is not None:
        state, _ = _step(state, _plan(1, _planned("i1", slot_hold)))
        state, _ = _step(state, agent.Started("w", "i1"))
    entries = [] if row == ABSENT_ROW else [_planned(RELATIONS[column] or "i1", PLAN_ROWS[row])]
    state, first = _step(state, _plan(2, *entries))
    then: list[agent.Action] = []
    if any(isinstance(a, agent.Stop) for a in first):
        state, then = _step(state, agent.Exited("w", "i1", 143))
    return AgentDrive(first, then, state)


def _published(actions: list[agent.Action]) -> list[str]:
    return [str(a.state.execution_state) for a in actions if isinstance(a, agent.Publish)]


def _kinds(actions: list[agent.Action]) -> list[type]:
    return [type(a) for a in actions]


def _create(row: str, column: str) -> None:
    d = drive_plan(row, column)
    assert [a.planned.instance for a in d.first if isinstance(a, agent.Create)] == ["i1"]
    assert agent.Stop not in _kinds(d.first)


def _publish_waiting(row: str, column: str) -> None:
    d = drive_plan(row, column)
    assert _published(d.first) == ["Pending(WaitingToStart)"] and agent.Create not in _kinds(d.first)


def _nothing(row: str, column: str) -> None:
    d = drive_plan(row, column)
    assert d.first == [] and "w" not in d.state.slots


def _keep_release(row: str, column: str) -> None:
    assert drive_plan(row, column).first == []  # a running one is kept
    released = drive_plan(row, column, slot_hold="WaitingToStart")
    assert [a.planned.instance for a in released.first if isinstance(a, agent.Create)] == ["i1"]


def _keep(row: str, column: str) -> None:
    d = drive_plan(row, column)
    assert d.first == [] and d.state.slots["w"].phase == "running"


def _waiting_to_stop(row: str, column: str) -> None:
    d = drive_plan(row, column)
    assert _published(d.first) == ["Stopping(WaitingToStop)"] and agent.Stop not in _kinds(d.first)


def _stopped_first(d: AgentDrive) -> None:
    assert [(a.workload, a.instance) for a in d.first if isinstance(a, agent.Stop)] == [("w", "i1")]
    assert [a.instance for a in d.then if isinstance(a, agent.Remove)] == ["i1"]


def _update(row: str, column: str) -> None:
    d = drive_plan(row, column)
    _stopped_first(d)
    assert [a.planned.instance for a in d.then if isinstance(a, agent.Create)] == ["i2"]


def _stop_then_wait(row: str, column: str) -> None:
    d = drive_plan(row, column)
    _stopped_first(d)
    assert agent.Create not in _kinds(d.then) and _published(d.then) == ["Pending(WaitingToStart)"]


def _stop_remove(row: str, column: str) -> None:
    d = drive_plan(row, column)
    _stopped_first(d)
    assert _published(d.then) == ["Removed"] and "w" not in d.state.slots


def test_the_agents_plan_table_is_what_step_does() -> None:
    table = doc_table(agent, "plan says", *RELATIONS)
    holds = set(typing.get_args(typing.get_type_hints(PlannedWorkload)["hold"]))
    assert [row["plan says"] for row in table.rows] == [*PLAN_ROWS, ABSENT_ROW]
    assert set(PLAN_ROWS.values()) == holds, "a hold the table has no row for"
    cells = {(row["plan says"], column): row[column] for row in table.rows for column in RELATIONS}
    drivers = {
        "create": _create,
        "Pending(WaitingToStart)": _publish_waiting,
        "nothing": _nothing,
        "—": _nothing,
        "keep; release a waiting one": _keep_release,
        "keep as it is": _keep,
        "runs on, Stopping(WaitingToStop)": _waiting_to_stop,
        "update: stop old, then create new": _update,
        "stop old; wait": _stop_then_wait,
        "stop, remove, publish Removed": _stop_remove,
    }
    hold_to_code(table, cells, drivers)


# -- the agent: what a record found at start becomes -----------------------------------------------------------------

FINALS: dict[str, list[ExecutionState | None]] = {
    "yes": [ExecutionState("Succeeded", "Ok")],
    "no": [None],
    "either": [None, ExecutionState("Succeeded", "Ok")],
}


def drive_found(found: str, final: str) -> list[tuple[agent.AgentState, list[agent.Action]]]:
    outcomes = []
    for recorded in FINALS[final]:
        record = agent.FoundRecord(
            "w", "i1", "process", typing.cast(agent.Found, found), planned=_planned("i1", ""), final=recorded
        )
        outcomes.append(_step(agent.AgentState(agent="a1"), agent.RecordsFound([record])))
    return outcomes


def _reclaim_running(found: str, final: str) -> None:
    for state, actions in drive_found(found, final):
        assert agent.Reclaim in _kinds(actions) and agent.ServeInterface in _kinds(actions)
        assert _published(actions) == ["Running(Ok)"] and state.slots["w"].phase == "running"


def _reclaim_final(found: str, final: str) -> None:
    for state, actions in drive_found(found, final):
        assert agent.Reclaim in _kinds(actions) and agent.ServeInterface not in _kinds(actions)
        assert _published(actions) == ["Succeeded(Ok)"] and state.slots["w"].phase == "done"
        assert agent.RecordFinal in _kinds(actions)


def _forget(found: str, final: str) -> None:
    for state, actions in drive_found(found, final):
        assert actions == [agent.ForgetRecord("w")] and state.slots == {}


def _keep_record_alert(found: str, final: str) -> None:
    for state, actions in drive_found(found, final):
        assert [type(a) for a in actions] == [agent.Alert] and state.slots == {}


def test_the_agents_adoption_table_is_what_step_does() -> None:
    table = doc_table(agent, "found", "recorded final", "decision")
    assert {row["found"] for row in table.rows} == set(typing.get_args(agent.Found)), "a Found the table lacks"
    cells = {(row["found"], row["recorded final"]): row["decision"] for row in table.rows}
    drivers = {
        "reclaim it Running, serve its interface again": _reclaim_running,
        "reclaim it in its final state": _reclaim_final,
        "forget the record (the plan recreates it)": _forget,
        "forget the record": _forget,
        "keep the record, reclaim nothing, alert": _keep_record_alert,
    }
    hold_to_code(table, cells, drivers)


# -- the planner: the states it publishes for workloads no live agent owns -------------------------------------------

AGENTS = {'"" (none)': "", "name": "robot"}
FLAGS = {"yes": [True], "no": [False], "-": [True, False]}


def _derived(expected: str) -> typing.Callable[[str, str, str], None]:
    def check(agent_cell: str, seen: str, alive: str) -> None:
        for seen_flag, alive_flag in itertools.product(FLAGS[seen], FLAGS[alive]):
            state = planner.derived_state(AGENTS[agent_cell], seen_flag, alive_flag)
            assert (str(state) if state else "(the agent publishes)") == expected, (seen_flag, alive_flag, state)

    return check


def test_the_planners_derived_state_table_is_what_derived_state_does() -> None:
    table = doc_table(planner, "agent", "seen", "alive", "state")
    cells = {(row["agent"], row["seen"], row["alive"]): row["state"] for row in table.rows}
    texts = ["NotScheduled", "Pending(Initial)", "AgentDisconnected", "(the agent publishes)"]
    hold_to_code(table, cells, {text: _derived(text) for text in texts})
    # every combination is covered by exactly one row
    covered = [(AGENTS[a], s, al) for a, s_cell, al_cell in cells for s in FLAGS[s_cell] for al in FLAGS[al_cell]]
    assert sorted(covered) == sorted(itertools.product(["", "robot"], [False, True], [False, True]))


# -- the native scheduler: unplaced / bound / moving -----------------------------------------------------------------

T0 = 1_700_000_000_000


def _where(state: scheduler.NativeState, workload: str = "w") -> str:
    tracked = state.workloads[workload]
    if not tracked.agent:
        return "unplaced"
    return "moving" if tracked.needs_placement else "bound"


def _fleet(state: scheduler.NativeState, energies: dict[str, float], now: int = T0) -> scheduler.NativeState:
    for name, wh in energies.items():
        state = scheduler.step(state, AgentLiveliness(name, True), now).state
        status = AgentStatus(agent=name, arch="arm64", os="linux")
        state = scheduler.step(state, scheduler.AgentStatusSeen(status), now).state
        state = _energy(state, name, wh, now)[0]
    return state


def _energy(state: scheduler.NativeState, node: str, wh: float, now: int) -> tuple[scheduler.NativeState, list[object]]:
    done = scheduler.step(state, EnergyReported(EnergyReport(node=node, energy_wh=wh, time_ms=now)), now)
    return done.state, list(done.actions)


def _desire(state: scheduler.NativeState, now: int = T0, **hints: object) -> tuple[scheduler.NativeState, list[object]]:
    scheduling = msgspec.convert(hints, Scheduling) if hints else None
    manifest = Manifest(api_version="v1", workloads={"w": Workload(runtime="process", agent="", scheduling=scheduling)})
    done = scheduler.step(state, scheduler.DesiredStateRead(CompleteState(desired=manifest)), now)
    return done.state, list(done.actions)


def _event_kinds(actions: list[object]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, scheduler.PublishEvent)]


def _bound_to(actions: list[object]) -> list[str]:
    return [a.binding.agent for a in actions if isinstance(a, scheduler.PublishBinding)]


def _moving() -> scheduler.NativeState:
    """w bound on r1, whose energy then fell below reserve - hysteresis with nowhere better."""
    state = _fleet(scheduler.NativeState(scheduler.NativeConfig(min_dwell_ms=0, default_energy_cost_wh=0)), {"r1": 50})
    state, _ = _desire(state, minEnergyWh=20.0)
    state, actions = _energy(state, "r1", 10, T0 + 1000)
    assert _where(state) == "moving" and "FailedScheduling" in _event_kinds(actions)
    return state


def _unplaced_fit(where: str, transition: str) -> None:
    state = _fleet(scheduler.NativeState(), {"r1": 90})
    state, actions = _desire(state)
    assert _bound_to(actions) == ["r1"] and "Scheduled" in _event_kinds(actions) and _where(state) == "bound"


def _unplaced_no_fit(where: str, transition: str) -> None:
    state = _fleet(scheduler.NativeState(scheduler.NativeConfig(max_energy_age_ms=10**9)), {"r1": 5})
    state, actions = _desire(state, minEnergyWh=20.0)
    assert _event_kinds(actions) == ["FailedScheduling"] and _where(state) == "unplaced"
    delays, now = [], T0
    for _ in range(5):
        wake = scheduler.next_wake_ms(state)
        assert wake is not None
        delays.append(wake - now)
        now = wake
        state = scheduler.step(state, Tick(), now).state
        assert _where(state) == "unplaced"
    assert delays == [1000, 2000, 4000, 8000, 10000]


def _bound_agent_lost(where: str, transition: str) -> None:
    state = _fleet(scheduler.NativeState(), {"r1": 90})
    state, _ = _desire(state)
    done = scheduler.step(state, AgentLiveliness("r1", False), T0 + 100)
    # re-placed at once: the attempt is in the same step (here nowhere fits)
    assert _where(done.state) == "unplaced" and "FailedScheduling" in _event_kinds(list(done.actions))


def _bound_low_energy(where: str, transition: str) -> None:
    config = scheduler.NativeConfig(hysteresis_wh=2, min_dwell_ms=10_000, default_energy_cost_wh=0)
    state = _fleet(scheduler.NativeState(config), {"r1": 50, "r2": 40})
    state, _ = _desire(state, minEnergyWh=20.0)
    young, actions = _energy(state, "r1", 17.5, T0 + 5_000)
    assert actions == [] and _where(young) == "bound"  # within min_dwell: stays
    state, actions = _energy(state, "r1", 19, T0 + 20_000)
    assert actions == [] and _where(state) == "bound"  # inside the hysteresis band: stays
    state, actions = _energy(state, "r1", 17.5, T0 + 21_000)
    assert _bound_to(actions) == ["r2"] and _where(state) == "bound"


def _moving_fit_elsewhere(where: str, transition: str) -> None:
    state = _fleet(_moving(), {"r2": 60}, now=T0 + 2000)
    assert _where(state) == "bound" and state.workloads["w"].agent == "r2"


def _moving_recovers(where: str, transition: str) -> None:
    state, actions = _energy(_moving(), "r1", 25, T0 + 2000)
    assert actions == [] and _where(state) == "bound" and state.workloads["w"].agent == "r1"


def _moving_no_fit(where: str, transition: str) -> None:
    state = _moving()
    wake = scheduler.next_wake_ms(state)
    assert wake is not None
    state = scheduler.step(state, Tick(), wake).state
    assert _where(state) == "moving" and scheduler.next_wake_ms(state) is not None


SCHEDULER_TRANSITIONS = {
    "unplaced": {
        "fit -> bound (Binding + Scheduled event)": _unplaced_fit,
        "no fit -> unplaced, backoff 1 s .. 10 s (FailedScheduling event)": _unplaced_no_fit,
    },
    "bound": {
        "agent lost -> unplaced (re-place at once)": _bound_agent_lost,
        "energy < reserve - hysteresis for a binding older than min_dwell -> re-place": _bound_low_energy,
    },
    "moving": {
        "fit elsewhere -> bound there": _moving_fit_elsewhere,
        "node recovers to >= reserve -> bound": _moving_recovers,
        "no fit -> moving, backoff": _moving_no_fit,
    },
}


def test_the_native_schedulers_state_table_is_what_step_does() -> None:
    table = doc_table(scheduler, "state", "meaning", "leaves on")
    assert [row["state"] for row in table.rows] == list(SCHEDULER_TRANSITIONS)
    cells: dict[tuple[str, ...], str] = {}
    for row in table.rows:
        transitions = SCHEDULER_TRANSITIONS[row["state"]]
        # the cell is the transitions one after the other (wrapped over lines)
        assert row["leaves on"] == " ".join(transitions), f"{row['state']}: {row['leaves on']!r}"
        cells.update({(row["state"], text): text for text in transitions})
    drivers = {text: fn for transitions in SCHEDULER_TRANSITIONS.values() for text, fn in transitions.items()}
    hold_to_code(table, cells, drivers)


# -- the Kubernetes scheduler's pod watch (kube_core.watch_step) ----------------------------------------------------

WATCH_FROM = kube_core.WatchState(resource_version="10", failures=1)  # one failure behind it: "kept" differs from "0"


def _watch_line(kind: str, obj: object) -> kube_core.WatchLine:
    return kube_core.WatchLine(msgspec.json.encode({"type": kind, "object": obj}).decode())


WATCH_EVENTS: dict[str, kube_core.WatchEvent] = {
    "list answered (WatchListed)": kube_core.WatchListed("20"),
    "watch line ADDED/MODIFIED/DELETED": _watch_line("MODIFIED", {"metadata": {"name": "p", "resourceVersion": "21"}}),
    "watch line BOOKMARK": _watch_line("BOOKMARK", {"metadata": {"resourceVersion": "22"}}),
    "watch line malformed": kube_core.WatchLine("{not json"),
    "watch line ERROR 410 (Expired)": _watch_line("ERROR", {"code": 410, "message": "too old"}),
    "watch line ERROR other (500, 504 ...)": _watch_line("ERROR", {"code": 500, "message": "boom"}),
    "watch ended by the server (its timeout)": kube_core.WatchEnded(),
    "request failed: HTTP 410": kube_core.RequestFailed(410, "gone"),
    "request failed: HTTP 429": kube_core.RequestFailed(429, "slow down", retry_after_s=90),
    "request failed: other HTTP status": kube_core.RequestFailed(503, "unavailable"),
    "request failed: no HTTP status (connection, timeout)": kube_core.RequestFailed(None, "refused"),
}
WATCH_VERSIONS = {"list answered (WatchListed)": "20", "watch line ADDED/MODIFIED/DELETED": "21"}
WATCH_VERSIONS["watch line BOOKMARK"] = "22"


def _watch(row: str, start: kube_core.WatchState = WATCH_FROM) -> kube_core.WatchStep:
    return kube_core.watch_step(start, WATCH_EVENTS[row], 0)


def _watch_field(column: str, state: kube_core.WatchState) -> object:
    return state.failures if column == "failures" else state.resource_version


def _watch_kept(row: str, column: str) -> None:
    assert _watch_field(column, _watch(row).state) == _watch_field(column, WATCH_FROM)


def _watch_zero(row: str, column: str) -> None:
    assert _watch(row).state.failures == 0


def _watch_plus_one(row: str, column: str) -> None:
    assert _watch(row).state.failures == WATCH_FROM.failures + 1


def _watch_new_version(row: str, column: str) -> None:
    assert _watch(row).state.resource_version == WATCH_VERSIONS[row]


def _watch_relist(row: str, column: str) -> None:
    assert _watch(row).state.resource_version is None
    assert kube_core.next_request(_watch(row).state) == kube_core.ListPods()


def _watch_relist_after_three(row: str, column: str) -> None:
    below = kube_core.WatchState("10", kube_core.WATCH_RELIST_AFTER - 2)  # this failure is the 2nd in a row
    assert _watch(row, below).state.resource_version == "10"
    third = kube_core.WatchState("10", kube_core.WATCH_RELIST_AFTER - 1)
    assert _watch(row, third).state.resource_version is None


def _watch_actions(*kinds: type) -> typing.Callable[[str, str], None]:
    def check(row: str, column: str) -> None:
        assert [type(a) for a in _watch(row).actions] == list(kinds)

    return check


def _watch_backoff(row: str, column: str) -> None:
    actions = _watch(row).actions
    assert type(actions[-1]) is kube_core.Pause
    assert actions[-1].seconds == kube_core.watch_backoff_s(WATCH_FROM.failures + 1)
    _watch_actions(*[type(a) for a in actions[:-1]], kube_core.Pause)(row, column)


def _watch_end_and_backoff(row: str, column: str) -> None:
    _watch_actions(kube_core.EndWatch, kube_core.Pause)(row, column)
    _watch_backoff(row, column)


def _watch_retry_after(row: str, column: str) -> None:
    (pause,) = _watch(row).actions
    assert pause == kube_core.Pause(60.0, "slow down")  # Retry-After 90 s, capped at 60
    plain = kube_core.watch_step(WATCH_FROM, kube_core.RequestFailed(429, "slow down"), 0)
    assert plain.actions == [kube_core.Pause(1.0, "slow down")]  # no Retry-After: 1 s


WATCH_CELLS: dict[str, typing.Callable[[str, str], None]] = {
    "kept": _watch_kept,
    "0": _watch_zero,
    "+1": _watch_plus_one,
    "the list's": _watch_new_version,
    "the object's": _watch_new_version,
    "the bookmark's": _watch_new_version,
    "none: re-list": _watch_relist,
    "none after 3 in a row": _watch_relist_after_three,
    "-": _watch_actions(),
    "DeliverPod": _watch_actions(kube_core.DeliverPod),
    "IgnoredLine": _watch_actions(kube_core.IgnoredLine),
    "EndWatch": _watch_actions(kube_core.EndWatch),
    "EndWatch, Pause(backoff)": _watch_end_and_backoff,
    "Pause(backoff)": _watch_backoff,
    "Pause(Retry-After <= 60, or 1 s)": _watch_retry_after,
}


def test_the_kubernetes_pod_watch_table_is_what_watch_step_does() -> None:
    table = doc_table(kube_core, "what happened", "failures", "resourceVersion", "then")
    assert [row["what happened"] for row in table.rows] == list(WATCH_EVENTS)
    cells = {(row["what happened"], column): row[column] for row in table.rows for column in table.headers[1:]}
    hold_to_code(table, cells, WATCH_CELLS)


# -- no table goes undriven ------------------------------------------------------------------------------------------


def test_every_table_in_a_core_docstring_is_one_driven_above() -> None:
    driven = {
        ("services.agent.core", ("plan says", *RELATIONS)),
        ("services.agent.core", ("found", "recorded final", "decision")),
        ("services.planner.core", ("agent", "seen", "alive", "state")),
        ("services.scheduler.core", ("state", "meaning", "leaves on")),
        ("services.scheduler.kube_core", ("what happened", "failures", "resourceVersion", "then")),
    }
    found = set()
    for module in (agent, planner, health, scheduler, kube_core, kube_leader, dashboard):
        for table in doc_tables(module):
            found.add((module.__name__, table.headers))
    assert found == driven, "a core docstring table no test drives (add it above) or one gone"
