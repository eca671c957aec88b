"""Agent benchmarks, on a real router and a real `ank-agent` process.

P1  workload exit → its WorkloadState on a subscriber (ms), beside the raw
    Zenoh put → subscriber floor measured in the same run (same router, same
    payload size).
P4  crash → Running again under ALWAYS (ms, SIGKILL from outside until the
    Running state arrives), beside supervisord (Debian `supervisor`)
    restarting the same program (SIGKILL until its PROCESS_STATE_RUNNING
    event reaches an event listener).

Times from different processes are compared on CLOCK_MONOTONIC, which is
system-wide on Linux.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from bench.stats import latency_row
from schemas.manifest import Workload
from schemas.messages import AgentPlan, PlannedWorkload, WorkloadState
from services.bus import Bus
from tests.helpers import ROOT, child_env, running_router, stop_process

PROGRAM = ["/bin/sleep", "600"]


class _Arrivals:
    """WorkloadStates with their arrival time (monotonic)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, WorkloadState]] = []
        self._cond = threading.Condition()

    def __call__(self, _key: str, state: WorkloadState) -> None:
        arrived = time.monotonic()
        with self._cond:
            self.items.append((arrived, state))
            self._cond.notify_all()

    def wait(self, after: int, predicate: Callable[[WorkloadState], bool], timeout: float = 10.0) -> tuple[int, float]:
        """(index, arrival time) of the first state from index `after` on that matches."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.items)):
                    if predicate(self.items[i][1]):
                        return i, self.items[i][0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching WorkloadState within the timeout")
                self._cond.wait(remaining)


def _floor(endpoint: str, samples: int, payload: bytes) -> list[float]:
    """Raw Zenoh put → subscriber callback, two client sessions via the router."""
    received: list[float] = []
    got = threading.Event()

    def on_put(_key: str, _data: bytes) -> None:
        received.append(time.monotonic())
        got.set()

    with Bus("bench/floor-pub", server=endpoint) as pub, Bus("bench/floor-sub", server=endpoint) as sub:
        sub.subscribe_raw("bench/floor", on_put)
        time.sleep(0.2)  # let the subscription reach the router before the first put
        out = []
        for _ in range(samples + 5):
            got.clear()
            sent = time.monotonic()
            pub.put("bench/floor", payload)
            if not got.wait(2.0):
                continue
            out.append(received[-1] - sent)
            time.sleep(0.002)
    return out[5:]  # the first puts warm the routes


def _agent_pid(run_dir: Path, workload: str) -> int:
    record = json.loads((run_dir / "records" / f"{workload}.json").read_text())
    return int(record["handle"]["record"]["pid"])


def _ours(endpoint: str, samples: int, work: Path) -> tuple[list[float], list[float], bytes]:
    """(exit → state, crash → Running) samples, and one state payload."""
    run_dir = work / "agent"
    name = f"bench{os.getpid()}"
    argv = [sys.executable, "-m", "services.agent", "--name", name, "--run-dir", str(run_dir)]
    argv += ["--stable-after", "0.05", "--status-period", "5", "--stop-grace", "1"]
    agent = subprocess.Popen(argv, cwd=ROOT, env=child_env(endpoint, ANK_LOG="WARNING"))
    exit_to_state: list[float] = []
    crash_to_running: list[float] = []
    try:
        with Bus("bench/agent", server=endpoint) as bus:
            arrivals = _Arrivals()
            bus.subscribe(f"ank/state/{name}/**", WorkloadState, arrivals)
            deadline = time.monotonic() + 15
            while not bus.alive(f"ank/agents/{name}", timeout=0.5):
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise RuntimeError("the agent did not come up")
            config = f"command: {PROGRAM[0]}\nargs: {json.dumps(PROGRAM[1:])}\n"
            workload = Workload(runtime="process", runtime_config=config, restart_policy="ALWAYS")
            plan = AgentPlan(agent=name, generation=1, workloads=[PlannedWorkload("crashy", "i1", workload)])
            bus.put(f"ank/plan/{name}", plan)
            index, _ = arrivals.wait(0, lambda s: s.execution_state.state == "Running")
            for _ in range(samples):
                time.sleep(0.1)  # a run longer than --stable-after: every restart is the immediate first one
                pid = _agent_pid(run_dir, "crashy")
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                index, failed_at = arrivals.wait(index + 1, lambda s: s.execution_state.state == "Failed")
                index, running_at = arrivals.wait(index + 1, lambda s: s.execution_state.state == "Running")
                exit_to_state.append(failed_at - killed)
                crash_to_running.append(running_at - killed)
            payload = msgspec.json.encode(arrivals.items[-1][1])
            bus.put(f"ank/plan/{name}", AgentPlan(agent=name, generation=2, workloads=[]))
            arrivals.wait(index + 1, lambda s: s.execution_state.state == "Removed")
    finally:
        stop_process(agent)
        for path in (run_dir / "records").glob("*.json"):
            try:
                os.killpg(int(json.loads(path.read_text())["handle"]["record"]["pid"]), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
    return exit_to_state, crash_to_running, payload


_LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = sys.argv[1]
    while True:
        sys.stdout.write("READY\\n"); sys.stdout.flush()
        header = dict(kv.split(":") for kv in sys.stdin.readline().split())
        payload = sys.stdin.read(int(header["len"]))
        fields = dict(kv.split(":") for kv in payload.split("\\n")[0].split())
        if header.get("eventname") == "PROCESS_STATE_RUNNING":
            sock.sendto(("%r %s" % (time.monotonic(), fields.get("pid", "?"))).encode(), target)
        sys.stdout.write("RESULT 2\\nOK"); sys.stdout.flush()
    """
)


