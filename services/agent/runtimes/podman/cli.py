"""The podman command line, as both podman connectors use it: one-shot
commands (`run`, `inspect`, `stop`, `rm`, `logs`, `stats`, `kube play`) and
the one long-running `podman events` stream per agent that tells them what
happens to their containers (no polling).

Every podman process gets CONTAINERS_CONF: the caller's, or the project's
containers.conf (runc, explicit ulimits: what works on these machines).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, ParamSpec

from services.agent.runtimes.podman.core import LABEL_AGENT, ContainerEvent, parse_api_event, parse_event

if TYPE_CHECKING:
    from services.agent.runtimes.podman.api import ApiEvents, PodmanApi

    ApiSource = Callable[[], PodmanApi | None]

log = logging.getLogger("ank.agent.podman")

PROJECT_CONTAINERS_CONF = Path(__file__).resolve().parents[4] / "containers.conf"
# Restarts of a dead `podman events` stream: delays in a row; reset once a stream lived STREAM_STABLE_S.
STREAM_RESTART_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
STREAM_STABLE_S = 10.0


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and PROJECT_CONTAINERS_CONF.exists():
        env["CONTAINERS_CONF"] = str(PROJECT_CONTAINERS_CONF)
    return env


class PodmanCli:
    """Runs podman commands; never raises on a failing command (the caller
    reads returncode/stderr), only on a missing binary or a timeout."""

    def __init__(self, binary: str = "podman", exits_dir: Path | None = None) -> None:
        self.binary = binary
        self.env = podman_env()
        # conmon's exit files (rootful podman's default place): the fast path for exits
        self.exits_dir = exits_dir if exits_dir is not None else ROOTFUL_EXITS_DIR

    def available(self) -> bool:
        if shutil.which(self.binary) is None:
            return False
        try:
            return self.run(["version", "--format", "{{.Client.Version}}"], timeout=15).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def run(
        self, args: list[str], *, timeout: float = 60.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def lines(self, args: list[str]) -> Iterator[str]:
        """The output lines of a command (stdout and stderr merged), while
        they come; the process is ended when the caller stops iterating."""
        proc = subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                yield raw.decode(errors="replace").rstrip("\n")
        finally:
            end_process(proc, 5)
            proc.stdout.close()


def end_process(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Ends a podman process we started: SIGTERM, and SIGKILL if it is still
    there after `grace_s`; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


P = ParamSpec("P")


class Listeners(Generic[P]):
    """The callbacks subscribed to one shared watcher (any thread may
    subscribe): each is called in turn on the watcher's thread, and one that
    fails is logged without keeping the others from their call."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._listeners: list[Callable[P, None]] = []

    def add(self, listener: Callable[P, None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: Callable[P, None]) -> int:
        """Unsubscribes `listener`; how many are left."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            return len(self._listeners)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("%s listener failed on %s", self.what, args)


Listener = Callable[[ContainerEvent], None]


class EventStream:
    """`podman events --format json --filter label=ank.agent=<agent>` read by
    one thread; each container event goes to every listener. When the
    process dies it is started again with `--since` the last event seen, so
    nothing is lost in between; at the first start `--since` reaches back a
    little, before any container of this stream was created. With `api`
    (the connector's service, asked at each start): the API's event stream
    with the same filter and `since` instead of the process, where the
    service answers its ping."""

    def __init__(self, cli: PodmanCli, agent: str, api: ApiSource | None = None) -> None:
        self.cli = cli
        self.agent = agent
        self.api = api
        self.listeners: Listeners[[ContainerEvent]] = Listeners("podman event")
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: ApiEvents | None = None
        self._closed = threading.Event()
        self._since = f"{time.time() - 1.0:.6f}"
        self._thread = threading.Thread(target=self._read_forever, name=f"podman-events-{agent}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            proc, conn = self._proc, self._conn
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if conn is not None:
            conn.shutdown()
        self._thread.join(10)

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = ["events", "--format", "json", "--filter", f"label={LABEL_AGENT}={self.agent}", "--since", self._since]
        return subprocess.Popen(
            [self.cli.binary, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self.cli.env,
        )

    def _read_forever(self) -> None:
        failures = 0
        while not self._closed.is_set():
            started = time.monotonic()
            api = self._service()
            if api is not None:
                self._read_api(api)
                proc = None
            else:
                try:
                    proc = self._spawn()
                except OSError as exc:
                    log.error("podman events cannot start: %s", exc)
                    proc = None
            if proc is not None:
                with self._lock:
                    self._proc = proc
                if self._closed.is_set():
                    proc.terminate()
                self._read(proc)
                proc.wait()
            if self._closed.is_set():
                return
            failures = 0 if time.monotonic() - started > STREAM_STABLE_S else failures + 1
            delay = STREAM_RESTART_DELAYS_S[min(failures, len(STREAM_RESTART_DELAYS_S)) - 1] if failures else 0.0
            log.warning("podman events stream ended; restarting in %.1fs since %s", delay, self._since)
            self._closed.wait(delay)

    def _service(self) -> PodmanApi | None:
        """The API client to read the events through, or None for the CLI."""
        if self.api is None:
            return None
        try:
            api = self.api()
        except Exception as exc:
            log.warning("podman events: no API service (%s); through the CLI", exc)
            return None
        if api is not None and not api.ping(timeout=5.0):
            log.warning("podman events: the API service does not answer; through the CLI this time")
            return None
        return api

    def _connect(self, api: PodmanApi) -> ApiEvents:
        return api.events([f"{LABEL_AGENT}={self.agent}"], self._since)

    def _read_api(self, api: PodmanApi) -> None:
        try:
            conn = self._connect(api)
        except OSError as exc:
            log.error("podman API events cannot start: %s", exc)
            return
        with self._lock:
            self._conn = conn
        if self._closed.is_set():
            conn.shutdown()
        try:
            for line in conn.lines():
                self._dispatch(parse_api_event(line))
        except OSError as exc:
            log.info("podman API events: %s", exc)
        finally:
            conn.close()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._dispatch(parse_event(line))
        proc.stdout.close()

    def _dispatch(self, event: ContainerEvent | None) -> None:
        if event is None:
            return
        if event.Time:
            self._since = event.Time
        self.listeners.call(event)


_streams: dict[tuple[str, str], EventStream] = {}
_streams_lock = threading.Lock()


def acquire_stream(cli: PodmanCli, agent: str, listener: Listener, api: ApiSource | None = None) -> EventStream:
    """The agent's shared event stream (started on first use, through `api`
    where it gives a client), with `listener` subscribed."""
    with _streams_lock:
        stream = _streams.get((cli.binary, agent))
        if stream is None:
            stream = _streams[(cli.binary, agent)] = EventStream(cli, agent, api)
        stream.listeners.add(listener)
        return stream


def release_stream(stream: EventStream, listener: Listener) -> None:
    """Unsubscribes; the last one out stops the podman events process."""
    with _streams_lock:
        if stream.listeners.remove(listener) == 0:
            _streams.pop((stream.cli.binary, stream.agent), None)
            last = True
        else:
            last = False
    if last:
        stream.close()


# -- exit files ------------------------------------------------------------------------
#
# conmon writes a container's exit code into <tmp_dir>/exits/<container id>
# the moment the container's process ends; podman's `died` event reaches a
# `podman events` reader only when podman's file event log is next polled
# (~250 ms here). Watching that folder with inotify tells the exit at once.
# It is a fast path only: the file is gone once `podman container cleanup`
# has read it, and the event stream still reports every exit.

ROOTFUL_EXITS_DIR = Path("/run/libpod/exits")
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

ExitListener = Callable[[str, int], None]


class ExitFiles:
    """One thread reading inotify events of the exits folder; calls each
    listener with (container id, exit code)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.listeners: Listeners[[str, int]] = Listeners("exit file")
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self._fd, str(folder).encode(), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            errno = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(errno, f"inotify_add_watch {folder} failed")
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._read_forever, name="podman-exit-files", daemon=True)
        self._thread.start()

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)

    def _read_forever(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            for name in _names(data):
                code = _read_exit_code(self.folder / name)
                if code is None:
                    continue
                self.listeners.call(name, code)


def _names(data: bytes) -> list[str]:
    names: list[str] = []
    offset = 0
    while offset + _EVENT_HEADER.size <= len(data):
        _wd, _mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
        offset += _EVENT_HEADER.size
        names.append(data[offset : offset + length].rstrip(b"\0").decode(errors="replace"))
        offset += length
    return [n for n in names if n]


def _read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # already consumed by podman's cleanup, or not an exit file


_exit_files: dict[Path, ExitFiles] = {}


def acquire_exit_files(listener: ExitListener, folder: Path = ROOTFUL_EXITS_DIR) -> ExitFiles | None:
    """The shared watcher of the exits folder, with `listener` subscribed;
    None where there is no such folder or no inotify (the event stream alone
    then reports exits)."""
    with _streams_lock:
        files = _exit_files.get(folder)
        if files is None:
            if not folder.is_dir():
                return None
            try:
                files = _exit_files[folder] = ExitFiles(folder)
            except OSError as exc:
                log.info("no exit-file fast path: %s", exc)
                return None
        files.listeners.add(listener)
        return files


def release_exit_files(files: ExitFiles, listener: ExitListener) -> None:
    with _streams_lock:
        last = files.listeners.remove(listener) == 0
        if last and _exit_files.get(files.folder) is files:
            del _exit_files[files.folder]
    if last:
        files.close()
