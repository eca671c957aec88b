"""The Control Interface's FIFOs and bus calls, one `Channel` per workload
instance that has controlInterfaceAccess.

`<run dir>/control_interface/<workload>.<instance>/` holds two FIFOs, as in
Ankaios: `output` (the workload writes requests, the agent reads) and
`input` (the agent writes responses). The runtimes make the folder visible
at /run/ankaios/control_interface in the workload. Every request is checked
against the workload's own rules (core.request_allowed) before anything
reaches the bus; the bus calls the agent then makes are those of the CLI
(`ank/cmd/state`, `ank/cmd/apply` with update masks, `ank/logs/...`) and a
subscription to `ank/state/**` for events.

A connection is one writer session on `output`: it starts with a Hello, ends
when the writer closes (the program exited or reconnects). Its log and event
subscriptions end with it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ank_common.jobs import JobQueue
from ank_common.manifest import instance_id, render_manifest
from schemas import keys
from schemas.manifest import ControlInterfaceAccess
from schemas.messages import ApplyRequest, ApplyResult, CompleteState, WorkloadState
from services.bus import paging
from services.bus.log_follower import ask_logs, follow_logs
from services.bus.protocol import BusLike

if TYPE_CHECKING:
    from services.agent.control_interface import core
    from services.agent.control_interface.core import ank_base, control_api

log = logging.getLogger("ank.agent.control_interface")

TARGET = "/run/ankaios/control_interface"  # where the SDKs look
WRITE_TIMEOUT_S = 5.0  # a workload that does not read its input for this long loses the message
QUERY_TIMEOUT_S = 5.0


def _load_core() -> None:
    """The protocol's modules (protobuf and the SDK's messages: ~10 MB), loaded
    with the first Control Interface: an agent whose workloads have none
    never loads them."""
    global core, ank_base, control_api
    from services.agent.control_interface import core
    from services.agent.control_interface.core import ank_base, control_api


class Channel:
    """The Control Interface of one workload instance."""

    def __init__(
        self,
        bus: BusLike,
        folder: Path,
        workload: str,
        access: ControlInterfaceAccess,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        _load_core()
        self.bus = bus
        self.on_applied = on_applied  # an update went through: event subscriptions look again
        self._watchers: set[threading.Event] = set()
        self.write_timeout_s = write_timeout_s
        self.folder = folder
        self.workload = workload
        self.access = access
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._write_lock = threading.Lock()
        self._streams: dict[str, threading.Event] = {}  # request id → its stop flag (logs, events)
        self._streams_lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("input", "output"):
            path = folder / name
            if path.exists() and not stat.S_ISFIFO(path.stat().st_mode):
                path.unlink()
            if not path.exists():
                os.mkfifo(path, 0o600)
        # read-write: never blocks, never fails for lack of a reader; a workload opening it for reading finds it ready
        self._input = os.open(folder / "input", os.O_RDWR | os.O_NONBLOCK)
        self._reader = threading.Thread(target=self._read_loop, name=f"ci-{workload}", daemon=True)
        self._jobs = JobQueue(f"ci-{workload}-req", f"{workload}: control interface request failed", log)
        self._reader.start()

    def close(self, remove: bool = True) -> None:
        """Stops serving at once; the threads end in the background (a
        request may be waiting on the bus), then the descriptors close."""
        self._closing.set()
        os.write(self._wake_w, b"x")
        self._jobs.close()
        self._stop_streams()
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)

        def finish() -> None:
            self._reader.join(30)
            self._jobs.join(30)
            with self._write_lock:
                for fd in (self._input, self._wake_r, self._wake_w):
                    try:
                        os.close(fd)
                    except OSError:
                        pass

        threading.Thread(target=finish, name=f"ci-{self.workload}-close", daemon=True).start()

    # -- reading (reader thread) ------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._closing.is_set():
            try:
                fd = os.open(self.folder / "output", os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                if not self._closing.is_set():
                    log.warning("%s: cannot open its control interface output: %s", self.workload, exc)
                return
            try:
                self._connection(fd)
            except Exception:  # never leave the workload without its interface
                log.exception("%s: control interface connection failed", self.workload)
                self._closing.wait(1.0)
            finally:
                os.close(fd)
                self._stop_streams()

    def _connection(self, fd: int) -> None:
        """One writer session: until the writer closes (EOF) or we close."""
        decoder = core.Decoder()
        greeted = dead = False  # dead: closed by us; only a new Hello opens it again
        broken = False  # the byte stream lost its framing: ignored until the writer closes
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closing.is_set():
            events = dict(poller.poll())
            if self._wake_r in events:
                return
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                if greeted or dead:
                    log.info("%s: control interface connection ended", self.workload)
                return  # the writer closed (or none yet: poll said hang-up): reopen and wait
            if broken:
                continue
            try:
                bodies = decoder.feed(data)
            except core.FrameError as exc:
                log.warning("%s: control interface: %s: connection closed", self.workload, exc)
                self.send(core.closed(core.DECODE_ERROR))
                dead = broken = True
                continue
            for body in bodies:
                message = core.decode_to_ankaios(body)
                kind = message.WhichOneof("ToAnkaiosEnum") if message is not None else None
                if dead and kind != "hello":
                    continue  # the rest of a closed connection is ignored
                if message is None or kind is None:
                    reason = core.DECODE_ERROR if message is None else core.HELLO_MISSING
                    if not greeted:
                        log.warning("%s: control interface: %s: connection closed", self.workload, reason)
                        self.send(core.closed(reason))
                        greeted, dead = False, True
                        continue
                    log.warning("%s: control interface: could not decode a message", self.workload)
                    continue
                if kind == "hello":
                    problem = core.version_problem(message.hello.protocolVersion)
                    if problem is not None:
                        log.warning("%s: control interface: %s: connection closed", self.workload, problem)
                        self.send(core.closed(problem))
                        greeted, dead = False, True
                        continue
                    if greeted:
                        log.warning("%s: control interface: yet another Hello", self.workload)
                    greeted, dead = True, False  # a program that reconnects (a FIFO shows no new writer)
                    self._drain_input()
                    self.send(core.accepted())
                    continue
                if not greeted:
                    log.warning("%s: control interface: %s: connection closed", self.workload, core.HELLO_MISSING)
                    self.send(core.closed(core.HELLO_MISSING))
                    dead = True
                    continue
                self._jobs.submit(_job(self._serve, message.request))

    # -- writing (any thread) ---------------------------------------------------------
    def _drain_input(self) -> None:
        """Drops what an earlier program left unread in `input` (responses to
        a connection that is gone). Best effort: a program that reads before
        its Hello is answered may still see such leftovers (the SDK ignores
        anything but the answer to its Hello until then)."""
        with self._write_lock:
            try:
                while os.read(self._input, 65536):
                    pass
            except OSError:
                pass

    def send(self, message: control_api.FromAnkaios) -> bool:
        data = core.frame(message)
        deadline = time.monotonic() + self.write_timeout_s
        with self._write_lock:
            while data and not self._closing.is_set():
                try:
                    written = os.write(self._input, data)
                    data = data[written:]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closing.is_set():
                        log.warning("%s: does not read its control interface input: a message is lost", self.workload)
                        return False
                    select.select([], [self._input], [], min(left, 0.5))
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        log.warning("%s: control interface write: %s", self.workload, exc)
                    return False
        return True

    # -- requests (worker thread) ------------------------------------------------------
    def _serve(self, request: ank_base.Request) -> None:
        rid = request.requestId
        kind = request.WhichOneof("RequestContent")
        if not core.request_allowed(self.access, request):
            log.info("%s: control interface: %s %s denied by its rules", self.workload, kind, rid)
            self.send(core.error(rid, core.ACCESS_DENIED))
            return
        try:
            if kind == "completeStateRequest":
                self._complete_state(rid, request.completeStateRequest)
            elif kind == "updateStateRequest":
                self._update_state(rid, request.updateStateRequest)
            elif kind == "logsRequest":
                self._logs(rid, request.logsRequest)
            elif kind == "logsCancelRequest":
                self._cancel(rid)
                self.send(core.response(rid, logsCancelAccepted=ank_base.LogsCancelAccepted()))
            elif kind == "eventsCancelRequest":
                self._cancel(rid)
                self.send(core.response(rid, eventsCancelAccepted=ank_base.EventsCancelAccepted()))
            else:
                self.send(core.error(rid, "unknown request"))
        except Exception as exc:
            log.warning("%s: control interface %s failed: %s", self.workload, kind, exc)
            self.send(core.error(rid, str(exc)))

    def _state(self) -> CompleteState:
        replies = paging.get_complete_state(self.bus, timeout=QUERY_TIMEOUT_S)
        if not replies:
            raise RuntimeError("no planner answered on ank/cmd/state")
        return replies[0]

    def _complete_state(self, rid: str, request: ank_base.CompleteStateRequest) -> None:
        masks = list(request.fieldMask)
        if not request.subscribeForEvents:
            tree = core.filter_tree(core.state_tree(self._state()), masks)
            self.send(
                core.response(
                    rid, completeStateResponse=ank_base.CompleteStateResponse(completeState=core.tree_to_proto(tree))
                )
            )
            return
        stop = self._register(rid)
        changed = threading.Event()

        def on_state(_key: str, _ws: WorkloadState) -> None:
            changed.set()

        subscriber = self.bus.subscribe(keys.STATES, WorkloadState, on_state)
        self._watchers.add(changed)
        try:
            last = core.state_tree(self._state())
        except Exception:
            subscriber.undeclare()
            raise
        initial = core.tree_to_proto(core.filter_tree(last, masks))
        self.send(core.response(rid, completeStateResponse=ank_base.CompleteStateResponse(completeState=initial)))

        def stream() -> None:
            nonlocal last
            try:
                while not stop.is_set() and not self._closing.is_set():
                    if not changed.wait(1.0):
                        continue
                    changed.clear()
                    if stop.wait(0.05):  # coalesce a burst of transitions into one event
                        break
                    try:
                        current = core.state_tree(self._state())
                    except Exception as exc:
                        log.debug("%s: event state query: %s", self.workload, exc)
                        continue
                    added, updated, removed = core.altered_fields(last, current, masks)
                    last = current
                    if not (added or updated or removed):
                        continue
                    altered = ank_base.AlteredFields(addedFields=added, updatedFields=updated, removedFields=removed)
                    event = ank_base.CompleteStateResponse(
                        completeState=core.tree_to_proto(core.filter_tree(current, masks)), alteredFields=altered
                    )
                    self.send(core.response(rid, completeStateResponse=event))
            finally:
                self._watchers.discard(changed)
                try:
                    subscriber.undeclare()
                except Exception:
                    pass

        threading.Thread(target=stream, name=f"ci-{self.workload}-events", daemon=True).start()

    def _update_state(self, rid: str, request: ank_base.UpdateStateRequest) -> None:
        document = core.desired_document(request.newState)
        apply = ApplyRequest(manifest=json.dumps(document), masks=list(request.updateMask))
        replies = self.bus.get_decoded(
            keys.CMD_APPLY, ApplyResult, payload=self.bus.encode(apply), timeout=QUERY_TIMEOUT_S
        )
        if not replies:
            self.send(core.error(rid, "no planner answered on ank/cmd/apply"))
            return
        result = replies[0]
        if not result.ok:
            self.send(core.error(rid, "; ".join(str(e) for e in result.errors) or "rejected"))
            return
        if self.on_applied is not None:
            self.on_applied()
        try:
            rendered, _ = render_manifest(self._state().desired)  # the instance ids the planner hands out
            desired = rendered.workloads if rendered is not None else {}
        except Exception:
            desired = {}
        instances = {name: instance_id(w) for name, w in desired.items()}
        added = core.instance_names([*result.added, *result.updated], desired, instances)
        deleted = [f"{name}.-." for name in [*result.deleted, *result.updated]]
        self.send(
            core.response(
                rid, UpdateStateSuccess=ank_base.UpdateStateSuccess(addedWorkloads=added, deletedWorkloads=deleted)
            )
        )

    def _logs(self, rid: str, request: ank_base.LogsRequest) -> None:
        state = self._state()
        agents = {ws.workload: ws.agent for ws in core.latest(state.workload_states) if ws.agent}
        wanted = [(n.workloadName, n.agentName or agents.get(n.workloadName, ""), n.id) for n in request.workloadNames]
        names = [ank_base.WorkloadInstanceName(workloadName=w, agentName=a, id=i) for w, a, i in wanted if a]
        stop = self._register(rid)
        self.send(core.response(rid, logsRequestAccepted=ank_base.LogsRequestAccepted(workloadNames=names)))
        follow = request.follow if request.HasField("follow") else False
        tail = request.tail if request.HasField("tail") else -1
        for name in names:
            threading.Thread(
                target=self._stream_logs,
                args=(rid, name, follow, tail, stop),
                name=f"ci-{self.workload}-logs",
                daemon=True,
            ).start()

    def _stream_logs(
        self, rid: str, name: ank_base.WorkloadInstanceName, follow: bool, tail: int, stop: threading.Event
    ) -> None:
        """One workload's log as LogEntriesResponses: what it holds, then
        (following) what the agent pushes (services.bus.log_follower, as
        `ank logs -f`); LogsStopResponse when its log ends: not following,
        or the workload is gone (its agent no longer answers)."""

        def send_lines(text: str) -> None:
            lines = [line for line in text.splitlines() if not line.startswith("--- ank: ")]
            if lines:
                entries = [ank_base.LogEntry(workloadName=name, message=line) for line in lines]
                self.send(core.response(rid, logEntriesResponse=ank_base.LogEntriesResponse(logEntries=entries)))

        agent, workload = name.agentName, name.workloadName
        try:
            if follow:
                follow_logs(
                    self.bus,
                    agent,
                    workload,
                    send_lines,
                    stop,
                    tail=tail if tail >= 0 else None,
                    timeout=QUERY_TIMEOUT_S,
                )
            else:
                reply = ask_logs(self.bus, agent, workload, f"tail={tail}" if tail >= 0 else "", QUERY_TIMEOUT_S)
                if reply is not None:
                    send_lines(reply.text)
        except Exception as exc:  # the bus is closing, or refuses the key: the log ends
            log.debug("%s: logs of %s: %s", self.workload, workload, exc)
        if not stop.is_set():
            self.send(core.response(rid, logsStopResponse=ank_base.LogsStopResponse(workloadName=name)))

    def poke(self) -> None:
        """The desired state may have changed: event subscriptions look again
        (a change of configs alone publishes no workload state)."""
        for changed in list(self._watchers):
            changed.set()

    def _register(self, rid: str) -> threading.Event:
        stop = threading.Event()
        with self._streams_lock:
            previous = self._streams.pop(rid, None)
            self._streams[rid] = stop
        if self._closing.is_set():  # closed meanwhile: _stop_streams has run
            stop.set()
        if previous is not None:
            previous.set()
        return stop

    def _cancel(self, rid: str) -> None:
        with self._streams_lock:
            stop = self._streams.pop(rid, None)
        if stop is not None:
            stop.set()

    def _stop_streams(self) -> None:
        with self._streams_lock:
            streams, self._streams = list(self._streams.values()), {}
        for stop in streams:
            stop.set()


def _job(serve: Callable[[ank_base.Request], None], request: ank_base.Request) -> Callable[[], None]:
    return lambda: serve(request)


class ControlInterfaces:
    """The agent's channels, by workload; one instance per workload at a time."""

    def __init__(self, bus: BusLike, run_dir: Path) -> None:
        self.bus = bus
        self.base = run_dir / "control_interface"
        self._channels: dict[str, tuple[str, Channel]] = {}
        self._lock = threading.Lock()

    def folder(self, workload: str, instance: str) -> Path:
        return self.base / f"{workload}.{instance}"

    def provide(self, workload: str, instance: str, access: ControlInterfaceAccess | None) -> str:
        """The host folder of the instance's FIFOs ("" when it has no access:
        then it has none, and an earlier instance's are removed)."""
        if access is not None:
            _load_core()
        wanted = access is not None and core.has_access(access)
        with self._lock:
            current = self._channels.get(workload)
            if current is not None and current[0] == instance and wanted:
                return str(current[1].folder)
            if current is not None:
                del self._channels[workload]
        if current is not None:
            current[1].close()
        if not wanted:
            return ""
        assert access is not None
        channel = Channel(self.bus, self.folder(workload, instance), workload, access, on_applied=self.poke_all)
        with self._lock:
            self._channels[workload] = (instance, channel)
        return str(channel.folder)

    def poke_all(self) -> None:
        with self._lock:
            channels = [channel for _, channel in self._channels.values()]
        for channel in channels:
            channel.poke()

    def withdraw(self, workload: str, instance: str) -> None:
        with self._lock:
            current = self._channels.get(workload)
            if current is None or current[0] != instance:
                return
            del self._channels[workload]
        current[1].close()

    def close(self) -> None:
        """The agent exits: stop serving, keep the FIFOs (an adopted workload keeps its paths)."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for _, channel in channels:
            channel.close(remove=False)
