"""The health-watcher's pure core: timing, start period, retries and verdicts
with injected times (no sleeping, no Zenoh)."""

from __future__ import annotations

import pytest

from schemas.manifest import HealthCheck, Manifest, Workload
from schemas.messages import HealthReport, WorkloadState
from schemas.state import ExecutionState
from services.health_watcher import core
from services.health_watcher.core import LogDecision, ProbeResult, PublishReport, StartProbe, Step

RUNNING = ExecutionState("Running", "Ok")
TCP = HealthCheck(tcp="127.0.0.1:8080", interval_ms=1000, timeout_ms=500, retries=3, start_period_ms=5000)


def manifest(check: HealthCheck | None = TCP, runtime: str = "process", **more: Workload) -> Manifest:
    workloads = {"web": Workload(runtime=runtime, agent="a1", runtime_config="command: x", health_check=check)}
    return Manifest(api_version="v1", workloads={**workloads, **more})


def state_msg(
    execution: ExecutionState = RUNNING, *, restarts: int = 0, agent: str = "a1", seq: int = 0, name: str = "web"
) -> WorkloadState:
    return WorkloadState(
        workload=name, agent=agent, execution_state=execution, restart_count=restarts, instance="i1", seq=seq
    )


def reports(step: Step) -> list[HealthReport]:
    return [a.report for a in step.actions if isinstance(a, PublishReport)]


def probes(step: Step) -> list[StartProbe]:
    return [a for a in step.actions if isinstance(a, StartProbe)]


def running(check: HealthCheck | None = TCP, at: int = 0, runtime: str = "process") -> core.WatcherState:
    """A watcher whose `web` turned Running at time `at`."""
    s = core.step(core.initial_state(), core.DesiredChanged(manifest(check, runtime)), at).state
    return core.step(s, core.StateObserved(state_msg()), at).state


def probe_once(s: core.WatcherState, at: int, ok: bool, error: str = "refused") -> Step:
    """Runs the probe due at `at` and feeds back its result at `at`."""
    started = core.step(s, core.ProbesDue(), at)
    (request,) = probes(started)
    return core.step(started.state, ProbeResult(request.series_id, "web", ok, "" if ok else error), at)


# -- defaults and validation --------------------------------------------------------------------------------------
def test_health_check_defaults_are_dockers() -> None:
    check = HealthCheck(tcp="h:1")
    assert (check.interval_ms, check.timeout_ms, check.retries, check.start_period_ms) == (30000, 10000, 3, 40000)


def test_first_probe_is_due_one_default_interval_after_running() -> None:
    s = running(HealthCheck(tcp="h:1"), at=1000)
    assert core.next_due_ms(s) == 31000
    assert probes(core.step(s, core.ProbesDue(), 30999)) == []
    (request,) = probes(core.step(s, core.ProbesDue(), 31000))
    assert (request.workload, request.agent, request.probe, request.runtime) == ("web", "a1", "tcp", "process")
    assert (request.instance, request.runtime_config) == ("i1", "command: x")


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        (HealthCheck(), "exactly one of exec, tcp, http, zenoh (got none)"),
        (HealthCheck(tcp="h:1", http="http://x"), "(got tcp, http)"),
        (HealthCheck(exec=[]), "empty command"),
        (HealthCheck(tcp="nohost"), "is not host:port"),
        (HealthCheck(tcp="h:99999"), "is not host:port"),
        (HealthCheck(http="ftp://x"), "not an http:// or https:// URL"),
        (HealthCheck(zenoh=" "), "empty key expression"),
        (HealthCheck(tcp="h:1", interval_ms=0), "intervalMs must be at least 1"),
        (HealthCheck(tcp="h:1", retries=0), "retries must be at least 1"),
        (HealthCheck(tcp="h:1", start_period_ms=-1), "startPeriodMs must be at least 0"),
    ],
)
def test_unusable_health_check_is_named_and_not_probed(check: HealthCheck, problem: str) -> None:
    step = core.step(core.initial_state(), core.DesiredChanged(manifest(check)), 0)
    warnings = [a.message for a in step.actions if isinstance(a, LogDecision) and a.level == "warning"]
    assert len(warnings) == 1 and problem in warnings[0] and warnings[0].startswith("web:")
    after = core.step(step.state, core.StateObserved(state_msg()), 0)
    assert after.state.series == {} and reports(after) == []
    # the same problem again is not logged again
    assert core.step(after.state, core.DesiredChanged(manifest(check)), 1).actions == []


