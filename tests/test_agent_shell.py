"""`ank-agent` as a real process on a real Zenoh router, driven by AgentPlans
published from the test (the planner's role)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from schemas.manifest import RestartPolicy, Workload
from schemas.messages import AgentPlan, AgentStatus, EnergyReport, HealthReport, PlannedWorkload, WorkloadState
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, stop_process, wait_for

_names = itertools.count()


class AgentProcess:
    """An ank-agent child process; its workloads are killed at the end."""

    def __init__(self, router: str, run_dir: Path, *extra: str) -> None:
        self.name = f"agent{os.getpid()}x{next(_names)}"
        self.router = router
        self.run_dir = run_dir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.workload_pids: set[int] = set()

    def start(self) -> None:
        argv = [sys.executable, "-m", "services.agent", "--name", self.name, "--run-dir", str(self.run_dir)]
        argv += ["--status-period", "0.3", "--backoff-initial", "0.05", "--stop-grace", "2", *self.extra]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(self.router))

    def records(self) -> dict[str, int]:
        """Workload → pid, from the agent's instance records."""
        out = {}
        for path in (self.run_dir / "records").glob("*.json"):
            try:
                pid = int(json.loads(path.read_text())["handle"]["record"]["pid"])
            except (OSError, ValueError, KeyError):
                continue
            out[path.stem] = pid
            self.workload_pids.add(pid)
        return out

    def pid(self, workload: str) -> int:
        return self.records()[workload]

    def kill9(self) -> None:
        assert self.proc is not None
        self.records()
        self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        self.records()
        if self.proc is not None:
            stop_process(self.proc)
        for pid in self.workload_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start_agent(router: str, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def factory(*extra: str, start: bool = True) -> AgentProcess:
        agent = AgentProcess(router, tmp_path / f"run{len(agents)}", *extra)
        if start:
            agent.start()
        agents.append(agent)
        return agent

    yield factory
    for agent in agents:
        agent.close()


def up(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess], *extra: str
) -> tuple[Bus, Collector, AgentProcess]:
    """A test bus collecting every WorkloadState, and an agent that is up."""
    bus = make_bus("test")
    states = Collector()
    bus.subscribe("ank/state/**", WorkloadState, states)
    agent = start_agent(*extra)
    wait_alive(bus, agent)
    return bus, states, agent


def planned(name: str, config: str, policy: RestartPolicy = "NEVER", instance: str = "i1") -> PlannedWorkload:
    return PlannedWorkload(name, instance, Workload(runtime="process", runtime_config=config, restart_policy=policy))


SLEEP = "command: /bin/sleep\nargs: ['60']\n"


def wait_alive(bus: Bus, agent: AgentProcess) -> None:
    wait_for(lambda: bus.alive(f"ank/agents/{agent.name}", timeout=0.5), 15, f"liveliness of {agent.name}")


def send_plan(bus: Bus, agent: AgentProcess, generation: int, *workloads: PlannedWorkload) -> None:
    bus.put(f"ank/plan/{agent.name}", AgentPlan(agent=agent.name, generation=generation, workloads=list(workloads)))


def states_of(collector: Collector, workload: str) -> Callable[[list[tuple[str, object]]], list[WorkloadState]]:
    def pick(items: list[tuple[str, object]]) -> list[WorkloadState]:
        return [m for _, m in items if isinstance(m, WorkloadState) and m.workload == workload]

    return pick


def wait_state(
    collector: Collector, workload: str, state: str, *, after: int = 0, timeout: float = 10
) -> WorkloadState:
    def found(items: list[tuple[str, object]]) -> WorkloadState | None:
        matches = [s for s in states_of(collector, workload)(items)[after:] if str(s.execution_state) == state]
        return matches[0] if matches else None

    result: WorkloadState = collector.wait(found, timeout, f"{workload} {state}")
    return result


def test_plan_makes_the_workload_run_and_its_state_is_published(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("sleeper", SLEEP))
    running = wait_state(states, "sleeper", "Running(Ok)")
    assert running.agent == agent.name and running.instance == "i1" and running.runtime == "process"
    seen = [str(s.execution_state) for s in states_of(states, "sleeper")(states.items)]
    assert seen[:2] == ["Pending(Starting)", "Running(Ok)"]
    # late joiner: a query returns the current state
    replies = bus.get_decoded(f"ank/state/{agent.name}/**", WorkloadState)
    assert [(r.workload, str(r.execution_state)) for r in replies] == [("sleeper", "Running(Ok)")]
    # delete: Stopping then Removed, the process is gone
    pid = agent.pid("sleeper")
    send_plan(bus, agent, 2)
    wait_state(states, "sleeper", "Removed")
    assert "Stopping(Stopping)" in [str(s.execution_state) for s in states_of(states, "sleeper")(states.items)]
    wait_for(lambda: not _alive(pid), 5, "the workload process to be gone")
    assert bus.get_decoded(f"ank/state/{agent.name}/**", WorkloadState) == []


