"""The whole system for the fault and fuzz tests (no tests of its own here).

`Stack` composes tests/system.py's `System` (planner and agents as real
processes, the `ank` CLI) with what those tests also need:

- a router of its own on a fixed free loopback port, so that it can be
  killed with SIGKILL and started again on the same endpoint;
- the health-watcher and the scheduler as processes;
- an observer session that records every WorkloadState and Event as it
  arrives (raw: no stale-dropping, so that every publication is counted);
- the workload processes of an agent, found by the environment the process
  runtime gives them (`ANK_AGENT`, `ANK_WORKLOAD`, `ANK_INSTANCE`) and by
  being a process-group leader (each workload starts its own session), so a
  duplicate or a lost workload shows as a count other than one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zenoh

from schemas.messages import ApplyRequest, ApplyResult, CompleteState, Event, WorkloadState
from services.bus import Bus
from tests.helpers import ROOT, free_port, stop_process, wait_for, wait_port
from tests.system import System, running_system

FAULTS = bool(os.environ.get("ANK_FAULTS"))


def scaled(full: int, quick: int) -> int:
    """`full` under `make test-faults` (ANK_FAULTS=1), `quick` in the default run."""
    return full if FAULTS else quick


def unique(prefix: str) -> str:
    """A name no other test run on this machine uses (agents, workloads)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


