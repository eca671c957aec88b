"""The planner's one entry point: `core.step(state, event, now)` handles every
event of `core.PlannerEvent`, and a command's answer comes out as data (its
Reply, the last action: after Persist and the publications)."""

from __future__ import annotations

import typing

import msgspec
import pytest

from schemas import Binding, ExecutionState, Manifest, Workload, WorkloadState
from schemas.liveliness import AgentLiveliness
from schemas.messages import AgentStatus, ApplyRequest, DeleteRequest
from services.planner import core

NOW = 1_700_000_000_000


def _text(*names: str) -> str:
    workloads = {n: Workload(runtime="process", runtime_config="command: sleep\n", agent="a1") for n in names}
    return msgspec.json.encode(Manifest(api_version="v1", workloads=workloads)).decode()


def _planner() -> core.PlannerState:
    """Agent a1 alive; `web` placed on it and `roam` for the scheduler."""
    state = core.step(core.PlannerState(), core.Started(agents=["a1"]), NOW).state
    manifest = Manifest(
        api_version="v1",
        workloads={
            "web": Workload(runtime="process", runtime_config="command: sleep\n", agent="a1"),
            "roam": Workload(runtime="process", runtime_config="command: sleep\n", agent=""),
        },
    )
    return core.step(state, ApplyRequest(manifest=msgspec.json.encode(manifest).decode()), NOW).state


def _web_running(state: core.PlannerState) -> WorkloadState:
    return WorkloadState(
        workload="web",
        agent="a1",
        execution_state=ExecutionState("Running", "Ok"),
        instance=state.durable.instances["web"],
        sender="agent-a1",
        seq=1,
    )


# One event of each kind, and what it must change (each a decision of its own
# function: an event routed to the wrong one, or to none, fails here).
EXAMPLES: dict[type, tuple[object, typing.Callable[[core.PlannerState, core.Step], bool]]] = {
    core.Started: (
        core.Started(agents=["a2"]),
        lambda s, st: "a2" in st.state.alive and st.state.durable.epoch > s.durable.epoch,
    ),
    ApplyRequest: (ApplyRequest(manifest=_text("db")), lambda s, st: "db" in st.state.durable.desired.workloads),
    DeleteRequest: (DeleteRequest(workloads=["web"]), lambda s, st: "web" not in st.state.durable.desired.workloads),
    core.DesiredPut: (core.DesiredPut(_text("db").encode()), lambda s, st: "db" in st.state.durable.desired.workloads),
    core.StatesObserved: (None, lambda s, st: st.state.states["a1/web"].execution_state.state == "Running"),
    AgentLiveliness: (AgentLiveliness("a1", False), lambda s, st: "a1" not in st.state.alive),
    core.AgentStatusSeen: (
        core.AgentStatusSeen(AgentStatus(agent="a2", arch="x86_64", os="linux")),
        lambda s, st: "a2" in st.state.alive,
    ),
    Binding: (Binding(workload="roam", agent="a1"), lambda s, st: st.state.durable.bindings == {"roam": "a1"}),
}


def test_the_examples_cover_every_event_of_the_union() -> None:
    assert set(typing.get_args(core.PlannerEvent)) == set(EXAMPLES)


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda k: k.__name__)
def test_step_handles_every_event_of_the_union(kind: type) -> None:
    state = _planner()
    event, changed = EXAMPLES[kind]
    if event is None:
        event = core.StatesObserved([("ank/state/a1/web", _web_running(state))])
    assert isinstance(event, kind)
    step = core.step(state, event, NOW + 1)  # type: ignore[arg-type]
    assert changed(state, step), f"{kind.__name__} did not change what it decides"


def test_an_event_outside_the_union_is_refused_not_ignored() -> None:
    with pytest.raises(AssertionError):
        core.step(_planner(), core.Persist(core.Durable()), NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "event", [ApplyRequest(manifest=_text("db")), DeleteRequest(workloads=["web"])], ids=["apply", "delete"]
)
def test_a_command_is_answered_by_its_reply_after_persist_and_publications(event: object) -> None:
    step = core.step(_planner(), event, NOW + 1)  # type: ignore[arg-type]
    kinds = [type(a) for a in step.actions]
    assert kinds[-1] is core.Reply and kinds.count(core.Reply) == 1
    reply = step.actions[-1]
    assert isinstance(reply, core.Reply) and reply.result.ok
    assert core.Persist in kinds and core.PublishPlan in kinds


def test_a_refused_command_replies_with_its_errors_and_changes_nothing() -> None:
    state = _planner()
    step = core.step(state, ApplyRequest(manifest="workloads: [not a manifest"), NOW + 1)
    assert step.state is state
    assert len(step.actions) == 1
    reply = step.actions[0]
    assert isinstance(reply, core.Reply) and not reply.result.ok and reply.result.errors


@pytest.mark.parametrize("event", [core.DesiredPut(_text("db").encode()), Binding(workload="roam", agent="a1")])
def test_events_that_are_not_queries_get_no_reply(event: object) -> None:
    step = core.step(_planner(), event, NOW + 1)  # type: ignore[arg-type]
    assert not any(isinstance(a, core.Reply) for a in step.actions)
