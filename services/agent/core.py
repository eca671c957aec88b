"""The agent's decisions: which workloads to create, stop and restart, and
which state each one is in. Pure: no I/O, no clock, no threads, no Zenoh.

Theory of operation
-------------------
The agent holds one `Slot` per workload name. The shell feeds the core
events — a new plan, a runtime event (running / exited), a create that
failed, a timer that fired, a health verdict, the instances adopted after an
agent restart — each with the time (`Now`). The core answers with the new
`AgentState` and a list of actions for the shell to carry out, in order:
create, stop, remove, publish a WorkloadState, wake me later.

A slot's `phase` says what the agent is doing with it:

    waiting    held by the plan (WaitingToStart): nothing runs
    starting   create asked; the runtime has not said "running" yet
    running    the runtime said "running" (or it was adopted)
    stopping   stop asked; the exit is awaited, then `after_stop` happens
    backoff    exited, a restart is due at `wake_at`
    done       exited for good (Succeeded / Failed / StartingFailed)

The restart policy is decided here when a workload ends without the agent
asking: ALWAYS restarts after any exit, ON_FAILURE after a non-zero (or
unknown) exit, NEVER never. An exit the agent asked for (delete, update) is
never restarted. An `unhealthy` verdict counts as a failure: the agent stops
the workload and restarts it under ON_FAILURE/ALWAYS, or leaves it Failed
under NEVER. Restarts back off: the first is immediate, then `initial_s`,
doubling up to `max_s`; a run that lasted `stable_after_s` resets the
sequence. `restart_count` counts every restart of an instance; an update
(a new instance) starts again from 0.

Plans are level-triggered: a plan is the whole list of the agent's
workloads. A plan whose generation is not higher than the last applied one
is stale and ignored. What the plan does to a slot (each cell is driven
through `step` by tests/test_transition_tables.py):

| plan says      | slot absent             | same instance                    | other instance                    |
|----------------|-------------------------|----------------------------------|-----------------------------------|
| run (hold "")  | create                  | keep; release a waiting one      | update: stop old, then create new |
| WaitingToStart | Pending(WaitingToStart) | keep as it is                    | stop old; wait                    |
| WaitingToStop  | nothing                 | runs on, Stopping(WaitingToStop) | stop, remove, publish Removed     |
| not in plan    | —                       | stop, remove, publish Removed    | stop, remove, publish Removed     |

A slot that is stopping keeps stopping whatever the plan says; a plan entry
for it (deleted and planned again, or updated twice) is created once the old
instance's exit has arrived. Runtime events carry the instance they are
about; events about an instance already replaced are ignored, and timers
carry a token unique to the agent, so a stale timer never fires a restart.

An instance is *final* once its slot is done with an instance the runtime
still holds: the core then asks the shell to record it final
(`RecordFinal`), so that an agent restart neither runs it again nor forgets
how it ended.

Adoption: at its start the shell reads the instance records it wrote before
a restart, asks each runtime which of them still run, and feeds all of it as
one `RecordsFound`. The core decides per record (held to the code by
tests/test_transition_tables.py):

| found      | recorded final | decision                                       |
|------------|----------------|------------------------------------------------|
| running    | either         | reclaim it Running, serve its interface again  |
| ended      | yes            | reclaim it in its final state                  |
| ended      | no             | forget the record (the plan recreates it)      |
| no-runtime | either         | forget the record                              |
| unchecked  | either         | keep the record, reclaim nothing, alert        |
| unreadable | either         | forget the record                              |

Failures are reported in, not improvised by the shell: a stop that failed
(`OperationFailed` "stop") is retried after the backoff (alerting once); a
remove or a record write that failed ("remove", "record", "record-final") is
alerted;
a create that failed (`CreateFailed`) is retried or ends StartingFailed.

Shutdown: `Shutdown(stop_workloads=False)` leaves every workload running for
the next agent to adopt. With `stop_workloads=True` every live instance is
stopped and each is removed once its exit arrives, and nothing is published
(the planner reports the agent's workloads once its token goes); plans,
timers and health verdicts are ignored from then on. The shell waits,
bounded, while `stops_pending(state)`; when it gives up (`StopsAbandoned`)
what is still stopping is removed anyway. A stop that fails at shutdown
leaves its instance and record for the next agent.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ank_common.names import valid_name
from schemas.manifest import ControlInterfaceAccess, RestartPolicy
from schemas.messages import AgentPlan, HealthReport, PlannedWorkload, WorkloadState
from schemas.state import ExecutionState

Phase = Literal["waiting", "starting", "running", "stopping", "backoff", "done"]
# What the runtime says, at the agent's start, of an instance it recorded.
Found = Literal["running", "ended", "no-runtime", "unchecked", "unreadable"]
# What the shell reports failed (OperationFailed).
Operation = Literal["stop", "remove", "record", "record-final"]
# What follows the exit of a workload the agent stopped on purpose.
AfterStop = Literal["remove", "replace", "restart", "fail", "wait"]


class Now(msgspec.Struct, frozen=True):
    """The time of an event: monotonic seconds (for durations and timers) and
    the wall clock in ms (for the timestamps on the bus)."""

    mono: float
    wall_ms: int


class Backoff(msgspec.Struct, frozen=True):
    """Restart delays: 0 first, then initial_s doubling up to max_s; reset
    after a run of stable_after_s."""

    initial_s: float = 0.1
    max_s: float = 10.0
    stable_after_s: float = 10.0


def restart_delay(backoff: Backoff, consecutive: int) -> float:
    """The delay before the restart that follows `consecutive` earlier
    restarts in a row without a stable run (0 → immediate)."""
    if consecutive <= 0:
        return 0.0
    return float(min(backoff.max_s, backoff.initial_s * 2 ** (consecutive - 1)))


def wants_restart(policy: RestartPolicy, exit_code: int | None) -> bool:
    """Whether a workload that ended by itself is restarted. An unknown exit
    code (the process was adopted, its parent is gone) counts as a failure."""
    if policy == "ALWAYS":
        return True
    if policy == "ON_FAILURE":
        return exit_code != 0
    return False


class Slot(msgspec.Struct, frozen=True):
    """One workload of the agent and what the agent knows about it."""

    name: str
    planned: PlannedWorkload | None  # None: adopted, no plan seen yet
    instance: str
    runtime: str
    phase: Phase
    state: ExecutionState
    restart_count: int = 0
    consecutive_restarts: int = 0  # restarts since the last stable run (drives the backoff)
    exit_code: int | None = None
    last_error: str = ""
    last_restart_ms: int | None = None
    health: str = ""
    started_mono: float | None = None  # when it was last seen running
    wake_token: int = 0  # the token of the timer this slot waits for (0: none)
    create_retries: int = 0  # retryable create failures in a row
    stop_retries: int = 0  # failed stops in a row (each retried after the backoff)
    wake_at: float | None = None
    after_stop: AfterStop | None = None
    replacement: PlannedWorkload | None = None  # the plan entry to create after an update's stop
    has_instance: bool = False  # the runtime holds an instance (created or adopted) to stop/remove
    hold: str = ""

    @property
    def policy(self) -> RestartPolicy:
        return self.planned.workload.restart_policy if self.planned else "NEVER"


class AgentState(msgspec.Struct, frozen=True):
    agent: str
    backoff: Backoff = Backoff()
    stop_grace_s: float = 10.0
    generation: int = -1  # the last applied plan's generation
    epoch: int = 0  # the planner epoch of the last applied plan
    slots: dict[str, Slot] = {}
    last_timer: int = 0  # timer tokens are unique across slots, so a timer never wakes a later slot
    exiting: bool = False  # a Shutdown arrived: only the exits of what it stops matter now


# -- events (what the shell feeds in) ------------------------------------------


class PlanReceived(msgspec.Struct, frozen=True):
    plan: AgentPlan


class OnInstance(msgspec.Struct, frozen=True):
    """An event or action about one instance of a workload (an event about
    an instance the slot no longer holds is ignored)."""

    workload: str
    instance: str


class OnRuntimeInstance(OnInstance, frozen=True):
    """... and the runtime that holds it."""

    runtime: str


class Started(OnInstance, frozen=True):
    """The runtime reports the instance runs."""


class Exited(OnInstance, frozen=True):
    """The instance ended; exit_code None when it cannot be known."""

    exit_code: int | None
    info: str = ""


class CreateFailed(OnInstance, frozen=True):
    reason: str
    permanent: bool


class Wake(msgspec.Struct, frozen=True):
    workload: str
    token: int


class HealthChanged(msgspec.Struct, frozen=True):
    report: HealthReport


class FoundRecord(OnRuntimeInstance, frozen=True):
    """An instance record found at the agent's start (it created the instance
    before a restart, kill -9 included) and what the runtime says of it now:
    `found`, with `reason` when the runtime could not tell (unchecked) or the
    record could not be read. `final` is set when the record says the
    instance had finished for good."""

    found: Found = "running"
    planned: PlannedWorkload | None = None
    restart_count: int = 0
    last_restart_ms: int | None = None
    final: ExecutionState | None = None
    exit_code: int | None = None
    reason: str = ""


class RecordsFound(msgspec.Struct, frozen=True):
    records: list[FoundRecord]


class OperationFailed(OnInstance, frozen=True):
    """The shell could not carry out an operation on the instance: the
    runtime failed to stop it (it may still run) or to remove it, or its
    record (`record-final`: its final state) could not be written."""

    operation: Operation
    reason: str


class Shutdown(msgspec.Struct, frozen=True):
    """The agent exits; `stop_workloads`: stop and remove every workload."""

    stop_workloads: bool


class StopsAbandoned(msgspec.Struct, frozen=True):
    """At shutdown, the shell stopped waiting for the exits of the stops."""


AgentEvent = (
    PlanReceived
    | Started
    | Exited
    | CreateFailed
    | Wake
    | HealthChanged
    | RecordsFound
    | OperationFailed
    | Shutdown
    | StopsAbandoned
)


# -- actions (what the shell carries out) --------------------------------------


class Create(msgspec.Struct, frozen=True):
    planned: PlannedWorkload
    restart_count: int  # persisted with the instance so that adoption keeps it
    last_restart_ms: int | None = None
    restart: bool = False  # a restart under the restart policy (reported as an event)


class Stop(OnRuntimeInstance, frozen=True):
    grace_s: float


class Remove(OnRuntimeInstance, frozen=True):
    pass


class Publish(msgspec.Struct, frozen=True):
    state: WorkloadState


class WakeAt(msgspec.Struct, frozen=True):
    workload: str
    token: int
    at_mono: float


class Note(msgspec.Struct, frozen=True):
    """One line for the log: a decision and its reason."""

    text: str


class Alert(msgspec.Struct, frozen=True):
    """An event for the operator (`ank/events/<kind>`): something refused or
    failed; `subject` the workload ("": the agent's plan)."""

    kind: str
    message: str
    subject: str = ""


class RecordFinal(msgspec.Struct, frozen=True):
    """Record on disk that the instance finished for good, and how."""

    runtime: str
    state: WorkloadState


class Reclaim(OnRuntimeInstance, frozen=True):
    """Hold a found instance again (the agent's own once more)."""


class ServeInterface(OnInstance, frozen=True):
    """Serve a reclaimed instance's Control Interface again."""

    access: ControlInterfaceAccess | None


class ForgetRecord(msgspec.Struct, frozen=True):
    """Delete the instance record of `workload`."""

    workload: str


Action = (
    Create | Stop | Remove | Publish | WakeAt | Note | Alert | RecordFinal | Reclaim | ServeInterface | ForgetRecord
)

# Plan epochs and generations come from the planner's wall clock in
# microseconds; one further ahead of this agent's clock than this is not
# believed (a lying or broken planner), whatever clock skew a vehicle has.
PLAUSIBLE_AHEAD_US = 24 * 3600 * 1_000_000


class Step(msgspec.Struct, frozen=True):
    state: AgentState
    actions: list[Action]


# -- states ----------------------------------------------------------------------

STARTING = ExecutionState("Pending", "Starting")
WAITING_TO_START = ExecutionState("Pending", "WaitingToStart")
RUNNING = ExecutionState("Running", "Ok")
STOPPING = ExecutionState("Stopping", "Stopping")
WAITING_TO_STOP = ExecutionState("Stopping", "WaitingToStop")
SUCCEEDED = ExecutionState("Succeeded", "Ok")
REMOVED = ExecutionState("Removed")


def exit_info(exit_code: int | None) -> str:
    if exit_code is None:
        return "exit code unknown (adopted after an agent restart)"
    if exit_code < 0:
        return f"exit code {exit_code} (killed by signal {-exit_code})"
    return f"exit code {exit_code}"


def ended_state(exit_code: int | None) -> ExecutionState:
    if exit_code == 0:
        return SUCCEEDED
    if exit_code is None:
        return ExecutionState("Failed", "Unknown", exit_info(exit_code))
    return ExecutionState("Failed", "ExecFailed", exit_info(exit_code))


def workload_state(agent: str, slot: Slot, now: Now) -> WorkloadState:
    return WorkloadState(
        workload=slot.name,
        agent=agent,
        execution_state=slot.state,
        runtime=slot.runtime,
        instance=slot.instance,
        restart_count=slot.restart_count,
        exit_code=slot.exit_code,
        last_error=slot.last_error,
        last_restart_ms=slot.last_restart_ms,
        health=slot.health,
        time_ms=now.wall_ms,
    )


def current_states(state: AgentState, now: Now) -> list[WorkloadState]:
    """Every workload's current state (for late joiners and republishing)."""
    return [workload_state(state.agent, slot, now) for slot in state.slots.values()]


# -- the step function -----------------------------------------------------------


class _Builder:
    """Collects the new slots and the actions of one step."""

    def __init__(self, state: AgentState, now: Now) -> None:
        self.state = state
        self.now = now
        self.slots = dict(state.slots)
        self.actions: list[Action] = []
        self.last_timer = state.last_timer

    def wake_at(self, workload: str, at: float) -> int:
        self.last_timer += 1
        self.actions.append(WakeAt(workload, self.last_timer, at))
        return self.last_timer

    def note(self, text: str) -> None:
        self.actions.append(Note(text))

    def put(self, slot: Slot, *, publish: bool = True) -> None:
        self.slots[slot.name] = slot
        if publish:
            self.actions.append(Publish(workload_state(self.state.agent, slot, self.now)))

    def drop(self, slot: Slot) -> None:
        self.slots.pop(slot.name, None)
        self.actions.append(
            Publish(workload_state(self.state.agent, msgspec.structs.replace(slot, state=REMOVED), self.now))
        )

    def done(self, **changes: object) -> Step:
        new_state = msgspec.structs.replace(self.state, slots=self.slots, last_timer=self.last_timer)
        return Step(msgspec.structs.replace(new_state, **changes), _with_final_records(self.actions, self.slots))


def _with_final_records(actions: list[Action], slots: dict[str, Slot]) -> list[Action]:
    """Each Publish of an instance that ends the step final (its slot done, the
    runtime holding it) is followed by its RecordFinal."""
    out: list[Action] = []
    for action in actions:
        out.append(action)
        if isinstance(action, Publish):
            slot = slots.get(action.state.workload)
            if (
                slot is not None
                and slot.phase == "done"
                and slot.has_instance
                and slot.instance == action.state.instance
            ):
                out.append(RecordFinal(slot.runtime, action.state))
    return out


def step(state: AgentState, event: AgentEvent, now: Now) -> Step:
    """The agent's reaction to one event: its new state and the actions."""
    b = _Builder(state, now)
    if state.exiting:
        _exiting(b, event)
        return b.done()
    if isinstance(event, Shutdown):
        _shutdown(b, event.stop_workloads)
        return b.done(exiting=True)
    if isinstance(event, PlanReceived):
        plan = event.plan
        if plan.agent != state.agent:
            b.note(f"ignored a plan for agent {plan.agent!r}")
            return b.done()
        limit = now.wall_ms * 1000 + PLAUSIBLE_AHEAD_US
        if plan.generation > limit or plan.epoch > limit:
            message = (
                f"agent {state.agent} refused plan generation {plan.generation} epoch {plan.epoch} "
                f"from {plan.sender or 'an unknown sender'}: implausible (more than 24 h ahead of the agent's clock)"
            )
            b.note(message)
            b.actions.append(Alert("implausible-plan", message))
            return b.done()
        if plan.epoch < state.epoch:
            b.note(f"ignored plan of an older planner epoch {plan.epoch} (applied epoch {state.epoch})")
            return b.done()
        if plan.epoch > state.epoch:
            # A newer planner start: its generations may be lower than the
            # last one applied (e.g. after a lie); its plan replaces it.
            _apply_plan(b, plan)
            return b.done(generation=plan.generation, epoch=plan.epoch)
        if event.plan.generation == state.generation:
            # The planner re-sends the plan it sent when it (re)discovers this
            # agent: whatever was said meanwhile (AgentDisconnected) is stale,
            # so say every state again.
            b.actions.extend(Publish(ws) for ws in current_states(state, now))
            b.note(f"plan {event.plan.generation} re-sent: published every state again")
            return b.done()
        if event.plan.generation < state.generation:
            b.note(f"ignored stale plan generation {event.plan.generation} (applied {state.generation})")
            return b.done()
        _apply_plan(b, event.plan)
        return b.done(generation=event.plan.generation)
    if isinstance(event, RecordsFound):
        for record in event.records:
            _found(b, record)
        return b.done()
    if isinstance(event, HealthChanged):
        _health(b, event.report)
        return b.done()
    if isinstance(event, StopsAbandoned):
        return b.done()  # only meaningful while exiting
    if isinstance(event, OperationFailed) and event.operation != "stop":
        _io_failed(b, event)  # alerted whether or not the slot still exists
        return b.done()
    slot = state.slots.get(event.workload)
    if slot is None:
        return b.done()
    if isinstance(event, Wake):
        if event.token != slot.wake_token:
            return b.done()
        if slot.phase == "backoff" and slot.planned is not None:
            _create(b, slot, slot.planned, restart=slot.create_retries == 0)
        elif slot.phase == "stopping":
            b.note(f"{slot.name}: stop retry {slot.stop_retries}")
            b.put(msgspec.structs.replace(slot, wake_token=0, wake_at=None), publish=False)
            b.actions.append(Stop(slot.name, slot.instance, slot.runtime, b.state.stop_grace_s))
        return b.done()
    if event.instance != slot.instance:
        return b.done()  # an event about an instance already replaced
    if isinstance(event, Started):
        _started(b, slot)
    elif isinstance(event, Exited):
        _exited(b, slot, event.exit_code, event.info)
    elif isinstance(event, CreateFailed):
        _create_failed(b, slot, event.reason, event.permanent)
    elif isinstance(event, OperationFailed):  # a stop
        _stop_failed(b, slot, event.reason)
    return b.done()


# -- plan -------------------------------------------------------------------------


def _apply_plan(b: _Builder, plan: AgentPlan) -> None:
    for bad in [p.name for p in plan.workloads if not valid_name(p.name)]:
        b.note(f"ignored plan entry with invalid workload name {bad!r}")
    workloads = [p for p in plan.workloads if valid_name(p.name)]
    planned_by_name = {p.name: p for p in workloads}
    for name, gone in list(b.slots.items()):
        if name not in planned_by_name:
            _delete(b, gone)
    for planned in planned_by_name.values():
        slot = b.slots.get(planned.name)
        if slot is None:
            _new(b, planned)
        elif slot.phase == "stopping":
            _replan_stopping(b, slot, planned)
        elif slot.instance != planned.instance:
            _update(b, slot, planned)
        else:
            _same_instance(b, slot, planned)


def _new(b: _Builder, planned: PlannedWorkload) -> None:
    if planned.hold == "WaitingToStop":
        return  # deleted and nothing of it runs here: nothing to keep
    slot = Slot(
        name=planned.name,
        planned=planned,
        instance=planned.instance,
        runtime=planned.workload.runtime,
        phase="waiting",
        state=WAITING_TO_START,
        hold=planned.hold,
    )
    if planned.hold == "WaitingToStart":
        b.note(f"{planned.name}: waiting to start (dependencies not met)")
        b.put(slot)
        return
    _create(b, slot, planned, restart=False)


def _same_instance(b: _Builder, slot: Slot, planned: PlannedWorkload) -> None:
    slot = msgspec.structs.replace(slot, planned=planned)
    if planned.hold == slot.hold:
        b.put(slot, publish=False)
        return
    previous_hold = slot.hold
    slot = msgspec.structs.replace(slot, hold=planned.hold)
    if planned.hold == "":
        if slot.phase == "waiting":
            _create(b, slot, planned, restart=False)
        elif previous_hold == "WaitingToStop" and slot.phase in ("running", "starting"):
            b.note(f"{slot.name}: kept (no longer waiting to stop)")
            b.put(msgspec.structs.replace(slot, state=RUNNING if slot.phase == "running" else STARTING))
        else:
            b.put(slot, publish=False)
    elif planned.hold == "WaitingToStop":
        if slot.phase in ("running", "starting"):
            b.note(f"{slot.name}: kept running for its dependents (waiting to stop)")
            b.put(msgspec.structs.replace(slot, state=WAITING_TO_STOP))
        elif slot.phase == "backoff":
            b.note(f"{slot.name}: restart cancelled (deleted, waiting to stop)")
            b.put(msgspec.structs.replace(slot, phase="done", wake_at=None, wake_token=0))
        else:
            b.put(slot, publish=False)
    else:  # WaitingToStart for a workload that already runs: leave it (Ankaios does not stop it)
        b.put(slot, publish=False)


def _update(b: _Builder, slot: Slot, planned: PlannedWorkload) -> None:
    b.note(f"{slot.name}: update {slot.instance} -> {planned.instance}")
    if slot.phase in ("running", "starting") and slot.has_instance:
        after: AfterStop = "replace" if planned.hold != "WaitingToStop" else "remove"
        _stop(b, slot, after, replacement=planned)
        return
    if slot.has_instance:
        b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
    b.slots.pop(slot.name, None)
    _new(b, planned)


def _replan_stopping(b: _Builder, slot: Slot, planned: PlannedWorkload) -> None:
    """A plan entry for a workload whose stop is under way: what follows the
    stop changes; the stop itself goes on (its exit is awaited)."""
    if slot.after_stop in ("restart", "fail") and planned.instance == slot.instance:
        b.put(msgspec.structs.replace(slot, planned=planned, hold=planned.hold), publish=False)
        return
    # deleted and planned again, or updated meanwhile: create the plan's instance once the old one is gone
    after: AfterStop = "remove" if planned.hold == "WaitingToStop" else "replace"
    b.note(f"{slot.name}: will create instance {planned.instance} once the stop completes")
    b.put(msgspec.structs.replace(slot, after_stop=after, replacement=planned), publish=False)


def _delete(b: _Builder, slot: Slot) -> None:
    if slot.phase in ("running", "starting") and slot.has_instance:
        b.note(f"{slot.name}: deleted from the plan: stopping")
        _stop(b, slot, "remove")
        return
    if slot.phase == "stopping":
        b.put(msgspec.structs.replace(slot, after_stop="remove", replacement=None), publish=False)
        return
    b.note(f"{slot.name}: deleted from the plan: removed")
    if slot.has_instance:
        b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
    b.drop(slot)


# -- runtime events ---------------------------------------------------------------


def _create(b: _Builder, slot: Slot, planned: PlannedWorkload, *, restart: bool) -> None:
    restart_count = slot.restart_count + (1 if restart else 0)
    last_restart_ms = b.now.wall_ms if restart else slot.last_restart_ms
    info = f"restart {restart_count}" if restart else ""
    slot = msgspec.structs.replace(
        slot,
        planned=planned,
        instance=planned.instance,
        runtime=planned.workload.runtime,
        phase="starting",
        state=ExecutionState("Pending", "Starting", info),
        restart_count=restart_count,
        consecutive_restarts=slot.consecutive_restarts + (1 if restart else 0),
        last_restart_ms=last_restart_ms,
        health="",
        wake_at=None,
        wake_token=0,
        after_stop=None,
        replacement=None,
        has_instance=True,
        hold=planned.hold,
        stop_retries=0,
    )
    b.note(f"{slot.name}: {'restart ' + str(restart_count) if restart else 'create'} instance {slot.instance}")
    b.put(slot)
    b.actions.append(Create(planned, restart_count, last_restart_ms, restart))


def _started(b: _Builder, slot: Slot) -> None:
    if slot.phase != "starting":
        return
    state = WAITING_TO_STOP if slot.hold == "WaitingToStop" else RUNNING
    b.put(msgspec.structs.replace(slot, phase="running", state=state, started_mono=b.now.mono, create_retries=0))


def _create_failed(b: _Builder, slot: Slot, reason: str, permanent: bool) -> None:
    if slot.phase != "starting":
        return
    if permanent:
        b.note(f"{slot.name}: cannot start: {reason}")
        b.put(
            msgspec.structs.replace(
                slot,
                phase="done",
                state=ExecutionState("Pending", "StartingFailed", reason),
                last_error=reason,
                has_instance=False,
            )
        )
        return
    # A retryable create failure (e.g. an image not pulled yet) is retried
    # after initial_s, doubling: never at once, that would spin.
    attempt = slot.create_retries + 1
    delay = restart_delay(b.state.backoff, attempt)
    at = b.now.mono + delay
    token = b.wake_at(slot.name, at)
    b.note(f"{slot.name}: create failed ({reason}); retry {attempt} in {delay:.3f}s")
    b.put(
        msgspec.structs.replace(
            slot,
            phase="backoff",
            state=ExecutionState("Pending", "Starting", f"Retry {attempt}: {reason}"),
            last_error=reason,
            wake_token=token,
            wake_at=at,
            has_instance=False,
            create_retries=attempt,
        )
    )


LOST = "lost: "  # the info of an Exited whose instance vanished (Ankaios's Failed(Lost))


def _exited(b: _Builder, slot: Slot, exit_code: int | None, info: str) -> None:
    if slot.phase == "stopping":
        _stopped(b, slot, exit_code)
        return
    lost = info.startswith(LOST) and exit_code is None
    if lost:
        info = info[len(LOST) :]
    if lost and slot.phase == "done" and slot.planned is not None:
        # An ended instance that then vanished (`--rm`, removed by hand):
        # Ankaios reports it Failed(Lost), and so do we.
        slot = msgspec.structs.replace(slot, state=ExecutionState("Failed", "Lost", info), last_error=info)
        b.note(f"{slot.name}: its instance vanished -> {slot.state}")
        b.put(slot)
        return
    if slot.phase not in ("running", "starting"):
        return
    ended = ExecutionState("Failed", "Lost", info) if lost else ended_state(exit_code)
    if lost:
        info = ""
    if info:
        ended = msgspec.structs.replace(ended, additional_info=f"{ended.additional_info}; {info}".lstrip("; "))
    consecutive = _consecutive(b, slot)
    slot = msgspec.structs.replace(
        slot,
        phase="done",
        state=ended,
        exit_code=exit_code,
        last_error="" if exit_code == 0 else ended.additional_info,
        consecutive_restarts=consecutive,
        has_instance=True,
    )
    b.note(f"{slot.name}: ended, {exit_info(exit_code)} -> {slot.state}")
    b.put(slot)
    if slot.hold == "WaitingToStop" or slot.planned is None or not wants_restart(slot.policy, exit_code):
        return
    _schedule_restart(b, slot)


def _consecutive(b: _Builder, slot: Slot) -> int:
    """The restarts in a row so far; a stable run resets the backoff."""
    stable = slot.started_mono is not None and b.now.mono - slot.started_mono >= b.state.backoff.stable_after_s
    return 0 if stable else slot.consecutive_restarts


def _schedule_restart(b: _Builder, slot: Slot) -> None:
    """Removes the ended instance and creates it again now or after the backoff."""
    planned = slot.planned
    assert planned is not None
    b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
    slot = msgspec.structs.replace(slot, has_instance=False)
    delay = restart_delay(b.state.backoff, slot.consecutive_restarts)
    if delay <= 0:
        _create(b, slot, planned, restart=True)
        return
    at = b.now.mono + delay
    b.note(f"{slot.name}: restart policy {slot.policy}: restart in {delay:.3f}s")
    token = b.wake_at(slot.name, at)
    b.put(msgspec.structs.replace(slot, phase="backoff", wake_token=token, wake_at=at), publish=False)


def _stop(b: _Builder, slot: Slot, after: AfterStop, *, replacement: PlannedWorkload | None = None) -> None:
    state = slot.state if after in ("restart", "fail") else STOPPING
    slot = msgspec.structs.replace(slot, phase="stopping", state=state, after_stop=after, replacement=replacement)
    b.put(slot, publish=state == STOPPING)
    b.actions.append(Stop(slot.name, slot.instance, slot.runtime, b.state.stop_grace_s))


def _stopped(b: _Builder, slot: Slot, exit_code: int | None) -> None:
    """The exit of an instance the agent stopped: what was planned follows."""
    after = slot.after_stop
    slot = msgspec.structs.replace(slot, exit_code=exit_code, after_stop=None)
    if after == "remove":
        b.note(f"{slot.name}: stopped ({exit_info(exit_code)}), removed")
        b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
        b.drop(slot)
    elif after == "replace" and slot.replacement is not None:
        b.note(f"{slot.name}: old instance stopped, creating {slot.replacement.instance}")
        b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
        b.slots.pop(slot.name, None)
        _new(b, slot.replacement)  # a new instance: a fresh slot (restart count 0), as Ankaios's delete-then-create
    elif after == "restart":
        b.note(f"{slot.name}: stopped after unhealthy verdict ({exit_info(exit_code)})")
        _schedule_restart(b, msgspec.structs.replace(slot, phase="done", consecutive_restarts=_consecutive(b, slot)))
    else:  # "fail", or a stop whose follow-up vanished: it ends here
        b.put(msgspec.structs.replace(slot, phase="done"))


# -- adoption and health ----------------------------------------------------------


def _found(b: _Builder, record: FoundRecord) -> None:
    """What an instance record found at start becomes (the adoption table in
    the theory of operation)."""
    if record.found == "unchecked":
        message = (
            f"{record.workload}: runtime {record.runtime} could not tell whether instance {record.instance} "
            f"still runs ({record.reason}): its record is kept for a later start, the plan decides now"
        )
        b.note(message)
        b.actions.append(Alert("adopt-failed", message, record.workload))
        return
    if record.found == "running":
        _reclaim(b, record, final=None)
        return
    if record.found == "ended" and record.final is not None:
        _reclaim(b, record, final=record.final)
        return
    if record.found == "unreadable":
        b.note(f"unreadable instance record {record.workload!r} ({record.reason}): ignored")
    else:
        b.note(f"{record.workload}: the instance recorded before the restart is gone")
    b.actions.append(ForgetRecord(record.workload))


def _reclaim(b: _Builder, record: FoundRecord, final: ExecutionState | None) -> None:
    b.actions.append(Reclaim(record.workload, record.instance, record.runtime))
    planned = record.planned
    hold = planned.hold if planned else ""
    if final is not None:
        b.put(
            Slot(
                name=record.workload,
                planned=planned,
                instance=record.instance,
                runtime=record.runtime,
                phase="done",
                state=final,
                restart_count=record.restart_count,
                last_restart_ms=record.last_restart_ms,
                exit_code=record.exit_code,
                has_instance=True,
                hold=hold,
            )
        )
        b.note(f"{record.workload}: instance {record.instance} had finished before the restart: {final}")
        return
    if planned is not None:  # serve its interface again
        b.actions.append(ServeInterface(record.workload, record.instance, planned.workload.control_interface_access))
    slot = Slot(
        name=record.workload,
        planned=planned,
        instance=record.instance,
        runtime=record.runtime,
        phase="running",
        state=WAITING_TO_STOP if hold == "WaitingToStop" else RUNNING,
        restart_count=record.restart_count,
        last_restart_ms=record.last_restart_ms,
        started_mono=b.now.mono,
        has_instance=True,
        hold=hold,
    )
    b.note(f"{record.workload}: adopted running instance {record.instance}")
    b.put(slot)


# -- failures the shell reports ---------------------------------------------------


def _stop_failed(b: _Builder, slot: Slot, reason: str) -> None:
    """A stop the runtime refused: the instance may run on, so the stop is
    retried after the backoff; the operator hears of the first failure."""
    if slot.phase != "stopping":
        return
    attempt = slot.stop_retries + 1
    delay = max(restart_delay(b.state.backoff, attempt), b.state.backoff.initial_s)
    at = b.now.mono + delay
    b.note(f"{slot.name}: stop failed ({reason}); retry {attempt} in {delay:.3f}s")
    if attempt == 1:
        b.actions.append(Alert("stop-failed", f"{b.state.agent} could not stop {slot.name}: {reason}", slot.name))
    token = b.wake_at(slot.name, at)
    b.put(
        msgspec.structs.replace(slot, stop_retries=attempt, wake_token=token, wake_at=at, last_error=reason),
        publish=False,
    )


def _io_failed(b: _Builder, event: OperationFailed) -> None:
    if event.operation == "remove":
        kind, consequence = "remove-failed", f"could not remove instance {event.instance}: it may be left behind"
    elif event.operation == "record-final":
        kind, consequence = "record-failed", "could not record how it finished: an agent restart may run it again"
    else:
        kind, consequence = "record-failed", "could not write its instance record: an agent restart will not adopt it"
    message = f"{b.state.agent}: {event.workload}: {consequence} ({event.reason})"
    b.note(message)
    b.actions.append(Alert(kind, message, event.workload))


# -- shutdown ---------------------------------------------------------------------


def _shutdown(b: _Builder, stop_workloads: bool) -> None:
    if not stop_workloads:
        b.note(f"agent {b.state.agent} exits; its {len(b.slots)} workloads keep running for the next agent")
        return
    b.note(f"agent {b.state.agent} exits with its workloads: stopping {len(b.slots)}")
    for slot in list(b.slots.values()):
        if slot.phase in ("running", "starting") and slot.has_instance:
            b.put(msgspec.structs.replace(slot, phase="stopping", after_stop="remove", replacement=None), publish=False)
            b.actions.append(Stop(slot.name, slot.instance, slot.runtime, b.state.stop_grace_s))
        elif slot.phase == "stopping":  # its stop is under way: its exit removes it
            b.put(msgspec.structs.replace(slot, after_stop="remove", replacement=None), publish=False)
        else:  # nothing runs: remove what the runtime still holds (an ended instance)
            if slot.has_instance:
                b.actions.append(Remove(slot.name, slot.instance, slot.runtime))
            b.slots.pop(slot.name)


def stops_pending(state: AgentState) -> list[str]:
    """At shutdown, the workloads whose exit is still awaited."""
    return sorted(name for name, slot in state.slots.items() if slot.phase == "stopping") if state.exiting else []


def _exiting(b: _Builder, event: AgentEvent) -> None:
    """After a Shutdown: the exits remove what was stopped; a failed stop
    leaves its instance (and record) for the next agent; nothing else
    matters any more."""
    if isinstance(event, StopsAbandoned):
        pending = stops_pending(b.state)
        if pending:
            b.note(f"workloads still stopping at exit: {pending}: removed anyway")
        for name in pending:
            stopping = b.slots.pop(name)
            b.actions.append(Remove(stopping.name, stopping.instance, stopping.runtime))
        return
    if not isinstance(event, Exited) and not (isinstance(event, OperationFailed) and event.operation == "stop"):
        return
    slot = b.slots.get(event.workload)
    if slot is None or slot.instance != event.instance or slot.phase != "stopping":
        return
    b.slots.pop(slot.name)
    if isinstance(event, OperationFailed):
        b.note(f"{slot.name}: could not stop at exit ({event.reason}): left for the next agent")
        return
    b.note(f"{slot.name}: stopped at exit ({exit_info(event.exit_code)}), removed")
    b.actions.append(Remove(slot.name, slot.instance, slot.runtime))


def _health(b: _Builder, report: HealthReport) -> None:
    slot = b.slots.get(report.workload)
    if slot is None or report.agent != b.state.agent:
        return
    if slot.phase not in ("running", "starting"):
        return
    if report.status != "unhealthy":
        if slot.health != report.status:
            b.put(msgspec.structs.replace(slot, health=report.status))
        return
    info = f"unhealthy: {report.last_error}" if report.last_error else "unhealthy"
    failed = ExecutionState("Failed", "ExecFailed", info)
    slot = msgspec.structs.replace(slot, health="unhealthy", state=failed, last_error=info)
    if slot.planned is not None and slot.policy != "NEVER" and slot.hold != "WaitingToStop":
        b.note(f"{slot.name}: {info}: restart policy {slot.policy}: stopping to restart")
        b.put(slot)
        _stop(b, slot, "restart")
    else:
        b.note(f"{slot.name}: {info}: restart policy {slot.policy}: stopping, stays Failed")
        b.put(slot)
        _stop(b, slot, "fail")
