"""The planner's pure core: every decision, without Zenoh, clocks or files
(except the store round trip, on a temp dir)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import Binding, ExecutionState, Manifest, Workload, WorkloadState
from schemas.liveliness import AgentLiveliness
from services.planner import core, store
from tests.planner_steps import delete_workloads

NOW = 1_700_000_000_000
_seq = itertools.count(1)


# -- helpers -------------------------------------------------------------------


def wl(agent: str | None = "a1", deps: dict[str, str] | None = None, arg: str = "1") -> Workload:
    return Workload(
        runtime="process",
        runtime_config=f"command: sleep\nargs: ['{arg}']\n",
        agent=agent,
        dependencies=deps or {},  # type: ignore[arg-type]
    )


def text(**workloads: Workload) -> str:
    return msgspec.json.encode(Manifest(api_version="v1", workloads=workloads)).decode()


def fresh(*alive: str) -> core.PlannerState:
    return core.step(core.PlannerState(), core.Started(agents=list(alive)), NOW).state


def apply(state: core.PlannerState, now: int = NOW, **workloads: Workload) -> core.Step:
    step, result = core.apply_manifest(state, text(**workloads), now)
    assert result.ok, result.errors
    return step


def report(
    state: core.PlannerState, name: str, es: ExecutionState, agent: str = "a1", instance: str | None = None
) -> core.Step:
    ws = WorkloadState(
        workload=name,
        agent=agent,
        execution_state=es,
        instance=state.durable.instances.get(name, "") if instance is None else instance,
        sender=f"agent-{agent}",
        seq=next(_seq),
    )
    return core.step(state, core.StatesObserved([(f"ank/state/{agent}/{name}", ws)]), NOW)


def holds(state: core.PlannerState, agent: str = "a1") -> dict[str, str]:
    return {w.name: w.hold for w in core.plan_for(state, agent).workloads}


def published_states(step: core.Step) -> dict[str, str]:
    return {a.key: str(a.state.execution_state) for a in step.actions if isinstance(a, core.PublishState)}


def published_plans(step: core.Step) -> dict[str, Any]:
    return {a.plan.agent: a.plan for a in step.actions if isinstance(a, core.PublishPlan)}


RUNNING = ExecutionState("Running", "Ok")
SUCCEEDED = ExecutionState("Succeeded", "Ok")
EXEC_FAILED = ExecutionState("Failed", "ExecFailed")
WAITING = ExecutionState("Pending", "WaitingToStart")
STARTING = ExecutionState("Pending", "Starting")
REMOVED = ExecutionState("Removed")
STOPPING = ExecutionState("Stopping", "Stopping")


# -- apply -------------------------------------------------------------------


def test_apply_adds_workloads_and_publishes_a_plan_per_agent() -> None:
    step = apply(fresh("a1", "a2"), web=wl("a1"), db=wl("a2"))
    plans = published_plans(step)
    assert [w.name for w in plans["a1"].workloads] == ["web"]
    assert [w.name for w in plans["a2"].workloads] == ["db"]
    assert plans["a1"].workloads[0].hold == ""
    assert plans["a1"].workloads[0].instance == step.state.durable.instances["web"]
    persist = [i for i, a in enumerate(step.actions) if isinstance(a, core.Persist)]
    first_publication = min(i for i, a in enumerate(step.actions) if isinstance(a, core.PublishPlan))
    assert persist and persist[0] < first_publication, "persisted before anything is published"


def test_apply_merges_and_leaves_other_workloads_alone() -> None:
    state = apply(fresh("a1"), web=wl()).state
    step, result = core.apply_manifest(state, text(db=wl()), NOW)
    assert result.added == ["db"] and result.deleted == []
    assert sorted(step.state.durable.desired.workloads) == ["db", "web"]


def test_applying_the_same_manifest_again_changes_and_publishes_nothing() -> None:
    state = apply(fresh("a1"), web=wl()).state
    step, result = core.apply_manifest(state, text(web=wl()), NOW + 5)
    assert result.ok and result.unchanged == ["web"] and not result.added and not result.updated
    assert not [a for a in step.actions if isinstance(a, (core.PublishPlan, core.Persist))]


def test_changed_workload_is_reported_updated_with_a_new_instance() -> None:
    state = apply(fresh("a1"), web=wl(arg="1")).state
    old = state.durable.instances["web"]
    step, result = core.apply_manifest(state, text(web=wl(arg="2")), NOW)
    assert result.updated == ["web"]
    plan = published_plans(step)["a1"]
    assert plan.workloads[0].instance != old and plan.workloads[0].hold == ""


def test_invalid_manifest_is_rejected_whole_and_changes_nothing() -> None:
    state = apply(fresh("a1"), web=wl()).state
    step, result = core.apply_manifest(state, "workloads: [this is: not a manifest", NOW)
    assert not result.ok and result.errors
    assert step.state is state and step.actions == []


def test_garbage_on_ank_desired_publishes_a_rejected_event_naming_the_error() -> None:
    state = apply(fresh("a1"), web=wl()).state
    for payload in (b"\xff\xfe", b"apiVersion: [", b"42", b'{"apiVersion": "v1", "workloads": {"x": {"runtime": 3}}}'):
        step = core.step(state, core.DesiredPut(payload), NOW)
        assert step.state is state
        events = [a for a in step.actions if isinstance(a, core.PublishEvent)]
        assert len(events) == 1 and events[0].kind == "rejected" and events[0].severity == "error"
        assert "rejected" in events[0].message and len(events[0].message) > 30


def test_empty_manifest_is_refused_like_ankaios() -> None:
    _, result = core.apply_manifest(fresh(), '{"apiVersion": "v1"}', NOW)
    assert not result.ok and "No workload" in result.errors[0].message


def test_delete_mode_removes_the_manifests_workloads_only() -> None:
    state = apply(fresh("a1"), web=wl(), db=wl()).state
    step, result = core.apply_manifest(state, text(web=wl()), NOW, delete=True)
    assert result.deleted == ["web"]
    assert holds(step.state) == {"db": ""}


def test_delete_command_removes_named_workloads_and_warns_on_unknown_ones() -> None:
    state = apply(fresh("a1"), web=wl(), db=wl()).state
    step, result = delete_workloads(state, ["web", "nope"], NOW)
    assert result.ok and result.deleted == ["web"]
    assert [w.path for w in result.warnings] == ["workloads.nope"]
    assert holds(step.state) == {"db": ""}


def test_dependency_cycle_across_applies_is_rejected() -> None:
    state = apply(fresh("a1"), a=wl(deps={"b": "ADD_COND_RUNNING"})).state
    step, result = core.apply_manifest(state, text(b=wl(deps={"a": "ADD_COND_RUNNING"})), NOW)
    assert not result.ok and "cycle" in result.errors[0].message
    assert step.state is state


def test_agent_option_overrides_the_manifest_agent() -> None:
    step, result = core.apply_manifest(fresh("a1", "a2"), text(web=wl("a1")), NOW, agent="a2")
    assert result.ok and holds(step.state, "a2") == {"web": ""} and holds(step.state, "a1") == {}


# -- dependencies ----------------------------------------------------------------

CONDITIONS = [
    ("ADD_COND_RUNNING", RUNNING, [STARTING, SUCCEEDED, EXEC_FAILED]),
    ("ADD_COND_SUCCEEDED", SUCCEEDED, [RUNNING, EXEC_FAILED, ExecutionState("Failed", "Lost")]),
    ("ADD_COND_FAILED", EXEC_FAILED, [RUNNING, SUCCEEDED, ExecutionState("Failed", "Unknown")]),
]


@pytest.mark.parametrize(("condition", "meets", "misses"), CONDITIONS)
def test_workload_is_held_until_its_dependency_is_in_the_named_state(
    condition: str, meets: ExecutionState, misses: list[ExecutionState]
) -> None:
    state = apply(fresh("a1"), dep=wl(), app=wl(deps={"dep": condition})).state
    assert holds(state) == {"dep": "", "app": "WaitingToStart"}
    for es in misses:
        state = report(state, "dep", es).state
        assert holds(state)["app"] == "WaitingToStart", es
    step = report(state, "dep", meets)
    assert holds(step.state)["app"] == ""
    assert "app" in {w.name for w in published_plans(step)["a1"].workloads if w.hold == ""}


def test_dependency_state_of_another_instance_does_not_release() -> None:
    state = apply(fresh("a1"), dep=wl(), app=wl(deps={"dep": "ADD_COND_RUNNING"})).state
    state = report(state, "dep", RUNNING, instance="an-old-instance").state
    assert holds(state)["app"] == "WaitingToStart"


def test_dependency_on_a_workload_not_applied_yet_waits_for_it() -> None:
    state = apply(fresh("a1"), app=wl(deps={"later": "ADD_COND_RUNNING"})).state
    assert holds(state) == {"app": "WaitingToStart"}
    state = apply(state, later=wl()).state
    assert holds(state) == {"app": "WaitingToStart", "later": ""}
    assert holds(report(state, "later", RUNNING).state) == {"app": "", "later": ""}


def test_dependency_on_another_agents_workload_is_honoured() -> None:
    state = apply(fresh("a1", "a2"), dep=wl("a2"), app=wl("a1", deps={"dep": "ADD_COND_RUNNING"})).state
    state = report(state, "dep", RUNNING, agent="a2").state
    assert holds(state, "a1") == {"app": ""}


def test_released_workload_stays_released_when_its_dependency_fails_later() -> None:
    state = apply(fresh("a1"), dep=wl(), app=wl(deps={"dep": "ADD_COND_RUNNING"})).state
    state = report(state, "dep", RUNNING).state
    step = report(state, "dep", EXEC_FAILED)
    assert holds(step.state)["app"] == ""
    assert not published_plans(step)


# -- delete ordering ---------------------------------------------------------------


def _dep_and_app(condition: str = "ADD_COND_RUNNING") -> core.PlannerState:
    state = apply(fresh("a1"), dep=wl(), app=wl(deps={"dep": condition})).state
    state = report(state, "dep", RUNNING).state
    return report(state, "app", RUNNING).state


def test_deleting_a_needed_dependency_waits_until_its_dependent_stops() -> None:
    state = _dep_and_app()
    step, result = delete_workloads(state, ["dep"], NOW)
    assert result.deleted == ["dep"]
    assert holds(step.state) == {"app": "", "dep": "WaitingToStop"}
    state = report(step.state, "app", STOPPING).state  # user stops it: Stopping is neither Running nor Pending
    assert holds(state) == {"app": ""}


@pytest.mark.parametrize(
    ("dependent_state", "blocks"),
    [
        (RUNNING, True),
        (STARTING, True),
        (ExecutionState("Pending", "Initial"), True),
        (ExecutionState("Pending", "StartingFailed"), True),
        (WAITING, False),  # Ankaios: a dependent waiting to start never deadlocks a delete
        (SUCCEEDED, False),
        (EXEC_FAILED, False),
        (ExecutionState("AgentDisconnected"), False),
    ],
)
def test_delete_waits_only_for_running_or_pending_dependents(dependent_state: ExecutionState, blocks: bool) -> None:
    state = report(_dep_and_app(), "app", dependent_state).state
    step, _ = delete_workloads(state, ["dep"], NOW)
    assert ("dep" in holds(step.state)) is blocks


@pytest.mark.parametrize("condition", ["ADD_COND_SUCCEEDED", "ADD_COND_FAILED"])
def test_dependencies_other_than_running_do_not_delay_a_delete(condition: str) -> None:
    step, _ = delete_workloads(_dep_and_app(condition), ["dep"], NOW)
    assert "dep" not in holds(step.state)


def test_deleting_dependency_and_dependent_together_stops_the_dependent_first() -> None:
    state = _dep_and_app()
    step, result = delete_workloads(state, ["dep", "app"], NOW)
    assert sorted(result.deleted) == ["app", "dep"]
    assert holds(step.state) == {"dep": "WaitingToStop"}
    state = report(step.state, "app", STOPPING).state
    assert holds(state) == {}
    state = report(state, "app", REMOVED).state
    assert "a1/app" not in state.states


def test_update_of_a_needed_workload_keeps_the_old_instance_until_dependents_stop() -> None:
    state = _dep_and_app()
    old = state.durable.instances["dep"]
    step, result = core.apply_manifest(state, text(dep=wl(arg="2")), NOW)
    assert result.updated == ["dep"]
    [planned] = [w for w in core.plan_for(step.state, "a1").workloads if w.name == "dep"]
    assert (planned.instance, planned.hold) == (old, "WaitingToStop")
    state = report(step.state, "app", SUCCEEDED).state
    [planned] = [w for w in core.plan_for(state, "a1").workloads if w.name == "dep"]
    assert planned.instance == state.durable.instances["dep"] != old


def test_update_whose_dependencies_are_not_met_plans_the_new_instance_held() -> None:
    state = apply(fresh("a1"), app=wl()).state
    state = report(state, "app", RUNNING).state
    step, _ = core.apply_manifest(state, text(app=wl(deps={"gate": "ADD_COND_SUCCEEDED"})), NOW)
    [planned] = core.plan_for(step.state, "a1").workloads
    assert planned.hold == "WaitingToStart" and planned.instance == step.state.durable.instances["app"]


def test_reapplying_the_old_config_of_a_retiring_workload_keeps_it_running() -> None:
    state = _dep_and_app()
    state = apply(state, dep=wl(arg="2")).state
    step = apply(state, dep=wl(arg="1"))
    assert holds(step.state) == {"app": "", "dep": ""}


def test_delete_unblocks_when_the_dependents_agent_is_lost() -> None:
    state = apply(fresh("a1", "a2"), dep=wl("a1"), app=wl("a2", deps={"dep": "ADD_COND_RUNNING"})).state
    state = report(state, "dep", RUNNING).state
    state = report(state, "app", RUNNING, agent="a2").state
    state = delete_workloads(state, ["dep"], NOW)[0].state
    assert holds(state) == {"dep": "WaitingToStop"}
    state = core.step(state, AgentLiveliness("a2", False), NOW).state
    assert holds(state) == {}


# -- NotScheduled and bindings ---------------------------------------------------


def test_workload_without_agent_is_not_scheduled_until_bound() -> None:
    step = apply(fresh("a1"), roam=wl(agent=""))
    assert published_states(step) == {"ank/state/~/roam": "NotScheduled"}
    assert holds(step.state) == {}
    step = core.step(step.state, Binding(workload="roam", agent="a1", policy="MALE"), NOW)
    assert holds(step.state) == {"roam": ""}
    assert published_states(step) == {"ank/state/~/roam": "Removed"}
    assert step.state.durable.bindings == {"roam": "a1"}
    assert any(isinstance(a, core.Persist) and a.durable.bindings == {"roam": "a1"} for a in step.actions)


def test_empty_binding_unbinds_back_to_not_scheduled() -> None:
    state = apply(fresh("a1"), roam=wl(agent="")).state
    state = core.step(state, Binding(workload="roam", agent="a1"), NOW).state
    step = core.step(state, Binding(workload="roam", agent=""), NOW)
    assert holds(step.state) == {}
    assert published_states(step) == {"ank/state/~/roam": "NotScheduled"}
    assert published_plans(step)["a1"].workloads == []


def test_binding_is_ignored_for_a_workload_whose_manifest_names_an_agent() -> None:
    state = apply(fresh("a1", "a2"), web=wl("a1")).state
    step = core.step(state, Binding(workload="web", agent="a2"), NOW)
    assert step.state is state


def test_binding_moves_a_workload_with_the_scheduling_extension_off_its_named_agent() -> None:
    from schemas import Scheduling

    roaming = msgspec.structs.replace(wl("a1"), scheduling=Scheduling(selector={"arch": "arm64"}))
    state = apply(fresh("a1", "a2"), nav=roaming).state
    assert holds(state, "a1") == {"nav": ""}
    step = core.step(state, Binding(workload="nav", agent="a2", policy="MALE"), NOW)
    assert holds(step.state, "a1") == {} and holds(step.state, "a2") == {"nav": ""}


def test_binding_to_an_invalid_agent_name_is_ignored() -> None:
    state = apply(fresh("a1"), roam=wl(agent="")).state
    assert core.step(state, Binding(workload="roam", agent="a/**"), NOW).state is state


def test_binding_of_an_unknown_workload_is_ignored() -> None:
    state = fresh("a1")
    assert core.step(state, Binding(workload="ghost", agent="a1"), NOW).state is state


def test_deleting_an_unscheduled_workload_publishes_removed() -> None:
    state = apply(fresh(), roam=wl(agent="")).state
    step, _ = delete_workloads(state, ["roam"], NOW)
    assert published_states(step) == {"ank/state/~/roam": "Removed"}


def test_bindings_of_deleted_workloads_are_forgotten() -> None:
    state = apply(fresh("a1"), roam=wl(agent="")).state
    state = core.step(state, Binding(workload="roam", agent="a1"), NOW).state
    state = delete_workloads(state, ["roam"], NOW)[0].state
    assert state.durable.bindings == {}


# -- agents ------------------------------------------------------------------------


def test_workloads_of_a_never_seen_agent_are_pending_initial() -> None:
    step = apply(fresh(), web=wl("ghost"))
    assert published_states(step) == {"ank/state/ghost/web": "Pending(Initial)"}
    assert holds(step.state, "ghost") == {"web": ""}


def test_lost_agent_makes_all_its_workloads_agent_disconnected_at_once() -> None:
    state = apply(fresh("a1", "a2"), web=wl("a1"), db=wl("a1"), other=wl("a2")).state
    state = report(state, "web", RUNNING).state
    step = core.step(state, AgentLiveliness("a1", False), NOW)
    assert published_states(step) == {"ank/state/a1/db": "AgentDisconnected", "ank/state/a1/web": "AgentDisconnected"}
    assert sorted(k for k, _ in core.owned_states(step.state)) == ["ank/state/a1/db", "ank/state/a1/web"]
    assert core.complete_state(step.state).agents == ["a2"]


def test_returning_agent_gets_its_plan_again_and_owns_its_states() -> None:
    state = apply(fresh("a1"), web=wl("a1")).state
    state = core.step(state, AgentLiveliness("a1", False), NOW).state
    step = core.step(state, AgentLiveliness("a1", True), NOW)
    assert published_plans(step)["a1"] == core.plan_for(state, "a1"), "same plan, same generation"
    assert core.owned_states(step.state) == []
    assert published_states(step) == {}


def test_deleting_a_workload_of_a_lost_agent_publishes_removed() -> None:
    state = apply(fresh("a1"), web=wl("a1")).state
    state = core.step(state, AgentLiveliness("a1", False), NOW).state
    step, _ = delete_workloads(state, ["web"], NOW)
    assert published_states(step) == {"ank/state/a1/web": "Removed"}
    assert core.owned_states(step.state) == []


def test_new_agent_gets_an_empty_plan_and_is_remembered() -> None:
    step = core.step(fresh(), AgentLiveliness("a9", True), NOW)
    assert published_plans(step)["a9"].workloads == []
    assert step.state.durable.agents_seen == ["a9"]
    assert any(isinstance(a, core.Persist) for a in step.actions)


# -- observed states -------------------------------------------------------------


def test_stale_state_is_dropped_by_seq() -> None:
    state = apply(fresh("a1"), web=wl()).state
    fresh_ws = WorkloadState(
        workload="web", agent="a1", execution_state=RUNNING, instance=state.durable.instances["web"], sender="x", seq=10
    )
    state = core.step(state, core.StatesObserved([("ank/state/a1/web", fresh_ws)]), NOW).state
    stale = msgspec.structs.replace(fresh_ws, execution_state=STARTING, seq=9)
    assert core.step(state, core.StatesObserved([("ank/state/a1/web", stale)]), NOW).state is state


def test_states_of_workloads_not_desired_are_ignored() -> None:
    state = fresh("a1")
    assert report(state, "ghost", RUNNING).state is state


def test_state_on_a_key_that_does_not_match_its_content_is_ignored() -> None:
    state = apply(fresh("a1"), web=wl()).state
    ws = WorkloadState(workload="web", agent="a1", execution_state=RUNNING, sender="x", seq=1)
    assert core.step(state, core.StatesObserved([("ank/state/a2/web", ws)]), NOW).state is state


def test_complete_state_has_desired_states_and_live_agents() -> None:
    state = apply(fresh("a1"), web=wl(), roam=wl(agent="")).state
    state = report(state, "web", RUNNING).state
    complete = core.complete_state(state)
    assert sorted(complete.desired.workloads) == ["roam", "web"]
    assert {(s.agent, s.workload, str(s.execution_state)) for s in complete.workload_states} == {
        ("a1", "web", "Running(Ok)"),
        ("", "roam", "NotScheduled"),
    }
    assert complete.agents == ["a1"]


# -- generations, restarts, persistence ------------------------------------------


def test_generation_grows_with_every_plan_change() -> None:
    state = apply(fresh("a1"), web=wl()).state
    g1 = core.plan_for(state, "a1").generation
    state = apply(state, db=wl()).state
    g2 = core.plan_for(state, "a1").generation
    assert g2 > g1 >= NOW * 1000


def test_restart_from_persisted_state_republishes_the_same_plans_with_higher_generations(tmp_path: Path) -> None:
    state = apply(fresh("a1"), dep=wl(), app=wl(deps={"dep": "ADD_COND_RUNNING"}), roam=wl(agent="")).state
    state = report(state, "dep", RUNNING).state
    state = core.step(state, Binding(workload="roam", agent="a1"), NOW).state
    before = core.plan_for(state, "a1")
    store.save(tmp_path, state.durable)

    loaded = store.load(tmp_path)
    assert loaded == state.durable
    # The wall clock went backwards: generations must still grow.
    restarted = core.step(core.PlannerState(durable=loaded), core.Started(agents=["a1"]), NOW - 60_000)
    after = published_plans(restarted)["a1"]
    assert after.workloads == before.workloads
    assert after.generation > before.generation
    assert any(isinstance(a, core.Persist) for a in restarted.actions)


def test_restart_keeps_a_workload_waiting_to_stop(tmp_path: Path) -> None:
    state = delete_workloads(_dep_and_app(), ["dep"], NOW)[0].state
    store.save(tmp_path, state.durable)
    loaded = store.load(tmp_path)
    assert loaded is not None
    known = [(f"ank/state/a1/{k.split('/')[1]}", ws) for k, ws in state.states.items()]
    restarted = core.step(core.PlannerState(durable=loaded), core.Started(agents=["a1"], states=known), NOW)
    assert holds(restarted.state) == {"app": "", "dep": "WaitingToStop"}


def test_start_publishes_states_for_agents_that_are_not_alive() -> None:
    state = apply(fresh("a1"), web=wl("a1"), db=wl("never")).state
    restarted = core.step(core.PlannerState(durable=state.durable), core.Started(), NOW)
    assert published_states(restarted) == {
        "ank/state/a1/web": "AgentDisconnected",
        "ank/state/never/db": "Pending(Initial)",
    }


def test_store_is_empty_before_the_first_save_and_refuses_a_corrupt_file(tmp_path: Path) -> None:
    assert store.load(tmp_path) is None
    store.save(tmp_path, core.Durable(generation=7))
    assert [p.name for p in tmp_path.iterdir()] == [store.STATE_FILE], "no temp file left behind"
    store.state_path(tmp_path).write_text('{"desired": 3')
    with pytest.raises(store.StoreError, match="corrupt"):
        store.load(tmp_path)


def test_store_save_failure_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(store.StoreError, match="cannot write"):
        store.save(blocker / "sub", core.Durable())


# -- configs, set state ------------------------------------------------------------

TEMPLATED = """
apiVersion: v1
workloads:
  web:
    agent: "{{where.agent}}"
    runtime: process
    configs: {port: ports, where: placement}
    runtimeConfig: |
      command: serve
      args: ["{{port.http}}"]
