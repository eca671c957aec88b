"""The probes against real servers on loopback, real commands and a real
Zenoh router."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.manifest import HealthCheck
from services.bus import Bus
from services.health_watcher.core import ProbeResult, StartProbe, probe_kind
from services.health_watcher.probes import KeyFreshness, ProbeContext, run_probe
from tests.helpers import free_port, wait_for


def request(check: HealthCheck, runtime: str = "process", runtime_config: str = "command: x") -> StartProbe:
    return StartProbe(7, "web", "a1", probe_kind(check), check, runtime, runtime_config)


def probe(check: HealthCheck, context: ProbeContext | None = None, **kw: str) -> ProbeResult:
    result = run_probe(request(check, **kw), context or ProbeContext())
    assert (result.series_id, result.workload) == (7, "web")
    return result


# -- tcp ------------------------------------------------------------------------------------------------------------
def test_tcp_probe_succeeds_while_listening_and_fails_once_the_listener_closes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    check = HealthCheck(tcp=f"127.0.0.1:{port}", timeout_ms=1000)
    try:
        assert probe(check).ok
    finally:
        listener.close()
    result = probe(check)
    assert not result.ok and f"127.0.0.1:{port}" in result.error and "refused" in result.error.lower()


# -- http -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def http_server() -> Iterator[tuple[str, threading.Event]]:
    """A real HTTP server: /ok answers 200, /broken 500, /slow waits for the event."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow":
                release.wait(5)
            code = 500 if self.path == "/broken" else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_probe_expects_the_configured_status(http_server: tuple[str, threading.Event]) -> None:
    base, _ = http_server
    assert probe(HealthCheck(http=f"{base}/ok", timeout_ms=2000)).ok
    broken = probe(HealthCheck(http=f"{base}/broken", timeout_ms=2000))
    assert not broken.ok and "status 500, expected 200" in broken.error
    assert probe(HealthCheck(http=f"{base}/broken", http_status=500, timeout_ms=2000)).ok


def test_http_probe_times_out(http_server: tuple[str, threading.Event]) -> None:
    base, _ = http_server
    started = time.monotonic()
    result = probe(HealthCheck(http=f"{base}/slow", timeout_ms=200))
    assert not result.ok and "timed out" in result.error
    assert time.monotonic() - started < 2


def test_http_probe_fails_when_nothing_listens() -> None:
    result = probe(HealthCheck(http=f"http://127.0.0.1:{free_port()}/", timeout_ms=1000))
    assert not result.ok and "refused" in result.error.lower()


# -- exec -----------------------------------------------------------------------------------------------------------
def test_exec_probe_runs_in_the_process_workloads_env_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    config = f"command: x\nenv: {{ANK_PROBE_VAR: expected}}\ncwd: {tmp_path}\n"
    script = 'test "$ANK_PROBE_VAR" = expected && test "$ANK_WORKLOAD.$ANK_AGENT" = web.a1 && test -f ready'
    check = HealthCheck(exec=["sh", "-c", script], timeout_ms=5000)
    assert probe(check, runtime_config=config).ok
    result = probe(check, runtime_config="command: x")  # neither the env nor the cwd
    assert not result.ok and "exited with 1" in result.error


def test_exec_probe_failure_names_exit_code_and_output() -> None:
    result = probe(HealthCheck(exec=["sh", "-c", "echo database not ready; exit 3"], timeout_ms=5000))
    assert not result.ok and result.error == "sh exited with 3: database not ready"


