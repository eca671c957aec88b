"""The attack table of issue 13, one test per row (each failed before the
fix): an untrusted workload (the `workload` identity, or anyone in plain
mode) against a real router and real planner/dashboard processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from schemas import ExecutionState
from schemas.messages import ApplyRequest, ApplyResult, CompleteState, Event, WorkloadState
from services.bus import Bus, secure
from services.bus.eventlog import RecentEvents
from services.dashboard import core
from tests.helpers import ROOT, Collector, child_env, free_port, running_router, stop_process, wait_for, wait_port
from tests.test_security import certs, open_as, secure_router  # noqa: F401 - shared fixtures

ESCALATION = """\
apiVersion: v1
workloads:
  escalated:
    runtime: process
    agent: car1
    restartPolicy: NEVER
    runtimeConfig: |
      command: id
"""
WILDCARD_COMMANDS = ["ank/cmd/*", "ank/*/apply", "ank/cmd/**", "ank/**", "**", "*/cmd/apply", "ank/cmd/a$*"]


def _start(argv: list[str], endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *argv], cwd=ROOT, env=child_env(endpoint), stdout=out, stderr=subprocess.STDOUT
        )


def _workload_names(bus: Bus) -> list[str]:
    states = wait_for(lambda: bus.get_decoded("ank/cmd/state", CompleteState, timeout=2.0), 20, "the planner")
    return sorted(states[-1].desired.workloads)


@pytest.fixture
def secured_planner(
    certs: Path,  # noqa: F811
    secure_router: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    config = tmp_path / "planner.json5"
    secure.write_config(secure.client_config(certs, "planner", secure_router), config)
    proc = _start(
        ["services.planner", "--state-dir", str(tmp_path / "state"), "--zenoh-config", str(config)],
        secure_router,
        tmp_path / "planner.log",
    )
    try:
        yield proc
    finally:
        stop_process(proc)


def test_a_workload_cannot_apply_through_a_wildcard_command_query(
    open_as: Callable[[str], Bus],  # noqa: F811
    secured_planner: subprocess.Popen[bytes],
) -> None:
    """Row 1: `ank/cmd/*` (and every other wider form) from `workload` was
    answered `ok` and ran `id` as root."""
    cli, workload = open_as("cli"), open_as("workload")
    assert _workload_names(cli) == []
    request = msgspec.json.encode(ApplyRequest(manifest=ESCALATION))
    for selector in WILDCARD_COMMANDS:
        assert workload.get(selector, request, timeout=1.0) == [], selector
    delete = msgspec.json.encode({"workloads": ["escalated"]})
    assert workload.get("ank/*/delete", delete, timeout=1.0) == []
    assert _workload_names(cli) == []


def test_the_planner_answers_commands_only_on_their_exact_key(tmp_path: Path) -> None:
    """Defence in depth, plain mode (no router ACL): a wildcard query that
    matches ank/cmd/apply gets an error reply and changes nothing."""
    with running_router() as (endpoint, _router):
        planner = _start(["services.planner", "--state-dir", str(tmp_path / "state")], endpoint, tmp_path / "p.log")
        try:
            with Bus("attacker", server=endpoint) as bus:
                assert _workload_names(bus) == []
                request = msgspec.json.encode(ApplyRequest(manifest=ESCALATION))
                for selector in ("ank/cmd/*", "ank/*/apply", "ank/cmd/**", "ank/cmd/app$*"):
                    replies = bus.session.get(selector, payload=request, timeout=2.0)
                    answers = [(r.ok is not None, (r.err or r.ok).payload.to_string()) for r in replies]  # type: ignore[union-attr]
                    assert not any(ok and '"ok":true' in text for ok, text in answers), (selector, answers)
                    assert any("answers only a query on exactly ank/cmd/apply" in text for _, text in answers)
                assert _workload_names(bus) == []
                # The exact key still works.
                (reply,) = bus.get("ank/cmd/apply", request, timeout=5.0)
                assert msgspec.json.decode(reply[1], type=ApplyResult).ok
                assert _workload_names(bus) == ["escalated"]
        finally:
            stop_process(planner)


def test_a_workload_queryable_on_everything_intercepts_no_command(
    open_as: Callable[[str], Bus],  # noqa: F811
    secured_planner: subprocess.Popen[bytes],
) -> None:
    """Row 2: a `workload` queryable on `**` received every CLI query (apply
    payloads with their secrets) and slowed `ank get` to its timeout."""
    intercepted: list[str] = []
    lock = threading.Lock()

    def hold(key: str, payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        with lock:
            intercepted.append(key)
        return []

    workload = open_as("workload")
    for key_expr in ("**", "ank/**", "ank/cmd/*"):
        workload.queryable(key_expr, hold)
    app = Collector()
    workload.subscribe_raw("**", app)
    cli = open_as("cli")
    assert _workload_names(cli) == []
    secret = ESCALATION.replace("command: id", "command: id\n      env:\n        API_KEY: s3cr3t")
    cli.get("ank/cmd/apply", msgspec.json.encode(ApplyRequest(manifest=secret)), timeout=5.0)
    cli.put("ank/desired", b"not a manifest")
    started = time.monotonic()
    assert _workload_names(cli) == ["escalated"]
    assert time.monotonic() - started < 2.0
    # Ordering: the workload's own put after the queries reaches its own subscriber.
    other = open_as("workload")
    other.put("app/marker", b"x")
    app.wait(lambda items: ("app/marker", b"x") in items, timeout=5, what="the app marker")
    assert intercepted == []
    assert not any(key.startswith("ank/") for key, _ in app.items)


def _state(workload: str, agent: str) -> WorkloadState:
    return WorkloadState(workload=workload, agent=agent, execution_state=ExecutionState("Running", "Ok"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
def test_planner_and_dashboard_memory_stays_bounded_under_100_oversized_events(tmp_path: Path) -> None:
    """Row 3: 100 events of 3 MiB grew the planner and the dashboard by
    ~340 MB each, and the planner kept them all."""
    with running_router() as (endpoint, _router):
        port = free_port()
        planner = _start(["services.planner", "--state-dir", str(tmp_path / "s")], endpoint, tmp_path / "p.log")
        dashboard = _start(["services.dashboard", "--port", str(port), "--token", "t"], endpoint, tmp_path / "dash.log")
        try:
            wait_port(port, timeout=30)
            with Bus("attacker", server=endpoint) as bus:
                wait_for(lambda: bus.get("ank/cmd/state", timeout=2.0), 30, "the planner")
                before = {p.pid: _rss_kib(p.pid) for p in (planner, dashboard)}
                pad = "x" * (3 * 1024 * 1024)
                for i in range(100):
                    bus.put(f"ank/events/x{i % 3}", Event(kind="x", message=pad))
                bus.put("ank/events/marker", Event(kind="marker", message="after the flood"))

                def marker_kept() -> bool:
                    return any(k == "ank/events/marker" for k, _ in bus.get("ank/events/**", timeout=2.0))

                wait_for(marker_kept, 60, "the marker event in the planner's recent events")
                replies = bus.get("ank/events/**", timeout=5.0)
                assert sum(len(p) for _, p in replies) < 2 * 1024 * 1024
                grown = {pid: _rss_kib(pid) - kib for pid, kib in before.items()}
        finally:
            stop_process(dashboard)
            stop_process(planner)
    # Generous: transient copies of a 3 MiB payload are fine, keeping 100 is not.
    assert all(kib < 64 * 1024 for kib in grown.values()), grown
    dropped_reports = (tmp_path / "p.log").read_text().count("exceeds 32768")
    assert 1 <= dropped_reports <= 10


def test_a_services_own_long_event_is_truncated_to_fit_its_cap() -> None:
    with running_router() as (endpoint, _router), Bus("consumer", server=endpoint) as consumer:
        seen: Collector = Collector()
        consumer.subscribe("ank/events/**", Event, seen)
        consumer.event("rejected", "\x00" * 100_000, subject="s" * 10_000)
        seen.wait(lambda items: len(items) == 1, 5, "the long event")  # local delivery
        event = seen.items[0][1]
        assert event.message.endswith("(truncated)") and len(event.subject) == 256  # type: ignore[attr-defined]
        assert consumer.dropped == {}


def test_retained_event_buffers_are_capped_in_bytes() -> None:
    view = core.DashboardView()
    for i in range(100):
        view, _ = core.step(view, Event(kind="k", message=f"{i}" + "y" * 15_000), 0)
    assert sum(core.event_size(e) for e in view.events) <= view.max_event_bytes
    assert view.events[-1].message.startswith("99")


def test_recent_events_are_capped_in_bytes(tmp_path: Path) -> None:
    with running_router() as (endpoint, _router), Bus("planner", server=endpoint) as bus:
        recent = RecentEvents(bus, max_bytes=100_000)
        with Bus("sender", server=endpoint) as sender:
            wait_for(lambda: sender.get("ank/events/**", timeout=1.0) is not None, 5, "the queryable")

            def flood_seen() -> bool:
                sender.put("ank/events/probe", Event(kind="probe", message="p"))
                return len(recent) > 0

            wait_for(flood_seen, 10, "the subscriber")
            for i in range(200):
                sender.put("ank/events/big", Event(kind="big", message=f"{i}" + "z" * 15_000))
            sender.put("ank/events/last", Event(kind="last", message="last"))
            wait_for(lambda: any(k == "ank/events/last" for k, _ in recent._answer("ank/events/**", None, "")), 10)
        assert recent.bytes <= 100_000


def test_a_state_naming_another_agents_workload_is_dropped_by_every_consumer() -> None:
    """Row 5: agent-car1 put, on its own key, a state naming car2's workload:
    the planner ignored it, the dashboard showed it as car2's row. The bus
    adapter now drops it for every consumer, counted and reported."""
    with running_router() as (endpoint, _router), Bus("consumer", server=endpoint) as consumer:
        seen: Collector = Collector()
        consumer.subscribe("ank/state/**", WorkloadState, seen)
        events: Collector = Collector()
        consumer.subscribe("ank/events/dropped", Event, events)
        with Bus("car1", server=endpoint) as car1:
            own = _state("w", "car1")
            forged = _state("w", "car2")

            def own_seen() -> bool:
                car1.put("ank/state/car1/w", own)
                return bool(seen.items)

            wait_for(own_seen, 10, "the agent's own state")
            car1.put("ank/state/car1/w", forged)
            car1.put("ank/state/car1/x", _state("x", "car1"))
            seen.wait(lambda items: any(k == "ank/state/car1/x" for k, _ in items), 5, "the later state")
        assert all(msg.agent == "car1" for _, msg in seen.items)  # type: ignore[attr-defined]
        assert consumer.dropped["ank/state/car1/w"] == 1
        events.wait(lambda items: any("belongs on ank/state/car2/w" in m.message for _, m in items), 5, "the report")  # type: ignore[attr-defined]


def test_a_flood_of_bad_messages_is_counted_and_reported_once() -> None:
    """Row 7: a denied or dropped message left no trace; now each is
    counted, and a flood is reported as one event per key per window."""
    with running_router() as (endpoint, _router), Bus("consumer", server=endpoint) as consumer:
        seen: Collector = Collector()
        consumer.subscribe("ank/state/**", WorkloadState, seen)
        reports: Collector = Collector()
        consumer.subscribe("ank/events/dropped", Event, reports)  # its own reports arrive locally, in order
        with Bus("flood", server=endpoint) as flood:
            good = _state("w", "car1")

            def good_seen() -> bool:
                flood.put("ank/state/car1/w", good)
                return bool(seen.items)

            wait_for(good_seen, 10, "a good state")
            for _ in range(50):
                flood.put("ank/state/car1/w", b'{"pad":"' + b"x" * 70_000 + b'"}')
            flood.put("ank/state/car1/z", _state("z", "car1"))
            seen.wait(lambda items: any(k == "ank/state/car1/z" for k, _ in items), 10, "the later state")
        consumer.event("dropped", "marker", subject="marker")
        reports.wait(lambda items: any(m.subject == "marker" for _, m in items), 5, "the marker")  # type: ignore[attr-defined]
        assert consumer.dropped["ank/state/car1/w"] == 50
        flood_reports = [m for _, m in reports.items if m.subject != "marker"]  # type: ignore[attr-defined]
        assert len(flood_reports) == 1, flood_reports
        assert "exceeds 65536" in flood_reports[0].message  # type: ignore[attr-defined]


def test_policy_json_is_serialisable() -> None:
    assert json.loads(json.dumps(secure.access_control(["car1"])))["default_permission"] == "deny"
