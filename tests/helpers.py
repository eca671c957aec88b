"""Shared test helpers: free ports, a real Zenoh router on loopback, waiting
on events with bounded timeouts (never sleep-and-hope)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

ROOT = Path(__file__).resolve().parents[1]
# Eclipse Ankaios's manifests: ../shared beside the checkout (as CI lays it out).
CORPUS = next(
    (
        p
        for p in (
            ROOT.parent / "shared" / "ankaios-compat" / "manifests",
            Path("/work/shared/ankaios-compat/manifests"),
        )
        if p.is_dir()
    ),
    ROOT.parent / "shared" / "ankaios-compat" / "manifests",
)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for(predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Returns predicate()'s first truthy value; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Collector:
    """Collects (key, message) pairs from callbacks; wait() blocks on a
    condition with a bounded timeout."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self._cond = threading.Condition()

    def __call__(self, key: str, msg: object) -> None:
        with self._cond:
            self.items.append((key, msg))
            self._cond.notify_all()

    def wait(
        self,
        predicate: Callable[[list[tuple[str, object]]], T | Literal[False] | None],
        timeout: float = 10.0,
        what: str = "",
    ) -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.items)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what or predicate}; got {self.items!r}"[:4000]
                    )
                self._cond.wait(remaining)


def child_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ANK_SERVER"] = endpoint
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@contextmanager
def running_router(port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Zenoh router process on a free loopback port."""
    port = port or free_port()
    endpoint = f"tcp/127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.bus.router", "--listen", endpoint],
        cwd=ROOT,
        env=child_env(endpoint),
    )
    try:
        wait_port(port)
        yield endpoint, proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
