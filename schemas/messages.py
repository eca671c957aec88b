"""Every message on the bus (DESIGN.md §4). Payloads are JSON made by msgspec.

Every message carries the envelope `v` (contract version), `sender` (the
service instance that published it) and `seq` (monotonic per sender, also
across its restarts: the bus stamps it from the wall clock in microseconds
and never repeats or goes back). Receivers drop stale or malformed messages
and count them. Publishers build messages with the envelope left at its
defaults; services.bus stamps it on the way out.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.manifest import Manifest, Workload
from schemas.state import ExecutionState

CONTRACT_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The envelope every bus message carries."""

    v: int = CONTRACT_VERSION
    sender: str = ""
    seq: int = 0


class WorkloadState(Message, frozen=True, kw_only=True):
    """`ank/state/<agent>/<workload>`: one workload's state, on every transition."""

    workload: str
    agent: str
    execution_state: ExecutionState
    runtime: str = ""
    instance: str = ""  # identifies the configuration instance (hash of the rendered workload)
    restart_count: int = 0
    exit_code: int | None = None
    last_error: str = ""
    last_restart_ms: int | None = None  # wall clock, ms since the epoch
    health: str = ""  # "", "healthy", "unhealthy", "starting"
    time_ms: int = 0  # when the transition happened (wall clock, ms)


class PlannedWorkload(msgspec.Struct, frozen=True, rename="camel"):
    """A workload as the planner hands it to its agent: rendered, with the
    identity of its configuration."""

    name: str
    instance: str
    workload: Workload
    # "" run it; "WaitingToStart" dependencies not met, do not start;
    # "WaitingToStop" deleted but still needed by dependents, keep running.
    hold: Literal["", "WaitingToStart", "WaitingToStop"] = ""


class PlanRef(msgspec.Struct, frozen=True, rename="camel"):
    """A plan entry whose workload the agent got in an earlier plan of the
    same epoch: only its name, instance and hold travel again."""

    name: str
    instance: str
    hold: Literal["", "WaitingToStart", "WaitingToStop"] = ""


class AgentPlan(Message, frozen=True, kw_only=True):
    """`ank/plan/<agent>`: the agent's whole plan (level-triggered).

    `workloads` are the ones the agent must run now; a workload of the agent
    that is not in the plan must be stopped and removed. `epoch` is new at
    each planner start (higher than any before); within one epoch a plan
    with a generation lower than one already applied is stale, and a plan of
    a newer epoch replaces whatever came before. A plan too large for one
    message is sent in `parts` messages (`part` 0..parts-1, each with some
    of the workloads, all with the same epoch and generation): the agent
    applies it once it holds every part. An update names the entries the
    agent already holds in `kept` and carries only new or changed ones in
    `workloads`; an agent that lacks one of the kept entries asks
    `ank/plan/<agent>`, whose answer is always the whole plan."""

    agent: str
    generation: int
    workloads: list[PlannedWorkload] = []
    kept: list[PlanRef] = []
    epoch: int = 0
    part: int = 0
    parts: int = 1


class WorkloadUsage(msgspec.Struct, frozen=True, rename="camel"):
    cpu_percent: float | None = None
    memory_bytes: int | None = None


class AgentStatus(Message, frozen=True, kw_only=True):
    """`ank/agents/<agent>/status`, every few seconds."""

    agent: str
    arch: str
    os: str
    tags: dict[str, str] = {}
    cpu_percent: float = 0.0
    free_memory_bytes: int = 0
    total_memory_bytes: int = 0
    runtimes: list[str] = []
    workloads: dict[str, WorkloadUsage] = {}
    # how process workloads are contained: "cgroup" or "process-group" ("" if no process runtime)
    containment: str = ""
    # random per agent process: statuses of one name from two boots, interleaved, are two live agents
    boot: str = ""
    # How each runtime reaches its engine where it has a choice: podman "api" or "cli".
    runtime_transports: dict[str, str] = {}


