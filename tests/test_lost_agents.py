"""Lost agents end to end: the planner and agents as real processes on a real
router (loopback), workloads applied with `ank apply`.

An agent killed with SIGKILL, or frozen with SIGSTOP, loses its liveliness
token (at once for a kill: the router sees the connection close; after the
1 s lease for a frozen process); the planner then publishes its workloads
as AgentDisconnected. The tests measure the time from the signal to that
state arriving on a subscriber of `ank/state/**`, and assert at most 2 s.
When the agent comes back (a new agent process after the kill, SIGCONT
after the freeze) the states must reconcile to Running(Ok) with nothing
restarted or duplicated: each workload is still exactly one process (found
by a unique marker argument on its command line) with the same pid, and
restartCount 0.

One planner serves the module; each test starts its own agent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.messages import WorkloadState
from services.bus import Bus
from tests.helpers import wait_for
from tests.system import System, running_system
from tests.test_health_e2e import (
    Arrivals,
    ServiceExited,
    apply_workloads,
    check_services,
    diagnosable,
    marked_pids,
    process_workload,
)

pytestmark = pytest.mark.slow

DISCONNECTED_WITHIN_S = 2.0
RECONCILED_WITHIN_S = 5.0
AGENT_OPTIONS = ("--stop-workloads-on-exit", "--stop-grace", "3")


class Cluster:
    def __init__(self, system: System, bus: Bus) -> None:
        self.system = system
        self.bus = bus
        self.states = Arrivals(bus, "ank/state/**", WorkloadState)

    def start_agent(self, agent: str) -> None:
        self.system.agent(agent, *AGENT_OPTIONS)
        wait_for(lambda: self.bus.alive(f"ank/agents/{agent}", timeout=0.5), 30, f"agent {agent} alive")


@pytest.fixture(scope="module")
def cluster(router: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base: Path = tmp_path_factory.mktemp("lost-agents")
    with running_system(router, base) as system, Bus(f"lost-agents-{uuid.uuid4().hex[:6]}", server=router) as bus:
        diagnosable(system).planner()
        wait_for(lambda: system.ank("get", "state").returncode == 0, 30, "the planner answers")
        yield Cluster(system, bus)


class Node:
    """One agent with two sleeping workloads, each marked on its command line."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.cluster = cluster
        self.agent = f"{prefix}{suffix}"
        self.workloads = [f"{prefix}-a-{suffix}", f"{prefix}-b-{suffix}"]
        self.markers = {name: f"marker-{name}" for name in self.workloads}

    @property
    def process(self) -> str:
        return f"agent-{self.agent}"

    def start(self) -> None:
        self.cluster.start_agent(self.agent)
        sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
        apply_workloads(
            self.cluster.system,
            {name: process_workload(self.agent, [*sleeper, self.markers[name]], "ALWAYS") for name in self.workloads},
        )

    def pids(self) -> dict[str, list[int]]:
        return {name: marked_pids(marker) for name, marker in self.markers.items()}

    def rows(self) -> dict[str, dict[str, object]]:
        rows = self.cluster.system.workloads()
        return {name: rows[name] for name in self.workloads if name in rows}

    def all_running(self) -> bool:
        check_services(self.cluster.system)
        rows = self.rows()
        return len(rows) == len(self.workloads) and all(
            (r["state"], r["substate"]) == ("Running", "Ok") for r in rows.values()
        )

    def steady_pids(self) -> dict[str, int]:
        """Once both workloads run, as one process each: their pids."""
        wait_for(self.all_running, 30, f"{self.workloads} Running(Ok)")

        def one_each() -> dict[str, int]:
            found = self.pids()
            return {name: pids[0] for name, pids in found.items()} if all(len(p) == 1 for p in found.values()) else {}

        return wait_for(one_each, 10, "one process each")

    def disconnected_after(self, since: float) -> float:
        """Seconds from `since` until both workloads' AgentDisconnected states arrived."""
        observer = self.cluster.states

        def arrivals() -> dict[str, float] | None:
            seen = {
                a.message.workload: a.at
                for a in observer.all()
                if a.at >= since
                and a.message.workload in self.workloads
                and a.message.execution_state.state == "AgentDisconnected"
            }
            return seen if len(seen) == len(self.workloads) else None

        seen: dict[str, float] = observer.wait(arrivals, 10, f"AgentDisconnected of {self.workloads}")
        return max(seen.values()) - since

    def reconcile_time(self, what: str) -> float:
        """Seconds until the planner shows both workloads Running(Ok) again
        (at most RECONCILED_WITHIN_S)."""
        back = time.monotonic()
        try:
            wait_for(self.all_running, RECONCILED_WITHIN_S, f"{self.workloads} Running(Ok) after {what}")
        except ServiceExited:
            raise
        except AssertionError as exc:
            rows = {name: f"{row['state']}({row['substate']})" for name, row in self.rows().items()}
            raise AssertionError(f"{exc}; the planner shows {rows}") from None
        return time.monotonic() - back

    def assert_untouched(self, pids: dict[str, int], what: str) -> None:
        """Nothing restarted or duplicated: one process each, the same pids, restartCount 0."""
        assert self.pids() == {name: [pid] for name, pid in pids.items()}, f"processes changed after {what}"
        assert {name: row["restartCount"] for name, row in self.rows().items()} == dict.fromkeys(self.workloads, 0)

    def delete(self) -> None:
        self.cluster.system.ank("delete", "workload", *self.workloads, "--timeout", "15")


