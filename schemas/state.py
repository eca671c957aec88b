"""Workload execution states, spelled as Eclipse Ankaios spells them.

`state` is the top-level state and `substate` its detail, e.g. Running / Ok or
Pending / WaitingToStart. NotScheduled, AgentDisconnected and Removed carry no
substate (the empty string), as in Ankaios.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.manifest import DependencyCondition

State = Literal[
    "Pending",
    "Running",
    "Stopping",
    "Succeeded",
    "Failed",
    "NotScheduled",
    "AgentDisconnected",
    "Removed",
]

Substate = Literal[
    "",
    "Initial",
    "WaitingToStart",
    "Starting",
    "StartingFailed",
    "Ok",
    "WaitingToStop",
    "Stopping",
    "DeleteFailed",
    "ExecFailed",
    "Unknown",
    "Lost",
]

# Which substates each state admits (Ankaios v1).
SUBSTATES: dict[str, tuple[str, ...]] = {
    "Pending": ("Initial", "WaitingToStart", "Starting", "StartingFailed"),
    "Running": ("Ok",),
    "Stopping": ("Stopping", "WaitingToStop", "DeleteFailed"),
    "Succeeded": ("Ok",),
    "Failed": ("ExecFailed", "Unknown", "Lost"),
    "NotScheduled": ("",),
    "AgentDisconnected": ("",),
    "Removed": ("",),
}


# Which (state, substate) of a dependency fulfils each add condition (Ankaios):
# the planner releases a dependent on it, `ank get workload` shows MET/WAITING.
ADD_CONDITION_MET_BY: dict[DependencyCondition, tuple[State, Substate]] = {
    "ADD_COND_RUNNING": ("Running", "Ok"),
    "ADD_COND_SUCCEEDED": ("Succeeded", "Ok"),
    "ADD_COND_FAILED": ("Failed", "ExecFailed"),
}


class ExecutionState(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """A workload's execution state with Ankaios's additionalInfo."""

    state: State
    substate: Substate = ""
    additional_info: str = ""

    def __str__(self) -> str:
        return f"{self.state}({self.substate})" if self.substate else self.state

    def __post_init__(self) -> None:
        if self.substate not in SUBSTATES[self.state]:
            raise ValueError(f"substate {self.substate!r} is not a substate of {self.state}")


def pending(substate: str = "Initial", info: str = "") -> ExecutionState:
    return ExecutionState("Pending", substate, info)  # type: ignore[arg-type]


RUNNING = ExecutionState("Running", "Ok")
SUCCEEDED = ExecutionState("Succeeded", "Ok")
NOT_SCHEDULED = ExecutionState("NotScheduled")
AGENT_DISCONNECTED = ExecutionState("AgentDisconnected")
REMOVED = ExecutionState("Removed")
