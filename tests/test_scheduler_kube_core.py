"""Kubernetes mode's pure parts: the 409 classification and what each bind
outcome does, scheduling gates, the bounded bind pool, the kubelet's filters
(services.scheduler.kube_plugins), leader election decisions
(services.scheduler.kube_leader) and option checks. No I/O, no clock."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from schemas.messages import EnergyReport
from services.scheduler.framework import EnergyReported, Tick
from services.scheduler.kube_core import (
    ALREADY_BOUND,
    BOUND,
    DELETING,
    ERROR,
    GATED,
    GONE,
    PRECONDITION,
    BindAnswered,
    BindPod,
    Decision,
    KubeConfig,
    KubeEvent,
    KubeState,
    NodesListed,
    PodRef,
    PodUnschedulable,
    PodWatched,
    classify_bind_failure,
    next_wake_ms,
    request_for_pod,
    step,
)
from services.scheduler.kube_leader import (
    LeaderConfig,
    LeaderNow,
    LeaderState,
    LeaderStep,
    LeaseRead,
    LeaseWritten,
    Releasing,
)
from services.scheduler.kube_leader import lost as leader_lost
from services.scheduler.kube_leader import step as leader_step
from services.scheduler.kube_plugins import parse_quantity
from services.scheduler.kube_shell import kube_config
from services.scheduler.shell import build_parser

T0 = 1_700_000_000_000


def feed(core: KubeState, event: KubeEvent, now: int) -> tuple[KubeState, list[Decision]]:
    decided = step(core, event, now)
    return decided.state, decided.actions


PREFIX = 'Operation cannot be fulfilled on pods/binding "p": '


def node(name: str, *, cpu: str = "2", labels: dict[str, str] | None = None, pods: str = "110") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64", **(labels or {})}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": pods},
        },
    }


def pod(name: str, *, uid: str = "u1", node_name: str = "", **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {})
    requests = spec.pop("requests", None)
    ports = spec.pop("host_ports", None)
    container: dict[str, Any] = {"name": "c", "image": "i"}
    if requests:
        container["resources"] = {"requests": requests}
    if ports:
        container["ports"] = [{"containerPort": p, "hostPort": p} for p in ports]
    return {
        "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": labels},
        "spec": {
            "schedulerName": "sdi-scheduler",
            "containers": [container],
            **({"nodeName": node_name} if node_name else {}),
            **spec,
        },
        "status": {"phase": "Running" if node_name else "Pending"},
    }


def core_with(nodes: list[dict[str, Any]], assigned: list[dict[str, Any]] | None = None, **config: Any) -> KubeState:
    core = KubeState(KubeConfig(**config))
    core = step(core, NodesListed(nodes, assigned or []), T0).state
    for n in nodes:
        core = step(
            core, EnergyReported(EnergyReport(node=n["metadata"]["name"], energy_wh=50.0, time_ms=T0)), T0
        ).state
    return core


def only_bind(decisions: list[Any]) -> BindPod:
    [decision] = decisions
    assert isinstance(decision, BindPod), decision
    return decision


# -- 409s ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "outcome"),
    [
        (409, PREFIX + 'pod p is already assigned to node "n1"', ALREADY_BOUND),
        (409, PREFIX + "pod p is being deleted, cannot be assigned to a host", DELETING),
        (409, PREFIX + "pod p has non-empty .spec.schedulingGates", GATED),
        (
            409,
            'Operation cannot be fulfilled on pods "p": Precondition failed: UID in precondition: a, UID in '
            "object meta: b",
            PRECONDITION,
        ),
        (409, "Operation cannot be fulfilled: something new", ERROR),
        (404, 'pods "p" not found', GONE),
        (500, "etcdserver: leader changed", ERROR),
        (403, "forbidden", ERROR),
    ],
)
def test_every_bind_answer_is_classified_by_status_and_message(status: int, message: str, outcome: str) -> None:
    assert classify_bind_failure(status, message) == outcome


def test_a_step_returns_a_new_state_and_leaves_the_given_one_as_it_was() -> None:
    before = step(core_with([node("n1")], max_energy_age_ms=10**9), PodWatched("ADDED", pod("p")), T0).state
    after, decisions = feed(before, Tick(), T0)
    assert only_bind(decisions).placement.node == "n1"
    assert after.pending["default/p"].binding and list(after.in_flight) == ["default/p"]
    assert not before.pending["default/p"].binding and before.in_flight == {}
    assert feed(before, Tick(), T0) == (after, decisions)  # the same event on the same state decides the same


def test_each_409_is_acted_on_and_releases_the_in_flight_reservation() -> None:
    core = core_with([node("n1")], max_energy_age_ms=10**9)
    for name in ("a", "b", "c", "d"):
        core = step(core, PodWatched("ADDED", pod(name, uid=f"uid-{name}")), T0).state
    core, out = feed(core, Tick(), T0)
    assert len([d for d in out if isinstance(d, BindPod)]) == 4
    assert len(core.in_flight) == 4
    core, out = feed(core, BindAnswered(PodRef("default", "a", "uid-a"), ALREADY_BOUND), T0)
    assert out == []
    core, out = feed(core, BindAnswered(PodRef("default", "b", "uid-b"), DELETING), T0)
    assert out == []
    core, out = feed(core, BindAnswered(PodRef("default", "c", "uid-c"), GATED), T0)
    assert out == []
    core, out = feed(core, BindAnswered(PodRef("default", "d", "uid-d"), PRECONDITION), T0)
    assert out == []
    assert len(core.in_flight) == 0  # every reservation released
    assert list(core.pending) == ["default/c"]  # a, b done; d's pod is gone (its successor comes by the watch)
    assert core.pending["default/c"].gated
    core, out = feed(core, Tick(), T0 + 60_000)
    [gated] = out  # not attempted again while gated: PodScheduled=False instead
    assert isinstance(gated, PodUnschedulable) and gated.reason == "SchedulingGated"
    core = step(core, PodWatched("MODIFIED", pod("c", uid="uid-c")), T0 + 1).state  # the watch: no gates
    core, out = feed(core, Tick(), T0 + 1)
    assert only_bind(out).pod.name == "c"


def test_uid_precondition_with_a_known_successor_tries_the_successor_at_once() -> None:
    core = core_with([node("n1")])
    core = step(core, PodWatched("ADDED", pod("p", uid="old")), T0).state
    core, out = feed(core, Tick(), T0)
    only_bind(out)
    core = step(core, PodWatched("DELETED", pod("p", uid="old")), T0).state  # our bind is under way: kept
    core = step(core, PodWatched("ADDED", pod("p", uid="new")), T0).state  # recreated under the same name
    core, out = feed(core, BindAnswered(PodRef("default", "p", "old"), PRECONDITION), T0 + 5)
    assert out == []
    core, out = feed(core, Tick(), T0 + 5)
    assert only_bind(out).pod.uid == "new"


def test_a_404_about_a_pod_already_replaced_keeps_its_successor() -> None:
    core = core_with([node("n1")])
    core = step(core, PodWatched("ADDED", pod("p", uid="old")), T0).state
    core, out = feed(core, Tick(), T0)
    only_bind(out)
    core = step(core, PodWatched("DELETED", pod("p", uid="old")), T0).state
    core = step(
        core, PodWatched("ADDED", pod("p", uid="new")), T0
    ).state  # arrives before the 404 answered about the old one
    core, out = feed(core, BindAnswered(PodRef("default", "p", "old"), GONE), T0 + 5)
    assert out == []
    core, out = feed(core, Tick(), T0 + 5)
    assert only_bind(out).pod.uid == "new"


def test_a_client_side_error_is_not_a_bind() -> None:
    core = core_with([node("n1")])
    core = step(core, PodWatched("ADDED", pod("p")), T0).state
    core, out = feed(core, Tick(), T0)
    only_bind(out)
    core, out = feed(
        core, BindAnswered(PodRef("default", "p", "u1"), ERROR, "ValueError: timeout must be positive"), T0
    )
    [failure] = out
    assert isinstance(failure, PodUnschedulable) and "ValueError" in failure.message
    assert "default/p" in core.pending and len(core.in_flight) == 0
    core, out = feed(core, Tick(), T0 + 1000)
    assert only_bind(out).pod.name == "p"


def test_gated_pod_is_never_attempted_gets_scheduling_gated_once_then_binds_when_ungated() -> None:
    core = core_with([node("n1")], max_energy_age_ms=10**9)
    core = step(core, PodWatched("ADDED", pod("g", schedulingGates=[{"name": "example.com/wait"}])), T0).state
    core, out = feed(core, Tick(), T0)
    [gated] = out
    assert isinstance(gated, PodUnschedulable) and gated.reason == "SchedulingGated"
    core, out = feed(core, Tick(), T0 + 60_000)
    assert out == []  # not attempted, not repeated
    assert next_wake_ms(core) is None
    core = step(core, PodWatched("MODIFIED", pod("g")), T0 + 61_000).state
    core, out = feed(core, Tick(), T0 + 61_000)
    assert only_bind(out).placement.node == "n1"


def test_binds_in_flight_are_bounded_and_the_next_cycle_continues() -> None:
    core = core_with([node("n1", pods="1000")], max_binds_in_flight=3)
    for i in range(5):
        core = step(core, PodWatched("ADDED", pod(f"p{i}", uid=f"u{i}")), T0).state
    core, out = feed(core, Tick(), T0)
    first = [d for d in out if isinstance(d, BindPod)]
    core, out = feed(core, Tick(), T0)
    assert len(first) == 3 and out == []
    core = step(core, BindAnswered(first[0].pod, BOUND), T0).state
    core, out = feed(core, Tick(), T0)
    assert len([d for d in out if isinstance(d, BindPod)]) == 1


# -- the kubelet's filters ---------------------------------------------------------


def test_node_resources_fit_counts_bound_pods_and_binds_in_flight() -> None:
    # n1 is the richest in energy but its cpu is taken by a running pod.
    core = core_with([node("n1"), node("n2")], [pod("running", node_name="n1", requests={"cpu": "1500m"})])
    core = step(core, EnergyReported(EnergyReport(node="n1", energy_wh=99.0, time_ms=T0)), T0).state
    core = step(core, PodWatched("ADDED", pod("big", uid="b", requests={"cpu": "1"})), T0).state
    core, out = feed(core, Tick(), T0)
    assert only_bind(out).placement.node == "n2"
    # n2 now has 1 cpu in flight: a second 1.5-cpu pod fits nowhere.
    core = step(core, PodWatched("ADDED", pod("bigger", uid="c", requests={"cpu": "1.5"})), T0).state
    core, out = feed(core, Tick(), T0)
    [failure] = out
    assert isinstance(failure, PodUnschedulable)
    assert failure.message.startswith("0/2 nodes are available: 2 Insufficient cpu")
    assert "n1: Insufficient cpu: requested 1500m, free 500m" in failure.message


def test_too_many_pods() -> None:
    core = core_with([node("n1", pods="1")], [pod("x", node_name="n1")])
    core = step(core, PodWatched("ADDED", pod("p", uid="p")), T0).state
    core, out = feed(core, Tick(), T0)
    [failure] = out
    assert isinstance(failure, PodUnschedulable) and "1 Too many pods" in failure.message


def test_node_affinity_required_terms_and_node_selector() -> None:
    nodes = [node("a", labels={"zone": "a", "gen": "3"}), node("b", labels={"zone": "b", "gen": "5"})]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]
            }
        }
    }
    core = core_with(nodes)
    core = step(core, EnergyReported(EnergyReport(node="a", energy_wh=99.0, time_ms=T0)), T0).state
    core = step(core, PodWatched("ADDED", pod("p", affinity=affinity)), T0).state
    core, out = feed(core, Tick(), T0)
    assert only_bind(out).placement.node == "b"
    core = step(core, PodWatched("ADDED", pod("q", uid="q", affinity=affinity, nodeSelector={"zone": "a"})), T0).state
    core, out = feed(core, Tick(), T0)
    [failure] = out
    assert isinstance(failure, PodUnschedulable)
    assert "2 node(s) didn't match Pod's node affinity/selector" in failure.message


def test_node_ports_and_pod_anti_affinity() -> None:
    core = core_with([node("a"), node("b")], [pod("web-a", node_name="a", host_ports=[8080], labels={"app": "web"})])
    core = step(core, EnergyReported(EnergyReport(node="a", energy_wh=99.0, time_ms=T0)), T0).state
    core = step(core, PodWatched("ADDED", pod("p", uid="p", host_ports=[8080])), T0).state
    core, out = feed(core, Tick(), T0)
    assert only_bind(out).placement.node == "b"
    anti = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/arch"}
            ]
        }
    }
    core = step(core, PodWatched("ADDED", pod("q", uid="q", affinity=anti)), T0).state
    core, out = feed(core, Tick(), T0)
    [failure] = out  # both nodes share arch arm64, a web pod runs in that domain
    assert isinstance(failure, PodUnschedulable) and "2 node(s) didn't match pod anti-affinity rules" in failure.message


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"resources\.requests: not a quantity: 'lots'"):
        request_for_pod(pod("p", requests={"cpu": "lots"}), KubeConfig())


@pytest.mark.parametrize(
    ("text", "milli"),
    [("500m", 500), ("1", 1000), ("1.5", 1500), ("128Mi", 128 * 2**20 * 1000), ("1k", 1_000_000), ("1e3", 1_000_000)],
)
def test_quantities(text: str, milli: int) -> None:
    assert parse_quantity(text) == milli


# -- leader election ---------------------------------------------------------------


def lease(holder: str, rv: str = "7", renew: str = "2026-01-01T00:00:00.000000Z") -> dict[str, Any]:
    return {
        "metadata": {"name": "sdi-scheduler", "namespace": "kube-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew, "leaseTransitions": 2},
    }


def test_elector_creates_renews_waits_and_takes_over_only_after_a_lease_duration() -> None:
    me = LeaderState(LeaderConfig(identity="me", lease_duration_s=15, renew_deadline_s=10, retry_period_s=2))

    def read(state: LeaderState, lease: dict[str, Any] | None, mono: float, wall_ms: int = T0) -> LeaderStep:
        return leader_step(state, LeaseRead(lease), LeaderNow(mono, wall_ms))

    [created] = read(me, None, 0.0).actions
    assert created.create and created.body["spec"]["holderIdentity"] == "me"
    assert "resourceVersion" not in created.body["metadata"]
    me = read(me, lease("other"), 1.0).state  # held by another, just observed
    assert read(me, lease("other"), 1.0).actions == []
    waited = read(me, lease("other"), 15.9)  # unchanged for < 15 s of our clock
    assert waited.actions == []
    renewed = read(waited.state, lease("other", renew="2026-01-01T00:00:05.000000Z"), 16.0)  # it renewed: observed anew
    assert renewed.actions == []
    [takeover] = read(renewed.state, lease("other", renew="2026-01-01T00:00:05.000000Z"), 31.5).actions
    assert not takeover.create and takeover.body["spec"]["holderIdentity"] == "me"
    assert takeover.body["metadata"]["resourceVersion"] == "7"  # optimistic concurrency: a stale write gets 409
    assert takeover.body["spec"]["leaseTransitions"] == 3
    assert not renewed.state.leading
    assert not leader_step(renewed.state, LeaseWritten(False), LeaderNow(31.5, T0)).state.leading  # a 409
    me = leader_step(renewed.state, LeaseWritten(True), LeaderNow(31.5, T0)).state
    assert me.leading and not leader_lost(me, 41.0) and leader_lost(me, 41.6)
    [renew] = read(me, lease("me", rv="9"), 33.0, T0 + 2000).actions
    assert renew.body["metadata"]["resourceVersion"] == "9"
    [released] = leader_step(me, Releasing(lease("me", rv="9")), LeaderNow(34.0, T0)).actions
    assert released.body["spec"]["holderIdentity"] == ""
    assert leader_step(me, Releasing(lease("other")), LeaderNow(34.0, T0)).actions == []
    assert leader_step(me, Releasing(None), LeaderNow(34.0, T0)).actions == []
    assert read(LeaderState(LeaderConfig(identity="x")), lease(""), 0.0).actions != []  # released: taken at once


# -- options -----------------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["--kubernetes", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--request-timeout-s", "0"], "--request-timeout-s must be a positive"),
        (["--request-timeout-s", "nan"], "--request-timeout-s must be a positive"),
        (["--watch-timeout-s", "0.5"], "--watch-timeout-s must be at least 1 s"),
        (["--node-cache-s", "-1"], "--node-cache-s must not be negative"),
        (["--in-flight-s", "0"], "--in-flight-s must be a positive"),
        (["--backoff-initial-s", "5", "--backoff-max-s", "1"], "--backoff-max-s must not be below"),
        (["--bind-workers", "0"], "--bind-workers must be 1..256"),
        (["--leader-elect", "--leader-elect-renew-deadline-s", "20"], "lease-duration > renew-deadline"),
    ],
)
def test_nonsensical_options_are_rejected_naming_them(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kube_config(args(*argv), "none")


def test_sensible_options_pass() -> None:
    config = kube_config(args("--leader-elect", "--bind-workers", "4"), "none")
    assert config.max_binds_in_flight == 4
