"""What the CLI shows, as pure functions of the contract's values: the rows
of `ank get workloads` and `ank get agents` (each row built by
ank_common.views, the one the dashboard uses too), the detail of
`ank get workload NAME`, and whether an apply has settled. No I/O here;
rendering to the terminal is main.py's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from ank_common.views import agent_row, is_newer, workload_row
from schemas.manifest import DependencyCondition, Manifest
from schemas.messages import AgentStatus, EnergyReport, WorkloadState
from schemas.state import ADD_CONDITION_MET_BY

# States after which `ank apply` stops waiting for a workload: it is running,
# finished, failed, waiting on something outside this apply, or unplaceable.
TRANSIENT = {("Pending", "Initial"), ("Pending", "Starting"), ("Stopping", "Stopping")}

STATE_STYLE = {
    "Running": "green",
    "Succeeded": "cyan",
    "Pending": "yellow",
    "Stopping": "magenta",
    "Failed": "red",
    "NotScheduled": "bright_black",
    "AgentDisconnected": "red",
    "Removed": "bright_black",
}


def latest_states(states: Iterable[WorkloadState]) -> dict[str, WorkloadState]:
    """The newest state per workload name (by time, then seq)."""
    out: dict[str, WorkloadState] = {}
    for st in states:
        if is_newer(st, out.get(st.workload)):
            out[st.workload] = st
    return out


def workload_rows(
    desired: Manifest | None,
    states: Iterable[WorkloadState],
    *,
    names: list[str] | None = None,
    agent: str | None = None,
    state: str | None = None,
) -> list[dict[str, Any]]:
    """Rows for every desired workload (and every known state of one no longer
    desired but not yet Removed), filtered as `ank get workloads` filters."""
    latest = latest_states(states)
    wanted = set(desired.workloads) if desired else set()
    wanted |= {n for n, st in latest.items() if st.execution_state.state != "Removed"}
    rows = [workload_row(n, desired, latest.get(n)) for n in sorted(wanted)]
    if names:
        rows = [r for r in rows if r["name"] in names]
    if agent is not None:
        rows = [r for r in rows if r["agent"] == agent]
    if state is not None:
        rows = [r for r in rows if r["state"].lower() == state.lower()]
    return rows


def agent_rows(statuses: dict[str, AgentStatus], energy: dict[str, EnergyReport]) -> list[dict[str, Any]]:
    """`ank get agents -o json`: one row per agent with a status (alive: it
    reports), in the order the statuses came."""
    return [agent_row(name, alive=True, status=st, energy=energy.get(name)) for name, st in statuses.items()]


def execution_text(row: dict[str, Any]) -> str:
    return f"{row['state']}({row['substate']})" if row["substate"] else row["state"]


def workload_detail(name: str, desired: Manifest | None, states: Iterable[WorkloadState]) -> list[tuple[str, str]]:
    """`ank get workload NAME`: label/value lines, with each dependency's
    condition and its current state."""
    latest = latest_states(states)
    row = workload_row(name, desired, latest.get(name))
    wl = desired.workloads.get(name) if desired else None
    lines = [
        ("Name", name),
        ("Agent", row["agent"] or "(none)"),
        ("Runtime", row["runtime"]),
        ("State", execution_text(row)),
        ("Reason", row["additionalInfo"] or "-"),
        ("Restart policy", wl.restart_policy if wl else "-"),
        ("Restart count", str(row["restartCount"])),
        ("Last exit code", "-" if row["exitCode"] is None else str(row["exitCode"])),
        ("Last error", row["lastError"] or "-"),
        ("Last restart", _time_text(row["lastRestartMs"])),
        ("Health", row["health"] or "-"),
    ]
    if wl and wl.dependencies:
        for dep, cond in sorted(wl.dependencies.items()):
            lines.append(("Dependency", f"{dep}: {dependency_text(cond, latest.get(dep))}"))
    else:
        lines.append(("Dependencies", "none"))
    return lines


def dependency_text(condition: DependencyCondition, st: WorkloadState | None) -> str:
    """e.g. `ADD_COND_RUNNING: WAITING (current: Pending(Starting))`."""
    current = str(st.execution_state) if st else "absent"
    met = st is not None and ADD_CONDITION_MET_BY[condition] == (st.execution_state.state, st.execution_state.substate)
    return f"{condition}: {'MET' if met else 'WAITING'} (current: {current})"


def _time_text(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def settled(
    row_state: tuple[str, str] | None,
    *,
    deleting: bool,
) -> bool:
    """Whether `ank apply` may stop waiting for a workload in this state."""
    if row_state is None:
        return False
    if deleting:
        return row_state[0] == "Removed"
    return row_state not in TRANSIENT and row_state[0] != "Removed"
