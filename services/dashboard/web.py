"""What the dashboard and the police example's web programs share: pushing
messages from Zenoh's threads to WebSocket clients, and running a Starlette
app under uvicorn until SIGTERM/SIGINT.

Zenoh calls back on its own threads and must never be blocked (ZENOH.md);
the web server lives on one asyncio loop. `Fanout.post` is the bridge: it
hands a function to the loop with `call_soon_threadsafe`, so all state a
web program keeps is touched by the loop thread only (the same guarantee
services.bus.loop.EventLoop gives the other shells).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger("ank.web")

Outgoing = str | bytes


class Fanout:
    """Sends every published message to every connected WebSocket client.

    A client too slow to keep up (its queue is full) is disconnected rather
    than allowed to grow memory; its page reconnects and starts again from a
    fresh snapshot."""

    def __init__(self, max_queued: int = 512) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[asyncio.Queue[Outgoing | None]] = set()
        self._max_queued = max_queued

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the web loop, soon. Safe from any thread; dropped
        if the loop is not running (starting up or shut down)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(_call_logged, fn, args)

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the web loop after `delay` seconds. Safe from any
        thread; dropped as `post` is. (With `post`, what
        services.bus.timers.Timers asks of a loop.)"""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.call_later, delay, _call_logged, fn, args)

    def publish(self, message: Outgoing) -> None:
        """Queues a message for every client (call on the web loop)."""
        for queue in list(self._clients):
            if queue.full():
                self._clients.discard(queue)
                _replace_oldest_with_end(queue)
            else:
                queue.put_nowait(message)

    async def stream(self, websocket: WebSocket, snapshot: list[Outgoing]) -> None:
        """Serves one accepted client: the snapshot first, then every message
        published, until the client goes away or is too slow."""
        queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(self._max_queued)
        self._clients.add(queue)
        receiver = asyncio.ensure_future(_drain_incoming(websocket))
        try:
            for message in snapshot:
                await _send(websocket, message)
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    getter.cancel()
                    return
                queued = getter.result()
                if queued is None:
                    await websocket.close(code=1013, reason="too slow")
                    return
                await _send(websocket, queued)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            self._clients.discard(queue)
            receiver.cancel()


async def _send(websocket: WebSocket, message: Outgoing) -> None:
    if isinstance(message, bytes):
        await websocket.send_bytes(message)
    else:
        await websocket.send_text(message)


async def _drain_incoming(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, to notice its disconnect."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError, OSError):
        return


def _replace_oldest_with_end(queue: asyncio.Queue[Outgoing | None]) -> None:
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(None)


def _call_logged(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("error in %s", getattr(fn, "__qualname__", fn))


def run_server(app: Any, host: str, port: int, program: str) -> int:
    """Serves `app` until SIGTERM/SIGINT (uvicorn's own handlers, installed
    on the main thread). 0 after a clean stop; 2 if it cannot listen."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has restored the
    # handlers it found; harmless handlers let the caller's `finally` (which
    # closes the Zenoh session) run instead of the default "die now".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind
        if exc.code:
            log.error("%s: cannot listen on %s:%d", program, host, port)
            return 2
    if not server.started:
        log.error("%s: did not start on %s:%d", program, host, port)
        return 2
    return 0
