"""Safe lifecycle (issue 12), as an operator gets it wrong: each test starts
the real programs on loopback and checks processes through /proc (by a
marker in their environment, never by name)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ank_common.lifecycle import Busy, DirLock
from tests.helpers import ROOT, child_env, free_port, running_router, stop_process, wait_for

MARK = "ANK_TEST_LIFECYCLE_MARK"


# -- processes, found through /proc ---------------------------------------------------
def marked_pids(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds MARK=mark."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].startswith("Z"):
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return "?"


def wait_none_left(mark: str, timeout: float, logs: Path | None = None) -> None:
    def none() -> bool:
        return not marked_pids(mark)

    try:
        wait_for(none, timeout, "no process left")
    except AssertionError:
        left = {p: f"{cmdline(p)} [ppid {_ppid(p)}]" for p in marked_pids(mark)}
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        tails = {log.name: log.read_text(errors="replace")[-1500:] for log in (logs.glob("*.log") if logs else [])}
        raise AssertionError(f"processes left: {left}; logs: {tails}") from None


def env_with(mark: str, **extra: str) -> dict[str, str]:
    env = child_env("tcp/127.0.0.1:1", **extra)
    env.pop("ANK_SERVER")
    env[MARK] = mark
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def ank(env: dict[str, str], port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--server-url", f"tcp/127.0.0.1:{port}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(env: dict[str, str], port: int) -> dict[str, dict[str, object]]:
    out = ank(env, port, "get", "workloads", "-o", "json")
    return {r["name"]: r for r in json.loads(out.stdout)} if out.returncode == 0 else {}


def start_up(
    env: dict[str, str], manifest: Path | None, state: Path, port: int, *extra: str, dashboard_port: int = 0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            *([str(manifest)] if manifest else []),
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard_port),
            "--state-dir",
            str(state),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_up_refused(env: dict[str, str], manifest: Path, state: Path, port: int, dashboard_port: int = 0) -> str:
    """Runs an `ank up` that must refuse at once; returns its stderr."""
    proc = start_up(env, manifest, state, port, "--agent", "second", dashboard_port=dashboard_port)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1, err
    assert "nothing started" in err, err
    return err


# -- one writer per directory -----------------------------------------------------------
def test_dir_lock_names_the_holder_and_is_released_by_death(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom ank_common.lifecycle import DirLock\n"
         f"DirLock({str(tmp_path)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)"],
        cwd=ROOT,
        env=child_env("tcp/127.0.0.1:1"),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=rf"{tmp_path} is in use by process {holder.pid}"):
            DirLock(tmp_path).acquire()
        holder.kill()
        holder.wait(10)
        with DirLock(tmp_path):  # the kernel dropped the lock with its holder (kill -9)
            pass
    finally:
        stop_process(holder)


@pytest.fixture
def router() -> Iterator[str]:
    with running_router() as (endpoint, _proc):
        yield endpoint


def _service(endpoint: str, *argv: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=cwd,
        env=child_env(endpoint, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _refused(proc: subprocess.Popen[str]) -> str:
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 2, err
    return err


def _wait_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # bounded: the process prints it at start or exits
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed: {''.join(seen)}")


def test_second_planner_on_a_state_dir_refuses_naming_the_first(router: str, tmp_path: Path) -> None:
    first = _service(router, "services.planner", "--state-dir", str(tmp_path / "p"))
    try:
        _wait_line(first, "planner up")
        err = _refused(_service(router, "services.planner", "--state-dir", str(tmp_path / "p")))
        assert f"{tmp_path / 'p'} is in use by process {first.pid}" in err
        assert first.poll() is None
    finally:
        stop_process(first)


def test_second_agent_on_a_run_dir_or_with_a_live_name_refuses(router: str, tmp_path: Path) -> None:
    first = _service(router, "services.agent", "--name", "twin", "--run-dir", str(tmp_path / "a"))
    try:
        _wait_line(first, "agent twin up")
        # the same run folder (another name): the lock names the holder
        err = _refused(_service(router, "services.agent", "--name", "other", "--run-dir", str(tmp_path / "a")))
        assert f"{tmp_path / 'a'} is in use by process {first.pid}" in err
        # the same name (another folder): its token is live on the bus
        err = _refused(_service(router, "services.agent", "--name", "twin", "--run-dir", str(tmp_path / "b")))
        assert "an agent named 'twin' is already live" in err
        assert first.poll() is None
    finally:
        stop_process(first)


@pytest.mark.parametrize("name", ["café", "nl\n", "a b", ""])
def test_agent_refuses_a_bad_name(router: str, tmp_path: Path, name: str) -> None:
    err = _refused(_service(router, "services.agent", "--name", name, "--run-dir", str(tmp_path / "a")))
    if name:
        assert "agent name" in err and repr(name) in err
    else:  # an empty name is no name (as Ankaios's ank-agent, which also reads it from a config file)
        assert "the agent needs a name" in err


def test_manifest_name_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        'apiVersion: v1\nworkloads:\n  "nl\\n":\n    runtime: process\n    agent: "a\\n"\n'
        "    runtimeConfig: 'command: true'\n"
    )
    out = ank(env_with("x"), 1, "apply", "--dry-run", str(manifest))
    assert out.returncode != 0
    assert "Unsupported workload name 'nl\n'" in out.stderr + out.stdout
    assert "Unsupported agent name 'a\n'" in out.stderr + out.stdout
    # the CLI's --agent goes through the same rule
    manifest.write_text("apiVersion: v1\nworkloads:\n  w:\n    runtime: process\n    runtimeConfig: 'command: true'\n")
    out = ank(env_with("x"), 1, "apply", "--dry-run", "--agent", "nl\n", str(manifest))
    assert out.returncode != 0 and "Unsupported agent name 'nl\n'" in out.stderr + out.stdout
    up = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up", "--agent", "café", "--state-dir", str(tmp_path / "u")],
        cwd=ROOT,
        env=env_with("x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 1 and "agent name 'café'" in up.stderr, up.stderr
    assert not (tmp_path / "u").exists()  # nothing started, nothing written


def test_undecodable_manifest_is_one_line_naming_the_file(router: str, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"apiVersion: v1\nworkloads:\n  caf\xe9: {}\n")
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--server-url", router, "apply", str(bad)],
        cwd=ROOT,
        env=child_env(router),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and str(bad) in out.stderr, out.stderr


# -- ank up ------------------------------------------------------------------------------
def _manifest(tmp_path: Path, extra: str = "") -> Path:
    manifest = tmp_path / "up.yaml"
    manifest.write_text(
        textwrap.dedent("""\
            apiVersion: v1
            workloads:
              local:
                runtime: process
                restartPolicy: NEVER
                runtimeConfig: |
                  command: sleep
                  args: ["3010"]
              daemon:
                runtime: process
                agent: upa
                restartPolicy: NEVER
                runtimeConfig: |
                  command: sh
                  args: ["-c", "(setsid sleep 3011 &); exec sleep 3012"]
              scheduled:
                runtime: process
                agent: ""
                runtimeConfig: |
                  command: sleep
                  args: ["3013"]
              elsewhere:
                runtime: process
                agent: faraway
                runtimeConfig: |
                  command: sleep
                  args: ["3014"]
            """)
        + extra
    )
    return manifest


@pytest.mark.slow
def test_ank_up_refuses_busy_dirs_and_ports_and_leaves_nothing_after_kill_9(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    env = env_with(mark)
    manifest = _manifest(tmp_path)
    port = free_port()
    state = tmp_path / "first"
    up = start_up(env, manifest, state, port, "--agent", "upa")
    try:
        running = wait_for(
            lambda: (
                (r := rows(env, port)).get("local", {}).get("state") == "Running"
                and r.get("daemon", {}).get("state") == "Running"
                and r
            ),
            90,
            "the first system's workloads Running",
        )
        # --agent is the default only for workloads that name none
        assert running["local"]["agent"] == "upa"
        # `agent: ""` stays for the scheduler (which may then bind it to upa)
        desired = json.loads(ank(env, port, "get", "state", "-o", "json").stdout)["desiredState"]["workloads"]
        assert desired["scheduled"]["agent"] == ""
        assert running["elsewhere"]["agent"] == "faraway"
        before = sorted(marked_pids(mark))

        # a second `ank up` on the same state directory (another port)
        err = run_up_refused(env, manifest, state, free_port())
        assert f"{state} is in use by process {up.pid}" in err, err
        # ... on the same port (another state directory)
        err = run_up_refused(env, manifest, tmp_path / "second", port)
        assert f"router port {port} is already in use by process" in err, err
        # ... with a busy dashboard port: refused before anything is applied
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            dport = squatter.getsockname()[1]
            err = run_up_refused(env, manifest, tmp_path / "third", free_port(), dashboard_port=dport)
        assert f"dashboard port {dport} is already in use by process {os.getpid()}" in err, err
        assert not (tmp_path / "third" / "planner").exists()

        # the first system was not touched
        assert set(before) <= set(marked_pids(mark))
        now = rows(env, port)
        assert now["local"]["state"] == "Running" and now["daemon"]["state"] == "Running", now

        # kill -9 of `ank up`: every service and every workload goes, daemons too
        up.kill()
        up.wait(10)
        wait_none_left(mark, 60, state / "logs")

        # the next `ank up` on that state directory (another port) has what the first acknowledged
        port = free_port()
        up = start_up(env, None, state, port, "--agent", "upa")
        again = wait_for(
            lambda: (r := rows(env, port)).get("local", {}).get("state") == "Running" and r, 90, "local again"
        )
        assert set(again) == set(running)
        up.terminate()
        up.wait(60)
        assert up.returncode == 0
        wait_none_left(mark, 30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        wait_none_left(mark, 60)


@pytest.mark.slow
def test_sighup_stops_ank_up_cleanly_even_with_term_ignoring_workloads(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    env = env_with(mark)
    manifest = _manifest(
        tmp_path,
        textwrap.indent(
            textwrap.dedent("""\
                stubborn:
                  runtime: process
                  restartPolicy: NEVER
                  runtimeConfig: |
                    command: sh
                    args: ["-c", "trap '' TERM; (setsid sleep 3015 &); exec sleep 3016"]
                """),
            "  ",
        ),
    )
    port = free_port()
    up = start_up(env, manifest, tmp_path / "s", port, "--agent", "upa")
    try:
        wait_for(
            lambda: (
                (r := rows(env, port)).get("stubborn", {}).get("state") == "Running"
                and r.get("daemon", {}).get("state") == "Running"
            ),
            90,
            "workloads Running",
        )
        up.send_signal(signal.SIGHUP)  # the terminal closed
        up.wait(60)
        assert up.returncode == 0
        wait_none_left(mark, 30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        wait_none_left(mark, 60)


# -- a planner and an agent with their defaults ----------------------------------------------
class Stack:
    """A router, a planner and agent `node` started with no --state-dir and
    no --run-dir: their places come from XDG_STATE_HOME and TMPDIR only."""

    def __init__(self, endpoint: str, base: Path) -> None:
        self.endpoint = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.base = base
        self.env = child_env(
            endpoint,
            XDG_STATE_HOME=str(base / "xdg"),
            TMPDIR=str(base / "tmp"),
            PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        )
        (base / "tmp").mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, cwd: Path, *argv: str) -> subprocess.Popen[str]:
        cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=cwd,
            env=self.env | {"PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs[name] = proc
        return proc

    def up(self, cwd: Path) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
        planner = self.start("planner", cwd, "services.planner")
        _wait_line(planner, "planner up")
        agent = self.start("agent", cwd, "services.agent", "--name", "node", "--backoff-initial", "0")
        return planner, agent

    def ank(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return ank(self.env, self.port, *args, timeout=timeout)

    def rows(self) -> dict[str, dict[str, object]]:
        return rows(self.env, self.port)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_process(proc)


@pytest.fixture
def stack(router: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(router, tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _workload(name: str, mark: str, command: str, args: list[str], env: dict[str, str] | None = None) -> str:
    config = {"command": command, "args": args, "env": {MARK: mark, **(env or {})}}
    return json.dumps(
        {
            "apiVersion": "v1",
            "workloads": {
                name: {
                    "runtime": "process",
                    "agent": "node",
                    "restartPolicy": "NEVER",
                    "runtimeConfig": json.dumps(config),
                }
            },
        }
    )


def _apply(stack: Stack, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    path = stack.base / f"m-{uuid.uuid4().hex[:8]}.json"
    path.write_text(manifest)
    return stack.ank("apply", str(path), "--timeout", "30", *extra)


@pytest.mark.slow
def test_restart_from_another_cwd_adopts_instead_of_duplicating(stack: Stack, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    planner, agent = stack.up(tmp_path / "cwd1")
    assert _apply(stack, _workload("kept", mark, "sleep", ["3020"])).returncode == 0
    [pid] = wait_for(lambda: marked_pids(mark), 30, "the workload's process")
    for proc in (agent, planner):
        proc.kill()
        proc.wait(10)
    assert (tmp_path / "xdg" / "ank-zenoh" / "planner" / "desired.json").exists()
    assert (tmp_path / "tmp" / "ankaios" / "node_io" / "records" / "kept.json").exists()

    planner, agent = stack.up(tmp_path / "elsewhere")
    _wait_line(agent, "adopted pid")
    row = wait_for(lambda: stack.rows().get("kept"), 30, "kept listed")
    assert row["state"] == "Running" and row["restartCount"] == 0, row
    assert marked_pids(mark) == [pid]  # zero duplicates, zero restarts
    assert stack.ank("delete", "workload", "kept", "--timeout", "30").returncode == 0
    wait_none_left(mark, 30)


@pytest.mark.slow
def test_daemonising_workload_is_stopped_by_delete(stack: Stack, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    stack.up(tmp_path / "cwd")
    out = _apply(stack, _workload("forker", mark, "sh", ["-c", "(setsid sleep 3021 &); exec sleep 3022"]))
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(marked_pids(mark)) == 2, 30, "the program and its daemon")
    assert stack.ank("delete", "workload", "forker", "--timeout", "30").returncode == 0
    wait_none_left(mark, 30)


@pytest.mark.slow
def test_agent_reports_its_containment(stack: Stack, tmp_path: Path) -> None:
    from schemas.messages import AgentStatus
    from services.bus import Bus
    from tests.helpers import Collector

    stack.up(tmp_path / "cwd")
    got = Collector()
    with Bus("test", server=stack.endpoint) as bus:
        bus.subscribe("ank/agents/node/status", AgentStatus, got)
        status = got.wait(lambda items: items[-1][1] if items else None, 30, "a status")
    assert isinstance(status, AgentStatus)
    expected = "cgroup" if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() and os.geteuid() == 0 else None
    assert status.containment in ("cgroup", "process-group")
    if expected:
        assert status.containment == expected


@pytest.mark.slow
def test_nul_in_env_fails_once_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    _planner, agent = stack.up(tmp_path / "cwd")
    out = _apply(stack, _workload("nul", mark, "sleep", ["1"], env={"BAD": "a\0b"}), "--no-wait")
    assert out.returncode == 0, out.stderr
    row = wait_for(
        lambda: (r := stack.rows().get("nul")) and r["substate"] == "StartingFailed" and r, 30, "StartingFailed"
    )
    assert "NUL" in str(row["additionalInfo"]) + str(row["lastError"]), row
    # a later workload runs: the agent went past it, and did not try it again
    assert _apply(stack, _workload("after", mark, "true", [])).returncode == 0
    stack.stop()
    assert agent.stderr is not None
    attempts = [line for line in agent.stderr.read().splitlines() if "nul: cannot start" in line]
    assert len(attempts) == 1, attempts  # once, not retried


SKEWED = """
import sys, time
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + 60.0
time.time_ns = lambda: _time_ns() + 60 * 10**9
from services.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _skewed_apply(stack: Stack, path: Path) -> subprocess.CompletedProcess[str]:
    """`ank apply` from a CLI whose clock is 60 s ahead."""
    return subprocess.run(
        [sys.executable, "-c", SKEWED, "--server-url", stack.endpoint, "apply", str(path), "--timeout", "20"],
        cwd=ROOT,
        env=stack.env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_apply_from_a_clock_60s_ahead_settles(stack: Stack, tmp_path: Path) -> None:
    """The CLI's own clock is moved 60 s ahead (time.time and time.time_ns
    replaced before it runs): its wait must not compare it with the agent's."""
    mark = uuid.uuid4().hex
    stack.up(tmp_path / "cwd")
    path = tmp_path / "skew.json"
    path.write_text(_workload("skewed", mark, "sleep", ["3023"]))
    out = _skewed_apply(stack, path)
    assert out.returncode == 0, out.stderr
    # Ankaios's progress table: its last row for the workload is the settled state.
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["skewed"]]
    assert rows and rows[-1][-1] == "Running(Ok)", out.stdout
    # an update waits for the new instance, not for the old one still Running
    path.write_text(_workload("skewed", mark, "sleep", ["3024"]))
    out = _skewed_apply(stack, path)
    assert out.returncode == 0, out.stderr
    assert any("3024" in cmdline(p) for p in marked_pids(mark))
    assert stack.ank("delete", "workload", "skewed", "--timeout", "30").returncode == 0
    wait_none_left(mark, 30)