@pytest.mark.parametrize(
    ("check", "kind"),
    [
        (HealthCheck(exec=["true"]), "exec"),
        (HealthCheck(tcp="h:1"), "tcp"),
        (HealthCheck(http="http://h/"), "http"),
        (HealthCheck(zenoh="robot/**"), "zenoh"),
    ],
)
def test_probe_kind_follows_the_check(check: HealthCheck, kind: str) -> None:
    s = running(check)
    (request,) = probes(core.step(s, core.ProbesDue(), check.interval_ms))
    assert request.probe == kind and request.check == check


# -- series lifecycle ----------------------------------------------------------------------------------------------
def test_running_transition_starts_a_series_reported_as_starting() -> None:
    s = core.step(core.initial_state(), core.DesiredChanged(manifest()), 0).state
    step = core.step(s, core.StateObserved(state_msg()), 100)
    (report,) = reports(step)
    assert (report.workload, report.agent, report.status, report.probe) == ("web", "a1", "starting", "tcp")
    assert core.next_due_ms(step.state) == 1100


def test_workload_without_health_check_is_not_probed() -> None:
    s = running(check=None)
    assert s.series == {} and core.next_due_ms(s) is None


@pytest.mark.parametrize("state", ["Pending", "Stopping", "Succeeded", "Failed", "Removed", "AgentDisconnected"])
def test_only_running_workloads_are_probed(state: str) -> None:
    substate = {"Pending": "Starting", "Stopping": "Stopping", "Succeeded": "Ok", "Failed": "ExecFailed"}
    s = core.step(core.initial_state(), core.DesiredChanged(manifest()), 0).state
    s = core.step(s, core.StateObserved(state_msg(ExecutionState(state, substate.get(state, "")))), 0).state  # type: ignore[arg-type]
    assert s.series == {} and core.next_due_ms(s) is None


def test_state_before_desired_starts_the_series_when_desired_arrives() -> None:
    s = core.step(core.initial_state(), core.StateObserved(state_msg()), 0).state
    assert s.series == {}
    step = core.step(s, core.DesiredChanged(manifest()), 2000)
    assert [r.status for r in reports(step)] == ["starting"]
    assert core.next_due_ms(step.state) == 3000


def test_leaving_running_ends_the_series_and_ignores_its_late_result() -> None:
    s = running()
    started = core.step(s, core.ProbesDue(), 1000)
    (request,) = probes(started)
    stopped = core.step(started.state, core.StateObserved(state_msg(ExecutionState("Failed", "ExecFailed"))), 1100)
    assert stopped.state.series == {}
    late = core.step(stopped.state, ProbeResult(request.series_id, "web", False, "x"), 1200)
    assert late.actions == [] and late.state == stopped.state


@pytest.mark.parametrize("change", ["restart_count", "instance", "agent"])
def test_restart_starts_a_new_series_with_a_new_start_period(change: str) -> None:
    s = running(at=0)
    for t in range(1000, 9000, 1000):  # past the start period: 3 failures -> unhealthy
        s = probe_once(s, t, ok=False).state
    assert s.series["web"].status == "unhealthy"
    old_id = s.series["web"].id
    changed = {
        "restart_count": state_msg(restarts=1),
        "instance": WorkloadState(workload="web", agent="a1", execution_state=RUNNING, instance="i2"),
        "agent": state_msg(agent="a2"),
    }[change]
    step = core.step(s, core.StateObserved(changed), 20_000)
    series = step.state.series["web"]
    assert series.id != old_id and series.status == "starting" and series.consecutive_failures == 0
    assert series.started_ms == 20_000 and core.in_start_period(series, 24_999)
    assert [r.status for r in reports(step)] == ["starting"]


def test_a_new_running_period_after_a_stop_restarts_the_series() -> None:
    s = running(at=0)
    s = core.step(s, core.StateObserved(state_msg(ExecutionState("Pending", "Starting"))), 500).state
    step = core.step(s, core.StateObserved(state_msg()), 600)
    assert step.state.series["web"].started_ms == 600


def test_repeated_running_state_does_not_restart_the_series() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    step = core.step(s, core.StateObserved(state_msg()), 1500)
    assert step.actions == [] and step.state.series["web"].status == "healthy"


def test_result_of_a_replaced_series_is_ignored() -> None:
    s = running(at=0)
    started = core.step(s, core.ProbesDue(), 1000)
    (request,) = probes(started)
    restarted = core.step(started.state, core.StateObserved(state_msg(restarts=1)), 1100).state
    step = core.step(restarted, ProbeResult(request.series_id, "web", True), 1200)
    assert step.actions == [] and step.state.series["web"].status == "starting"


