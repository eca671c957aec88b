"""camera-websocket stand-in: shows the front camera in a browser.

Subscribes `camera/front` (PGM frames from camera-bridge), converts each to
PNG (browsers do not show PGM) and serves on a loopback port (`--port`,
default 8081): `/` a page with the live picture (PNG frames pushed over the
WebSocket `/ws`), `/frame.png` the latest frame, `/api/latest` frame count
and size as JSON. State lives on the web loop; Zenoh callbacks only post.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from manifests.police.program import program_bus, setup_program_logging
from services.bus import Bus
from services.dashboard.web import Fanout, run_server

FRAME_KEY = "camera/front"
DEFAULT_PORT = 8081
log = logging.getLogger("camera-websocket")


# Magic, width, height, maxval, then exactly one whitespace byte before the pixels.
_PGM_HEADER = re.compile(rb"P5\s+(\d{1,5})\s+(\d{1,5})\s+(\d{1,5})\s")


class PgmError(ValueError):
    pass


def parse_pgm(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, pixels) of a binary 8-bit PGM (P5) image (no header comments)."""
    header = _PGM_HEADER.match(data)
    if header is None:
        raise PgmError("not a binary PGM (P5) image")
    width, height, maxval = (int(g) for g in header.groups())
    if not (0 < width <= 4096 and 0 < height <= 4096) or maxval != 255:
        raise PgmError(f"unsupported PGM {width}x{height} maxval {maxval}")
    pixels = data[header.end() : header.end() + width * height]
    if len(pixels) != width * height:
        raise PgmError(f"PGM has {len(pixels)} pixel bytes, expected {width * height}")
    return width, height, pixels


def grey_png(width: int, height: int, pixels: bytes) -> bytes:
    """An 8-bit greyscale PNG of the pixels (filter type 0 on every row)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class CameraView:
    """The latest frame (touched on the web loop only)."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.png: bytes | None = None
        self.size = (0, 0)
        self.frames = 0
        self.rejected = 0

    def on_frame(self, payload: bytes) -> None:
        try:
            width, height, pixels = parse_pgm(payload)
        except PgmError as exc:
            self.rejected += 1
            log.warning("ignored a frame on %s: %s", FRAME_KEY, exc)
            return
        self.png = grey_png(width, height, pixels)
        self.size = (width, height)
        self.frames += 1
        self.fanout.publish(self.png)


def build_app(bus: Bus) -> Starlette:
    fanout = Fanout(max_queued=8)  # frames are large: a viewer 8 frames behind is dropped and reconnects
    view = CameraView(fanout)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        fanout.bind(asyncio.get_running_loop())
        bus.subscribe_raw(FRAME_KEY, lambda _key, payload: fanout.post(view.on_frame, payload))
        log.info("watching %s", FRAME_KEY)
        yield

    async def page(_request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def frame(_request: Request) -> Response:
        if view.png is None:
            return JSONResponse({"error": f"no frame received on {FRAME_KEY} yet"}, status_code=503)
        return Response(view.png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def latest(_request: Request) -> JSONResponse:
        width, height = view.size
        return JSONResponse({"frames": view.frames, "rejected": view.rejected, "width": width, "height": height})

    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await fanout.stream(websocket, [view.png] if view.png is not None else [])

    return Starlette(
        routes=[
            Route("/", page),
            Route("/frame.png", frame),
            Route("/api/latest", latest),
            WebSocketRoute("/ws", live),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camera-websocket", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("POLICE_CAMERA_PORT", DEFAULT_PORT)))
    args = parser.parse_args(argv)
    setup_program_logging("camera-websocket")
    with program_bus("camera-websocket") as bus:
        log.info("serving http://%s:%d/", args.host, args.port)
        code = run_server(build_app(bus), args.host, args.port, "camera-websocket")
    log.info("stopped")
    return code


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Front camera</title>
<style>body{font-family:sans-serif;background:#10151c;color:#e8eef5;margin:1.5em}
img{width:512px;image-rendering:pixelated;border:1px solid #334}</style></head><body>
<h1>Front camera</h1><p id="status">connecting…</p><img id="frame" alt="front camera">
<script>
let url = null;
function connect(){
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "blob";
  ws.onopen = () => { document.getElementById("status").textContent = "live"; };
  ws.onmessage = (e) => {
    const next = URL.createObjectURL(e.data);
    document.getElementById("frame").src = next;
    if (url) URL.revokeObjectURL(url);
    url = next;
  };
  ws.onclose = () => { document.getElementById("status").textContent = "reconnecting…"; setTimeout(connect, 1000); };
}
connect();
</script></body></html>
"""


if __name__ == "__main__":
    raise SystemExit(main())
