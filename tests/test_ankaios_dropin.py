"""ank-zenoh as a drop-in for Eclipse Ankaios: the CLI's Ankaios output
shapes (pure), and the seed guide's command sequence run as written —
`ank-server &`, `ank-agent --name police_agent &`, `ank -k apply`,
`ank -k get workloads`, `ank -k get workload kuksa-bridge`,
`ank -k delete workload ...` — against real processes, with
`ank get events` watching the state changes meanwhile."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ank_common.manifest import parse_manifest
from schemas.messages import AgentStatus, CompleteState, WorkloadState
from schemas.state import ExecutionState
from services.cli import ankaios
from services.cli.up import stop_recorded_processes
from tests.helpers import ROOT, free_port, stop_process, wait_for


# -- pure ----------------------------------------------------------------------
def columns(text: str) -> list[dict[str, str]]:
    """Cuts a table the way scripts do: column spans from the header's words
    (words one space apart form one header), cells stripped."""
    header, *rows = text.splitlines()
    spans = [(m.group(0).strip(), m.start(), m.end()) for m in re.finditer(r"(\S+ ?)+\s*", header)]
    return [{name: row[a:b].strip() for name, a, b in spans} for row in rows]


def test_workload_table_is_plain_and_cut_by_header_positions() -> None:
    rows = [
        {"name": "camera-bridge-long-name", "agent": "police_agent", "runtime": "podman", "state": "Running",
         "substate": "Ok", "additionalInfo": ""},
        {"name": "x", "agent": "", "runtime": "process", "state": "Pending", "substate": "StartingFailed",
         "additionalInfo": "no such\nfile"},
    ]  # fmt: skip
    text = ankaios.workload_table(rows)
    assert len({len(line) for line in text.splitlines()}) == 1  # every line as wide as the header
    assert (
        text.splitlines()[0].rstrip()
        == " WORKLOAD NAME             AGENT          RUNTIME   EXECUTION STATE           ADDITIONAL INFO"
    )
    table = columns(text)
    assert table[0] == {
        "WORKLOAD NAME": "camera-bridge-long-name",
        "AGENT": "police_agent",
        "RUNTIME": "podman",
        "EXECUTION STATE": "Running(Ok)",
        "ADDITIONAL INFO": "",
    }
    # A line break in a cell cannot split a row.
    assert table[1]["EXECUTION STATE"] == "Pending(StartingFailed)"
    assert table[1]["ADDITIONAL INFO"] == "no such file"
    assert "│" not in text and "…" not in text


def test_agents_table_has_ankaios_columns() -> None:
    statuses = {"agent_A": AgentStatus(agent="agent_A", arch="x86_64", os="linux", cpu_percent=42.4,
                                       free_memory_bytes=2048)}  # fmt: skip
    table = columns(ankaios.agents_table(statuses, {"agent_A": 3}))
    assert table == [{"NAME": "agent_A", "WORKLOADS": "3", "CPU USAGE": "42%", "FREE MEMORY": "2048B"}]


def _state(name: str, agent: str, state: str, substate: str, instance: str = "abc", t: int = 1) -> WorkloadState:
    es = ExecutionState(state, substate)  # type: ignore[arg-type]
    return WorkloadState(workload=name, agent=agent, execution_state=es, instance=instance, time_ms=t)


def _complete(states: list[WorkloadState], agents: list[str]) -> CompleteState:
    manifest = parse_manifest(
        "apiVersion: v1\nworkloads:\n  nginx:\n    runtime: podman\n    agent: agent_A\n"
        "    runtimeConfig: 'image: nginx'\nconfigs:\n  c1: v\n"
    ).manifest
    assert manifest is not None
    return CompleteState(desired=manifest, workload_states=states, agents=agents)


def test_state_document_has_ankaios_maps_and_masks_select() -> None:
    cs = _complete(
        [_state("nginx", "agent_A", "Running", "Ok"), _state("gone", "agent_A", "Removed", "", t=2)], ["agent_A"]
    )
    st = AgentStatus(agent="agent_A", arch="x", os="linux", tags={"type": "AI"}, cpu_percent=3, free_memory_bytes=9)
    doc = ankaios.state_document(cs, {"agent_A": st})
    assert doc["workloadStates"] == {
        "agent_A": {"nginx": {"abc": {"state": "Running", "subState": "Ok", "additionalInfo": ""}}}
    }
    assert doc["agents"] == {
        "agent_A": {"tags": {"type": "AI"}, "status": {"cpuUsage": {"cpuUsage": 3}, "freeMemory": {"freeMemory": 9}}}
    }
    assert ankaios.select(doc, ["desiredState.workloads.nginx.agent", "workloadStates"]) == {
        "desiredState": {"workloads": {"nginx": {"agent": "agent_A"}}},
        "workloadStates": doc["workloadStates"],
    }
    assert ankaios.select(doc, ["workloadStates.*.nginx"]) == {"workloadStates": doc["workloadStates"]}
    assert ankaios.select(doc, ["desiredState.workloads.nope"]) == {}
    assert ankaios.select(doc, []) == doc


def test_events_name_added_updated_and_removed_fields() -> None:
    def ws(*states: WorkloadState) -> dict[str, Any]:
        return ankaios.select(ankaios.state_document(_complete(list(states), []), {}), ["workloadStates"])

    start = ws(_state("a", "agent_A", "Pending", "Starting"))
    first = ankaios.event_document(None, start, 0)
    assert first is not None and first["timestamp"] == "1970-01-01T00:00:00.000000Z"
    assert first["completeState"] == start and first["addedFields"] == []
    running = ws(_state("a", "agent_A", "Running", "Ok"), _state("b", "agent_A", "Pending", "Initial"))
    ev = ankaios.event_document(start, running, 1_700_000_000_123)
    assert ev is not None
    assert ev["timestamp"] == "2023-11-14T22:13:20.123000Z"
    assert ev["addedFields"] == ["workloadStates.agent_A.b"]
    assert ev["updatedFields"] == ["workloadStates.agent_A.a.abc.state", "workloadStates.agent_A.a.abc.subState"]
    assert ankaios.event_document(running, running, 5) is None
    gone = ankaios.event_document(running, ws(), 6)
    assert gone is not None and gone["removedFields"] == ["workloadStates.agent_A"]
    assert gone["completeState"] == {"workloadStates": {}}


# -- the seed guide's commands, as written ------------------------------------------------------------------------
SEED_MANIFEST = """\
apiVersion: v1
workloads:
  zenoh-router:
    runtime: process
    agent: police_agent
    restartPolicy: ALWAYS
    runtimeConfig: |
      command: sleep
      args: ["600"]
  kuksa-bridge:
    runtime: process
    agent: police_agent
    restartPolicy: ON_FAILURE
    dependencies:
      zenoh-router: ADD_COND_RUNNING
    runtimeConfig: |
      command: sleep
      args: ["600"]
