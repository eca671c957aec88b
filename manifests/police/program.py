"""The frame every police stand-in program runs in: one way to find the
router (env ANK_SERVER, as the agent passes it down, default
tcp/127.0.0.1:7447), one way to fail when it is not there (exit 2 with a
message naming the endpoint), one way to stop (SIGTERM/SIGINT → close the
Zenoh session → exit 0)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.bus import Bus, BusConfigError

DEFAULT_SERVER = "tcp/127.0.0.1:7447"
EXIT_NO_ZENOH = 2


def server_endpoint() -> str:
    return os.environ.get("ANK_SERVER") or DEFAULT_SERVER


def setup_program_logging(program: str) -> logging.Logger:
    logging.basicConfig(
        level=getattr(logging, os.environ.get("ANK_LOG", "INFO").upper(), logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s {program} %(levelname)s: %(message)s",
    )
    return logging.getLogger(program)


class ZenohUnreachable(SystemExit):
    """Raised (as a SystemExit with code 2) when the router cannot be reached."""


@contextmanager
def program_bus(program: str) -> Iterator[Bus]:
    """A Bus to the orchestrator's router, always closed; exits 2 with a clear
    message if the router cannot be reached."""
    endpoint = server_endpoint()
    try:
        bus = Bus(program, server=endpoint)
    except BusConfigError as exc:
        print(f"{program}: cannot reach Zenoh at {endpoint}: {exc}", file=sys.stderr)
        raise ZenohUnreachable(EXIT_NO_ZENOH) from None
    try:
        yield bus
    finally:
        bus.close()


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
