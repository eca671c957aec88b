"""Health checks end to end: the planner, an agent and a health-watcher as real
processes on a real router (loopback), manifests applied with `ank apply`,
real workload processes probed by tcp and by Zenoh-key freshness.

One system serves the whole module (starting it costs seconds); each test
applies its own workload, under a name of its own, and deletes it at the
end. Every workload carries a unique marker argument so that its processes
can be counted (`marked_pids`). Checks run every 200 ms so that the tests
are quick; a start period of a few seconds, which a first success ends at
once, keeps a slow start on a loaded machine from counting as a failure
where the test is not about the start period.

States are read as they arrive on `ank/state/**` (`Arrivals`: every
publication, with its arrival time) and health verdicts on `ank/health/**`;
the end state is also read back with `ank get workloads -o json`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
import psutil
import pytest

from schemas.messages import HealthReport, WorkloadState
from services.bus import Bus
from tests.helpers import Collector, free_port, wait_for
from tests.system import System, running_system

pytestmark = pytest.mark.slow

# Listens on 127.0.0.1:PORT after DELAY seconds and accepts connections until
# the file TRIGGER appears; then it deletes the trigger (so that the next
# instance serves again), closes its listener and stays alive: a process
# that runs but no longer serves.
TCP_SERVER = """\
import os, socket, sys, time
port, trigger, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
time.sleep(delay)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(16)
listener.settimeout(0.05)
print("listening at", time.time(), flush=True)
while not os.path.exists(trigger):
    try:
        listener.accept()[0].close()
    except socket.timeout:
        pass
os.remove(trigger)
listener.close()
print("stopped listening", flush=True)
while True:
    time.sleep(3600)
"""

# Puts on KEY every 100 ms until the file TRIGGER appears; then deletes it and
# stays alive without publishing: a key that goes stale.
ZENOH_PUBLISHER = """\
import os, sys, time
from services.bus import Bus
key, trigger = sys.argv[1], sys.argv[2]
with Bus("beat-" + os.environ["ANK_WORKLOAD"]) as bus:
    while not os.path.exists(trigger):
        bus.put(key, b"beat")
        time.sleep(0.1)
    os.remove(trigger)
    print("stopped publishing", flush=True)
    while True:
        time.sleep(3600)
"""

FAST_CHECK = {"intervalMs": 200, "timeoutMs": 500, "retries": 2}


def marked_pids(marker: str) -> list[int]:
    """The live processes whose command line carries `marker`."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        info = proc.info
        if info["status"] != psutil.STATUS_ZOMBIE and marker in (info["cmdline"] or []):
            pids.append(proc.pid)
    return pids


def process_workload(agent: str, command: list[str], policy: str, **fields: Any) -> dict[str, Any]:
    """A manifest entry of a `process` workload running `command` on `agent`."""
    config = json.dumps({"command": command[0], "args": command[1:]})  # JSON is YAML
    return {"runtime": "process", "agent": agent, "restartPolicy": policy, "runtimeConfig": config, **fields}


def apply_workloads(system: System, workloads: dict[str, dict[str, Any]]) -> None:
    """`ank apply` of a manifest of these workloads (without waiting for them to settle)."""
    manifest = json.dumps({"apiVersion": "v1", "workloads": workloads})
    out = system.ank("apply", "--no-wait", "-", input=manifest)
    assert out.returncode == 0, out.stdout + out.stderr


def diagnosable(system: System) -> System:
    """`system`, its services set to print a traceback if they crash (SIGSEGV included)."""
    system.env["PYTHONFAULTHANDLER"] = "1"
    return system


class ServiceExited(AssertionError):
    """A service of the system under test is no longer running (crashed)."""


def check_services(system: System) -> None:
    """Fails at once, with the exit codes and the end of their logs, if any
    service of `system` is no longer running: waiting on would only time out."""
    exited = {name: proc.returncode for name, proc in system.procs.items() if proc.poll() is not None}
    if exited:
        tails = "".join(f"\n--- {name}.log:\n" + "\n".join(system.log(name).splitlines()[-15:]) for name in exited)
        raise ServiceExited(f"services exited: {exited}{tails}")


M = TypeVar("M", bound=msgspec.Struct)
T = TypeVar("T")


class Arrival(NamedTuple, Generic[M]):
    at: float  # time.monotonic() on arrival
    message: M


