"""Tables and the live view of `ank get workloads` (rich)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from schemas.messages import WorkloadState
from services.cli import views
from services.cli.client import Client


def workloads_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(
        "WORKLOAD NAME", "AGENT", "RUNTIME", "EXECUTION STATE", "RESTARTS", "HEALTH", "ADDITIONAL INFO", title=title
    )
    for r in rows:
        style = views.STATE_STYLE.get(r["state"], "")
        table.add_row(
            r["name"],
            r["agent"],
            r["runtime"],
            Text(views.execution_text(r), style=style),
            str(r["restartCount"]),
            r["health"] or "-",
            r["additionalInfo"],
        )
    return table


def watch_workloads(client: Client, args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Redraws the table on every state change until Ctrl-C (or `stop`)."""
    stop = stop or threading.Event()
    changed = threading.Event()
    lock = threading.Lock()
    states: list[WorkloadState] = []

    def on_state(st: WorkloadState) -> None:
        with lock:
            states.append(st)
        changed.set()

    client.watch_states(on_state)
    cs = client.state()
    desired = cs.desired
    with lock:
        states[:0] = cs.workload_states
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console = Console()

    def render() -> Table:
        with lock:
            rows = views.workload_rows(
                desired,
                list(states),
                names=getattr(args, "names", None) or None,
                agent=getattr(args, "agent", None),
                state=getattr(args, "state", None),
            )
        return workloads_table(rows)

    try:
        if not console.is_terminal:
            # Not a terminal: one line per change, for logs and pipes.
            seen = len(states)
            while not stop.is_set():
                changed.wait(0.5)
                changed.clear()
                with lock:
                    new, seen = states[seen:], len(states)
                for st in new:
                    print(
                        f"{st.workload} ({st.agent or '-'}): {st.execution_state}"
                        + (f" {st.execution_state.additional_info}" if st.execution_state.additional_info else ""),
                        flush=True,
                    )
            return 0
        with Live(render(), console=console, refresh_per_second=8, transient=False) as live:
            while not stop.is_set():
                if changed.wait(0.25):
                    changed.clear()
                    try:
                        desired = client.state().desired
                    except Exception:
                        pass
                    live.update(render())
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
    return 0
