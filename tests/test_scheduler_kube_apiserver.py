"""Kubernetes mode against a busy API server: `ank-scheduler --kubernetes` as
real processes (and KubeShell in-process), through the REAL `kubernetes`
Python client, against tests/k8s_standin.py — a faithful WIRE-LEVEL
STAND-IN for the API server (HTTP/TLS on loopback, the API server's JSON,
Status objects, chunked watch framing, RBAC from manifests/scheduler), not a
real cluster: no etcd, no admission plugins, no API priority and fairness.

What each test proves is in its name; the stand-in's simulated kubelet fails
any pod bound where it does not fit, so "no kubelet rejections" means the
scheduler's filters kept every pod off such nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.loop import EventLoop
from services.scheduler.kube_core import (
    ALREADY_BOUND,
    BOUND,
    DELETING,
    ERROR,
    GATED,
    GONE,
    PRECONDITION,
    KubeState,
    PodRef,
)
from services.scheduler.kube_shell import KubeShell, load_api_client
from tests.helpers import ROOT, stop_process, wait_for
from tests.k8s_standin import KubeStandIn, running_standin

Launch = Callable[..., subprocess.Popen[bytes]]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts `ank-scheduler --kubernetes` against a stand-in (energy: none) and stops it at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        standin: KubeStandIn, *extra: str, token: str = "standin-token", env: dict[str, str] | None = None
    ) -> Any:
        argv = [sys.executable, "-m", "services.scheduler.shell", "--kubernetes", "--energy-source", "none"]
        argv += [
            "--watch-timeout-s",
            "1",
            "--node-cache-s",
            "0.2",
            "--backoff-initial-s",
            "0.2",
            "--backoff-max-s",
            "1",
        ]
        if "--service-account-dir" not in extra:
            kubeconfig = tmp_path / f"kubeconfig-{token}"
            kubeconfig.write_text(standin.kubeconfig(token))
            argv += ["--kubeconfig", str(kubeconfig)]
        proc = subprocess.Popen([*argv, *extra], cwd=ROOT, env={**base_env(), **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def watching(standin: KubeStandIn, proc: subprocess.Popen[bytes], calls: int = 1) -> None:
    wait_for(lambda: standin.watch_calls >= calls or proc.poll() is not None, timeout=30, what="the scheduler's watch")
    assert proc.poll() is None, "ank-scheduler --kubernetes exited"


def in_process_shell(standin: KubeStandIn, tmp_path: Path, request_timeout_s: float = 10.0) -> tuple[Any, KubeShell]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(standin.kubeconfig())
    saved = os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    try:
        api_client, _ = load_api_client(str(kubeconfig))
    finally:
        if saved is not None:
            os.environ["KUBERNETES_SERVICE_HOST"] = saved
    return api_client, KubeShell(api_client, KubeState(), EventLoop(), request_timeout_s=request_timeout_s)


def conditions(standin: KubeStandIn, name: str) -> dict[str, dict[str, Any]]:
    pod = standin.pod(name) or {}
    return {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}


def events_for(standin: KubeStandIn, pod: str, reason: str) -> list[dict[str, Any]]:
    with standin.cond:
        return [e for e in standin.events if e["regarding"]["name"] == pod and e["reason"] == reason]


# -- bind outcomes -----------------------------------------------------------------


def test_every_bind_answer_through_the_real_client_is_classified(tmp_path: Path) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        standin.create_pod("taken")
        standin.bind_elsewhere("taken", "n1")
        standin.create_pod("dying", finalizers=["example.com/keep"])
        standin.delete_pod("dying")  # finalizer: only a deletionTimestamp
        standin.create_pod("gated", gates=["example.com/wait"])
        old_uid = standin.create_pod("reborn")
        standin.delete_pod("reborn")
        standin.create_pod("reborn")  # same name, new uid
        free_uid = standin.create_pod("free")
        api_client, shell = in_process_shell(standin, tmp_path)
        try:
            outcome = {
                name: shell.bind_outcome(PodRef("default", name, uid), "n1")[0]
                for name, uid in [
                    ("taken", ""),
                    ("dying", ""),
                    ("gated", ""),
                    ("reborn", old_uid),
                    ("missing", ""),
                    ("free", free_uid),
                ]
            }
        finally:
            shell.stop()
            api_client.close()
        assert outcome == {
            "taken": ALREADY_BOUND,
            "dying": DELETING,
            "gated": GATED,
            "reborn": PRECONDITION,
            "missing": GONE,
            "free": BOUND,
        }
        assert standin.bindings == [("default", "free", "n1")]
        assert len(standin.conflicts) == 4


def test_a_client_side_error_is_an_error_not_a_bind(tmp_path: Path) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        standin.create_pod("p")
        api_client, shell = in_process_shell(standin, tmp_path, request_timeout_s=0)
        try:
            outcome, detail = shell.bind_outcome(PodRef("default", "p"), "n1")
        finally:
            shell.stop()
            api_client.close()
        assert outcome == ERROR and detail  # the client refused before sending anything
        assert standin.bindings == []


def test_request_timeout_zero_is_rejected_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.scheduler.shell", "--kubernetes", "--request-timeout-s", "0"],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"--request-timeout-s must be a positive number of seconds, got 0.0" in proc.stderr


def test_gated_pod_is_not_attempted_until_ungated(launch: Launch) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        proc = launch(standin)
        watching(standin, proc)
        standin.create_pod("gated", gates=["example.com/quota"])
        wait_for(lambda: any(p[1] == "gated" for p in standin.status_patches), timeout=15, what="SchedulingGated")
        assert conditions(standin, "gated")["PodScheduled"]["reason"] == "SchedulingGated"
        standin.create_pod("other")  # a later cycle runs...
        wait_for(lambda: standin.node_of("other"), timeout=15, what="other bound")
        with standin.cond:  # ...and never tried the gated pod
            assert not [r for r in standin.requests if r[2].endswith("/pods/gated/binding")]
        assert events_for(standin, "gated", "FailedScheduling") == []
        standin.ungate("gated")
        wait_for(lambda: standin.node_of("gated"), timeout=15, what="gated bound once ungated")
        assert standin.conflicts == [] and standin.forbidden == []


def test_pod_deleted_while_pending_is_dropped(launch: Launch) -> None:
    with running_standin() as standin:
        proc = launch(standin)  # no nodes yet: pods stay pending
        watching(standin, proc)
        standin.create_pod("kept", finalizers=["example.com/keep"])
        standin.create_pod("gone")
        wait_for(lambda: len(standin.status_patches) >= 2, timeout=15, what="both Unschedulable")
        standin.delete_pod("kept")  # deletionTimestamp only
        standin.delete_pod("gone")
        standin.add_node("n1")
        standin.create_pod("later")
        wait_for(lambda: standin.node_of("later"), timeout=15, what="later bound")
        assert [b[1] for b in standin.bindings] == ["later"]
        assert standin.conflicts == []


# -- the kubelet's filters ---------------------------------------------------------


def test_the_stand_in_kubelet_fails_a_pod_bound_where_it_does_not_fit(tmp_path: Path) -> None:
    """The counterfactual of the next test: without the scheduler's filters, such binds fail on the node."""
    with running_standin() as standin:
        standin.add_node("small", allocatable={"cpu": "1", "memory": "1Gi", "pods": "10"})
        standin.create_pod("hog", requests={"cpu": "2"})
        api_client, shell = in_process_shell(standin, tmp_path)
        try:
            assert shell.bind_outcome(PodRef("default", "hog"), "small")[0] == BOUND
        finally:
            shell.stop()
            api_client.close()
        assert standin.kubelet_rejections == [("hog", "Outcpu")]
        assert (standin.pod("hog") or {})["status"]["phase"] == "Failed"


