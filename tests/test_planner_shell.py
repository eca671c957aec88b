"""`ank-planner` as a real process on a real Zenoh router (loopback), driven
through the bus as the CLI and agents drive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from schemas import (
    AgentPlan,
    ApplyRequest,
    ApplyResult,
    Binding,
    CompleteState,
    DeleteRequest,
    Event,
    ExecutionState,
    Manifest,
    Workload,
    WorkloadState,
)
from services.bus import Bus
from services.bus.loop import EventLoop
from services.planner import core
from services.planner.shell import Planner
from tests.helpers import ROOT, Collector, child_env, stop_process, wait_for
from tests.planner_steps import without_reply

MakeBus = Callable[[str], Bus]


def manifest(**workloads: Workload) -> str:
    return msgspec.json.encode(Manifest(api_version="v1", workloads=workloads)).decode()


def wl(agent: str = "a1", deps: dict[str, str] | None = None, arg: str = "1") -> Workload:
    return Workload(
        runtime="process",
        runtime_config=f"command: sleep\nargs: ['{arg}']\n",
        agent=agent,
        dependencies=deps or {},  # type: ignore[arg-type]
    )


class PlannerProcess:
    """An ank-planner child process with its own state dir."""

    def __init__(self, endpoint: str, state_dir: Path) -> None:
        self.endpoint = endpoint
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, client: Bus) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.planner", "--state-dir", str(self.state_dir)],
            cwd=ROOT,
            env=child_env(self.endpoint),
        )
        wait_for(lambda: self._answers(client), timeout=20, what="the planner to answer ank/cmd/state")

    def _answers(self, client: Bus) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the planner exited"
        return bool(client.get("ank/cmd/state", timeout=0.5))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def planner(router: str, tmp_path: Path) -> Iterator[PlannerProcess]:
    process = PlannerProcess(router, tmp_path / "planner")
    try:
        yield process
    finally:
        process.stop()


def apply(client: Bus, text: str, **extra: object) -> ApplyResult:
    payload = msgspec.json.encode(ApplyRequest(manifest=text, **extra))  # type: ignore[arg-type]
    replies = client.get("ank/cmd/apply", payload=payload, timeout=10)
    assert len(replies) == 1, replies
    return msgspec.json.decode(replies[0][1], type=ApplyResult)


def complete_state(client: Bus) -> CompleteState:
    [(_, data)] = client.get("ank/cmd/state", timeout=5)
    return msgspec.json.decode(data, type=CompleteState)


def plan_of(client: Bus, agent: str) -> AgentPlan:
    [(key, data)] = client.get(f"ank/plan/{agent}", timeout=5)
    assert key == f"ank/plan/{agent}"
    return msgspec.json.decode(data, type=AgentPlan)


def content(plan: AgentPlan) -> tuple[str, int, object]:
    """A plan without its envelope (each put is stamped anew)."""
    return plan.agent, plan.generation, plan.workloads


def latest_plan(items: list[tuple[str, object]]) -> AgentPlan | None:
    plans = [m for _, m in items if isinstance(m, AgentPlan)]
    return max(plans, key=lambda p: p.generation) if plans else None


def test_apply_by_query_is_acknowledged_and_publishes_the_plan(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client = make_bus("cli")
    plans = Collector()
    client.subscribe("ank/plan/a1", AgentPlan, plans)
    planner.start(client)
    result = apply(client, manifest(web=wl(), db=wl()))
    assert result.ok and result.added == ["db", "web"]
    plan = plans.wait(lambda items: latest_plan(items) if len(items) else None, timeout=5, what="a plan for a1")
    assert sorted(w.name for w in plan.workloads) == ["db", "web"]
    assert all(w.hold == "" for w in plan.workloads)
    assert content(plan_of(client, "a1")) == content(plan)
    result = apply(client, manifest(web=wl()), delete=True)
    assert result.deleted == ["web"]
    assert [w.name for w in plan_of(client, "a1").workloads] == ["db"]
    [(_, data)] = client.get("ank/cmd/delete", payload=msgspec.json.encode(DeleteRequest(workloads=["db"])), timeout=5)
    assert msgspec.json.decode(data, type=ApplyResult).deleted == ["db"]
    assert plan_of(client, "a1").workloads == []


def test_garbage_changes_nothing_and_is_answered_or_reported(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client = make_bus("cli")
    events = Collector()
    client.subscribe("ank/events/rejected", Event, events)
    planner.start(client)
    assert apply(client, manifest(web=wl())).ok
    before = complete_state(client).desired

    client.put("ank/desired", b"apiVersion: v1\nworkloads: {bad name!: {runtime: process}}")
    event = events.wait(lambda items: items[0][1] if items else None, timeout=5, what="a rejection event")
    assert isinstance(event, Event) and event.subject == "ank/desired" and "bad name!" in event.message

    for payload in (b"", b"\xff", b"[1,2", b'{"manifest": 3}'):
        [(_, data)] = client.get("ank/cmd/apply", payload=payload, timeout=5)
        answer = msgspec.json.decode(data, type=ApplyResult)
        assert not answer.ok and "invalid ApplyRequest" in answer.errors[0].message
    assert not apply(client, "apiVersion: v1\nworkloads: {x: {runtime: 3}}").ok
    assert complete_state(client).desired == before
    assert planner.proc is not None and planner.proc.poll() is None


def test_desired_put_is_applied(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client = make_bus("middleware")
    planner.start(client)
    client.put("ank/desired", manifest(web=wl()).encode())
    wait_for(lambda: "web" in complete_state(client).desired.workloads, timeout=5, what="web desired")


def test_kill9_and_restart_keeps_desired_state_and_plans(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client = make_bus("cli")
    planner.start(client)
    assert apply(client, manifest(web=wl(), app=wl(deps={"web": "ADD_COND_RUNNING"}))).ok
    before = plan_of(client, "a1")
    planner.kill9()
    plans = Collector()
    client.subscribe("ank/plan/a1", AgentPlan, plans)
    planner.start(client)
    assert sorted(complete_state(client).desired.workloads) == ["app", "web"]
    after = plans.wait(latest_plan, timeout=5, what="the plan republished after the restart")
    assert after.workloads == before.workloads, "same instances and holds: nothing restarts"
    assert after.generation > before.generation
    assert content(plan_of(client, "a1")) == content(after)


def _agent_state(plan: AgentPlan, name: str, es: ExecutionState) -> WorkloadState:
    [planned] = [w for w in plan.workloads if w.name == name]
    return WorkloadState(workload=name, agent=plan.agent, execution_state=es, instance=planned.instance)


def test_fake_agent_states_release_dependents(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client, agent = make_bus("cli"), make_bus("agent-a1")
    agent.liveliness_token("ank/agents/a1")
    plans = Collector()
    agent.subscribe("ank/plan/a1", AgentPlan, plans)
    planner.start(client)
    assert apply(client, manifest(db=wl(), app=wl(deps={"db": "ADD_COND_RUNNING"}))).ok

    def planned(items: list[tuple[str, object]]) -> AgentPlan | None:
        p = latest_plan(items)
        return p if p and p.workloads else None

    plan = plans.wait(planned, timeout=5, what="the first plan with workloads")
    assert {w.name: w.hold for w in plan.workloads} == {"app": "WaitingToStart", "db": ""}
    agent.put("ank/state/a1/db", _agent_state(plan, "db", ExecutionState("Running", "Ok")))

    def released(items: list[tuple[str, object]]) -> AgentPlan | None:
        p = latest_plan(items)
        return p if p and all(w.hold == "" for w in p.workloads) else None

    plans.wait(released, timeout=5, what="app released once db runs")
    states = complete_state(client)
    known = {(s.agent, s.workload, str(s.execution_state)) for s in states.workload_states}
    assert ("a1", "db", "Running(Ok)") in known
    assert states.agents == ["a1"]


_AGENT_SCRIPT = """
import sys, time
from services.bus import Bus
from services.bus.loop import EventLoop
from services.planner import core
from services.planner.shell import Planner
bus = Bus("agent-lost")
bus.liveliness_token("ank/agents/lost")
print("up", flush=True)
try:
    time.sleep(60)