class EnergyReport(Message, frozen=True, kw_only=True):
    """`ank/energy/<node>`: a node's battery energy and pose."""

    node: str
    energy_wh: float
    capacity_wh: float | None = None
    x: float | None = None
    y: float | None = None
    time_ms: int = 0  # when it was measured (wall clock, ms since the epoch)
    source: str = ""  # "agent", "sim", "influxdb", "robot"


class Binding(Message, frozen=True, kw_only=True):
    """`ank/bind/<workload>`: the agent the scheduler chose. An empty agent
    unbinds (the workload goes back to NotScheduled)."""

    workload: str
    agent: str
    policy: str = ""
    score: float = 0.0
    reason: str = ""


class HealthReport(Message, frozen=True, kw_only=True):
    """`ank/health/<agent>/<workload>`: the verdict of the workload's probe."""

    workload: str
    agent: str
    status: Literal["starting", "healthy", "unhealthy"]
    consecutive_failures: int = 0
    last_error: str = ""
    probe: str = ""  # "exec", "tcp", "http", "zenoh", "podman"
    time_ms: int = 0


class Event(Message, frozen=True, kw_only=True):
    """`ank/events/<kind>`: a human-readable event (rejections, scheduling
    failures, restarts)."""

    kind: str  # "rejected", "Scheduled", "FailedScheduling", "restart", "dropped", ...
    subject: str = ""  # the workload, agent or key it is about
    message: str
    severity: Literal["info", "warning", "error"] = "info"
    time_ms: int = 0


class ValidationIssue(msgspec.Struct, frozen=True, rename="camel"):
    """One validation error or warning: the path (e.g.
    `workloads.nginx.dependencies`) and the reason."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ApplyRequest(Message, frozen=True, kw_only=True):
    """Payload of the `ank/cmd/apply` query. `manifest` is the file's text
    (YAML or JSON). `agent` is the CLI's --agent (None when not given).
    `delete` removes the manifest's workloads (`ank apply -d`). `masks`
    (Ankaios update masks such as `desiredState.workloads.NAME`) make it
    `ank set state`: only the masked paths are replaced by the file's."""

    manifest: str
    agent: str | None = None
    delete: bool = False
    masks: list[str] | None = None


class DeleteRequest(Message, frozen=True, kw_only=True):
    """Payload of the `ank/cmd/delete` query."""

    workloads: list[str]


class ApplyResult(Message, frozen=True, kw_only=True):
    """Reply to `ank/cmd/apply` and `ank/cmd/delete`."""

    ok: bool
    added: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    unchanged: list[str] = []
    errors: list[ValidationIssue] = []
    warnings: list[ValidationIssue] = []


class LogsReply(Message, frozen=True, kw_only=True):
    """Reply to `ank/logs/<agent>/<workload>` (`ank logs`), and a chunk the
    agent pushes on `ank/logs/<agent>/<workload>/stream` while the workload
    is followed (`ank logs -f`): the log's lines from line `start` on (each
    ending in a newline) and `offset`, the number of lines the log had, where
    a follower continues (`?offset=N`). A reply longer than the agent's
    budget holds only the last lines: `start` says where they begin."""

    workload: str
    text: str = ""
    start: int = 0
    offset: int = 0


class CompleteState(Message, frozen=True, kw_only=True):
    """Reply to `ank/cmd/state`: the desired state and the known states."""

    desired: Manifest
    workload_states: list[WorkloadState] = []
    agents: list[str] = []
    # A large state comes in `parts` replies (`part` 0..parts-1, one
    # `snapshot`): each holds some of the workloads, configs and states;
    # services.bus.paging merges them.
    part: int = 0
    parts: int = 1
    snapshot: int = 0
    # Asked with `?since=<ms>` (`ank get events`): the desired state as it was
    # then, when it changed since (the last few seconds only; a state in one
    # part only), so that the stream starts when the asker started.
    desired_since: Manifest | None = None
