"""Runtime `process`: a workload is a native program (ProcessConfig:
command, args, env, cwd).

- Each program starts in its own session (so its own process group): a stop
  signals the whole group (SIGTERM, SIGKILL after the grace), and the
  program survives the agent (kill -9 included), so that a restarted agent
  adopts it.
- stdout and stderr go to `<run dir>/<workload>.log` (appended across restarts).
- Exits are noticed from a pidfd (PidfdWatcher), never by polling. For our
  own children the exit code comes from waitpid. An adopted process is not
  our child (its parent, the old agent, is gone; init reaped it), so its
  exit code cannot be known: the exit is reported with exit_code None.
- The record persisted per instance is (pid, start time from
  /proc/<pid>/stat): adoption opens a pidfd and then checks the start time,
  so a reused pid is never mistaken for the workload.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import yaml

from schemas.messages import WorkloadUsage
from schemas.runtime_configs import ProcessConfig
from services.agent.runtimes.base import Notify, RunHandle, RuntimeEvent, StartError, StartSpec, log_path
from services.agent.runtimes.process.watcher import PidfdWatcher, kill_group

log = logging.getLogger("ank.agent.process")


def parse_config(text: str) -> ProcessConfig:
    """The runtimeConfig of a process workload; StartError(permanent) naming
    the problem when it can never work."""
    try:
        data = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise StartError(f"runtimeConfig is not valid YAML: {exc}", permanent=True) from exc
    if not isinstance(data, dict):
        raise StartError("runtimeConfig must be a mapping with at least `command`", permanent=True)
    # YAML reads `args: [300]` or `env: {PORT: 8080}` as numbers; a program gets them as text anyway
    if isinstance(data.get("args"), list):
        data["args"] = [_number_as_text(a) for a in data["args"]]
    if isinstance(data.get("env"), dict):
        data["env"] = {k: _number_as_text(v) for k, v in data["env"].items()}
    try:
        config = msgspec.convert(data, ProcessConfig)
    except msgspec.ValidationError as exc:
        raise StartError(f"invalid runtimeConfig: {exc}", permanent=True) from exc
    if not config.command:
        raise StartError("invalid runtimeConfig: `command` is empty", permanent=True)
    return config


def _number_as_text(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid,
    it identifies one process for the life of the machine."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


class _Watched:
    """A process this runtime watches."""

    def __init__(self, handle: RunHandle, pid: int, pidfd: int, popen: subprocess.Popen[bytes] | None) -> None:
        self.handle = handle
        self.pid = pid
        self.pidfd = pidfd
        self.popen = popen  # None when adopted: not our child
        self.stopping = False
        self.exited = False
        self.usage_probes: dict[int, psutil.Process] = {}


class ProcessRuntime:
    name = "process"

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._watcher = PidfdWatcher()
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._lock = threading.Lock()

    def available(self) -> bool:
        return True

    # -- life cycle ------------------------------------------------------------------
    def create(self, spec: StartSpec, notify: Notify) -> RunHandle:
        config = parse_config(spec.runtime_config)
        run_dir = Path(spec.run_dir) if spec.run_dir else self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"ANK_AGENT": spec.agent, "ANK_WORKLOAD": spec.workload, "ANK_INSTANCE": spec.instance})
        if spec.files:
            env["ANK_FILES_DIR"] = str(self._write_files(run_dir, spec))
        env.update(config.env)
        argv = [config.command, *config.args]
        with open(log_path(run_dir, spec.workload), "ab") as log_file:
            log_file.write(f"--- ank: starting {' '.join(argv)} (instance {spec.instance})\n".encode())
            log_file.flush()
            try:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=config.cwd,
                    env=env,
                    start_new_session=True,  # own session and group: group stop; survives the agent
                )
            except OSError as exc:
                raise StartError(f"cannot execute {config.command!r}: {exc}", permanent=True) from exc
        pidfd = os.pidfd_open(popen.pid)
        start_time = process_start_time(popen.pid) or ""
        handle = RunHandle(
            workload=spec.workload,
            instance=spec.instance,
            runtime=self.name,
            id=str(popen.pid),
            record={"pid": str(popen.pid), "start_time": start_time},
        )
        notify(RuntimeEvent(spec.workload, spec.instance, "running"))  # before any exit notice
        self._watch(_Watched(handle, popen.pid, pidfd, popen), notify)
        log.info("%s: started pid %d: %s", spec.workload, popen.pid, " ".join(argv))
        return handle

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        watched = self._find(handle)
        if watched is None or watched.exited:
            return
        watched.stopping = True
        if kill_group(watched.pid, signal.SIGTERM):
            self._watcher.kill_after(watched.pid, grace_s, time.monotonic())

    def remove(self, handle: RunHandle) -> None:
        with self._lock:
            watched = self._watched.pop((handle.workload, handle.instance), None)
        if watched is None:
            return
        if not watched.exited:  # never leave an orphan the agent no longer watches
            kill_group(watched.pid, signal.SIGKILL)
        self._release_pidfd(watched)

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        adopted = []
        for handle in records:
            try:
                pid = int(handle.record["pid"])
                start_time = handle.record["start_time"]
            except (KeyError, ValueError):
                log.warning("%s: unreadable record %r: not adopted", handle.workload, handle.record)
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # gone
            # checked after opening the pidfd: the pidfd pins this process, so the check holds
            if not start_time or process_start_time(pid) != start_time:
                _close(pidfd)
                continue
            self._watch(_Watched(handle, pid, pidfd, None), notify)
            adopted.append(handle)
            log.info("%s: adopted pid %d", handle.workload, pid)
        return adopted

    def logs(self, handle: RunHandle, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        path = log_path(self.run_dir, handle.workload)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return
        yield from lines[-tail:] if tail else lines
        # follow: not offered; the log file can be followed with `tail -f`

    def usage(self, handles: list[RunHandle]) -> dict[str, WorkloadUsage]:
        out = {}
        for handle in handles:
            watched = self._find(handle)
            if watched is None or watched.exited:
                continue
            out[handle.workload] = _measure(watched)
        return out

    def close(self) -> None:
        with self._lock:
            watched_now = list(self._watched.values())
            self._watched.clear()
        for watched in watched_now:
            self._release_pidfd(watched)
        self._watcher.close()

    # -- internals --------------------------------------------------------------------
    def _find(self, handle: RunHandle) -> _Watched | None:
        with self._lock:
            return self._watched.get((handle.workload, handle.instance))

    def _watch(self, watched: _Watched, notify: Notify) -> None:
        with self._lock:
            self._watched[(watched.handle.workload, watched.handle.instance)] = watched

        def on_exit() -> None:
            exit_code = watched.popen.wait() if watched.popen is not None else None
            watched.exited = True
            if watched.stopping:
                kill_group(watched.pid, signal.SIGKILL)  # what the leader left of its group
            # told first: the exit → state path waits for nothing else
            notify(RuntimeEvent(watched.handle.workload, watched.handle.instance, "exited", exit_code=exit_code))
            self._release_pidfd(watched)  # the exit is known: the descriptor has served
            self._watcher.cancel_kill(watched.pid)
            log.info("%s: pid %d exited (%s)", watched.handle.workload, watched.pid, exit_code)

        self._watcher.watch(watched.pidfd, on_exit)

    def _release_pidfd(self, watched: _Watched) -> None:
        """Stops watching and closes the pidfd, once (the exit and a remove may race)."""
        with self._lock:
            pidfd, watched.pidfd = watched.pidfd, -1
        if pidfd >= 0:
            self._watcher.forget(pidfd)
            _close(pidfd)

    @staticmethod
    def _write_files(run_dir: Path, spec: StartSpec) -> Path:
        """The manifest's `files`, under <run dir>/<workload>.files/<mountPoint>
        (a process has no mount namespace: it finds them via ANK_FILES_DIR)."""
        root = run_dir / f"{spec.workload}.files"
        for mount_point, content in spec.files:
            target = (root / mount_point.lstrip("/")).resolve()
            if not target.is_relative_to(root.resolve()):
                raise StartError(f"file mountPoint {mount_point!r} leaves the workload's folder", permanent=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return root


def _measure(watched: _Watched) -> WorkloadUsage:
    """cpu % (since the previous call) and resident memory of the process and
    its descendants."""
    try:
        leader = watched.usage_probes.get(watched.pid) or psutil.Process(watched.pid)
        members = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return WorkloadUsage()
    cpu = 0.0
    memory = 0
    probes: dict[int, psutil.Process] = {}
    for member in members:
        probe = watched.usage_probes.get(member.pid, member)
        try:
            cpu += probe.cpu_percent(None)
            memory += probe.memory_info().rss
        except psutil.Error:
            continue
        probes[member.pid] = probe
    watched.usage_probes = probes
    return WorkloadUsage(cpu_percent=round(cpu, 1), memory_bytes=memory)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def make_runtime(run_dir: str | Path) -> ProcessRuntime:
    return ProcessRuntime(run_dir)
