"""The `podman` connector against real rootful podman and real containers
(local test images: scripts/build-test-images.sh)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.agent.runtimes.base import RunHandle, StartError, StartSpec
from services.agent.runtimes.podman import PodmanRuntime
from services.agent.runtimes.podman.cli import EventStream, PodmanCli
from services.agent.runtimes.podman.connector import RESTART_ENV
from tests.helpers import ROOT, wait_for
from tests.test_podman_helpers import ALPINE, IMAGE_RULES, SLEEPY, Events, containers_of, podman, podman_agent

pytestmark = [pytest.mark.podman, pytest.mark.slow]
__all__ = ["podman_agent"]  # the fixture, imported for pytest


def spec(agent: str, workload: str, config: str, *, instance: str = "i1", **kw: object) -> StartSpec:
    return StartSpec(agent=agent, workload=workload, instance=instance, runtime_config=config, **kw)  # type: ignore[arg-type]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[PodmanRuntime]:
    rt = PodmanRuntime(tmp_path, image_map=IMAGE_RULES)
    yield rt
    rt.close()


def test_create_reports_running_then_the_exit_code(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'sleep 0.5; exit 3']\n"
    handle = runtime.create(spec(podman_agent, "exits3", config), events)
    events.wait("exited")
    assert events.kinds() == ["running", "exited"]
    assert events.wait("exited")[1].exit_code == 3
    assert handle.id in containers_of(podman_agent)
    assert handle.record["name"] == f"exits3.i1.{podman_agent}"


def test_container_carries_agent_workload_and_instance_labels(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "labelled", f"image: {SLEEPY}\n", instance="abc123"), events)
    events.wait("running")
    labels = podman("inspect", "--format", "{{json .Config.Labels}}", handle.id).stdout
    assert f'"ank.agent":"{podman_agent}"' in labels
    assert '"ank.workload":"labelled"' in labels
    assert '"ank.instance":"abc123"' in labels


def test_missing_image_is_a_retryable_start_error_that_leaves_nothing(
    runtime: PodmanRuntime, podman_agent: str
) -> None:
    config = 'image: image_typo:latest\ncommandOptions: [ "--entrypoint", "/bin/true" ]\n'
    with pytest.raises(StartError) as caught:
        runtime.create(spec(podman_agent, "hello1", config), Events())
    assert caught.value.permanent is False
    assert "image_typo" in str(caught.value)
    assert containers_of(podman_agent) == []


def test_unknown_podman_option_is_a_permanent_start_error(runtime: PodmanRuntime, podman_agent: str) -> None:
    with pytest.raises(StartError) as caught:
        runtime.create(spec(podman_agent, "bogus", f"image: {ALPINE}\ncommandOptions: [--bogus]\n"), Events())
    assert caught.value.permanent is True
    assert "--bogus" in str(caught.value)


def test_missing_command_is_a_start_error_and_the_created_container_is_removed(
    runtime: PodmanRuntime, podman_agent: str
) -> None:
    with pytest.raises(StartError):
        runtime.create(spec(podman_agent, "nocmd", f"image: {ALPINE}\ncommandArgs: [/does/not/exist]\n"), Events())
    assert containers_of(podman_agent) == []


def test_stop_asks_with_sigterm_first(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "sleepy", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    # the shell has set its TERM trap once it has started its `sleep` (a TERM
    # before that is ignored by a PID 1 without a handler: the API starts fast)
    children = Path(f"/proc/{_main_pid(handle.id)}/task/{_main_pid(handle.id)}/children")
    wait_for(lambda: children.read_text().strip() != "", 10, "sleepy's trap set")
    asked = time.monotonic()
    runtime.stop(handle, grace_s=10)
    at, exited = events.wait("exited")
    assert exited.exit_code == 0  # sleepy's TERM trap exits 0: it was not killed
    assert at - asked < 5


def test_stop_kills_after_the_grace_period_when_sigterm_is_ignored(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, \"trap '' TERM; sleep 60 & wait; sleep 60\"]\n"
    handle = runtime.create(spec(podman_agent, "stubborn", config), events)
    events.wait("running")
    asked = time.monotonic()
    runtime.stop(handle, grace_s=1)
    at, exited = events.wait("exited", timeout=15)
    assert exited.exit_code == 137  # SIGKILL
    assert at - asked >= 0.9


def test_container_removed_by_hand_is_lost(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "victim", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    podman("rm", "-f", "-t", "0", handle.id)
    lost = events.wait("lost")[1]
    assert lost.workload == "victim"
    assert "removed" in lost.info


def test_rm_option_container_reports_its_exit_then_lost(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f'image: {ALPINE}\ncommandOptions: [ "--rm"]\ncommandArgs: [ "echo", "Hello Ankaios"]\n'
    runtime.create(spec(podman_agent, "hello1", config), events)
    events.wait("lost")
    assert events.kinds() == ["running", "exited", "lost"]
    assert events.wait("exited")[1].exit_code == 0


def test_stopping_an_rm_container_is_not_lost(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "rmsleepy", f"image: {SLEEPY}\ncommandOptions: [--rm]\n"), events)
    events.wait("running")
    runtime.stop(handle, grace_s=5)
    events.wait("exited")
    wait_for(lambda: containers_of(podman_agent) == [], what="--rm container gone")
    assert "lost" not in events.kinds()


def test_create_again_of_the_same_instance_replaces_the_old_container_without_lost(
    runtime: PodmanRuntime, podman_agent: str
) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'exit 1']\n"
    first = runtime.create(spec(podman_agent, "again", config), events)
    events.wait("exited")
    second = runtime.create(spec(podman_agent, "again", config), events)
    events.wait("exited", count=2)
    assert second.id != first.id
    assert containers_of(podman_agent) == [second.id]
    assert events.kinds() == ["running", "exited", "running", "exited"]


def test_remove_deletes_the_container_quietly(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "gone", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    runtime.stop(handle, 5)
    events.wait("exited")
    runtime.remove(handle)  # an ended container: removed within DEFERRED_REMOVE_S
    wait_for(lambda: containers_of(podman_agent) == [], timeout=10, what="the container removed")
    assert events.kinds() == ["running", "exited"]


def test_restart_after_remove_takes_the_pending_removal_over(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'exit 2']\n"
    first = runtime.create(spec(podman_agent, "restarter", config), events)
    events.wait("exited")
    runtime.remove(first)
    second = runtime.create(spec(podman_agent, "restarter", config), events)
    events.wait("exited", count=2)
    assert containers_of(podman_agent) == [second.id]
    assert events.kinds() == ["running", "exited", "running", "exited"]


def test_close_removes_what_is_pending(tmp_path: Path, podman_agent: str) -> None:
    runtime = PodmanRuntime(tmp_path, image_map=IMAGE_RULES)
    events = Events()
    handle = runtime.create(spec(podman_agent, "short", f"image: {ALPINE}\ncommandArgs: [true]\n"), events)
    events.wait("exited")
    runtime.remove(handle)
    runtime.close()
    assert containers_of(podman_agent) == []


def test_adopt_returns_the_running_container_of_an_unchanged_instance(tmp_path: Path, podman_agent: str) -> None:
    before = PodmanRuntime(tmp_path, image_map=IMAGE_RULES)
    events = Events()
    try:
        running = before.create(spec(podman_agent, "keeper", f"image: {SLEEPY}\n"), events)
        ended = before.create(spec(podman_agent, "ender", f"image: {ALPINE}\ncommandArgs: [true]\n"), events)
        events.wait("running", "keeper")
        events.wait("exited", "ender")
    finally:
        before.close()  # the agent exits; its containers stay
    after = PodmanRuntime(tmp_path, image_map=IMAGE_RULES)
    later = Events()
    try:
        other_instance = RunHandle(
            workload="keeper", instance="i0", runtime="podman", id="", record={"agent": podman_agent}
        )
        adopted = after.adopt([running, ended, other_instance], later)
        assert [(h.workload, h.id) for h in adopted] == [("keeper", running.id)]
        # watched again: its exit is reported
        after.stop(adopted[0], 5)
        assert later.wait("exited")[1].workload == "keeper"
    finally:
        after.close()


def test_logs_returns_the_output_lines_and_tail(either: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandOptions: [--entrypoint, /bin/sh]\ncommandArgs: [-c, \"echo -e '1\\n2\\n3'\"]\n"
    handle = either.create(spec(podman_agent, "count", config), events)
    events.wait("exited")
    assert list(either.logs(handle)) == ["1", "2", "3"]
    assert list(either.logs(handle, tail=1)) == ["3"]
    assert list(either.logs(handle, tail=0)) == []
    assert _through(either, "logs") == either.transport


def test_logs_carry_stderr_long_lines_and_an_unfinished_last_line(either: PodmanRuntime, podman_agent: str) -> None:
    # through the API: stdout and stderr come as frames of a multiplexed stream
    events = Events()
    script = "echo out; echo err >&2; head -c 100000 /dev/zero | tr '\\\\0' x; echo; printf 'no newline'"
    handle = either.create(spec(podman_agent, "mixed", f'image: {ALPINE}\ncommandArgs: [sh, -c, "{script}"]\n'), events)
    events.wait("exited")
    lines = list(either.logs(handle))
    # conmon reads the two pipes apart: the order across them is podman's
    assert sorted(lines) == sorted(["out", "err", "x" * 100000, "no newline"])
    assert _through(either, "logs") == either.transport


def test_logs_follow_yields_lines_while_they_come(either: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'echo a; sleep 1; echo b; sleep 60']\n"
    handle = either.create(spec(podman_agent, "talker", config), events)
    events.wait("running")
    lines = either.logs(handle, follow=True)
    assert next(lines) == "a"
    assert next(lines) == "b"
    lines.close()  # type: ignore[attr-defined]
    assert _through(either, "logs") == either.transport


def test_files_are_mounted_read_only_at_their_mount_point(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'cat /etc/app/greeting; echo >>/etc/app/greeting || exit 7']\n"
    files = [("/etc/app/greeting", b"Hello, World!\n")]
    handle = runtime.create(spec(podman_agent, "files", config, files=files), events)
    assert events.wait("exited")[1].exit_code == 7  # written: refused
    assert next(iter(runtime.logs(handle))) == "Hello, World!"


@pytest.fixture(params=["api", "cli"])
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PodmanRuntime]:
    """The connector on each transport; on "api" every CLI command it runs is
    recorded (runtime.cli.commands) to show what did not go through the CLI."""
    cli = RecordingCli()
    rt = PodmanRuntime(tmp_path, cli=cli, image_map=IMAGE_RULES, transport=None if request.param == "api" else "cli")
    yield rt
    rt.close()


class RecordingCli(PodmanCli):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(args))
        return super().run(args, **kw)

    def lines(self, args: list[str]) -> Iterator[str]:
        self.commands.append(list(args))
        return super().lines(args)


def _through(runtime: PodmanRuntime, command: str) -> str:
    """Which transport served `command` (stats, logs): the CLI if it ran."""
    cli = runtime.cli
    assert isinstance(cli, RecordingCli)
    return "cli" if any(args[:1] == [command] for args in cli.commands) else "api"


def test_usage_reports_memory_of_running_containers(either: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = either.create(spec(podman_agent, "measured", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    usage = either.usage([handle])
    assert usage["measured"].memory_bytes and usage["measured"].memory_bytes > 0
    assert _through(either, "stats") == either.transport


def test_usage_still_reports_the_others_when_one_container_is_gone(either: PodmanRuntime, podman_agent: str) -> None:
    # `podman stats` of a container removed meanwhile fails the whole call (the API's too)
    events = Events()
    alive = either.create(spec(podman_agent, "alive", f"image: {SLEEPY}\n"), events)
    gone = either.create(spec(podman_agent, "gone", f"image: {SLEEPY}\n"), events)
    wait_for(lambda: events.kinds().count("running") == 2, 30, "both running")
    assert set(either.usage([gone, alive])) == {"gone", "alive"}  # one call for both
    podman("rm", "-f", "-t", "0", gone.id)
    usage = either.usage([gone, alive])
    assert set(usage) == {"alive"}
    assert usage["alive"].memory_bytes and usage["alive"].memory_bytes > 0
    assert _through(either, "stats") == either.transport


def test_available_on_this_machine(runtime: PodmanRuntime, podman_agent: str) -> None:
    assert runtime.available() is True


def _main_pid(container_id: str) -> int:
    return int(podman("inspect", "--format", "{{.State.Pid}}", container_id).stdout.strip())


class SilentEvents:
    """An API event stream that never says anything (until shut down)."""

    def __init__(self) -> None:
        self._ended = threading.Event()

    def lines(self) -> Iterator[bytes]:
        self._ended.wait(60)
        return iter(())

    def shutdown(self) -> None:
        self._ended.set()

    def close(self) -> None:
        self._ended.set()


@pytest.mark.parametrize("transport", ["api", "cli"])
def test_exit_file_reports_a_crash_while_the_event_stream_is_silent(
    tmp_path: Path, podman_agent: str, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # an event stream (`podman events`, or the API's) that never says anything: only conmon's exit file can tell
    def silent(self: EventStream) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE)

    monkeypatch.setattr(EventStream, "_spawn", silent)
    monkeypatch.setattr(EventStream, "_connect", lambda self, api: SilentEvents())
    runtime = PodmanRuntime(tmp_path, image_map=IMAGE_RULES, transport=None if transport == "api" else "cli")
    events = Events()
    try:
        handle = runtime.create(spec(podman_agent, "crasher", f"image: {SLEEPY}\n"), events)
        events.wait("running")
        assert runtime.transport == transport
        os.kill(_main_pid(handle.id), signal.SIGKILL)
        assert events.wait("exited", timeout=10)[1].exit_code == 137
    finally:
        runtime.close()


@pytest.mark.parametrize("transport", ["api", "cli"])
def test_event_stream_that_dies_is_restarted_without_losing_an_exit(
    tmp_path: Path, podman_agent: str, transport: str
) -> None:
    runtime = PodmanRuntime(
        tmp_path,
        cli=PodmanCli(exits_dir=tmp_path / "no-exit-files"),
        image_map=IMAGE_RULES,
        transport=None if transport == "api" else "cli",
    )
    events = Events()
    try:
        handle = runtime.create(spec(podman_agent, "survivor", f"image: {SLEEPY}\n"), events)
        events.wait("running")
        assert runtime.transport == transport
        stream = runtime.watcher._streams[podman_agent]
        if transport == "api":
            assert stream._proc is None  # no `podman events` process at all
            conn = stream._conn
            assert conn is not None
            conn.shutdown()  # the connection ends (the service restarted, say)
        else:
            old = stream._proc
            assert old is not None
            old.kill()
        podman("kill", handle.id)  # while no stream runs
        assert events.wait("exited", timeout=15)[1].exit_code == 137
        if transport == "api":
            assert stream._conn is not conn
        else:
            assert stream._proc is not old
    finally:
        runtime.close()


def test_an_exit_is_reported_when_the_api_service_is_killed(tmp_path: Path, podman_agent: str) -> None:
    # the API event stream's connection ends with the service; the restarted
    # stream finds no service answering and reads `podman events` from where it was
    runtime = PodmanRuntime(tmp_path, cli=PodmanCli(exits_dir=tmp_path / "no-exit-files"), image_map=IMAGE_RULES)
    events = Events()
    try:
        handle = runtime.create(spec(podman_agent, "orphan", f"image: {SLEEPY}\n"), events)
        events.wait("running")
        service = runtime.service.child
        if service is None:
            pytest.skip("a system podman socket is used: not ours to kill")
        stream = runtime.watcher._streams[podman_agent]
        assert stream._conn is not None and stream._proc is None
        service.kill()
        service.wait(10)
        podman("kill", handle.id)
        assert events.wait("exited", timeout=20)[1].exit_code == 137
        assert stream._proc is not None  # through the CLI now
    finally:
        runtime.close()


def test_containers_go_through_the_api_service_by_default(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    runtime.create(spec(podman_agent, "viaapi", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    assert runtime.transport == "api"
    service = runtime.service.child
    assert service is None or service.poll() is None  # our own `podman system service`, alive
    runtime.close()
    assert service is None or service.poll() is not None  # and gone with the connector


def test_forced_cli_fallback_runs_reports_and_stops(tmp_path: Path, podman_agent: str) -> None:
    runtime = PodmanRuntime(tmp_path, image_map=IMAGE_RULES, transport="cli")
    events = Events()
    try:
        assert runtime.transport == "cli"
        assert runtime.service.child is None  # no service started at all
        assert runtime.available() is True
        handle = runtime.create(spec(podman_agent, "viacli", f"image: {SLEEPY}\n"), events)
        events.wait("running")
        assert handle.id in containers_of(podman_agent)
        runtime.stop(handle, 1.0)
        events.wait("exited")
        runtime.remove(handle)
        wait_for(lambda: handle.id not in containers_of(podman_agent), 30, "container removed")
    finally:
        runtime.close()


def test_an_option_the_api_path_cannot_translate_runs_through_the_cli(
    runtime: PodmanRuntime, podman_agent: str
) -> None:
    events = Events()
    config = f"image: {ALPINE}\ncommandOptions: [--memory, 64m]\ncommandArgs: [sh, -c, 'exit 4']\n"
    handle = runtime.create(spec(podman_agent, "limited", config), events)
    assert events.wait("exited")[1].exit_code == 4
    assert runtime.transport == "api"
    assert podman("inspect", "--format", "{{.HostConfig.Memory}}", handle.id).stdout.strip() == str(64 * 1024 * 1024)


def test_translated_options_reach_the_container(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    config = (
        f"image: {ALPINE}\ncommandOptions: [-e, GREETING=hi there, -w, /tmp, --hostname, box1]\n"
        "commandArgs: [sh, -c, 'echo \"$GREETING $(pwd) $(hostname)\"']\n"
    )
    handle = runtime.create(spec(podman_agent, "translated", config), events)
    assert events.wait("exited")[1].exit_code == 0
    assert list(runtime.logs(handle)) == ["hi there /tmp box1"]


def _crash_and_restart(runtime: PodmanRuntime, agent: str) -> tuple[RunHandle, RunHandle, Events]:
    config = f"image: {ALPINE}\ncommandArgs: [sh, -c, 'sleep 0.3; exit 2']\n"
    first = Events()
    handle = runtime.create(spec(agent, "again", config), first)
    assert first.wait("exited")[1].exit_code == 2
    runtime.remove(handle)  # as the agent does before a restart
    second = Events()
    return handle, runtime.create(spec(agent, "again", config), second), second


def test_restart_after_a_crash_starts_the_ended_container_again_with_a_new_state_sequence(
    runtime: PodmanRuntime, podman_agent: str
) -> None:
    handle, again, events = _crash_and_restart(runtime, podman_agent)
    assert again.id == handle.id
    assert events.wait("exited")[1].exit_code == 2  # the second run's own exit, told once
    assert events.kinds() == ["running", "exited"]
    assert containers_of(podman_agent) == [handle.id]


def test_restart_recreates_the_container_when_asked(
    runtime: PodmanRuntime, podman_agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RESTART_ENV, "recreate")
    handle, again, events = _crash_and_restart(runtime, podman_agent)
    assert again.id != handle.id
    assert events.wait("exited")[1].exit_code == 2
    assert events.kinds() == ["running", "exited"]
    wait_for(lambda: containers_of(podman_agent) == [again.id], 30, "only the new container")


def test_a_container_the_agent_stopped_is_not_started_again(runtime: PodmanRuntime, podman_agent: str) -> None:
    events = Events()
    handle = runtime.create(spec(podman_agent, "stopped", f"image: {SLEEPY}\n"), events)
    events.wait("running")
    runtime.stop(handle, 0.0)
    events.wait("exited")
    runtime.remove(handle)
    again = runtime.create(spec(podman_agent, "stopped", f"image: {SLEEPY}\n"), Events())
    assert again.id != handle.id


def test_the_api_service_ends_with_an_agent_killed_by_sigkill(tmp_path: Path, podman_agent: str) -> None:
    script = (
        "import sys, time\n"
        "from services.agent.runtimes.podman import PodmanRuntime\n"
        f"rt = PodmanRuntime({str(tmp_path)!r})\n"
        "assert rt.service.api() is not None\n"
        "print(rt.service.child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert owner.stdout is not None
        service = int(owner.stdout.readline())
        assert Path(f"/proc/{service}").exists()
        owner.kill()
        owner.wait(10)
        wait_for(lambda: not Path(f"/proc/{service}").exists() or _zombie(service), 15, "the service gone")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
