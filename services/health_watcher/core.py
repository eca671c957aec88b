"""The health-watcher's decisions: which workloads to probe, when, and what a
series of probe results means. Pure: msgspec values in, a new state and
actions out; no I/O, no clock, no Zenoh, no threads.

Theory of operation
-------------------
The watcher knows two things, fed to it by its shell:

- the *desired* workloads (from the planner's CompleteState): a workload is
  *watched* when it has a `healthCheck` (exec | tcp | http | zenoh), or, when
  the shell says podman is present, when it runs on `podman` without one (we
  then report podman's own HEALTHCHECK status, probe "podman");
- the *observed* workload states (`ank/state/**`).

A watched workload that is observed Running(Ok) has a *series*: a run of
probes that starts at its Running transition. A new Running transition (it
was not running, or its restartCount, instance or agent changed) starts a
new series; any other state ends the series. Results of an ended series are
ignored (each series has its own id).

Timing follows Docker's HEALTHCHECK: the first probe is due `interval` after
the series starts, each next one `interval` after the previous result. A
probe that has not answered within `timeout` is a failure (the probe itself
enforces its timeout). During the *start period* failures do not count; a
success ends the start period at once. After it, `retries` consecutive
failures make the workload unhealthy; any success makes it healthy and
resets the count. The status starts as "starting" and stays so until the
first success or the first unhealthy verdict.

A "podman" probe carries podman's own verdict (podman applies the image's
retries and start period), which the series adopts as it is; a container
without a HEALTHCHECK makes the series inert (no probes, no reports).

Reports (HealthReport, `time_ms` left for the shell to stamp) are published
when a series starts ("starting") and whenever the status or the failure
count changes.

The shell feeds every input as an event to `step(state, event, now_ms)` —
DesiredChanged, StateObserved, ProbeResult, ProbesDue (its timer, armed at
`next_due_ms`) — and carries out the returned actions (StartProbe,
PublishReport, LogDecision), as the agent's core does.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.manifest import HealthCheck, Manifest
from schemas.messages import HealthReport, WorkloadState

ProbeKind = Literal["exec", "tcp", "http", "zenoh", "podman"]
Status = Literal["starting", "healthy", "unhealthy"]

# What a podman workload without a healthCheck is polled with: podman applies
# the image's own timing, so only our polling interval matters.
PODMAN_POLL_INTERVAL_MS = 10_000


# -- values ---------------------------------------------------------------------------------------------------------
class WatchedWorkload(msgspec.Struct, frozen=True):
    """A desired workload that has something to probe."""

    name: str
    runtime: str
    runtime_config: str
    probe: ProbeKind
    check: HealthCheck


class Observed(msgspec.Struct, frozen=True):
    """What the last WorkloadState said about a workload."""

    agent: str
    running: bool
    restart_count: int
    instance: str
    seq: int = 0  # the message's envelope seq: an older one is stale


class Series(msgspec.Struct, frozen=True):
    """The probes of one Running period of one workload."""

    id: int
    workload: str
    agent: str
    probe: ProbeKind
    check: HealthCheck
    started_ms: int  # the Running transition (watcher's monotonic clock)
    next_probe_ms: int | None  # None while a probe is in flight or when inert
    status: Status = "starting"
    consecutive_failures: int = 0
    last_error: str = ""
    start_period_over: bool = False  # a success ended it early
    inert: bool = False  # podman: the container defines no HEALTHCHECK
    results: int = 0  # probe results received so far


class WatcherState(msgspec.Struct, frozen=True):
    agent_filter: str | None = None  # watch only this agent's workloads; None: all
    podman_health: bool = False  # podman is present: report podman HEALTHCHECK status
    podman_poll_ms: int = PODMAN_POLL_INTERVAL_MS
    watched: dict[str, WatchedWorkload] = {}
    observed: dict[str, Observed] = {}
    series: dict[str, Series] = {}
    invalid: dict[str, str] = {}  # workload -> why its healthCheck is unusable (logged once)
    next_series_id: int = 1


# -- actions --------------------------------------------------------------------------------------------------------
class StartProbe(msgspec.Struct, frozen=True):
    """Run one probe (off the loop thread) and feed back a ProbeResult."""

    series_id: int
    workload: str
    agent: str
    probe: ProbeKind
    check: HealthCheck
    runtime: str
    runtime_config: str
    instance: str = ""


class PublishReport(msgspec.Struct, frozen=True):
    report: HealthReport


class LogDecision(msgspec.Struct, frozen=True):
    message: str
    level: Literal["info", "warning"] = "info"


Action = StartProbe | PublishReport | LogDecision


class ProbeResult(msgspec.Struct, frozen=True):
    """What a probe found. For probe "podman", `status` is podman's verdict
    (None with `applicable` False: the container has no HEALTHCHECK)."""

    series_id: int
    workload: str
    ok: bool
    error: str = ""
    status: Status | None = None
    failing_streak: int = 0
    applicable: bool = True


# -- events ---------------------------------------------------------------------------------------------------------
class DesiredChanged(msgspec.Struct, frozen=True):
    """The planner's desired state (from its CompleteState)."""

    desired: Manifest


