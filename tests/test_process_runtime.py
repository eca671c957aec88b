"""The `process` runtime with real processes: start, exit code, log file,
stop with grace then SIGKILL, StartingFailed causes, adoption."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.agent.runtimes.base import RunHandle, RuntimeEvent, StartError, StartSpec, log_path
from services.agent.runtimes.process import ProcessRuntime, parse_config, process_start_time


class Events:
    def __init__(self) -> None:
        self.items: list[RuntimeEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: RuntimeEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_exit(self, workload: str, timeout: float = 10.0) -> RuntimeEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.items:
                    if event.workload == workload and event.kind == "exited":
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no exit of {workload} within {timeout}s: {self.items}")
                self._cond.wait(remaining)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path)
    started: list[RunHandle] = []
    original_create = rt.create

    def tracking_create(spec: StartSpec, notify: object) -> RunHandle:
        handle = original_create(spec, notify)  # type: ignore[arg-type]
        started.append(handle)
        return handle

    rt.create = tracking_create  # type: ignore[method-assign]
    try:
        yield rt
    finally:
        for handle in started:
            try:
                os.killpg(int(handle.id), signal.SIGKILL)
            except ProcessLookupError:
                pass
        rt.close()


def spec(tmp_path: Path, name: str, config: str) -> StartSpec:
    return StartSpec(agent="a1", workload=name, instance="i1", runtime_config=config, run_dir=str(tmp_path))


def py(code: str) -> str:
    """A runtimeConfig running `python -c code`."""
    return f"command: {sys.executable}\nargs: ['-c', {code!r}]\n"


def test_exit_code_is_reported_as_an_event(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    runtime.create(spec(tmp_path, "w", py("import sys; sys.exit(7)")), events)
    assert events.items[0].kind == "running"
    assert events.wait_exit("w").exit_code == 7


def test_output_goes_to_the_workload_log_file(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    config = "command: /bin/sh\nargs: ['-c', 'echo out-$GREETING; echo err >&2']\nenv: {GREETING: hello}\n"
    handle = runtime.create(spec(tmp_path, "w", config), events)
    assert events.wait_exit("w").exit_code == 0
    text = log_path(tmp_path, "w").read_text()
    assert "out-hello" in text and "err" in text
    assert "out-hello" in next(iter(runtime.logs(handle, tail=2)))


def test_numbers_in_args_and_env_are_passed_as_text() -> None:
    config = parse_config("command: sleep\nargs: [300, 1.5]\nenv: {PORT: 8080}\n")
    assert config.args == ["300", "1.5"] and config.env == {"PORT": "8080"}


def test_cwd_is_honoured(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    (tmp_path / "sub").mkdir()
    runtime.create(spec(tmp_path, "w", f"command: /bin/pwd\ncwd: {tmp_path / 'sub'}\n"), events)
    events.wait_exit("w")
    assert str(tmp_path / "sub") in log_path(tmp_path, "w").read_text()


def test_stop_sends_sigterm_to_the_whole_group(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    # a shell with a child: both must go
    handle = runtime.create(spec(tmp_path, "w", "command: /bin/sh\nargs: ['-c', 'sleep 60 & wait']\n"), events)
    pid = int(handle.id)
    started = time.monotonic()
    runtime.stop(handle, grace_s=10)
    assert events.wait_exit("w").exit_code == -signal.SIGTERM
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        _wait_group_gone(pid)


def test_stop_kills_a_program_ignoring_sigterm_after_the_grace(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('rea' + 'dy', flush=True); time.sleep(60)"
    )
    handle = runtime.create(spec(tmp_path, "w", py(code)), events)
    _wait_log(tmp_path, "w", "ready")
    started = time.monotonic()
    runtime.stop(handle, grace_s=0.5)
    assert events.wait_exit("w").exit_code == -signal.SIGKILL
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 5, elapsed


def test_missing_command_is_a_permanent_start_error_with_the_os_error(runtime: ProcessRuntime, tmp_path: Path) -> None:
    with pytest.raises(StartError) as err:
        runtime.create(spec(tmp_path, "w", "command: /no/such/program\n"), Events())
    assert err.value.permanent
    assert "No such file or directory" in str(err.value)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("command: [unclosed", "not valid YAML"),
        ("- a list", "must be a mapping"),
        ("args: [x]", "command"),
        ("command: x\nimage: y", "image"),
        ("command: x\nargs: 5", "args"),
    ],
)
def test_bad_runtime_config_is_a_permanent_start_error_naming_the_problem(config: str, reason: str) -> None:
    with pytest.raises(StartError) as err:
        parse_config(config)
    assert err.value.permanent
    assert reason in str(err.value)


def test_adopt_finds_a_running_process_again_and_sees_its_exit(runtime: ProcessRuntime, tmp_path: Path) -> None:
    handle = runtime.create(spec(tmp_path, "w", "command: /bin/sleep\nargs: ['60']\n"), Events())
    assert handle.record["start_time"] == process_start_time(int(handle.id))
    # a second runtime (as after an agent restart) adopts it
    other = ProcessRuntime(tmp_path)
    try:
        events = Events()
        assert other.adopt([handle], events) == [handle]
        os.kill(int(handle.id), signal.SIGKILL)
        assert events.wait_exit("w").exit_code is None  # not our child: unknown
    finally:
        other.close()


def test_adopt_skips_a_record_whose_pid_is_another_process(tmp_path: Path) -> None:
    rt = ProcessRuntime(tmp_path)
    try:
        me = os.getpid()
        wrong = RunHandle("w", "i1", "process", str(me), {"pid": str(me), "start_time": "1"})
        gone = RunHandle("g", "i1", "process", "999999999", {"pid": "999999999", "start_time": "1"})
        garbled = RunHandle("x", "i1", "process", "?", {"pid": "nope"})
        assert rt.adopt([wrong, gone, garbled], Events()) == []
    finally:
        rt.close()


def test_usage_reports_memory_of_a_running_process(runtime: ProcessRuntime, tmp_path: Path) -> None:
    handle = runtime.create(spec(tmp_path, "w", "command: /bin/sleep\nargs: ['60']\n"), Events())
    usage = runtime.usage([handle])
    assert usage["w"].memory_bytes and usage["w"].memory_bytes > 0


# A program whose child (it waits on) holds ~40 MB: the workload's usage counts it.
_BIG_CHILD = """\
import subprocess, sys, time
if sys.argv[1:] == ["child"]:
    block = bytearray(40 << 20)
    block[::4096] = b"x" * len(block[::4096])
    print("ready", flush=True)
    time.sleep(60)
