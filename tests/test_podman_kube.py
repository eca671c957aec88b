"""The `podman-kube` connector against real podman: `kube play` / `kube down`
of Ankaios's simple_kube manifest (images mapped onto the local test images)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.agent.runtimes.base import StartError, StartSpec
from services.agent.runtimes.podman import PodmanRuntime
from services.agent.runtimes.podman_kube import PodmanKubeRuntime
from tests.test_podman_helpers import IMAGE_RULES, Events, containers_of, kube_unusable, podman, podman_agent

pytestmark = [pytest.mark.podman, pytest.mark.slow]
__all__ = ["podman_agent"]  # the fixture, imported for pytest


def kube_config(pod: str, *containers: tuple[str, str]) -> str:
    lines = [
        "manifest: |",
        "  apiVersion: v1",
        "  kind: Pod",
        "  metadata:",
        f"    name: {pod}",
        "  spec:",
        "    restartPolicy: Never",
        "    containers:",
    ]
    for name, script in containers:
        lines += [
            f"    - name: {name}",
            "      image: ghcr.io/eclipse-ankaios/tests/alpine:latest",
            f'      command: ["/bin/sh", "-c", "{script}"]',
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _kube_usable() -> None:
    reason = kube_unusable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[PodmanKubeRuntime]:
    rt = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES)
    yield rt
    rt.close()


def spec(agent: str, workload: str, config: str, **kw: object) -> StartSpec:
    return StartSpec(agent=agent, workload=workload, instance="k1", runtime_config=config, **kw)  # type: ignore[arg-type]


def test_kube_pod_runs_and_stops_and_down_removes_the_pod(runtime: PodmanKubeRuntime, podman_agent: str) -> None:
    events = Events()
    pod = f"simple-pod-{podman_agent}"
    handle = runtime.create(spec(podman_agent, "simple-kube", kube_config(pod, ("c", "sleep 30"))), events)
    events.wait("running")
    assert handle.id == pod
    assert runtime.transport == "api"  # played through podman's API service
    assert handle.record["transport"] == "api"
    # Ankaios's bookkeeping volumes name the instance and hold the manifest and the pods.
    base = f"simple-kube.k1.{podman_agent}"
    pods = podman("volume", "inspect", "--format", "{{.Labels.data}}", f"{base}.pods")
    assert pods.returncode == 0, pods.stderr
    assert json.loads(base64.b64decode(pods.stdout.strip())) == [pod]
    config = podman("volume", "inspect", "--format", "{{.Labels.data}}", f"{base}.config")
    assert f"name: {pod}" in json.loads(base64.b64decode(config.stdout.strip()))["manifest"]
    runtime.stop(handle, grace_s=1)
    events.wait("exited")
    runtime.remove(handle)
    assert podman("pod", "exists", pod).returncode == 1
    for volume in (f"{base}.pods", f"{base}.config"):
        assert podman("volume", "exists", volume).returncode == 1, volume
    assert containers_of(podman_agent) == []
    assert events.kinds() == ["running", "exited"]


def test_kube_workload_runs_when_all_containers_run_and_exits_with_the_failing_code(
    runtime: PodmanKubeRuntime, podman_agent: str
) -> None:
    events = Events()
    config = kube_config(f"two-{podman_agent}", ("ok", "sleep 1; exit 0"), ("bad", "sleep 1.5; exit 4"))
    handle = runtime.create(spec(podman_agent, "two", config), events)
    events.wait("exited")
    assert events.kinds() == ["running", "exited"]
    assert events.wait("exited")[1].exit_code == 4
    assert sorted(runtime.logs(handle)) == []  # they print nothing
    runtime.remove(handle)


def test_kube_files_are_a_permanent_start_error(runtime: PodmanKubeRuntime, podman_agent: str) -> None:
    with pytest.raises(StartError) as caught:
        runtime.create(spec(podman_agent, "f", kube_config("p", ("c", "true")), files=[("/x", b"")]), Events())
    assert caught.value.permanent is True


def test_kube_missing_image_is_retryable_and_leaves_no_pod(runtime: PodmanKubeRuntime, podman_agent: str) -> None:
    config = kube_config(f"typo-{podman_agent}", ("c", "true")).replace(
        "ghcr.io/eclipse-ankaios/tests/alpine:latest", "localhost/image_typo:latest"
    )
    with pytest.raises(StartError) as caught:
        runtime.create(spec(podman_agent, "typo", config), Events())
    assert caught.value.permanent is False
    assert podman("pod", "exists", f"typo-{podman_agent}").returncode == 1


def test_kube_adopt_returns_a_running_pod(tmp_path: Path, podman_agent: str) -> None:
    before = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES)
    events = Events()
    try:
        handle = before.create(
            spec(podman_agent, "kept", kube_config(f"kept-{podman_agent}", ("c", "sleep 60"))), events
        )
        events.wait("running")
    finally:
        before.close()
    after = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES)
    later = Events()
    try:
        assert after.adopt([handle], later) == [handle]
        after.stop(handle, 0)
        later.wait("exited")
        after.remove(handle)
    finally:
        after.close()


def test_kube_forced_cli_fallback_runs_reports_and_stops(tmp_path: Path, podman_agent: str) -> None:
    runtime = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES, transport="cli")
    events = Events()
    pod = f"viacli-{podman_agent}"
    base = f"viacli.k1.{podman_agent}"
    try:
        assert runtime.transport == "cli"
        assert runtime.service.child is None  # no service started at all
        assert runtime.available() is True
        handle = runtime.create(spec(podman_agent, "viacli", kube_config(pod, ("c", "sleep 30"))), events)
        events.wait("running")
        assert handle.record["transport"] == "cli"
        assert podman("volume", "exists", f"{base}.pods").returncode == 0
        runtime.stop(handle, 1.0)
        events.wait("exited")
        runtime.remove(handle)
        assert podman("pod", "exists", pod).returncode == 1
        assert podman("volume", "exists", f"{base}.pods").returncode == 1
        assert containers_of(podman_agent) == []
        assert events.kinds() == ["running", "exited"]
    finally:
        runtime.close()


def test_kube_play_option_reaches_the_pod_through_the_api(runtime: PodmanKubeRuntime, podman_agent: str) -> None:
    events = Events()
    config = kube_config(f"nonet-{podman_agent}", ("c", "ls /sys/class/net")) + "playOptions: [--network=none]\n"
    handle = runtime.create(spec(podman_agent, "nonet", config), events)
    assert events.wait("exited")[1].exit_code == 0
    assert (runtime.transport, handle.record["transport"]) == ("api", "api")
    assert list(runtime.logs(handle)) == ["lo"]  # no network but loopback: --network none was applied
    runtime.remove(handle)
    assert podman("pod", "exists", f"nonet-{podman_agent}").returncode == 1


def test_kube_general_options_play_through_the_cli_beside_the_api(
    runtime: PodmanKubeRuntime, podman_agent: str
) -> None:
    events = Events()
    pod = f"general-{podman_agent}"
    config = kube_config(pod, ("c", "sleep 30")) + "generalOptions: [--log-level, error]\n"
    handle = runtime.create(spec(podman_agent, "general", config), events)
    events.wait("running")
    assert handle.record["transport"] == "cli"  # podman's own options: only its CLI takes them
    runtime.stop(handle, 1.0)
    events.wait("exited")
    runtime.remove(handle)
    assert podman("pod", "exists", pod).returncode == 1
    assert containers_of(podman_agent) == []


def test_kube_shares_the_podman_connectors_api_service_until_both_close(tmp_path: Path) -> None:
    containers = PodmanRuntime(tmp_path, image_map=IMAGE_RULES)
    kube = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES)
    try:
        assert kube.service is containers.service
        assert kube.service.api() is not None  # decided once, for both
        assert (kube.transport, containers.transport) == ("api", "api")
        child = kube.service.child
        kube.close()
        kube.close()  # twice: still one user less
        assert containers.service.api() is not None and containers.available() is True
        assert child is None or child.poll() is None  # still serving the podman connector
    finally:
        kube.close()
        containers.close()
    assert child is None or child.poll() is not None  # gone with the last of them


def test_kube_leftover_pod_of_the_same_name_gives_way(runtime: PodmanKubeRuntime, podman_agent: str) -> None:
    pod = f"leftover-{podman_agent}"
    made = podman("pod", "create", "--name", pod)
    assert made.returncode == 0, made.stderr
    events = Events()
    handle = runtime.create(spec(podman_agent, "leftover", kube_config(pod, ("c", "exit 3"))), events)
    assert events.wait("exited")[1].exit_code == 3  # played over it (replace=true)
    assert handle.record["transport"] == "api"
    runtime.remove(handle)
    assert podman("pod", "exists", pod).returncode == 1


@pytest.mark.parametrize("transport", ["api", "cli"])
def test_kube_container_that_cannot_start_is_a_start_error_and_leaves_no_pod(
    tmp_path: Path, podman_agent: str, transport: str
) -> None:
    runtime = PodmanKubeRuntime(tmp_path, image_map=IMAGE_RULES, transport=transport)
    pod = f"nocmd-{podman_agent}"
    config = kube_config(pod, ("c", "true")).replace('["/bin/sh", "-c", "true"]', '["/no/such/program"]')
    try:
        with pytest.raises(StartError, match="no/such/program"):
            runtime.create(spec(podman_agent, "nocmd", config), Events())
        assert runtime.transport == transport
        assert podman("pod", "exists", pod).returncode == 1
        assert containers_of(podman_agent) == []
    finally:
        runtime.close()


def test_kube_stop_through_the_api_pays_the_grace_once_for_all_containers(
    runtime: PodmanKubeRuntime, podman_agent: str
) -> None:
    events = Events()
    # `sleep` as PID 1 ignores SIGTERM: each container waits out the whole grace
    config = kube_config(f"graces-{podman_agent}", ("a", "sleep 60"), ("b", "sleep 60"))
    handle = runtime.create(spec(podman_agent, "graces", config), events)
    events.wait("running")
    asked = time.monotonic()
    runtime.stop(handle, grace_s=4)
    assert events.wait("exited")[1].exit_code == 137  # SIGKILL after the grace
    # one after the other would take two graces (8 s); together one, plus podman's own time
    assert time.monotonic() - asked < 7.5
    runtime.remove(handle)
