"""Runtime `process`: a workload is a native program (ProcessConfig:
command, args, env, cwd).

- Each program starts in its own session (so its own process group) and,
  where the agent can make one, its own cgroup (containment.py): a stop
  signals the whole group and every member of the cgroup (SIGTERM, SIGKILL
  after the grace, `cgroup.kill` for what is left once the program is gone),
  so that descendants that daemonise are stopped too. The program survives
  the agent (kill -9 included), so that a restarted agent adopts it.
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
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import yaml

from schemas.messages import WorkloadUsage
from schemas.runtime_configs import ProcessConfig
from services.agent.control_interface import mount as ci_mount
from services.agent.runtimes.base import Notify, RunHandle, RuntimeEvent, StartError, StartSpec, log_path
from services.agent.runtimes.process import containment
from services.agent.runtimes.process.containment import Containment
from services.agent.runtimes.process.watcher import PidfdWatcher, kill_group

log = logging.getLogger("ank.agent.process")


# `sh -c SCRIPT CGROUP PROGRAM ARGS...`: the shell moves itself ("0") into the
# workload's cgroup, then becomes the program (exec keeps the pid and the cgroup).
# How long the set of a workload's processes its usage counts is trusted
# before it is read again (see ProcessRuntime.usage).
MEMBERS_TTL_S = 60.0
TRAMPOLINE = ("/bin/sh", "-c", 'echo 0 > "$0/cgroup.procs" && exec "$@"')


def _resolve(command: str, cwd: str | None, env: dict[str, str]) -> str:
    """The program Popen would execute, or the OSError it would raise."""
    if "/" in command:
        path = command if os.path.isabs(command) or not cwd else os.path.join(cwd, command)
    else:
        found = shutil.which(command, path=os.pathsep.join(os.get_exec_path(env)))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", command)
        path = found
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", command)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(13, "Permission denied", command)
    return command if "/" in command else path


def _both(first: Callable[[], None] | None, then: Callable[[], None] | None) -> Callable[[], None] | None:
    """One preexec hook running `first`, then `then` (each if any), in the child before exec."""
    if first is None or then is None:
        return first or then

    def run() -> None:
        first()
        then()

    return run


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
        self.cgroup = handle.record.get("cgroup", "")  # "" when contained by its process group only
        self.stopping = False
        self.exited = False
        self.usage_probes: dict[int, psutil.Process] = {}
        # the processes its usage counts: the program at first, then its cgroup's
        # members (or its descendants) read again every MEMBERS_TTL_S
        self.members = [pid]
        self.members_at = time.monotonic()


class ProcessRuntime:
    name = "process"

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.containment = Containment.detect()
        if self.containment.base is None:
            from ank_common.lifecycle import become_subreaper

            become_subreaper()  # daemonised descendants stay below the agent
        self._swept: set[str] = set()  # agents whose stale empty cgroups were removed
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
        preexec = ci_mount.preexec(spec.control_interface) if spec.control_interface else None
        if spec.control_interface:
            env[ci_mount.ENV] = ci_mount.TARGET if preexec is not None else spec.control_interface
        env.update(config.env)
        argv = [config.command, *config.args]
        for text in (config.command, *config.args, *config.env, *config.env.values()):
            if "\0" in text:
                raise StartError(f"runtimeConfig holds a NUL byte (in {text!r}): it cannot be passed", permanent=True)
        if spec.agent not in self._swept:
            self._swept.add(spec.agent)
            self.containment.sweep(spec.agent)
        cgroup = self.containment.make(spec.agent, spec.workload, spec.instance)
        spawn = argv
        if cgroup and preexec is None:
            # Join the cgroup in a shell trampoline that then execs the program
            # (same pid), not in a preexec_fn: a preexec hook makes Python fork
            # the whole agent instead of vfork-ing it (16 ms instead of 0.6 ms
            # per start for a 200 MB agent), which made many workloads per agent
            # quadratic. The program is resolved first so that a missing or
            # non-executable one is still a StartError, as Popen reports it.
            try:
                program = _resolve(config.command, config.cwd, env)
            except OSError as exc:
                containment.dispose(cgroup)
                raise StartError(f"cannot execute {config.command!r}: {exc}", permanent=True) from exc
            spawn = [*TRAMPOLINE, cgroup, program, *config.args]
            cgroup_fd, join_cgroup = -1, None
        else:
            cgroup_fd, join_cgroup = Containment.joiner(cgroup)
        with open(log_path(run_dir, spec.workload), "ab") as log_file:
            log_file.write(f"--- ank: starting {' '.join(argv)} (instance {spec.instance})\n".encode())
            log_file.flush()
            try:
                popen = subprocess.Popen(
                    spawn,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=config.cwd,
                    env=env,
                    start_new_session=True,  # own session and group: group stop; survives the agent
                    preexec_fn=_both(join_cgroup, preexec),  # the workload's cgroup, the Control Interface's mount
                )
            except subprocess.SubprocessError as exc:  # from preexec: the cgroup join or the mount namespace failed
                containment.dispose(cgroup)
                reason = f"cannot prepare the process (cgroup or control interface): {exc}"
                raise StartError(reason, permanent=False) from exc
            except (OSError, ValueError) as exc:
                containment.dispose(cgroup)
                raise StartError(f"cannot execute {config.command!r}: {exc}", permanent=True) from exc
            finally:
                if cgroup_fd >= 0:
                    os.close(cgroup_fd)
        pidfd = os.pidfd_open(popen.pid)
        start_time = process_start_time(popen.pid) or ""
        handle = RunHandle(
            workload=spec.workload,
            instance=spec.instance,
            runtime=self.name,
            id=str(popen.pid),
            record={"pid": str(popen.pid), "start_time": start_time, "cgroup": cgroup},
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
        containment.signal_all(watched.cgroup, signal.SIGTERM)
        if kill_group(watched.pid, signal.SIGTERM):
            self._watcher.kill_after(watched.pid, grace_s, time.monotonic())

    def remove(self, handle: RunHandle) -> None:
        with self._lock:
            watched = self._watched.pop((handle.workload, handle.instance), None)
        if watched is None:
            return
        if not watched.exited:  # never leave an orphan the agent no longer watches
            kill_group(watched.pid, signal.SIGKILL)
        containment.dispose(watched.cgroup)  # what daemonised from it, too
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
        """Each workload's processes: the program, and what it started (its
        cgroup's members, else its descendants from one scan of /proc for the
        whole call), found again at most every MEMBERS_TTL_S. Reading
        `cgroup.procs` contends in the kernel with every cgroup migration (each
        workload start): read for every workload every status, it tripled the
        time to start 10,000 workloads."""
        out = {}
        tree: dict[int, list[int]] | None = None
        now = time.monotonic()
        for handle in handles:
            watched = self._find(handle)
            if watched is None or watched.exited:
                continue
            if now - watched.members_at >= MEMBERS_TTL_S:
                pids = containment.members(watched.cgroup) if watched.cgroup else []
                if not pids:
                    tree = _children_by_parent() if tree is None else tree
                    pids = _descendants(watched.pid, tree)
                watched.members, watched.members_at = pids, now
            out[handle.workload] = _measure(watched, watched.members)
        self._reap()
        return out

    def _reap(self) -> None:
        """Without cgroups the agent is subreaper: it reaps what it inherits."""
        if self.containment.base is None:
            with self._lock:
                own = {w.pid for w in self._watched.values() if w.popen is not None}
            containment.reap_orphans(own)

    def close(self) -> None:
        with self._lock:
            watched_now = list(self._watched.values())
            self._watched.clear()
        for watched in watched_now:
            self._release_pidfd(watched)
        self._watcher.close()
        for agent in self._swept:
            self.containment.sweep(agent, remove_agent=True)

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
                containment.kill_all(watched.cgroup)  # and of its cgroup
            # told first: the exit → state path waits for nothing else
            notify(RuntimeEvent(watched.handle.workload, watched.handle.instance, "exited", exit_code=exit_code))
            containment.release(watched.cgroup)  # gone if nothing daemonised from it
            self._reap()
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


def _measure(watched: _Watched, pids: list[int]) -> WorkloadUsage:
    """cpu % (since the previous call) and resident memory of these processes
    (a probe kept per pid: cpu % is measured between two calls)."""
    cpu = 0.0
    memory = 0
    probes: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            probe = watched.usage_probes.get(pid) or psutil.Process(pid)
            cpu += probe.cpu_percent(None)
            memory += probe.memory_info().rss
        except psutil.Error:
            continue
        probes[pid] = probe
    watched.usage_probes = probes
    return WorkloadUsage(cpu_percent=round(cpu, 1), memory_bytes=memory)


def _children_by_parent() -> dict[int, list[int]]:
    """parent pid → child pids, from one pass over /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    """pid and every descendant of it in `tree` (bounded by the tree)."""
    found, todo, seen = [], [pid], {pid}
    while todo:
        current = todo.pop()
        found.append(current)
        for child in tree.get(current, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return found


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def make_runtime(run_dir: str | Path) -> ProcessRuntime:
    return ProcessRuntime(run_dir)