def test_binds_only_where_the_kubelet_admits_and_reports_unschedulable_through_pods_status(launch: Launch) -> None:
    with running_standin() as standin:
        # "a-full" sorts first (energy ties): without NodeResourcesFit every pod would go there.
        standin.add_node("a-full", allocatable={"cpu": "1", "memory": "2Gi", "pods": "10"}, labels={"zone": "x"})
        standin.add_node("b-free", allocatable={"cpu": "4", "memory": "8Gi", "pods": "10"}, labels={"zone": "y"})
        standin.create_pod("resident", requests={"cpu": "900m"}, node_name="a-full", host_ports=[9000])
        proc = launch(standin)
        watching(standin, proc)
        standin.create_pod("cpu", requests={"cpu": "500m"})
        standin.create_pod("port", host_ports=[9000])
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["y"]}]}]
                }
            }
        }
        standin.create_pod("zoned", affinity=affinity)
        standin.create_pod("huge", requests={"cpu": "16"})
        for name in ("cpu", "port", "zoned"):
            wait_for(lambda n=name: standin.node_of(n), timeout=15, what=f"{name} bound")  # type: ignore[misc]
            assert standin.node_of(name) == "b-free"
        wait_for(lambda: "PodScheduled" in conditions(standin, "huge"), timeout=15, what="huge's PodScheduled")
        condition = conditions(standin, "huge")["PodScheduled"]
        assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
        assert condition["message"].startswith("0/2 nodes are available: 2 Insufficient cpu")
        [event] = wait_for(lambda: events_for(standin, "huge", "FailedScheduling"), what="FailedScheduling")
        assert event["type"] == "Warning" and event["action"] == "Scheduling"
        assert standin.kubelet_rejections == []
        assert standin.forbidden == []


