"""kill -9 of every service and of the router, in turn, while the police
system (manifests/police.yaml) runs: nothing is lost or duplicated.

The police programs run as process workloads of one agent (their fixed
ports replaced by free ones). Each round kills, with SIGKILL, the planner,
the agent, the health-watcher, the scheduler and the router, one at a time,
and starts it again. After each kill:

- every police workload is one process (one process-group leader carrying
  the workload's ANK_WORKLOAD), the same pid as before the kill: nothing
  lost, nothing duplicated, nothing restarted (restartCount unchanged);
- the planner's states are all Running(Ok) again within 3 s of the killed
  process being back (measured: printed, and the worst case asserted);
- a restarted planner still holds the whole desired state.

20 rounds under ANK_FAULTS=1, 2 in the default run.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.manifest import Manifest
from schemas.messages import WorkloadState
from tests.helpers import ROOT, free_port, wait_for
from tests.test_faults_stack import Stack, running_stack, scaled, unique, workload_processes

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ROUNDS = scaled(20, 2)
CONVERGE_S = 3.0
POLICE = ROOT / "manifests" / "police.yaml"


def police_manifest() -> tuple[str, list[str]]:
    """police.yaml with free ports instead of its fixed ones, and its workload names."""
    text = POLICE.read_text()
    text = text.replace("tcp/127.0.0.1:7448", f"tcp/127.0.0.1:{free_port()}")
    text = re.sub(r'"--port", "808[12]"', lambda _m: f'"--port", "{free_port()}"', text)
    names = re.findall(r"^  ([a-z][a-z0-9-]*):\s*$", text, flags=re.MULTILINE)
    return text, names


class Police:
    def __init__(self, stack: Stack, agent: str, names: list[str]) -> None:
        self.stack = stack
        self.agent = agent
        self.names = names
        self.desired: Manifest | None = None
        self.times: dict[str, list[float]] = {}

    def processes(self) -> dict[str, list[int]]:
        return {n: p for n, p in workload_processes(self.agent).items() if n in self.names}

    def steady(self) -> tuple[dict[str, list[int]], dict[str, WorkloadState]] | None:
        """(pids, states) when every workload is Running(Ok) with exactly one process."""
        latest = self.stack.all_running(self.names, timeout=1.0)
        if not latest:
            return None
        pids = self.processes()
        if sorted(pids) != sorted(self.names) or any(len(p) != 1 for p in pids.values()):
            return None
        return pids, latest

    def converge(self, what: str, pids: dict[str, list[int]], restarts: dict[str, int], back: float) -> float:
        """Seconds from `back` until the states are Running(Ok) again with the same processes."""

        def done() -> bool:
            found = self.steady()
            if found is None:
                return False
            now_pids, latest = found
            assert now_pids == pids, f"after {what}: processes changed: {pids} -> {now_pids}"
            now_restarts = {n: latest[n].restart_count for n in self.names}
            assert now_restarts == restarts, f"after {what}: restart counts changed: {restarts} -> {now_restarts}"
            return True

        self.stack.wait(done, 10, f"states converged after {what}")
        took = time.monotonic() - back
        self.times.setdefault(what, []).append(took)
        return took


@pytest.fixture
def police(tmp_path: Path) -> Iterator[Police]:
    with running_stack(tmp_path) as stack:
        agent = unique("vehicle")
        stack.start_planner()
        text, names = police_manifest()
        assert len(names) == 6, names
        # the plan is waiting before the agent starts: see docs/reliability.md, open problem 1
        result = stack.apply(text, agent=agent)
        assert result.ok, result.errors
        stack.start_agent(agent)
        stack.start_health_watcher()
        stack.start_scheduler()
        system = Police(stack, agent, names)
        stack.wait(system.steady, 60, "the police system Running")
        complete = stack.state()
        assert complete is not None
        system.desired = complete.desired
        yield system


def _restart(stack: Stack, target: str, agent: str) -> Callable[[], float]:
    """Kills `target` with SIGKILL and returns how to start it again (which
    returns the monotonic time at which it is back)."""
    if target == "router":
        stack.router.kill()

        def back() -> float:
            stack.router.start()
            return time.monotonic()

        return back
    name = f"agent-{agent}" if target == "agent" else target
    stack.system.kill(name)

    def start() -> float:
        if target == "planner":
            stack.system.planner()
            stack.wait_planner()
        elif target == "agent":
            stack.start_agent(agent)
        elif target == "health-watcher":
            stack.start_health_watcher()
        else:
            stack.start_scheduler()
        return time.monotonic()

    return start


SERVICES = ["planner", "agent", "health-watcher", "scheduler"]


def kill_rounds(police: Police, targets: list[str], rounds: int) -> None:
    """Kills each target in turn, `rounds` times, checking after each kill."""
    stack = police.stack
    for round_ in range(rounds):
        for target in targets:
            found = police.steady()
            assert found is not None, f"round {round_}: not steady before killing {target}"
            pids, latest = found
            restarts = {n: latest[n].restart_count for n in police.names}
            start_again = _restart(stack, target, police.agent)
            if target == "agent":
                # the planner notices the lost agent; its workloads keep running meanwhile
                wait_for(
                    lambda: all(
                        str(ws.execution_state) == "AgentDisconnected" for ws in stack.latest_states(1.0).values()
                    ),
                    10,
                    "AgentDisconnected",
                )
                assert police.processes() == pids
            back = start_again()
            took = police.converge(target, pids, restarts, back)
            assert took <= CONVERGE_S, f"round {round_}: states took {took:.2f}s to converge after {target} came back"
            if target == "planner":
                complete = stack.state()
                assert complete is not None and complete.desired == police.desired, "the planner lost desired state"
    for target, times in police.times.items():
        print(
            f"{target}: {len(times)} kills, converged after median {statistics.median(times):.2f}s,"
            f" max {max(times):.2f}s"
        )
    for name in ("planner", "health-watcher", "scheduler", f"agent-{police.agent}"):
        assert stack.alive(name), f"{name} died"


def test_kill_9_of_each_service_in_turn_loses_duplicates_and_restarts_nothing(police: Police) -> None:
    kill_rounds(police, SERVICES, ROUNDS)


def test_kill_9_of_the_router_loses_duplicates_and_restarts_no_workload(police: Police) -> None:
    """The workloads are untouched by router restarts, and every service
    reconnects (its liveliness or its answers come back)."""
    stack = police.stack
    found = police.steady()
    assert found is not None
    pids = found[0]
    for round_ in range(ROUNDS):
        stack.router.kill()
        stack.router.start()
        stack.wait(lambda: stack.bus.alive(f"ank/agents/{police.agent}", timeout=0.5), 10, "the agent reconnected")
        stack.wait_planner(10)
        assert police.processes() == pids, f"round {round_}: processes changed"
    for name in ("planner", "health-watcher", "scheduler", f"agent-{police.agent}"):
        assert stack.alive(name), f"{name} died"


def test_states_converge_within_3s_after_a_router_restart(police: Police) -> None:
    found = police.steady()
    assert found is not None
    pids, latest = found
    restarts = {n: latest[n].restart_count for n in police.names}
    back = _restart(police.stack, "router", police.agent)()
    took = police.converge("router", pids, restarts, back)
    print(f"router: states converged {took:.2f}s after the router was back")
    assert took <= CONVERGE_S
