"""Eclipse Ankaios's shapes of what the CLI prints, as pure functions: the
plain space-aligned tables, the complete state document (`workloadStates`
keyed agent -> workload -> instance, `agents` keyed by name with tags and
status), field-mask selection and the state-change events of
`ank get events`. No I/O, no clock here: main.py passes the time in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from schemas.messages import AgentStatus, CompleteState, WorkloadState
from services.cli import views

WORKLOAD_HEADERS = ("WORKLOAD NAME", "AGENT", "RUNTIME", "EXECUTION STATE", "ADDITIONAL INFO")
AGENT_HEADERS = ("NAME", "WORKLOADS", "CPU USAGE", "FREE MEMORY")
CONFIG_HEADERS = ("CONFIG",)


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Ankaios's borderless table: every cell padded by one space on each
    side, cells separated by one space, columns as wide as their widest cell
    (the last one too: scripts cut rows at the header's column positions,
    the last column ending where the header line ends). A cell's line breaks
    become spaces so that a row stays one line."""
    body = [[_one_line(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *body]:
        lines.append(" ".join(f" {cell:<{widths[i]}} " for i, cell in enumerate(row)))
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines()) if text else ""


def workload_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """`ank get workloads` (and `ank apply`'s final table)."""
    return plain_table(
        WORKLOAD_HEADERS,
        ((r["name"], r["agent"], r["runtime"], views.execution_text(dict(r)), r["additionalInfo"] or "") for r in rows),
    )


def agents_table(statuses: Mapping[str, AgentStatus], workload_counts: Mapping[str, int]) -> str:
    """`ank get agents`: one row per connected agent."""
    return plain_table(
        AGENT_HEADERS,
        (
            (name, str(workload_counts.get(name, 0)), f"{round(st.cpu_percent)}%", f"{st.free_memory_bytes}B")
            for name, st in sorted(statuses.items())
        ),
    )


def workload_states_map(states: Iterable[WorkloadState]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """agent -> workload -> instance -> {state, subState, additionalInfo}, the
    newest state of each workload; Removed ones are absent (as in Ankaios)."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, st in sorted(views.latest_states(states).items()):
        es = st.execution_state
        if es.state == "Removed":
            continue
        agent = st.agent or ""
        out.setdefault(agent, {})[name] = {
            st.instance or "0": {"state": es.state, "subState": es.substate, "additionalInfo": es.additional_info}
        }
    return out


def agents_map(names: Iterable[str], statuses: Mapping[str, AgentStatus]) -> dict[str, dict[str, Any]]:
    """name -> {tags, status: {cpuUsage, freeMemory}} for every connected agent."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names) | set(statuses)):
        st = statuses.get(name)
        entry: dict[str, Any] = {"tags": dict(st.tags) if st else {}}
        if st is not None:
            entry["status"] = {
                "cpuUsage": {"cpuUsage": round(st.cpu_percent)},
                "freeMemory": {"freeMemory": st.free_memory_bytes},
            }
        out[name] = entry
    return out


def state_document(cs: CompleteState, statuses: Mapping[str, AgentStatus]) -> dict[str, Any]:
    """The complete state as `ank get state` prints it."""
    return {
        "desiredState": msgspec.to_builtins(cs.desired),
        "workloadStates": workload_states_map(cs.workload_states),
        "agents": agents_map(cs.agents, statuses),
    }


def select(doc: Mapping[str, Any], masks: Sequence[str]) -> dict[str, Any]:
    """The parts of `doc` the field masks name (dot-separated paths, `*`
    matching any key), with their enclosing structure; no mask: everything.
    A mask naming nothing present selects nothing."""
    if not masks:
        return dict(doc)
    out: dict[str, Any] = {}
    for mask in masks:
        _merge(out, _pick(doc, [p for p in mask.split(".") if p]))
    return out


def _pick(node: Any, path: list[str]) -> Any:
    if not path:
        return node
    if not isinstance(node, Mapping):
        return None
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    picked = {k: v for k in keys if (v := _pick(node[k], rest)) is not None}
    return picked or None


def _merge(into: dict[str, Any], part: Any) -> None:
    if not isinstance(part, Mapping):
        return
    for k, v in part.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v


def altered_fields(old: Any, new: Any, prefix: str = "") -> tuple[list[str], list[str], list[str]]:
    """(added, updated, removed) field paths between two selections: a key
    present only in `new` is added, only in `old` removed (reported at the
    highest level that went), a leaf whose value changed updated."""
    added: list[str] = []
    updated: list[str] = []
    removed: list[str] = []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in new:
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                added.append(path)
            else:
                a, u, r = altered_fields(old[k], new[k], path)
                added += a
                updated += u
                removed += r
        removed += [f"{prefix}.{k}" if prefix else str(k) for k in old if k not in new]
    elif old != new:
        updated.append(prefix)
    return added, updated, removed


def rfc3339(ms: int) -> str:
    """A wall-clock time in ms since the epoch as RFC 3339 (UTC, microseconds)."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_document(old: Mapping[str, Any] | None, new: Mapping[str, Any], now_ms: int) -> dict[str, Any] | None:
    """One `ank get events` document: the change from `old` to `new` (the
    selected parts of the complete state), or None when nothing changed.
    `old` None: the first document, the current state itself (what
    --include-current-state prints)."""
    if old is None:
        added: list[str] = []
        updated: list[str] = []
        removed: list[str] = []
    else:
        added, updated, removed = altered_fields(old, new)
        if not (added or updated or removed):
            return None
    return {
        "timestamp": rfc3339(now_ms),
        "addedFields": added,
        "updatedFields": updated,
        "removedFields": removed,
        "completeState": dict(new),
    }


def config_names(cs: CompleteState) -> list[str]:
    return sorted(cs.desired.configs)