# -- bounded memory of the live view ----------------------------------------------------------
def test_live_view_memory_stays_bounded_under_crash_loops() -> None:
    """50 crash-looping workloads for a long time: `ank up`'s live view
    keeps the latest state per workload, not every state it ever saw."""
    import argparse
    import threading
    import tracemalloc
    from collections.abc import Callable

    from schemas.manifest import Manifest
    from schemas.messages import CompleteState, WorkloadState
    from schemas.state import ExecutionState
    from services.cli import live

    class FakeClient:
        callback: Callable[[WorkloadState], None] | None = None

        def watch_states(self, callback: Callable[[WorkloadState], None]) -> None:
            self.callback = callback

        def state(self) -> CompleteState:
            return CompleteState(desired=Manifest(api_version="v1"))

    client = FakeClient()
    stop = threading.Event()
    args = argparse.Namespace(names=None, agent=None, state=None)
    view = threading.Thread(target=live.watch_workloads, args=(client, args, stop), daemon=True)
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    redirect = contextlib.redirect_stdout(sink)  # the lines go nowhere (a pipe nobody keeps)
    redirect.__enter__()
    view.start()
    wait_for(lambda: client.callback is not None, 10, "the view subscribed")
    assert client.callback is not None
    feed = client.callback
    seq = 0

    def crash_loop(rounds: int) -> None:
        nonlocal seq
        for _ in range(rounds):
            for i in range(50):
                seq += 1
                state = ExecutionState("Running", "Ok") if seq % 2 else ExecutionState("Failed", "ExecFailed")
                feed(WorkloadState(workload=f"w{i}", agent="a", execution_state=state, seq=seq))

    tracemalloc.start()
    try:
        crash_loop(200)
        first = tracemalloc.get_traced_memory()[0]
        crash_loop(2000)  # 100 000 more states
        grown = tracemalloc.get_traced_memory()[0] - first
    finally:
        tracemalloc.stop()
        stop.set()
        view.join(10)
        redirect.__exit__(None, None, None)
        sink.close()
    assert grown < 8 * 1024 * 1024, f"the live view grew by {grown} bytes"


