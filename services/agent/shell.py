"""`ank-agent`: the shell around services.agent.core.

It subscribes to its plan and to its workloads' health verdicts, feeds
every event to the core on one event-loop thread, and carries out the
actions the core returns: runtime create/stop/remove, publishing
WorkloadStates, timers. Runtime calls may block (a `podman run` takes a
second), so each runtime's calls run in order on that runtime's own worker
thread, and the status is gathered on a thread of its own: the loop never
waits for a runtime. It persists one record per created instance in
`<run dir>/records/` so that after its own restart (kill -9 included) it
adopts what still runs instead of starting it again. On SIGTERM/SIGINT it
stops watching and leaves the workloads running, as an Ankaios agent does:
the next agent adopts them (`--stop-workloads-on-exit` stops them instead,
for embedded use).
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import platform
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import psutil
import zenoh

from ank_common.clock import SYSTEM_CLOCK, Clock
from ank_common.jobs import JobQueue
from ank_common.lifecycle import Busy, DirLock, default_run_dir
from ank_common.logsetup import setup_logging
from ank_common.names import agent_name_error
from schemas import keys, prepare
from schemas.manifest import FileItem
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    EnergyReport,
    HealthReport,
    LogsReply,
    PlannedWorkload,
    WorkloadState,
    WorkloadUsage,
)
from services.agent import ankaios_options, core
from services.agent.control_interface.shell import ControlInterfaces
from services.agent.energy import SimulatedBattery, read_power_supply
from services.agent.logs import LogsServer
from services.agent.runtimes import load_runtimes
from services.agent.runtimes.base import Notify, RunHandle, Runtime, RuntimeEvent, StartError, StartSpec
from services.agent.usage import UsageSampler
from services.bus import BusConfigError, paging
from services.bus.loop import EventLoop
from services.bus.protocol import BusLike

PLAN_QUERY_TIMEOUT_S = 5.0
PLAN_PARTS_WAIT_S = 5.0  # how long an incomplete plan waits for its other parts before the whole is asked
STOP_WAIT_MARGIN_S = 5.0  # at shutdown, the exits are awaited for the stop grace and this much more
log = logging.getLogger("ank.agent")


class InstanceRecord(msgspec.Struct, frozen=True):
    """What the agent keeps on disk per created instance, for adoption."""

    handle: RunHandle
    planned: PlannedWorkload | None = None
    restart_count: int = 0
    last_restart_ms: int | None = None
    final: WorkloadState | None = None  # set once it finished for good (not to be run again)


prepare(InstanceRecord)  # decoded on runtime worker threads too


class AgentOptions(msgspec.Struct, frozen=True):
    name: str
    run_dir: str
    tags: dict[str, str] = {}
    backoff: core.Backoff = core.Backoff()
    stop_grace_s: float = 10.0
    status_period_s: float = 2.0
    battery: SimulatedBattery | None = None
    stop_workloads_on_exit: bool = False  # embedded use (`ank up`, tests): leave nothing behind


class RuntimeWorker:
    """One runtime's calls, carried out in order on one thread. It owns the
    handles of that runtime's instances and their records on disk."""

    def __init__(self, runtime: Runtime, records_dir: Path, report: Callable[[core.AgentEvent], None]) -> None:
        self.runtime = runtime
        self.records_dir = records_dir
        self.report = report  # feeds an event back to the core (posts it onto the loop)
        self.handles: dict[str, RunHandle] = {}
        self._jobs = JobQueue(f"runtime-{runtime.name}", f"runtime {runtime.name}: job failed", log)

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.submit(job)

    def close(self, timeout: float = 5.0) -> None:
        self._jobs.close()
        self._jobs.join(timeout)

    # -- jobs (worker thread) ----------------------------------------------------------
    def create(self, action: core.Create, spec: StartSpec, notify: Notify) -> None:
        planned = action.planned
        # The runtime's events wait until the record is on disk: once the
        # workload is reported Running, an agent killed at once still adopts it.
        held: list[RuntimeEvent] | None = []
        lock = threading.Lock()

        def notify_after_record(event: RuntimeEvent) -> None:
            with lock:
                if held is not None:
                    held.append(event)
                    return
            notify(event)

        try:
            if not self.runtime.available():
                raise StartError(f"runtime {self.runtime.name!r} is not available on this node", permanent=True)
            handle = self.runtime.create(spec, notify_after_record)
        except StartError as exc:
            self.report(core.CreateFailed(planned.name, planned.instance, str(exc), exc.permanent))
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.report(core.CreateFailed(planned.name, planned.instance, reason, False))
            return
        self.handles[planned.name] = handle
        record = InstanceRecord(handle, planned, action.restart_count, action.last_restart_ms)
        try:
            _write_atomically(self.records_dir / f"{planned.name}.json", msgspec.json.encode(record))
        except OSError as exc:
            self.report(core.OperationFailed(planned.name, planned.instance, "record", str(exc)))
        with lock:
            events, held = held or [], None
        for event in events:
            notify(event)

    def mark_final(self, action: core.RecordFinal) -> None:
        """Adds the final state (the core's RecordFinal) to the instance's record."""
        state = action.state
        path = self.records_dir / f"{state.workload}.json"
        if not path.exists():
            return  # removed meanwhile: nothing to run again anyway
        try:
            record = msgspec.json.decode(path.read_bytes(), type=InstanceRecord)
            if record.handle.instance != state.instance:
                return
            record = msgspec.structs.replace(record, final=state)
            _write_atomically(path, msgspec.json.encode(record))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.report(core.OperationFailed(state.workload, state.instance, "record-final", str(exc)))

    def stop(self, action: core.Stop) -> None:
        handle = self.handles.get(action.workload)
        if handle is None or handle.instance != action.instance:
            self.report(core.Exited(action.workload, action.instance, None, "no instance to stop"))
            return
        try:
            self.runtime.stop(handle, action.grace_s)
        except Exception as exc:
            self.report(core.OperationFailed(action.workload, action.instance, "stop", f"{type(exc).__name__}: {exc}"))

    def remove(self, action: core.Remove) -> None:
        handle = self.handles.get(action.workload)
        if handle is None or handle.instance != action.instance:
            return
        del self.handles[action.workload]
        (self.records_dir / f"{action.workload}.json").unlink(missing_ok=True)
        try:
            self.runtime.remove(handle)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.report(core.OperationFailed(action.workload, action.instance, "remove", reason))