"""


class Shell:
    """A shell session in a scratch directory: this checkout's bin/ first in
    PATH, so `ank-server`, `ank-agent` and `ank` are the real programs."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd = cwd
        self.env = dict(os.environ)
        self.env["PATH"] = os.pathsep.join([str(ROOT / "bin"), str(Path(sys.executable).parent), self.env["PATH"]])
        # Where `ank-server` listens and the others connect, without changing
        # a command line (the seed's defaults would collide on a shared host).
        self.env["ANKSERVER_ADDRESS"] = f"127.0.0.1:{port}"
        self.env["ANK_SERVER"] = f"tcp/127.0.0.1:{port}"
        self.env["XDG_STATE_HOME"] = str(cwd / "state")
        self.env["ANK_PLANNER_STATE_DIR"] = str(cwd / "state" / "planner")
        self.background: list[subprocess.Popen[str]] = []

    def start(self, line: str) -> subprocess.Popen[str]:
        assert line.endswith(" &")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line[:-2]}"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.background.append(proc)
        return proc

    def run(self, line: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell(tmp_path, free_port())
    try:
        yield sh
    finally:
        for proc in reversed(sh.background):
            stop_process(proc)
        for run_dir in (tmp_path / ".ank" / "agents").glob("*"):
            stop_recorded_processes(run_dir)
        for run_dir in (tmp_path / "run").glob("*"):
            stop_recorded_processes(run_dir)


@pytest.mark.slow
def test_seed_guide_command_sequence_works_as_written(shell: Shell) -> None:
    (shell.cwd / "ankaios_manifest.yaml").write_text(SEED_MANIFEST)
    server = shell.start("ank-server &")
    agent = shell.start("ank-agent --name police_agent --run-folder run &")
    wait_for(
        lambda: "police_agent" in shell.run("ank -k get agents").stdout or server.poll() is not None,
        60,
        "the agent connected",
    )
    assert server.poll() is None, server.stdout.read() if server.stdout else ""

    # The event stream, as Ankaios's system tests read it, meanwhile.
    events = subprocess.Popen(
        ["ank", "-k", "get", "events", "--include-current-state", "-o", "json", "workloadStates"],
        cwd=shell.cwd,
        env=shell.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[dict[str, Any]] = []
    cond = threading.Condition()

    def read() -> None:
        assert events.stdout is not None
        for line in events.stdout:
            with cond:
                seen.append(json.loads(line))
                cond.notify_all()

    threading.Thread(target=read, daemon=True).start()
    try:
        applied = shell.run("ank -k apply ankaios_manifest.yaml")
        assert applied.returncode == 0, applied.stderr
        # One row per state change: the header, then each workload as it goes.
        progress = [(r["WORKLOAD NAME"], r["EXECUTION STATE"]) for r in columns(applied.stdout)]
        first: dict[str, str] = {}
        for name, state in progress:
            first.setdefault(name, state)
        assert all(state.startswith("Pending(") for state in first.values()), progress
        table = {r["WORKLOAD NAME"]: r for r in columns(applied.stdout)}  # the last row of each
        assert sorted(table) == ["kuksa-bridge", "zenoh-router"]
        assert {(r["AGENT"], r["RUNTIME"]) for r in table.values()} == {("police_agent", "process")}
        assert table["zenoh-router"]["EXECUTION STATE"] == "Running(Ok)"
        # apply stops waiting at a dependency wait; the dependent follows.
        assert table["kuksa-bridge"]["EXECUTION STATE"] in ("Running(Ok)", "Pending(WaitingToStart)")

        def listed_running() -> list[dict[str, str]] | None:
            listed = shell.run("ank -k get workloads")
            assert listed.returncode == 0, listed.stderr
            rows = columns(listed.stdout)
            return rows if {r["EXECUTION STATE"] for r in rows} == {"Running(Ok)"} else None

        rows = wait_for(listed_running, 30, "both Running(Ok) in `ank -k get workloads`")
        assert [r["WORKLOAD NAME"] for r in rows] == ["kuksa-bridge", "zenoh-router"]

        one = shell.run("ank -k get workload kuksa-bridge")
        assert one.returncode == 0, one.stderr
        assert "Running(Ok)" in one.stdout and "zenoh-router: ADD_COND_RUNNING: MET" in one.stdout

        deleted = shell.run("ank -k delete workload kuksa-bridge zenoh-router")
        assert deleted.returncode == 0, deleted.stderr
        final = {r["WORKLOAD NAME"]: r["EXECUTION STATE"] for r in columns(deleted.stdout)}
        assert final == {"kuksa-bridge": "Removed", "zenoh-router": "Removed"}
        assert columns(shell.run("ank -k get workloads").stdout) == []

        def states_seen() -> set[str]:
            out = set()
            for ev in seen:
                for wl, instances in ev["completeState"].get("workloadStates", {}).get("police_agent", {}).items():
                    for st in instances.values():
                        out.add(f"{wl}={st['state']}({st['subState']})")
            return out

        def removed() -> bool:
            fields = {f for ev in seen for f in ev["removedFields"]}
            return bool(
                {"workloadStates.police_agent", "workloadStates.police_agent.kuksa-bridge", "workloadStates"} & fields
            )

        with cond:
            assert cond.wait_for(lambda: "kuksa-bridge=Running(Ok)" in states_seen() and removed(), 30), seen
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ev["timestamp"]) for ev in seen)
    finally:
        events.send_signal(signal.SIGTERM)
        assert events.wait(10) == 0

    # ank-server stops every process it started.
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    out = server.stdout.read() if server.stdout else ""
    assert "ank-server up" in out
    stop_process(agent)


