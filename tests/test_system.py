"""The walking system end to end: the `ank` CLI, the planner and agents as
separate processes on a real Zenoh router (loopback), running real
processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, child_env, free_port, wait_for, wait_port
from tests.system import System, running_system

pytestmark = pytest.mark.slow


@pytest.fixture
def system(router: str, tmp_path: Path) -> Iterator[System]:
    with running_system(router, tmp_path) as s:
        s.planner()
        s.agent("car1")
        wait_for(lambda: s.ank("get", "state", timeout=20).returncode == 0, 40, "the planner answers")
        wait_for(lambda: '"car1"' in s.ank("get", "agents", "-o", "json").stdout, 40, "agent car1 is alive")
        yield s


def _sleepers(*names: str) -> str:
    """A manifest of long-running process workloads on car1."""
    return _manifest(
        "".join(
            f"""
        {name}:
          runtime: process
          agent: car1
          runtimeConfig: |
            command: sleep
            args: ["300"]
    """
            for name in names
        )
    )


def _manifest(workloads: str) -> str:
    return "apiVersion: v1\nworkloads:\n" + textwrap.indent(textwrap.dedent(workloads), "  ")


def test_apply_waits_until_running_and_get_workloads_json_has_the_contract_fields(system: System) -> None:
    out = system.ank(
        "apply",
        "-",
        input=_sleepers("sleeper"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["sleeper", "car1", "process", "Running(Ok)"], out.stdout
    row = system.workloads()["sleeper"]
    assert (row["agent"], row["runtime"], row["state"], row["substate"], row["restartCount"]) == (
        "car1",
        "process",
        "Running",
        "Ok",
        0,
    )
    assert "additionalInfo" in row


def test_dependency_conditions_release_workloads_in_order(system: System) -> None:
    out = system.ank(
        "apply",
        "--no-wait",
        "-",
        input=_manifest("""
        init:
          runtime: process
          agent: car1
          runtimeConfig: |
            command: sh
            args: ["-c", "sleep 1; exit 0"]
        failing:
          runtime: process
          agent: car1
          runtimeConfig: |
            command: sh
            args: ["-c", "exit 3"]
        after_success:
          runtime: process
          agent: car1
          dependencies: {init: ADD_COND_SUCCEEDED}
          runtimeConfig: |
            command: sleep
            args: ["300"]
        after_failure:
          runtime: process
          agent: car1
          dependencies: {failing: ADD_COND_FAILED}
          runtimeConfig: |
            command: sleep
            args: ["300"]
        after_running:
          runtime: process
          agent: car1
          dependencies: {after_success: ADD_COND_RUNNING, never_there: ADD_COND_RUNNING}
          runtimeConfig: |
            command: sleep
            args: ["300"]
    """),
    )
    assert out.returncode == 0, out.stderr
    system.wait_state("after_failure", "Running", "Ok")
    assert system.workloads()["failing"]["state"] == "Failed"
    system.wait_state("after_success", "Running", "Ok")
    assert system.workloads()["init"]["state"] == "Succeeded"
    # A dependency on a workload that does not exist keeps it waiting.
    row = system.wait_state("after_running", "Pending", "WaitingToStart")
    detail = system.ank("get", "workload", "after_running")
    assert "never_there: ADD_COND_RUNNING: WAITING (current: absent)" in detail.stdout, detail.stdout
    assert "after_success: ADD_COND_RUNNING: MET (current: Running(Ok))" in detail.stdout
    assert row["agent"] == "car1"


def test_garbage_on_ank_desired_is_rejected_with_an_event_and_changes_nothing(system: System, router: str) -> None:
    from services.bus import Bus

    system.ank(
        "apply",
        "-",
        input=_sleepers("keep"),
    )
    before = system.ank("get", "state", "-o", "json").stdout
    with Bus("fuzzer", server=router) as bus:
        for payload in (
            b"\xff\x00garbage",
            b"apiVersion: v7\nworkloads: {}\n",
            b"[1, 2",
            'apiVersion: v1\nworkloads:\n  "bad\u2028name": {}\n'.encode(),  # a line separator in the error
        ):
            bus.put("ank/desired", payload)
    events = wait_for(
        lambda: (
            (e := system.ank("get", "eventlog", "-o", "json")).returncode == 0
            and e.stdout.count('"kind":"rejected"') >= 4
            and e.stdout
        ),
        15,
        "four rejected events in `ank get eventlog`",
    )
    assert "apiVersion" in events
    assert all(json.loads(line)["kind"] for line in events.splitlines() if line.strip())
    after = json.loads(system.ank("get", "state", "-o", "json").stdout)
    assert after["desiredState"] == json.loads(before)["desiredState"]
    assert system.workloads()["keep"]["restartCount"] == 0


def test_invalid_manifest_apply_prints_every_error_and_exits_1(system: System) -> None:
    out = system.ank(
        "apply",
        "-",
        input=_manifest("""
        a:
          runtime: process
          agent: car1
          dependencies: {b: ADD_COND_RUNNING}
          runtimeConfig: "command: 'true'"
        b:
          runtime: process
          agent: car1
          dependencies: {a: ADD_COND_RUNNING}
          runtimeConfig: "command: 'true'"
    """),
    )
    assert out.returncode == 1
    assert "cycle" in out.stderr
    assert system.workloads() == {}


def test_delete_workload_removes_it_and_stops_the_process(system: System) -> None:
    system.ank(
        "apply",
        "-",
        input=_sleepers("doomed"),
    )
    out = system.ank("delete", "workload", "doomed")
    assert out.returncode == 0, out.stderr
    assert ["doomed", "car1", "process", "Removed"] in [line.split() for line in out.stdout.splitlines()], out.stdout
    assert "doomed" not in system.workloads()


def test_logs_shows_a_workloads_output_and_its_tail(system: System) -> None:
    out = system.ank(
        "apply",
        "-",
        input=_manifest("""
        talker:
          runtime: process
          agent: car1
          runtimeConfig: |
            command: sh
            args: ["-c", "echo one; echo two; echo three; exec sleep 300"]
    """),
    )
    assert out.returncode == 0, out.stderr
    logs = wait_for(
        lambda: (r := system.ank("logs", "talker")).returncode == 0 and "three" in r.stdout and r.stdout,
        10,
        "talker's output",
    )
    # The process runtime marks each start in the log with a `--- ank:` line.
    assert [line for line in logs.splitlines() if not line.startswith("--- ank:")] == ["one", "two", "three"]
    assert system.ank("logs", "talker", "-t", "1").stdout.splitlines() == ["three"]


def test_set_state_with_update_masks_adds_and_removes_only_the_masked_workloads(system: System, tmp_path: Path) -> None:
    system.ank(
        "apply",
        "-",
        input=_sleepers("keep", "drop"),
    )
    state_file = tmp_path / "state.yaml"
    state_file.write_text(
        textwrap.dedent("""
        desiredState:
          apiVersion: v1
          workloads:
            added:
              runtime: process
              agent: car1
              runtimeConfig: |
                command: sleep
                args: ["300"]
    """)
    )
    out = system.ank("set", "state", "desiredState.workloads.added", "desiredState.workloads.drop", str(state_file))
    assert out.returncode == 0, out.stderr
    rows = system.workloads()
    assert set(rows) == {"keep", "added"}
    assert rows["added"]["state"] == "Running" and rows["keep"]["restartCount"] == 0


def test_run_workload_creates_one_workload_without_a_manifest_file(system: System) -> None:
    out = system.ank(
        "run",
        "workload",
        "oneoff",
        "--runtime",
        "process",
        "--agent",
        "car1",
        "--config",
        "command: sh\nargs: ['-c', 'exit 0']",
    )
    assert out.returncode == 0, out.stderr
    # Ankaios's apply output: the workloads table once they settled.
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["WORKLOAD", "NAME", "AGENT", "RUNTIME", "EXECUTION", "STATE", "ADDITIONAL", "INFO"]
    assert any(r.split()[:3] == ["oneoff", "car1", "process"] for r in rows), out.stdout
    system.wait_state("oneoff", "Succeeded", "Ok")


def _ank(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `ank` CLI as a process, against the router named in env."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_without_a_planner_says_so_and_exits_nonzero(router: str) -> None:
    out = _ank(child_env(router), "--response-timeout", "0.5", "get", "workloads")
    assert out.returncode == 1  # Ankaios's ank: 1 for every failure
    assert "no planner answered" in out.stderr


def test_cli_without_a_router_says_so_and_exits_nonzero() -> None:
    out = _ank(child_env(f"tcp/127.0.0.1:{free_port()}"), "get", "workloads")
    assert out.returncode == 1
    assert "cannot open Zenoh session" in out.stderr


def test_ank_up_runs_the_system_and_ctrl_c_leaves_no_stray_process(tmp_path: Path) -> None:
    port, dashboard_port = free_port(), free_port()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        _manifest("""
        sleeper:
          runtime: process
          runtimeConfig: |
            command: sleep
            args: ["301"]
    """)
    )
    env = child_env(f"tcp/127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            str(manifest),
            "--agent",
            "upagent",
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard_port),
            "--state-dir",
            str(tmp_path / "ank"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, 20)

        def ank(*a: str) -> subprocess.CompletedProcess[str]:
            return _ank(env, *a)

        try:
            wait_for(lambda: '"Running"' in ank("get", "workloads", "-o", "json").stdout, 60, "sleeper Running")
        except AssertionError:
            for log in sorted((tmp_path / "ank" / "logs").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            raise
        wait_port(dashboard_port, 20)
        url = f"http://127.0.0.1:{dashboard_port}/api/v1/workloads"
        with pytest.raises(urllib.error.HTTPError, match="401"):  # ank up made a token
            urllib.request.urlopen(url, timeout=10)
        token = (tmp_path / "ank" / "dashboard.token").read_text().strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        page = urllib.request.urlopen(request, timeout=10).read()
        assert b"sleeper" in page  # the dashboard is part of the embedded system
        children = _descendants(proc.pid)
        assert len(children) >= 6  # router, planner, agent, health-watcher, scheduler, dashboard (+ the workload)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        survivors = [p for p in children if _alive(p)] + _pids_with("301")
        assert survivors == [], [(p, _cmdline(p)) for p in survivors]
    finally:
        _stop_up(proc, "301")


def _stop_up(proc: subprocess.Popen[str], marker: str) -> None:
    """Stops `ank up` as a user would (Ctrl-C), and whatever is left of its
    tree even when the test failed half-way: no test leaks a system."""
    tree = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in [*tree, *_pids_with(marker)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    parents: dict[int, list[int]] = {}
    for line in out:
        parts = line.split()
        if len(parts) == 2:
            parents.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids_with(arg: str) -> list[int]:
    return [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(int(p.name)) == f"sleep {arg} "
    ]


def test_ank_up_secure_runs_with_tls_and_access_control(tmp_path: Path) -> None:
    port = free_port()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        _manifest("""
        guarded:
          runtime: process
          runtimeConfig: |
            command: sleep
            args: ["302"]
    """)
    )
    state = tmp_path / "ank"
    env = child_env(f"tls/127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            str(manifest),
            "--secure",
            "--agent",
            "secagent",
            "--port",
            str(port),
            "--dashboard-port",
            "0",
            "--state-dir",
            str(state),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ank(*args: str) -> subprocess.CompletedProcess[str]:
        return _ank(env, "--response-timeout", "2", *args)

    try:
        wait_port(port, 30)
        cli_conf = str(state / "zenoh" / "cli.json5")
        wait_for(
            lambda: '"Running"' in ank("--zenoh-config", cli_conf, "get", "workloads", "-o", "json").stdout,
            60,
            "guarded Running, seen with the cli identity",
        )
        # Without a certificate nothing gets through: plain tcp is not even listened on.
        plain = ank("--server-url", f"tcp/127.0.0.1:{port}", "get", "workloads")
        assert plain.returncode == 1  # Ankaios: 1 for every failure
        # The workload identity may not change the desired state.
        denied = ank("--zenoh-config", str(state / "zenoh" / "workload.json5"), "delete", "workload", "guarded")
        assert denied.returncode == 1 and "no planner answered" in denied.stderr
        assert '"guarded"' in ank("--zenoh-config", cli_conf, "get", "workloads", "-o", "json").stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        _stop_up(proc, "302")