class StateObserved(msgspec.Struct, frozen=True):
    """A WorkloadState from `ank/state/**`; `snapshot`: from a query, which may
    lag behind the live puts."""

    state: WorkloadState
    snapshot: bool = False


class ProbesDue(msgspec.Struct, frozen=True):
    """The shell's timer (armed at `next_due_ms`) fired."""


WatcherEvent = DesiredChanged | StateObserved | ProbeResult | ProbesDue


class Step(msgspec.Struct, frozen=True):
    state: WatcherState
    actions: list[Action] = []


# -- the healthCheck itself -----------------------------------------------------------------------------------------
def check_problem(check: HealthCheck) -> str | None:
    """Why a healthCheck cannot be used, or None."""
    given = [name for name in ("exec", "tcp", "http", "zenoh") if getattr(check, name) is not None]
    if len(given) != 1:
        return f"healthCheck needs exactly one of exec, tcp, http, zenoh (got {', '.join(given) or 'none'})"
    if check.exec is not None and not check.exec:
        return "healthCheck.exec is an empty command"
    if check.tcp is not None:
        host, sep, port = check.tcp.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"healthCheck.tcp {check.tcp!r} is not host:port"
    if check.http is not None and not check.http.startswith(("http://", "https://")):
        return f"healthCheck.http {check.http!r} is not an http:// or https:// URL"
    if check.zenoh is not None and not check.zenoh.strip():
        return "healthCheck.zenoh is an empty key expression"
    for field, value, least in (
        ("intervalMs", check.interval_ms, 1),
        ("timeoutMs", check.timeout_ms, 1),
        ("retries", check.retries, 1),
        ("startPeriodMs", check.start_period_ms, 0),
        ("maxAgeMs", check.max_age_ms, 1),
    ):
        if value < least:
            return f"healthCheck.{field} must be at least {least} (got {value})"
    return None


def probe_kind(check: HealthCheck) -> ProbeKind:
    if check.exec is not None:
        return "exec"
    if check.tcp is not None:
        return "tcp"
    if check.http is not None:
        return "http"
    return "zenoh"


# -- transitions ----------------------------------------------------------------------------------------------------
# How one probe result changes a series: (succeeded, in start period) ->
# (count the failure, reset the count, end the start period).
RESULT_EFFECT: dict[tuple[bool, bool], tuple[bool, bool, bool]] = {
    (True, True): (False, True, True),  # a success ends the start period
    (True, False): (False, True, False),  # a success resets the count
    (False, True): (False, False, False),  # failures in the start period do not count
    (False, False): (True, False, False),  # a failure counts towards `retries`
}


def initial_state(
    agent_filter: str | None = None, *, podman_health: bool = False, podman_poll_ms: int = PODMAN_POLL_INTERVAL_MS
) -> WatcherState:
    return WatcherState(agent_filter=agent_filter, podman_health=podman_health, podman_poll_ms=podman_poll_ms)


def step(state: WatcherState, event: WatcherEvent, now_ms: int) -> Step:
    """The watcher's reaction to one event: its new state and the actions."""
    if isinstance(event, DesiredChanged):
        return _on_desired(state, event.desired, now_ms)
    if isinstance(event, StateObserved):
        return _on_workload_state(state, event.state, now_ms, snapshot=event.snapshot)
    if isinstance(event, ProbeResult):
        return _on_probe_result(state, event, now_ms)
    return _start_due_probes(state, now_ms)


