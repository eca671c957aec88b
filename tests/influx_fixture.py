"""A REAL InfluxDB 1.x server (Debian's `influxd`) for the tests: started on
free loopback ports with a temporary configuration (data, meta and WAL in a
temp dir, reporting disabled, monitor store off), stopped afterwards. Skips
the test when `influxd` is not installed (scripts/system-deps.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, stop_process

CONFIG = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[retention]
  enabled = false
[shard-precreation]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
[continuous_queries]
  enabled = false
"""


@dataclass
class InfluxServer:
    url: str
    proc: subprocess.Popen[bytes]

    def query(self, q: str, db: str = "") -> bytes:
        params = urllib.parse.urlencode({"q": q, **({"db": db} if db else {})})
        req = urllib.request.Request(f"{self.url}/query?{params}", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return bytes(r.read())

    def write(self, db: str, lines: list[str]) -> None:
        """Line protocol, ms precision."""
        req = urllib.request.Request(
            f"{self.url}/write?db={db}&precision=ms", data="\n".join(lines).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 204, r.read()


@contextmanager
def running_influxd(tmp: Path) -> Iterator[InfluxServer]:
    influxd = shutil.which("influxd")
    if influxd is None:
        pytest.skip("influxd is not installed (apt-get install influxdb; scripts/system-deps.sh does it)")
    http_port, rpc_port = free_port(), free_port()
    config = tmp / "influxdb.conf"
    config.write_text(CONFIG.format(root=tmp, http_port=http_port, rpc_port=rpc_port))
    log = (tmp / "influxd.log").open("wb")
    proc = subprocess.Popen([influxd, "run", "-config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    server = InfluxServer(f"http://127.0.0.1:{http_port}", proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(
                    f"influxd exited with {proc.returncode}: {(tmp / 'influxd.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("influxd did not answer /ping within 20 s")
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)
        log.close()
