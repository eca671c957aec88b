"""Ankaios's own system-test manifests (shared/ankaios-compat/manifests) on the
whole system: a real router, `ank-planner` and two `ank-agent` processes with
the podman runtimes, real containers. The Ankaios test images are mapped onto
the local ones with ANK_IMAGE_MAP; agent names (and fixed pod names / ports)
get a per-run suffix so that runs never touch each other's containers.

The outcomes asserted are those Ankaios shows for these manifests
(DESIGN.md §5): states, restart policies, dependencies, delete ordering,
retries of a missing image; plus adoption after an agent kill -9."""

from __future__ import annotations

import json
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial

import msgspec
import pytest
import yaml

from schemas.messages import DeleteRequest, WorkloadState
from services.bus import Bus
from tests.helpers import CORPUS, Collector, free_port, wait_for
from tests.system import System, running_system
from tests.test_podman_helpers import IMAGE_MAP, kube_unusable, podman, podman_unusable, remove_agent_containers

pytestmark = [pytest.mark.podman, pytest.mark.slow]


class Podman:
    """The module's system: planner, agent_A and agent_B (suffixed), and a
    subscriber to every workload state."""

    def __init__(self, system: System, bus: Bus, suffix: str) -> None:
        self.system = system
        self.bus = bus
        self.suffix = suffix
        self.agent_a = f"agent_A_{suffix}"
        self.agent_b = f"agent_B_{suffix}"
        self.states = Collector()
        self.applied: set[str] = set()
        bus.subscribe("ank/state/**", WorkloadState, self.states)

    def manifest(self, name: str, **replace: str) -> str:
        text = (CORPUS / name).read_text()
        text = text.replace("agent_A", self.agent_a).replace("agent_B", self.agent_b)
        for old, new in replace.items():
            text = text.replace(old, new)
        return text

    def apply(self, text: str) -> None:
        self.applied.update((yaml.safe_load(text).get("workloads") or {}).keys())
        self.bus.put("ank/desired", text.encode())

    def clean_up(self) -> None:
        """Deletes what the test applied and did not delete (a test that failed half-way)."""
        if self.applied:
            request = msgspec.json.encode(DeleteRequest(workloads=sorted(self.applied)))
            self.bus.get("ank/cmd/delete", request, timeout=10)
            self.applied.clear()

    def delete(self, *names: str) -> None:
        replies = self.bus.get("ank/cmd/delete", msgspec.json.encode(DeleteRequest(workloads=list(names))), timeout=10)
        assert replies, "the planner did not answer the delete"
        for name in names:
            self.wait(name, "Removed", timeout=30)
        self.applied.difference_update(names)

    def history(self, name: str) -> list[WorkloadState]:
        return [m for _, m in list(self.states.items) if isinstance(m, WorkloadState) and m.workload == name]

    def wait(
        self, name: str, state: str, substate: str | None = None, *, timeout: float = 30.0, after: int = 0
    ) -> WorkloadState:
        """The first state of `name` (among those after the first `after`) in state(substate)."""

        def found(_items: object) -> WorkloadState | None:
            for msg in self.history(name)[after:]:
                es = msg.execution_state
                if es.state == state and (substate is None or es.substate == substate):
                    return msg
            return None

        return self.states.wait(found, timeout, f"{name} in {state}({substate or '*'})")

    def restarted(self, name: str, timeout: float = 30.0) -> WorkloadState:
        """A Running state of `name` after at least one restart."""

        def found(_items: object) -> WorkloadState | None:
            for msg in self.history(name):
                if msg.execution_state.state == "Running" and msg.restart_count >= 1:
                    return msg
            return None

        return self.states.wait(found, timeout, f"{name} running again after a restart")

    def container(self, workload: str) -> dict[str, str]:
        """The workload's one container: id, state, start time."""
        out = podman(
            "ps", "-a", "--filter", f"label=ank.workload={workload}", "--filter", f"label=ank.agent={self.agent_a}",
            "--format", "json",
        ).stdout  # fmt: skip
        rows = json.loads(out or "[]")
        assert len(rows) == 1, f"{workload}: {len(rows)} containers"
        return {"id": rows[0]["Id"], "state": rows[0]["State"], "started": str(rows[0]["StartedAt"])}


