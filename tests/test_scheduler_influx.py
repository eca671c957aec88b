"""The InfluxDB energy source (services.scheduler.influx).

- InfluxQL path: against a REAL InfluxDB 1.6 server (tests/influx_fixture.py).
- Flux path: the real influxdb-client against a CANNED annotated-CSV reply
  served by a tiny HTTP server in this test (written in the format InfluxDB
  2.x's /api/v2/query returns); no real InfluxDB 2.x server is involved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from schemas.manifest import Workload
from schemas.messages import AgentStatus, Binding, EnergyReport
from services.bus import Bus
from services.scheduler.influx import (
    InfluxConfigError,
    InfluxEnergySource,
    InfluxError,
    InfluxSettings,
    Row,
    reports_from_rows,
    rows_from_influxql,
)
from tests.helpers import ROOT, Collector, child_env, stop_process, wait_for
from tests.influx_fixture import InfluxServer, running_influxd
from tests.test_scheduler_shell import FakePlanner

pytestmark = pytest.mark.influx

# When the fixture wrote its points: set by the fixture, not at collection,
# or a long test session would find the data stale by the time it runs.
NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    global NOW_MS
    with running_influxd(tmp_path_factory.mktemp("influxd")) as server:
        server.query("CREATE DATABASE turtlebot")
        NOW_MS = int(time.time() * 1000)
        t = NOW_MS - 5000
        server.write(
            "turtlebot",
            [
                f"battery,bot=tb1 wh=40.0 {t - 2000}",
                f"battery,bot=tb1 wh=38.5 {t}",  # the last one counts
                f"battery,bot=tb2 wh=71.25 {t}",
                f"battery,bot=tb3 wh=12.0 {t - 1000}",
                f"pose,bot=tb1 x=1.0,y=2.0 {t - 3000}",
                f"pose,bot=tb1 x=1.5,y=2.5 {t}",
                f"pose,bot=tb2 x=-3.0,y=0.25 {t}",
                f"pose,bot=tb9 x=9.0,y=9.0 {t}",  # pose but no battery: unusable
            ],
        )
        yield server


def settings(url: str, **kw: str) -> InfluxSettings:
    env = {"INFLUX_URL": url, "INFLUX_BUCKET": "turtlebot", "INFLUX_ORG": "keti", "INFLUX_API": "influxql", **kw}
    return InfluxSettings.from_env(env)


def test_influxql_poll_reads_the_last_battery_and_pose_of_every_bot(influx: InfluxServer) -> None:
    reports = InfluxEnergySource(settings(influx.url)).poll(NOW_MS)
    by_bot = {r.node: r for r in reports}
    assert sorted(by_bot) == ["tb1", "tb2", "tb3"]
    assert (by_bot["tb1"].energy_wh, by_bot["tb1"].x, by_bot["tb1"].y) == (38.5, 1.5, 2.5)
    assert by_bot["tb1"].time_ms == NOW_MS - 5000 and by_bot["tb1"].source == "influxdb"
    assert (by_bot["tb2"].energy_wh, by_bot["tb2"].x, by_bot["tb2"].y) == (71.25, -3.0, 0.25)
    assert (by_bot["tb3"].energy_wh, by_bot["tb3"].x) == (12.0, None)


def test_influxql_unknown_database_is_a_clear_error(influx: InfluxServer) -> None:
    source = InfluxEnergySource(settings(influx.url, INFLUX_DB="nosuchdb"))
    with pytest.raises(InfluxError, match="does database 'nosuchdb' exist"):
        source.poll(NOW_MS)


def test_influx_down_is_a_clear_error() -> None:
    source = InfluxEnergySource(settings("http://127.0.0.1:9"))
    with pytest.raises(InfluxError, match=r"InfluxQL query to http://127\.0\.0\.1:9 failed"):
        source.poll(NOW_MS)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INFLUX_URL": ""}, "INFLUX_URL is not set"),
        ({"INFLUX_URL": "influx:8086"}, "must start with http://"),
        ({"INFLUX_BUCKET": ""}, "INFLUX_BUCKET is not set"),
        ({"INFLUX_API": "sql"}, "INFLUX_API must be 'flux' or 'influxql'"),
        ({"INFLUX_API": "flux", "INFLUX_ORG": ""}, "INFLUX_ORG is not set"),
        ({"INFLUX_LOOKBACK": "1 hour"}, "INFLUX_LOOKBACK must be a duration"),
        ({"INFLUX_BUCKET": 'x"; drop'}, "INFLUX_BUCKET may hold only"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    base = {"INFLUX_URL": "http://i:8086", "INFLUX_BUCKET": "b", "INFLUX_ORG": "o", "INFLUX_API": "influxql"}
    with pytest.raises(InfluxConfigError, match=message):
        InfluxSettings.from_env({**base, **env})


def test_influxql_error_replies_and_garbage_are_errors_not_crashes() -> None:
    with pytest.raises(InfluxError, match="boom"):
        rows_from_influxql({"results": [{"statement_id": 0, "error": "boom"}]})
    with pytest.raises(InfluxError):
        rows_from_influxql(["not", "a", "reply"])
    assert rows_from_influxql({"results": [{"series": [{"name": "battery", "values": [[1, "x"]]}]}]}) == []


def test_rows_without_battery_make_no_report_and_latest_battery_wins() -> None:
    rows = [
        Row("a", "battery", "wh", 10.0, 100),
        Row("a", "battery", "wh", 9.0, 200),
        Row("b", "pose", "x", 1.0, 100),
        Row("", "battery", "wh", 5.0, 100),
    ]
    assert reports_from_rows(rows, 999) == [EnergyReport(node="a", energy_wh=9.0, time_ms=200, source="influxdb")]


def test_scheduler_places_by_the_energy_it_polls_from_influxdb(
    influx: InfluxServer, router: str, make_bus: Callable[[str], Bus]
) -> None:
    planner = FakePlanner(make_bus("planner"))
    planner.bus.queryable("ank/cmd/state", planner.answer)
    watcher = make_bus("watcher")
    energy, bindings = Collector(), Collector()
    watcher.subscribe("ank/energy/**", EnergyReport, energy)
    watcher.subscribe("ank/bind/**", Binding, bindings)
    env = child_env(router, INFLUX_URL=influx.url, INFLUX_BUCKET="turtlebot", INFLUX_API="influxql")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.scheduler.shell", "--influx", "--influx-interval-s", "0.5", "--resync-s", "2"],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_for(lambda: planner.queries, timeout=15, what="the scheduler reading the desired state")
        for bot in ("tb1", "tb2"):  # agents with no battery of their own: energy only from InfluxDB
            agent = make_bus(f"agent-{bot}")
            agent.liveliness_token(f"ank/agents/{bot}")
            agent.put(f"ank/agents/{bot}/status", AgentStatus(agent=bot, arch="arm64", os="linux"))
        got = energy.wait(
            lambda items: {k for k, m in items if isinstance(m, EnergyReport)} >= {"ank/energy/tb1", "ank/energy/tb2"},
            timeout=15,
            what="energy reports from InfluxDB on the bus",
        )
        assert got
        report = next(m for k, m in energy.items if k == "ank/energy/tb2" and isinstance(m, EnergyReport))
        assert report.energy_wh == 71.25 and report.source == "influxdb" and report.sender == "scheduler"
        planner.add("mapper", Workload(runtime="process", agent=""))
        binding = bindings.wait(
            lambda items: next((m for k, m in items if k == "ank/bind/mapper"), None), what="binding of mapper"
        )
        assert isinstance(binding, Binding) and binding.agent == "tb2"
    finally:
        stop_process(proc)


# -- Flux path: real influxdb-client, canned annotated-CSV reply -------------------

# The annotated CSV InfluxDB 2.x answers to the grouped query (one table per bot/measurement/field).
CANNED_FLUX_CSV = """\
#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string
#group,false,false,true,true,false,false,true,true,true
#default,_result,,,,,,,,
,result,table,_start,_stop,_time,_value,_field,_measurement,bot
,,0,2026-11-21T20:00:00Z,2026-11-21T21:00:00Z,2026-11-21T20:59:55Z,38.5,wh,battery,tb1
,,1,2026-11-21T20:00:00Z,2026-11-21T21:00:00Z,2026-11-21T20:59:57Z,71.25,wh,battery,tb2
,,2,2026-11-21T20:00:00Z,2026-11-21T21:00:00Z,2026-11-21T20:59:55Z,1.5,x,pose,tb1
,,3,2026-11-21T20:00:00Z,2026-11-21T21:00:00Z,2026-11-21T20:59:55Z,2.5,y,pose,tb1