# -- containers that ignore SIGTERM -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.podman
def test_ank_up_stop_waits_for_podman_to_kill_term_ignoring_containers(tmp_path: Path) -> None:
    """`sleep` as a container's PID 1 ignores SIGTERM: the agent's `podman
    stop -t 10` must reach its own SIGKILL; `ank up` must not kill the agent
    first. Afterwards no process of the containers is left (by /proc)."""
    from tests.test_podman_helpers import ALPINE, IMAGE_MAP, podman_unusable, remove_agent_containers

    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    mark = uuid.uuid4().hex
    agent = f"podup{mark[:8]}"
    env = env_with(mark, ANK_IMAGE_MAP=IMAGE_MAP, CONTAINERS_CONF=str(ROOT / "containers.conf"))
    manifest = tmp_path / "podman.yaml"
    workloads = {
        f"deaf{i}": {
            "runtime": "podman",
            "restartPolicy": "NEVER",
            "runtimeConfig": json.dumps(
                {"image": ALPINE, "commandOptions": ["-e", f"{MARK}={mark}"], "commandArgs": ["sleep", f"303{i}"]}
            ),
        }
        for i in range(2)
    }
    manifest.write_text(json.dumps({"apiVersion": "v1", "workloads": workloads}))
    port = free_port()
    up = start_up(env, manifest, tmp_path / "s", port, "--agent", agent)
    try:
        wait_for(
            lambda: all(r.get("state") == "Running" for r in (rows(env, port).get(n, {}) for n in workloads)),
            120,
            "the containers Running",
        )
        sleeps = [p for p in marked_pids(mark) if cmdline(p).startswith("sleep 303")]
        assert len(sleeps) == 2
        up.send_signal(signal.SIGTERM)
        up.wait(90)
        assert up.returncode == 0
        wait_none_left(mark, 30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        remove_agent_containers(agent)


# -- duplicate agent names, seen by the planner -------------------------------------------------
def test_planner_reports_two_live_agents_of_one_name_as_an_event(router: str, tmp_path: Path) -> None:
    """Two agents that started at the same instant both miss each other's
    token; their statuses interleave and the planner says so."""
    from schemas.messages import AgentStatus, Event
    from services.bus import Bus
    from tests.helpers import Collector

    planner = _service(router, "services.planner", "--state-dir", str(tmp_path / "p"))
    try:
        _wait_line(planner, "planner up")
        events = Collector()
        with (
            Bus("watcher", server=router) as watcher,
            Bus("agent/dup", server=router) as one,
            Bus("agent/dup", server=router) as two,
        ):
            watcher.subscribe("ank/events/duplicate-agent", Event, events)
            one.liveliness_token("ank/agents/dup")

            def interleaved(_items: object) -> Event | None:
                # statuses as two agents send them, until the event shows (bounded by wait_for)
                for bus, boot in ((one, "boot-one"), (two, "boot-two")):
                    bus.put("ank/agents/dup/status", AgentStatus(agent="dup", arch="x", os="linux", boot=boot))
                with contextlib.suppress(AssertionError):
                    return events.wait(lambda items: items[0][1] if items else None, 0.2)  # type: ignore[return-value]
                return None

            got = wait_for(lambda: interleaved(None), 20, "a duplicate-agent event")
        assert isinstance(got, Event)
        assert got.subject == "dup" and "two agents named dup" in got.message and got.severity == "warning"
    finally:
        stop_process(planner)


def _zombie_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_without_cgroups_the_agent_says_so_and_reaps_what_it_inherits(stack: Stack, tmp_path: Path) -> None:
    """ANK_CGROUP_ROOT=off: process groups, the agent as child subreaper; the
    orphaned descendants that end are reaped, not left as zombies."""
    from schemas.messages import AgentStatus
    from services.bus import Bus
    from tests.helpers import Collector

    mark = uuid.uuid4().hex
    stack.env["ANK_CGROUP_ROOT"] = "off"
    _planner, agent = stack.up(tmp_path / "cwd")
    got = Collector()
    with Bus("test", server=stack.endpoint) as bus:
        bus.subscribe("ank/agents/node/status", AgentStatus, got)
        status = got.wait(lambda items: items[-1][1] if items else None, 30, "a status")
    assert isinstance(status, AgentStatus) and status.containment == "process-group"
    # its child `sh` leaves a short-lived orphan, re-parented to the agent
    # (it ends once `go` exists, or after 30 s at most)
    go = tmp_path / "go"
    orphan = f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 0"
    script = f"(setsid sh -c '{orphan}' orphan-{mark} &); exec sleep 3041"
    assert _apply(stack, _workload("parent", mark, "sh", ["-c", script])).returncode == 0

    def orphans() -> list[int]:
        return [p for p in marked_pids(mark) if f"orphan-{mark}" in cmdline(p)]

    [orphan_pid] = wait_for(orphans, 30, "the orphan runs")
    wait_for(lambda: Path(f"/proc/{orphan_pid}/stat").read_text().split(")")[1].split()[1] == str(agent.pid), 30)
    go.touch()
    wait_for(lambda: not orphans(), 30, "the orphan ended")
    wait_for(lambda: not _zombie_children(agent.pid), 30, "no zombie left under the agent")
    assert stack.ank("delete", "workload", "parent", "--timeout", "30").returncode == 0
    wait_none_left(mark, 30)
