"""The probes themselves: each runs one check with its timeout and says what
it found as a ProbeResult. They block (a subprocess, a connect, an HTTP GET),
so the shell runs them on a small thread pool, never on its loop thread. A
probe never raises: whatever goes wrong is the probe's failure, named.

- exec: for `process` workloads the command runs here with the workload's
  `env` and `cwd`; for `podman` and `podman-kube` workloads it runs in the
  workload's container (`podman exec`). Success is exit code 0.
- tcp: a connection to host:port is accepted within the timeout.
- http: a GET answers with the expected status within the timeout (proxies
  are not used: a health endpoint is the workload's own).
- zenoh: some key matching the expression was put within maxAgeMs; the
  watcher's subscriber records put times in a KeyFreshness.
- podman: the container's own HEALTHCHECK, run by `podman healthcheck run`
  and read back from `podman inspect`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from schemas.runtime_configs import ProcessConfig
from services.health_watcher.core import ProbeResult, StartProbe

OUTPUT_TAIL = 200  # characters of a failing command's output kept as its error


class KeyFreshness:
    """When a key expression last saw a put (monotonic seconds). Written from
    Zenoh's threads, read by probes: a lock, nothing that blocks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, key_expr: str) -> None:
        now = self._clock()
        with self._lock:
            self._last[key_expr] = now

    def age_ms(self, key_expr: str) -> int | None:
        """Milliseconds since the last put on key_expr; None if none yet."""
        with self._lock:
            last = self._last.get(key_expr)
        return None if last is None else int((self._clock() - last) * 1000)