finally:
    bus.close()
"""


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_lost_agent_workloads_become_agent_disconnected_within_2s(
    planner: PlannerProcess, make_bus: MakeBus, router: str, how: str
) -> None:
    client = make_bus("cli")
    planner.start(client)
    assert apply(client, manifest(w1=wl("lost"), w2=wl("lost"))).ok
    states = Collector()
    client.subscribe("ank/state/lost/*", WorkloadState, states)
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT_SCRIPT], cwd=ROOT, env=child_env(router), stdout=subprocess.PIPE
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"up\n"
        wait_for(lambda: complete_state(client).agents == ["lost"], timeout=5, what="the agent to be seen")
        lost_at = time.monotonic()
        if how == "kill":
            agent.kill()
        else:
            os.kill(agent.pid, signal.SIGSTOP)

        def disconnected(items: list[tuple[str, object]]) -> set[str]:
            received = [m for _, m in items if isinstance(m, WorkloadState)]
            names = {m.workload for m in received}
            gone = {m.workload for m in received if m.execution_state.state == "AgentDisconnected"}
            return gone if gone == names == {"w1", "w2"} else set()

        states.wait(disconnected, timeout=5, what="AgentDisconnected for w1 and w2")
        assert time.monotonic() - lost_at < 2.0
        owned = client.get("ank/state/lost/**", timeout=2)
        assert sorted(k for k, _ in owned) == ["ank/state/lost/w1", "ank/state/lost/w2"]
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
        agent.wait(5)


def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path, router: str) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "services.planner", "--zenoh-config", str(tmp_path / "nope.json5")],
        cwd=ROOT,
        env=child_env(router),
        capture_output=True,
        timeout=30,
    )
    assert missing.returncode == 2 and b"nope.json5" in missing.stderr
    bad = tmp_path / "bad.json5"
    bad.write_text("{mode: ")
    broken = subprocess.run(
        [sys.executable, "-m", "services.planner", "--zenoh-config", str(bad), "--state-dir", str(tmp_path / "s")],
        cwd=ROOT,
        env=child_env(router),
        capture_output=True,
        timeout=30,
    )
    assert broken.returncode == 2 and b"bad.json5" in broken.stderr
    state_file = tmp_path / "s2" / "desired.json"
    state_file.parent.mkdir()
    state_file.write_text("{not json")
    corrupt = subprocess.run(
        [sys.executable, "-m", "services.planner", "--state-dir", str(state_file.parent)],
        cwd=ROOT,
        env=child_env(router),
        capture_output=True,
        timeout=30,
    )
    assert corrupt.returncode == 2 and b"corrupt" in corrupt.stderr


def test_a_change_that_cannot_be_persisted_is_neither_acknowledged_nor_applied(
    make_bus: MakeBus, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    planner = Planner(make_bus("planner-in-test"), EventLoop(), not_a_dir / "state", None)
    step = core.step(planner.state, ApplyRequest(manifest=manifest(web=wl())), 1_700_000_000_000)
    assert without_reply(step)[1].ok
    answer = planner.acknowledge(step)
    assert not answer.ok and "cannot write" in answer.errors[0].message
    assert planner.state.durable.desired.workloads == {}


def test_restarted_planner_catches_up_on_states_agents_answer(planner: PlannerProcess, make_bus: MakeBus) -> None:
    client, agent = make_bus("cli"), make_bus("agent-a1")
    planner.start(client)
    assert apply(client, manifest(db=wl(), app=wl(deps={"db": "ADD_COND_RUNNING"}))).ok
    plan = plan_of(client, "a1")
    planner.kill9()
    # db started while the planner was down; the agent answers late joiners.
    agent.liveliness_token("ank/agents/a1")
    running = agent.encode(_agent_state(plan, "db", ExecutionState("Running", "Ok")))
    agent.queryable("ank/state/a1/**", lambda _key, _payload, _params: [("ank/state/a1/db", running)])
    planner.start(client)
    holds = {w.name: w.hold for w in plan_of(client, "a1").workloads}
    assert holds == {"app": "", "db": ""}


def test_unscheduled_workload_is_answered_on_tilde_and_placed_by_a_binding(
    planner: PlannerProcess, make_bus: MakeBus
) -> None:
    client, scheduler = make_bus("cli"), make_bus("scheduler")
    planner.start(client)
    assert apply(client, manifest(roam=wl(agent=""))).ok
    [(key, data)] = client.get("ank/state/~/**", timeout=5)
    state = msgspec.json.decode(data, type=WorkloadState)
    assert key == "ank/state/~/roam" and str(state.execution_state) == "NotScheduled" and state.agent == ""
    scheduler.put("ank/bind/roam", Binding(workload="roam", agent="a1", policy="MALE", reason="most energy"))
    wait_for(lambda: [w.name for w in plan_of(client, "a1").workloads] == ["roam"], timeout=5, what="roam planned")
    assert client.get("ank/state/~/**", timeout=2) == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("since=1700000000000", 1_700_000_000_000),
        ("x=1;since=5", 5),
        ("since=abc", None),
        ("since=-5", None),
        ("since=", None),
        ("since=12345678901234567", None),  # longer than any wall clock in ms
        ("since=1*", None),
        ("", None),
    ],
)
def test_a_state_query_since_parameter_is_read_or_ignored_never_an_error(params: str, expected: int | None) -> None:
    from services.planner.shell import _since_param

    assert _since_param(params) == expected
