"""How a process workload's whole tree is kept together, so that a program
that daemonises (`setsid prog &`) is stopped with its workload.

- `cgroup`: one cgroup v2 per instance under `<root>/ank-zenoh/<agent>/`,
  the unified hierarchy (/sys/fs/cgroup on a pure v2 machine,
  /sys/fs/cgroup/unified on a hybrid one). The child joins it before it
  executes the program (a preexec write to `cgroup.procs`), a stop signals
  every member, and `cgroup.kill` ends what is left. Needs write access
  (root) and a kernel with `cgroup.kill` (5.14).
- `process-group`: where no cgroup can be made, the program's own process
  group, with the agent as child subreaper (PR_SET_CHILD_SUBREAPER) so that
  orphaned descendants stay below it rather than under init.

ANK_CGROUP_ROOT names another unified hierarchy, or `off` for process groups.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ank.agent.process")

_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def _unified_root() -> Path | None:
    env = os.environ.get("ANK_CGROUP_ROOT", "")
    if env.lower() == "off":
        return None
    for root in [Path(env)] if env else _CANDIDATES:
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists():
            return root
    return None


class Containment:
    """One per process runtime; `kind` is "cgroup" or "process-group"."""

    def __init__(self, base: Path | None) -> None:
        self.base = base
        self.kind = "cgroup" if base is not None else "process-group"

    @classmethod
    def detect(cls) -> Containment:
        root = _unified_root()
        if root is not None:
            base = root / "ank-zenoh"
            try:
                base.mkdir(exist_ok=True)
                probe = base / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                usable = (probe / "cgroup.kill").exists() and os.access(probe / "cgroup.procs", os.W_OK)
                probe.rmdir()
                if usable:
                    return cls(base)
                log.info("cgroups under %s lack cgroup.kill: process groups instead", base)
            except OSError as exc:
                log.info("cannot make cgroups under %s (%s): process groups instead", base, exc)
        return cls(None)

    # -- per instance -----------------------------------------------------------------
    def make(self, agent: str, workload: str, instance: str) -> str:
        """A fresh cgroup for one start of an instance ("" when using process
        groups). Each start gets its own (a random suffix): a restart keeps the
        instance id, and the ended start's cleanup, which may run after the
        restart began, must never remove the cgroup the new start joins."""
        if self.base is None:
            return ""
        parent = self.base / agent
        for _ in range(8):
            path = parent / f"{workload}.{instance[:16] or 'x'}.{os.urandom(4).hex()}"
            try:
                parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()
                return str(path)
            except FileExistsError:
                continue
            except OSError as exc:
                log.warning("%s: cannot make cgroup %s (%s): process group only", workload, path, exc)
                return ""
        return ""

    def sweep(self, agent: str, *, remove_agent: bool = False) -> None:
        """Removes the agent's empty cgroups left by instances that ended
        while no agent watched them (a non-empty one cannot be removed), and
        with `remove_agent` the agent's own folder if it is then empty."""
        if self.base is None:
            return
        paths = [p for p in (self.base / agent).glob("*") if p.is_dir()]
        for path in [*paths, self.base / agent] if remove_agent else paths:
            if path.is_dir() and not members(str(path)):
                try:
                    path.rmdir()
                except OSError:
                    pass

    @staticmethod
    def joiner(cgroup: str) -> tuple[int, Callable[[], None] | None]:
        """An open `cgroup.procs` and the preexec hook that moves the child
        into it; (-1, None) without a cgroup. Close the fd after Popen."""
        if not cgroup:
            return -1, None
        try:
            fd = os.open(Path(cgroup) / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot join cgroup %s: %s", cgroup, exc)
            return -1, None

        def hook() -> None:
            os.write(fd, b"0")  # "0": the writing process itself

        return fd, hook


def members(cgroup: str) -> list[int]:
    if not cgroup:
        return []
    try:
        return [int(p) for p in (Path(cgroup) / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def signal_all(cgroup: str, sig: int) -> None:
    for pid in members(cgroup):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_all(cgroup: str) -> None:
    """SIGKILL to every member, at once (cgroup.kill)."""
    if not cgroup:
        return
    try:
        (Path(cgroup) / "cgroup.kill").write_text("1")
    except OSError:
        signal_all(cgroup, signal.SIGKILL)


def sweep_all(base: Path | None) -> int:
    """Removes every empty cgroup below `base` (deepest first): what agents
    that were killed left behind. Returns how many were removed."""
    if base is None or not base.is_dir():
        return 0
    removed = 0
    # os.walk skips directories that vanish during the walk (another agent's removal)
    below = [Path(root) / name for root, dirs, _files in os.walk(base) for name in dirs]
    for path in sorted(below, key=lambda p: len(p.parts), reverse=True):
        if not members(str(path)):
            try:
                path.rmdir()
                removed += 1
            except OSError:
                pass
    return removed


def reap_orphans(own: set[int]) -> int:
    """As child subreaper (no cgroups), the agent inherits the workloads'
    orphaned descendants: reaps those that ended (zombies) so that they do
    not pile up. Only children in another session than the agent's (the
    workloads' sessions; a runtime's own helper commands stay in the agent's
    and are waited for by their callers) and not in `own` (the workloads'
    leaders, waited for by their Popen). Returns how many were reaped."""
    me, my_sid = os.getpid(), os.getsid(0)
    reaped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields: state, ppid, pgrp, session, ...
        if len(fields) < 4 or fields[0] != "Z" or int(fields[1]) != me or int(fields[3]) == my_sid:
            continue
        try:
            if os.waitpid(int(entry.name), os.WNOHANG)[0]:
                reaped += 1
        except ChildProcessError:
            pass
    return reaped


def release(cgroup: str) -> None:
    """Removes the cgroup if nothing is left in it (no wait)."""
    if cgroup and not members(cgroup):
        try:
            Path(cgroup).rmdir()
        except OSError:
            pass


def dispose(cgroup: str, timeout: float = 5.0) -> None:
    """Kills what is left and removes the cgroup once it is empty (bounded)."""
    if not cgroup or not Path(cgroup).is_dir():
        return
    kill_all(cgroup)
    deadline = time.monotonic() + timeout
    while members(cgroup) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        Path(cgroup).rmdir()
    except OSError as exc:
        log.warning("cannot remove cgroup %s: %s", cgroup, exc)