class ProbeContext:
    """What probes need besides the request: the key freshness table and the
    podman binary (None when podman is absent)."""

    def __init__(self, freshness: KeyFreshness | None = None, podman: str | None = None) -> None:
        self.freshness = freshness or KeyFreshness()
        self.podman = podman
        self._commands: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._commands.add(proc)
            closed = self._closed
        if closed:
            _kill_group(proc)

    def finished(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._commands.discard(proc)

    def close(self) -> None:
        """Kills the commands probes are still running (the watcher is
        exiting; a probe of up to timeoutMs need not hold it up)."""
        with self._lock:
            self._closed = True
            running = list(self._commands)
        for proc in running:
            _kill_group(proc, reap=False)

    @staticmethod
    def find_podman() -> str | None:
        return shutil.which("podman")


def run_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    """Runs the probe the request names; never raises."""
    try:
        return _PROBES[request.probe](request, context)
    except Exception as exc:  # a bug or an unforeseen OS error is still only this probe's failure
        return _failed(request, f"{request.probe} probe error: {type(exc).__name__}: {exc}")


def _ok(request: StartProbe) -> ProbeResult:
    return ProbeResult(request.series_id, request.workload, ok=True)


def _failed(request: StartProbe, error: str) -> ProbeResult:
    return ProbeResult(request.series_id, request.workload, ok=False, error=error)


def _timeout_s(request: StartProbe) -> float:
    return request.check.timeout_ms / 1000


# -- exec -----------------------------------------------------------------------------------------------------------
def exec_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    argv = list(request.check.exec or [])
    if request.runtime == "process":
        try:
            config = msgspec.yaml.decode(request.runtime_config.encode(), type=ProcessConfig)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _failed(request, f"cannot read the workload's runtimeConfig: {exc}")
        # the environment the process runtime gives the workload (less its files folder)
        own = {"ANK_AGENT": request.agent, "ANK_WORKLOAD": request.workload, "ANK_INSTANCE": request.instance}
        env = {**os.environ, **own, **config.env}
        return _run_command(request, context, argv, env=env, cwd=config.cwd)
    if request.runtime in ("podman", "podman-kube"):
        if context.podman is None:
            return _failed(request, "podman is not installed here: cannot exec in the container")
        container = find_container(context.podman, request.workload, request.agent, _timeout_s(request))
        if container is None:
            return _failed(request, f"no running podman container found for workload {request.workload}")
        return _run_command(request, context, [context.podman, "exec", container, *argv], env=None, cwd=None)
    return _failed(request, f"exec probes are not supported for runtime {request.runtime!r}")


def _run_command(
    request: StartProbe, context: ProbeContext, argv: list[str], *, env: dict[str, str] | None, cwd: str | None
) -> ProbeResult:
    timeout = _timeout_s(request)
    try:
        # A session of its own, so that a timeout kills the whole command tree
        # (a shell's children included), not only its first process.
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return _failed(request, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    context.started(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return _failed(request, f"{argv[0]} timed out after {request.check.timeout_ms} ms")
    finally:
        context.finished(proc)
    if proc.returncode == 0:
        return _ok(request)
    tail = output.decode(errors="replace").strip()[-OUTPUT_TAIL:]
    return _failed(request, f"{argv[0]} exited with {proc.returncode}" + (f": {tail}" if tail else ""))


def _kill_group(proc: subprocess.Popen[bytes], *, reap: bool = True) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not reap:  # the probe's own thread reaps it
        return
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # output held open by something outside the group; give up on it
        pass


# -- tcp, http --------------------------------------------------------------------------------------------------------
def tcp_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    host, _, port = (request.check.tcp or "").rpartition(":")
    host = host.strip("[]")  # "[::1]:80"
    try:
        with socket.create_connection((host, int(port)), timeout=_timeout_s(request)):
            return _ok(request)
    except TimeoutError:
        return _failed(request, f"tcp {request.check.tcp}: no connection within {request.check.timeout_ms} ms")
    except OSError as exc:
        return _failed(request, f"tcp {request.check.tcp}: {exc.strerror or exc}")


def http_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    # deferred: urllib/http/ssl/email cost the watcher ~5 MB when no workload has an http check
    import urllib.error
    import urllib.request

    url, expected = request.check.http or "", request.check.http_status
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(url, timeout=_timeout_s(request)) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return _failed(request, f"http {url}: {reason}")
    if status == expected:
        return _ok(request)
    return _failed(request, f"http {url}: status {status}, expected {expected}")


# -- zenoh ------------------------------------------------------------------------------------------------------------
def zenoh_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    key, max_age = request.check.zenoh or "", request.check.max_age_ms
    age = context.freshness.age_ms(key)
    if age is None:
        return _failed(request, f"zenoh {key}: no update yet")
    if age > max_age:
        return _failed(request, f"zenoh {key}: last update {age} ms ago (max {max_age} ms)")
    return _ok(request)


# -- podman -----------------------------------------------------------------------------------------------------------
# The labels the agent's podman connectors put on every container they create
# (services.agent.runtimes.podman.core).
LABEL_WORKLOAD = "ank.workload"
LABEL_AGENT = "ank.agent"


def find_container(podman: str, workload: str, agent: str, timeout_s: float) -> str | None:
    """The running container of a workload: the one labelled with it (and its
    agent) by the agent's connectors, else one named as Ankaios names them
    (`<workload>.<instance>.<agent>`) or after the workload."""
    found = _podman_json(podman, ["ps", "--format", "json"], timeout_s)
    if not isinstance(found, list):
        return None
    by_name: str | None = None
    for container in found:
        names = [str(n) for n in container.get("Names") or []]
        labels = container.get("Labels") or {}
        if names and labels.get(LABEL_WORKLOAD) == workload and labels.get(LABEL_AGENT, agent) == agent:
            return names[0]
        for name in names:
            if name == workload or (name.startswith(f"{workload}.") and name.endswith(f".{agent}")):
                by_name = by_name or name
    return by_name


def podman_health_probe(request: StartProbe, context: ProbeContext) -> ProbeResult:
    if context.podman is None:
        return ProbeResult(request.series_id, request.workload, ok=False, applicable=False)
    timeout = _timeout_s(request)
    container = find_container(context.podman, request.workload, request.agent, timeout)
    if container is None:
        return _failed(request, f"no running podman container found for workload {request.workload}")
    if _health_of(context.podman, container, timeout) is None:
        return ProbeResult(request.series_id, request.workload, ok=False, applicable=False)
    # Without systemd nobody runs podman's healthcheck timer: run it now, then
    # read podman's verdict (which applies the image's retries and start period).
    _run_quietly([context.podman, "healthcheck", "run", container], timeout)
    health = _health_of(context.podman, container, timeout)
    if not health:
        return _failed(request, f"podman inspect {container}: no health status")
    status = str(health.get("Status", ""))
    if status not in ("starting", "healthy", "unhealthy"):
        return _failed(request, f"podman reports health {status!r} for {container}")
    log = health.get("Log") or []
    last_output = str(log[-1].get("Output", "")).strip()[-OUTPUT_TAIL:] if log else ""
    return ProbeResult(
        request.series_id,
        request.workload,
        ok=status == "healthy",
        error="" if status == "healthy" else last_output,
        status=status,  # type: ignore[arg-type]
        failing_streak=int(health.get("FailingStreak", 0) or 0),
    )


def _health_of(podman: str, container: str, timeout_s: float) -> dict[str, Any] | None:
    """podman's health record of a container; None if it defines no HEALTHCHECK."""
    found = _podman_json(podman, ["inspect", "--format", "json", container], timeout_s)
    if not isinstance(found, list) or not found:
        return None
    info = found[0]
    if not (info.get("Config") or {}).get("Healthcheck"):
        return None
    state = info.get("State") or {}
    health = state.get("Health") or state.get("Healthcheck") or {}  # the field's name changed in podman 4
    return dict(health) if isinstance(health, dict) else {}


def _podman_json(podman: str, args: list[str], timeout_s: float) -> Any:
    output = _run_quietly([podman, *args], timeout_s)
    if output is None:
        return None
    try:
        return json.loads(output)
    except ValueError:
        return None


def _run_quietly(argv: list[str], timeout_s: float) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode(errors="replace") if done.returncode in (0, 1) else None


_PROBES: dict[str, Callable[[StartProbe, ProbeContext], ProbeResult]] = {
    "exec": exec_probe,
    "tcp": tcp_probe,
    "http": http_probe,
    "zenoh": zenoh_probe,
    "podman": podman_health_probe,
}