class Router:
    """A router process on one fixed loopback endpoint that survives restarts."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.endpoint = f"tcp/127.0.0.1:{self.port}"
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.base / "router.log", "ab")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.bus.router", "--listen", self.endpoint],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, 15)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass(frozen=True)
class Seen:
    """A message the observer received, with its arrival time (monotonic s)."""

    key: str
    at: float
    message: Any


class Observer:
    """Records every WorkloadState on ank/state/** and every Event on
    ank/events/** (decoded without the Bus's stale-dropping), and counts the
    payloads it could not decode."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.states: list[Seen] = []
        self.events: list[Seen] = []
        self.undecodable = 0
        self._cond = threading.Condition()
        bus.subscribe_raw("ank/state/**", self._on_state)
        bus.subscribe_raw("ank/events/**", self._on_event)

    def _on_state(self, key: str, payload: bytes) -> None:
        self._record(self.states, key, payload, WorkloadState)

    def _on_event(self, key: str, payload: bytes) -> None:
        self._record(self.events, key, payload, Event)

    def _record(self, into: list[Seen], key: str, payload: bytes, schema: type[msgspec.Struct]) -> None:
        try:
            message = msgspec.json.decode(payload, type=schema)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            with self._cond:
                self.undecodable += 1  # a fuzz payload on a state key: not a publication of ours
            return
        with self._cond:
            into.append(Seen(key, time.monotonic(), message))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(remaining, 0.2))

    def events_from(self, sender: str, kind: str) -> list[Event]:
        with self._cond:
            return [s.message for s in self.events if s.message.sender == sender and s.message.kind == kind]

    def count_events(self, sender: str, kind: str, subject_prefix: str = "") -> int:
        with self._cond:
            return sum(
                1
                for s in self.events
                if s.message.sender == sender
                and s.message.kind == kind
                and s.message.subject.startswith(subject_prefix)
            )


def recent_events(bus: Bus, timeout: float = 3.0) -> list[Event]:
    """Every event the planner keeps (what `ank get eventlog` asks for);
    without reply consolidation, so that events sharing a key all count."""
    out = []
    replies = bus.session.get("ank/events/**", consolidation=zenoh.ConsolidationMode.NONE, timeout=timeout)
    for reply in replies:
        if reply.ok is not None:
            try:
                out.append(msgspec.json.decode(reply.ok.payload.to_bytes(), type=Event))
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.startswith(b"ANK_"):
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def workload_processes(agent: str) -> dict[str, list[int]]:
    """Workload name -> pids of the live process-group leaders the agent's
    process runtime started (zombies excluded)."""
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getpgid(pid) != pid:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].startswith("Z"):
            continue
        env = _environ(pid)
        if env.get("ANK_AGENT") == agent and "ANK_WORKLOAD" in env:
            found.setdefault(env["ANK_WORKLOAD"], []).append(pid)
    return found


def kill_workloads(agent: str) -> None:
    """Kills every process group the agent's runtime started (test clean-up)."""
    for pids in workload_processes(agent).values():
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


class Stack:
    """Router + planner + agents (+ health-watcher, scheduler) + observer."""

    def __init__(self, system: System, router: Router) -> None:
        self.system = system
        self.router = router
        self.base = system.base
        self.agents: list[str] = []
        # a crash in native code (msgspec, zenoh) leaves its Python stacks in the log
        system.env["PYTHONFAULTHANDLER"] = "1"
        self.bus = Bus(unique("fault-observer-"), server=router.endpoint)
        self.observer = Observer(self.bus)

    # -- processes ---------------------------------------------------------------
    def start_planner(self) -> subprocess.Popen[bytes]:
        proc = self.system.planner()
        self.wait_planner()
        return proc

    def wait_planner(self, timeout: float = 20.0) -> CompleteState:
        complete = wait_for(lambda: self.state(timeout=0.5), timeout, "the planner answering ank/cmd/state")
        assert complete is not None
        return complete

    def start_agent(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        if name not in self.agents:
            self.agents.append(name)
        proc = self.system.agent(name, *extra)
        wait_for(lambda: self.bus.alive(f"ank/agents/{name}", timeout=0.5), 20, f"agent {name} alive")
        return proc

    def start_health_watcher(self) -> subprocess.Popen[bytes]:
        return self.system._start("health-watcher", [sys.executable, "-m", "services.health_watcher"])

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        return self.system._start("scheduler", [sys.executable, "-m", "services.scheduler.shell"])

    def alive(self, name: str) -> bool:
        return self.system.procs[name].poll() is None

    def diagnose(self, lines: int = 15) -> str:
        """Exit codes and log tails of the processes: for failure messages
        (the temporary folder may be gone when someone looks)."""
        out = []
        for name, proc in self.system.procs.items():
            tail = self.system.log(name).splitlines()[-lines:]
            out.append(f"--- {name} (exit {proc.poll()}):\n" + "\n".join(tail))
        return "\n".join(out)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """wait_for, failing with the processes' exit codes and log tails."""
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None

    # -- the bus -------------------------------------------------------------------
    def state(self, timeout: float = 3.0) -> CompleteState | None:
        replies = self.bus.get("ank/cmd/state", timeout=timeout)
        for _key, payload in replies:
            try:
                return msgspec.json.decode(payload, type=CompleteState)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
        return None

    def apply(self, manifest: str, agent: str | None = None, timeout: float = 10.0) -> ApplyResult:
        request = msgspec.json.encode(ApplyRequest(manifest=manifest, agent=agent))
        replies = self.bus.get("ank/cmd/apply", request, timeout=timeout)
        assert replies, "the planner did not answer ank/cmd/apply"
        return msgspec.json.decode(replies[0][1], type=ApplyResult)

    def latest_states(self, timeout: float = 3.0) -> dict[str, WorkloadState]:
        """Workload -> its latest state, as the planner knows it."""
        complete = self.state(timeout)
        if complete is None:
            return {}
        latest: dict[str, WorkloadState] = {}
        for ws in complete.workload_states:
            if ws.workload not in latest or ws.time_ms >= latest[ws.workload].time_ms:
                latest[ws.workload] = ws
        return latest

    def all_running(self, names: list[str], timeout: float = 1.0) -> dict[str, WorkloadState] | None:
        latest = self.latest_states(timeout)
        if all(n in latest and str(latest[n].execution_state) == "Running(Ok)" for n in names):
            return latest
        return None

    def close(self) -> None:
        self.bus.close()


@contextmanager
def running_stack(base: Path) -> Iterator[Stack]:
    """A Stack whose router, services and workloads are all stopped at the end."""
    router = Router(base)
    router.start()
    stack: Stack | None = None
    try:
        with running_system(router.endpoint, base) as system:
            stack = Stack(system, router)
            try:
                yield stack
            finally:
                stack.close()
                system.stop()  # the agents first: one still running would restart what is killed below
                for agent in stack.agents:
                    kill_workloads(agent)
    finally:
        router.stop()
        if stack is not None:
            for agent in stack.agents:
                kill_workloads(agent)


# A workload that runs until stopped, in one process.
SLEEPER = "command: sleep\nargs: ['100000']\n"


def manifest_of(agent: str, names: list[str], *, runtime_config: str = SLEEPER, policy: str = "ALWAYS") -> str:
    """A v1 manifest of process workloads on `agent`."""
    lines = ["apiVersion: v1", "workloads:"]
    config = "".join(f"      {line}\n" for line in runtime_config.splitlines())
    for name in names:
        lines += [
            f"  {name}:",
            "    runtime: process",
            f"    agent: {agent}",
            f"    restartPolicy: {policy}",
            "    runtimeConfig: |",
            config.rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def elapsed(since: float) -> float:
    return time.monotonic() - since


def wait_gone(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"pid {proc.pid} still running after {timeout}s") from exc


__all__ = [
    "FAULTS",
    "SLEEPER",
    "Observer",
    "Router",
    "Seen",
    "Stack",
    "elapsed",
    "kill_workloads",
    "manifest_of",
    "recent_events",
    "running_stack",
    "scaled",
    "unique",
    "wait_gone",
    "workload_processes",
]