def _on_desired(state: WatcherState, desired: Manifest, now_ms: int) -> Step:
    """The planner's desired state: what to watch. A workload whose check
    changed gets a new series; one no longer watched loses its series."""
    watched: dict[str, WatchedWorkload] = {}
    invalid: dict[str, str] = {}
    actions: list[Action] = []
    for name, workload in sorted(desired.workloads.items()):
        if workload.health_check is not None:
            problem = check_problem(workload.health_check)
            if problem is not None:
                invalid[name] = problem
                if state.invalid.get(name) != problem:
                    actions.append(LogDecision(f"{name}: not probed: {problem}", "warning"))
                continue
            kind: ProbeKind = probe_kind(workload.health_check)
            check = workload.health_check
        elif workload.runtime == "podman" and state.podman_health:
            kind, check = "podman", HealthCheck(interval_ms=state.podman_poll_ms, start_period_ms=0)
        else:
            continue
        watched[name] = WatchedWorkload(name, workload.runtime, workload.runtime_config, kind, check)
    state = msgspec.structs.replace(state, watched=watched, invalid=invalid)
    for name in sorted(set(state.series) | set(watched)):
        before = state.series.get(name)
        now_watched = watched.get(name)
        if before is not None and (now_watched is None or _spec_changed(before, now_watched)):
            state = _end_series(state, name)
            actions.append(LogDecision(f"{name}: series ended: its health check was removed or changed"))
            before = None
        observed = state.observed.get(name)
        running_here = observed is not None and observed.running and _ours(state, observed.agent)
        if before is None and now_watched is not None and observed is not None and running_here:
            state, started = _start_series(state, name, observed.agent, now_ms)
            actions.extend(started)
    return Step(state, actions)


def _spec_changed(series: Series, watched: WatchedWorkload) -> bool:
    return series.probe != watched.probe or series.check != watched.check


def _ours(state: WatcherState, agent: str) -> bool:
    return state.agent_filter is None or agent == state.agent_filter


def _on_workload_state(state: WatcherState, ws: WorkloadState, now_ms: int, *, snapshot: bool = False) -> Step:
    """A WorkloadState from `ank/state/**`. A Running transition starts a
    series, any other state ends it. A `snapshot` state (from a query, which
    may lag behind the live puts) only fills in workloads not seen yet."""
    if not _ours(state, ws.agent) or (snapshot and ws.workload in state.observed):
        return Step(state)
    name = ws.workload
    running = ws.execution_state.state == "Running"
    seen = Observed(ws.agent, running, ws.restart_count, ws.instance, ws.seq)
    before = state.observed.get(name)
    if before is not None and ws.seq and ws.seq <= before.seq:
        return Step(state)  # older than what we know (a late query reply, a CompleteState snapshot)
    series = state.series.get(name)
    if not running and before is not None and before.agent != ws.agent and series is not None:
        # A late Removed/Stopping from the agent the workload moved away from
        # says nothing about the instance now running elsewhere.
        return Step(state)
    state = msgspec.structs.replace(state, observed={**state.observed, name: seen})
    actions: list[Action] = []
    new_run = running and (before is None or not before.running or _new_instance(before, seen) or series is None)
    if series is not None and (not running or new_run):
        state = _end_series(state, name)
        actions.append(LogDecision(f"{name}: series ended: {ws.execution_state}, restarts {ws.restart_count}"))
    if new_run and name in state.watched:
        state, started = _start_series(state, name, ws.agent, now_ms)
        actions.extend(started)
    return Step(state, actions)


def _new_instance(before: Observed, now: Observed) -> bool:
    return (before.restart_count, before.instance, before.agent) != (now.restart_count, now.instance, now.agent)


def _start_series(state: WatcherState, name: str, agent: str, now_ms: int) -> tuple[WatcherState, list[Action]]:
    watched = state.watched[name]
    series = Series(
        id=state.next_series_id,
        workload=name,
        agent=agent,
        probe=watched.probe,
        check=watched.check,
        started_ms=now_ms,
        next_probe_ms=now_ms + watched.check.interval_ms,
    )
    state = msgspec.structs.replace(
        state, series={**state.series, name: series}, next_series_id=state.next_series_id + 1
    )
    actions: list[Action] = [LogDecision(f"{name}: Running on {agent or '?'}: {watched.probe} probe series starts")]
    if watched.probe != "podman":  # podman's own status is reported once podman has one
        actions.append(PublishReport(_report(series)))
    return state, actions


def _end_series(state: WatcherState, name: str) -> WatcherState:
    series = {k: v for k, v in state.series.items() if k != name}
    return msgspec.structs.replace(state, series=series)


