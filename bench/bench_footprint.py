"""Footprint and start-up of the whole system, each beside its floor from the
same run.

F-RSS/F-PSS  RSS and PSS (MB) of every process `ank up manifests/police.yaml`
             starts (router, planner, agent, health-watcher, scheduler, `ank up`
             itself; the police programs are workloads and listed apart), after
             the example has run SETTLE_S; floor: one python process with one
             Zenoh session open (what every service carries at least).
F-CPU        idle CPU of those processes over IDLE_S (% of one core, summed).
P9           `ank up` launched → the planner answered and the manifest is
             applied (its "applied" line), beside the floor `python -c 'import
             zenoh'` (Ankaios's server+agent: 68 ms on these machines, not
             measured here).
P-CLI        one `ank get workloads` against that running system, beside the
             same floor.

Ports of the police example (7448, 8081, 8082) must be free.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.stats import ms
from tests.helpers import ROOT, free_port, stop_process

SETTLE_S = 30.0
IDLE_S = 10.0
ROLES = (
    ("services.bus.router", "router"),
    ("services.planner", "planner"),
    ("services.agent", "agent"),
    ("services.health_watcher", "health-watcher"),
    ("services.scheduler", "scheduler"),
    ("services.dashboard", "dashboard"),
    ("system service", "podman-service"),
    ("podman events", "podman-events"),
)
FLOOR_SESSION = "import zenoh, time, sys; s = zenoh.open(zenoh.Config()); print('up', flush=True); time.sleep(60)"


def _ank() -> list[str]:
    return [str(Path(sys.executable).parent / "ank")]


def _role(proc: psutil.Process, up_pid: int) -> str:
    if proc.pid == up_pid:
        return "ank-up"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    for needle, role in ROLES:
        if needle in cmd:
            return role
    return "workload"


def _memory(proc: psutil.Process) -> tuple[float, float]:
    info = proc.memory_full_info()
    return info.rss / 1e6, getattr(info, "pss", info.rss) / 1e6


class _Lines:
    """A child's stderr lines with their arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.items: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.items.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()

    def wait(self, needle: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, line in self.items:
                    if needle in line:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(line for _, line in self.items[-10:])
                    raise RuntimeError(f"ank up printed no {needle!r}:\n{tail}")
                self.cond.wait(min(remaining, 0.5))


def _start_up(state: Path) -> tuple[subprocess.Popen[str], _Lines, float, str]:
    port = free_port()
    argv = [*_ank(), "up", "manifests/police.yaml", "--no-watch", "--agent", "benchfp"]
    argv += ["--port", str(port), "--state-dir", str(state)]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines = _Lines(proc)
    applied = lines.wait("ank up: applied", 60)
    return proc, lines, applied - started, f"tcp/127.0.0.1:{port}"


def _floor_import(samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import zenoh"], check=True)
        times.append(time.monotonic() - started)
    return times


def _floor_session() -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SESSION], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(1.0)  # its session's threads settled
        return _memory(psutil.Process(proc.pid))
    finally:
        proc.kill()
        proc.wait(10)


def run(quick: bool = False) -> list[dict[str, Any]]:
    settle = 10.0 if quick else SETTLE_S
    launches = 1 if quick else 3
    cli_samples = 3 if quick else 10
    p9: list[float] = []
    cli: list[float] = []
    floor_import: list[float] = []  # taken beside each sample of ours (interleaved)
    memory: dict[str, list[tuple[float, float]]] = {}
    idle_cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        for launch in range(launches):
            proc, _lines, took, endpoint = _start_up(Path(tmp) / f"up{launch}")
            p9.append(took)
            floor_import += _floor_import(1)
            try:
                if launch > 0:
                    continue
                time.sleep(settle)  # the police example runs: its workloads, states, health
                up = psutil.Process(proc.pid)
                procs = [up, *up.children(recursive=True)]
                before = {}
                for p in procs:
                    try:
                        t = p.cpu_times()
                        before[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                time.sleep(IDLE_S)
                spent = 0.0
                for p in procs:
                    role = _role(p, proc.pid)
                    try:
                        t = p.cpu_times()
                        if role != "workload" and p.pid in before:
                            spent += t.user + t.system - before[p.pid]
                        memory.setdefault(role, []).append(_memory(p))
                    except psutil.Error:
                        pass
                idle_cpu = spent / IDLE_S * 100
                env = dict(os.environ, ANK_SERVER=endpoint)
                for _ in range(cli_samples):
                    started = time.monotonic()
                    subprocess.run(
                        [*_ank(), "--server-url", endpoint, "get", "workloads"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        check=True,
                    )
                    cli.append(time.monotonic() - started)
                    floor_import += _floor_import(1)
            finally:
                stop_process(proc, 60)
    floor_rss, floor_pss = _floor_session()
    imp50, imp99 = ms(floor_import)
    rows: list[dict[str, Any]] = []
    ours = {role: m for role, m in memory.items() if role != "workload"}
    total_pss = sum(pss for m in ours.values() for _, pss in m)
    for role, samples in sorted(ours.items()):
        rows.append(
            {
                "id": f"F-RSS {role}",
                "name": f"RSS of {role} ({len(samples)} process{'es' if len(samples) > 1 else ''}, largest)",
                "unit": "MB",
                "p50": round(max(rss for rss, _ in samples), 1),
                "p99": None,
                "floor": round(floor_rss, 1),
                "peer": None,
                "target": "<= 35 MB" if role not in ("podman-service", "podman-events") else None,
                "pss": round(sum(pss for _, pss in samples), 1),
                "note": "floor: python with one Zenoh session, same run",
            }
        )
    workloads = memory.get("workload", [])
    rows.append(
        {
            "id": "F-PSS",
            "name": "PSS of the whole `ank up` system (police example, workloads apart)",
            "unit": "MB",
            "p50": round(total_pss, 1),
            "p99": None,
            "floor": round(floor_pss, 1),
            "peer": 11.0,
            "target": "<= 120 MB",
            "workloads_pss": round(sum(pss for _, pss in workloads), 1),
            "processes": sum(len(m) for m in ours.values()),
            "note": "floor: PSS of one python + Zenoh session (same run); peer: Eclipse Ankaios server+agent "
            "11 MB PSS (issue 17, not measured here)",
        }
    )
    rows.append(
        {
            "id": "F-CPU",
            "name": f"idle CPU of the `ank up` processes over {IDLE_S:.0f} s (police example running)",
            "unit": "% of a core",
            "p50": round(idle_cpu, 2),
            "p99": None,
            "floor": None,
            "peer": None,
            "target": None,
        }
    )
    p50, p99 = ms(p9)
    rows.append(
        {
            "id": "P9",
            "name": "`ank up` launched -> planner answered, manifest applied",
            "unit": "ms",
            "p50": p50,
            "p99": p99,
            "floor": imp50,
            "peer": 68.0,
            "target": "<= 400 ms",
            "samples": len(p9),
            "note": "floor: `python -c 'import zenoh'` (same run); peer: Ankaios 68 ms (issue 17, not measured here)",
        }
    )
    p50, p99 = ms(cli)
    rows.append(
        {
            "id": "P-CLI",
            "name": "one `ank get workloads` (whole command)",
            "unit": "ms",
            "p50": p50,
            "p99": p99,
            "floor": imp50,
            "floor_p99": imp99,
            "peer": None,
            "target": "<= 100 ms",
            "samples": len(cli),
            "note": "floor: `python -c 'import zenoh'` (same run)",
        }
    )
    return rows


if __name__ == "__main__":
    import json

    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
