"""Scale, mostly without I/O: plans and state replies in bounded parts,
incremental plans, size limits checked at apply, the planner's work per
state proportional to what it touches, the journal, agents that survive a
lying planner (plan epochs), and a busy planner that never acts on a command
it answered "busy"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from schemas.limits import MAX_ENTRY_BYTES, PART_BUDGET_BYTES, size_of
from schemas.manifest import Manifest, Workload
from schemas.messages import (
    AgentPlan,
    ApplyRequest,
    ApplyResult,
    CompleteState,
    PlannedWorkload,
    PlanRef,
    WorkloadState,
)
from schemas.state import ExecutionState
from services.agent import core as agent_core
from services.bus import Bus, paging
from services.bus.loop import EventLoop
from services.planner import core, store
from services.planner import shell as planner_shell
from tests.planner_steps import delete_workloads

NOW_MS = 1_800_000_000_000


def planned(name: str, data_bytes: int = 10) -> PlannedWorkload:
    workload = Workload(runtime="process", runtime_config="command: sleep", agent="a1", files=[])
    workload = msgspec.structs.replace(workload, runtime_config="command: sleep\n#" + "x" * data_bytes)
    return PlannedWorkload(name, f"i-{name}", workload)


def test_a_large_plan_goes_in_bounded_parts_and_is_reassembled_whatever_the_order() -> None:
    workloads = [planned(f"w{i:03}", 700 * 1024) for i in range(20)]  # ~14 MB of plan
    plan = AgentPlan(agent="a1", generation=7, epoch=3, workloads=workloads)
    parts = paging.split_plan(plan)
    assert len(parts) > 4
    assert all(size_of(p) <= PART_BUDGET_BYTES + 4096 for p in parts)
    assert {p.parts for p in parts} == {len(parts)} and [p.part for p in parts] == list(range(len(parts)))
    assembler = paging.PlanAssembler()
    # an older plan's part is pending; the newer one completes in reverse order
    assert assembler.add(msgspec.structs.replace(parts[0], generation=6)) is None
    results = [assembler.add(p) for p in reversed(parts)]
    assert results[:-1] == [None] * (len(parts) - 1)
    whole = results[-1]
    assert whole is not None and whole.parts == 1 and whole.workloads == workloads
    assert not assembler.incomplete  # the older incomplete plan is dropped


def test_the_assembler_holds_a_bounded_number_of_incomplete_plans() -> None:
    assembler = paging.PlanAssembler(keep=2)
    for generation in range(100):
        assembler.add(AgentPlan(agent="a1", generation=generation, part=0, parts=3))
    assert len(assembler._pending) == 2
    assert assembler.add(AgentPlan(agent="a1", generation=1, part=5, parts=3)) is None  # out of range


def test_the_state_reply_goes_in_bounded_parts_and_merges_back() -> None:
    workloads = {f"w{i:04}": Workload(runtime="process", runtime_config="#" + "y" * 50_000) for i in range(200)}
    states = [WorkloadState(workload=n, agent="a1", execution_state=ExecutionState("Running", "Ok")) for n in workloads]
    complete = CompleteState(
        desired=Manifest(api_version="v1", workloads=workloads, configs={"c": "v"}),
        workload_states=states,
        agents=["a1", "a2"],
    )
    parts = paging.split_complete_state(complete, snapshot=42)
    assert len(parts) >= 4 and all(size_of(p) <= PART_BUDGET_BYTES + 4096 for p in parts)
    stamped = [msgspec.structs.replace(p, sender="planner", seq=i + 1) for i, p in enumerate(parts)]
    merged = paging.merge_complete_state(list(reversed(stamped)))
    assert merged is not None
    assert merged.desired == complete.desired
    assert merged.workload_states == states and merged.agents == ["a1", "a2"]
    assert paging.merge_complete_state(stamped[1:]) is None  # a missing part: no state rather than a partial one


def test_an_apply_that_cannot_be_delivered_is_refused_naming_the_workload_and_the_limit() -> None:
    big = "x" * (800 * 1024)
    # each document is under 1 MiB, but the rendering repeats the config three times
    text = (
        "apiVersion: v1\nworkloads:\n  huge:\n    runtime: process\n    agent: a1\n"
        "    configs: {big: bigcfg}\n    runtimeConfig: 'command: sleep'\n"
        '    files:\n      - mountPoint: /one\n        data: "{{big}}{{big}}{{big}}"\n'
        f'configs:\n  bigcfg: "{big}"\n'
    )
    state = core.step(core.PlannerState(), core.Started(), NOW_MS).state
    step, result = core.apply_manifest(state, text, NOW_MS)
    assert not result.ok
    [error] = result.errors
    assert error.path == "workloads.huge" and str(MAX_ENTRY_BYTES) in error.message
    assert step.state is state and step.actions == []  # nothing changed, nothing published
    ok_text = text.replace('"{{big}}{{big}}{{big}}"', '"{{big}}"')
    _, ok = core.apply_manifest(state, ok_text, NOW_MS)
    assert ok.ok and ok.added == ["huge"]


def _running(state: core.PlannerState, name: str, agent: str = "a1") -> tuple[str, WorkloadState]:
    ws = WorkloadState(
        workload=name,
        agent=agent,
        execution_state=ExecutionState("Running", "Ok"),
        instance=state.durable.instances[name],
        sender=agent,
        seq=NOW_MS,
    )
    return f"ank/state/{agent}/{name}", ws


def test_a_state_nobody_depends_on_is_recorded_without_settling_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["apiVersion: v1", "workloads:"]
    for i in range(50):
        lines += [f"  w{i}:", "    runtime: process", "    agent: a1", "    runtimeConfig: 'command: sleep'"]
    lines += ["  dep:", "    runtime: process", "    agent: a1", "    runtimeConfig: 'command: sleep'"]
    lines += ["    dependencies: {w0: ADD_COND_RUNNING}"]
    state = core.step(core.PlannerState(), core.Started(agents=["a1"]), NOW_MS).state
    (step, result) = core.apply_manifest(state, "\n".join(lines) + "\n", NOW_MS)
    assert result.ok
    state = step.state
    settled: list[int] = []
    real_settle = core._settle

    def counting_settle(*args: object) -> core.Step:
        settled.append(1)
        return real_settle(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "_settle", counting_settle)
    for i in range(1, 50):
        state = core.step(state, core.StatesObserved([_running(state, f"w{i}")]), NOW_MS).state
    assert settled == []  # 49 states, none settled the whole desired state
    assert state.states["a1/w7"].execution_state.state == "Running"
    # the dependency's state still releases its dependent
    step = core.step(state, core.StatesObserved([_running(state, "w0")]), NOW_MS)
    assert settled == [1]
    assert step.state.durable.released["dep"] == step.state.durable.instances["dep"]


def test_each_planner_start_has_a_new_higher_epoch_carried_by_its_plans() -> None:
    first = core.step(core.PlannerState(), core.Started(agents=["a1"]), NOW_MS).state
    again = core.step(first, core.Started(), NOW_MS - 60_000).state  # a clock that went back a minute
    assert again.durable.epoch > first.durable.epoch >= NOW_MS * 1000
    assert again.plans["a1"].epoch == again.durable.epoch
    assert core.plan_for(again, "nobody").epoch == again.durable.epoch


# -- the agent -------------------------------------------------------------------------

AGENT_NOW = agent_core.Now(100.0, NOW_MS)


def _agent_with(plan: AgentPlan) -> agent_core.AgentState:
    step = agent_core.step(agent_core.AgentState(agent="a1"), agent_core.PlanReceived(plan), AGENT_NOW)
    return step.state


def test_an_implausible_plan_is_reported_not_obeyed_and_real_plans_still_apply() -> None:
    real = AgentPlan(agent="a1", generation=NOW_MS * 1000, epoch=NOW_MS * 1000 - 5, workloads=[planned("keep")])
    state = _agent_with(real)
    assert "keep" in state.slots
    lie = AgentPlan(agent="a1", generation=2**62, epoch=real.epoch, sender="planner")
    step = agent_core.step(state, agent_core.PlanReceived(lie), AGENT_NOW)
    alerts = [a for a in step.actions if isinstance(a, agent_core.Alert)]
    assert alerts and "implausible" in alerts[0].message and str(2**62) in alerts[0].message
    assert not any(isinstance(a, agent_core.Stop | agent_core.Remove) for a in step.actions)
    assert step.state == state  # nothing obeyed
    lie_epoch = msgspec.structs.replace(lie, generation=real.generation + 1, epoch=2**62)
    assert agent_core.step(state, agent_core.PlanReceived(lie_epoch), AGENT_NOW).state == state
    # the real planner's next plan applies
    nxt = msgspec.structs.replace(real, generation=real.generation + 1, workloads=[planned("keep"), planned("new")])
    assert set(agent_core.step(state, agent_core.PlanReceived(nxt), AGENT_NOW).state.slots) == {"keep", "new"}


def test_a_newer_epoch_is_applied_even_with_a_lower_generation_and_an_older_epoch_is_not() -> None:
    base = AgentPlan(agent="a1", generation=NOW_MS * 1000 + 500, epoch=NOW_MS * 1000, workloads=[planned("old")])
    state = _agent_with(base)
    newer = AgentPlan(agent="a1", generation=NOW_MS * 1000 + 10, epoch=NOW_MS * 1000 + 1, workloads=[planned("n")])
    after = agent_core.step(state, agent_core.PlanReceived(newer), AGENT_NOW).state
    assert after.epoch == newer.epoch and after.generation == newer.generation
    assert after.slots["n"].phase == "starting"
    older = msgspec.structs.replace(base, generation=base.generation + 1000, workloads=[])
    assert agent_core.step(after, agent_core.PlanReceived(older), AGENT_NOW).state == after


# -- persistence: journal and compaction ----------------------------------------------


def _apply_sleepers(state: core.PlannerState, names: list[str], pad: int = 0) -> core.PlannerState:
    lines = ["apiVersion: v1", "workloads:"]
    for name in names:
        lines += [
            f"  {name}:",
            "    runtime: process",
            "    agent: a1",
            f"    runtimeConfig: 'command: sleep #{'p' * pad}'",
        ]
    step, result = core.apply_manifest(state, "\n".join(lines) + "\n", NOW_MS)
    assert result.ok, result.errors
    return step.state


def test_a_small_change_to_a_large_state_appends_a_small_record_and_reloads_exactly(tmp_path: Path) -> None:
    state = core.step(core.PlannerState(), core.Started(agents=["a1"]), NOW_MS).state
    state = _apply_sleepers(state, [f"w{i}" for i in range(200)], pad=5000)  # ~2 MB
    saver = store.Store(tmp_path)
    saver.save(state.durable)
    snapshot = store.state_path(tmp_path).stat().st_size
    assert snapshot > 1_000_000
    state = _apply_sleepers(state, ["one-more"])
    saver.save(state.durable)
    journal = store.journal_path(tmp_path).stat().st_size
    assert journal < 5_000, f"a one-workload apply wrote {journal} bytes"
    assert store.state_path(tmp_path).stat().st_size == snapshot  # the snapshot was not rewritten
    state = delete_workloads(state, ["w3", "w4"], NOW_MS)[0].state
    saver.save(state.durable)
    loaded = store.load(tmp_path)
    assert loaded is not None
    assert msgspec.structs.replace(loaded, journal=0) == msgspec.structs.replace(state.durable, journal=0)


def test_the_journal_is_compacted_and_a_torn_last_record_is_ignored_then_cut(tmp_path: Path) -> None:
    state = core.step(core.PlannerState(), core.Started(), NOW_MS).state
    saver = store.Store(tmp_path, compact_bytes=3_000)
    for i in range(30):
        state = _apply_sleepers(state, [f"w{i}"])
        saver.save(state.durable)
    assert store.journal_path(tmp_path).stat().st_size < 6_000  # compacted on the way
    # a crash while appending: a torn record (never acknowledged)
    with open(store.journal_path(tmp_path), "ab") as out:
        out.write(b'{"n": 999, "set": [{"torn')
    loaded = store.load(tmp_path)
    assert loaded is not None and set(loaded.desired.workloads) == {f"w{i}" for i in range(30)}
    # the restarted planner appends after the cut: the next load still works
    again = store.Store(tmp_path, loaded)
    state = _apply_sleepers(core.PlannerState(durable=loaded), ["after"])
    again.save(state.durable)
    reloaded = store.load(tmp_path)
    assert reloaded is not None and "after" in reloaded.desired.workloads and "w29" in reloaded.desired.workloads


def test_records_a_new_snapshot_already_holds_are_skipped(tmp_path: Path) -> None:
    state = core.step(core.PlannerState(), core.Started(), NOW_MS).state
    saver = store.Store(tmp_path)
    for i in range(3):
        state = _apply_sleepers(state, [f"w{i}"])
        saver.save(state.durable)
    old_journal = store.journal_path(tmp_path).read_bytes()
    saver.compact_bytes = 0
    saver.journal_bytes = 10**9  # force the next save to compact
    state = delete_workloads(state, ["w0"], NOW_MS)[0].state
    saver.save(state.durable)
    # a crash after the snapshot's rename, before the journal's removal
    store.journal_path(tmp_path).write_bytes(old_journal)
    loaded = store.load(tmp_path)
    assert loaded is not None and set(loaded.desired.workloads) == {"w1", "w2"}


# -- incremental plans -----------------------------------------------------------------


def test_a_plan_update_carries_only_new_entries_and_resolves_from_what_the_agent_holds() -> None:
    a, b = planned("a"), planned("b")
    first = AgentPlan(agent="a1", generation=10, epoch=1, workloads=[a])
    second = AgentPlan(agent="a1", generation=11, epoch=1, workloads=[a, b])
    update = paging.plan_update(first, second)
    assert update.workloads == [b] and [(k.name, k.instance) for k in update.kept] == [("a", a.instance)]
    assert size_of(update) < size_of(second)
    # whole when there is nothing to refer to: first plan, a new epoch, a re-send
    assert paging.plan_update(None, second) == second
    assert paging.plan_update(first, msgspec.structs.replace(second, epoch=2)).kept == []
    assert paging.plan_update(second, second) == second
    held = {("a", a.instance): a}
    resolved = paging.resolve_plan(update, lambda n, i: held.get((n, i)))
    assert resolved is not None and resolved.workloads == [a, b] and resolved.kept == []
    # a hold change travels in the reference
    waiting = msgspec.structs.replace(a, hold="WaitingToStop")
    third = paging.plan_update(second, AgentPlan(agent="a1", generation=12, epoch=1, workloads=[waiting, b]))
    resolved = paging.resolve_plan(third, lambda n, i: {"a": a, "b": b}[n])
    assert resolved is not None and resolved.workloads[0].hold == "WaitingToStop"
    # an entry the agent does not hold: no plan (it asks for the whole one)
    assert paging.resolve_plan(update, lambda n, i: None) is None


def test_references_are_split_into_parts_and_reassembled_too() -> None:
    refs = [PlanRef(f"w{i:05}", f"inst{i:012}", "") for i in range(60_000)]  # ~3.6 MB of references
    plan = AgentPlan(agent="a1", generation=3, epoch=1, workloads=[planned("new")], kept=refs)
    parts = paging.split_plan(plan)
    assert len(parts) >= 2 and all(size_of(p) <= PART_BUDGET_BYTES + 4096 for p in parts)
    assembler = paging.PlanAssembler()
    results = [assembler.add(p) for p in parts]
    whole = results[-1]
    assert whole is not None and whole.kept == refs and whole.workloads == [planned("new")]


# -- a busy planner --------------------------------------------------------------------


def test_a_command_that_gave_up_waiting_for_a_busy_planner_is_answered_busy_and_never_applied_later(
    tmp_path: Path, make_bus: Callable[[str], Bus], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner_shell, "QUERY_TIMEOUT_S", 0.3)
    loop = EventLoop()  # not running yet: the planner is busy
    planner = planner_shell.Planner(make_bus("planner-in-test"), loop, tmp_path / "state", None)
    text = (
        "apiVersion: v1\nworkloads:\n  web:\n    runtime: process\n    agent: a1\n    runtimeConfig: 'command: sleep'\n"
    )
    request = msgspec.json.encode(ApplyRequest(manifest=text))
    [(_, reply)] = planner._answer_apply("ank/cmd/apply", request, "")
    answer = msgspec.json.decode(reply, type=ApplyResult)
    assert not answer.ok and "busy" in answer.errors[0].message and "nothing was done" in answer.errors[0].message
    loop.post(loop.stop)
    loop.run()  # the queued work runs now: it must not apply the refused change
    assert planner.state.durable.desired.workloads == {}
    assert store.load(tmp_path / "state") is None


def test_a_plan_part_for_another_agent_is_dropped_like_any_message_that_contradicts_its_key() -> None:
    from services.bus import paging

    dropped: list[tuple[str, str]] = []
    lie = msgspec.json.encode(AgentPlan(agent="car2", generation=1))
    assert paging.decode_part("ank/plan/car1", lie, AgentPlan, lambda k, why: dropped.append((k, why))) is None
    assert dropped and "ank/plan/car2" in dropped[0][1]
    fine = msgspec.json.encode(AgentPlan(agent="car1", generation=1))
    assert paging.decode_part("ank/plan/car1", fine, AgentPlan, lambda k, why: dropped.append((k, why))) is not None
