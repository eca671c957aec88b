"""Kubernetes mode's decisions that used to sit in its shell, now pure in
services.scheduler.kube_core: when the pod watch lists, watches, backs off
or re-lists (`watch_step`), what a bind answer means (`classify_bind_answer`),
which energy report retries which pod at once (the rejecting filter of the
reporting node, never a message's text), and the leader's retry jitter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ank_common.nested import dig
from schemas.messages import EnergyReport
from services.scheduler.framework import EnergyReported, Tick, energy_may_admit
from services.scheduler.kube_core import (
    ALREADY_BOUND,
    BOUND,
    ERROR,
    BindAnswered,
    BindPod,
    DeliverPod,
    EndWatch,
    IgnoredLine,
    KubeConfig,
    KubeState,
    ListPods,
    NodesListed,
    Pause,
    PodBound,
    PodRef,
    PodUnschedulable,
    PodWatched,
    RequestFailed,
    WatchEnded,
    WatchEvent,
    WatchLine,
    WatchListed,
    WatchPods,
    WatchState,
    classify_bind_answer,
    next_request,
    nodes_due,
    step,
    watch_step,
)
from services.scheduler.kube_leader import LeaderConfig, LeaderState, retry_delay_s

T0 = 1_700_000_000_000


def feed(state: WatchState, *events: WatchEvent) -> tuple[WatchState, list[Any]]:
    actions: list[Any] = []
    for event in events:
        decided = watch_step(state, event, 0)
        state, actions = decided.state, actions + decided.actions
    return state, actions


def line(kind: str, obj: Any) -> WatchLine:
    return WatchLine(json.dumps({"type": kind, "object": obj}))


def pod_at(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": version}}


# -- the watch ---------------------------------------------------------------------


def test_the_watch_lists_first_then_watches_from_the_lists_resource_version() -> None:
    state = WatchState()
    assert next_request(state) == ListPods()
    state, actions = feed(state, WatchListed("41"))
    assert next_request(state) == WatchPods("41") and actions == []


def test_a_pod_event_is_delivered_and_moves_the_resource_version_a_bookmark_only_moves_it() -> None:
    state, actions = feed(WatchState("41"), line("ADDED", pod_at("p", "42")), line("BOOKMARK", pod_at("", "50")))
    assert actions == [DeliverPod("ADDED", pod_at("p", "42"))]
    assert next_request(state) == WatchPods("50")


def test_expired_history_in_the_stream_ends_the_watch_and_re_lists_with_no_pause() -> None:
    state = WatchState("41", failures=2)
    state, actions = feed(state, line("ERROR", {"code": 410, "message": "too old resource version: 41 (99)"}))
    assert [type(a) for a in actions] == [EndWatch]
    assert next_request(state) == ListPods() and state.failures == 0


def test_another_error_event_ends_the_watch_backs_off_and_re_lists_after_three_in_a_row() -> None:
    state = WatchState("41")
    error = line("ERROR", {"code": 500, "message": "etcd"})
    state, actions = feed(state, error)
    assert [type(a) for a in actions] == [EndWatch, Pause] and actions[1].seconds == 0.5
    state, actions = feed(state, error)
    assert actions[1].seconds == 1.0 and next_request(state) == WatchPods("41")
    state, actions = feed(state, error)
    assert actions[1].seconds == 2.0 and next_request(state) == ListPods()


def test_an_http_410_re_lists_at_once_and_a_429_waits_its_retry_after_bounded() -> None:
    state, actions = feed(WatchState("41"), RequestFailed(410, "Expired"))
    assert next_request(state) == ListPods() and actions == []
    _, actions = feed(WatchState("41"), RequestFailed(429, "slow down", retry_after_s=7.0))
    assert actions == [Pause(7.0, "slow down")]
    _, actions = feed(WatchState("41"), RequestFailed(429, "slow down", retry_after_s=86_400.0))
    assert actions[0].seconds == 60.0
    _, actions = feed(WatchState("41"), RequestFailed(429, "slow down"))
    assert actions[0].seconds == 1.0


def test_http_errors_back_off_without_losing_the_resource_version() -> None:
    state, _ = feed(WatchState("41"), *[RequestFailed(500, "boom")] * 5)
    assert next_request(state) == WatchPods("41") and state.failures == 5


def test_connection_errors_back_off_doubling_to_10_s_and_re_list_after_three() -> None:
    state, actions = feed(WatchState("41"), *[RequestFailed(None, "ConnectionRefusedError")] * 8)
    assert [a.seconds for a in actions] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert next_request(state) == ListPods()


def test_a_watch_the_server_ended_resets_the_failures() -> None:
    state, _ = feed(WatchState("41"), RequestFailed(None, "reset"), RequestFailed(None, "reset"), WatchEnded())
    state, actions = feed(state, RequestFailed(None, "reset"))
    assert actions[0].seconds == 0.5 and next_request(state) == WatchPods("41")


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"type": "ADDED"}', '"x"', "\n" * 3])
def test_a_malformed_line_is_ignored_and_changes_nothing(text: str) -> None:
    state = WatchState("41", failures=1)
    after, actions = feed(state, WatchLine(text))
    assert after == state and actions == [IgnoredLine(text)]


def test_an_event_whose_object_is_not_a_pod_delivers_nothing_and_keeps_the_version() -> None:
    state, actions = feed(WatchState("41"), line("MODIFIED", ["not", "a", "pod"]))
    assert actions == [] and next_request(state) == WatchPods("41")


# -- bind answers, events --------------------------------------------------------------


def test_only_a_201_is_a_bind() -> None:
    assert classify_bind_answer(201) == (BOUND, "")
    assert classify_bind_answer(200) == (ERROR, "HTTP 200 where 201 Created was expected")
    outcome, detail = classify_bind_answer(409, 'pod p is already assigned to node "n1"')
    assert outcome == ALREADY_BOUND and detail.startswith("HTTP 409: ")


def test_a_gated_pod_gets_no_failed_scheduling_event() -> None:
    ref = PodRef("default", "p", "u")
    assert not PodUnschedulable(ref, "gates", reason="SchedulingGated").records_event
    assert PodUnschedulable(ref, "0/1 nodes are available").records_event


def test_a_landed_bind_is_a_pod_bound_action_saying_where_and_why_a_failed_one_is_not() -> None:
    core = step(KubeState(KubeConfig(require_energy=False)), NodesListed([node("a")], []), T0).state
    core = step(core, PodWatched("ADDED", pending_pod("p")), T0).state
    [bind] = step(core, Tick(), T0).actions
    assert isinstance(bind, BindPod)
    binding = step(core, Tick(), T0).state
    [bound] = step(binding, BindAnswered(bind.pod, BOUND), T0).actions
    assert bound == PodBound(bind.pod, bind.placement)
    assert bound.message.startswith("Successfully assigned default/p to a: MALE")
    [failed] = step(binding, BindAnswered(bind.pod, ERROR, "HTTP 500: boom"), T0).actions
    assert isinstance(failed, PodUnschedulable) and failed.message == "binding failed: HTTP 500: boom"


def test_nodes_are_listed_only_while_pods_are_pending_and_at_most_once_per_cache_period() -> None:
    idle = KubeState()
    assert not nodes_due(idle, None, 2.0)
    waiting = step(idle, PodWatched("ADDED", pending_pod("p")), T0).state
    assert nodes_due(waiting, None, 2.0) and nodes_due(waiting, 2.0, 2.0)
    assert not nodes_due(waiting, 1.9, 2.0)
    assert nodes_due(waiting, 0.0, 0.0)  # --node-cache-s 0: every cycle


# -- retry after energy: by the rejecting filter of the reported node ----------------


def node(name: str, bot: str = "") -> dict[str, Any]:
    labels = {"kubernetes.io/arch": "arm64", **({"bot": bot} if bot else {})}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"pods": "110"}},
    }


def pending_pod(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": "u", "annotations": annotations},
        "spec": {"schedulerName": "sdi-scheduler", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Pending"},
    }


def energy(node_name: str, wh: float, at: int) -> EnergyReported:
    return EnergyReported(EnergyReport(node=node_name, energy_wh=wh, time_ms=at))


def unschedulable_for_energy(config: KubeConfig, poor: str) -> KubeState:
    """The robot `poor`'s node rejects the pod for its energy, the other node has no report."""
    core = step(KubeState(config), NodesListed([node("a", bot="robot-a"), node("b", bot="robot-b")], []), T0).state
    core = step(core, energy(poor, 5.0, T0), T0).state
    core = step(core, PodWatched("ADDED", pending_pod("p", **{"sdi.scheduler/min-energy-wh": "20"})), T0).state
    decided = step(core, Tick(), T0)
    [failure] = decided.actions
    assert isinstance(failure, PodUnschedulable), failure
    assert decided.state.pending["default/p"].next_try_ms > T0
    return decided.state


