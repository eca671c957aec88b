"""One Control Interface channel on real FIFOs, with a recording stand-in
for the bus: the Hello handshake (missing, unsupported version), access
checked before anything reaches the bus, reconnection, bad frames."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.manifest import AccessRule, ControlInterfaceAccess, Manifest, Workload
from schemas.messages import CompleteState
from services.agent.control_interface import core
from services.agent.control_interface.core import ank_base, control_api
from services.agent.control_interface.shell import Channel, ControlInterfaces


class RecordingBus:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def get(self, key: str, payload: bytes | None = None, **_kw: Any) -> list[tuple[str, bytes]]:
        """The planner's reply to ank/cmd/state: one part holding the whole state."""
        self.calls.append(key)
        workloads = {"x": Workload(runtime="process", agent="A"), "y": Workload(runtime="process", agent="A")}
        return [(key, msgspec.json.encode(CompleteState(desired=Manifest(api_version="v1", workloads=workloads))))]


class Client:
    """The workload's side, as the SDK does it: output opened for writing, input for reading."""

    def __init__(self, folder: Path) -> None:
        self.out = os.open(folder / "output", os.O_WRONLY)
        self.inp = os.open(folder / "input", os.O_RDONLY | os.O_NONBLOCK)
        self.decoder = core.Decoder()
        self.pending: list[bytes] = []

    def send(self, message: control_api.ToAnkaios) -> None:
        os.write(self.out, core.frame(message))

    def receive(self, timeout: float = 10.0) -> control_api.FromAnkaios:
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            assert left > 0, "no message from the agent"
            if select.select([self.inp], [], [], left)[0]:
                self.pending += self.decoder.feed(os.read(self.inp, 65536))
        return control_api.FromAnkaios.FromString(self.pending.pop(0))

    def close(self) -> None:
        os.close(self.out)
        os.close(self.inp)


def hello(version: str = core.PROTOCOL_VERSION) -> control_api.ToAnkaios:
    return control_api.ToAnkaios(hello=control_api.Hello(protocolVersion=version))


def get_state(*masks: str, rid: str = "r1") -> control_api.ToAnkaios:
    request = ank_base.Request(requestId=rid, completeStateRequest=ank_base.CompleteStateRequest(fieldMask=list(masks)))
    return control_api.ToAnkaios(request=request)


READ_X = ControlInterfaceAccess(
    allow_rules=[AccessRule(type="StateRule", operation="Read", filter_masks=["desiredState.workloads.x"])]
)


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[tuple[Channel, RecordingBus]]:
    bus = RecordingBus()
    ch = Channel(bus, tmp_path / "ci", "wl", READ_X, write_timeout_s=1.0)  # type: ignore[arg-type]
    yield ch, bus
    ch.close()


def test_missing_hello_closes_the_connection_and_serves_nothing(channel: tuple[Channel, RecordingBus]) -> None:
    ch, bus = channel
    client = Client(ch.folder)
    client.send(get_state("desiredState.workloads.x"))
    reply = client.receive()
    assert reply.WhichOneof("FromAnkaiosEnum") == "connectionClosed"
    assert reply.connectionClosed.reason == core.HELLO_MISSING
    client.send(get_state("desiredState.workloads.x"))  # the rest of a closed connection is ignored
    time.sleep(0.3)  # nothing must arrive: give the agent time to (wrongly) answer
    assert not select.select([client.inp], [], [], 0)[0]
    assert bus.calls == []
    client.close()
    # a new connection (the program restarted) starts afresh
    again = Client(ch.folder)
    again.send(hello())
    assert again.receive().WhichOneof("FromAnkaiosEnum") == "controlInterfaceAccepted"
    again.close()


def test_unsupported_version_closes_the_connection(channel: tuple[Channel, RecordingBus]) -> None:
    ch, _bus = channel
    client = Client(ch.folder)
    client.send(hello("0.1.0"))
    reply = client.receive()
    assert reply.WhichOneof("FromAnkaiosEnum") == "connectionClosed"
    assert "Unsupported protocol version '0.1.0'" in reply.connectionClosed.reason
    client.close()


def test_access_is_checked_before_the_bus(channel: tuple[Channel, RecordingBus]) -> None:
    ch, bus = channel
    client = Client(ch.folder)
    client.send(hello())
    assert client.receive().WhichOneof("FromAnkaiosEnum") == "controlInterfaceAccepted"
    client.send(get_state("desiredState.workloads.y", rid="denied"))
    reply = client.receive()
    assert reply.response.requestId == "denied" and reply.response.error.message == core.ACCESS_DENIED
    assert bus.calls == []
    client.send(get_state("desiredState.workloads.x", rid="allowed"))
    reply = client.receive()
    assert reply.response.requestId == "allowed"
    assert list(reply.response.completeStateResponse.completeState.desiredState.workloads.workloads) == ["x"]
    assert bus.calls == ["ank/cmd/state"]
    client.close()


def test_an_oversized_frame_closes_the_connection(channel: tuple[Channel, RecordingBus]) -> None:
    ch, bus = channel
    client = Client(ch.folder)
    client.send(hello())
    client.receive()
    os.write(client.out, core.varint(64 * 1024 * 1024))  # announces 64 MB
    reply = client.receive()
    assert reply.connectionClosed.reason == core.DECODE_ERROR
    assert bus.calls == []
    client.close()


def test_a_workload_that_never_reads_does_not_block_the_agent(channel: tuple[Channel, RecordingBus]) -> None:
    ch, _bus = channel
    big = core.error("r", "x" * 60000)
    started = time.monotonic()
    results = [ch.send(big) for _ in range(3)]  # the pipe holds 64 KiB: the later ones wait, then are dropped
    assert results[0] is True and results[-1] is False
    assert time.monotonic() - started < 10


def test_interfaces_follow_the_instance(tmp_path: Path) -> None:
    interfaces = ControlInterfaces(RecordingBus(), tmp_path)  # type: ignore[arg-type]
    first = interfaces.provide("w", "i1", READ_X)
    assert first and (Path(first) / "input").exists() and (Path(first) / "output").exists()
    assert interfaces.provide("w", "i1", READ_X) == first  # a restart of the same instance keeps it
    second = interfaces.provide("w", "i2", READ_X)  # an update with access: a new one
    assert second != first and not Path(first).exists()
    assert interfaces.provide("w", "i3", ControlInterfaceAccess()) == ""  # an update without: none
    assert not Path(second).exists()
    assert interfaces.provide("v", "i1", None) == ""
    third = interfaces.provide("w", "i4", READ_X)
    interfaces.withdraw("w", "other")  # not its instance: kept
    assert Path(third).exists()
    interfaces.withdraw("w", "i4")
    assert not Path(third).exists()
    interfaces.close()
    assert threading.active_count() < 50