def _start_due_probes(state: WatcherState, now_ms: int) -> Step:
    """StartProbe for every series whose probe is due; each stays in flight
    (no next time) until its result comes back."""
    actions: list[Action] = []
    series = dict(state.series)
    for name, s in sorted(state.series.items()):
        if s.next_probe_ms is None or s.next_probe_ms > now_ms:
            continue
        watched = state.watched[name]
        observed = state.observed.get(name)
        instance = observed.instance if observed is not None else ""
        actions.append(
            StartProbe(s.id, name, s.agent, s.probe, s.check, watched.runtime, watched.runtime_config, instance)
        )
        series[name] = msgspec.structs.replace(s, next_probe_ms=None)
    return Step(msgspec.structs.replace(state, series=series), actions)


def next_due_ms(state: WatcherState) -> int | None:
    """When a ProbesDue event has something to do next (None: nothing planned)."""
    due = [s.next_probe_ms for s in state.series.values() if s.next_probe_ms is not None]
    return min(due) if due else None


def in_start_period(series: Series, now_ms: int) -> bool:
    return not series.start_period_over and now_ms < series.started_ms + series.check.start_period_ms


def _on_probe_result(state: WatcherState, result: ProbeResult, now_ms: int) -> Step:
    """A probe's result: the series' new verdict; the next probe is due one
    interval from now."""
    series = state.series.get(result.workload)
    if series is None or series.id != result.series_id:
        return Step(state)  # from a series that has ended (restart, stop, new check)
    if series.probe == "podman":
        updated = _adopt_podman_verdict(series, result, now_ms)
    else:
        updated = _apply_result(series, result, now_ms)
    state = msgspec.structs.replace(state, series={**state.series, result.workload: updated})
    actions: list[Action] = []
    if updated.inert and not series.inert:
        actions.append(LogDecision(f"{series.workload}: container defines no HEALTHCHECK: not reported"))
    elif (updated.status, updated.consecutive_failures) != (series.status, series.consecutive_failures) or (
        series.probe == "podman" and series.results == 0 and result.status is not None
    ):
        level: Literal["info", "warning"] = "warning" if updated.status == "unhealthy" else "info"
        why = f": {updated.last_error}" if updated.last_error and not result.ok else ""
        actions.append(
            LogDecision(
                f"{series.workload}: {updated.status} ({series.probe}, "
                f"{updated.consecutive_failures}/{updated.check.retries} failures){why}",
                level,
            )
        )
        actions.append(PublishReport(_report(updated)))
    return Step(state, actions)


def _apply_result(series: Series, result: ProbeResult, now_ms: int) -> Series:
    count, reset, end_start_period = RESULT_EFFECT[(result.ok, in_start_period(series, now_ms))]
    failures = 0 if reset else series.consecutive_failures + (1 if count else 0)
    status: Status = series.status
    if result.ok:
        status = "healthy"
    elif failures >= series.check.retries:
        status = "unhealthy"
    return msgspec.structs.replace(
        series,
        status=status,
        consecutive_failures=failures,
        last_error="" if result.ok else result.error,
        start_period_over=series.start_period_over or end_start_period,
        next_probe_ms=now_ms + series.check.interval_ms,
        results=series.results + 1,
    )


def _adopt_podman_verdict(series: Series, result: ProbeResult, now_ms: int) -> Series:
    if not result.applicable:
        return msgspec.structs.replace(series, inert=True, next_probe_ms=None)
    next_probe_ms = now_ms + series.check.interval_ms
    if result.status is None:  # podman could not tell (container gone, podman error): keep the verdict, retry
        return msgspec.structs.replace(series, next_probe_ms=next_probe_ms, last_error=result.error)
    return msgspec.structs.replace(
        series,
        status=result.status,
        consecutive_failures=result.failing_streak,
        last_error=result.error,
        next_probe_ms=next_probe_ms,
        results=series.results + 1,
    )


def _report(series: Series) -> HealthReport:
    return HealthReport(
        workload=series.workload,
        agent=series.agent,
        status=series.status,
        consecutive_failures=series.consecutive_failures,
        last_error=series.last_error,
        probe=series.probe,
    )


def zenoh_keys(state: WatcherState) -> set[str]:
    """The key expressions whose freshness some watched workload checks."""
    return {w.check.zenoh for w in state.watched.values() if w.check.zenoh is not None}