# -- a busy API server -------------------------------------------------------------


@pytest.mark.slow
def test_errors_throttling_and_watch_error_events_are_survived(launch: Launch) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        proc = launch(standin)
        watching(standin, proc)
        standin.fail("POST", r"/pods/first/binding$", 500)
        standin.create_pod("first")
        wait_for(lambda: standin.node_of("first"), timeout=15, what="first bound after a 500")
        [failed] = wait_for(lambda: events_for(standin, "first", "FailedScheduling"), what="the 500 reported")
        assert "binding failed: HTTP 500" in failed["note"]
        calls = standin.watch_calls
        standin.watch_error(504)  # ERROR event 504 Timeout on the open watch
        wait_for(lambda: standin.watch_calls > calls, timeout=15, what="the watch resumed after 504")
        standin.fail("GET", r"^/api/v1/pods$", 429, times=2, retry_after=1)
        standin.fail("POST", r"/binding$", 503)
        standin.watch_error(500)
        standin.create_pod("second")
        wait_for(lambda: standin.node_of("second"), timeout=20, what="second bound after 429s, 503 and a 500 event")
        assert proc.poll() is None
        assert len(standin.bindings) == 2 and standin.conflicts == []


@pytest.mark.slow
def test_bookmarks_keep_a_quiet_watch_from_relisting_and_expired_history_relists(launch: Launch) -> None:
    with running_standin(history_s=2.0, bookmark_interval_s=0.3) as standin:
        standin.add_node("n1")
        proc = launch(standin)
        watching(standin, proc)
        lists = standin.list_calls
        # Others' pods change all the time; ours do not: the filtered watch sees nothing but bookmarks.
        for i in range(10):  # 5 s: history older than 2 s is gone meanwhile
            standin.create_pod(f"noise-{i}", scheduler_name="default-scheduler")
            time.sleep(0.5)
        assert standin.bookmarks_sent > 0
        assert standin.list_calls == lists  # bookmarks carried the watch past the expired history
        standin.send_bookmarks = False
        for i in range(10):
            standin.create_pod(f"more-noise-{i}", scheduler_name="default-scheduler")
            time.sleep(0.5)
        wait_for(lambda: standin.list_calls > lists, timeout=15, what="a re-list after 410 Expired")
        standin.create_pod("ours")
        wait_for(lambda: standin.node_of("ours"), timeout=15, what="ours bound")


