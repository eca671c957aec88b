"""Tables and the live view of `ank get workloads` (rich)."""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ank_common.views import is_newer
from schemas.messages import WorkloadState
from services.cli import views
from services.cli.client import Client

MAX_PENDING_LINES = 10_000  # state lines not yet printed (a pipe that stalls loses the oldest)


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
    """Redraws the table on every state change until Ctrl-C (or `stop`).
    Memory stays bounded however long it runs: only the latest state per
    workload is kept, and the lines not yet printed in a bounded queue."""
    stop = stop or threading.Event()
    changed = threading.Event()
    lock = threading.Lock()
    latest: dict[str, WorkloadState] = {}
    unprinted: collections.deque[WorkloadState] = collections.deque(maxlen=MAX_PENDING_LINES)

    def keep(st: WorkloadState) -> None:
        if is_newer(st, latest.get(st.workload)):
            latest[st.workload] = st

    def on_state(st: WorkloadState) -> None:
        with lock:
            keep(st)
            unprinted.append(st)
        changed.set()

    client.watch_states(on_state)
    cs = client.state()
    desired = cs.desired
    with lock:
        for st in cs.workload_states:
            keep(st)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console = Console()

    def render() -> Table:
        with lock:
            rows = views.workload_rows(
                desired,
                list(latest.values()),
                names=getattr(args, "names", None) or None,
                agent=getattr(args, "agent", None),
                state=getattr(args, "state", None),
            )
        return workloads_table(rows)

    try:
        if not console.is_terminal:
            # Not a terminal: one line per change, for logs and pipes.
            while not stop.is_set():
                changed.wait(0.5)
                changed.clear()
                with lock:
                    new = list(unprinted)
                    unprinted.clear()
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
