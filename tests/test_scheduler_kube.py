"""Kubernetes mode: the pure translations and state machine
(services.scheduler.kube_core), and `ank-scheduler --kubernetes` as a real process
using the REAL `kubernetes` Python client against tests/k8s_standin.py — a
wire-level STAND-IN for the API server, not a real cluster. Node energy comes
over a real Zenoh router (ank/energy/<node>)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schemas.messages import EnergyReport
from services.bus import Bus
from services.bus.loop import EventLoop
from services.scheduler.framework import EnergyReported, Tick
from services.scheduler.kube_core import (
    ALREADY_BOUND,
    BOUND,
    ERROR,
    BindAnswered,
    BindPod,
    Decision,
    KubeConfig,
    KubeEvent,
    KubeState,
    NodesListed,
    PodRef,
    PodsListed,
    PodUnschedulable,
    PodWatched,
    next_wake_ms,
    node_view,
    request_for_pod,
    step,
)
from services.scheduler.kube_shell import KubeShell, load_api_client
from tests.helpers import ROOT, child_env, stop_process, wait_for
from tests.k8s_standin import KubeStandIn, running_standin

T0 = 1_700_000_000_000


def feed(core: KubeState, event: KubeEvent, now: int) -> tuple[KubeState, list[Decision]]:
    decided = step(core, event, now)
    return decided.state, decided.actions


def k8s_node(name: str, arch: str = "arm64", ready: str = "True", **spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": arch, "bot": f"tb-{name}"}},
        "spec": spec,
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]},
    }


def k8s_pod(name: str, **spec: object) -> dict[str, object]:
    annotations = spec.pop("annotations", None)
    return {
        "metadata": {
            "name": name,
            "namespace": "robots",
            "uid": "u1",
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {"schedulerName": "sdi-scheduler", **spec},
        "status": {"phase": "Pending"},
    }


def report(node: str, wh: float, now: int = T0) -> EnergyReport:
    return EnergyReport(node=node, energy_wh=wh, time_ms=now)


# -- pure ----------------------------------------------------------------------


def test_node_view_reads_ready_unschedulable_arch_taints_and_robot_energy() -> None:
    config = KubeConfig(bot_label="bot")
    node = k8s_node("n1", unschedulable=True, taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}])
    view = node_view(node, {"tb-n1": report("tb-n1", 42)}, config)
    assert (view.name, view.ready, view.unschedulable, view.arch, view.energy_wh) == ("n1", True, True, "arm64", 42)
    assert view.taints[0].key == "k"
    assert not node_view(k8s_node("n2", ready="Unknown"), {}, config).ready


def test_pod_request_carries_node_selector_arch_tolerations_and_annotations() -> None:
    pod = k8s_pod(
        "p",
        nodeSelector={"zone": "a"},
        tolerations=[{"key": "k", "operator": "Exists"}],
        annotations={"sdi.scheduler/min-energy-wh": "15", "sdi.scheduler/policy": "round-robin"},
    )
    request = request_for_pod(pod, KubeConfig())
    assert request.workload == "robots/p"
    assert request.selector == {"arch": "arm64"} and request.node_selector == {"zone": "a"}
    assert request.min_energy_wh == 15 and request.policy == "round-robin"
    assert request.tolerations[0].operator == "Exists"
    with pytest.raises(ValueError, match=r"annotation sdi\.scheduler/energy-cost-wh must be a number"):
        request_for_pod(k8s_pod("q", annotations={"sdi.scheduler/energy-cost-wh": "lots"}), KubeConfig())


def test_male_binds_to_the_arm64_ready_schedulable_node_with_most_energy() -> None:
    core = KubeState()
    core = step(
        core,
        NodesListed(
            [
                k8s_node("rich-amd", arch="amd64"),
                k8s_node("rich-notready", ready="False"),
                k8s_node("rich-cordoned", unschedulable=True),
                k8s_node("rich-tainted", taints=[{"key": "gpu", "effect": "NoSchedule"}]),
                k8s_node("mid"),
                k8s_node("poor"),
            ]
        ),
        T0,
    ).state
    for name in ("rich-amd", "rich-notready", "rich-cordoned", "rich-tainted"):
        core = step(core, EnergyReported(report(name, 99)), T0).state
    core = step(core, EnergyReported(report("mid", 60)), T0).state
    core = step(core, EnergyReported(report("poor", 20)), T0).state
    core = step(core, PodWatched("ADDED", k8s_pod("p")), T0).state
    core, out = feed(core, Tick(), T0)
    [decision] = out
    assert isinstance(decision, BindPod) and decision.placement.node == "mid"


def test_unschedulable_pod_backs_off_and_retries_at_once_on_energy() -> None:
    core = KubeState()
    core = step(core, NodesListed([k8s_node("n1")]), T0).state
    core = step(core, PodWatched("ADDED", k8s_pod("p")), T0).state
    core, out = feed(core, Tick(), T0)
    [failure] = out
    assert isinstance(failure, PodUnschedulable) and "n1: no energy report" in failure.message
    assert next_wake_ms(core) == T0 + 1000
    core = step(core, EnergyReported(report("n1", 50, T0 + 10)), T0 + 10).state
    core, out = feed(core, Tick(), T0 + 10)
    [decision] = out
    assert isinstance(decision, BindPod)


def test_bind_conflict_is_done_not_an_error_and_bind_error_backs_off() -> None:
    core = KubeState()
    core = step(core, NodesListed([k8s_node("n1")]), T0).state
    core = step(core, EnergyReported(report("n1", 50)), T0).state
    core = step(core, PodWatched("ADDED", k8s_pod("a")), T0).state
    core = step(core, PodWatched("ADDED", k8s_pod("b")), T0).state
    core, decisions = feed(core, Tick(), T0)
    assert [d.pod.name for d in decisions if isinstance(d, BindPod)] == ["a", "b"]
    core, out = feed(core, BindAnswered(PodRef("robots", "a"), ALREADY_BOUND), T0)
    assert out == []
    core, out = feed(core, BindAnswered(PodRef("robots", "b"), ERROR, "HTTP 500"), T0)
    [failure] = out
    assert isinstance(failure, PodUnschedulable) and "binding failed: HTTP 500" in failure.message
    assert list(core.pending) == ["robots/b"] and next_wake_ms(core) == T0 + 1000


def test_pods_bound_elsewhere_or_of_other_schedulers_are_not_ours() -> None:
    core = KubeState()
    core = step(core, PodWatched("ADDED", k8s_pod("x", nodeName="n9")), T0).state
    core = step(core, PodWatched("ADDED", {**k8s_pod("y"), "spec": {"schedulerName": "default-scheduler"}}), T0).state
    assert core.pending == {}
    core = step(core, PodWatched("ADDED", k8s_pod("z")), T0).state
    core = step(core, PodsListed([]), T0).state
    assert core.pending == {}


# -- through the real client against the stand-in --------------------------------


@dataclass
class KubeRun:
    standin: KubeStandIn
    energy: Bus
    proc: subprocess.Popen[bytes]

    def energise(self, nodes: dict[str, float], confirm: bool = True) -> None:
        """Publishes the nodes' first energy reports and waits until the
        scheduler has them: a probe pod pinned to the last node binds only once
        its report arrived (and the earlier ones, from the same publisher,
        arrived before it)."""
        now = time.time_ns() // 1_000_000
        for name, wh in nodes.items():
            self.energy.put(f"ank/energy/{name}", report(name, wh, now))
        if not confirm:
            return
        last = list(nodes)[-1]
        probe = f"probe-{len(self.standin.pods)}"
        self.standin.create_pod(
            probe,
            node_selector={"kubernetes.io/hostname": last},
            annotations={"sdi.scheduler/energy-cost-wh": "0"},
        )
        wait_for(lambda: self.standin.node_of(probe), timeout=10, what=f"the energy of {last} reaching the scheduler")


def kube_env(router: str) -> dict[str, str]:
    env = child_env(router)
    env.pop("KUBERNETES_SERVICE_HOST", None)  # never pick up a real in-cluster config
    return env


@pytest.fixture
def kube_run(router: str, make_bus: Callable[[str], Bus], tmp_path: Path) -> Iterator[KubeRun]:
    with running_standin() as standin:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(standin.kubeconfig())
        for name, arch in (("arm-1", "arm64"), ("arm-2", "arm64"), ("x86-1", "amd64")):
            standin.add_node(name, arch=arch)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.scheduler.shell",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--energy-source",
                "bus",
                "--watch-timeout-s",
                "1",
                "--node-cache-s",
                "0.2",
            ],
            cwd=ROOT,
            env=kube_env(router),
        )
        try:
            wait_for(lambda: standin.watch_calls or proc.poll() is not None, timeout=15, what="the scheduler's watch")
            assert proc.poll() is None, "ank-scheduler --kubernetes exited"
            yield KubeRun(standin, make_bus("robots"), proc)
        finally:
            stop_process(proc)


def events_for(standin: KubeStandIn, pod: str, reason: str) -> list[dict[str, Any]]:
    with standin.cond:
        return [e for e in standin.events if e["regarding"]["name"] == pod and e["reason"] == reason]


def test_pod_is_bound_to_the_arm64_node_with_most_energy_and_a_scheduled_event_recorded(kube_run: KubeRun) -> None:
    kube_run.energise({"x86-1": 99.0, "arm-1": 30.0, "arm-2": 80.0})
    kube_run.standin.create_pod("nav")
    wait_for(lambda: kube_run.standin.node_of("nav"), timeout=10, what="nav bound")
    assert kube_run.standin.node_of("nav") == "arm-2"
    [event] = wait_for(lambda: events_for(kube_run.standin, "nav", "Scheduled"), what="Scheduled event")
    assert event["type"] == "Normal" and "Successfully assigned default/nav to arm-2" in str(event["note"])
    assert event["apiVersion"] == "events.k8s.io/v1" and event["reportingController"] == "sdi-scheduler"
    assert event["action"] == "Binding"


def test_unschedulable_pod_gets_failed_scheduling_then_binds_when_energy_arrives(kube_run: KubeRun) -> None:
    kube_run.energise({"arm-1": 2.0})
    kube_run.standin.create_pod("heavy", annotations={"sdi.scheduler/min-energy-wh": "40"})
    [event] = wait_for(lambda: events_for(kube_run.standin, "heavy", "FailedScheduling"), what="FailedScheduling")
    assert event["type"] == "Warning"
    assert "0/3 nodes are available" in str(event["note"]) and "arm-1: energy below reserve" in str(event["note"])
    assert kube_run.standin.node_of("heavy") == ""
    kube_run.energise({"arm-1": 75.0}, confirm=False)
    wait_for(lambda: kube_run.standin.node_of("heavy"), timeout=5, what="heavy bound after energy arrived")
    assert kube_run.standin.node_of("heavy") == "arm-1"


def test_expired_resource_version_re_lists_and_still_binds(kube_run: KubeRun) -> None:
    kube_run.energise({"arm-1": 50.0})
    lists_before = kube_run.standin.list_calls
    kube_run.standin.send_bookmarks = False  # a bookmark would carry the watch past the compaction
    kube_run.standin.compact()  # the next watch from the old resourceVersion gets ERROR 410 Gone
    wait_for(lambda: kube_run.standin.list_calls > lists_before, timeout=10, what="a re-list after 410")
    kube_run.standin.create_pod("after-gone")
    wait_for(lambda: kube_run.standin.node_of("after-gone"), timeout=10, what="after-gone bound")


def test_many_pods_in_a_burst_spread_and_all_bind(kube_run: KubeRun) -> None:
    kube_run.energise({"arm-1": 50.0, "arm-2": 50.0})
    for i in range(20):
        kube_run.standin.create_pod(f"burst-{i}", annotations={"sdi.scheduler/energy-cost-wh": "2"})
    burst = lambda: [node for _, pod, node in kube_run.standin.bindings if pod.startswith("burst-")]  # noqa: E731
    wait_for(lambda: len(burst()) == 20, timeout=15, what="20 bindings")
    nodes = burst()
    assert nodes.count("arm-1") == 10 and nodes.count("arm-2") == 10
    assert kube_run.standin.binding_conflicts == 0


def test_bind_answers_409_already_bound_without_error_through_the_real_client(tmp_path: Path) -> None:
    with running_standin() as standin:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(standin.kubeconfig())
        standin.add_node("arm-1")
        standin.create_pod("taken")
        standin.bind_elsewhere("taken", "arm-1")
        standin.create_pod("free")
        saved = os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        try:
            api_client, where = load_api_client(str(kubeconfig))
        finally:
            if saved is not None:
                os.environ["KUBERNETES_SERVICE_HOST"] = saved
        assert where.startswith("kubeconfig")
        shell = KubeShell(api_client, KubeState(), EventLoop())
        try:
            assert shell.bind_outcome(PodRef("default", "taken"), "arm-1")[0] == ALREADY_BOUND
            assert shell.bind_outcome(PodRef("default", "free"), "arm-1") == (BOUND, "")
        finally:
            shell.stop()
            api_client.close()
        assert standin.binding_conflicts == 1
        assert standin.bindings == [("default", "free", "arm-1")]


def test_no_cluster_configuration_exits_with_a_clear_message(router: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.scheduler.shell", "--kubernetes", "--kubeconfig", str(tmp_path / "none")],
        cwd=ROOT,
        env=kube_env(router),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"no cluster configuration" in proc.stderr


def test_kubernetes_deploy_manifest_grants_what_the_scheduler_uses() -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "manifests/scheduler/sdi-scheduler-deploy.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert list(kinds) == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "Deployment"]
    grants = {(r, v) for rule in kinds["ClusterRole"]["rules"] for r in rule["resources"] for v in rule["verbs"]}
    for needed in [
        ("pods", "watch"),
        ("pods", "list"),
        ("pods/binding", "create"),
        ("pods/status", "patch"),
        ("nodes", "list"),
        ("events", "create"),
        ("leases", "get"),
        ("leases", "update"),
        ("leases", "create"),
    ]:
        assert needed in grants
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sdi-scheduler"
    assert {e["configMapRef"]["name"] for e in pod["containers"][0]["envFrom"]} == {
        kinds["ConfigMap"]["metadata"]["name"]
    }
    assert set(kinds["ConfigMap"]["data"]) >= {"INFLUX_URL", "INFLUX_ORG", "INFLUX_BUCKET"}


def test_containerfile_installs_the_lock_before_copying_the_code() -> None:
    """The image cannot be built here (no registry for the base image): its layer order is checked instead."""
    lines = [
        line.split()
        for line in (ROOT / "manifests/scheduler/Containerfile").read_text().splitlines()
        if line and not line.startswith("#") and not line.startswith(" ")
    ]
    steps = [" ".join(words) for words in lines]
    lock = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements/py311.lock"))
    install = next(i for i, s in enumerate(steps) if "--require-hashes" in s and s.startswith("RUN pip install"))
    code = next(i for i, s in enumerate(steps) if s.startswith("COPY services/"))
    assert lock < install < code  # a code change does not reinstall the dependencies
    assert not any(s.startswith("COPY") and "lock" not in s for s in steps[:install])
    assert "python:3.11" in steps[0]  # the lock is the Python 3.11 one
    project = next(s for s in steps[code:] if s.startswith("RUN pip install"))
    assert "--no-deps" in project  # nothing unpinned is resolved after the lock