@pytest.fixture(scope="module")
def sut(router: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:6]
    base = tmp_path_factory.mktemp("podman-system")
    bus = Bus("podman-system-test", server=router)
    try:
        with running_system(router, base) as system:
            system.env["ANK_IMAGE_MAP"] = IMAGE_MAP
            system.planner()
            podman_system = Podman(system, bus, suffix)
            system.agent(podman_system.agent_a, "--stop-grace", "3")
            system.agent(podman_system.agent_b, "--stop-grace", "3")
            wait_for(lambda: "planner up" in system.log("planner"), 30, "the planner")
            for agent in (podman_system.agent_a, podman_system.agent_b):
                wait_for(partial(_agent_up, system, agent), 30, f"agent {agent}")
            wait_for(lambda: len(bus.alive("ank/agents/*")) >= 2, 30, "agents alive")
            yield podman_system
    finally:
        bus.close()
        remove_agent_containers(f"agent_A_{suffix}")
        remove_agent_containers(f"agent_B_{suffix}")


def _agent_up(system: System, agent: str) -> bool:
    return " up: runtimes" in system.log(f"agent-{agent}")


def _deletes_what_it_applied(sut: Podman) -> Iterator[None]:
    yield
    sut.clean_up()


def test_default_manifest_runs_sleepy_and_the_hello_workloads_succeed(sut: Podman) -> None:
    sut.apply(sut.manifest("default.yaml"))
    sleepy = sut.wait("sleepy", "Running", "Ok")
    assert sleepy.agent == sut.agent_a
    for hello in ("hello1", "hello2", "hello3"):
        assert sut.wait(hello, "Succeeded", "Ok").agent == sut.agent_b
    assert sut.container("sleepy")["state"] == "running"
    sut.delete("sleepy", "hello1", "hello2", "hello3")
    wait_for(lambda: podman("ps", "-aq", "--filter", "label=ank.workload=sleepy").stdout.strip() == "", 10)


def test_restart_policies_restart_as_ankaios_does(sut: Podman) -> None:
    if kube_unusable():
        pytest.skip(kube_unusable())
    pod = f"kube_restarted_always_{sut.suffix}"
    sut.apply(sut.manifest("state_with_restart_policies.yaml", **{"name: kube_restarted_always": f"name: {pod}"}))
    # ALWAYS: runs again after its exit 0; ON_FAILURE: after exit 1, Failed(ExecFailed) first
    assert sut.restarted("restarted_always").restart_count >= 1
    failed = sut.wait("restarted_on_failure", "Failed", "ExecFailed", timeout=20)
    assert failed.exit_code == 1
    sut.restarted("restarted_on_failure")
    kube_failed = sut.wait("kube_restarted_always", "Failed", "ExecFailed", timeout=20)
    assert kube_failed.exit_code == 1
    sut.restarted("kube_restarted_always")
    # NEVER (explicit or by default): Succeeded once, never started again
    for never in ("restarted_never", "default_restarted_never"):
        sut.wait(never, "Succeeded", "Ok")
        assert [m.execution_state.state for m in sut.history(never)].count("Running") == 1
        assert sut.history(never)[-1].restart_count == 0
    sut.delete(
        "restarted_always",
        "restarted_never",
        "default_restarted_never",
        "restarted_on_failure",
        "kube_restarted_always",
    )


def test_dependencies_hold_workloads_until_their_condition(sut: Podman) -> None:
    sut.apply(sut.manifest("default_config_with_dependencies.yaml"))
    sut.wait("workload_D", "Succeeded", "Ok")
    # workload_B waits for workload_C (which does not exist), workload_A for workload_B
    sut.wait("workload_B", "Pending", "WaitingToStart")
    sut.wait("workload_A", "Pending", "WaitingToStart")
    assert all(m.execution_state.state == "Pending" for m in sut.history("workload_A"))
    sut.delete("workload_A", "workload_B", "workload_D")


def test_deleting_a_needed_backend_waits_until_its_frontend_is_gone(sut: Podman) -> None:
    sut.apply(sut.manifest("delete_workloads_with_dependencies.yaml"))
    sut.wait("backend", "Running", "Ok")
    sut.wait("frontend", "Running", "Ok")
    replies = sut.bus.get("ank/cmd/delete", msgspec.json.encode(DeleteRequest(workloads=["backend"])), timeout=10)
    assert replies
    sut.wait("backend", "Stopping", "WaitingToStop")
    assert sut.container("backend")["state"] == "running"
    sut.delete("frontend")
    sut.wait("backend", "Removed")