def test_an_energy_report_retries_at_once_only_a_pod_that_nodes_energy_filter_rejected() -> None:
    config = KubeConfig(bot_label="bot")
    core = unschedulable_for_energy(config, poor="robot-a")
    waiting = core.pending["default/p"].next_try_ms
    # A report of a robot whose node is not in the cluster: nothing to retry.
    assert step(core, energy("robot-z", 90.0, T0 + 10), T0 + 10).state.pending["default/p"].next_try_ms == waiting
    # The node `a` of robot-a refused it for energy: a new report of robot-a retries it now.
    assert step(core, energy("robot-a", 90.0, T0 + 10), T0 + 10).state.pending["default/p"].next_try_ms == T0 + 10


def test_a_pod_rejected_by_the_reported_node_for_another_reason_waits_its_backoff() -> None:
    core = step(KubeState(KubeConfig()), NodesListed([node("a"), {**node("x86"), "metadata": {"name": "x86"}}]), T0)
    core = step(core.state, energy("a", 5.0, T0), T0)
    core = step(core.state, energy("x86", 90.0, T0), T0)
    core = step(core.state, PodWatched("ADDED", pending_pod("p", **{"sdi.scheduler/min-energy-wh": "20"})), T0)
    failed = step(core.state, Tick(), T0).state
    assert failed.pending["default/p"].rejected_by == {"a": "EnergyReserve", "x86": "Selector"}
    waiting = failed.pending["default/p"].next_try_ms
    # x86 was refused for its arch: its energy cannot change that.
    assert step(failed, energy("x86", 95.0, T0 + 10), T0 + 10).state.pending["default/p"].next_try_ms == waiting


