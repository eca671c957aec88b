"""Scheduler benchmarks.

P6  native placements per second with 100 nodes: the native core
    (native.step: filter, score, normalise, reserve, Binding action) fed
    batches of 100 new NotScheduled workloads; p50/p99 are the placement
    rates of the median and the slowest-1 % batch. floor = the bare
    framework (`core.schedule` on 100 NodeViews) per placement. The bus put
    of each Binding (~0.1 ms one-way, ZENOH.md) is not included.
P7  Kubernetes-mode pods per second: `ank-scheduler --kubernetes` as a real
    process with the real kubernetes client against tests/k8s_standin.py (a
    wire-level API stand-in on loopback, not a real API server); a burst of
    pods created at once, time from the first create to the last binding.
    floor = the same client binding pods directly (no scheduler) per second.
P7-20ms, P7-100ms  the same with 20 / 100 ms injected into every
    pods/binding answer of the stand-in (an API server with etcd writes and
    a network between them): binds go through the bind pool (16 at once), so
    the rate stays far above 1/latency. floor = the client binding directly,
    one after the other (what a scheduler binding serially in its loop gets).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stats import percentile  # noqa: E402
from schemas.liveliness import AgentLiveliness  # noqa: E402
from schemas.manifest import Manifest, Workload  # noqa: E402
from schemas.messages import AgentStatus, CompleteState, EnergyReport  # noqa: E402
from services.scheduler.core import (  # noqa: E402
    AgentStatusSeen,
    DesiredStateRead,
    NativeConfig,
    NativeState,
    step,
)
from services.scheduler.framework import CycleContext, EnergyReported, NodeView, PlacementRequest, schedule  # noqa: E402
from tests.helpers import stop_process  # noqa: E402

T0 = 1_700_000_000_000


def bench_native(batches: int) -> dict[str, Any]:
    core = NativeState(NativeConfig(max_energy_age_ms=10**12))
    for i in range(100):
        name = f"node-{i:03d}"
        core = step(core, AgentLiveliness(name, True), T0).state
        core = step(
            core, AgentStatusSeen(AgentStatus(agent=name, arch="arm64", os="linux", tags={"zone": "a"})), T0
        ).state
        core = step(core, EnergyReported(EnergyReport(node=name, energy_wh=100.0 + i, time_ms=T0)), T0).state
    workloads: dict[str, Workload] = {}
    rates: list[float] = []
    placed = 0
    for b in range(batches):
        for i in range(100):
            workloads[f"w{b:04d}-{i:03d}"] = Workload(runtime="process", agent="")
        state = CompleteState(desired=Manifest(api_version="v1", workloads=dict(workloads)))
        start = time.perf_counter()
        decided = step(core, DesiredStateRead(state), T0 + b)
        core, actions = decided.state, decided.actions
        elapsed = time.perf_counter() - start
        placed += sum(1 for a in actions if type(a).__name__ == "PublishBinding")
        rates.append(100 / elapsed)
    assert placed == 100 * batches, f"placed {placed} of {100 * batches}"
    views = [NodeView(name=f"n{i}", arch="arm64", energy_wh=100.0 + i, energy_time_ms=T0) for i in range(100)]
    ctx = CycleContext(now_ms=T0)
    n = 2000
    start = time.perf_counter()
    for i in range(n):
        schedule(PlacementRequest(workload=f"w{i}"), views, ctx)
    floor = n / (time.perf_counter() - start)
    return {
        "id": "P6",
        "name": "native placements per second, 100 nodes (scheduler core, no bus)",
        "unit": "placements/s",
        "p50": round(statistics.median(rates)),
        "p99": round(percentile(rates, 0.01)),
        "floor": round(floor),
        "peer": None,
        "target": 2000,
    }


def bench_kubernetes(pods: int, rounds: int, latency_ms: int = 0) -> dict[str, Any]:
    from kubernetes import client

    from services.scheduler.kube_shell import load_api_client
    from tests.k8s_standin import running_standin

    rates: list[float] = []
    floors: list[float] = []
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["PYTHONPATH"] = str(ROOT)
    env["ANK_LOG"] = "WARNING"
    for r in range(rounds):
        with running_standin() as standin, tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(standin.kubeconfig())
            for i in range(10):
                standin.add_node(f"arm-{i}", allocatable={"cpu": "64", "memory": "256Gi", "pods": "1000"})
            standin.latency[("POST", "binding")] = latency_ms / 1000
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.scheduler.shell",
                    "--kubernetes",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--energy-source",
                    "none",
                    "--node-cache-s",
                    "5",
                ],
                cwd=ROOT,
                env=env,
            )
            try:
                deadline = time.monotonic() + 30
                while standin.watch_calls == 0:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("ank-scheduler --kubernetes did not start watching")
                    time.sleep(0.02)
                start = time.perf_counter()
                for i in range(pods):
                    standin.create_pod(f"p{r}-{i}")
                deadline = time.monotonic() + 120
                while len(standin.bindings) < pods:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {len(standin.bindings)} of {pods} pods bound in 120 s")
                    time.sleep(0.005)
                rates.append(pods / (time.perf_counter() - start))
            finally:
                stop_process(proc)
            # floor: the client binding the same number of pods directly
            floor_pods = pods if latency_ms == 0 else max(10, pods // 10)
            for i in range(floor_pods):
                standin.create_pod(f"f{r}-{i}")
            api_client, _ = load_api_client(str(kubeconfig))
            api = client.CoreV1Api(api_client)
            start = time.perf_counter()
            for i in range(floor_pods):
                body = client.V1Binding.from_dict(
                    {
                        "metadata": {"name": f"f{r}-{i}", "namespace": "default"},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": "arm-0"},
                    }
                )
                assert body is not None
                api.create_namespaced_pod_binding(f"f{r}-{i}", "default", body, _preload_content=False)
            floors.append(floor_pods / (time.perf_counter() - start))
            api_client.close()
    return {
        "id": "P7" if latency_ms == 0 else f"P7-{latency_ms}ms",
        "name": f"Kubernetes-mode pods per second (burst of {pods}, real client, API stand-in"
        + (f", {latency_ms} ms per bind)" if latency_ms else ")"),
        "unit": "pods/s",
        "p50": round(statistics.median(rates)),
        "p99": round(min(rates)),
        "floor": round(statistics.median(floors)),
        "peer": None,
        "target": 100,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    return [
        bench_native(batches=5 if quick else 20),
        bench_kubernetes(pods=100 if quick else 300, rounds=1 if quick else 3),
        bench_kubernetes(pods=100 if quick else 300, rounds=1 if quick else 3, latency_ms=20),
        bench_kubernetes(pods=100 if quick else 300, rounds=1 if quick else 3, latency_ms=100),
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
