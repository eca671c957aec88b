"""`ank dashboard`: a read-only HTTP API and a live web page of workloads,
agents and recent events.

    GET /                         the page (static; it fetches nothing secret by itself)
    GET /api/v1/workloads         {"workloads": [...]}   every instance, plus desired workloads with no state yet
    GET /api/v1/workloads/<name>  {"workloads": [...]}   the instances of one workload (404 if none)
    GET /api/v1/agents            {"agents": [...]}      liveliness, status, energy and pose
    GET /api/v1/events            {"events": [...]}      newest first
    WS  /api/v1/stream            a snapshot, then one message per change

With a token (`--token-file`, `--token` or env ANK_DASHBOARD_TOKEN) every
/api route wants `Authorization: Bearer <token>` (or `?access_token=<token>`,
for browsers' WebSockets); without one the API is open, so keep it on
loopback. On a secured bus (TLS) a token is required. Every request's `Host`
must name the address the dashboard listens on (loopback: 127.0.0.1,
localhost or [::1]) with its port, and an `Origin`, when a browser sends one,
must be that same host: otherwise 403, so that a web page elsewhere (cross-site
WebSocket, DNS rebinding) cannot read the state. The token is never logged.

The data model is services.dashboard.core (pure). This shell feeds it from
Zenoh — `ank/state/**`, `ank/agents/*` liveliness and `*/status`,
`ank/energy/**`, `ank/events/**`, and the desired state through
services.bus.follow.DesiredStateFollower (`ank/cmd/state` at start, shortly
after a put on `ank/desired`, again soon while no planner answers, and every
`--resync` seconds, so a lost message heals) — on the web server's asyncio
loop: Zenoh callbacks only post onto it (`Fanout.post`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ank_common.clock import SYSTEM_CLOCK, Clock
from ank_common.logsetup import setup_logging
from schemas import AgentStatus, EnergyReport, Event, WorkloadState, keys
from schemas.liveliness import AgentLiveliness
from services.bus import Bus, BusConfigError, load_config, uses_tls
from services.bus.follow import DesiredStateFollower
from services.bus.protocol import BusLike
from services.dashboard import core, options
from services.dashboard import token as dashboard_token
from services.dashboard.page import PAGE
from services.dashboard.web import Fanout, run_server

log = logging.getLogger("ank.dashboard")
DEFAULT_PORT = options.DEFAULT_PORT


class DashboardShell:
    """Holds the view; every change goes through the model on the web loop."""

    def __init__(self, bus: BusLike, fanout: Fanout, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.bus = bus
        self.fanout = fanout
        self.clock = clock
        self.view = core.DashboardView()

    def apply(self, event: core.ViewEvent) -> None:
        self.view, updates = core.step(self.view, event, self.clock.wall_ms())
        for update in updates:
            self.fanout.publish(_json({"type": update.kind, "data": update.data}))

    def subscribe(self) -> None:
        post = self.fanout.post
        self.bus.subscribe(keys.STATES, WorkloadState, lambda _k, msg: post(self.apply, msg))
        self.bus.subscribe(keys.AGENT_STATUSES, AgentStatus, lambda _k, msg: post(self.apply, msg))
        self.bus.subscribe(keys.ALL_ENERGY, EnergyReport, lambda _k, msg: post(self.apply, msg))
        self.bus.subscribe(keys.EVENTS, Event, lambda _k, msg: post(self.apply, msg))
        self.bus.watch_liveliness(
            keys.AGENT_TOKENS,
            lambda key, alive: self._on_token(key, alive),
        )

    def _on_token(self, key: str, alive: bool) -> None:
        agent = keys.parse_agent_token_key(key)
        if agent is not None:
            self.fanout.post(self.apply, AgentLiveliness(agent, alive))

    def follow_desired(self, every_s: float) -> DesiredStateFollower:
        """Follows the desired state (on the web loop: `Fanout` is its loop);
        a periodic query every `every_s` seconds (0: none). Started; the caller stops it."""
        follower = DesiredStateFollower(
            self.bus,
            self.fanout,
            self.apply,
            clock=self.clock,
            refresh_s=every_s,
            no_answer_level=logging.INFO,
            log=log,
        )
        follower.start()
        return follower


def _json(obj: object) -> str:
    return msgspec.json.encode(obj).decode()


def _authorised(connection: HTTPConnection, token: str | None) -> bool:
    if not token:
        return True
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    offered = value.strip() if scheme.lower() == "bearer" else connection.query_params.get("access_token", "")
    return hmac.compare_digest(offered.encode(), token.encode())


def _unauthorised() -> JSONResponse:
    return JSONResponse(
        {"error": "missing or wrong bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The host names a request's Host may carry (None: any, when listening
    on every address)."""
    if host in ANY_ADDRESS:
        return None
    if host in LOOPBACK_NAMES:
        return LOOPBACK_NAMES
    return frozenset({host, f"[{host}]"})


