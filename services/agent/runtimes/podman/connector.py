"""The `podman` runtime connector: the shell around podman/core.py.

Containers are created, started, stopped, removed and listed through
podman's REST API service (podman/api.py: the system socket or the agent's
own `podman system service`), from the same `podman run -d` command line the
CLI would get (podman/spec.py translates it; a command line with an option
it cannot translate runs through the CLI, logged with the option). Where no
API service can run, everything goes through the CLI (chosen at start,
reported in the agent status). States come from the agent's one `podman
events` stream (podman/cli.py; its `died` events carry the exit code, so no
inspect is needed), exits at once from conmon's exit files where they can be
watched. See docs/podman.md.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import msgspec

from schemas.messages import WorkloadUsage
from services.agent.runtimes.base import Notify, RunHandle, Runtime, RuntimeEvent, StartError, StartSpec
from services.agent.runtimes.podman.api import ApiFailure, PodmanApi, PodmanService
from services.agent.runtimes.podman.cli import (
    EventStream,
    ExitFiles,
    PodmanCli,
    acquire_exit_files,
    acquire_stream,
    release_exit_files,
    release_stream,
)
from services.agent.runtimes.podman.core import (
    EXIT_FILE,
    IMAGE_MAP_ENV,
    LABEL_INSTANCE,
    LABEL_RUN,
    LABEL_WORKLOAD,
    ContainerEvent,
    ImageMap,
    LogLines,
    Run,
    container_name,
    decode_podman_config,
    map_image,
    names_itself,
    on_container_event,
    on_started,
    on_stop_asked,
    parse_api_stats,
    parse_image_map,
    parse_stats,
    run_command,
    run_labels,
    start_error,
)
from services.agent.runtimes.podman.shared import acquire_service, release_service
from services.agent.runtimes.podman.spec import ApiRun, Untranslatable, api_run

log = logging.getLogger("ank.agent.podman")

# Events of runs not (yet) registered, kept for adopt(): an adopted container
# may change between `podman ps` and its registration.
UNCLAIMED_EVENTS = 256
STOP_TIMEOUT_MARGIN_S = 30.0
# An ended container's removal waits this long for a restart to take it over.
DEFERRED_REMOVE_S = 1.0
AVAILABLE_TTL_S = 30.0
# "recreate": a restart creates a new container even where the ended one could start again.
RESTART_ENV = "ANK_PODMAN_RESTART"


class Ended(msgspec.Struct, frozen=True):
    """An ended container the agent removed, kept until its deferred removal:
    a restart of the same instance with the same command line starts it again."""

    container_id: str
    run: Run
    command: tuple[str, ...]  # its `podman run` command line, without its run label


def image_map_from_env() -> ImageMap:
    """ANK_IMAGE_MAP (`FROM=TO,...`); a malformed value raises ValueError."""
    return parse_image_map(os.environ.get(IMAGE_MAP_ENV, ""))


class PodmanWatcher:
    """What the two podman connectors share: the registered runs, the agent's
    event stream, notify. Runs are keyed by their `ank.run` label."""

    def __init__(self, cli: PodmanCli, api: Callable[[], PodmanApi | None] | None = None) -> None:
        self.cli = cli
        self.api = api  # the connector's service: the event stream reads through it where it runs
        self._lock = threading.RLock()
        self._runs: dict[str, Run] = {}
        self._notify: dict[str, Notify] = {}
        self._streams: dict[str, EventStream] = {}
        self._unclaimed: collections.deque[ContainerEvent] = collections.deque(maxlen=UNCLAIMED_EVENTS)
        self._exit_files: ExitFiles | None = None

    def watch_agent(self, agent: str) -> None:
        """Starts the agent's event stream (before any of its containers is touched)."""
        with self._lock:
            if agent not in self._streams:
                self._streams[agent] = acquire_stream(self.cli, agent, self._on_event, self.api)
            if self._exit_files is None and self.cli.exits_dir is not None:
                self._exit_files = acquire_exit_files(self._on_exit_file, self.cli.exits_dir)

    def register(self, run: Run, notify: Notify, *, replay: bool = False) -> None:
        with self._lock:
            self._runs[run.run_id] = run
            self._notify[run.run_id] = notify
            if replay:
                for event in [e for e in self._unclaimed if e.Attributes.get(LABEL_RUN) == run.run_id]:
                    self._apply(event)

    def forget(self, run_id: str) -> Run | None:
        with self._lock:
            self._notify.pop(run_id, None)
            return self._runs.pop(run_id, None)

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def update(self, run_id: str, **changes: object) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                self._runs[run_id] = msgspec.structs.replace(run, **changes)

    def stop_asked(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                self._emit(run_id, *on_stop_asked(run))

    def started(self, run_id: str, container_id: str) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                self._emit(run_id, *on_started(run, container_id))

    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
            exit_files, self._exit_files = self._exit_files, None
        for stream in streams.values():
            release_stream(stream, self._on_event)
        if exit_files is not None:
            release_exit_files(exit_files, self._on_exit_file)

    def _on_exit_file(self, container_id: str, exit_code: int) -> None:
        """The exit-file fast path: a `died` event ahead of podman's own."""
        with self._lock:
            for run in self._runs.values():
                if container_id in run.phases:
                    died = ContainerEvent(
                        ID=container_id,
                        Status=EXIT_FILE,
                        ContainerExitCode=exit_code,
                        Attributes={LABEL_RUN: run.run_id},
                    )
                    self._apply(died)
                    return

    def _on_event(self, event: ContainerEvent) -> None:
        run_id = event.Attributes.get(LABEL_RUN, "")
        with self._lock:
            if run_id in self._runs:
                self._apply(event)
            else:
                self._unclaimed.append(event)

    def _apply(self, event: ContainerEvent) -> None:
        run_id = event.Attributes.get(LABEL_RUN, "")
        run = self._runs.get(run_id)
        if run is not None:
            self._emit(run_id, *on_container_event(run, event))

    def _emit(self, run_id: str, run: Run, events: list[RuntimeEvent]) -> None:
        # Called with the lock held, so that the agent hears each run's
        # events in the order they happened (notify only posts).
        self._runs[run_id] = run
        notify = self._notify.get(run_id)
        for event in events:
            log.info("%s (%s): %s %s", event.workload, event.instance, event.kind, event.exit_code)
            if notify is not None:
                try:
                    notify(event)
                except Exception:
                    log.exception("notify failed for %s", event.workload)


def files_dir(base: Path, workload: str, instance: str) -> Path:
    return base / "files" / f"{workload}.{instance}"


def write_files(folder: Path, files: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """Writes each (mountPoint, content) under `folder`; (host path, mountPoint)
    pairs to bind-mount. A mountPoint that is not an absolute path inside the
    container raises StartError(permanent=True)."""
    mounts: list[tuple[str, str]] = []
    for mount_point, content in files:
        target = PurePosixPath(mount_point)
        if not target.is_absolute() or ".." in target.parts or len(target.parts) < 2:
            raise StartError(f"files: mountPoint {mount_point!r} must be an absolute file path", permanent=True)
        host = folder.joinpath(*target.parts[1:])
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(content)
        mounts.append((str(host), str(target)))
    return mounts


def ps_containers(cli: PodmanCli, label_filters: list[str]) -> list[dict[str, object]]:
    """`podman ps -a --format json` of the containers carrying these labels."""
    args = ["ps", "-a", "--format", "json"]
    for label in label_filters:
        args += ["--filter", f"label={label}"]
    result = cli.run(args, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"podman ps failed: {result.stderr.strip()}")
    try:
        rows = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"podman ps printed no JSON: {exc}") from None
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def remove_run_containers(cli: PodmanCli, run_id: str, api: PodmanApi | None = None) -> None:
    """Removes whatever a failed create left behind (a created, never started container)."""
    try:
        if api is not None:
            for row in api.ps([f"{LABEL_RUN}={run_id}"]):
                api.remove(str(row.get("Id", "")))
            return
        ids = [str(row["Id"]) for row in ps_containers(cli, [f"{LABEL_RUN}={run_id}"]) if "Id" in row]
        if ids:
            cli.run(["rm", "-f", "-t", "0", *ids], timeout=60)
    except (OSError, RuntimeError, ApiFailure, subprocess.TimeoutExpired) as exc:
        log.warning("cleaning up after failed run %s: %s", run_id, exc)


class DeferredRemovals:
    """Removals of ended containers, put off by DEFERRED_REMOVE_S: a create of
    the same name in the meantime takes the removal over (`--replace`); else
    one thread removes them when due. `close` removes what is still pending."""

    def __init__(self, cli: PodmanCli, service: PodmanService | None = None) -> None:
        self.cli = cli
        self.service = service
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[str, Path | None, float]] = {}  # name → (container id, files, due)
        self._in_flight: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def defer(self, name: str, container_id: str, files: Path | None) -> None:
        with self._cond:
            closed = self._closed
            if not closed:
                self._pending[name] = (container_id, files, time.monotonic() + DEFERRED_REMOVE_S)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._reap, name="podman-removals", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        if closed:
            self.remove_now(container_id, files, name)

    def claim(self, name: str) -> str | None:
        """A create of `name` follows: its pending removal is dropped (the id
        of that container, which is still there, is returned), one under way
        is waited for (bounded)."""
        deadline = time.monotonic() + 60
        with self._cond:
            pending = self._pending.pop(name, None)
            while name in self._in_flight and time.monotonic() < deadline:
                self._cond.wait(1.0)
        return pending[0] if pending is not None else None

    def remove_now(self, container_id: str, files: Path | None, what: str) -> None:
        api = self.service.api() if self.service is not None else None
        try:
            if api is not None:
                api.remove(container_id)
                container_id = ""
        except ApiFailure as exc:
            log.warning("%s: podman API rm: %s (trying the CLI)", what, exc)
        try:
            result = self.cli.run(["rm", "-f", "-t", "0", container_id], timeout=60) if container_id else None
            if result is not None and result.returncode != 0 and "no such container" not in result.stderr.lower():
                log.warning("%s: podman rm: %s", what, result.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s: podman rm failed: %s", what, exc)
        if files is not None:
            shutil.rmtree(files, ignore_errors=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, {}
            self._cond.notify_all()
            thread = self._thread
        for name, (container_id, files, _due) in pending.items():
            self.remove_now(container_id, files, name)
        if thread is not None:
            thread.join(30)

    def _reap(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    due = [name for name, (_, _, at) in self._pending.items() if at <= time.monotonic()]
                    if due:
                        break
                    earliest = min((at for _, _, at in self._pending.values()), default=None)
                    self._cond.wait(None if earliest is None else max(0.0, earliest - time.monotonic()))
                if self._closed:
                    return
                jobs = [(name, self._pending.pop(name)) for name in due]
                self._in_flight.update(name for name, _ in jobs)
            for name, (container_id, files, _due) in jobs:
                self.remove_now(container_id, files, name)
            with self._cond:
                self._in_flight.difference_update(name for name, _ in jobs)
                self._cond.notify_all()


class PodmanConnector:
    """What the podman and podman-kube connectors share: the CLI, the image
    map, the watcher of their runs, stopping in the background, stats."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        cli: PodmanCli | None = None,
        image_map: ImageMap | None = None,
        transport: str | None = None,
    ) -> None:
        """`transport`: "cli" forces the CLI path; None: ANK_PODMAN_API, else
        the API service where one can run (podman/api.py), one per agent,
        shared by both connectors (podman/shared.py)."""
        self.run_dir = Path(run_dir)
        self.cli = cli or PodmanCli()
        self.image_map = image_map_from_env() if image_map is None else image_map
        self.watcher = PodmanWatcher(self.cli, self._read_api)
        self.service = acquire_service(self, self.cli, self.run_dir, transport=transport)
        self._available: tuple[bool, float] | None = None
        self._setup()

    def _setup(self) -> None:
        """What a connector keeps beyond the shared parts (set up last)."""

    @property
    def transport(self) -> str:
        """How this connector reaches podman (agent status): "api" or "cli";
        "" until its first workload decides."""
        return self.service.transport

    def available(self) -> bool:
        """The API service's ping once it is up; else whether the CLI answers
        (remembered for AVAILABLE_TTL_S: the agent asks every status period,
        and a `podman version` each time would be most of its idle CPU)."""
        if self.service.transport == "api":
            api = self.service.api()
            return api is not None and api.ping()
        now = time.monotonic()
        if self._available is None or now - self._available[1] > AVAILABLE_TTL_S:
            self._available = (self.cli.available(), now)
        return self._available[0]

    def close(self) -> None:
        self.watcher.close()
        release_service(self, self.service)

    def _api(self) -> PodmanApi | None:
        return None  # the podman-kube connector: its own API calls (podman_kube/api.py)

    def _read_api(self) -> PodmanApi | None:
        """The API client for stats, logs and events (both connectors); None: the CLI."""
        return self.service.api()

    def _stop_in_background(self, handle: RunHandle, args: list[str], grace_s: float) -> None:
        """`podman stop -t <grace> …` (SIGTERM, SIGKILL after the grace) without
        blocking the agent; the exit arrives through the events."""
        self.watcher.stop_asked(handle.record.get("run", ""))
        seconds = max(0, math.ceil(grace_s))
        argv = ["stop", "-t", str(seconds), *args]
        api = self._api()

        def stop() -> None:
            if api is not None:
                try:
                    for container in args:
                        api.stop(container, seconds)
                    return
                except ApiFailure as exc:
                    log.info("%s: podman API stop: %s (trying the CLI)", handle.workload, exc)
            try:
                result = self.cli.run(argv, timeout=seconds + STOP_TIMEOUT_MARGIN_S)
                if result.returncode != 0:
                    log.info("%s: podman stop: %s", handle.workload, result.stderr.strip())
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error("%s: podman stop failed: %s", handle.workload, exc)

        threading.Thread(target=stop, name=f"podman-stop-{handle.workload}", daemon=True).start()

    def _logs(self, containers: list[str], *, follow: bool, tail: int | None) -> Iterator[str]:
        """`podman logs` of these containers (named per line when several):
        one container's through the API service when it runs, several (their
        lines interleaved in time and named) through the CLI."""
        if not containers:
            return iter(())
        api = self._read_api() if len(containers) == 1 else None
        if api is not None:
            return self._api_logs(api, containers[0], follow=follow, tail=tail)
        return self._cli_logs(containers, follow=follow, tail=tail)

    def _api_logs(self, api: PodmanApi, container: str, *, follow: bool, tail: int | None) -> Iterator[str]:
        """The lines of `podman logs` through the API; where the service
        refuses (e.g. a container it does not know), the CLI's lines, its
        error message included, as without the service."""
        tail = None if tail is None else max(0, tail)
        try:
            body = api.logs(container, follow=follow, tail=tail)
            first = next(body, None)
        except ApiFailure as exc:
            log.info("podman API logs %s: %s (trying the CLI)", container[:12], exc)
            yield from self._cli_logs([container], follow=follow, tail=tail)
            return
        lines = LogLines()
        try:
            if first is not None:
                yield from lines.feed(first)
                for piece in body:
                    yield from lines.feed(piece)
            yield from lines.end()
        finally:
            body.close()

    def _cli_logs(self, containers: list[str], *, follow: bool, tail: int | None) -> Iterator[str]:
        args = ["logs"]
        if follow:
            args.append("--follow")
        if tail is not None:
            args += ["--tail", str(max(0, tail))]
        if len(containers) > 1:
            args.append("--names")
        return self.cli.lines([*args, *containers])

    def _stats(self, ids: list[str]) -> dict[str, tuple[float | None, int | None]]:
        """One `podman stats` for these containers: by name and short id. A
        container that ends meanwhile fails the whole call, so then each is
        asked alone (the ended one is just missing)."""
        if not ids:
            return {}
        found = self._stats_of(ids)
        if found is None and len(ids) > 1:
            return {k: v for one in ids for k, v in (self._stats_of([one]) or {}).items()}
        return found or {}

    def _stats_of(self, ids: list[str]) -> dict[str, tuple[float | None, int | None]] | None:
        api = self._read_api()
        if api is not None:
            try:
                return parse_api_stats(api.stats(ids))
            except ApiFailure as exc:
                log.info("podman API stats %s: %s", " ".join(i[:12] for i in ids), str(exc)[:200])
                return None
        try:
            result = self.cli.run(["stats", "--no-stream", "--format", "json", *ids], timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("podman stats failed: %s", exc)
            return None
        if result.returncode != 0:
            log.info("podman stats %s: %s", " ".join(i[:12] for i in ids), (result.stderr or "").strip()[:200])
            return None
        try:
            return parse_stats(json.loads(result.stdout or "[]"))
        except json.JSONDecodeError as exc:
            log.warning("podman stats: not JSON: %s", exc)
            return None


class PodmanRuntime(PodmanConnector):
    name = "podman"

    def _setup(self) -> None:
        self.removals = DeferredRemovals(self.cli, self.service)
        self._commands: dict[str, tuple[str, ...]] = {}  # container id → its command line (no run label)
        self._ended: dict[str, Ended] = {}  # container name → the ended container of that name
        self._lock = threading.Lock()

    def _api(self) -> PodmanApi | None:
        return self.service.api()

    def create(self, spec: StartSpec, notify: Notify) -> RunHandle:
        config = decode_podman_config(spec.runtime_config)
        base = Path(spec.run_dir) if spec.run_dir else self.run_dir
        run_id = uuid.uuid4().hex[:12]
        name = container_name(spec.workload, spec.instance, spec.agent)
        self.watcher.watch_agent(spec.agent)
        pending = self.removals.claim(name)  # before the files are written: a pending removal may delete them
        with self._lock:
            ended = self._ended.pop(name, None)
        mounts = write_files(files_dir(base, spec.workload, spec.instance), spec.files) if spec.files else []
        argv = run_command(
            config,
            name=name,
            labels=run_labels(spec.agent, spec.workload, spec.instance, run_id),
            mounts=mounts,
            image=map_image(self.image_map, config.image),
            control_interface=spec.control_interface,
        )
        self._retire_earlier_runs(spec, custom_name=names_itself(config.command_options))
        command = _without_run_label(argv, run_id)
        if ended is not None and ended.container_id == pending and ended.command == command:
            handle = self._start_again(spec, name, base, ended, notify)
            if handle is not None:
                return handle
        self.watcher.register(Run(spec.workload, spec.instance, run_id), notify)
        api = self.service.api()
        translated = self._translated(spec.workload, argv) if api is not None else None
        if api is not None and translated is not None:
            container_id = self._run_through_api(api, translated, spec.workload, run_id)
            if container_id:
                self._remember(container_id, command)
                return self._started(spec, config.image, name, run_id, base, container_id)
        try:
            result = self.cli.run(argv, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.watcher.forget(run_id)
            remove_run_containers(self.cli, run_id)
            raise StartError(f"podman run failed: {exc}", permanent=False) from None
        if result.returncode != 0:
            self.watcher.forget(run_id)
            remove_run_containers(self.cli, run_id)
            raise start_error("run", result.returncode, result.stderr)
        container_id = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        self._remember(container_id, command)
        return self._started(spec, config.image, name, run_id, base, container_id)

    def _remember(self, container_id: str, command: tuple[str, ...]) -> None:
        with self._lock:
            self._commands[container_id] = command

    def _start_again(self, spec: StartSpec, name: str, base: Path, ended: Ended, notify: Notify) -> RunHandle | None:
        """A restart of an instance whose ended container is still there, with
        the same command line, that ended by itself (not stopped by the
        agent): that container is started again (podman's own restart does
        the same; its writable layer is kept), saving its removal and a
        create. The run
        is new for the agent (a new state sequence from Pending); it keeps the
        container's `ank.run` label, so the events of the earlier run that are
        still on their way (an exit the exit file told first) are recognised
        as such. None: not possible here (CLI path, ANK_PODMAN_RESTART=recreate,
        container gone): the caller creates a new container."""
        api = self.service.api()
        if api is None or os.environ.get(RESTART_ENV, "").lower() == "recreate":
            return None
        run = Run(spec.workload, spec.instance, ended.run.run_id, early_exits=ended.run.early_exits)
        # replay: an earlier run's `died` that came since its removal settles its early exit
        self.watcher.register(run, notify, replay=True)
        try:
            api.start(ended.container_id)
        except ApiFailure as exc:
            self.watcher.forget(run.run_id)
            log.info("%s: cannot start the ended container again (%s): a new one", spec.workload, exc)
            return None
        self._remember(ended.container_id, ended.command)
        log.info("%s: restart reuses container %s", spec.workload, ended.container_id[:12])
        return self._started(spec, "(again)", name, run.run_id, base, ended.container_id)

    def _translated(self, workload: str, argv: list[str]) -> ApiRun | None:
        try:
            return api_run(argv)
        except Untranslatable as exc:
            log.info("%s: %s is not translated to the podman API: podman run through the CLI", workload, exc)
            return None

    def _run_through_api(self, api: PodmanApi, run: ApiRun, workload: str, run_id: str) -> str:
        """The started container's id; "" where the CLI should run it instead
        (an image that is not here: `podman run` pulls it). Raises StartError."""
        try:
            return api.run(run)
        except ApiFailure as exc:
            remove_run_containers(self.cli, run_id, api)
            if "image not known" in str(exc) or "no such image" in str(exc).lower():
                log.info("%s: image not here: podman run through the CLI (pulls it)", workload)
                return ""
            self.watcher.forget(run_id)
            raise start_error("run", 125, str(exc)) from None

    def _started(self, spec: StartSpec, image: str, name: str, run_id: str, base: Path, container_id: str) -> RunHandle:
        self.watcher.started(run_id, container_id)
        log.info("%s: podman run %s → %s", spec.workload, image, container_id[:12])
        return RunHandle(
            workload=spec.workload,
            instance=spec.instance,
            runtime=self.name,
            id=container_id,
            record={"agent": spec.agent, "name": name, "run": run_id, "files": str(base)},
        )

    def _retire_earlier_runs(self, spec: StartSpec, *, custom_name: bool) -> None:
        """A create of an instance this connector still watches (a restart
        without remove) replaces the earlier container: `--replace` removes it,
        which is no news for the agent. A name of the manifest's own gets no
        `--replace`: the earlier container is removed here."""
        for run in self.watcher.runs():
            if (run.workload, run.instance) != (spec.workload, spec.instance):
                continue
            self.watcher.forget(run.run_id)
            if custom_name and run.phases:
                for container_id in run.phases:
                    self.removals.remove_now(container_id, None, spec.workload)

    def stop(self, handle: RunHandle, grace_s: float) -> None:
        self._stop_in_background(handle, [handle.id], grace_s)

    def remove(self, handle: RunHandle) -> None:
        run_id = handle.record.get("run", "")
        run = self.watcher.get(run_id)
        self.watcher.update(run_id, removing=True)
        self.watcher.forget(run_id)
        name = handle.record.get("name", "")
        files = (
            files_dir(Path(handle.record["files"]), handle.workload, handle.instance)
            if "files" in handle.record
            else None
        )
        ended = run is not None and run.summary in ("exited", "lost")
        with self._lock:
            command = self._commands.pop(handle.id, None)
        if ended and name == container_name(handle.workload, handle.instance, handle.record.get("agent", "")):
            # A restart creates the same name next: it starts this container
            # again, or its `--replace` removes the old container in the same
            # podman call (an `rm` right after a crash waits for podman's
            # cleanup of it: hundreds of ms).
            if run is not None and run.summary == "exited" and not run.stopping and command is not None:
                with self._lock:
                    self._ended[name] = Ended(handle.id, run, command)
            self.removals.defer(name, handle.id, files)
            return
        self.removals.remove_now(handle.id, files, handle.workload)

    def adopt(self, records: list[RunHandle], notify: Notify) -> list[RunHandle]:
        adopted: list[RunHandle] = []
        by_agent: dict[str, list[RunHandle]] = {}
        for record in records:
            if record.runtime == self.name and record.record.get("agent"):
                by_agent.setdefault(record.record["agent"], []).append(record)
        for agent, wanted in by_agent.items():
            self.watcher.watch_agent(agent)
            try:
                api = self.service.api()
                rows = (
                    api.ps([f"ank.agent={agent}"])
                    if api is not None
                    else ps_containers(self.cli, [f"ank.agent={agent}"])
                )
            except (OSError, RuntimeError, ApiFailure, subprocess.TimeoutExpired) as exc:
                log.error("adopt: cannot list the containers of agent %s: %s", agent, exc)
                continue
            for record in wanted:
                row = find_running(rows, record.workload, record.instance)
                if row is None:
                    log.info("adopt: %s (%s) no longer runs", record.workload, record.instance)
                    continue
                labels = _labels(row)
                container_id, run_id = str(row.get("Id", "")), labels.get(LABEL_RUN, "")
                run = Run(record.workload, record.instance, run_id, phases={container_id: "running"}, summary="running")
                self.watcher.register(run, notify, replay=True)
                adopted.append(
                    msgspec.structs.replace(record, id=container_id, record={**record.record, "run": run_id})
                )
                log.info("adopt: %s (%s) runs as %s", record.workload, record.instance, container_id[:12])
        return adopted

    def logs(self, handle: RunHandle, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        return self._logs([handle.id], follow=follow, tail=tail)

    def usage(self, handles: list[RunHandle]) -> dict[str, WorkloadUsage]:
        stats = self._stats([h.id for h in handles if h.id])
        usage: dict[str, WorkloadUsage] = {}
        for handle in handles:
            found = stats.get(handle.id[:12]) or stats.get(handle.record.get("name", ""))
            if found is not None:
                usage[handle.workload] = WorkloadUsage(cpu_percent=found[0], memory_bytes=found[1])
        return usage

    def close(self) -> None:
        self.removals.close()
        super().close()


def _without_run_label(argv: list[str], run_id: str) -> tuple[str, ...]:
    """The command line with its `ank.run` label blanked (fresh per create)."""
    return tuple(f"{LABEL_RUN}=" if arg == f"{LABEL_RUN}={run_id}" else arg for arg in argv)


def _labels(row: dict[str, object]) -> dict[str, str]:
    labels = row.get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def find_running(rows: list[dict[str, object]], workload: str, instance: str) -> dict[str, object] | None:
    """The running container of this workload instance in `podman ps --format json` rows."""
    for row in rows:
        labels = _labels(row)
        ours = labels.get(LABEL_WORKLOAD) == workload and labels.get(LABEL_INSTANCE) == instance
        if ours and str(row.get("State", "")).lower() == "running":
            return row
    return None


def make_runtime(run_dir: str | Path) -> Runtime:
    """The connector the agent loads (mypy checks it against the Protocol)."""
    return PodmanRuntime(run_dir)
