"""`ank-health-watcher` as a real process on a real router: a fake planner
answers `ank/cmd/state`, a fake agent publishes workload states, real TCP,
HTTP and Zenoh probes decide the verdicts published on `ank/health/**`."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from schemas.manifest import HealthCheck, Manifest, Workload
from schemas.messages import CompleteState, HealthReport, WorkloadState
from schemas.state import ExecutionState
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, free_port, stop_process, wait_for

RUNNING = ExecutionState("Running", "Ok")
FAST: dict[str, object] = {"interval_ms": 100, "timeout_ms": 500, "retries": 2, "start_period_ms": 0}


class FakePlanner:
    """Answers `ank/cmd/state` with whatever `complete` holds (or garbage)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.complete = CompleteState(desired=Manifest(api_version="v1"))
        self.garbage = False
        self.queries = 0
        bus.queryable("ank/cmd/state", self._answer)

    def _answer(self, key: str, _payload: bytes | None, _parameters: str) -> list[tuple[str, bytes]]:
        reply = b'{"desired": 42}' if self.garbage else self.bus.encode(self.complete)
        self.queries += 1  # counted once the reply is fixed: a test may change `complete` right after
        return [(key, reply)]

    def set(self, workloads: dict[str, Workload], states: list[WorkloadState] = ()) -> None:  # type: ignore[assignment]
        desired = Manifest(api_version="v1", workloads=workloads)
        self.complete = CompleteState(desired=desired, workload_states=list(states))


def running(name: str, agent: str = "a1", restarts: int = 0) -> WorkloadState:
    return WorkloadState(workload=name, agent=agent, execution_state=RUNNING, restart_count=restarts, instance="i1")


def workload(agent: str = "a1", /, **check: object) -> Workload:
    return Workload(runtime="process", agent=agent, runtime_config="command: x", health_check=HealthCheck(**check))  # type: ignore[arg-type]


@contextmanager
def watcher_process(router: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The watcher as its own process; its log goes to a file (a pipe nobody
    reads would block it) and is shown when the test fails."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.health_watcher", "--refresh", "0.5", *args],
            cwd=ROOT,
            env=child_env(router),
            stderr=log,
        )
        try:
            yield proc
        finally:
            stop_process(proc)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))


@pytest.fixture
def planner(make_bus: Callable[[str], Bus]) -> FakePlanner:
    return FakePlanner(make_bus("planner"))


@pytest.fixture
def health(make_bus: Callable[[str], Bus]) -> Collector:
    got = Collector()
    make_bus("observer").subscribe("ank/health/**", HealthReport, got)
    return got


def verdicts(items: list[tuple[str, object]], name: str) -> list[tuple[str, int]]:
    return [(m.status, m.consecutive_failures) for _, m in items if isinstance(m, HealthReport) and m.workload == name]


def wait_verdict(health: Collector, name: str, status: str, after: int = 0, timeout: float = 10) -> HealthReport:
    def found(items: list[tuple[str, object]]) -> HealthReport | None:
        mine = [m for _, m in items if isinstance(m, HealthReport) and m.workload == name]
        return next((m for m in mine[after:] if m.status == status), None)

    return health.wait(found, timeout=timeout, what=f"{name} {status}")


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def failing_http() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_verdicts_follow_real_probes_and_a_restart_starts_a_new_series(
    router: str,
    planner: FakePlanner,
    health: Collector,
    make_bus: Callable[[str], Bus],
    tcp_listener: socket.socket,
    failing_http: str,
) -> None:
    port = tcp_listener.getsockname()[1]
    planner.set(
        {
            "web": workload(tcp=f"127.0.0.1:{port}", **FAST),
            "api": workload(http=failing_http, **FAST),
            "plain": Workload(runtime="process", agent="a1", runtime_config="command: x"),
        },
        [running("web"), running("api"), running("plain")],
    )
    agent = make_bus("agent-a1")
    with watcher_process(router) as proc:
        web_healthy = wait_verdict(health, "web", "healthy")
        assert (web_healthy.agent, web_healthy.probe, web_healthy.sender) == ("a1", "tcp", "health-watcher")
        api = wait_verdict(health, "api", "unhealthy")
        assert api.consecutive_failures == 2 and "status 500, expected 200" in api.last_error
        assert verdicts(health.items, "api")[0] == ("starting", 0)

        tcp_listener.close()  # the workload stops accepting connections
        web = wait_verdict(health, "web", "unhealthy")
        assert web.consecutive_failures == 2 and "refused" in web.last_error.lower()

        seen = len(verdicts(health.items, "web"))
        agent.put("ank/state/a1/web", running("web", restarts=1))  # the agent restarted it
        wait_verdict(health, "web", "starting", after=seen)
        assert not [m for _, m in health.items if isinstance(m, HealthReport) and m.workload == "plain"]
        assert proc.poll() is None


