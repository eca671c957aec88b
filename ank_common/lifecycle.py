"""Safe lifecycle helpers shared by `ank up`, the planner and the agent.

- one writer per state: `DirLock` holds an exclusive flock on `<dir>/.lock`
  for the life of the process and names the holder's pid when it is taken;
- defaults that do not depend on the working directory (`default_state_dir`,
  `default_run_dir`), as DECISIONS.md fixes them;
- who holds a TCP port (`port_holder`), for errors that name it;
- parent death: `die_with_parent` (PR_SET_PDEATHSIG) for children that must
  not outlive the process that started them;
- the agent's child subreaper (`become_subreaper`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

LOCK_FILE = ".lock"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class Busy(Exception):
    """A directory or port another process holds; the message names both."""


class DirLock:
    """An exclusive, non-blocking flock on `<directory>/.lock`, held until
    `release()` or the process ends (the kernel drops it on any exit, kill -9
    included, so a stale lock file never blocks a restart)."""

    def __init__(self, directory: str | Path, what: str = "state directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self.fd = -1

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            who = f"process {holder}" if holder else "another process"
            raise Busy(f"the {self.what} {self.directory} is in use by {who} (lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def check_free(directory: str | Path, what: str = "state directory") -> None:
    """Raises Busy if another process holds the directory's lock (takes
    and drops it at once; creates nothing if the directory does not exist)."""
    if not Path(directory).is_dir():
        return
    DirLock(directory, what).acquire().release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# -- default places --------------------------------------------------------------------


def default_state_dir() -> Path:
    """The planner's state: `$XDG_STATE_HOME/ank-zenoh/planner` (XDG default
    ~/.local/state), or /var/lib/ank-zenoh/planner for root when
    XDG_STATE_HOME is not set."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if not xdg and os.geteuid() == 0:
        return Path("/var/lib/ank-zenoh/planner")
    return Path(xdg or Path.home() / ".local" / "state") / "ank-zenoh" / "planner"


def default_run_dir(agent: str) -> Path:
    """An agent's run folder, as Ankaios's: `$TMPDIR/ankaios/<agent>_io`."""
    return Path(os.environ.get("TMPDIR") or "/tmp") / "ankaios" / f"{agent}_io"


# -- ports -----------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) host:port: tries to bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_holder(port: int) -> int | None:
    """The pid of a process with a listening TCP socket on `port`, if this
    process may see it (/proc/net/tcp{,6} and /proc/*/fd)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def busy_port_message(port: int, what: str) -> str:
    holder = port_holder(port)
    by = f" by process {holder} ({_comm(holder)})" if holder else " by another program"
    return f"the {what} port {port} is already in use{by}"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# -- parent death and subreaping ------------------------------------------------------


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, value, 0, 0, 0))


def wait_for_stop(stop: threading.Event, slice_s: float = 0.5) -> None:
    """Waits for `stop` in slices, on the main thread. A signal may be
    delivered to any thread of the process (most often one of Zenoh's): its
    Python handler runs only when the main thread runs again, which an
    endless wait never does."""
    while not stop.wait(slice_s):
        pass


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec hook: the child gets `sig` when the process that started it
    dies for any reason (SIGKILL included). Popen must be called from a thread
    that lives as long as the process (the main thread)."""
    parent = os.getpid()

    def hook() -> None:
        _prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the prctl
            os.kill(os.getpid(), sig)

    return hook


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init."""
    try:
        return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except OSError:
        return False