def test_agent_asks_for_its_plan_at_start(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    """A plan published before the agent existed reaches it through its
    query of ank/plan/<agent> (which the planner answers)."""
    bus = make_bus("planner-stand-in")
    states = Collector()
    bus.subscribe("ank/state/**", WorkloadState, states)
    agent = start_agent(start=False)
    plan = AgentPlan(agent=agent.name, generation=1, workloads=[planned("q", "command: /bin/true\n")])
    bus.queryable(f"ank/plan/{agent.name}", lambda key, _p, _q: [(key, bus.encode(plan))])
    agent.start()
    done = wait_state(states, "q", "Succeeded(Ok)", timeout=15)
    assert done.exit_code == 0


def test_external_kill_of_an_always_workload_restarts_it(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("crashy", SLEEP, "ALWAYS"))
    wait_state(states, "crashy", "Running(Ok)")
    pid = agent.pid("crashy")
    os.kill(pid, signal.SIGKILL)
    failed = wait_state(states, "crashy", "Failed(ExecFailed)")
    assert failed.exit_code == -9
    n = len(states_of(states, "crashy")(states.items))
    again = wait_state(states, "crashy", "Running(Ok)", after=n - 1)
    assert again.restart_count == 1 and again.last_restart_ms
    new_pid = agent.pid("crashy")
    assert new_pid != pid and _alive(new_pid)


def test_agent_kill9_and_restart_adopts_the_running_process(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("keeper", SLEEP, "ALWAYS"))
    wait_state(states, "keeper", "Running(Ok)")
    pid = agent.pid("keeper")
    agent.kill9()
    assert _alive(pid)  # the workload outlives its agent
    n = len(states_of(states, "keeper")(states.items))
    agent.start()
    adopted = wait_state(states, "keeper", "Running(Ok)", after=n)  # republished on restart
    assert adopted.restart_count == 0
    wait_alive(bus, agent)
    send_plan(bus, agent, 1, planned("keeper", SLEEP, "ALWAYS"))  # the planner confirms the same instance
    # the process is the same and was never started again
    replies = bus.get_decoded(f"ank/state/{agent.name}/keeper", WorkloadState)
    assert [str(r.execution_state) for r in replies] == ["Running(Ok)"]
    assert agent.pid("keeper") == pid and _alive(pid)
    log_text = (agent.run_dir / "keeper.log").read_text()
    assert log_text.count("--- ank: starting") == 1
    # and it is watched again: an exit is noticed and ALWAYS restarts it
    os.kill(pid, signal.SIGKILL)
    unknown = wait_state(states, "keeper", "Failed(Unknown)")
    assert unknown.exit_code is None
    wait_state(states, "keeper", "Running(Ok)", after=len(states_of(states, "keeper")(states.items)) - 1)


def test_a_finished_workload_is_not_run_again_after_an_agent_restart(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    job = planned("job", "command: /bin/sh\nargs: ['-c', 'exit 0']\n", "NEVER")
    send_plan(bus, agent, 1, job)
    wait_state(states, "job", "Succeeded(Ok)")
    record = wait_for(
        lambda: (
            '"final":{' in (agent.run_dir / "records" / "job.json").read_text()
            and (agent.run_dir / "records" / "job.json").read_text()
        ),
        5,
        "the final state on disk",
    )
    assert '"Succeeded"' in record
    agent.kill9()
    n = len(states_of(states, "job")(states.items))
    agent.start()
    wait_alive(bus, agent)
    send_plan(bus, agent, 2, job)  # the planner re-sends the same plan
    replies = wait_for(lambda: bus.get_decoded(f"ank/state/{agent.name}/job", WorkloadState), 10, "job's state")
    assert [str(r.execution_state) for r in replies] == ["Succeeded(Ok)"]
    assert all(str(s.execution_state) != "Running(Ok)" for s in states_of(states, "job")(states.items)[n:])
    assert (agent.run_dir / "job.log").read_text().count("--- ank: starting") == 1


def test_status_and_simulated_energy_are_published(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus = make_bus("test")
    statuses = Collector()
    energy = Collector()
    states = Collector()
    bus.subscribe("ank/agents/*/status", AgentStatus, statuses)
    bus.subscribe("ank/energy/*", EnergyReport, energy)
    bus.subscribe("ank/state/**", WorkloadState, states)
    agent = start_agent("--tag", "arch=robot", "--battery-wh", "50", "--battery-capacity-wh", "100")
    wait_alive(bus, agent)
    send_plan(bus, agent, 1, planned("busy", SLEEP))
    wait_state(states, "busy", "Running(Ok)")

    def status_with_workload(items: list[tuple[str, object]]) -> AgentStatus | None:
        for _, m in items:
            if isinstance(m, AgentStatus) and m.agent == agent.name and "busy" in m.workloads:
                return m
        return None

    status: AgentStatus = statuses.wait(status_with_workload, 10, "a status listing the workload")
    assert status.tags == {"arch": "robot"} and "process" in status.runtimes
    assert status.total_memory_bytes > 0 and status.arch
    assert (status.workloads["busy"].memory_bytes or 0) > 0
    report: EnergyReport = energy.wait(
        lambda items: next((m for _, m in items if isinstance(m, EnergyReport) and m.node == agent.name), None),
        10,
        "an energy report",
    )
    assert report.source == "sim" and 0 < report.energy_wh <= 50 and report.capacity_wh == 100


def test_unhealthy_verdict_restarts_an_on_failure_workload(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("sick", SLEEP, "ON_FAILURE"))
    wait_state(states, "sick", "Running(Ok)")
    verdict = HealthReport(workload="sick", agent=agent.name, status="unhealthy", last_error="probe timed out")
    bus.put(f"ank/health/{agent.name}/sick", verdict)
    failed = wait_state(states, "sick", "Failed(ExecFailed)")
    assert failed.execution_state.additional_info == "unhealthy: probe timed out" and failed.health == "unhealthy"
    n = len(states_of(states, "sick")(states.items))
    again = wait_state(states, "sick", "Running(Ok)", after=n - 1)
    assert again.restart_count == 1 and again.health == ""


def test_garbage_on_the_plan_key_changes_nothing(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    bus.put(f"ank/plan/{agent.name}", b"\x00not json")
    bus.put(f"ank/plan/{agent.name}", msgspec.json.encode({"agent": agent.name, "generation": "x"}))
    bus.put(f"ank/health/{agent.name}/w", b"{}")
    unknown_runtime = PlannedWorkload("u", "i1", Workload(runtime="containerd", runtime_config="image: x"))
    send_plan(bus, agent, 1, planned("w", "command: /no/such/program\n"), unknown_runtime)
    failed = wait_state(states, "w", "Pending(StartingFailed)")
    assert "No such file or directory" in failed.execution_state.additional_info
    no_runtime = wait_state(states, "u", "Pending(StartingFailed)")
    assert "'containerd' is not available" in no_runtime.execution_state.additional_info
    assert agent.proc is not None and agent.proc.poll() is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_sigterm_leaves_workloads_running(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("stays", SLEEP))
    wait_state(states, "stays", "Running(Ok)")
    pid = agent.pid("stays")
    assert agent.proc is not None
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert _alive(pid)


def test_update_replaces_the_process_with_the_new_instance(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent)
    send_plan(bus, agent, 1, planned("svc", SLEEP, "ALWAYS", instance="v1"))
    wait_state(states, "svc", "Running(Ok)")
    old_pid = agent.pid("svc")
    send_plan(bus, agent, 2, planned("svc", "command: /bin/sleep\nargs: ['61']\n", "ALWAYS", instance="v2"))

    def running_v2(items: list[tuple[str, object]]) -> WorkloadState | None:
        return next(
            (s for s in states_of(states, "svc")(items) if s.instance == "v2" and s.execution_state.state == "Running"),
            None,
        )

    new = states.wait(running_v2, 10, "svc v2 running")
    assert new.restart_count == 0
    wait_for(lambda: not _alive(old_pid), 5, "the old process to be gone")
    assert agent.pid("svc") != old_pid
    seen = [(s.instance, str(s.execution_state)) for s in states_of(states, "svc")(states.items)]
    assert ("v1", "Stopping(Stopping)") in seen
    assert seen.index(("v1", "Stopping(Stopping)")) < seen.index(("v2", "Pending(Starting)"))


def test_unreadable_zenoh_config_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.agent", "--name", "x", "--zenoh-config", str(tmp_path / "missing.json5")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "missing.json5" in result.stderr


def test_bad_flags_are_rejected_naming_the_flag(tmp_path: Path) -> None:
    for argv, named in ((["--name", "a b"], "--name"), (["--name", "x", "--tag", "novalue"], "--tag")):
        result = subprocess.run(
            [sys.executable, "-m", "services.agent", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and named in result.stderr, result.stderr


def test_stop_workloads_on_exit_leaves_nothing_running(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    bus, states, agent = up(make_bus, start_agent, "--stop-workloads-on-exit")
    ignores_term = "command: /bin/sh\nargs: ['-c', 'trap \"\" TERM; sleep 60 & wait']\n"
    send_plan(bus, agent, 1, planned("a", SLEEP), planned("b", ignores_term))
    wait_state(states, "a", "Running(Ok)")
    wait_state(states, "b", "Running(Ok)")
    pids = [agent.pid("a"), agent.pid("b")]
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0  # --stop-grace 2 in these tests, then SIGKILL
    assert not any(_alive(pid) for pid in pids)
    assert agent.records() == {}
