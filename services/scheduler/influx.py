"""The InfluxDB energy source: the robots' battery energy and pose, in the
SDI edge scheduler's layout, turned into `EnergyReport`s.

Layout (as the seed's robots write it): measurement `battery` field `wh`,
measurement `pose` fields `x` and `y`, tag `bot` naming the robot (= the
agent or Kubernetes node). Settings come from the seed's environment
variables INFLUX_URL, INFLUX_TOKEN, INFLUX_ORG, INFLUX_BUCKET (plus
INFLUX_API = `flux` | `influxql`, INFLUX_DB for a 1.x database named other
than the bucket, INFLUX_LOOKBACK such as `1h`).

One poll is ONE grouped query for all bots (the last value of each field per
bot), never one query per robot:

- `flux` (InfluxDB 2.x): through influxdb-client's query API;
- `influxql` (InfluxDB 1.x): the v1 HTTP `/query` endpoint, both SELECTs in
  one request.

`reports_from_rows` (pure) turns the rows of either path into reports; a bot
with a pose but no battery reading yields nothing (the scheduler cannot use
it).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from schemas.messages import EnergyReport

log = logging.getLogger("ank.scheduler.influx")

_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w)$")
_IDENT = re.compile(r"^[A-Za-z0-9_.-]+$")


class InfluxConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


class InfluxError(RuntimeError):
    """A poll failed (server down, bad reply); the message says why."""


class InfluxSettings(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    token: str = ""
    org: str = ""
    bucket: str
    api: str = "flux"  # "flux" (2.x) or "influxql" (1.x /query)
    database: str = ""  # 1.x database; defaults to the bucket
    lookback: str = "1h"
    timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InfluxSettings:
        url = env.get("INFLUX_URL", "").strip()
        if not url:
            raise InfluxConfigError("INFLUX_URL is not set (e.g. http://influxdb:8086)")
        if not url.startswith(("http://", "https://")):
            raise InfluxConfigError(f"INFLUX_URL must start with http:// or https://, got {url!r}")
        bucket = env.get("INFLUX_BUCKET", "").strip()
        if not bucket:
            raise InfluxConfigError("INFLUX_BUCKET is not set (e.g. turtlebot)")
        api = env.get("INFLUX_API", "flux").strip().lower()
        if api not in ("flux", "influxql"):
            raise InfluxConfigError(f"INFLUX_API must be 'flux' or 'influxql', got {api!r}")
        org = env.get("INFLUX_ORG", "").strip()
        if api == "flux" and not org:
            raise InfluxConfigError("INFLUX_ORG is not set (needed by the Flux API of InfluxDB 2.x)")
        lookback = env.get("INFLUX_LOOKBACK", "1h").strip()
        if not _DURATION.match(lookback):
            raise InfluxConfigError(f"INFLUX_LOOKBACK must be a duration such as 30m or 1h, got {lookback!r}")
        database = env.get("INFLUX_DB", "").strip() or bucket
        for name, value in (("INFLUX_BUCKET", bucket), ("INFLUX_DB", database)):
            if not _IDENT.match(value):
                raise InfluxConfigError(f"{name} may hold only letters, digits, '_', '.', '-': {value!r}")
        return cls(
            url=url.rstrip("/"),
            token=env.get("INFLUX_TOKEN", ""),
            org=org,
            bucket=bucket,
            api=api,
            database=database,
            lookback=lookback,
        )


class Row(NamedTuple):
    bot: str
    measurement: str
    field: str
    value: float
    time_ms: int


def flux_query(settings: InfluxSettings) -> str:
    """All bots' last battery wh and pose x/y, grouped per bot and field."""
    return (
        f'from(bucket: "{settings.bucket}")\n'
        f"  |> range(start: -{settings.lookback})\n"
        '  |> filter(fn: (r) => (r._measurement == "battery" and r._field == "wh")'
        ' or (r._measurement == "pose" and (r._field == "x" or r._field == "y")))\n'
        '  |> group(columns: ["bot", "_measurement", "_field"])\n'
        "  |> last()\n"
    )


def influxql_query(settings: InfluxSettings) -> str:
    where = f'WHERE time > now() - {settings.lookback} GROUP BY "bot"'
    return (
        f'SELECT last("wh") AS "wh" FROM "battery" {where}; '
        f'SELECT last("x") AS "x", last("y") AS "y" FROM "pose" {where}'
    )


def reports_from_rows(rows: Iterable[Row], now_ms: int) -> list[EnergyReport]:
    """One report per bot that has a battery reading (pose optional)."""
    energy: dict[str, tuple[float, int]] = {}
    pose: dict[str, dict[str, float]] = {}
    for row in rows:
        if not row.bot:
            continue
        if row.measurement == "battery" and row.field == "wh":
            if row.bot not in energy or row.time_ms >= energy[row.bot][1]:
                energy[row.bot] = (row.value, row.time_ms)
        elif row.measurement == "pose" and row.field in ("x", "y"):
            pose.setdefault(row.bot, {})[row.field] = row.value
    reports = []
    for bot, (wh, time_ms) in sorted(energy.items()):
        where = pose.get(bot, {})
        reports.append(
            EnergyReport(
                node=bot,
                energy_wh=wh,
                x=where.get("x"),
                y=where.get("y"),
                time_ms=time_ms or now_ms,
                source="influxdb",
            )
        )
    return reports


