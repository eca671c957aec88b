"""Prints every workload state transition ank-zenoh publishes, with plain Zenoh.

This is what a middleware author needs to follow workloads: no ank-zenoh
import, only `eclipse-zenoh` and the bus contract (docs/guide.md, "The bus
contract"). Each agent puts a JSON `WorkloadState` on
`ank/state/<agent>/<workload>` on every transition; the planner does the same
for workloads no live agent owns (`ank/state/~/<workload>` when there is no
agent at all). The fields this prints:

    {"workload": "web", "agent": "car1",
     "executionState": {"state": "Running", "substate": "Ok", "additionalInfo": ""},
     "restartCount": 0, ...}

Usage:
    python examples/subscribe_states.py [--server tcp/HOST:7447] [--key 'ank/state/**'] [--count N]

`--server` defaults to $ANK_SERVER, then tcp/127.0.0.1:7447. `--count N`
exits after N transitions (for scripts and tests); without it, Ctrl-C stops.
Late joiners can ask for the current states with a query on the same key
(`--current`): every agent and the planner answer for the states they own.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
from typing import Any

import zenoh


def client_config(server: str) -> zenoh.Config:
    """A client session to one router; multicast scouting off (it would use eth0)."""
    endpoint = server if "/" in server else f"tcp/{server}"
    return zenoh.Config.from_json5(
        json.dumps(
            {
                "mode": "client",
                "connect": {"endpoints": [endpoint]},
                "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
            }
        )
    )


def describe(key: str, payload: bytes) -> str:
    """One line for one state message; raises ValueError for a payload that
    is not a WorkloadState."""
    try:
        message: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("executionState"), dict):
        raise ValueError("no executionState object")
    execution = message["executionState"]
    state = str(execution.get("state", "?"))
    substate = str(execution.get("substate", ""))
    shown = f"{state}({substate})" if substate else state
    line = f"{key} {message.get('workload', '?')}@{message.get('agent', '') or '-'} {shown}"
    if execution.get("additionalInfo"):
        line += f" info={execution['additionalInfo']!r}"
    if message.get("restartCount"):
        line += f" restarts={message['restartCount']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("ANK_SERVER", "tcp/127.0.0.1:7447"))
    parser.add_argument("--key", default="ank/state/**", help="key expression to follow")
    parser.add_argument("--count", type=int, default=0, help="exit after this many transitions (0: never)")
    parser.add_argument("--current", action="store_true", help="first print the current states (a query)")
    args = parser.parse_args(argv)

    # Zenoh calls the callback on its own thread: hand samples to the main
    # thread through a queue and never block or raise in the callback.
    samples: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
    signal.signal(signal.SIGTERM, lambda *_: samples.put(None))
    signal.signal(signal.SIGINT, lambda *_: samples.put(None))

    def on_sample(sample: zenoh.Sample) -> None:
        if sample.kind == zenoh.SampleKind.PUT:
            samples.put((str(sample.key_expr), sample.payload.to_bytes()))

    try:
        session = zenoh.open(client_config(args.server))
    except Exception as exc:
        print(f"cannot connect to the router at {args.server}: {exc}", file=sys.stderr)
        return 2
    printed = 0
    try:  # a session with a callback subscriber must be closed, or the process hangs at exit
        session.declare_subscriber(args.key, on_sample)
        print(f"subscribed to {args.key} on {args.server}", file=sys.stderr, flush=True)
        if args.current:
            for reply in session.get(args.key, timeout=2.0):
                if reply.ok is not None:
                    samples.put((str(reply.ok.key_expr), reply.ok.payload.to_bytes()))
        while not args.count or printed < args.count:
            item = samples.get()
            if item is None:
                break
            key, payload = item
            try:
                print(describe(key, payload), flush=True)
                printed += 1
            except ValueError as exc:  # a garbage message is reported and skipped, never fatal
                print(f"skipped a malformed message on {key}: {exc}", file=sys.stderr, flush=True)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
