"""Scale benchmarks on the embedded system of `ank up` (router, planner,
health-watcher, scheduler as processes) with 100 agents:

P10  10,000 process workloads over 100 agents: apply → all Running. The
     agents run 25 per process (bench/fleet.py: each a whole AgentShell with
     its own Zenoh session, event loop and process runtime). Applied as
     1,000 first (measured alone: the per-1,000 cost at 1,000), then 9,000
     more; the figure is the sum of both apply → all Running times. Floor:
     spawning and reaping the same number of `sleep` processes directly
     from one Python process, measured in the same run.
P11  the planner's CPU seconds per 1,000 workloads (at 1,000 and at 10,000).
P12  the planner's memory (RSS growth) per 1,000 workloads (at 1,000 and at
     10,000): linear when both agree.
P13  `ank get workloads` (a CLI process) at 10,000 workloads; floor: the
     same command on an empty state in the same run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_system import Running, _free_port, _manifest, wait_agents
from bench.stats import percentile
from schemas.messages import ApplyRequest, WorkloadState
from services.bus import Bus, paging
from services.cli.client import Client
from services.cli.up import ROOT, Embedded
from tests.helpers import stop_process

AGENTS = 100
PER_PROCESS = 25
BATCH = 1000  # workloads per apply (each manifest well under 1 MiB)
TICKS = os.sysconf("SC_CLK_TCK")
BUSY: list[float] = []  # applies the planner answered "busy" (retried)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spawn_floor(count: int) -> float:
    """Seconds to start and reap `count` `sleep` processes directly."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["sleep", "3600"], start_new_session=True) for _ in range(count)]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
    return elapsed


def _ank_get_workloads(endpoint: str, runs: int, *extra: str) -> list[float]:
    env = dict(os.environ, ANK_SERVER=endpoint)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "--response-timeout", "30", "get", "workloads", *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            print(f"ank get workloads failed: {out.stderr[-2000:]}", file=sys.stderr)
            samples.append(float("nan"))
        else:
            samples.append(time.perf_counter() - t0)
    return samples