def test_energy_may_admit_reads_the_filter_names_never_the_text() -> None:
    assert energy_may_admit({"a": "EnergyFresh"}, ["a"])
    assert energy_may_admit({"a": "Selector"}, ["b"])  # b was not among the nodes of the last attempt
    assert not energy_may_admit({"a": "Selector"}, ["a"])
    assert not energy_may_admit({"a": "energy below reserve"}, ["a"])  # a message, not a filter name
    assert not energy_may_admit({"a": "EnergyReserve"}, [])


# -- the leader's retry period ---------------------------------------------------------


def test_a_candidate_retries_with_up_to_20_percent_jitter_a_leader_on_the_period() -> None:
    state = LeaderState(LeaderConfig(identity="me", retry_period_s=2.0))
    assert retry_delay_s(state, 0.0) == 2.0 and retry_delay_s(state, 1.0) == pytest.approx(2.4)
    leading = LeaderState(state.config, leading=True)
    assert retry_delay_s(leading, 1.0) == 2.0


def test_dig_reads_a_path_and_stops_at_anything_that_is_not_an_object() -> None:
    pod = {"metadata": {"labels": {"app": "x"}}, "spec": ["not", "an", "object"]}
    assert dig(pod, "metadata", "labels", "app") == "x"
    assert dig(pod, "spec", "nodeName") is None and dig(pod, "status", "phase") is None
    assert dig(None, "metadata") is None and dig(pod) is pod
