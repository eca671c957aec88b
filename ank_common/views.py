"""The rows the CLI prints and the dashboard serves, built here only, as pure
functions of the contract's values (no I/O, no clock).

One row per thing: a workload's (`ank get workloads -o json|yaml`, the
dashboard's `/api/v1/workloads` and its stream), an agent's
(`ank get agents -o json`, `/api/v1/agents`) and an event's
(`ank get eventlog -o json`, `/api/v1/events`). The CLI's row is the
dashboard's too, field for field and in the same order; the dashboard's
row then adds, after it, the few fields only its page shows
(`DASHBOARD_WORKLOAD_FIELDS`, `DASHBOARD_AGENT_FIELDS`). So a workload
nobody has reported a state for yet is `Pending(Initial)` in both (as
Ankaios shows a workload just added), and an agent's position is `pose`
(`[x, y]`, or null) in both.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.manifest import Manifest
from schemas.messages import AgentStatus, EnergyReport, Event, WorkloadState

# What the dashboard's rows carry after the shared fields.
DASHBOARD_WORKLOAD_FIELDS = ("restartPolicy", "timeMs")
DASHBOARD_AGENT_FIELDS = ("totalMemoryBytes", "capacityWh", "energyTimeMs", "energySource")


def is_newer(st: WorkloadState, than: WorkloadState | None) -> bool:
    """Whether `st` replaces `than` as the latest state (by time, then seq):
    the one rule of the CLI's tables and the dashboard's rows."""
    return than is None or (st.time_ms, st.seq) >= (than.time_ms, than.seq)


def workload_row(name: str, desired: Manifest | None, st: WorkloadState | None) -> dict[str, Any]:
    """Workload `name` as its desired entry (if any) and state `st` (None: no
    state reported yet, Pending(Initial)) show it: the object
    `ank get workloads -o json` prints."""
    wl = desired.workloads.get(name) if desired else None
    agent = st.agent if st else (wl.agent or "" if wl else "")
    return {
        "name": name,
        "agent": agent,
        "runtime": (wl.runtime if wl else (st.runtime if st else "")),
        "state": st.execution_state.state if st else "Pending",
        "substate": st.execution_state.substate if st else "Initial",
        "additionalInfo": st.execution_state.additional_info if st else "",
        "restartCount": st.restart_count if st else 0,
        "exitCode": st.exit_code if st else None,
        "health": st.health if st else "",
        "lastError": st.last_error if st else "",
        "lastRestartMs": st.last_restart_ms if st else None,
        "instance": st.instance if st else "",
    }


def dashboard_workload_row(name: str, desired: Manifest | None, st: WorkloadState | None) -> dict[str, Any]:
    """`workload_row`, then its restart policy (None when no longer desired)
    and when the state was reported (0: none yet)."""
    wl = desired.workloads.get(name) if desired else None
    return {
        **workload_row(name, desired, st),
        "restartPolicy": wl.restart_policy if wl else None,
        "timeMs": st.time_ms if st else 0,
    }


def agent_row(
    name: str, *, alive: bool | None, status: AgentStatus | None, energy: EnergyReport | None
) -> dict[str, Any]:
    """An agent as its liveliness (None: not seen), its latest status and
    energy report show it: the object `ank get agents -o json` prints."""
    return {
        "name": name,
        "alive": alive,
        "arch": status.arch if status else "",
        "os": status.os if status else "",
        "tags": dict(status.tags) if status else {},
        "cpuPercent": status.cpu_percent if status else None,
        "freeMemoryBytes": status.free_memory_bytes if status else None,
        "runtimes": list(status.runtimes) if status else [],
        "workloads": len(status.workloads) if status else 0,
        "energyWh": energy.energy_wh if energy else None,
        "pose": [energy.x, energy.y] if energy and energy.x is not None else None,
    }


def dashboard_agent_row(
    name: str, *, alive: bool | None, status: AgentStatus | None, energy: EnergyReport | None
) -> dict[str, Any]:
    """`agent_row`, then the total memory and the energy report's capacity,
    time and source (for the page's energy bar and its age)."""
    return {
        **agent_row(name, alive=alive, status=status, energy=energy),
        "totalMemoryBytes": status.total_memory_bytes if status else None,
        "capacityWh": energy.capacity_wh if energy else None,
        "energyTimeMs": energy.time_ms if energy else None,
        "energySource": energy.source if energy else "",
    }


def event_row(event: Event) -> dict[str, Any]:
    """An event as on the wire (envelope included): what
    `ank get eventlog -o json` prints, one per line."""
    row: dict[str, Any] = msgspec.to_builtins(event)
    return row
