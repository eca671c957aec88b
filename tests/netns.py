"""Network namespaces for the multi-host fault tests (root only).

`linked_namespaces()` makes two namespaces joined by a veth pair, with the
two addresses of a private /30 configured inside them only: all traffic of
a test stays inside namespaces it made, and everything (processes started
with `popen_in`, the namespaces, the veth pair) is removed at the end.

`python -m tests.netns observe OUTFILE` (run inside a namespace, with
ANK_SERVER set) appends one JSON line per sample on `ank/state/**`:
`{"t": <wall ms at arrival>, "key": ..., "payload": <the message>}` — a
witness inside the namespace for the test outside it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT, stop_process


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can). Tries for real."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"ankprobe{uuid.uuid4().hex[:6]}"
    try:
        made = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class Link:
    """Two namespaces and the veth pair between them; `a` has `a_addr`, `b` has `b_addr`."""

    a: str
    b: str
    a_dev: str
    b_dev: str
    a_addr: str
    b_addr: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def set_link(self, up: bool) -> None:
        """Cuts or heals the link from `b`'s side."""
        _ip("-n", self.b, "link", "set", self.b_dev, "up" if up else "down")

    def popen_in(self, ns: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """A process inside namespace `ns` (stopped when the Link goes)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run_in(self, ns: str, argv: list[str], env: dict[str, str], timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        return done.stdout if done.returncode == 0 else ""


@contextmanager
def linked_namespaces() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:6]
    octet = random.randint(0, 255)
    link = Link(
        a=f"ankr{tag}",
        b=f"anka{tag}",
        a_dev=f"vr{tag}",
        b_dev=f"va{tag}",
        a_addr=f"10.254.{octet}.1",
        b_addr=f"10.254.{octet}.2",
    )
    made: list[str] = []
    try:
        for ns in (link.a, link.b):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # created inside `a`, its peer moved into `b`: never in the root namespace
        _ip("-n", link.a, "link", "add", link.a_dev, "type", "veth", "peer", "name", link.b_dev, "netns", link.b)
        _ip("-n", link.a, "addr", "add", f"{link.a_addr}/30", "dev", link.a_dev)
        _ip("-n", link.b, "addr", "add", f"{link.b_addr}/30", "dev", link.b_dev)
        _ip("-n", link.a, "link", "set", link.a_dev, "up")
        _ip("-n", link.b, "link", "set", link.b_dev, "up")
        yield link
    finally:
        for proc in reversed(link.procs):
            stop_process(proc)
        for ns in made:
            _kill_all_in(ns)
            _ip("netns", "del", ns, check=False)  # deletes the veth pair with it


def _kill_all_in(ns: str) -> None:
    """Kills what still runs in the namespace (workloads the agent left)."""
    listed = _ip("netns", "pids", ns, check=False)
    for pid in listed.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _observe(outfile: str) -> int:
    from services.bus import Bus

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = threading.Lock()
    with open(outfile, "a", buffering=1) as out, Bus(f"netns-observer-{os.getpid()}") as bus:

        def on_sample(key: str, payload: bytes) -> None:
            line = json.dumps({"t": time.time_ns() // 1_000_000, "key": key, "payload": json.loads(payload)})
            with lock:
                out.write(line + "\n")

        bus.subscribe_raw("ank/state/**", on_sample)
        out.write(json.dumps({"t": time.time_ns() // 1_000_000, "key": "", "payload": "ready"}) + "\n")
        stop.wait()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "observe":
        raise SystemExit(_observe(sys.argv[2]))
    print("usage: python -m tests.netns observe OUTFILE", file=sys.stderr)
    raise SystemExit(2)
