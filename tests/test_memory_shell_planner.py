"""The planner's shell (services.planner.shell.Planner) on the in-memory bus:
its wiring, without a router. The real-Zenoh tests (tests/test_planner_shell.py,
tests/test_system.py) remain the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from schemas.manifest import Manifest, Workload
from schemas.messages import AgentPlan, AgentStatus, ApplyRequest, ApplyResult, CompleteState, Event, WorkloadState
from schemas.state import AGENT_DISCONNECTED, RUNNING
from services.bus import paging
from services.bus.loop import EventLoop
from services.bus.memory import MemoryBus, MemoryHub
from services.planner import store
from services.planner.shell import Planner
from tests.helpers import Collector, wait_for
from tests.memory_helpers import ManualClock, memory_hub, on_loop_idle, running_loop


@dataclass
class Stack:
    hub: MemoryHub
    planner: Planner
    bus: MemoryBus  # the planner's
    loop: EventLoop
    agent: MemoryBus
    cli: MemoryBus
    plans: Collector
    clock: ManualClock

    def apply(self, **workloads: Workload) -> ApplyResult:
        text = msgspec.json.encode(Manifest(api_version="v1", workloads=workloads)).decode()
        request = self.cli.encode(ApplyRequest(manifest=text))
        (result,) = self.cli.get_decoded("ank/cmd/apply", ApplyResult, payload=request, timeout=5)
        return result

    def complete_state(self) -> CompleteState:
        on_loop_idle(self.loop)  # what was put has been taken in
        (state,) = paging.get_complete_state(self.cli, timeout=5)
        return state

    def plan_with(self, workload: str) -> AgentPlan:
        def found(items: list[tuple[str, object]]) -> AgentPlan | None:
            for _key, plan in reversed(items):
                if isinstance(plan, AgentPlan) and any(w.name == workload for w in plan.workloads):
                    return plan
            return None

        return self.plans.wait(found, 5, f"a plan with {workload}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    clock = ManualClock()
    with memory_hub() as hub:
        agent = MemoryBus(hub, "agent/robot")
        agent.liveliness_token("ank/agents/robot")
        plans = Collector()
        agent.subscribe("ank/plan/robot", AgentPlan, plans)
        loop = EventLoop(clock)
        bus = MemoryBus(hub, "planner")
        planner = Planner(bus, loop, tmp_path / "state", None, clock)
        with running_loop(loop):
            planner.start()
            yield Stack(hub, planner, bus, loop, agent, MemoryBus(hub, "cli"), plans, clock)


def sleeper(agent: str = "robot") -> Workload:
    return Workload(runtime="process", runtime_config="command: sleep\nargs: ['60']\n", agent=agent)


def test_an_apply_is_answered_persisted_and_planned_for_its_agent(stack: Stack) -> None:
    result = stack.apply(web=sleeper())
    assert result.ok and result.added == ["web"]
    plan = stack.plan_with("web")
    assert plan.agent == "robot" and plan.sender == "planner"
    durable = store.load(stack.planner.state_dir)  # acknowledged only once persisted
    assert durable is not None and "web" in durable.desired.workloads


def test_a_state_put_by_the_agent_is_in_the_complete_state(stack: Stack) -> None:
    stack.apply(web=sleeper())
    instance = stack.plan_with("web").workloads[0].instance
    ws = WorkloadState(workload="web", agent="robot", execution_state=RUNNING, instance=instance)
    stack.agent.put("ank/state/robot/web", ws)
    states = {s.workload: s for s in stack.complete_state().workload_states}
    assert states["web"].execution_state == RUNNING
    assert "robot" in stack.complete_state().agents


def test_an_agent_whose_token_vanishes_has_its_workloads_disconnected(stack: Stack) -> None:
    stack.apply(web=sleeper())
    instance = stack.plan_with("web").workloads[0].instance
    stack.agent.put(
        "ank/state/robot/web", WorkloadState(workload="web", agent="robot", execution_state=RUNNING, instance=instance)
    )
    stack.agent.close()  # the agent's process went away
    states = {s.workload: s for s in stack.complete_state().workload_states}
    assert states["web"].execution_state.state == AGENT_DISCONNECTED.state
    assert states["web"].time_ms == stack.clock.wall_ms()  # the planner's clock is the injected one


def test_a_malformed_apply_is_refused_with_its_reason(stack: Stack) -> None:
    (result,) = stack.cli.get_decoded("ank/cmd/apply", ApplyResult, payload=b"{", timeout=5)
    assert not result.ok and "invalid ApplyRequest" in result.errors[0].message
    assert stack.complete_state().desired.workloads == {}


def test_a_wildcard_command_query_is_not_acted_on(stack: Stack) -> None:
    text = msgspec.json.encode(Manifest(api_version="v1", workloads={"web": sleeper()})).decode()
    assert stack.cli.get("ank/cmd/*", payload=stack.cli.encode(ApplyRequest(manifest=text)), timeout=5) == []
    assert stack.complete_state().desired.workloads == {}
    assert stack.bus.dropped["ank/cmd/*"] == 3  # apply, delete and state each refused it


def test_a_late_joining_agent_asks_for_its_plan(stack: Stack) -> None:
    stack.apply(web=sleeper())
    replies = stack.cli.get("ank/plan/*", timeout=5)
    assert [key for key, _ in replies] == ["ank/plan/robot"]


def test_a_status_without_a_token_makes_the_agent_alive_and_its_states_are_asked(stack: Stack) -> None:
    """The shell hands a status to the core (AgentStatusSeen) and runs what
    it decides: the plan of the agent taken for alive, and the query of its
    states (AskStates), whose answer is recorded."""
    stack.apply(web=sleeper("ghost"))
    ghost = MemoryBus(stack.hub, "agent/ghost")  # its token never reaches the planner
    plans = Collector()
    ghost.subscribe("ank/plan/ghost", AgentPlan, plans)
    instance = stack.planner.state.durable.instances["web"]  # the apply was answered: committed
    running = WorkloadState(workload="web", agent="ghost", execution_state=RUNNING, instance=instance)
    ghost.queryable("ank/state/ghost/**", lambda _k, _p, _q: [("ank/state/ghost/web", ghost.encode(running))])
    assert "ghost" not in stack.complete_state().agents

    ghost.put("ank/agents/ghost/status", AgentStatus(agent="ghost", arch="x86_64", os="linux", boot="b1"))

    plan = plans.wait(lambda items: items[-1][1] if items else None, 5, "the ghost's plan")
    assert isinstance(plan, AgentPlan) and [w.name for w in plan.workloads] == ["web"]

    def web_running() -> bool:
        states = {s.workload: s for s in stack.complete_state().workload_states}
        return states["web"].execution_state == RUNNING

    wait_for(web_running, 5, "the ghost's state, asked once it is alive")
    assert "ghost" in stack.complete_state().agents


def test_statuses_of_two_boots_interleaved_are_published_as_one_event(stack: Stack) -> None:
    events = Collector()
    stack.cli.subscribe("ank/events/duplicate-agent", Event, events)
    for boot in ("one", "two", "one", "two", "one"):
        stack.agent.put("ank/agents/robot/status", AgentStatus(agent="robot", arch="x86_64", os="linux", boot=boot))
    on_loop_idle(stack.loop)
    (event,) = [e for _k, e in events.items]
    assert isinstance(event, Event) and event.subject == "robot" and "boots one, two" in event.message