@contextmanager
def _supervisord(work: Path) -> Iterator[tuple[str, str, socket.socket]]:
    """A private supervisord running PROGRAM with autorestart; yields
    (supervisorctl config path, program name, socket receiving RUNNING events)."""
    events_path = str(work / "events.sock")
    events = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    events.bind(events_path)
    (work / "listener.py").write_text(_LISTENER)
    conf = work / "supervisord.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            [unix_http_server]
            file={work}/supervisor.sock
            [supervisord]
            nodaemon=true
            logfile={work}/supervisord.log
            pidfile={work}/supervisord.pid
            childlogdir={work}
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
            [supervisorctl]
            serverurl=unix://{work}/supervisor.sock
            [program:crashy]
            command={" ".join(PROGRAM)}
            autorestart=true
            startsecs=0
            startretries=1000
            [eventlistener:timing]
            command={sys.executable} {work}/listener.py {events_path}
            events=PROCESS_STATE_RUNNING
            """
        )
    )
    proc = subprocess.Popen(["supervisord", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield str(conf), "crashy", events
    finally:
        stop_process(proc)
        events.close()


def _supervisor_restart(samples: int, work: Path) -> list[float] | None:
    if shutil.which("supervisord") is None:
        return None
    out: list[float] = []
    with _supervisord(work) as (_conf, _program, events):
        events.settimeout(10)
        _, pid_text = events.recv(256).decode().split()  # the first start
        pid = int(pid_text)
        for _ in range(samples):
            time.sleep(0.1)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while True:  # skip RUNNING events of other processes (the listener is not one)
                at_text, pid_text = events.recv(256).decode().split()
                if int(pid_text) != pid:
                    break
            pid = int(pid_text)
            out.append(float(at_text) - killed)
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    samples = 10 if quick else 50
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp, running_router() as (endpoint, _router):
        work = Path(tmp)
        exit_to_state, crash_to_running, payload = _ours(endpoint, samples, work)
        floor = _floor(endpoint, samples * 4, payload)
        peer_dir = work / "supervisor"
        peer_dir.mkdir()
        peer = _supervisor_restart(samples, peer_dir)
    rows.append(
        latency_row(
            "P1",
            "workload exit -> WorkloadState on a subscriber",
            exit_to_state,
            floor=floor,
            note="floor: raw Zenoh put -> subscriber, same router, same payload size",
            digits=3,
        )
    )
    rows.append(
        latency_row(
            "P4",
            "crash (SIGKILL) -> Running again, ALWAYS",
            crash_to_running,
            peer=peer or None,
            note="peer: supervisord (autorestart, startsecs=0) restarting the same program, "
            "until its PROCESS_STATE_RUNNING event"
            if peer
            else "peer: supervisord not installed",
            digits=3,
        )
    )
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
