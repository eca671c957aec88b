"""An agent's liveliness change costs the planner work proportional to that
agent's workloads: not a pass over the whole desired state, not a plan sent
to every agent. And it decides exactly what the full settling pass decides."""

from __future__ import annotations

import itertools
import random

import msgspec
import pytest

from schemas import ExecutionState, Manifest, Workload, WorkloadState
from schemas.liveliness import AgentLiveliness
from services.planner import core
from tests.planner_steps import delete_workloads

NOW = 1_700_000_000_000
_seq = itertools.count(1)
RUNNING = ExecutionState("Running", "Ok")


def wl(agent: str, deps: dict[str, str] | None = None) -> Workload:
    return Workload(
        runtime="process",
        runtime_config="command: sleep\nargs: ['1']\n",
        agent=agent,
        dependencies=deps or {},  # type: ignore[arg-type]
    )


def applied(state: core.PlannerState, workloads: dict[str, Workload]) -> core.PlannerState:
    text = msgspec.json.encode(Manifest(api_version="v1", workloads=workloads)).decode()
    step, result = core.apply_manifest(state, text, NOW)
    assert result.ok, result.errors
    return step.state


def _state(state: core.PlannerState, name: str, agent: str, es: ExecutionState) -> WorkloadState:
    return WorkloadState(
        workload=name,
        agent=agent,
        execution_state=es,
        instance=state.durable.instances.get(name, ""),
        sender=f"agent-{agent}",
        seq=next(_seq),
    )


def reported(state: core.PlannerState, name: str, agent: str, es: ExecutionState = RUNNING) -> core.PlannerState:
    return core.step(
        state, core.StatesObserved([(f"ank/state/{agent}/{name}", _state(state, name, agent, es))]), NOW
    ).state


def fleet(agents: int, per_agent: int) -> core.PlannerState:
    names = [f"a{i}" for i in range(agents)]
    state = core.step(core.PlannerState(), core.Started(agents=names), NOW).state
    workloads = {f"w{a}-{j}": wl(f"a{a}") for a in range(agents) for j in range(per_agent)}
    state = applied(state, workloads)
    for name, w in workloads.items():
        state = reported(state, name, w.agent or "")
    return state


def test_an_agent_flap_touches_only_that_agents_workloads_and_sends_only_its_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = fleet(agents=20, per_agent=50)  # 1,000 workloads, 50 on each agent
    calls = {"placed": 0}
    placed = core.placed_agent

    def counting(durable: core.Durable, name: str) -> str:
        calls["placed"] += 1
        return placed(durable, name)

    monkeypatch.setattr(core, "placed_agent", counting)
    lost = core.step(state, AgentLiveliness("a3", False), NOW + 1)
    back = core.step(lost.state, AgentLiveliness("a3", True), NOW + 2)
    # Old code: every flap placed every workload (derived states, plan entries, placed keys), > 2,000 each.
    assert calls["placed"] <= 4 * 50, calls
    assert [a.plan.agent for a in lost.actions if isinstance(a, core.PublishPlan)] == []
    [plan] = [a.plan for a in back.actions if isinstance(a, core.PublishPlan)]
    assert plan.agent == "a3" and len(plan.workloads) == 50
    published = {a.key for a in lost.actions if isinstance(a, core.PublishState)}
    assert published == {f"ank/state/a3/w3-{j}" for j in range(50)}
    assert all(ws.execution_state.state == "AgentDisconnected" for k, ws in lost.state.states.items() if k[:3] == "a3/")


def _comparable(step: core.Step) -> tuple[object, ...]:
    s = step.state
    publications = sorted(
        (a.key, a.state.execution_state.state) if isinstance(a, core.PublishState) else (a.plan.agent, "plan")
        for a in step.actions
        if isinstance(a, core.PublishState | core.PublishPlan)
    )
    plans = {a: (p.workloads, p.generation) for a, p in s.plans.items()}
    return (s.durable, s.alive, s.states, s.owned, s.departing, plans, publications)


def _full(state: core.PlannerState, agent: str, alive: bool, now: int) -> core.Step:
    """What the old code did: the full settling pass."""
    if not alive:
        lost = msgspec.structs.replace(state, alive=state.alive - {agent})
        return core._settle(state, lost, now, [])
    durable = state.durable
    if agent not in durable.agents_seen:
        durable = msgspec.structs.replace(durable, agents_seen=sorted([*durable.agents_seen, agent]))
    back = msgspec.structs.replace(state, alive=state.alive | {agent}, durable=durable)
    step = core._settle(state, back, now, [])
    if not any(isinstance(a, core.PublishPlan) and a.plan.agent == agent for a in step.actions):
        step.actions.append(core.PublishPlan(step.state.plans[agent]))
    return step


@pytest.mark.parametrize("seed", range(40))
def test_a_flap_decides_what_the_full_settling_pass_decides(seed: int) -> None:
    """Random flaps over dependencies across agents, retiring instances kept
    for their dependents and departing states, compared with the full pass."""
    rng = random.Random(seed)
    agents = ["a1", "a2", "a3", "a4"]
    state = core.step(core.PlannerState(), core.Started(agents=agents[:3]), NOW).state
    conditions = ["ADD_COND_RUNNING", "ADD_COND_SUCCEEDED", "ADD_COND_FAILED"]
    workloads: dict[str, Workload] = {}
    for i in range(14):
        deps = {f"w{j}": rng.choice(conditions) for j in range(i) if rng.random() < 0.25}
        workloads[f"w{i}"] = wl(rng.choice(agents), deps)
    state = applied(state, workloads)
    now = NOW
    for _ in range(40):
        now += 1
        roll = rng.random()
        if roll < 0.45:
            agent = rng.choice(agents)
            full = _full(state, agent, agent not in state.alive, now)
            step = core.step(state, AgentLiveliness(agent, agent not in state.alive), now)
            assert _comparable(step) == _comparable(full)
            state = step.state
        elif roll < 0.8:
            name = rng.choice(sorted(state.durable.rendered.workloads.keys() | {k.split("/")[1] for k in state.states}))
            agent = core.placed_agent(state.durable, name) if name in state.durable.rendered.workloads else ""
            agent = agent or rng.choice(agents)
            es = rng.choice([RUNNING, ExecutionState("Succeeded", "Ok"), ExecutionState("Failed", "ExecFailed")])
            if agent in state.alive:
                state = reported(state, name, agent, es)
            else:  # an agent taken for lost whose session still delivers
                item = (f"ank/state/{agent}/{name}", _state(state, name, agent, es))
                step = core.step(state, core.StatesObserved([item]), now)
                recorded = core._record_all(state, [item])[0]
                if recorded is not state:
                    assert _comparable(step) == _comparable(core._settle(state, recorded, now, []))
                state = step.state
        elif roll < 0.9:  # delete one (its dependents may keep it running: a retiring entry)
            name = rng.choice(sorted(state.durable.rendered.workloads))
            step, result = delete_workloads(state, [name], now)
            if result.ok:
                state = step.state
        else:  # move one to another agent (an update: delete-then-create)
            name = rng.choice(sorted(state.durable.desired.workloads))
            moved = msgspec.structs.replace(state.durable.desired.workloads[name], agent=rng.choice(agents))
            state = applied(state, {name: moved})
        placed = core._placed_keys(state.durable)
        assert state.departing == {k for k in state.states if k not in placed}