def test_watch_wire_format_deleted_carries_the_previous_object_and_unknown_fields_are_400(tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.watch.watch import iter_resp_lines

    with running_standin() as standin:
        standin.add_node("n1")
        standin.create_pod("p")
        start_rv = str(standin.rv)
        standin.bind_elsewhere("p", "n1")  # leaves the pending selector
        standin.create_pod("f", finalizers=["example.com/x"])
        standin.delete_pod("f")  # MODIFIED: deletionTimestamp
        standin.remove_finalizers("f")  # DELETED
        api_client, shell = in_process_shell(standin, tmp_path)
        try:
            api = client.CoreV1Api(api_client)
            response = api.list_pod_for_all_namespaces(
                field_selector="spec.nodeName=",
                watch=True,
                resource_version=str(int(start_rv) - 1),
                timeout_seconds=1,
                _preload_content=False,
            )
            events = [json.loads(line) for line in iter_resp_lines(response)]
            with pytest.raises(ApiException) as bad:
                api.list_pod_for_all_namespaces(field_selector="spec.color=blue", _preload_content=False)
        finally:
            shell.stop()
            api_client.close()
        kinds = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
        assert kinds[:1] == [("ADDED", "p")] and ("DELETED", "p") in kinds
        deleted_p = next(
            e["object"] for e in events if e["type"] == "DELETED" and e["object"]["metadata"]["name"] == "p"
        )
        assert "nodeName" not in deleted_p["spec"]  # the previous object...
        assert int(deleted_p["metadata"]["resourceVersion"]) > int(start_rv)  # ...with the event's version
        f_events = [e["type"] for e in events if e["object"]["metadata"]["name"] == "f"]
        assert f_events == ["ADDED", "MODIFIED", "DELETED"]
        assert "managedFields" in events[0]["object"]["metadata"]
        assert bad.value.status == 400 and "field label not supported" in str(bad.value.body)


def test_a_full_watch_cache_answers_410_expired(tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.watch.watch import iter_resp_lines

    with running_standin(history_max=3) as standin:
        start_rv = str(standin.rv)
        for i in range(5):
            standin.create_pod(f"p{i}")
        api_client, shell = in_process_shell(standin, tmp_path)
        try:
            api = client.CoreV1Api(api_client)
            response = api.list_pod_for_all_namespaces(
                watch=True, resource_version=start_rv, timeout_seconds=1, _preload_content=False
            )
            [event] = [json.loads(line) for line in iter_resp_lines(response)]
            recent = api.list_pod_for_all_namespaces(
                watch=True, resource_version=str(standin.rv - 2), timeout_seconds=1, _preload_content=False
            )
            kept = [json.loads(line)["type"] for line in iter_resp_lines(recent)]
        finally:
            shell.stop()
            api_client.close()
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"
        assert kept == ["ADDED", "ADDED"]


def test_binds_overlap_under_bind_latency(launch: Launch) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        standin.latency[("POST", "binding")] = 0.1
        proc = launch(standin, "--bind-workers", "8")
        watching(standin, proc)
        for i in range(16):
            standin.create_pod(f"p{i}")
        wait_for(lambda: len(standin.bindings) == 16, timeout=30, what="16 bindings")
        assert 1 < standin.max_concurrent_binds <= 8
        assert standin.conflicts == []


def test_rbac_from_the_cluster_role_is_enforced(tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with running_standin() as standin:
        standin.create_pod("p")
        api_client, shell = in_process_shell(standin, tmp_path)
        try:
            with pytest.raises(ApiException) as denied:
                client.CoreV1Api(api_client).delete_namespaced_pod("p", "default")
            with pytest.raises(ApiException) as other_lease:
                client.CoordinationV1Api(api_client).read_namespaced_lease("kube-scheduler", "kube-system")
        finally:
            shell.stop()
            api_client.close()
        assert denied.value.status == 403
        message = json.loads(denied.value.body or "{}")["message"]
        assert 'cannot delete resource "pods" in API group "" in the namespace "default"' in message
        assert other_lease.value.status == 403  # resourceNames: only the sdi-scheduler Lease


# -- TLS, in-cluster config, token rotation ---------------------------------------------


def test_in_cluster_tls_and_a_token_rotated_mid_run(launch: Launch, tmp_path: Path) -> None:
    with running_standin(tls=True, tmp=tmp_path) as standin:
        standin.add_node("n1")
        mount = tmp_path / "serviceaccount"
        env = standin.service_account_dir(mount, token="token-1")
        standin.tokens = {"token-1"}
        proc = launch(standin, "--service-account-dir", str(mount), "--token-refresh-s", "0.3", env=env)
        watching(standin, proc)
        standin.create_pod("before")
        wait_for(lambda: standin.node_of("before"), timeout=15, what="bound over TLS with the first token")
        standin.rotate(mount, "token-2")  # the old token stops working at once
        rotated = len(standin.requests)
        standin.create_pod("after")
        wait_for(lambda: standin.node_of("after"), timeout=20, what="bound with the rotated token")
        with standin.cond:
            assert {r[0] for r in standin.requests[rotated:]} == {"token-2"}
        assert proc.poll() is None


# -- leader election -------------------------------------------------------------------


ELECTION = [
    "--leader-elect",
    "--leader-elect-lease-duration-s",
    "6",
    "--leader-elect-renew-deadline-s",
    "4",
    "--leader-elect-retry-period-s",
    "0.5",
]


@pytest.mark.slow
def test_two_schedulers_bind_each_pod_once_and_only_the_leader_acts(launch: Launch) -> None:
    election = ELECTION
    with running_standin() as standin:
        standin.tokens = {"token-a", "token-b"}
        for name in ("n1", "n2"):
            standin.add_node(name)
        first = launch(standin, *election, "--leader-elect-identity", "a", token="token-a")
        wait_for(lambda: ("kube-system", "sdi-scheduler") in standin.leases, timeout=30, what="the Lease")
        second = launch(standin, *election, "--leader-elect-identity", "b", token="token-b")
        wait_for(
            lambda: any(r[0] == "token-b" and "leases" in r[2] for r in standin.requests),
            timeout=30,
            what="the second candidate",
        )
        for i in range(10):
            standin.create_pod(f"p{i}")
        wait_for(lambda: len(standin.bindings) == 10, timeout=20, what="10 bindings")
        with standin.cond:
            acting = {r[0] for r in standin.requests if "leases" not in r[2]}
        assert acting == {"token-a"}  # the standby neither watched, nor listed, nor bound, nor wrote
        assert standin.leases[("kube-system", "sdi-scheduler")]["spec"]["holderIdentity"] == "a"
        first.send_signal(signal.SIGKILL)  # no release: the standby waits out the lease duration
        first.wait(10)
        for i in range(10, 15):
            standin.create_pod(f"p{i}")
        wait_for(lambda: len(standin.bindings) == 15, timeout=30, what="the standby took over")
        assert standin.leases[("kube-system", "sdi-scheduler")]["spec"]["holderIdentity"] == "b"
        assert standin.leases[("kube-system", "sdi-scheduler")]["spec"]["leaseTransitions"] == 1
        pods = [b[1] for b in standin.bindings]
        assert len(pods) == len(set(pods)) == 15  # each pod bound exactly once
        assert standin.conflicts == [] and standin.forbidden == []
        assert second.poll() is None


@pytest.mark.slow
def test_a_leader_that_cannot_renew_stops_acting_and_exits(launch: Launch) -> None:
    with running_standin() as standin:
        standin.add_node("n1")
        proc = launch(standin, *ELECTION, "--leader-elect-identity", "a")
        watching(standin, proc)  # it leads: it watches
        standin.fail("PUT", r"/leases/sdi-scheduler$", 500, times=1000)  # renewals fail from now on
        assert proc.wait(30) == 1  # within the renew deadline (4 s) and a retry period
        standin.create_pod("after")
        assert standin.bindings == []