"""


class CannedFlux:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                canned.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                data = CANNED_FLUX_CSV.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/csv; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CannedFlux:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_flux_poll_is_one_grouped_query_through_influxdb_client_canned_reply(tmp_path: Path) -> None:
    with CannedFlux() as canned:
        source = InfluxEnergySource(settings(canned.url, INFLUX_API="flux", INFLUX_TOKEN="s3cret"))
        try:
            reports = source.poll(NOW_MS)
        finally:
            source.close()
    assert len(canned.requests) == 1  # one query for all bots
    request = canned.requests[0]
    assert request["path"].startswith("/api/v2/query") and "org=keti" in request["path"]
    assert request["auth"] == "Token s3cret"
    query = request["body"]["query"]
    assert 'from(bucket: "turtlebot")' in query and "last()" in query
    assert 'group(columns: ["bot", "_measurement", "_field"])' in query
    by_bot = {r.node: r for r in reports}
    assert sorted(by_bot) == ["tb1", "tb2"]
    assert (by_bot["tb1"].energy_wh, by_bot["tb1"].x, by_bot["tb1"].y) == (38.5, 1.5, 2.5)
    assert by_bot["tb2"].time_ms == 1795294797000  # 2026-11-21T20:59:57Z


def test_kubernetes_mode_binds_by_the_energy_it_polls_from_influxdb(influx: InfluxServer, tmp_path: Path) -> None:
    """`--kubernetes --energy-source influx`, the seed's deployment: real
    InfluxDB 1.6, real kubernetes client, API server STAND-IN (tests/k8s_standin.py)."""
    from tests.k8s_standin import running_standin

    with running_standin() as standin:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(standin.kubeconfig())
        for bot in ("tb1", "tb2", "tb3"):  # the nodes are named after their robots, as in the seed
            standin.add_node(bot)
        env = {
            k: v
            for k, v in child_env("tcp/127.0.0.1:9").items()  # no bus in this mode
            if k != "KUBERNETES_SERVICE_HOST"
        }
        env.update(INFLUX_URL=influx.url, INFLUX_BUCKET="turtlebot", INFLUX_API="influxql")
        args = [
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--energy-source",
            "influx",
            "--influx-interval-s",
            "0.5",
        ]
        proc = subprocess.Popen([sys.executable, "-m", "services.scheduler.shell", *args], cwd=ROOT, env=env)
        try:
            wait_for(lambda: standin.watch_calls, timeout=15, what="the scheduler's watch")
            standin.create_pod("mapper")
            wait_for(lambda: standin.node_of("mapper"), timeout=10, what="mapper bound")
            assert standin.node_of("mapper") == "tb2"  # 71.25 Wh, the most in InfluxDB
        finally:
            stop_process(proc)