else:
    subprocess.run([sys.executable, __file__, "child"])
"""


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "process-group"])
def test_usage_counts_the_workloads_descendants_and_scans_proc_at_most_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroups: bool
) -> None:
    import services.agent.runtimes.process as process_runtime

    if not cgroups:
        monkeypatch.setenv("ANK_CGROUP_ROOT", "off")
    monkeypatch.setattr(process_runtime, "MEMBERS_TTL_S", 0.0)  # read the members at every measurement
    rt = ProcessRuntime(tmp_path)
    if cgroups and rt.containment.base is None:
        pytest.skip("no cgroup v2 hierarchy the agent can write here")
    scans: list[int] = []
    real_scan = process_runtime._children_by_parent

    def counted_scan() -> dict[int, list[int]]:
        scans.append(1)
        return real_scan()

    monkeypatch.setattr(process_runtime, "_children_by_parent", counted_scan)
    handles = []
    try:
        program = tmp_path / "big_child.py"
        program.write_text(_BIG_CHILD)
        config = f"command: {sys.executable}\nargs: ['{program}']\n"
        handles = [rt.create(spec(tmp_path, f"w{i}", config), Events()) for i in range(3)]
        for i in range(3):
            _wait_log(tmp_path, f"w{i}", "ready")
        usage = rt.usage(handles)
        assert sorted(usage) == ["w0", "w1", "w2"]
        assert all((u.memory_bytes or 0) > 40 << 20 for u in usage.values()), usage
        assert len(scans) == (0 if cgroups else 1)
    finally:
        for handle in handles:
            rt.stop(handle, 0.1)
        for handle in handles:
            rt.remove(handle)
        rt.close()


def test_usage_reads_a_workloads_members_at_most_once_per_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # cgroup.procs contends with every cgroup migration (each start): not read at every status
    import services.agent.runtimes.process as process_runtime
    from services.agent.runtimes.process import containment

    reads: list[str] = []
    real_members = containment.members

    def counted(cgroup: str) -> list[int]:
        reads.append(cgroup)
        return real_members(cgroup)

    monkeypatch.setattr(containment, "members", counted)
    monkeypatch.setattr(process_runtime, "_children_by_parent", lambda: reads.append("scan") or {})  # type: ignore[func-returns-value]
    rt = ProcessRuntime(tmp_path)
    handle = rt.create(spec(tmp_path, "w", "command: sleep\nargs: ['60']\n"), Events())
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{handle.id}/comm").read_text().strip() != "sleep":  # in its cgroup, exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(5):
            usage = rt.usage([handle])
            assert (usage["w"].memory_bytes or 0) > 0  # the program itself is always measured
        assert reads == []  # within the TTL of its start
        monkeypatch.setattr(process_runtime, "MEMBERS_TTL_S", 0.0)
        rt.usage([handle])
        rt.usage([handle])
        assert len(reads) == 2
    finally:
        rt.stop(handle, 0.1)
        rt.remove(handle)
        rt.close()


def test_files_are_written_and_their_folder_given_to_the_process(runtime: ProcessRuntime, tmp_path: Path) -> None:
    events = Events()
    s = StartSpec(
        agent="a1",
        workload="w",
        instance="i1",
        runtime_config="command: /bin/sh\nargs: ['-c', 'cat $ANK_FILES_DIR/etc/conf.txt']\n",
        files=[("/etc/conf.txt", b"file-content")],
        run_dir=str(tmp_path),
    )
    runtime.create(s, events)
    events.wait_exit("w")
    assert "file-content" in log_path(tmp_path, "w").read_text()


def _wait_log(run_dir: Path, workload: str, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path(run_dir, workload).read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log of {workload}")
        time.sleep(0.01)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Raises ProcessLookupError once no process of the group is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.killpg(pgid, 0)
        time.sleep(0.01)
    raise AssertionError(f"process group {pgid} still alive")


def test_a_restart_started_from_the_exit_notice_keeps_its_own_cgroup(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # The agent restarts an instance (same instance id) as soon as it is told of
    # the exit, while the ended start's cleanup (removing its emptied cgroup)
    # still runs after the notice: that cleanup must not take the new start's cgroup.
    if runtime.containment.base is None:
        pytest.skip("no cgroup v2 hierarchy the agent can write here")
    restarted: list[RunHandle] = []
    events = Events()

    def notify(event: RuntimeEvent) -> None:
        events(event)
        if event.kind == "exited" and not restarted:
            runtime.remove(first)
            restarted.append(runtime.create(spec(tmp_path, "w", "command: sleep\nargs: ['30']\n"), events))

    first = runtime.create(spec(tmp_path, "w", py("import time; time.sleep(0.2)")), notify)
    events.wait_exit("w")
    deadline = time.monotonic() + 10
    while not restarted:
        assert time.monotonic() < deadline, "never restarted"
        time.sleep(0.01)
    (second,) = restarted
    pid, new_cgroup = int(second.id), second.record["cgroup"]
    assert new_cgroup != first.record["cgroup"]  # each start its own
    while True:  # until the trampoline has joined the cgroup and exec'd the program
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the restarted program never ran: {events.items}"
        time.sleep(0.01)
    assert str(pid) in Path(new_cgroup, "cgroup.procs").read_text().split()
    assert [e.kind for e in events.items].count("exited") == 1, events.items
