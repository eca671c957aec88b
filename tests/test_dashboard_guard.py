"""The dashboard against a web page elsewhere and a local user (issue 13,
row 4): Host and Origin checked (403), the token from a mode-600 file made
by `ank up`, required on a secured bus, never logged."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from services.bus import secure
from services.dashboard import token as dashboard_token
from tests.helpers import ROOT, child_env, free_port, stop_process, wait_port
from tests.test_security import certs  # noqa: F401 - shared fixture


def _request(port: int, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_host_and_origin_of_another_site_are_refused(router: str, tmp_path: Path) -> None:
    token_file = tmp_path / "t"
    token, _ = dashboard_token.ensure(token_file)
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.dashboard", "--port", str(port), "--token-file", str(token_file)],
            cwd=ROOT,
            env=child_env(router),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port)
        auth = {"Authorization": f"Bearer {token}"}
        own = f"127.0.0.1:{port}"
        assert _request(port, "/api/v1/workloads", {**auth, "Host": own}) == 200
        assert _request(port, "/api/v1/workloads", {**auth, "Host": f"localhost:{port}"}) == 200
        assert _request(port, "/api/v1/workloads", {**auth, "Host": own, "Origin": f"http://{own}"}) == 200
        assert _request(port, "/api/v1/workloads", {**auth, "Host": f"evil.example:{port}"}) == 403
        assert _request(port, "/api/v1/workloads", {**auth, "Host": "127.0.0.1:1"}) == 403
        assert _request(port, "/", {"Host": f"evil.example:{port}"}) == 403
        assert _request(port, "/api/v1/workloads", {**auth, "Host": own, "Origin": "http://evil.example"}) == 403
        assert _request(port, f"/api/v1/events?access_token={token}", {"Host": own}) == 200
        assert _request(port, "/api/v1/events?access_token=wrong", {"Host": own}) == 401

        path = f"/api/v1/stream?access_token={token}"
        url = f"ws://{own}{path}"
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, origin=Origin("http://evil.example"), open_timeout=5).close()
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:  # DNS rebinding: evil.example resolving to 127.0.0.1
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            ws_connect(f"ws://evil.example:{port}{path}", sock=sock, open_timeout=5).close()
        assert refused.value.response.status_code == 403
        with ws_connect(url, origin=Origin(f"http://{own}"), open_timeout=5) as ws:
            assert '"snapshot"' in str(ws.recv(timeout=5))
    finally:
        stop_process(proc)
    assert token not in log.read_text()


def test_a_token_file_readable_by_others_is_refused(router: str, tmp_path: Path) -> None:
    token_file = tmp_path / "t"
    token_file.write_text("abc\n")
    token_file.chmod(0o644)
    argv = [sys.executable, "-m", "services.dashboard", "--port", str(free_port()), "--token-file", str(token_file)]
    done = subprocess.run(argv, cwd=ROOT, env=child_env(router), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "readable by others" in done.stderr and "abc" not in done.stderr


def test_a_dashboard_on_a_secured_bus_needs_a_token(certs: Path, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "cli.json5"
    secure.write_config(secure.client_config(certs, "cli", "tls/127.0.0.1:1"), config)
    env = child_env("tls/127.0.0.1:1")
    env.pop("ANK_DASHBOARD_TOKEN", None)
    argv = [sys.executable, "-m", "services.dashboard", "--port", str(free_port()), "--zenoh-config", str(config)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "needs a token" in done.stderr


def test_ank_up_makes_a_private_token_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dashboard_token.NO_TOKEN_ENV, raising=False)
    first = dashboard_token.prepare(tmp_path, secure=False)
    path = dashboard_token.token_path(tmp_path)
    token = path.read_text().strip()
    assert first is not None and token in first and len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    second = dashboard_token.prepare(tmp_path, secure=False)
    assert second is not None and token not in second and str(path) in second
    assert path.read_text().strip() == token
    monkeypatch.setenv(dashboard_token.NO_TOKEN_ENV, "1")
    assert dashboard_token.argv(tmp_path, secure=False) == []
    assert dashboard_token.argv(tmp_path, secure=True) == ["--token-file", str(path)]
    assert os.access(path, os.R_OK)