def _workload_yaml(name: str) -> str:
    return (
        f"apiVersion: v1\nworkloads:\n  {name}:\n    runtime: process\n    agent: elsewhere\n"
        '    runtimeConfig: |\n      command: sleep\n      args: ["600"]\n'
    )


@pytest.mark.slow
def test_get_events_reports_an_apply_made_while_it_was_starting(shell: Shell) -> None:
    # Ankaios's suite starts `ank get events` in the background and applies at
    # once: the apply may land before the stream is subscribed. The stream
    # starts when the command started (here: told it started before `new`).
    (shell.cwd / "old.yaml").write_text(_workload_yaml("old"))
    (shell.cwd / "new.yaml").write_text(_workload_yaml("new"))
    server = shell.start("ank-server &")
    wait_for(lambda: shell.run("ank -k get workloads").returncode == 0 or server.poll() is not None, 60, "server up")
    assert shell.run("ank -k apply --no-wait old.yaml").returncode == 0
    started = time.time_ns() // 1_000_000
    assert shell.run("ank -k apply --no-wait new.yaml").returncode == 0
    code = (
        "import sys, services.cli.main as m\n"
        f"m.process_start_ms = lambda: {started}\n"
        "raise SystemExit(m.main(sys.argv[1:]))\n"
    )
    events = subprocess.Popen(
        [sys.executable, "-c", code, "-k", "get", "events", "-o", "json", "desiredState.workloads"],
        cwd=ROOT,
        env=shell.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(events.stdout.readline() if events.stdout else ""))
    reader.start()
    try:
        reader.join(30)
        assert lines and lines[0], "no event within 30 s"
        event = json.loads(lines[0])
        assert event["addedFields"] == ["desiredState.workloads.new"], event
        assert sorted(event["completeState"]["desiredState"]["workloads"]) == ["new", "old"]
    finally:
        events.send_signal(signal.SIGTERM)
        assert events.wait(10) == 0