configs:
  ports: {http: "8081"}
  placement: {agent: a1}
"""


def test_top_level_configs_merge_and_re_render_the_workloads_using_them() -> None:
    step, result = core.apply_manifest(fresh("a1"), TEMPLATED, NOW)
    assert result.ok, result.errors
    [planned] = core.plan_for(step.state, "a1").workloads
    assert '"8081"' in planned.workload.runtime_config and planned.workload.agent == "a1"
    step, result = core.apply_manifest(step.state, 'apiVersion: v1\nconfigs: {ports: {http: "9090"}}\n', NOW)
    assert result.ok and result.updated == ["web"]
    assert step.state.durable.desired.configs["placement"] == {"agent": "a1"}, "other configs stay"
    [planned] = core.plan_for(step.state, "a1").workloads
    assert '"9090"' in planned.workload.runtime_config
    assert "{{port.http}}" in step.state.durable.desired.workloads["web"].runtime_config, "desired keeps templates"


def test_deleting_a_config_still_used_is_rejected() -> None:
    state = core.apply_manifest(fresh("a1"), TEMPLATED, NOW)[0].state
    step, result = core.apply_manifest(state, "apiVersion: v1\nconfigs: {ports: {}}\n", NOW, delete=True)
    assert not result.ok and result.errors
    assert step.state is state


def test_set_state_with_masks_replaces_only_the_masked_workloads() -> None:
    state = apply(fresh("a1"), web=wl(arg="1"), db=wl(arg="1")).state
    update = (
        "desiredState:\n  apiVersion: v1\n  workloads:\n"
        '    web: {agent: a1, runtime: process, runtimeConfig: "command: x"}\n'
    )
    step, result = core.apply_manifest(state, update, NOW, masks=["desiredState.workloads.web"])
    assert result.ok, result.errors
    assert result.updated == ["web"] and result.deleted == []
    assert step.state.durable.desired.workloads["db"] == state.durable.desired.workloads["db"]
    step, result = core.apply_manifest(step.state, "", NOW, masks=["desiredState.workloads.db"])
    assert result.ok and result.deleted == ["db"]


def test_desired_at_gives_the_desired_state_of_a_recent_instant_and_no_further_back() -> None:
    state = apply(fresh("a1"), NOW, a=wl()).state
    state = apply(state, NOW + 1000, b=wl()).state
    state = apply(state, NOW + 2000, b=wl()).state  # unchanged: not a change
    assert core.desired_at(state, NOW + 500, NOW + 2000) is not None
    assert sorted(core.desired_at(state, NOW + 500, NOW + 2000).workloads) == ["a"]  # type: ignore[union-attr]
    assert core.desired_at(state, NOW + 1500, NOW + 2000) is None  # nothing changed since
    # a clock far behind reaches back HISTORY_MS at most: `a`'s apply is older
    assert core.desired_at(state, NOW - 60_000, NOW + 1000 + core.HISTORY_MS + 1) is None
    # bounded: only the newest HISTORY_LEN changes are kept
    for i in range(core.HISTORY_LEN + 5):
        state = apply(state, NOW + 3000 + i, b=wl(arg=str(i))).state
    assert len(state.history) == core.HISTORY_LEN
