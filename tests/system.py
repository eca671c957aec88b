"""The real system for end-to-end tests: planner and agents as separate
processes on a real router (loopback, free port), and the `ank` CLI run as a
process against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.cli.up import stop_recorded_processes
from tests.helpers import ROOT, child_env, stop_process, wait_for


class System:
    def __init__(self, endpoint: str, base: Path) -> None:
        self.endpoint = endpoint
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = child_env(endpoint, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def planner(self) -> subprocess.Popen[bytes]:
        return self._start(
            "planner", [sys.executable, "-m", "services.planner", "--state-dir", str(self.base / "planner")]
        )

    def agent(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        return self._start(
            f"agent-{name}",
            [
                sys.executable,
                "-m",
                "services.agent",
                "--name",
                name,
                "--run-dir",
                str(self.base / "agents" / name),
                *extra,
            ],
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)

    def ank(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            cwd=ROOT,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def workloads(self) -> dict[str, dict[str, Any]]:
        out = self.ank("get", "workloads", "-o", "json")
        if out.returncode != 0:
            return {}
        return {r["name"]: r for r in json.loads(out.stdout)}

    def wait_state(self, name: str, state: str, substate: str | None = None, timeout: float = 20) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            row = self.workloads().get(name)
            if row and row["state"] == state and (substate is None or row["substate"] == substate):
                return row
            return None

        return wait_for(check, timeout, f"{name} in {state}({substate or '*'})")

    def log(self, name: str) -> str:
        path = self.base / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_process(proc)


@contextmanager
def running_system(endpoint: str, base: Path) -> Iterator[System]:
    system = System(endpoint, base)
    try:
        yield system
    finally:
        system.stop()
        # Workloads started by agents run in their own sessions (adoption):
        # stop what the agents recorded so that no test leaks processes.
        for run_dir in (base / "agents").glob("*"):
            stop_recorded_processes(run_dir)