def test_exec_probe_timeout_kills_the_whole_command_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    result = probe(HealthCheck(exec=["sh", "-c", script], timeout_ms=300))
    assert not result.ok and "timed out after 300 ms" in result.error
    assert time.monotonic() - started < 5
    grandchild = int(wait_for(lambda: pidfile.read_text().strip(), timeout=5, what="the pid file"))
    wait_for(lambda: not _alive(grandchild), timeout=5, what="the grandchild to be killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its reaper is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_exec_probe_of_a_missing_program_fails_with_its_name() -> None:
    result = probe(HealthCheck(exec=["/nonexistent/healthcheck"]))
    assert not result.ok and "cannot run '/nonexistent/healthcheck'" in result.error


def test_exec_probe_with_a_bad_runtime_config_fails_naming_it() -> None:
    result = probe(HealthCheck(exec=["true"]), runtime_config="args: [1")
    assert not result.ok and "runtimeConfig" in result.error


def test_exec_probe_in_podman_without_podman_fails_clearly() -> None:
    result = probe(HealthCheck(exec=["true"]), ProbeContext(podman=None), runtime="podman")
    assert not result.ok and "podman is not installed" in result.error


# -- zenoh ----------------------------------------------------------------------------------------------------------
def test_key_freshness_ages_with_the_clock() -> None:
    now = [100.0]
    freshness = KeyFreshness(clock=lambda: now[0])
    assert freshness.age_ms("k") is None
    freshness.touch("k")
    now[0] += 0.25
    assert freshness.age_ms("k") == 250


def test_zenoh_probe_fails_when_the_key_goes_stale(make_bus: Callable[[str], Bus]) -> None:
    watcher, robot = make_bus("watcher"), make_bus("robot")
    context = ProbeContext(KeyFreshness())
    watcher.subscribe_raw("robot/*/pose", lambda _k, _p: context.freshness.touch("robot/*/pose"))
    check = HealthCheck(zenoh="robot/*/pose", max_age_ms=300)
    never = probe(check, context)
    assert not never.ok and "no update yet" in never.error
    # publish until the probe sees the key fresh (the subscription takes a moment to reach the router)
    deadline = time.monotonic() + 10
    while not probe(check, context).ok:
        assert time.monotonic() < deadline, "the key never became fresh"
        robot.put("robot/1/pose", b"{}")
        time.sleep(0.02)
    stale = wait_for(lambda: (r := probe(check, context)) and not r.ok and r, timeout=5, what="the key to go stale")
    assert "last update" in stale.error and "max 300 ms" in stale.error


# -- podman ---------------------------------------------------------------------------------------------------------
FAKE_PODMAN = textwrap.dedent(
    """\
    #!{python}
    # A stand-in for podman: a container "web.abc.a1" whose HEALTHCHECK fails
    # (its state is in the file next to this script), and "plain" with none.
    import json, pathlib, sys
    here = pathlib.Path(__file__).parent
    args = sys.argv[1:]
    (here / "calls").open("a").write(" ".join(args) + "\\n")
    health = json.loads((here / "health.json").read_text())
    if args[:1] == ["ps"]:
        web = {{"Names": ["web.abc.a1"], "Labels": {{}}}}
        plain = {{"Names": ["other"], "Labels": {{"ank.workload": "plain"}}}}
        kube = {{"Names": ["kube-app-pod-main"], "Labels": {{"ank.workload": "kube-app", "ank.agent": "a1"}}}}
        print(json.dumps([web, plain, kube]))
    elif args[:1] == ["inspect"]:
        name = args[-1]
        config = {{"Healthcheck": {{"Test": ["CMD-SHELL", "exit 1"]}}}} if name == "web.abc.a1" else {{}}
        print(json.dumps([{{"Name": name, "Config": config, "State": {{"Health": health}}}}]))
    elif args[:2] == ["healthcheck", "run"]:
        health["FailingStreak"] += 1
        health["Status"] = "unhealthy" if health["FailingStreak"] >= 3 else "starting"
        health["Log"].append({{"ExitCode": 1, "Output": "kuksa bridge not listed"}})
        (here / "health.json").write_text(json.dumps(health))
        print("unhealthy"); sys.exit(1)
    elif args[:1] == ["exec"]:
        sys.exit(0 if args[2:] == ["ros2", "node", "list"] else 4)
    else:
        sys.exit(125)
    """
)


@pytest.fixture
def fake_podman(tmp_path: Path) -> str:
    path = tmp_path / "podman"
    path.write_text(FAKE_PODMAN.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "health.json").write_text('{"Status": "starting", "FailingStreak": 0, "Log": []}')
    return str(path)


def test_podman_health_is_read_back_after_running_the_containers_healthcheck(fake_podman: str) -> None:
    context = ProbeContext(podman=fake_podman)
    check = HealthCheck(interval_ms=1000, timeout_ms=5000)
    req = StartProbe(7, "web", "a1", "podman", check, "podman", "image: x")
    first = run_probe(req, context)
    assert (first.status, first.failing_streak, first.ok) == ("starting", 1, False)
    run_probe(req, context)
    third = run_probe(req, context)
    assert (third.status, third.failing_streak, third.error) == ("unhealthy", 3, "kuksa bridge not listed")
    calls = Path(fake_podman).with_name("calls").read_text()
    assert "healthcheck run web.abc.a1" in calls


def test_podman_container_without_healthcheck_is_not_applicable(fake_podman: str) -> None:
    req = StartProbe(7, "plain", "a1", "podman", HealthCheck(timeout_ms=5000), "podman", "image: x")
    result = run_probe(req, ProbeContext(podman=fake_podman))
    assert not result.applicable


def test_podman_health_without_podman_is_skipped() -> None:
    req = StartProbe(7, "web", "a1", "podman", HealthCheck(), "podman", "image: x")
    assert not run_probe(req, ProbeContext(podman=None)).applicable


def test_container_is_found_by_the_agents_labels(fake_podman: str) -> None:
    req = StartProbe(7, "kube-app", "a1", "exec", HealthCheck(exec=["ros2", "node", "list"]), "podman-kube", "")
    assert run_probe(req, ProbeContext(podman=fake_podman)).ok
    assert "exec kube-app-pod-main ros2 node list" in Path(fake_podman).with_name("calls").read_text()


def test_exec_probe_of_a_podman_workload_runs_in_its_container(fake_podman: str) -> None:
    context = ProbeContext(podman=fake_podman)
    ok = probe(HealthCheck(exec=["ros2", "node", "list"], timeout_ms=5000), context, runtime="podman")
    assert ok.ok
    assert "exec web.abc.a1 ros2 node list" in Path(fake_podman).with_name("calls").read_text()
    failed = probe(HealthCheck(exec=["false"], timeout_ms=5000), context, runtime="podman")
    assert not failed.ok and "exited with 4" in failed.error
