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

import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_podman import interleaved, time_to_running
from bench.stats import latency_row
from services.agent.runtimes.base import StartSpec
from services.agent.runtimes.podman.cli import PodmanCli
from services.agent.runtimes.podman_kube import PodmanKubeRuntime
from tests.test_podman_helpers import IMAGE_RULES, kube_unusable

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
    pod = f"bench-{agent}-{index}"
    config = "manifest: |\n" + "".join(f"  {line}\n" for line in _yaml(pod).splitlines())
    spec = StartSpec(agent=agent, workload=f"kube{index}", instance="b", runtime_config=config)
    return time_to_running(runtime, spec, 60)


def run(quick: bool = False) -> list[dict[str, Any]]:
    reason = kube_unusable()
    if reason:
        print(f"bench_podman_kube: skipped: {reason}")
        return []
    samples = 3 if quick else 10
    cli = PodmanCli()
    agent = f"benchk{uuid.uuid4().hex[:6]}"
    api, forced, raw = interleaved(
        samples,
        agent,
        lambda folder, **kw: PodmanKubeRuntime(folder, cli=cli, image_map=IMAGE_RULES, **kw),
        lambda tmp: _raw_play(cli, tmp),
        _connector_play,
    )

    def row(id_: str, name: str, samples_: list[float]) -> dict[str, Any]:
        return latency_row(
            id_, name, samples_, peer=raw, target=TARGET, note="peer: raw `podman kube play`, interleaved"
        )

    return [
        row("P3-kube", "podman-kube create -> Running (connector, API)", api),
        row("P3-kube-cli", "podman-kube create -> Running (connector forced onto the CLI)", forced),
    ]
