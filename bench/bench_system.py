"""Whole-system benchmarks (the embedded system of `ank up`, real processes):

P2  apply → Running for one process workload: from the `ank/cmd/apply` query
    to the workload's Running(Ok) state on a subscriber.
P5  1000 trivial process workloads over 4 agents: apply → all Running.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile
from schemas.messages import ApplyRequest, WorkloadState
from services.bus import Bus
from services.cli.client import Client
from services.cli.up import Embedded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(names: list[str], agents: list[str], config: str = '{"command": "sleep", "args": ["3600"]}') -> str:
    lines = ["apiVersion: v1", "workloads:"]
    for i, name in enumerate(names):
        lines += [
            f"  {name}:",
            "    runtime: process",
            f"    agent: {agents[i % len(agents)]}",
            f"    runtimeConfig: '{config}'",
        ]
    return "\n".join(lines) + "\n"


class Running:
    """Counts workloads that reached Running(Ok); wait() blocks until a set has."""

    def __init__(self) -> None:
        self.first_running: dict[str, float] = {}
        self.cond = threading.Condition()
        self.polled = 0  # names dated by a poll of the planner's state instead (bench_scale)

    def __call__(self, _key: str, st: WorkloadState) -> None:
        if st.execution_state.state == "Running":
            with self.cond:
                self.first_running.setdefault(st.workload, time.perf_counter())
                self.cond.notify_all()

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.first_running for n in names):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
        return True


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    state_dir = Path(tempfile.mkdtemp(prefix="ank-bench-"))
    system = Embedded("bench", state_dir, _free_port(), extra_agents=3)
    agents = ["bench", "bench2", "bench3", "bench4"]
    try:
        system.start()
        with Bus("bench", server=system.endpoint) as bus:
            client = Client(bus, 10.0)
            wait_agents(client, agents)
            running = Running()
            bus.subscribe("ank/state/**", WorkloadState, running)
            # P2: one workload at a time.
            samples = []
            for i in range(10 if quick else 40):
                name = f"p2-{i}"
                t0 = time.perf_counter()
                client.apply(ApplyRequest(manifest=_manifest([name], ["bench"])))
                if not running.wait([name], 30):
                    raise RuntimeError(f"{name} did not reach Running")
                samples.append((running.first_running[name] - t0) * 1000)
            rows.append(
                {
                    "id": "P2",
                    "name": "apply → Running, one process workload",
                    "unit": "ms",
                    "p50": statistics.median(samples),
                    "p99": percentile(samples, 0.99),
                    "floor": None,
                    "peer": None,
                    "target": "p50 ≤ 50",
                    "n": len(samples),
                }
            )
            Client(bus, 120.0).delete([f"p2-{i}" for i in range(len(samples))])
            # P5: 1000 workloads over 4 agents.
            count = 200 if quick else 1000
            names = [f"p5-{i}" for i in range(count)]
            t0 = time.perf_counter()
            client.apply(ApplyRequest(manifest=_manifest(names, agents)))
            ok = running.wait(names, 120)
            elapsed = (max(running.first_running[n] for n in names) - t0) if ok else float("nan")
            rows.append(
                {
                    "id": "P5",
                    "name": f"{count} process workloads over 4 agents: apply → all Running",
                    "unit": "s",
                    "p50": elapsed,
                    "p99": None,
                    "floor": None,
                    "peer": None,
                    "target": "≤ 10 (1000 workloads)",
                    "n": count,
                }
            )
            Client(bus, 120.0).delete(names)
    finally:
        system.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    return rows


def wait_agents(client: Client, agents: list[str], timeout: float = 30.0, poll_s: float = 0.1) -> None:
    """Until the planner knows every one of `agents` (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if set(agents) <= set(client.state().agents):
                return
        except Exception:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"not all {len(agents)} agents up within {timeout} s")