def _wait_running(running: Running, client: Client, names: list[str], timeout: float) -> bool:
    """Waits until every name was seen Running: on the subscriber, or (a
    publication lost while a session was cut off by an overloaded machine)
    in the planner's state, polled every 5 s (then dated by the poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.wait(names, min(5.0, max(0.0, deadline - time.monotonic()))):
            return True
        try:
            listed = client.state().workload_states
        except Exception:
            continue
        now = time.perf_counter()
        with running.cond:
            for st in listed:
                if st.execution_state.state == "Running" and st.workload not in running.first_running:
                    running.first_running[st.workload] = now
                    running.polled += 1
            running.cond.notify_all()
    return running.wait(names, 0.0)


def _apply_in_batches(client: Client, names: list[str], agents: list[str], offset: int) -> None:
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        placed = [agents[(offset + start + i) % len(agents)] for i in range(len(batch))]
        for _attempt in range(10):
            result = client.apply(ApplyRequest(manifest=_manifest(batch, placed)))
            if result.ok or not any("busy" in e.message for e in result.errors):
                break
            BUSY.append(time.perf_counter())  # the planner refused to wait longer: nothing was done, retry
        if not result.ok:
            raise RuntimeError(f"apply failed: {result.errors}")


def run(quick: bool = False) -> list[dict[str, Any]]:
    total = 2000 if quick else 10_000
    first = total // 10
    state_dir = Path(tempfile.mkdtemp(prefix="ank-bench-scale-"))
    system = Embedded("scale", state_dir, _free_port())
    agents = [f"fleet{i:03}" for i in range(AGENTS)]
    fleets: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        system.start()
        planner_pid = next(p.pid for name, p in system.children if name == "planner")
        for start in range(0, AGENTS, PER_PROCESS):
            log = open(state_dir / "logs" / f"fleet{start}.log", "ab")  # noqa: SIM115 - kept for the child
            fleets.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.fleet",
                        "--server",
                        system.endpoint,
                        "--run-base",
                        str(state_dir / "agents"),
                        *agents[start : start + PER_PROCESS],
                    ],
                    cwd=ROOT,
                    env=system.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        with Bus("bench-scale", server=system.endpoint) as bus:
            client = Client(bus, 120.0)
            wait_agents(client, agents, 180.0, poll_s=0.5)
            floor_get = _ank_get_workloads(system.endpoint, 3)
            floor_json = _ank_get_workloads(system.endpoint, 3, "-o", "json")
            running = Running()
            bus.subscribe("ank/state/**", WorkloadState, running)
            time.sleep(3.0)  # let the agents' start-up settle before the baseline
            cpu0, rss0 = _cpu_s(planner_pid), _rss_mb(planner_pid)
            names = [f"s{i:05}" for i in range(total)]
            # stage 1: the first tenth
            t0 = time.perf_counter()
            _apply_in_batches(client, names[:first], agents, 0)
            if not _wait_running(running, client, names[:first], 300):
                raise RuntimeError(f"{first} workloads did not all reach Running")
            t1 = max(running.first_running[n] for n in names[:first]) - t0
            cpu1, rss1 = _cpu_s(planner_pid), _rss_mb(planner_pid)
            # stage 2: the rest
            t0 = time.perf_counter()
            _apply_in_batches(client, names[first:], agents, first)
            ok = _wait_running(running, client, names, 600)
            t2 = (max(running.first_running[n] for n in names[first:]) - t0) if ok else float("nan")
            cpu2, rss2 = _cpu_s(planner_pid), _rss_mb(planner_pid)
            get_samples = _ank_get_workloads(system.endpoint, 5)
            json_samples = _ank_get_workloads(system.endpoint, 5, "-o", "json")
            query_samples = []
            for _ in range(5):
                t_q = time.perf_counter()
                if not paging.get_complete_state(bus, 30.0):
                    raise RuntimeError("no complete state")
                query_samples.append(time.perf_counter() - t_q)
            floor_spawn = _spawn_floor(first) * (total / first)
            flaps = _agents_lost(state_dir / "logs" / "planner.log")
            per = total / 1000
            rows += [
                {
                    "id": "P10",
                    "name": f"{total} process workloads over {AGENTS} agents "
                    f"({PER_PROCESS} per process): apply → all Running",
                    "unit": "s",
                    "p50": t1 + t2,
                    "p99": None,
                    "floor": floor_spawn,
                    "peer": None,
                    "target": "≤ 30 (10,000 workloads)",
                    "n": total,
                    "first_tenth_s": t1,
                    "rest_s": t2,
                    "ratio_to_floor": (t1 + t2) / floor_spawn,
                    "running_seen_by_poll_not_subscriber": running.polled,
                    "applies_retried_busy": len(BUSY),
                },
                {
                    "id": "P11",
                    "name": "planner CPU per 1,000 workloads (apply → all Running), at 1,000 | at 10,000",
                    "unit": "s",
                    "p50": (cpu2 - cpu0) / per,
                    "p99": None,
                    "floor": None,
                    "peer": None,
                    "target": "flat from 1,000 to 10,000",
                    "at_1000": (cpu1 - cpu0) / (first / 1000),
                    "at_10000": (cpu2 - cpu0) / per,
                    "agents_lost_during_run": flaps,
                },
                {
                    "id": "P12",
                    "name": "planner memory (RSS growth) per 1,000 workloads, at 1,000 | at 10,000",
                    "unit": "MB",
                    "p50": (rss2 - rss0) / per,
                    "p99": None,
                    "floor": None,
                    "peer": None,
                    "target": "linear (flat per 1,000)",
                    "at_1000": (rss1 - rss0) / (first / 1000),
                    "at_10000": (rss2 - rss0) / per,
                    "rss_base_mb": rss0,
                    "rss_end_mb": rss2,
                },
                {
                    "id": "P13",
                    "name": f"`ank get workloads` at {total} workloads (a CLI process)",
                    "unit": "s",
                    "p50": statistics.median(get_samples),
                    "p99": percentile(get_samples, 0.99),
                    "floor": statistics.median(floor_get),
                    "peer": None,
                    "target": "≤ 1",
                    "n": len(get_samples),
                },
                {
                    "id": "P13j",
                    "name": f"`ank get workloads -o json` at {total} workloads (a CLI process, no table rendering)",
                    "unit": "s",
                    "p50": statistics.median(json_samples),
                    "p99": percentile(json_samples, 0.99),
                    "floor": statistics.median(floor_json),
                    "peer": None,
                    "target": "≤ 1",
                    "n": len(json_samples),
                },
                {
                    "id": "P13q",
                    "name": f"the `ank/cmd/state` query alone (all parts, merged) at {total} workloads",
                    "unit": "s",
                    "p50": statistics.median(query_samples),
                    "p99": percentile(query_samples, 0.99),
                    "floor": None,
                    "peer": None,
                    "target": "≤ 1",
                    "n": len(query_samples),
                },
            ]
    finally:
        for proc in fleets:
            proc.terminate()  # all at once, then each waited for
        for proc in fleets:
            stop_process(proc, 120)
        system.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    return rows


def _agents_lost(planner_log: Path) -> int:
    """How many times the planner took an agent for lost (a liveliness lease
    expired: on an overloaded machine agents flap)."""
    try:
        text = planner_log.read_text(errors="replace")
    except OSError:
        return -1
    return sum(1 for line in text.splitlines() if line.rstrip().endswith(" lost") and "agent " in line)