def test_ank_server_refuses_an_invalid_startup_manifest_before_starting_anything(shell: Shell) -> None:
    (shell.cwd / "bad.yaml").write_text("apiVersion: v7\nworkloads: {}\n")
    out = shell.run("ank-server --startup-manifest bad.yaml", timeout=30)
    assert out.returncode == 1
    assert "bad.yaml is invalid" in out.stderr and "apiVersion" in out.stderr


def test_ank_without_a_server_exits_1_as_ankaios(shell: Shell) -> None:
    out = shell.run("ank -k --response-timeout 0.5 get workloads", timeout=30)
    assert out.returncode == 1
    assert "cannot open Zenoh session" in out.stderr or "no planner answered" in out.stderr


def test_ank_server_url_in_ankaios_form_and_pem_options_are_checked(shell: Shell) -> None:
    out = shell.run("ank --server-url https://127.0.0.1 get workloads", timeout=30)
    assert out.returncode == 1 and "has no port" in out.stderr
    out = shell.run("ank --ca_pem /nonexistent/ca.pem --crt_pem x --key_pem y get workloads", timeout=30)
    assert out.returncode == 1 and "ca_pem file not found: /nonexistent/ca.pem" in out.stderr
    out = shell.run("ank --ca_pem ca.pem get workloads", timeout=30)
    assert out.returncode == 1 and "missing: crt_pem, key_pem" in out.stderr


def test_ank_asks_again_for_the_state_while_the_planner_is_still_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Just after `ank-server &` the router is up but no planner answers yet:
    # ank asks again within its response timeout instead of failing at once.
    from services.bus import paging
    from services.cli import client as client_module

    state: Any = object()
    answers: list[list[Any]] = [[], [], [state]]
    monkeypatch.setattr(paging, "get_complete_state", lambda _bus, _timeout, _since=None: answers.pop(0))
    assert client_module.Client(bus=None, timeout=30).state() is state  # type: ignore[arg-type]
    assert answers == []
    answers[:] = [[]] * 1000
    with pytest.raises(client_module.NoPlanner, match="no planner answered"):
        client_module.Client(bus=None, timeout=0.3).state()  # type: ignore[arg-type]


@pytest.mark.slow
def test_ank_server_is_up_only_once_its_planner_answers(shell: Shell) -> None:
    # Ankaios's tests run `ank` right after starting ank-server: when
    # ank-server says it is up, the planner answers at once (it started
    # first, before the scheduler and the health-watcher).
    server = shell.start("ank-server &")
    assert server.stdout is not None
    lines: list[str] = []
    for line in server.stdout:
        lines.append(line)
        if "ank-server up" in line:
            break
    assert "ank-server up" in lines[-1] and server.poll() is None, "".join(lines)
    planner_up = next(i for i, line in enumerate(lines) if "planner up" in line)
    assert not [line for line in lines[:planner_up] if "ank-scheduler" in line or "ank-health-watcher" in line]
    out = shell.run("ank -k --response-timeout 0.5 get state", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "desiredState" in out.stdout
