"""podman's REST API service, as the podman connector uses it (podman-py).

A `podman run -d` through the CLI pays for a new podman process and its
storage lock every time; one long-lived `podman system service` answering on
a Unix socket does not. The connector uses, in this order:

1. the socket named by ANK_PODMAN_SOCKET, or the system's rootful socket
   (/run/podman/podman.sock) where one answers;
2. else `podman system service` started as the agent's child on a private
   socket in its run folder, with the same environment as every podman
   command (the project's containers.conf through CONTAINERS_CONF); it ends
   with the agent (close, or the kernel's parent-death signal on kill -9);
3. else (ANK_PODMAN_API=cli, or no service answered in time) the CLI.

The choice is made once, when the connector first needs podman (its first
workload or adoption: an agent that runs no container starts no service and
pays nothing for it), and reported in the agent's status.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.agent.runtimes.podman.cli import end_process
from services.agent.runtimes.podman.spec import ApiRun

if TYPE_CHECKING:
    from services.agent.runtimes.podman.cli import PodmanCli

log = logging.getLogger("ank.agent.podman")

API_ENV = "ANK_PODMAN_API"  # "cli": never the API; anything else: the API where it runs
SOCKET_ENV = "ANK_PODMAN_SOCKET"
SYSTEM_SOCKETS = (Path("/run/podman/podman.sock"),)
SERVICE_READY_S = 15.0
# A Unix socket path is at most 107 bytes.
MAX_SOCKET_PATH = 100


class ApiFailure(Exception):
    """The service answered a request with an error (or not at all)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class PodmanApi:
    """The few libpod endpoints the connector needs, through podman-py's client."""

    def __init__(self, socket_path: str) -> None:
        from podman import PodmanClient  # deferred: only agents that run containers pay for it

        self.socket_path = socket_path
        self.client = PodmanClient(base_url=f"unix://{socket_path}", timeout=300)
        self.api = self.client.api

    def ping(self, timeout: float = 5.0) -> bool:
        try:
            return bool(self.api.get("/_ping", timeout=timeout).status_code == 200)
        except Exception:
            return False

    def _call(self, method: str, path: str, *, ok: tuple[int, ...], **kw: Any) -> Any:
        from podman.errors import APIError

        try:
            response = self.api._request(method, path, **kw)
        except APIError as exc:
            raise ApiFailure(f"podman API {method} {path}: {exc}") from None
        except Exception as exc:  # requests' own errors on a broken connection
            raise ApiFailure(f"podman API {method} {path}: {exc}") from None
        if response.status_code not in ok:
            try:
                message = str(response.json().get("message", response.text))
            except (ValueError, AttributeError):
                message = response.text
            raise ApiFailure(message.strip() or f"HTTP {response.status_code}", status=response.status_code)
        return response

    def run(self, run: ApiRun) -> str:
        """Creates and starts the container; its id. A name in use gives way
        when the command line said `--replace`. Raises ApiFailure; a container
        that was created but did not start is left for the caller to remove
        (its id is in the failure's message context: the run's labels find it)."""
        body = json.dumps(run.spec)
        headers = {"Content-Type": "application/json"}
        try:
            created = self._call("post", "/containers/create", ok=(201,), data=body, headers=headers)
        except ApiFailure as exc:
            if not (run.replace and exc.status in (409, 500) and "in use" in str(exc) and run.spec.get("name")):
                raise
            self.remove(str(run.spec["name"]))
            created = self._call("post", "/containers/create", ok=(201,), data=body, headers=headers)
        container_id = str(created.json()["Id"])
        self._call("post", f"/containers/{container_id}/start", ok=(204, 304))
        return container_id

    def start(self, container: str) -> None:
        """Starts an existing (created or ended) container."""
        self._call("post", f"/containers/{container}/start", ok=(204, 304))

    def remove(self, container: str, *, timeout_s: int = 0) -> None:
        """Force-removes a container; one already gone is no error."""
        self._call("delete", f"/containers/{container}", ok=(200, 204, 404), params={"force": True, "t": timeout_s})

    def stop(self, container: str, grace_s: int) -> None:
        self._call(
            "post",
            f"/containers/{container}/stop",
            ok=(204, 304, 404),
            params={"timeout": grace_s},
            timeout=grace_s + 60,
        )

    def ps(self, labels: list[str]) -> list[dict[str, object]]:
        """Every container (running or not) carrying these labels, in the
        shape of `podman ps --format json` (Id, Names, State, Labels)."""
        filters = json.dumps({"label": labels}) if labels else None
        params: dict[str, Any] = {"all": True}
        if filters:
            params["filters"] = filters
        rows = self._call("get", "/containers/json", ok=(200,), params=params).json()
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def stats(self, containers: list[str]) -> list[dict[str, object]]:
        """One sample (stream=false) of these containers' usage: libpod's
        rows (Name, ContainerID, CPU %, MemUsage bytes). Podman 4.3 answers
        200 with a null Stats and an Error when one of them is gone: that is
        an ApiFailure, as the CLI's failing `podman stats` is."""
        params: dict[str, Any] = {"containers": containers, "stream": "false"}
        body = self._call("get", "/containers/stats", ok=(200,), params=params).json()
        rows = body.get("Stats") if isinstance(body, dict) else None
        if not isinstance(rows, list) or body.get("Error"):
            raise ApiFailure(f"podman API stats: {body.get('Error') if isinstance(body, dict) else body!r}")
        return [row for row in rows if isinstance(row, dict)]

    def logs(self, container: str, *, follow: bool, tail: int | None) -> Generator[bytes, None, None]:
        """The body of `GET /containers/{id}/logs` (stdout and stderr; see
        core.LogLines) in pieces as they come. Following, it waits for output
        without a read timeout, as `podman logs --follow` does; the response
        is closed when the caller stops iterating. Raises ApiFailure before
        the first piece when the service refuses."""
        params: dict[str, Any] = {"stdout": "true", "stderr": "true", "follow": "true" if follow else "false"}
        if tail is not None:
            params["tail"] = str(tail)
        timeout: Any = (30, None) if follow else 300
        path = f"/containers/{container}/logs"
        response = self._call("get", path, ok=(200,), params=params, stream=True, timeout=timeout)
        try:
            for piece in response.iter_content(chunk_size=None):
                if piece:
                    yield bytes(piece)
        except Exception as exc:  # the connection broke (the service ended)
            log.info("podman API logs %s: %s", container[:12], exc)
        finally:
            response.close()

    def events(self, labels: list[str], since: str) -> ApiEvents:
        """The event stream of containers with these labels, from `since`
        (unix seconds, as `podman events --since`). Raises OSError."""
        return ApiEvents(self.socket_path, labels, since)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


