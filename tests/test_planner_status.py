"""The planner core's decisions on agent statuses (`core.AgentStatusSeen`):
a status proves its agent alive, and the boots of the statuses tell two live
agents of one name from a restart. Also: an agent that connects is asked for
its states (`core.AskStates`), which the shell runs."""

from __future__ import annotations

import re

import pytest

from schemas.liveliness import AgentLiveliness
from schemas.messages import AgentStatus
from services.planner import core
from tests.test_planner_core import NOW, RUNNING, apply, fresh, published_plans, report, wl


def status(agent: str = "a1", boot: str = "boot-1") -> core.AgentStatusSeen:
    return core.AgentStatusSeen(AgentStatus(agent=agent, arch="x86_64", os="linux", boot=boot))


def events(step: core.Step) -> list[core.PublishEvent]:
    return [a for a in step.actions if isinstance(a, core.PublishEvent)]


def duplicate_events(state: core.PlannerState, agent: str, boots: str) -> tuple[core.PlannerState, list[list[str]]]:
    """Feeds one status per boot (a letter each); the boots each
    duplicate-agent event names."""
    seen: list[str] = []
    for boot in boots:
        step = core.step(state, status(agent, boot), NOW)
        seen.extend(e.message for e in events(step) if e.kind == "duplicate-agent")
        state = step.state
    return state, [re.findall(r"boots (.*)\)", m)[0].split(", ") for m in seen]


def test_a_status_brings_an_agent_taken_for_lost_back_alive() -> None:
    state = apply(fresh("a1"), web=wl("a1")).state
    state = report(state, "web", RUNNING).state
    lost = core.step(state, AgentLiveliness("a1", False), NOW).state
    assert "a1" not in lost.alive and core.owned_states(lost), "AgentDisconnected, published by the planner"

    step = core.step(lost, status("a1"), NOW + 1)

    assert "a1" in step.state.alive
    assert published_plans(step)["a1"] == core.plan_for(lost, "a1"), "its plan handed again, same generation"
    assert core.owned_states(step.state) == [], "its states are its own again (no AgentDisconnected kept)"
    assert core.AskStates("a1") in step.actions
    warnings = [a.message for a in step.actions if isinstance(a, core.Log) and a.level == "warning"]
    assert "agent a1 sends status while its token is gone: alive again" in warnings


def test_a_status_of_a_live_agent_decides_nothing() -> None:
    state = apply(fresh("a1"), web=wl("a1")).state
    step = core.step(state, status("a1"), NOW + 1)
    assert step.actions == []
    assert step.state.alive == state.alive and step.state.durable is state.durable


def test_a_status_of_an_agent_never_seen_makes_it_known_and_alive() -> None:
    step = core.step(fresh(), status("a9"), NOW)
    assert "a9" in step.state.alive and step.state.durable.agents_seen == ["a9"]
    assert any(isinstance(a, core.Persist) for a in step.actions), "agents seen are durable"
    assert published_plans(step)["a9"].workloads == []


@pytest.mark.parametrize("name", ["", "a/b", "*", "a$b", "**"])
def test_a_status_naming_no_possible_token_makes_nothing_alive(name: str) -> None:
    state = fresh("a1")
    step = core.step(state, status(name), NOW)
    assert step.state.alive == state.alive and step.actions == []


def test_a_restart_changes_the_boot_once_and_is_no_twin() -> None:
    _, seen = duplicate_events(fresh("a1"), "a1", "AABBB")
    assert seen == []


def test_two_live_agents_of_one_name_are_reported_once_as_an_event() -> None:
    state, seen = duplicate_events(fresh("a1"), "a1", "AB")
    assert seen == []
    step = core.step(state, status("a1", "A"), NOW)
    [event] = events(step)
    assert (event.kind, event.subject, event.severity) == ("duplicate-agent", "a1", "warning")
    assert "two agents named a1 are live (boots A, B)" in event.message
    assert any(isinstance(a, core.Log) and a.message == event.message for a in step.actions)
    _, again = duplicate_events(step.state, "a1", "BABA")
    assert again == [], "reported once while the agent lives"


def test_a_lost_token_forgets_the_boots_so_a_later_restart_starts_afresh() -> None:
    state, seen = duplicate_events(fresh("a1"), "a1", "ABA")
    assert seen == [["A", "B"]]
    state = core.step(state, AgentLiveliness("a1", False), NOW).state
    assert "a1" not in state.boots and "a1" not in state.twins
    state = core.step(state, AgentLiveliness("a1", True), NOW).state
    _, seen = duplicate_events(state, "a1", "CC")
    assert seen == []
    _, seen = duplicate_events(state, "a1", "CAC")
    assert seen == [["A", "C"]], "two live agents are reported again after the reset"


def test_twins_are_told_per_agent_and_a_status_without_boot_is_none() -> None:
    state, seen = duplicate_events(fresh("a1", "a2"), "a1", "AB")
    state, seen_a2 = duplicate_events(state, "a2", "A")
    assert seen == [] and seen_a2 == [], "one boot per agent name: not a twin of another agent"
    step = core.step(state, status("a1", ""), NOW)
    assert step.state is state and step.actions == []


def test_the_boots_remembered_are_bounded() -> None:
    state, _ = duplicate_events(fresh("a1"), "a1", "ABCDABCD" * 20)
    assert len(state.boots["a1"]) == core.BOOTS_KEPT


def test_an_agent_that_connects_is_asked_for_its_states_and_a_live_one_is_not() -> None:
    state = apply(fresh("a1"), web=wl("a1")).state
    state = core.step(state, AgentLiveliness("a1", False), NOW).state
    back = core.step(state, AgentLiveliness("a1", True), NOW)
    assert back.actions[-1] == core.AskStates("a1"), "asked once it is persisted and its plan is out"
    again = core.step(back.state, AgentLiveliness("a1", True), NOW)
    assert again.actions == []
    lost = core.step(back.state, AgentLiveliness("a1", False), NOW)
    assert not any(isinstance(a, core.AskStates) for a in lost.actions)
