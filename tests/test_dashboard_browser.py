"""The dashboard page end to end in headless Chromium (Debian's, driven by
playwright): a WorkloadState published on the bus shows up on the page."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas import AgentStatus, EnergyReport, Event, ExecutionState, WorkloadState
from services.bus import Bus
from tests.helpers import wait_for
from tests.test_dashboard import TOKEN, running_dashboard

CHROMIUM = "/usr/bin/chromium"
NOW_MS = time.time_ns() // 1_000_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_playwright: Any
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]


def _state(state: str, substate: str, time_ms: int, **kw: Any) -> WorkloadState:
    return WorkloadState(
        workload="police-websocket",
        agent="police_agent",
        execution_state=ExecutionState(state, substate),  # type: ignore[arg-type]
        runtime="process",
        time_ms=NOW_MS + time_ms,
        **kw,
    )


def test_page_shows_a_published_state_change_live(router: str, make_bus: Callable[[str], Bus], tmp_path: Path) -> None:
    bus = make_bus("browser-test")
    with running_dashboard(router, "--resync", "0", token=TOKEN) as (base, _proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{base}/#token={TOKEN}")
            page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=10_000)
            cell = page.locator('tr[data-key="police_agent/police-websocket"] td.state')

            # Retried until the dashboard's subscription has reached the router (bounded).
            def shows(text: str, msg: WorkloadState) -> bool:
                bus.put("ank/state/police_agent/police-websocket", msg)
                try:
                    page.wait_for_function(
                        "([sel, text]) => document.querySelector(sel)?.textContent === text",
                        arg=['tr[data-key="police_agent/police-websocket"] td.state', text],
                        timeout=300,
                    )
                    return True
                except Exception:
                    return False

            wait_for(lambda: shows("Pending(Starting)", _state("Pending", "Starting", 1)), 15, "Pending on the page")
            bus.liveliness_token("ank/agents/police_agent")
            status = AgentStatus(
                agent="police_agent", arch="x86_64", os="linux", tags={"vehicle": "patrol-7"}, cpu_percent=17.0
            )
            bus.put("ank/agents/police_agent/status", status)
            bus.put(
                "ank/energy/police_agent",
                EnergyReport(node="police_agent", energy_wh=61.0, capacity_wh=80.0, x=3.0, y=4.0, time_ms=NOW_MS),
            )
            bus.put(
                "ank/events/restart",
                Event(
                    kind="restart",
                    subject="police-websocket",
                    message="police-websocket restarted (exit 1)",
                    severity="warning",
                    time_ms=NOW_MS,
                ),
            )
            running = _state("Running", "Ok", 2, restart_count=1)
            wait_for(lambda: shows("Running(Ok)", running), 15, "Running on the page")
            assert cell.text_content() == "Running(Ok)"
            row = page.locator('tr[data-key="police_agent/police-websocket"]')
            assert row.locator("td.restarts").text_content() == "1"
            page.wait_for_function("document.querySelector('#events').textContent.includes('restarted (exit 1)')")
            page.wait_for_function("document.querySelector('#agents').textContent.includes('61.0 Wh')")
            page.wait_for_function("document.querySelector('#agents').textContent.includes('(3.00, 4.00)')")
            page.wait_for_function("document.querySelector('#agents td.alive')?.textContent === '● live'")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 0
        finally:
            browser.close()
