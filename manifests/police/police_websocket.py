"""police-websocket stand-in: the police officers' live view with emergency
alert filtering.

- subscribes the Kuksa datapoints (`kuksa/**`, from kuksa-bridge);
- runs the speed alert filter (manifests.police.alerts): a vehicle over the
  limit (`--limit`, default 100 km/h) raises one alert on `police/alerts`;
- serves on a loopback port (`--port`, default 8082): `/` a page with the
  latest datapoints and alerts, live over the WebSocket `/ws`; `/api/latest`
  the same as JSON.

All state lives on the web server's asyncio loop; Zenoh callbacks only post
onto it (services.dashboard.web.Fanout).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from manifests.police.alerts import ALERT_KEY, Alert, SpeedAlertFilter, on_speed
from manifests.police.kuksa_bridge import VssDatapoint
from manifests.police.program import program_bus, setup_program_logging
from services.bus import Bus
from services.dashboard.web import Fanout, run_server

DATAPOINT_KEYS = "kuksa/**"
DEFAULT_PORT = 8082
log = logging.getLogger("police-websocket")


class PoliceView:
    """The latest datapoints and alerts (touched on the web loop only)."""

    def __init__(self, bus: Bus, fanout: Fanout, alert_filter: SpeedAlertFilter, keep_alerts: int = 50) -> None:
        self.bus = bus
        self.fanout = fanout
        self.alert_filter = alert_filter
        self.datapoints: dict[str, VssDatapoint] = {}
        self.alerts: collections.deque[Alert] = collections.deque(maxlen=keep_alerts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "datapoints": {path: msgspec.to_builtins(dp) for path, dp in sorted(self.datapoints.items())},
            "alerts": [msgspec.to_builtins(a) for a in self.alerts],
            "limitKmh": self.alert_filter.limit_kmh,
        }

    def on_datapoint(self, key: str, payload: bytes, time_ms: int) -> None:
        try:
            point = msgspec.json.decode(payload, type=VssDatapoint)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignored a malformed datapoint on %s: %s", key, exc)
            return
        self.datapoints[point.path] = point
        self.fanout.publish(_json({"type": "datapoint", "datapoint": msgspec.to_builtins(point)}))
        speed = point.dp.value
        if point.path != "Vehicle.Speed" or isinstance(speed, bool) or not isinstance(speed, int | float):
            return
        self.alert_filter, alert = on_speed(self.alert_filter, float(speed), time_ms, self._location())
        if alert is None:
            return
        self.alerts.append(alert)
        log.warning("ALERT %s", alert.message)
        try:
            self.bus.put(ALERT_KEY, msgspec.json.encode(alert))
        except Exception as exc:  # the page still shows it; the bus may be reconnecting
            log.error("could not publish the alert on %s: %s", ALERT_KEY, exc)
        self.fanout.publish(_json({"type": "alert", "alert": msgspec.to_builtins(alert)}))

    def _location(self) -> tuple[float, float] | None:
        point = self.datapoints.get("Vehicle.CurrentLocation")
        value = point.dp.value if point is not None else None
        if isinstance(value, dict):
            lat, lon = value.get("Latitude"), value.get("Longitude")
            if isinstance(lat, int | float) and isinstance(lon, int | float):
                return float(lat), float(lon)
        return None


def _json(obj: object) -> str:
    return msgspec.json.encode(obj).decode()


def build_app(bus: Bus, alert_filter: SpeedAlertFilter) -> Starlette:
    fanout = Fanout()
    view = PoliceView(bus, fanout, alert_filter)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        fanout.bind(asyncio.get_running_loop())
        bus.subscribe_raw(
            DATAPOINT_KEYS,
            lambda key, payload: fanout.post(view.on_datapoint, key, payload, time.time_ns() // 1_000_000),
        )
        log.info("watching %s; alerting over %.0f km/h on %s", DATAPOINT_KEYS, alert_filter.limit_kmh, ALERT_KEY)
        yield

    async def page(_request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def latest(_request: Request) -> JSONResponse:
        return JSONResponse(view.snapshot())

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await fanout.stream(websocket, [_json({"type": "snapshot", **view.snapshot()})])

    return Starlette(
        routes=[Route("/", page), Route("/api/latest", latest), WebSocketRoute("/ws", live)],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="police-websocket", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("POLICE_HTTP_PORT", DEFAULT_PORT)))
    parser.add_argument("--limit", type=float, default=100.0, help="speed limit in km/h (default 100)")
    args = parser.parse_args(argv)
    setup_program_logging("police-websocket")
    with program_bus("police-websocket") as bus:
        log.info("serving http://%s:%d/", args.host, args.port)
        code = run_server(
            build_app(bus, SpeedAlertFilter(args.limit, args.limit * 0.95)), args.host, args.port, "police-websocket"
        )
    log.info("stopped")
    return code


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Police monitoring</title>
<style>
body{font-family:sans-serif;margin:1.5em;background:#10151c;color:#e8eef5}
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #334}
.alert{color:#ff6b6b}#status{color:#8a9}
</style></head><body>
<h1>Police monitoring</h1><p id="status">connecting…</p>
<h2>Vehicle</h2><table><thead><tr><th>signal</th><th>value</th><th>time</th></tr></thead>
<tbody id="datapoints"></tbody></table>
<h2>Emergency alerts</h2><ul id="alerts"></ul>
<script>
const points = {};
function show(v){return typeof v === "object" ? JSON.stringify(v) : String(v);}
function renderPoints(){
  const rows = Object.keys(points).sort().map(p => {
    const tr = document.createElement("tr");
    for (const text of [p, show(points[p].dp.value), points[p].dp.ts]) {
      const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
    }
    tr.dataset.path = p; return tr;
  });
  document.getElementById("datapoints").replaceChildren(...rows);
}
function addAlert(a){
  const li = document.createElement("li"); li.className = "alert";
  li.textContent = new Date(a.time_ms).toLocaleTimeString() + " " + a.message;
  document.getElementById("alerts").prepend(li);
}
function connect(){
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { document.getElementById("status").textContent = "live"; };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "snapshot") {
      for (const k in points) delete points[k];
      Object.assign(points, m.datapoints);
      document.getElementById("alerts").replaceChildren(); m.alerts.forEach(addAlert);
    } else if (m.type === "datapoint") { points[m.datapoint.path] = m.datapoint; }
    else if (m.type === "alert") { addAlert(m.alert); }
    renderPoints();
  };
  ws.onclose = () => { document.getElementById("status").textContent = "reconnecting…"; setTimeout(connect, 1000); };
}
connect();
</script></body></html>
"""


if __name__ == "__main__":
    raise SystemExit(main())