def test_kill_9_of_an_agent_disconnects_its_workloads_within_2s_and_a_new_agent_adopts_them(
    cluster: Cluster,
) -> None:
    node = Node(cluster, "killed")
    node.start()
    try:
        pids = node.steady_pids()

        since = time.monotonic()
        cluster.system.kill(node.process)  # SIGKILL
        took = node.disconnected_after(since)
        print(f"kill -9: AgentDisconnected after {took:.3f}s")
        assert took <= DISCONNECTED_WITHIN_S, f"AgentDisconnected after {took:.3f}s"
        assert node.pids() == {name: [pid] for name, pid in pids.items()}, "the workloads kept running"

        cluster.start_agent(node.agent)  # the same name and run dir: it adopts what runs
        took = node.reconcile_time("the agent's restart")
        node.assert_untouched(pids, "the agent's restart")
        print(f"agent restarted: states reconciled after {took:.3f}s")
    finally:
        node.delete()


def freeze(node: Node, agent_pid: int) -> float:
    """SIGSTOPs the node's agent; returns how long until its workloads were AgentDisconnected."""
    since = time.monotonic()
    os.kill(agent_pid, signal.SIGSTOP)
    return node.disconnected_after(since)


def resume(cluster: Cluster, node: Node, agent_pid: int) -> None:
    """SIGCONTs the node's agent and waits until its liveliness token is back."""
    os.kill(agent_pid, signal.SIGCONT)
    wait_for(lambda: cluster.bus.alive(f"ank/agents/{node.agent}", timeout=0.5), 10, f"agent {node.agent} back")


def test_a_frozen_agent_disconnects_its_workloads_within_2s_and_reconciles_when_it_resumes(cluster: Cluster) -> None:
    node = Node(cluster, "frozen")
    node.start()
    agent_pid = cluster.system.procs[node.process].pid
    try:
        pids = node.steady_pids()
        took = freeze(node, agent_pid)
        print(f"SIGSTOP: AgentDisconnected after {took:.3f}s")
        assert took <= DISCONNECTED_WITHIN_S, f"AgentDisconnected after {took:.3f}s"
        assert node.pids() == {name: [pid] for name, pid in pids.items()}, "the workloads kept running"

        resume(cluster, node, agent_pid)
        took = node.reconcile_time("SIGCONT")
        node.assert_untouched(pids, "SIGCONT")
        assert cluster.system.procs[node.process].poll() is None
        print(f"SIGCONT: states reconciled after {took:.3f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent_pid, signal.SIGCONT)  # never leave a frozen agent behind
        node.delete()
