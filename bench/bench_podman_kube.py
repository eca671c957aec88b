"""podman-kube benchmarks, with real pods (local test images).

P3-kube      create → Running for a podman-kube workload (one Pod, one
             container) through the connector on podman's API service
             (PodmanKubeRuntime.create until its `running` notification),
             beside raw `podman kube play` of the same YAML, samples
             interleaved. Goal: <= 1.0x raw (the connector does more: its
             bookkeeping volumes, after the play).
P3-kube-cli  the same with the connector forced onto the CLI.

Skipped (no rows) when `podman kube play` cannot run here.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_podman import _ms
from services.agent.runtimes.base import RuntimeEvent, StartSpec
from services.agent.runtimes.podman.cli import PodmanCli
from services.agent.runtimes.podman_kube import PodmanKubeRuntime
from tests.test_podman_helpers import IMAGE_RULES, kube_unusable, remove_agent_containers

IMAGE = "localhost/ank-test/sleepy:latest"
TARGET = "<= 1.0x raw podman kube play"


def _yaml(pod: str) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  restartPolicy: Never\n"
        f"  containers:\n  - name: c\n    image: {IMAGE}\n"
    )


def _raw_play(cli: PodmanCli, folder: Path) -> float:
    """Seconds of one `podman kube play` (then torn down, not timed)."""
    manifest = folder / f"raw-{uuid.uuid4().hex[:8]}.yaml"
    manifest.write_text(_yaml(manifest.stem))
    started = time.monotonic()
    result = cli.run(["kube", "play", str(manifest)], timeout=300)
    took = time.monotonic() - started
    cli.run(["kube", "down", str(manifest)], timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"podman kube play failed: {result.stderr.strip()}")
    return took


def _connector_play(runtime: PodmanKubeRuntime, agent: str, index: int) -> float:
    running = threading.Event()

    def notify(event: RuntimeEvent) -> None:
        if event.kind == "running":
            running.set()

    pod = f"bench-{agent}-{index}"
    config = "manifest: |\n" + "".join(f"  {line}\n" for line in _yaml(pod).splitlines())
    spec = StartSpec(agent=agent, workload=f"kube{index}", instance="b", runtime_config=config)
    started = time.monotonic()
    handle = runtime.create(spec, notify)
    if not running.wait(60):
        raise RuntimeError("no running event within 60 s")
    took = time.monotonic() - started
    runtime.remove(handle)
    return took


def run(quick: bool = False) -> list[dict[str, Any]]:
    reason = kube_unusable()
    if reason:
        print(f"bench_podman_kube: skipped: {reason}")
        return []
    samples = 3 if quick else 10
    cli = PodmanCli()
    agent = f"benchk{uuid.uuid4().hex[:6]}"
    api: list[float] = []
    forced: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        through_api = PodmanKubeRuntime(Path(tmp) / "api", cli=cli, image_map=IMAGE_RULES)
        through_cli = PodmanKubeRuntime(Path(tmp) / "cli", cli=cli, image_map=IMAGE_RULES, transport="cli")
        try:
            _raw_play(cli, Path(tmp))  # warm up the storage, the image and the pause image
            through_api.service.api()  # the service up before the first sample (an agent: at its first workload)
            for i in range(samples):
                raw.append(_raw_play(cli, Path(tmp)))
                api.append(_connector_play(through_api, agent, i))
                forced.append(_connector_play(through_cli, agent, samples + i))
        finally:
            through_api.close()
            through_cli.close()
            remove_agent_containers(agent)

    def row(id_: str, name: str, samples_: list[float]) -> dict[str, Any]:
        p50, p99 = _ms(samples_)
        peer_p50, peer_p99 = _ms(raw)
        return {
            "id": id_,
            "name": name,
            "unit": "ms",
            "p50": p50,
            "p99": p99,
            "floor": None,
            "peer": peer_p50,
            "peer_p99": peer_p99,
            "target": TARGET,
            "ratio": round(p50 / peer_p50, 2) if p50 and peer_p50 else None,
            "samples": len(samples_),
            "note": "peer: raw `podman kube play`, interleaved",
        }

    return [
        row("P3-kube", "podman-kube create -> Running (connector, API)", api),
        row("P3-kube-cli", "podman-kube create -> Running (connector forced onto the CLI)", forced),
    ]