def _split_host(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    bare_ipv6 = ":" in host and not host.endswith("]")
    if not sep or bare_ipv6:
        return value.lower(), None
    try:
        return host.lower(), int(port)
    except ValueError:
        return value.lower(), None


def forbidden_reason(connection: HTTPConnection, hosts: frozenset[str] | None, port: int | None) -> str | None:
    """Why a request's Host/Origin is refused, or None."""
    host_header = connection.headers.get("host", "")
    name, host_port = _split_host(host_header)
    if hosts is not None and name not in hosts:
        return f"Host {host_header!r} is not this dashboard's address"
    if port is not None and host_port is not None and host_port != port:
        return f"Host {host_header!r} is not this dashboard's port"
    origin = connection.headers.get("origin")
    if origin is not None:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or rest.lower() != host_header.lower():
            return f"Origin {origin!r} is not this dashboard"
    return None


def _forbidden(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=403)


def build_app(
    bus: BusLike, token: str | None = None, resync_s: float = 10.0, *, host: str = "127.0.0.1", port: int | None = None
) -> Starlette:
    fanout = Fanout()
    shell = DashboardShell(bus, fanout)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        fanout.bind(asyncio.get_running_loop())
        shell.subscribe()  # before the first query, so nothing between them is missed
        follower = shell.follow_desired(resync_s)
        try:
            yield
        finally:
            await asyncio.to_thread(follower.stop)  # off the web loop: it waits (bounded) for a query in flight

    hosts = allowed_hosts(host)

    def api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            reason = forbidden_reason(request, hosts, port)
            if reason is not None:
                return _forbidden(reason)
            return await handler(request) if _authorised(request, token) else _unauthorised()

        return guarded

    async def page(request: Request) -> Response:
        reason = forbidden_reason(request, hosts, port)
        if reason is not None:
            return _forbidden(reason)
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    @api
    async def workloads(_request: Request) -> Response:
        return JSONResponse({"workloads": core.workload_rows(shell.view)})

    @api
    async def workload(request: Request) -> Response:
        name = request.path_params["name"]
        rows = core.workload_rows(shell.view, name)
        if not rows:
            return JSONResponse({"error": f"no workload named {name!r}"}, status_code=404)
        return JSONResponse({"workloads": rows})

    @api
    async def agents(_request: Request) -> Response:
        return JSONResponse({"agents": core.agent_rows(shell.view)})

    @api
    async def events(_request: Request) -> Response:
        return JSONResponse({"events": core.event_rows(shell.view)})

    async def stream(websocket: WebSocket) -> None:
        reason = forbidden_reason(websocket, hosts, port)
        if reason is not None:
            # Refused before the handshake completes: the client sees HTTP 403.
            await websocket.close(code=1008, reason=reason)
            return
        await websocket.accept()
        if not _authorised(websocket, token):
            # Accept first so that the page sees the policy-violation code.
            await websocket.close(code=1008, reason="missing or wrong bearer token")
            return
        snapshot = _json({"type": "snapshot", "data": core.snapshot(shell.view)})
        await fanout.stream(websocket, [snapshot])

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/v1/workloads", workloads),
            Route("/api/v1/workloads/{name}", workload),
            Route("/api/v1/agents", agents),
            Route("/api/v1/events", events),
            WebSocketRoute("/api/v1/stream", stream),
        ],
        lifespan=lifespan,
    )


def serve(bus: BusLike, host: str, port: int, token: str | None, *, resync_s: float = 10.0) -> int:
    """Serves the dashboard until SIGTERM/SIGINT; 0 after a clean stop, 2 if
    it cannot listen. The caller owns (and closes) the bus."""
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach it can read the system's state", host)
    log.info("dashboard on http://%s:%d/%s", host, port, " (bearer token required)" if token else "")
    return run_server(build_app(bus, token, resync_s, host=host, port=port), host, port, "ank dashboard")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ank dashboard", description="A live web view of ank-zenoh.")
    options.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serves the dashboard for parsed options (from this module's `main` or from `ank dashboard`)."""
    if not 0 < args.port < 65536:
        print(f"ank dashboard: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    setup_logging("ank-dashboard", args.verbose)
    token = args.token
    try:
        if getattr(args, "token_file", None):
            token = dashboard_token.read(Path(args.token_file))
        conf = load_config(args.zenoh_config, args.server)
        if not token and uses_tls(conf):
            raise dashboard_token.TokenError("a dashboard on a secured bus needs a token: --token-file FILE")
        bus = Bus("dashboard", zenoh_config=conf)
    except (BusConfigError, dashboard_token.TokenError) as exc:
        print(f"ank dashboard: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(bus, args.host, args.port, token, resync_s=args.resync)
    finally:
        bus.close()