class Arrivals(Generic[M]):
    """Every message published on `key_expr`, decoded as `schema` (raw: no
    stale-dropping, so that every publication counts), with its arrival time."""

    def __init__(self, bus: Bus, key_expr: str, schema: type[M]) -> None:
        # Built here, on one thread: msgspec builds a type's decoding info on
        # first use, and two Zenoh threads doing that at once can crash.
        self._decoder = msgspec.json.Decoder(schema)
        self._collector = Collector()
        bus.subscribe_raw(key_expr, self._on_sample)

    def _on_sample(self, key: str, payload: bytes) -> None:
        at = time.monotonic()
        try:
            self._collector(key, Arrival(at, self._decoder.decode(payload)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # not ours to judge here: the services' own tests cover garbage

    def all(self) -> list[Arrival[M]]:
        return [arrival for _key, arrival in list(self._collector.items)]  # type: ignore[misc]

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """predicate()'s first truthy value, re-evaluated on each arrival; fails after `timeout`."""
        try:
            found = self._collector.wait(lambda _items: predicate(), timeout, what)
        except ServiceExited:
            raise
        except AssertionError:  # the Collector's message lists every message: too long to read
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
        assert found is not None
        return found


class HealthSystem:
    """The module's system, its observers and the workload programs."""

    def __init__(self, system: System, agent: str, programs: Path, bus: Bus) -> None:
        self.system = system
        self.agent = agent
        self.programs = programs
        self.states = Arrivals(bus, "ank/state/**", WorkloadState)
        self.reports = Arrivals(bus, "ank/health/**", HealthReport)

    def apply(self, name: str, policy: str, command: list[str], health_check: dict[str, Any]) -> None:
        workload = process_workload(self.agent, command, policy, healthCheck=health_check)
        apply_workloads(self.system, {name: workload})

    def delete(self, name: str) -> None:
        self.system.ank("delete", "workload", name, "--timeout", "15")

    def program(self, name: str, *args: object) -> list[str]:
        return [sys.executable, str(self.programs / name), *(str(a) for a in args)]

    def history(self, name: str) -> list[WorkloadState]:
        """Every state of `name` published so far, in arrival order."""
        return [a.message for a in self.states.all() if a.message.workload == name]

    def wait_state(
        self, name: str, what: str, predicate: Callable[[WorkloadState], bool], timeout: float = 15.0
    ) -> WorkloadState:
        def found() -> WorkloadState | None:
            check_services(self.system)
            return next((ws for ws in self.history(name) if predicate(ws)), None)

        try:
            return self.states.wait(found, timeout, f"{name}: {what}")
        except ServiceExited:
            raise
        except AssertionError as exc:
            seen = [(str(ws.execution_state), ws.restart_count, ws.health) for ws in self.history(name)]
            raise AssertionError(f"{exc}; states seen: {seen}") from None

    def reports_of(self, name: str) -> list[HealthReport]:
        return [a.message for a in self.reports.all() if a.message.workload == name]

    def row(self, name: str) -> dict[str, Any]:
        return self.system.workloads()[name]


@pytest.fixture(scope="module")
def health(router: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthSystem]:
    base = tmp_path_factory.mktemp("health-e2e")
    programs = base / "programs"
    programs.mkdir()
    (programs / "tcp_server.py").write_text(TCP_SERVER)
    (programs / "zenoh_publisher.py").write_text(ZENOH_PUBLISHER)
    agent = f"health{uuid.uuid4().hex[:6]}"
    with running_system(router, base) as system, Bus(f"health-e2e-{agent}", server=router) as bus:
        observed = HealthSystem(diagnosable(system), agent, programs, bus)
        system.planner()
        system.agent(agent, "--stop-workloads-on-exit", "--stop-grace", "3")
        system._start(
            "health-watcher",
            [sys.executable, "-m", "services.health_watcher", "--agent", agent, "--no-podman", "--refresh", "0.5"],
        )
        wait_for(lambda: bus.alive(f"ank/agents/{agent}", timeout=0.5), 30, f"agent {agent} alive")
        wait_for(lambda: system.ank("get", "state").returncode == 0, 30, "the planner answers")
        yield observed


def unique_name(prefix: str) -> tuple[str, str]:
    """A workload name and the marker argument of its process."""
    suffix = uuid.uuid4().hex[:6]
    return f"{prefix}-{suffix}", f"marker-{prefix}-{suffix}"


def is_running(restart_count: int, health: str) -> Callable[[WorkloadState], bool]:
    def check(ws: WorkloadState) -> bool:
        return str(ws.execution_state) == "Running(Ok)" and ws.restart_count == restart_count and ws.health == health

    return check


def is_unhealthy_failure(ws: WorkloadState) -> bool:
    es = ws.execution_state
    return (es.state, es.substate) == ("Failed", "ExecFailed") and "unhealthy" in es.additional_info


def test_tcp_check_on_failure_restarts_a_workload_that_stops_serving(health: HealthSystem, tmp_path: Path) -> None:
    name, marker = unique_name("tcp")
    port, trigger = free_port(), tmp_path / "stop-serving"
    check = {"tcp": f"127.0.0.1:{port}", **FAST_CHECK, "startPeriodMs": 5000}
    try:
        health.apply(name, "ON_FAILURE", health.program("tcp_server.py", port, trigger, 0, marker), check)
        health.wait_state(name, "Running(Ok), healthy", is_running(0, "healthy"))
        (first_pid,) = marked_pids(marker)

        trigger.touch()  # the server closes its listener but keeps running
        failed = health.wait_state(name, "Failed(ExecFailed) unhealthy", is_unhealthy_failure)
        assert failed.restart_count == 0
        assert str(port) in failed.execution_state.additional_info  # the failing probe's error
        health.wait_state(name, "Running(Ok) again, restart 1, healthy", is_running(1, "healthy"))

        assert not trigger.exists(), "the first instance consumed the trigger"
        (pid,) = marked_pids(marker)  # exactly one process: the old one is gone
        assert pid != first_pid
        verdicts = [r.status for r in health.reports_of(name)]
        assert "unhealthy" in verdicts and verdicts[-1] == "healthy", verdicts
        assert all(r.probe == "tcp" for r in health.reports_of(name))
        row = health.row(name)
        assert (row["state"], row["substate"], row["restartCount"], row["health"]) == ("Running", "Ok", 1, "healthy")
    finally:
        health.delete(name)


def test_zenoh_check_always_restarts_a_workload_whose_key_goes_stale(health: HealthSystem, tmp_path: Path) -> None:
    name, marker = unique_name("beat")
    key, trigger = f"e2e/{marker}/beat", tmp_path / "stop-publishing"
    check = {"zenoh": key, "maxAgeMs": 600, **FAST_CHECK, "startPeriodMs": 5000}
    try:
        health.apply(name, "ALWAYS", health.program("zenoh_publisher.py", key, trigger, marker), check)
        health.wait_state(name, "Running(Ok), healthy", is_running(0, "healthy"))
        (first_pid,) = marked_pids(marker)

        trigger.touch()  # the publisher stops putting but keeps running
        failed = health.wait_state(name, "Failed(ExecFailed) unhealthy", is_unhealthy_failure)
        assert failed.restart_count == 0
        health.wait_state(name, "Running(Ok) again, restart 1, healthy", is_running(1, "healthy"))

        (pid,) = marked_pids(marker)
        assert pid != first_pid
        unhealthy = [r for r in health.reports_of(name) if r.status == "unhealthy"]
        assert unhealthy and unhealthy[0].probe == "zenoh", health.reports_of(name)
        row = health.row(name)
        assert (row["state"], row["restartCount"], row["health"]) == ("Running", 1, "healthy")
    finally:
        health.delete(name)


def test_failures_during_the_start_period_do_not_restart(health: HealthSystem, tmp_path: Path) -> None:
    name, marker = unique_name("slow")
    port = free_port()
    # Without the start period, retries 1 would make the first failed probe
    # (200 ms in, long before the server listens) an unhealthy verdict.
    check = {"tcp": f"127.0.0.1:{port}", "intervalMs": 200, "timeoutMs": 500, "retries": 1, "startPeriodMs": 3000}
    log = health.system.base / "agents" / health.agent / f"{name}.log"
    try:
        health.apply(name, "ALWAYS", health.program("tcp_server.py", port, tmp_path / "never", 1.5, marker), check)
        healthy = health.wait_state(name, "Running(Ok), healthy", is_running(0, "healthy"))

        # The series (its "starting" report) began before the server listened:
        # the probes did fail during the start period.
        starting = [r for r in health.reports_of(name) if r.status == "starting"]
        assert starting, health.reports_of(name)
        listening_at: float = wait_for(lambda: _listening_time(log) or 0.0, 5, "the server's 'listening at' line")
        margin = listening_at - starting[0].time_ms / 1000
        print(f"start period: the series started {margin:.3f}s before the server listened")
        assert margin > 0, "the series started after the server listened: the start period was not exercised"

        assert all(ws.restart_count == 0 for ws in health.history(name))
        assert all(r.status != "unhealthy" for r in health.reports_of(name))
        assert not any(is_unhealthy_failure(ws) for ws in health.history(name))
        assert len(marked_pids(marker)) == 1
        assert healthy.instance == health.row(name)["instance"]
        assert health.row(name)["restartCount"] == 0
    finally:
        health.delete(name)


def _listening_time(log: Path) -> float | None:
    """When the workload's server began to listen (wall clock), from its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith("listening at ")), None)


def test_never_and_unhealthy_ends_failed_and_is_not_restarted(health: HealthSystem) -> None:
    name, marker = unique_name("mute")
    port = free_port()
    check = {"tcp": f"127.0.0.1:{port}", **FAST_CHECK, "startPeriodMs": 0}
    try:
        # It never listens: unhealthy after two failed probes.
        health.apply(name, "NEVER", health.program("tcp_server.py", port, "/nonexistent", 1e6, marker), check)
        failed = health.wait_state(name, "Failed(ExecFailed) unhealthy", is_unhealthy_failure)
        assert failed.restart_count == 0
        # The agent stops it and publishes the end state once its exit is in;
        # a restart would have been decided in that same step.
        ended = health.wait_state(
            name, "Failed after the stop", lambda ws: is_unhealthy_failure(ws) and ws.exit_code is not None
        )
        wait_for(lambda: not marked_pids(marker), 10, f"{name}'s process gone")

        after = health.history(name)[health.history(name).index(failed) :]
        assert all(str(ws.execution_state).startswith("Failed") for ws in after), after
        assert all(ws.restart_count == 0 for ws in health.history(name))
        assert ended.instance == failed.instance
        row = health.row(name)
        assert (row["state"], row["substate"], row["restartCount"]) == ("Failed", "ExecFailed", 0)
        assert "unhealthy" in row["additionalInfo"]
        assert not marked_pids(marker)
    finally:
        health.delete(name)
