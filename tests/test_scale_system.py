"""Scale end to end: desired states of 5, 20 and 50 MB built from valid
applies under 1 MiB run and are listed; an apply over a real limit is
refused and changes nothing; a planner restart on 50 MB is quick and adopts;
an agent survives a spoofed plan (plain mode)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from schemas.limits import MAX_ENTRY_BYTES
from schemas.messages import AgentPlan, ApplyRequest, Event, PlanRef, WorkloadState
from services.bus import Bus, paging
from services.cli.client import Client
from tests.helpers import Collector, wait_for
from tests.system import System, running_system
from tests.test_agent_shell import SLEEP, AgentProcess, planned, start_agent, up, wait_state

__all__ = ["start_agent"]  # a fixture used here

pytestmark = pytest.mark.slow

AGENTS = ["car1", "car2"]
FILE_BYTES = 900 * 1024


@pytest.fixture
def system(router: str, tmp_path: Path) -> Iterator[System]:
    with running_system(router, tmp_path) as s:
        s.planner()
        for agent in AGENTS:
            s.agent(agent)
        wait_for(lambda: s.ank("get", "state", timeout=20).returncode == 0, 40, "the planner answers")
        wait_for(
            lambda: all(f'"{a}"' in s.ank("get", "agents", "-o", "json").stdout for a in AGENTS), 40, "agents alive"
        )
        yield s


def _big_workload(name: str, agent: str, filler: str) -> str:
    return (
        f"apiVersion: v1\nworkloads:\n  {name}:\n    runtime: process\n    agent: {agent}\n"
        "    runtimeConfig: |\n      command: sleep\n      args: ['600']\n"
        f"    files:\n      - mountPoint: /data.txt\n        data: {filler}\n"
    )


def _all_running(client: Client, names: list[str]) -> bool:
    states = {s.workload: s.execution_state.state for s in client.state().workload_states}
    return all(states.get(n) == "Running" for n in names)


def test_desired_states_of_5_20_and_50_mb_run_are_listed_and_survive_a_planner_restart(
    system: System, router: str
) -> None:
    names: list[str] = []
    with Bus("scale-test", server=router) as bus:
        client = Client(bus, 30.0)
        for target_mb in (5, 20, 50):
            while len(names) * FILE_BYTES < target_mb * 1_000_000:
                name = f"big{len(names):03}"
                text = _big_workload(name, AGENTS[len(names) % 2], f"{name}-" + "z" * FILE_BYTES)
                assert len(text.encode()) < 1024 * 1024
                result = client.apply(ApplyRequest(manifest=text))
                assert result.ok, result.errors
                names.append(name)
            wait_for(lambda: _all_running(client, names), 120, f"{len(names)} workloads Running ({target_mb} MB)")
            listed = system.ank("get", "workloads", "-o", "json", timeout=60)
            assert listed.returncode == 0, listed.stderr
            rows = {r["name"]: r for r in json.loads(listed.stdout)}
            assert all(rows[n]["state"] == "Running" for n in names), f"not all listed Running at {target_mb} MB"
            desired = client.state().desired
            assert sum(len(w.files[0].data or "") for w in desired.workloads.values()) >= target_mb * 1_000_000

        # one over a real limit: refused at apply, naming it, and nothing changes
        big = "x" * (800 * 1024)
        over = (
            "apiVersion: v1\nworkloads:\n  huge:\n    runtime: process\n    agent: car1\n"
            "    configs: {big: bigcfg}\n    runtimeConfig: 'command: sleep'\n"
            '    files:\n      - mountPoint: /one\n        data: "{{big}}{{big}}{{big}}"\n'
            f'configs:\n  bigcfg: "{big}"\n'
        )
        refused = system.ank("apply", "-", input=over, timeout=60)
        assert refused.returncode != 0
        assert "huge" in refused.stdout + refused.stderr and str(MAX_ENTRY_BYTES) in refused.stdout + refused.stderr
        after = client.state()
        assert "huge" not in after.desired.workloads and "bigcfg" not in after.desired.configs
        assert len(after.desired.workloads) == len(names)

        # a planner restart on the 50 MB state: answers within seconds, and nothing restarts
        instances_before = {s.workload: s.instance for s in after.workload_states}
        system.kill("planner")
        t0 = time.monotonic()
        system.planner()
        wait_for(lambda: bool(paging.get_complete_state(bus, 2.0)), 60, "the restarted planner answers")
        restart_s = time.monotonic() - t0
        wait_for(lambda: _all_running(client, names), 60, "every workload Running after the planner restart")
        states = client.state().workload_states
        assert {s.workload: s.instance for s in states} == instances_before
        assert all(s.restart_count == 0 for s in states)
        assert restart_s < 30, f"planner restart on 50 MB took {restart_s:.1f} s"
        print(f"planner restart on {len(names) * FILE_BYTES / 1e6:.0f} MB answered after {restart_s:.1f} s")


def test_a_spoofed_plan_with_generation_2_62_is_reported_and_neither_drops_workloads_nor_mutes_the_planner(
    system: System, router: str
) -> None:
    out = system.ank("apply", "-", input=_big_workload("keeper", "car1", "small"), timeout=60)
    assert out.returncode == 0, out.stderr
    with Bus("attacker", server=router) as bus:
        events: Collector = Collector()
        bus.subscribe("ank/events/**", Event, events)
        lie = AgentPlan(agent="car1", generation=2**62, epoch=2**62, sender="planner", seq=2**62)
        bus.put("ank/plan/car1", msgspec.json.encode(lie))
        events.wait(
            lambda items: any(isinstance(e, Event) and e.kind == "implausible-plan" for _, e in items),
            20,
            "implausible-plan event",
        )
    rows = system.workloads()
    assert rows["keeper"]["state"] == "Running"
    second = system.ank("apply", "-", input=_big_workload("second", "car1", "small"), timeout=60)
    assert second.returncode == 0, second.stderr + second.stdout
    assert system.workloads()["second"]["state"] == "Running"
    assert system.workloads()["keeper"]["state"] == "Running"


def test_an_agent_resolves_a_plan_update_from_what_it_holds_and_asks_for_the_whole_plan_when_it_lacks_one_or_a_part(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    a, b, c = (planned(n, SLEEP, instance=f"i-{n}") for n in "abc")
    epoch = time.time_ns() // 1000
    bus.put(f"ank/plan/{agent.name}", AgentPlan(agent=agent.name, generation=epoch + 1, epoch=epoch, workloads=[a]))
    wait_state(states, "a", "Running(Ok)")
    # an update: a travels as a reference, c whole
    update = AgentPlan(
        agent=agent.name, generation=epoch + 2, epoch=epoch, workloads=[c], kept=[PlanRef("a", a.instance)]
    )
    queries: list[str] = []
    current = [AgentPlan(agent=agent.name, generation=epoch + 3, epoch=epoch, workloads=[a, b, c])]

    def answer(key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        queries.append(key)
        return [(key, bus.encode(part)) for part in paging.split_plan(current[0])]

    bus.queryable(f"ank/plan/{agent.name}", answer)
    bus.put(f"ank/plan/{agent.name}", update)
    wait_state(states, "c", "Running(Ok)")
    assert queries == []  # resolved from what the agent held
    # an update naming b, which the agent never got: it asks for the whole plan
    missed = msgspec.structs.replace(
        update, generation=epoch + 3, workloads=[], kept=[PlanRef(n, f"i-{n}") for n in "abc"]
    )
    bus.put(f"ank/plan/{agent.name}", missed)
    wait_state(states, "b", "Running(Ok)", timeout=20)
    assert queries == [f"ank/plan/{agent.name}"]
    # a plan in two parts whose second part is lost: the agent asks for the whole plan after a while
    d = planned("d", SLEEP, instance="i-d")
    current[0] = AgentPlan(agent=agent.name, generation=epoch + 4, epoch=epoch, workloads=[a, b, c, d])
    bus.put(f"ank/plan/{agent.name}", msgspec.structs.replace(current[0], workloads=[a, b], part=0, parts=2))
    wait_state(states, "d", "Running(Ok)", timeout=30)
    assert len(queries) == 2
    assert not [s for _, s in states.items if isinstance(s, WorkloadState) and s.execution_state.state == "Removed"]
