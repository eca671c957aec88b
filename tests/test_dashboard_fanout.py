"""services.dashboard.web.Fanout: every client gets every message in order;
a client too slow to keep up is dropped, not buffered without end."""

from __future__ import annotations

import asyncio
from typing import Any

from services.dashboard.web import Fanout


class FakeWebSocket:
    """Records what is sent; sending blocks while `gate` is clear."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.closed_with: int | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.disconnect = asyncio.Event()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def receive(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "websocket.disconnect"}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_clients_get_the_snapshot_then_every_message_in_order() -> None:
    async def scenario() -> list[str | bytes]:
        fanout, ws = Fanout(), FakeWebSocket()
        task = asyncio.ensure_future(fanout.stream(ws, ["snapshot"]))  # type: ignore[arg-type]
        await _settle()
        for message in ("a", b"b", "c"):
            fanout.publish(message)
        await _settle()
        ws.disconnect.set()
        await asyncio.wait_for(task, 5)
        return ws.sent

    assert asyncio.run(scenario()) == ["snapshot", "a", b"b", "c"]


def test_a_client_that_falls_behind_is_dropped_and_closed() -> None:
    async def scenario() -> tuple[int | None, int]:
        fanout, slow = Fanout(max_queued=2), FakeWebSocket()
        slow.gate.clear()  # the client stops reading
        task = asyncio.ensure_future(fanout.stream(slow, []))  # type: ignore[arg-type]
        await _settle()
        for i in range(5):
            fanout.publish(f"m{i}")
        slow.gate.set()
        await asyncio.wait_for(task, 5)
        return slow.closed_with, len(slow.sent)

    closed_with, received = asyncio.run(scenario())
    assert closed_with == 1013 and received < 5


def test_post_runs_on_the_loop_from_another_thread_and_is_dropped_before_bind() -> None:
    ran: list[int] = []
    Fanout().post(ran.append, 1)  # not bound yet: dropped, no error

    async def scenario() -> None:
        fanout = Fanout()
        fanout.bind(asyncio.get_running_loop())
        await asyncio.to_thread(fanout.post, ran.append, 2)
        await _settle()

    asyncio.run(scenario())
    assert ran == [2]