def test_stale_state_message_is_ignored() -> None:
    s = core.step(core.initial_state(), core.DesiredChanged(manifest()), 0).state
    s = core.step(s, core.StateObserved(state_msg(seq=10)), 0).state
    step = core.step(s, core.StateObserved(state_msg(ExecutionState("Failed", "ExecFailed"), seq=9)), 10)
    assert step.state == s


def test_snapshot_state_does_not_override_a_live_one() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    step = core.step(s, core.StateObserved(state_msg(restarts=7), snapshot=True), 1500)
    assert step.state == s


def test_late_non_running_state_from_the_previous_agent_keeps_the_series() -> None:
    s = running(at=0)
    s = core.step(s, core.StateObserved(state_msg(agent="a2")), 100).state
    step = core.step(s, core.StateObserved(state_msg(ExecutionState("Removed"), agent="a1")), 200)
    assert step.state.series["web"].agent == "a2"


def test_agent_filter_ignores_other_agents() -> None:
    s = core.step(core.initial_state("a2"), core.DesiredChanged(manifest()), 0).state
    assert core.step(s, core.StateObserved(state_msg(agent="a1")), 0).state.series == {}
    assert "web" in core.step(s, core.StateObserved(state_msg(agent="a2")), 0).state.series


def test_removing_the_check_from_desired_ends_the_series() -> None:
    s = running()
    step = core.step(s, core.DesiredChanged(manifest(check=None)), 100)
    assert step.state.series == {} and core.next_due_ms(step.state) is None


def test_changing_the_check_starts_a_new_series() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    other = HealthCheck(http="http://127.0.0.1/", interval_ms=2000)
    step = core.step(s, core.DesiredChanged(manifest(other)), 1500)
    series = step.state.series["web"]
    assert series.probe == "http" and series.status == "starting" and series.next_probe_ms == 3500


def test_same_desired_again_changes_nothing() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    step = core.step(s, core.DesiredChanged(manifest()), 1500)
    assert step.actions == [] and step.state == s


# -- timing and verdicts -------------------------------------------------------------------------------------------
def test_no_second_probe_while_one_is_in_flight() -> None:
    started = core.step(running(at=0), core.ProbesDue(), 1000)
    assert len(probes(started)) == 1 and core.next_due_ms(started.state) is None
    assert probes(core.step(started.state, core.ProbesDue(), 50_000)) == []


def test_next_probe_is_one_interval_after_the_result() -> None:
    started = core.step(running(at=0), core.ProbesDue(), 1000)
    (request,) = probes(started)
    step = core.step(started.state, ProbeResult(request.series_id, "web", True), 1400)
    assert core.next_due_ms(step.state) == 2400


def test_failures_in_start_period_do_not_count() -> None:
    s = running(at=0)  # start period 5000 ms, interval 1000
    for t in range(1000, 5000, 1000):
        step = probe_once(s, t, ok=False, error=f"refused {t}")
        s = step.state
        assert reports(step) == []
    series = s.series["web"]
    assert (series.status, series.consecutive_failures, series.last_error) == ("starting", 0, "refused 4000")


def test_retries_consecutive_failures_after_start_period_make_it_unhealthy() -> None:
    s = running(at=0)
    published: list[tuple[str, int]] = []
    for t in (5000, 6000, 7000):
        step = probe_once(s, t, ok=False)
        s = step.state
        published += [(r.status, r.consecutive_failures) for r in reports(step)]
    assert published == [("starting", 1), ("starting", 2), ("unhealthy", 3)]
    (report,) = reports(probe_once(s, 8000, ok=False, error="still refused"))
    assert (report.status, report.consecutive_failures, report.last_error) == ("unhealthy", 4, "still refused")


def test_a_success_in_start_period_ends_it_so_later_failures_count() -> None:
    s = running(at=0)
    step = probe_once(s, 1000, ok=True)
    assert [(r.status, r.consecutive_failures) for r in reports(step)] == [("healthy", 0)]
    s = step.state
    for t in (2000, 3000):
        s = probe_once(s, t, ok=False).state
    step = probe_once(s, 4000, ok=False)  # still inside the 5 s start period, but it ended with the success
    assert [(r.status, r.consecutive_failures) for r in reports(step)] == [("unhealthy", 3)]


def test_a_success_resets_the_failure_count() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    s = probe_once(s, 2000, ok=False).state
    s = probe_once(s, 3000, ok=False).state
    step = probe_once(s, 4000, ok=True)
    assert [(r.status, r.consecutive_failures, r.last_error) for r in reports(step)] == [("healthy", 0, "")]
    s = probe_once(step.state, 5000, ok=False).state
    assert s.series["web"].status == "healthy" and s.series["web"].consecutive_failures == 1


