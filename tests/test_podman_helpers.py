"""Fixtures shared by the podman tests (imported by tests/test_podman*.py):
skip when podman cannot run here, the local test images, an agent name per
test whose containers are all removed at the end, an event recorder."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.agent.runtimes.base import RuntimeEvent
from services.agent.runtimes.podman.cli import PodmanCli, podman_env
from services.agent.runtimes.podman.core import parse_image_map

ROOT = Path(__file__).resolve().parents[1]
# Ankaios's test images → the local ones scripts/build-test-images.sh builds.
IMAGE_MAP = "ghcr.io/eclipse-ankaios/tests/=localhost/ank-test/"
IMAGE_RULES = parse_image_map(IMAGE_MAP)
ALPINE = "ghcr.io/eclipse-ankaios/tests/alpine:latest"
SLEEPY = "ghcr.io/eclipse-ankaios/tests/sleepy:latest"

_images_ready: str | None = None  # "" ok, else why not


def podman_unusable() -> str:
    """Why podman cannot run the tests here ("" when it can); builds the images once."""
    global _images_ready
    if _images_ready is not None:
        return _images_ready
    if shutil.which("podman") is None:
        _images_ready = "podman is not installed (make system-deps)"
        return _images_ready
    env = podman_env()
    try:
        info = subprocess.run(["podman", "info"], capture_output=True, text=True, env=env, timeout=60)
        if info.returncode != 0:
            _images_ready = f"podman info fails: {info.stderr.strip()[:300]}"
            return _images_ready
        built = subprocess.run(
            ["bash", str(ROOT / "scripts/build-test-images.sh")], capture_output=True, text=True, env=env, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _images_ready = f"podman does not answer: {exc}"
        return _images_ready
    _images_ready = "" if built.returncode == 0 else f"test images cannot be built: {built.stderr.strip()[-300:]}"
    return _images_ready


def kube_unusable() -> str:
    """Why `podman kube play` cannot run here ("" when it can): it builds its
    pause image from catatonit."""
    reason = podman_unusable()
    if reason:
        return reason
    if shutil.which("catatonit") is None and shutil.which("catatonit", path="/usr/libexec/podman") is None:
        return "podman kube play needs catatonit (apt-get install catatonit)"
    return ""


@pytest.fixture
def podman_agent() -> Iterator[str]:
    """A fresh agent name; every container and pod labelled with it is removed afterwards."""
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    agent = f"t{uuid.uuid4().hex[:8]}"
    try:
        yield agent
    finally:
        remove_agent_containers(agent)


def remove_agent_containers(agent: str) -> None:
    cli = PodmanCli()
    pods = cli.run(["ps", "-a", "--filter", f"label=ank.agent={agent}", "--format", "{{.PodName}}"], timeout=60)
    cli.run(["rm", "-f", "-t", "0", "--filter", f"label=ank.agent={agent}"], timeout=60)
    names = {name for name in pods.stdout.split() if name}
    if names:
        cli.run(["pod", "rm", "-f", "-t", "0", *names], timeout=60)


class Events:
    """RuntimeEvents as a connector notifies them, from any thread."""

    def __init__(self) -> None:
        self.items: list[tuple[float, RuntimeEvent]] = []
        self._cond = threading.Condition()

    def __call__(self, event: RuntimeEvent) -> None:
        with self._cond:
            self.items.append((time.monotonic(), event))
            self._cond.notify_all()

    def kinds(self, workload: str | None = None) -> list[str]:
        with self._cond:
            return [e.kind for _, e in self.items if workload is None or e.workload == workload]

    def wait(
        self, kind: str, workload: str | None = None, timeout: float = 20.0, count: int = 1
    ) -> tuple[float, RuntimeEvent]:
        """The `count`-th event of this kind (and workload); fails after timeout."""

        def found() -> list[tuple[float, RuntimeEvent]]:
            return [(t, e) for t, e in self.items if e.kind == kind and (workload is None or e.workload == workload)]

        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {kind!r} event #{count} for {workload} in {timeout}s: {self.items}")
                self._cond.wait(remaining)
            return found()[count - 1]


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return PodmanCli().run(list(args), timeout=timeout)


def containers_of(agent: str) -> list[str]:
    out = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=ank.agent={agent}").stdout
    return out.split()


__all__ = ["ALPINE", "IMAGE_MAP", "IMAGE_RULES", "SLEEPY", "Events", "containers_of", "podman_agent"]