def rows_from_influxql(reply: Any) -> list[Row]:
    """Rows of a v1 /query JSON reply (epoch=ms). Raises InfluxError on an error reply."""
    if not isinstance(reply, dict):
        raise InfluxError(f"unexpected InfluxQL reply: {str(reply)[:200]}")
    if "error" in reply:
        raise InfluxError(f"InfluxQL error: {reply['error']}")
    results = [r for r in reply.get("results") or [] if isinstance(r, dict)]
    # A failed statement makes the later ones "not executed": name the real cause first.
    errors = sorted((r["error"] == "not executed", str(r["error"])) for r in results if "error" in r)
    if errors:
        raise InfluxError("InfluxQL error: " + "; ".join(dict.fromkeys(e for _, e in errors)))
    rows: list[Row] = []
    for result in results:
        for series in result.get("series") or []:
            measurement = str(series.get("name", ""))
            bot = str((series.get("tags") or {}).get("bot", ""))
            columns = list(series.get("columns") or [])
            for values in series.get("values") or []:
                record = dict(zip(columns, values, strict=False))
                time_ms = _as_int(record.pop("time", 0))
                for name, value in record.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        rows.append(Row(bot, measurement, name, float(value), time_ms))
    return rows


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class InfluxEnergySource:
    """Polls InfluxDB with one grouped query; `poll()` returns the reports."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self._client: Any = None

    def poll(self, now_ms: int) -> list[EnergyReport]:
        rows = self._flux_rows() if self.settings.api == "flux" else self._influxql_rows()
        return reports_from_rows(rows, now_ms)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None

    def _influxql_rows(self) -> list[Row]:
        import urllib.error  # deferred: a scheduler without InfluxDB never loads http/ssl/email
        import urllib.parse
        import urllib.request

        s = self.settings
        params = urllib.parse.urlencode({"db": s.database, "q": influxql_query(s), "epoch": "ms"})
        request = urllib.request.Request(f"{s.url}/query?{params}")
        if s.token:
            request.add_header("Authorization", f"Token {s.token}")
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise InfluxError(f"InfluxQL query to {s.url} failed: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise InfluxError(f"InfluxQL query to {s.url} failed: {exc}") from exc
        try:
            reply = json.loads(body)
        except ValueError as exc:
            raise InfluxError(f"InfluxQL reply from {s.url} is not JSON: {body[:200]!r}") from exc
        try:
            return rows_from_influxql(reply)
        except InfluxError as exc:
            if str(exc).endswith(": not executed"):
                # InfluxDB 1.x answers a multi-statement query on a missing database with only this.
                raise InfluxError(f"{exc} (does database {s.database!r} exist on {s.url}?)") from None
            raise

    def _flux_rows(self) -> list[Row]:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # only this path needs it

        s = self.settings
        if self._client is None:
            self._client = InfluxDBClient(url=s.url, token=s.token, org=s.org, timeout=int(s.timeout_s * 1000))
        try:
            tables = self._client.query_api().query(flux_query(s), org=s.org)
        except Exception as exc:  # the client raises ApiException, urllib3 errors, ...
            raise InfluxError(f"Flux query to {s.url} failed: {exc}") from exc
        rows = []
        for table in tables:
            for record in table.records:
                value = record.get_value()
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                when = record.get_time()
                time_ms = int(when.timestamp() * 1000) if when is not None else 0
                bot = str(record.values.get("bot") or "")
                rows.append(Row(bot, str(record.get_measurement()), str(record.get_field()), float(value), time_ms))
        return rows


def poll_until_stopped(
    source: InfluxEnergySource,
    deliver: Callable[[list[EnergyReport]], None],
    stopping: threading.Event,
    interval_s: float,
    wall_ms: Callable[[], int],
) -> None:
    """Polls every `interval_s` and hands each poll's reports to `deliver`, until
    `stopping` is set (run it on its own thread). Failures are logged, never raised."""
    failures = 0
    while not stopping.is_set():
        try:
            reports = source.poll(wall_ms())
            failures = 0
            deliver(reports)
            log.debug("influx: %d energy reports", len(reports))
        except InfluxError as exc:
            failures += 1
            # Say it once, then only now and then: a database that is down must not flood the log.
            if failures == 1 or failures % 20 == 0:
                log.warning("influx poll failed (%d in a row): %s", failures, exc)
        except Exception:
            log.exception("influx poll")
        stopping.wait(interval_s)
    source.close()
