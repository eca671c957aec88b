"""Programs written against Ankaios's Python SDK (ankaios-sdk 1.0.1, in
tests/ci_programs/), run unchanged as process workloads: they find the
Control Interface at /run/ankaios/control_interface (the agent's mount
namespace), and get exactly what their controlInterfaceAccess allows."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.agent.control_interface import mount
from tests.helpers import ROOT, wait_for
from tests.system import System, running_system

pytestmark = pytest.mark.slow

AGENT = "ci1"
PROGRAMS = ROOT / "tests" / "ci_programs"

needs_namespace = pytest.mark.skipif(
    not mount.can_namespace(), reason="needs root for the mount namespace at /run/ankaios/control_interface"
)


@pytest.fixture(scope="module")
def system(router: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(router, tmp_path_factory.mktemp("ci")) as s:
        s.planner()
        s.agent(AGENT)
        wait_for(lambda: s.ank("get", "state", timeout=20).returncode == 0, 40, "the planner answers")
        wait_for(lambda: f'"{AGENT}"' in s.ank("get", "agents", "-o", "json").stdout, 40, f"agent {AGENT} is alive")
        yield s


def program(script: str, *args: str, allow: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    config = json.dumps({"command": sys.executable, "args": [str(PROGRAMS / script), *args]})
    workload: dict[str, Any] = {"runtime": "process", "agent": AGENT, "runtimeConfig": config, **fields}
    if allow is not None:
        workload["controlInterfaceAccess"] = {"allowRules": allow}
    return workload


def sleeper(command: str = "sleep 300") -> dict[str, Any]:
    config = json.dumps({"command": "sh", "args": ["-c", command]})
    return {"runtime": "process", "agent": AGENT, "runtimeConfig": config}


def apply(system: System, **workloads: dict[str, Any]) -> None:
    out = system.ank("apply", "--no-wait", "-", input=json.dumps({"apiVersion": "v1", "workloads": workloads}))
    assert out.returncode == 0, out.stdout + out.stderr


def output(system: System, workload: str) -> str:
    path = system.base / "agents" / AGENT / f"{workload}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_output(system: System, workload: str, text: str, timeout: float = 40) -> str:
    return wait_for(lambda: output(system, workload) if text in output(system, workload) else None, timeout, text)


def state_rule(operation: str, *masks: str) -> dict[str, Any]:
    return {"type": "StateRule", "operation": operation, "filterMasks": list(masks)}


@needs_namespace
def test_hello_reads_the_state_and_applies_a_workload_that_then_runs(system: System) -> None:
    rules = [state_rule("ReadWrite", "*"), {"type": "LogRule", "workloadNames": ["*"]}]
    apply(system, hello=program("hello.py", allow=rules))
    text = wait_output(system, "hello", "added:")
    assert "workloads: hello" in text
    assert "added: dynamic_sleeper." in text and f".{AGENT}" in text
    row = system.wait_state("dynamic_sleeper", "Running", "Ok", timeout=40)
    assert f"added: dynamic_sleeper.{row['instance']}.{AGENT}" in text  # Ankaios's instance name
    system.wait_state("hello", "Succeeded", "Ok", timeout=40)


@needs_namespace
def test_read_only_on_one_workload_gets_it_and_is_refused_anything_else(system: System) -> None:
    apply(
        system,
        x=sleeper(),
        y=sleeper(),
        reader=program("readonly.py", allow=[state_rule("Read", "desiredState.workloads.x")]),
    )
    text = wait_output(system, "reader", "done")
    assert "read x: ok: ['x']" in text
    assert "read y: refused" in text and "Access denied" in text
    assert "read all: refused" in text
    assert "write x: refused" in text
    # the refused write changed nothing: x is still the sleeper
    assert "sleep 300" in system.ank("get", "state", "-o", "json").stdout


@needs_namespace
def test_logs_stream_another_workloads_output_only_with_a_matching_log_rule(system: System) -> None:
    apply(system, screamer=sleeper("while true; do echo SCREAM; sleep 0.2; done"))
    system.wait_state("screamer", "Running", "Ok", timeout=40)
    apply(
        system,
        follower=program("logs.py", "screamer", allow=[{"type": "LogRule", "workloadNames": ["scream*"]}]),
        stranger=program("logs.py", "screamer", allow=[{"type": "LogRule", "workloadNames": ["other"]}]),
    )
    text = wait_output(system, "follower", "logs cancelled")
    assert text.count("log of screamer: SCREAM") >= 3
    text = wait_output(system, "stranger", "logs refused")
    assert "SCREAM" not in text


@needs_namespace
def test_event_subscription_delivers_state_changes(system: System) -> None:
    apply(system, watcher=program("events.py", allow=[state_rule("Read", "desiredState.workloads")]))
    wait_output(system, "watcher", "subscribed:")
    apply(system, announced=sleeper("sleep 5"))
    text = wait_output(system, "watcher", "unsubscribed")
    assert "desiredState.workloads.announced" in text
    system.wait_state("watcher", "Succeeded", "Ok", timeout=40)


@needs_namespace
def test_fifos_only_with_rules_and_an_update_keeps_or_loses_them(system: System) -> None:
    apply(system, probe=program("probe.py", allow=[state_rule("Read", "*")]), bare=program("probe.py"))
    text = wait_output(system, "bare", "env:")
    assert "fifos: False" in text
    text = wait_output(system, "probe", "env:")
    assert "fifos: True" in text and f"env: {mount.TARGET}" in text
    folders = system.base / "agents" / AGENT / "control_interface"
    assert not list(folders.glob("bare.*"))
    assert len(list(folders.glob("probe.*"))) == 1
    # an update without access: the new instance has no interface, the old one's FIFOs are gone
    apply(system, probe=program("probe.py", restartPolicy="NEVER", tags={"v": "2"}))
    wait_for(lambda: output(system, "probe").count("fifos:") == 2, 40, "the updated probe ran")
    assert output(system, "probe").rstrip().splitlines()[-2:][0].endswith("fifos: False")
    wait_for(lambda: not list(folders.glob("probe.*")), 20, "the old instance's FIFOs removed")


def test_without_a_mount_namespace_the_env_names_the_real_folder(tmp_path: Path) -> None:
    """Not root: no namespace, ANK_CONTROL_INTERFACE names the host folder."""
    if os.geteuid() == 0:
        assert mount.preexec(str(tmp_path)) is not None
    else:
        assert mount.preexec(str(tmp_path)) is None


def container(script: str, access: bool) -> dict[str, Any]:
    config = json.dumps({"image": "localhost/ank-test/busybox:latest", "commandArgs": ["sh", "-c", script]})
    workload: dict[str, Any] = {"runtime": "podman", "agent": AGENT, "runtimeConfig": config}
    if access:
        workload["controlInterfaceAccess"] = {"allowRules": [state_rule("Read", "*")]}
    return workload


# A raw Hello (ToAnkaios{hello{protocolVersion "1.0.0"}}, length-delimited) in busybox printf octal,
# then the first 3 bytes back: ControlInterfaceAccepted is 02 22 00.
RAW_HELLO = (
    "cd /run/ankaios/control_interface && printf '\\011\\012\\007\\022\\0051.0.0' > output"
    " && head -c 3 input | od -An -tx1"
)


@pytest.mark.podman
def test_podman_workloads_get_the_interface_mounted_only_with_rules(system: System) -> None:
    from tests.test_podman_helpers import podman_unusable, remove_agent_containers

    why = podman_unusable()
    if why:
        pytest.skip(why)
    try:
        apply(
            system,
            podfifo=container(RAW_HELLO, access=True),
            podbare=container("test -e /run/ankaios/control_interface && echo present || echo absent", access=False),
        )
        system.wait_state("podfifo", "Succeeded", "Ok", timeout=90)
        system.wait_state("podbare", "Succeeded", "Ok", timeout=90)
        assert "02 22 00" in system.ank("logs", "podfifo").stdout
        assert "absent" in system.ank("logs", "podbare").stdout
    finally:
        system.ank("delete", "workload", "podfifo", "podbare")
        remove_agent_containers(AGENT)


@pytest.mark.podman
def test_podman_kube_mounts_the_interface_only_into_the_target_container(system: System) -> None:
    from tests.test_podman_helpers import kube_unusable, podman, podman_unusable, remove_agent_containers

    why = podman_unusable() or kube_unusable()
    if why:
        pytest.skip(why)
    pod = f"cipod{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "target", "image": "localhost/ank-test/busybox:latest", "command": ["sh", "-c", RAW_HELLO]},
                {
                    "name": "sidecar",
                    "image": "localhost/ank-test/busybox:latest",
                    "command": ["sh", "-c", "test -e /run/ankaios/control_interface && echo present || echo absent"],
                },
            ],
        },
    }
    config = json.dumps({"controlInterfaceTarget": f"{pod}/target", "manifest": json.dumps(manifest)})
    workload = {
        "runtime": "podman-kube",
        "agent": AGENT,
        "runtimeConfig": config,
        "controlInterfaceAccess": {"allowRules": [state_rule("Read", "*")]},
    }
    try:
        apply(system, kubefifo=workload)
        wait_for(
            lambda: "02 22 00" in podman("logs", f"{pod}-target").stdout, 90, "the target container got its answer"
        )
        assert "absent" in wait_for(lambda: podman("logs", f"{pod}-sidecar").stdout, 30, "the sidecar's output")
    finally:
        system.ank("delete", "workload", "kubefifo")
        remove_agent_containers(AGENT)


@needs_namespace
def test_an_adopted_workload_keeps_its_interface_across_an_agent_kill_9(system: System) -> None:
    """Last in the module: it restarts the agent."""
    apply(system, poller=program("poller.py", allow=[state_rule("Read", "desiredState.workloads.poller")]))
    wait_output(system, "poller", "answer 2:")
    system.kill(f"agent-{AGENT}")
    answered = output(system, "poller").count("answer ")
    system.agent(AGENT)
    wait_for(lambda: output(system, "poller").count("answer ") > answered + 2, 60, "answers from the restarted agent")
    assert "['poller']" in output(system, "poller").rstrip().splitlines()[-1]
    system.ank("delete", "workload", "poller")