def test_unhealthy_recovers_to_healthy_on_success() -> None:
    s = running(at=0)
    for t in (5000, 6000, 7000):
        s = probe_once(s, t, ok=False).state
    step = probe_once(s, 8000, ok=True)
    assert [r.status for r in reports(step)] == ["healthy"]


def test_unchanged_verdict_is_not_republished() -> None:
    s = probe_once(running(at=0), 1000, ok=True).state
    assert reports(probe_once(s, 2000, ok=True)) == []


def test_retries_of_one_fails_at_the_first_counted_failure() -> None:
    s = running(HealthCheck(tcp="h:1", interval_ms=10, retries=1, start_period_ms=0))
    step = probe_once(s, 10, ok=False, error="boom")
    assert [(r.status, r.consecutive_failures, r.last_error) for r in reports(step)] == [("unhealthy", 1, "boom")]


@pytest.mark.parametrize(
    ("ok", "in_start", "effect"),
    [(True, True, (False, True, True)), (True, False, (False, True, False)), (False, True, (False, False, False))],
)
def test_result_effect_table(ok: bool, in_start: bool, effect: tuple[bool, bool, bool]) -> None:
    assert core.RESULT_EFFECT[(ok, in_start)] == effect
    assert core.RESULT_EFFECT[(False, False)] == (True, False, False)


def test_several_workloads_are_probed_independently() -> None:
    other = Workload(runtime="process", agent="a1", health_check=HealthCheck(zenoh="k/**", interval_ms=700))
    s = core.step(core.initial_state(), core.DesiredChanged(manifest(db=other)), 0).state
    s = core.step(s, core.StateObserved(state_msg()), 0).state
    s = core.step(s, core.StateObserved(state_msg(name="db")), 0).state
    assert core.next_due_ms(s) == 700
    assert [p.workload for p in probes(core.step(s, core.ProbesDue(), 700))] == ["db"]
    assert sorted(p.workload for p in probes(core.step(s, core.ProbesDue(), 1000))) == ["db", "web"]
    assert core.zenoh_keys(s) == {"k/**"}


# -- podman's own HEALTHCHECK --------------------------------------------------------------------------------------
def test_podman_workload_without_check_is_polled_only_when_podman_is_present() -> None:
    m = manifest(check=None, runtime="podman")
    without = core.step(core.initial_state(), core.DesiredChanged(m), 0).state
    assert core.step(without, core.StateObserved(state_msg()), 0).state.series == {}
    with_podman = core.step(core.initial_state(podman_health=True, podman_poll_ms=200), core.DesiredChanged(m), 0).state
    step = core.step(with_podman, core.StateObserved(state_msg()), 0)
    assert reports(step) == []  # nothing until podman has a verdict
    (request,) = probes(core.step(step.state, core.ProbesDue(), 200))
    assert request.probe == "podman"


def _podman_running() -> core.WatcherState:
    s = core.step(core.initial_state(podman_health=True), core.DesiredChanged(manifest(None, "podman")), 0).state
    return core.step(s, core.StateObserved(state_msg()), 0).state


def test_podman_verdict_is_adopted_as_is() -> None:
    s = _podman_running()
    series_id = s.series["web"].id
    at = core.PODMAN_POLL_INTERVAL_MS
    first = core.step(s, ProbeResult(series_id, "web", False, status="starting"), at)
    assert [(r.status, r.probe) for r in reports(first)] == [("starting", "podman")]
    result = ProbeResult(series_id, "web", False, "grep: no match", status="unhealthy", failing_streak=3)
    step = core.step(first.state, result, at * 2)
    assert [(r.status, r.consecutive_failures, r.last_error) for r in reports(step)] == [
        ("unhealthy", 3, "grep: no match")
    ]


def test_podman_container_without_healthcheck_goes_quiet() -> None:
    s = _podman_running()
    result = ProbeResult(s.series["web"].id, "web", False, applicable=False)
    step = core.step(s, result, core.PODMAN_POLL_INTERVAL_MS)
    assert reports(step) == [] and core.next_due_ms(step.state) is None
    assert step.state.series["web"].inert


def test_podman_without_an_answer_keeps_the_verdict_and_polls_again() -> None:
    s = _podman_running()
    result = ProbeResult(s.series["web"].id, "web", False, "podman inspect failed")
    step = core.step(s, result, 10_000)
    assert reports(step) == [] and core.next_due_ms(step.state) == 20_000