def test_put_on_desired_makes_the_watcher_probe_new_workloads(
    router: str,
    planner: FakePlanner,
    health: Collector,
    make_bus: Callable[[str], Bus],
    tcp_listener: socket.socket,
) -> None:
    user = make_bus("user")
    with watcher_process(router, "--refresh", "60"):  # the periodic refresh cannot be what finds it
        wait_for_queries(planner, 1)
        port = tcp_listener.getsockname()[1]
        planner.set({"web": workload(tcp=f"127.0.0.1:{port}", **FAST)}, [running("web")])
        user.put("ank/desired", b"apiVersion: v1\nworkloads: {}\n")
        wait_verdict(health, "web", "healthy")


def test_zenoh_key_going_stale_makes_the_workload_unhealthy(
    router: str, planner: FakePlanner, health: Collector, make_bus: Callable[[str], Bus]
) -> None:
    planner.set({"robot": workload(zenoh="robot/1/pose", max_age_ms=400, **FAST)}, [running("robot")])
    robot = make_bus("robot")
    with watcher_process(router):
        wait_verdict(health, "robot", "unhealthy")  # nothing published yet
        deadline = time.monotonic() + 10
        seen = len(verdicts(health.items, "robot"))
        while verdicts(health.items, "robot")[seen:].count(("healthy", 0)) == 0:
            assert time.monotonic() < deadline, "the key never counted as fresh"
            robot.put("robot/1/pose", b'{"x": 1}')
            time.sleep(0.05)
        stale = wait_verdict(health, "robot", "unhealthy", after=seen)
        assert "last update" in stale.last_error


def test_agent_filter_watches_only_that_agents_workloads(
    router: str, planner: FakePlanner, health: Collector, tcp_listener: socket.socket
) -> None:
    port = tcp_listener.getsockname()[1]
    check = {"tcp": f"127.0.0.1:{port}", **FAST}
    planner.set(
        {"mine": workload("a2", **check), "theirs": workload("a1", **check)},
        [running("mine", "a2"), running("theirs", "a1")],
    )
    with watcher_process(router, "--agent", "a2"):
        report = wait_verdict(health, "mine", "healthy")
        assert report.sender == "health-watcher-a2"
        wait_for_queries(planner, planner.queries + 2)  # two more refreshes: time enough to have probed `theirs`
        assert verdicts(health.items, "theirs") == []


def test_garbage_on_the_bus_changes_nothing_and_late_joiners_can_query_verdicts(
    router: str,
    planner: FakePlanner,
    health: Collector,
    make_bus: Callable[[str], Bus],
    tcp_listener: socket.socket,
) -> None:
    port = tcp_listener.getsockname()[1]
    planner.set({"web": workload(tcp=f"127.0.0.1:{port}", **FAST)}, [running("web")])
    noise = make_bus("noise")
    with watcher_process(router) as proc:
        wait_verdict(health, "web", "healthy")
        planner.garbage = True
        asked = planner.queries
        for payload in (b"\xff\xfe", b"{}", b'{"workload": 3}', b"[1,2"):
            noise.put("ank/state/a1/web", payload)
            noise.put("ank/desired", payload)
        wait_for_queries(planner, asked + 2)  # the watcher saw the garbage CompleteState, twice
        seen = len(verdicts(health.items, "web"))
        planner.garbage = False
        late = make_bus("late-joiner")
        replies = late.get_decoded("ank/health/**", HealthReport)
        assert [(r.workload, r.status) for r in replies] == [("web", "healthy")]
        assert proc.poll() is None
        # still probing: the series goes on, no restart was made up from the noise
        tcp_listener.close()
        wait_verdict(health, "web", "unhealthy", after=seen)
        assert ("starting", 0) not in verdicts(health.items, "web")[seen:]


def test_sigterm_stops_the_watcher_without_waiting_for_a_hanging_probe(
    router: str, planner: FakePlanner, tmp_path: Path
) -> None:
    marker = tmp_path / "probing"
    hanging = ["sh", "-c", f"touch {marker}; sleep 60"]
    planner.set({"slow": workload(exec=hanging, **{**FAST, "timeout_ms": 60_000})}, [running("slow")])
    with watcher_process(router) as proc:
        wait_for(marker.exists, timeout=10, what="the exec probe to start")
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5


def test_unreachable_router_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.health_watcher", "--server", f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        env=child_env(f"tcp/127.0.0.1:{free_port()}"),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2 and b"cannot open Zenoh session" in done.stderr


def wait_for_queries(planner: FakePlanner, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while planner.queries < count:
        assert time.monotonic() < deadline, f"the watcher asked ank/cmd/state {planner.queries} times, not {count}"
        time.sleep(0.02)
