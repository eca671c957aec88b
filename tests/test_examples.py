"""The middleware examples (examples/) against a real Zenoh router on
loopback: the subscriber prints what the project's Bus publishes on
`ank/state/**`, the publisher's manifest arrives on `ank/desired`, and a real
planner's rejection reaches the publisher."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import ExecutionState, WorkloadState
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, stop_process, wait_for

MakeBus = Callable[[str], Bus]
EXAMPLES = ROOT / "examples"


class LineReader:
    """Collects a child's output lines as ("stdout"|"stderr", line) on a thread,
    so that the test waits on them with a bounded timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines = Collector()
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            assert stream is not None
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines(name, line.rstrip("\n"))

    def wait_line(self, stream: str, needle: str, timeout: float = 10.0) -> str:
        found = self.lines.wait(
            lambda items: next((str(line) for s, line in items if s == stream and needle in str(line)), None),
            timeout=timeout,
            what=f"{needle!r} on the example's {stream}",
        )
        return str(found)


@pytest.fixture
def subscriber(router: str) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "subscribe_states.py"), "--server", router],
        cwd=ROOT,
        env=child_env(router),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reader = LineReader(proc)
        reader.wait_line("stderr", "subscribed to ank/state/**")
        yield proc, reader
    finally:
        stop_process(proc)


def publish_until_printed(
    bus: Bus, key: str, state: WorkloadState | bytes, reader: LineReader, needle: str, stream: str = "stdout"
) -> str:
    """Puts until the example prints it: the subscriber's declaration reaches
    the router asynchronously, and a put made before that is lost (ZENOH.md)."""
    printed: list[str] = []

    def attempt() -> bool:
        bus.put(key, state)
        try:
            printed.append(reader.wait_line(stream, needle, timeout=0.3))
        except AssertionError:
            return False
        return True

    wait_for(attempt, timeout=10, what=f"the subscriber to print {needle!r}")
    return printed[0]


def test_subscriber_prints_state_substate_and_additional_info_published_on_the_bus(
    make_bus: MakeBus, subscriber: tuple[subprocess.Popen[str], LineReader]
) -> None:
    _proc, reader = subscriber
    bus = make_bus("test-agent")
    state = WorkloadState(
        workload="ex-web",
        agent="ex-car1",
        execution_state=ExecutionState("Pending", "StartingFailed", "image not found"),
        restart_count=2,
    )
    line = publish_until_printed(bus, "ank/state/ex-car1/ex-web", state, reader, "ex-web@ex-car1")
    assert "ank/state/ex-car1/ex-web" in line
    assert "Pending(StartingFailed)" in line
    assert "image not found" in line
    assert "restarts=2" in line


def test_subscriber_skips_a_malformed_state_message_and_keeps_printing(
    make_bus: MakeBus, subscriber: tuple[subprocess.Popen[str], LineReader]
) -> None:
    proc, reader = subscriber
    bus = make_bus("test-garbage")
    garbage = b"\xff not json"
    publish_until_printed(bus, "ank/state/ex-car2/junk", garbage, reader, "skipped a malformed message", "stderr")
    state = WorkloadState(workload="ex-db", agent="ex-car2", execution_state=ExecutionState("Running", "Ok"))
    line = publish_until_printed(bus, "ank/state/ex-car2/ex-db", state, reader, "ex-db@ex-car2")
    assert "Running(Ok)" in line
    assert proc.poll() is None


def run_publisher(router: str, manifest: Path, wait: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "publish_manifest.py"), str(manifest), "--server", router, "--wait", str(wait)],
        cwd=ROOT,
        env=child_env(router),
        capture_output=True,
        text=True,
        timeout=30,
    )


MANIFEST = """\
apiVersion: v1
workloads:
  ex-hello:
    runtime: process
    agent: ex-nobody
    restartPolicy: NEVER
    runtimeConfig: |
      command: "true"
"""


def test_publisher_puts_the_manifest_text_on_ank_desired(make_bus: MakeBus, router: str, tmp_path: Path) -> None:
    bus = make_bus("test-desired-listener")
    received = Collector()
    bus.subscribe_raw("ank/desired", received)
    manifest = tmp_path / "hello.yaml"
    manifest.write_text(MANIFEST)

    result = run_publisher(router, manifest, wait=0.2)

    assert result.returncode == 0, result.stderr
    assert "no rejection" in result.stdout
    received.wait(lambda items: any(payload == MANIFEST.encode() for _k, payload in items), what="the manifest")


def test_publisher_reports_the_rejection_published_on_ank_events_rejected(
    make_bus: MakeBus, router: str, tmp_path: Path
) -> None:
    # A stand-in planner: answers every put on ank/desired with a rejection event.
    planner = make_bus("test-planner")
    planner.subscribe_raw(
        "ank/desired", lambda _k, _p: planner.event("rejected", "bad manifest: ex-reason", severity="error")
    )
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: v9\n")

    result = run_publisher(router, manifest, wait=10)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "rejected: bad manifest: ex-reason" in result.stdout


@pytest.fixture
def planner_process(router: str, make_bus: MakeBus, tmp_path: Path) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.planner", "--state-dir", str(tmp_path / "planner")],
        cwd=ROOT,
        env=child_env(router),
    )
    try:
        client = make_bus("test-examples-client")

        def answers() -> bool:
            assert proc.poll() is None, "the planner exited"
            return bool(client.get("ank/cmd/state", timeout=0.5))

        wait_for(answers, timeout=20, what="the planner to answer ank/cmd/state")
        yield
    finally:
        stop_process(proc)


@pytest.mark.usefixtures("planner_process")
def test_publisher_against_the_real_planner_reports_an_invalid_manifest_and_accepts_a_valid_one(
    router: str, make_bus: MakeBus, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.replace("NEVER", "SOMETIMES"))
    rejected = run_publisher(router, bad, wait=10)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "restartPolicy" in rejected.stdout

    good = tmp_path / "good.yaml"
    good.write_text(MANIFEST)
    states = Collector()
    make_bus("test-state-listener").subscribe("ank/state/**", WorkloadState, states)
    accepted = run_publisher(router, good, wait=1.0)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # The planner took it: ex-nobody never connected, so it publishes Pending(Initial).
    states.wait(
        lambda items: any(
            isinstance(s, WorkloadState) and s.workload == "ex-hello" and str(s.execution_state) == "Pending(Initial)"
            for _k, s in items
        ),
        what="Pending(Initial) of ex-hello",
    )