class ApiEvents:
    """One `GET /libpod/events?stream=true` on its own connection, read as
    lines. A plain HTTP/1.0 request on the Unix socket: the body is then the
    raw event lines until the connection ends (no chunking), and `shutdown`
    from another thread wakes a reader blocked on it. podman sends the
    response's headers only with the first event."""

    def __init__(self, socket_path: str, labels: list[str], since: str) -> None:
        query = urllib.parse.urlencode({"stream": "true", "since": since, "filters": json.dumps({"label": labels})})
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(10.0)
            self._sock.connect(socket_path)
            self._sock.sendall(f"GET /v4.0.0/libpod/events?{query} HTTP/1.0\r\nHost: d\r\n\r\n".encode())
            self._sock.settimeout(None)  # events come when they come; shutdown() ends the wait
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")

    def lines(self) -> Iterator[bytes]:
        """The event lines until the connection ends; none (logged) when
        the service refuses the request."""
        status = self._file.readline()
        if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
            rest = b"" if not status else self._file.read(4096)
            log.warning("podman API events: %s", (status + rest).decode(errors="replace").strip()[:300])
            return
        for header in self._file:
            if header in (b"\r\n", b"\n"):
                break
        yield from self._file

    def shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self._file.close()
        self._sock.close()


class PodmanService:
    """The API service of one connector: found or started, and ready (or
    given up on), at the first `api()`."""

    def __init__(self, cli: PodmanCli, run_dir: Path, *, transport: str | None = None) -> None:
        self.cli = cli
        self.child: subprocess.Popen[bytes] | None = None
        self.socket_path = ""
        self.reason = ""
        self._api: PodmanApi | None = None
        self._decided = threading.Event()
        self._lock = threading.Lock()
        self.run_dir = run_dir
        wanted = (transport or os.environ.get(API_ENV, "") or "auto").lower()
        if wanted == "cli":
            self._give_up(f"{API_ENV}=cli" if transport is None else "asked for the CLI")

    def _find_or_start(self) -> None:
        named = os.environ.get(SOCKET_ENV, "")
        for candidate in [Path(named)] if named else SYSTEM_SOCKETS:
            if candidate.is_socket():
                self.socket_path = str(candidate)
                return
        cli = self.cli
        self.socket_path = _private_socket(self.run_dir)
        try:
            Path(self.socket_path).unlink(missing_ok=True)
            Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
            self.child = subprocess.Popen(
                [*_dying_with_parent(), cli.binary, "system", "service", "--time=0", f"unix://{self.socket_path}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=cli.env,
            )
        except OSError as exc:
            self.reason = f"podman system service cannot start: {exc}"

    @property
    def transport(self) -> str:
        """ "api" or "cli" once decided; "" before."""
        if not self._decided.is_set():
            return ""
        return "api" if self._api is not None else "cli"

    def api(self) -> PodmanApi | None:
        """The API client, or None for the CLI path (decided once)."""
        if self._decided.is_set():
            return self._api
        with self._lock:
            if self._decided.is_set():
                return self._api
            self._find_or_start()
            client = self._wait_ready() if not self.reason else None
            self._api = client
            self._decided.set()
            if client is not None:
                log.info("podman: through the API service at %s", self.socket_path)
            else:
                log.warning("podman: through the CLI (%s)", self.reason)
            return client

    def close(self) -> None:
        with self._lock:
            api, self._api = self._api, None
            self._decided.set()
        if api is not None:
            api.close()
        child, self.child = self.child, None
        if child is not None:
            end_process(child, 10)
            Path(self.socket_path).unlink(missing_ok=True)

    def _give_up(self, reason: str) -> None:
        self.reason = reason
        self._decided.set()

    def _wait_ready(self) -> PodmanApi | None:
        deadline = time.monotonic() + SERVICE_READY_S
        try:
            client = PodmanApi(self.socket_path)
        except Exception as exc:
            self.reason = f"no podman API client: {exc}"
            return None
        delay = 0.005
        while time.monotonic() < deadline:
            if self.child is not None and self.child.poll() is not None:
                self.reason = f"podman system service ended with {self.child.returncode}"
                break
            if Path(self.socket_path).is_socket() and client.ping(timeout=2.0):
                return client
            time.sleep(delay)  # bounded: the service's socket appears within SERVICE_READY_S or never
            delay = min(delay * 2, 0.1)
        else:
            self.reason = f"podman system service did not answer within {SERVICE_READY_S:.0f}s"
        client.close()
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait(10)
        return None


_sockets = iter(range(1, 1 << 30))


def _private_socket(run_dir: Path) -> str:
    """One per connector (two connectors of one run folder never share it)."""
    path = run_dir / f"podman-api.{os.getpid()}.{next(_sockets)}.sock"
    if len(str(path.resolve())) <= MAX_SOCKET_PATH:
        return str(path.resolve())
    return str(Path(tempfile.gettempdir()) / f"ank-podman-{os.getpid()}-{uuid.uuid4().hex[:8]}.sock")


def _dying_with_parent() -> list[str]:
    """A prefix that makes the service get SIGTERM when the agent dies, even
    by kill -9 (util-linux `setpriv --pdeathsig`; no Python runs between fork
    and exec: see docs/podman.md). The kernel ties it to the agent's thread
    that starts the service: the main thread or a runtime worker, both live
    as long as the agent. Without setpriv, close() alone ends the service."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