class AgentShell:
    def __init__(
        self,
        options: AgentOptions,
        bus: BusLike,
        loop: EventLoop,
        runtimes: dict[str, Runtime],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.options = options
        self.name = options.name
        self.bus = bus
        self.loop = loop
        self.runtimes = runtimes
        self.clock = clock
        self.run_dir = Path(options.run_dir)
        self.records_dir = self.run_dir / "records"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.state = core.AgentState(agent=self.name, backoff=options.backoff, stop_grace_s=options.stop_grace_s)
        self.workers = {
            name: RuntimeWorker(runtime, self.records_dir, self._report) for name, runtime in runtimes.items()
        }
        self._closing = threading.Event()
        self.boot = uuid.uuid4().hex[:16]  # this process, in every status (duplicate names show)
        self._usage = UsageSampler()  # the status thread's: which workloads each status measures
        self._found: dict[str, RunHandle] = {}  # instances found at start, until the core reclaims them
        # the latest published state per workload, for the late-joiner queryable (read on Zenoh threads)
        self._published: dict[str, WorkloadState] = {}
        self._published_lock = threading.Lock()
        self.control_interfaces = ControlInterfaces(bus, self.run_dir)  # Ankaios's Control Interface FIFOs
        self._plan_parts = paging.PlanAssembler()  # loop thread only
        self._plan_entries: dict[str, PlannedWorkload] = {}  # the last applied plan's entries (loop thread)
        self._plan_query = threading.Lock()  # one whole-plan query at a time
        self._parts_timers: set[tuple[int, int]] = set()  # plans whose missing parts are timed (loop thread)
        self.logs: LogsServer | None = None  # `ank logs`: its own thread (started by start)

    # -- start-up ------------------------------------------------------------------
    def start(self) -> None:
        """Adopts what still runs, then listens; call before loop.run()."""
        self._adopt()
        self.bus.subscribe(keys.agent_health(self.name), HealthReport, self._on_health)
        # Plans are decoded without the bus's per-sender sequence check: the
        # core orders them by epoch and generation (a spoofed sequence number
        # must not mute the real planner), and parts may interleave with a
        # query's reply.
        self.bus.subscribe_raw(keys.plan_key(self.name), self._on_plan)
        self.bus.queryable(keys.agent_states(self.name), self._answer_state_query)
        self.logs = LogsServer(self.name, self._log_lines, self._push_logs, self.clock.monotonic)
        self.bus.queryable(keys.logs_key(self.name, "*"), self._answer_logs_query, defer=self.logs.defer)
        # the latest status at once, for `ank get state`/`get agents` (the period is seconds)
        self.bus.queryable(keys.agent_status_key(self.name), self._answer_status_query)
        # the token last: a planner that sees it re-sends the plan, which the subscriber above receives
        self.bus.liveliness_token(keys.agent_token_key(self.name))
        threading.Thread(target=self._query_plan, name="plan-query", daemon=True).start()
        threading.Thread(target=self._status_thread, name="status", daemon=True).start()
        log.info("agent %s up: runtimes %s, run dir %s", self.name, sorted(self.runtimes), self.run_dir)

    def _adopt(self) -> None:
        """Reads the instance records and asks each runtime which instances
        still run; the core decides what becomes of each (RecordsFound)."""
        found: list[core.FoundRecord] = []
        records: dict[str, InstanceRecord] = {}
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                record = msgspec.json.decode(path.read_bytes(), type=InstanceRecord)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                found.append(core.FoundRecord(path.stem, "", "", "unreadable", reason=str(exc)))
                continue
            records[record.handle.workload] = record
        by_runtime: dict[str, list[RunHandle]] = {}
        for record in records.values():
            by_runtime.setdefault(record.handle.runtime, []).append(record.handle)
        for runtime_name, handles in by_runtime.items():
            worker = self.workers.get(runtime_name)
            reason = ""
            try:
                alive = worker.runtime.adopt(handles, self._on_runtime_event) if worker is not None else []
            except Exception as exc:
                alive, reason = [], f"{type(exc).__name__}: {exc}"
            alive_by_name = {h.workload: h for h in alive}
            for handle in handles:
                record = records[handle.workload]
                if worker is None:
                    how: core.Found = "no-runtime"
                elif reason:
                    how = "unchecked"
                else:
                    how = "running" if handle.workload in alive_by_name else "ended"
                handle = alive_by_name.get(handle.workload, handle)
                self._found[handle.workload] = handle
                final = record.final
                found.append(
                    core.FoundRecord(
                        workload=handle.workload,
                        instance=handle.instance,
                        runtime=runtime_name,
                        found=how,
                        planned=record.planned,
                        restart_count=record.restart_count,
                        last_restart_ms=record.last_restart_ms,
                        final=final.execution_state if final else None,
                        exit_code=final.exit_code if final else None,
                        reason=reason,
                    )
                )
        if found:
            self.feed(core.RecordsFound(found))
        self._found.clear()  # what the core did not reclaim is not this agent's

    def _query_plan(self) -> None:
        try:
            for key, payload in self.bus.get(keys.plan_key(self.name), timeout=PLAN_QUERY_TIMEOUT_S):
                plan = paging.decode_part(key, payload, AgentPlan, self.bus.drop)
                if plan is not None:
                    self.loop.post(self._plan_part, plan)
        except Exception as exc:
            log.warning("querying ank/plan/%s: %s", self.name, exc)

    # -- events in (any thread) -------------------------------------------------------
    def _on_plan(self, key: str, payload: bytes) -> None:
        plan = paging.decode_part(key, payload, AgentPlan, self.bus.drop)
        if plan is not None:
            self.loop.post(self._plan_part, plan)

    def _plan_part(self, plan: AgentPlan) -> None:
        """A plan or a part of one (loop thread): fed to the core once whole."""
        if plan.agent != self.name:
            self.feed(core.PlanReceived(plan))  # refused (and noted) by the core
            return
        whole = self._plan_parts.add(plan)
        if whole is None:
            key = (plan.epoch, plan.generation)
            if self._plan_parts.waiting(*key) and key not in self._parts_timers:
                self._parts_timers.add(key)
                self.loop.call_later(PLAN_PARTS_WAIT_S, self._parts_overdue, key)
            return
        resolved = paging.resolve_plan(whole, self._known_entry)
        if resolved is None:
            log.info("plan %d names workloads this agent does not hold: asking for the whole plan", whole.generation)
            self._ask_whole_plan()
            return
        self.feed(core.PlanReceived(resolved))
        if (self.state.epoch, self.state.generation) == (resolved.epoch, resolved.generation):
            self._plan_entries = {w.name: w for w in resolved.workloads}

    def _parts_overdue(self, key: tuple[int, int]) -> None:
        """A plan's parts did not all arrive in time (one lost): ask for the
        whole plan rather than wait for the next one."""
        self._parts_timers.discard(key)
        if self._plan_parts.waiting(*key):
            log.warning("plan %d: parts missing after %g s: asking for the whole plan", key[1], PLAN_PARTS_WAIT_S)
            self._ask_whole_plan()

    def _known_entry(self, name: str, instance: str) -> PlannedWorkload | None:
        """A plan entry this agent holds (from its last plan, or a slot)."""
        entry = self._plan_entries.get(name)
        if entry is None or entry.instance != instance:
            slot = self.state.slots.get(name)
            entry = slot.planned if slot is not None else None
        return entry if entry is not None and entry.instance == instance else None

    def _ask_whole_plan(self) -> None:
        if self._plan_query.acquire(blocking=False):

            def query() -> None:
                try:
                    self._query_plan()
                finally:
                    self._plan_query.release()

            threading.Thread(target=query, name="plan-query", daemon=True).start()

    def _on_health(self, key: str, report: HealthReport) -> None:
        if key != keys.health_key(report.agent, report.workload):
            self.bus.drop(key, f"health report names {report.agent}/{report.workload}, not its key")
            return
        self.loop.post(self.feed, core.HealthChanged(report))

    def _report(self, event: core.AgentEvent) -> None:
        self.loop.post(self.feed, event)

    def _on_runtime_event(self, event: RuntimeEvent) -> None:
        translated: core.AgentEvent
        if event.kind == "running":
            translated = core.Started(event.workload, event.instance)
        elif event.kind in ("exited", "lost"):
            info = f"{core.LOST}{event.info or 'vanished'}" if event.kind == "lost" else event.info
            translated = core.Exited(event.workload, event.instance, event.exit_code, info)
        else:  # "unhealthy" from the runtime's own health check
            report = HealthReport(workload=event.workload, agent=self.name, status="unhealthy", last_error=event.info)
            translated = core.HealthChanged(report)
        self.loop.post_or_call(self.feed, translated)  # the exit → state path: no thread hand-over when idle

    # -- the core and its actions (loop thread) ----------------------------------------
    def now(self) -> core.Now:
        return core.Now(self.clock.monotonic(), self.clock.wall_ms())

    def feed(self, event: core.AgentEvent) -> None:
        result = core.step(self.state, event, self.now())
        self.state = result.state
        for action in result.actions:
            if isinstance(action, core.Note):
                continue
            try:
                self._execute(action)
            except Exception:
                log.exception("carrying out %r", action)
        for action in result.actions:  # logged after acting: a log line never delays a state
            if isinstance(action, core.Note):
                log.info("%s", action.text)

    def _execute(self, action: core.Action) -> None:
        if isinstance(action, core.Publish):
            self._publish(action.state)
        elif isinstance(action, core.RecordFinal):
            recorder = self.workers.get(action.runtime)
            if recorder is not None:
                recorder.submit(lambda: recorder.mark_final(action))
        elif isinstance(action, core.Create):
            self._create(action)
        elif isinstance(action, core.Stop):
            self._stop(action)
        elif isinstance(action, core.Remove):
            self._remove(action)
        elif isinstance(action, core.Alert):
            subject = action.subject or keys.plan_key(self.name)
            self.bus.event(action.kind, action.message, subject=subject, severity="warning")
        elif isinstance(action, core.Reclaim):
            worker = self.workers.get(action.runtime)
            handle = self._found.get(action.workload)
            if worker is not None and handle is not None and handle.instance == action.instance:
                worker.handles[action.workload] = handle
        elif isinstance(action, core.ServeInterface):
            try:
                self.control_interfaces.provide(action.workload, action.instance, action.access)
            except OSError as exc:
                log.warning("%s: cannot serve its control interface again: %s", action.workload, exc)
        elif isinstance(action, core.ForgetRecord):
            (self.records_dir / f"{action.workload}.json").unlink(missing_ok=True)
        elif isinstance(action, core.WakeAt):
            delay = max(0.0, action.at_mono - self.clock.monotonic())
            self.loop.call_later(delay, self.feed, core.Wake(action.workload, action.token))

    def _publish(self, state: WorkloadState) -> None:
        key = keys.state_key(self.name, state.workload)
        with self._published_lock:
            if state.execution_state.state == "Removed":
                self._published.pop(state.workload, None)
            else:
                self._published[state.workload] = state
        try:
            self.bus.put(key, state)
        except Exception as exc:
            log.warning("could not publish %s: %s", key, exc)
        log.info("%s: %s %s", state.workload, state.execution_state, state.execution_state.additional_info)

    def _create(self, action: core.Create) -> None:
        planned = action.planned
        worker = self.workers.get(planned.workload.runtime)
        if worker is None:
            reason = f"runtime {planned.workload.runtime!r} is not available on agent {self.name}"
            self._report(core.CreateFailed(planned.name, planned.instance, reason, True))
            return
        try:
            files = [_file_content(item) for item in planned.workload.files]
        except ValueError as exc:
            self._report(core.CreateFailed(planned.name, planned.instance, f"bad file content: {exc}", True))
            return
        try:
            access = planned.workload.control_interface_access
            control_interface = self.control_interfaces.provide(planned.name, planned.instance, access)
        except OSError as exc:
            reason = f"cannot create its control interface: {exc}"
            self._report(core.CreateFailed(planned.name, planned.instance, reason, False))
            return
        spec = StartSpec(
            agent=self.name,
            workload=planned.name,
            instance=planned.instance,
            runtime_config=planned.workload.runtime_config,
            files=files,
            run_dir=str(self.run_dir),
            control_interface=control_interface,
        )
        worker.submit(lambda: worker.create(action, spec, self._on_runtime_event))
        if action.restart:
            self.bus.event(
                "restart", f"{self.name} restarts {planned.name} (restart {action.restart_count})", subject=planned.name
            )

    def _stop(self, action: core.Stop) -> None:
        worker = self.workers.get(action.runtime)
        if worker is None:
            self._report(core.Exited(action.workload, action.instance, None, "no instance to stop"))
            return
        worker.submit(lambda: worker.stop(action))

    def _remove(self, action: core.Remove) -> None:
        self.control_interfaces.withdraw(action.workload, action.instance)
        worker = self.workers.get(action.runtime)
        if worker is not None:
            worker.submit(lambda: worker.remove(action))

    # -- late joiners ------------------------------------------------------------------
    def _answer_state_query(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        asked = zenoh.KeyExpr(key)
        with self._published_lock:
            published = dict(self._published)
        replies = []
        for workload, state in published.items():
            reply_key = keys.state_key(self.name, workload)
            if asked.intersects(zenoh.KeyExpr(reply_key)):
                # stamped anew: a receiver that saw the put drops a repeated seq as stale
                replies.append((reply_key, self.bus.encode(state)))
        return replies

    def _answer_logs_query(self, key: str, _payload: bytes | None, params: str) -> list[tuple[str, bytes]]:
        """`ank logs` (services.agent.logs): on the logs thread, never in a
        Zenoh callback (the queryable defers it there)."""
        assert self.logs is not None
        return [(reply_key, self.bus.encode(reply)) for reply_key, reply in self.logs.answer(key, params)]

    def _log_lines(self, workload: str) -> list[str] | None:
        """A workload's log lines (None: no such workload here); may block."""
        for worker in self.workers.values():
            handle = worker.handles.get(workload)
            if handle is not None:
                return list(worker.runtime.logs(handle))
        return None

    def _push_logs(self, key: str, chunk: LogsReply) -> None:
        # dropped under congestion rather than blocking: the follower's next renewal fills the gap
        self.bus.put(key, chunk, reliable=False)

    # -- status and energy ------------------------------------------------------------
    def _answer_status_query(self, key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        status = getattr(self, "_last_status", None) or AgentStatus(
            agent=self.name, arch=platform.machine(), os=platform.system().lower(), tags=dict(self.options.tags)
        )
        return [(key, self.bus.encode(status))]

    def _status_thread(self) -> None:
        """Publishes the status (and energy) every period; on its own thread
        because runtimes may take a while to answer `available` and `usage`."""
        while not self._closing.is_set():
            try:
                self._last_status = self.status()
                self.bus.put(keys.agent_status_key(self.name), self._last_status, reliable=False)
                energy = self.energy()
                if energy is not None:
                    self.bus.put(keys.energy_key(self.name), energy, reliable=False)
            except Exception as exc:
                if self._closing.is_set():
                    return
                log.warning("could not publish status: %s", exc)
            self._closing.wait(self.options.status_period_s)

    def status(self) -> AgentStatus:
        memory = psutil.virtual_memory()
        held = {h.workload: (name, h) for name in self.runtimes for h in list(self.workers[name].handles.values())}
        picked = self._usage.pick(sorted(held))
        by_runtime: dict[str, list[RunHandle]] = {}
        for workload in picked:
            runtime_name, handle = held[workload]
            by_runtime.setdefault(runtime_name, []).append(handle)
        measured: dict[str, WorkloadUsage] = {}
        for runtime_name, handles in by_runtime.items():
            try:
                measured.update(self.runtimes[runtime_name].usage(handles))
            except Exception as exc:
                log.debug("usage of %s: %s", runtime_name, exc)
        usage = self._usage.update(sorted(held), picked, measured)
        return AgentStatus(
            agent=self.name,
            arch=platform.machine(),
            os=platform.system().lower(),
            tags=self.options.tags,
            cpu_percent=psutil.cpu_percent(None),
            free_memory_bytes=memory.available,
            total_memory_bytes=memory.total,
            runtimes=sorted(name for name, runtime in self.runtimes.items() if _available(runtime)),
            workloads=usage,
            containment=_containment(self.runtimes),
            boot=self.boot,
            runtime_transports={name: t for name, rt in self.runtimes.items() if (t := getattr(rt, "transport", ""))},
        )

    def energy(self) -> EnergyReport | None:
        now = self.now()
        battery = self.options.battery
        if battery is not None:
            return EnergyReport(
                node=self.name,
                energy_wh=round(battery.energy_at(now.mono), 6),
                capacity_wh=battery.capacity_wh,
                time_ms=now.wall_ms,
                source="sim",
            )
        found = read_power_supply()
        if found is None:
            return None
        energy_wh, capacity_wh = found
        return EnergyReport(
            node=self.name, energy_wh=energy_wh, capacity_wh=capacity_wh, time_ms=now.wall_ms, source="agent"
        )

    def stop_all(self) -> None:
        """Once the loop has stopped: the core's Shutdown stops every workload
        and removes each as its exit arrives; this only waits for those
        exits, bounded. For embedded use, where the agent's exit must leave
        nothing running."""
        self._closing.set()
        self.feed(core.Shutdown(stop_workloads=True))
        # the exits (and what was posted before the loop stopped) are fed here
        bound = self.options.stop_grace_s + STOP_WAIT_MARGIN_S
        if not self.loop.drain(lambda: not core.stops_pending(self.state), bound):
            self.feed(core.StopsAbandoned())
        for worker in self.workers.values():
            worker.close(bound)  # the removes are done first
        self.control_interfaces.close()
        if self.logs is not None:
            self.logs.close()

    def close(self) -> None:
        """Stops watching; leaves the workloads running for the next agent."""
        self._closing.set()
        if self.logs is not None:
            self.logs.close()
        self.control_interfaces.close()
        for worker in self.workers.values():
            worker.close()
        for runtime in self.runtimes.values():
            try:
                runtime.close()
            except Exception as exc:
                log.warning("closing runtime %s: %s", runtime.name, exc)


def _containment(runtimes: dict[str, Runtime]) -> str:
    found = getattr(runtimes.get("process"), "containment", None)
    return str(getattr(found, "kind", "")) if found is not None else ""


def _available(runtime: Runtime) -> bool:
    try:
        return runtime.available()
    except Exception:
        return False


def _file_content(item: FileItem) -> tuple[str, bytes]:
    if item.binary_data is not None:
        return item.mount_point, base64.b64decode(item.binary_data)
    return item.mount_point, (item.data or "").encode()


def _write_atomically(path: Path, data: bytes) -> None:
    """Replaces the file whole. No fsync: a record only matters while its
    process lives, and no process outlives a power loss."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- command line ------------------------------------------------------------------------


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a tag is key=value, not {text!r}")
    return key, value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ank-agent", description="Runs the workloads of one node.")
    parser.add_argument("-n", "--name", help="the agent's name (workloads name it in `agent`); env ANKAGENT_NAME")
    parser.add_argument("--tag", action="append", type=_tag, default=[], help="an agent tag key=value (repeatable)")
    parser.add_argument(
        "--image-map",
        action="append",
        type=_image_rule,
        default=[],
        metavar="FROM=TO",
        help="run image FROM as TO (a FROM ending in / maps a prefix), e.g. "
        "ghcr.io/eclipse-ankaios/tests/=localhost/ank-test/ (repeatable; env ANK_IMAGE_MAP)",
    )
    parser.add_argument(
        "-s", "--server", "--server-url", help="the router: host:port, tcp/host:port or http(s)://host:port"
    )
    parser.add_argument("--zenoh-config", help="Zenoh configuration file (default: zenoh.json5)")
    parser.add_argument("--run-dir", help="logs and instance records (default $TMPDIR/ankaios/NAME_io)")
    parser.add_argument("--backoff-initial", type=_non_negative, default=0.1, help="second restart's delay, s")
    parser.add_argument("--backoff-max", type=_non_negative, default=10.0, help="largest restart delay, s")
    parser.add_argument("--stable-after", type=_non_negative, default=10.0, help="a run this long resets the backoff")
    parser.add_argument("--stop-grace", type=_non_negative, default=10.0, help="SIGTERM → SIGKILL grace, s")
    parser.add_argument(
        "--stop-workloads-on-exit",
        action="store_true",
        help="stop the workloads when the agent exits (embedded use); by default they keep running for adoption",
    )
    parser.add_argument("--status-period", type=_non_negative, default=2.0, help="AgentStatus period, s")
    parser.add_argument("--battery-wh", type=_non_negative, help="simulated battery: energy now, Wh")
    parser.add_argument("--battery-capacity-wh", type=_non_negative, help="simulated battery: capacity, Wh")
    parser.add_argument("--battery-drain-w", type=_non_negative, default=0.0, help="simulated battery: drain, W")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    ankaios_options.add_arguments(parser)
    args = parser.parse_args(argv)
    ankaios_options.resolve(args, parser)
    problem = agent_name_error(args.name)
    if problem:
        parser.error(f"--name: {problem}")
    if args.battery_capacity_wh is not None and args.battery_wh is None:
        parser.error("--battery-capacity-wh needs --battery-wh")
    if args.status_period <= 0:
        parser.error("--status-period must be positive")
    return args


def _image_rule(text: str) -> str:
    source, sep, target = text.partition("=")
    if not sep or not source or not target or "," in text:
        raise argparse.ArgumentTypeError(f"expected FROM=TO (no commas), got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(f"ank-agent[{args.name}]", args.verbose)
    clock = SYSTEM_CLOCK
    battery = None
    if args.battery_wh is not None:
        battery = SimulatedBattery(args.battery_wh, args.battery_capacity_wh, args.battery_drain_w, clock.monotonic())
    options = AgentOptions(
        name=args.name,
        run_dir=str(Path(args.run_dir).resolve() if args.run_dir else default_run_dir(args.name)),
        tags=dict(args.tag),
        backoff=core.Backoff(args.backoff_initial, args.backoff_max, args.stable_after),
        stop_grace_s=args.stop_grace,
        status_period_s=args.status_period,
        battery=battery,
        stop_workloads_on_exit=args.stop_workloads_on_exit,
    )
    if args.image_map:
        # The container runtimes read their image mapping from the environment.
        os.environ["ANK_IMAGE_MAP"] = ",".join(filter(None, [os.environ.get("ANK_IMAGE_MAP", ""), *args.image_map]))
    # One writer per run folder, held for the agent's whole life.
    lock = DirLock(options.run_dir, "agent run directory")
    try:
        lock.acquire()
        bus = ankaios_options.open_bus(args)
    except (BusConfigError, Busy, OSError) as exc:
        print(f"ank-agent: {exc}", file=sys.stderr)
        return 2
    # One agent per name: a second one would run every workload twice.
    try:
        twins = bus.alive(keys.agent_token_key(args.name))
    except Exception:
        twins = []
    if twins:
        print(
            f"ank-agent: an agent named {args.name!r} is already live on the bus (token {twins[0]}); "
            "refusing to start a second one",
            file=sys.stderr,
        )
        bus.close()
        return 2
    print(f"ank-agent: agent {args.name}, run dir {options.run_dir}", file=sys.stderr, flush=True)
    loop = EventLoop()
    shell: AgentShell | None = None
    try:
        shell = AgentShell(options, bus, loop, load_runtimes(options.run_dir), clock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.stop())
        shell.start()
        loop.run()
        if options.stop_workloads_on_exit:
            shell.stop_all()
        else:
            shell.feed(core.Shutdown(stop_workloads=False))
    finally:
        if shell is not None:
            shell.close()
        bus.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
