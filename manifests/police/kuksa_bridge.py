"""kuksa-bridge stand-in: turns the vehicle's raw signals into VSS datapoints
in the shape of the Kuksa VAL server's JSON (`{"path", "dp": {"value", "ts"}}`).

    vehicle/<VSS path>  (carla-spawner)  →  kuksa/<VSS path>

Theory of operation: `to_datapoint` is pure (key and payload in, the
republished key and payload or the reason it was refused out). A malformed
signal is logged and counted, never fatal. Republishing happens in the
Zenoh callback itself: a congestion-control-DROP put does not block.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import threading
from typing import Any

import msgspec

from manifests.police.program import program_bus, setup_program_logging, stop_event_on_signals
from schemas import prepare

SOURCE_KEYS = "vehicle/**"
TARGET_PREFIX = "kuksa/"


class Datapoint(msgspec.Struct, frozen=True):
    value: Any
    ts: str


class VssDatapoint(msgspec.Struct, frozen=True):
    path: str
    dp: Datapoint


class RawSignal(msgspec.Struct, frozen=True):
    path: str
    value: Any
    timestamp: int  # ms since the epoch
    unit: str = ""


prepare(VssDatapoint, RawSignal)  # decoded on Zenoh threads


def to_datapoint(key: str, payload: bytes) -> tuple[str, bytes] | str:
    """The Kuksa datapoint for one vehicle signal: (key, JSON) or an error text."""
    try:
        signal = msgspec.json.decode(payload, type=RawSignal)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"malformed signal on {key}: {exc}"
    if not signal.path or key.rsplit("/", 1)[-1] != signal.path:
        return f"signal on {key} names path {signal.path!r}"
    ts = datetime.datetime.fromtimestamp(signal.timestamp / 1000, tz=datetime.UTC)
    point = VssDatapoint(signal.path, Datapoint(signal.value, ts.isoformat(timespec="milliseconds")))
    return TARGET_PREFIX + signal.path, msgspec.json.encode(point)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="kuksa-bridge", description=__doc__.split("\n\n")[0]).parse_args(argv)
    log = setup_program_logging("kuksa-bridge")
    stop = stop_event_on_signals()
    refused = 0
    lock = threading.Lock()
    with program_bus("kuksa-bridge") as bus:

        def on_signal(key: str, payload: bytes) -> None:
            nonlocal refused
            result = to_datapoint(key, payload)
            if isinstance(result, str):
                with lock:
                    refused += 1
                log.warning("%s (%d refused so far)", result, refused)
                return
            bus.put(result[0], result[1], reliable=False)

        bus.subscribe_raw(SOURCE_KEYS, on_signal)
        log.info("bridging %s to %s**", SOURCE_KEYS, TARGET_PREFIX)
        stop.wait()
    logging.getLogger("kuksa-bridge").info("bridge stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