def test_wrong_image_name_keeps_retrying_with_the_reason(sut: Podman) -> None:
    sut.apply(sut.manifest("podman_wrong_image_name.yaml"))

    def retry(number: int) -> WorkloadState | None:
        for msg in sut.history("hello1"):
            es = msg.execution_state
            if (es.state, es.substate) == ("Pending", "Starting") and f"Retry {number}" in es.additional_info:
                return msg
        return None

    first = wait_for(lambda: retry(1), timeout=20, what="a first retry")
    assert "image_typo" in first.execution_state.additional_info
    assert first.agent == sut.agent_a
    wait_for(lambda: retry(2), timeout=20, what="a second retry")
    assert _container_id(sut.agent_a, "hello1") == ""
    sut.delete("hello1")


def test_manifest_configs_render_the_port_and_the_greeting(sut: Podman) -> None:
    port = str(free_port())
    sut.apply(sut.manifest("manifest_with_configs.yaml", **{'"8081"': f'"{port}"'}))
    sut.wait("nginx", "Running", "Ok")
    page = wait_for(lambda: _get(f"http://127.0.0.1:{port}/"), timeout=10, what="nginx answers")
    assert "Welcome to nginx!" in page
    sut.wait("greeting_person", "Succeeded", "Ok")
    logs = podman("logs", _container_id(sut.agent_a, "greeting_person")).stdout
    assert "Hello Chris Smith(age: 40)" in logs
    assert "John Doe" not in logs
    sut.delete("nginx", "greeting_person")


def test_simple_kube_pod_runs(sut: Podman) -> None:
    if kube_unusable():
        pytest.skip(kube_unusable())
    pod = f"simple-pod-{sut.suffix}"
    sut.apply(sut.manifest("simple_kube.yaml", **{"simple-pod": pod}))
    sut.wait("simple-kube", "Running", "Ok", timeout=30)
    assert podman("pod", "exists", pod).returncode == 0
    sut.delete("simple-kube")
    wait_for(lambda: podman("pod", "exists", pod).returncode == 1, 15, "the pod removed")


TWO_SLEEPIES = """\
apiVersion: v1
workloads:
  {first}:
    runtime: podman
    agent: {agent}
    restartPolicy: ALWAYS
    runtimeConfig: |
      image: ghcr.io/eclipse-ankaios/tests/sleepy:latest
  {second}:
    runtime: podman
    agent: {agent}
    restartPolicy: ALWAYS
    runtimeConfig: |
      image: ghcr.io/eclipse-ankaios/tests/sleepy:latest
"""


def test_agent_kill9_and_restart_adopts_the_running_container(sut: Podman) -> None:
    sut.apply(TWO_SLEEPIES.format(agent=sut.agent_a, first="keeper", second="keeper2"))
    sut.wait("keeper", "Running", "Ok")
    sut.wait("keeper2", "Running", "Ok")
    before = sut.container("keeper")
    seen = len(sut.history("keeper"))
    sut.system.kill(f"agent-{sut.agent_a}", signal.SIGKILL)
    sut.system.agent(sut.agent_a, "--stop-grace", "3")
    wait_for(lambda: "adopt: keeper " in sut.system.log(f"agent-{sut.agent_a}"), 30, "the agent adopts keeper")
    assert sut.container("keeper") == before  # same container, not restarted
    # the planner marks it AgentDisconnected while no agent owns it; nothing else happens to it
    after = [m.execution_state.state for m in sut.history("keeper")[seen:]]
    assert set(after) <= {"Running", "AgentDisconnected"}, after
    # still watched: a crash is seen and restarted (ALWAYS)
    podman("kill", before["id"])
    sut.restarted("keeper")
    sut.delete("keeper", "keeper2")


def test_changed_config_replaces_only_that_container(sut: Podman) -> None:
    text = TWO_SLEEPIES.format(agent=sut.agent_a, first="steady", second="changing")
    sut.apply(text)
    sut.wait("steady", "Running", "Ok")
    sut.wait("changing", "Running", "Ok")
    steady, changing = sut.container("steady"), sut.container("changing")
    seen = len(sut.history("changing"))
    sut.apply(text + "      commandOptions: [--env, V=2]\n")  # the last workload's runtimeConfig
    wait_for(lambda: _container_id(sut.agent_a, "changing") not in ("", changing["id"]), 20, "a new container")
    sut.wait("changing", "Running", "Ok", after=seen)
    assert sut.container("steady") == steady
    env = podman("inspect", "--format", "{{json .Config.Env}}", _container_id(sut.agent_a, "changing")).stdout
    assert "V=2" in env
    sut.delete("steady", "changing")


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _container_id(agent: str, workload: str) -> str:
    labels = ["--filter", f"label=ank.agent={agent}", "--filter", f"label=ank.workload={workload}"]
    out = podman("ps", "-a", "-q", "--no-trunc", *labels).stdout
    ids = out.split()
    return ids[0] if len(ids) == 1 else ""
