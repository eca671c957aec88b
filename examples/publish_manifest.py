"""Puts a manifest on `ank/desired` with plain Zenoh and reports a rejection.

This is how vehicle middleware hands ank-zenoh a desired state without the
`ank` CLI: a fire-and-forget put of the manifest file's text (YAML or JSON,
Ankaios v1 or v0.1) on `ank/desired`. The planner merges its workloads into
the desired state, as `ank apply` does. A manifest it cannot accept changes
nothing; the planner then publishes an `Event` on `ank/events/rejected`:

    {"kind": "rejected", "subject": "ank/desired", "severity": "error",
     "message": "manifest on ank/desired rejected: workloads.web.restartPolicy: ...", ...}

A put has no reply, so this program listens on `ank/events/rejected` (declared
before the put) for `--wait` seconds: it prints a rejection and exits 1, or
exits 0 when none came. (Rejections carry no id of the put; with several
publishers at once, use the `ank/cmd/apply` query — what `ank apply` does —
to get an answer to your own request.)

Usage:
    python examples/publish_manifest.py MANIFEST [--server tcp/HOST:7447] [--wait 3]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from pathlib import Path

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


def rejection_text(payload: bytes) -> str:
    """The human-readable message of a rejection Event (the raw text if it is not one)."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return payload.decode("utf-8", "replace")
    if isinstance(event, dict) and isinstance(event.get("message"), str):
        return str(event["message"])
    return json.dumps(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="manifest file (YAML or JSON)")
    parser.add_argument("--server", default=os.environ.get("ANK_SERVER", "tcp/127.0.0.1:7447"))
    parser.add_argument("--wait", type=float, default=3.0, help="seconds to listen for a rejection")
    args = parser.parse_args(argv)

    try:
        text = args.manifest.read_bytes()
    except OSError as exc:
        print(f"cannot read {args.manifest}: {exc}", file=sys.stderr)
        return 2
    encoding = zenoh.Encoding.APPLICATION_JSON if args.manifest.suffix == ".json" else zenoh.Encoding.APPLICATION_YAML

    rejections: queue.Queue[bytes] = queue.Queue()
    try:
        session = zenoh.open(client_config(args.server))
    except Exception as exc:
        print(f"cannot connect to the router at {args.server}: {exc}", file=sys.stderr)
        return 2
    try:  # a session with a callback subscriber must be closed, or the process hangs at exit
        session.declare_subscriber("ank/events/rejected", lambda sample: rejections.put(sample.payload.to_bytes()))
        # BLOCK: a desired state must not be dropped silently under load.
        session.put("ank/desired", text, encoding=encoding, congestion_control=zenoh.CongestionControl.BLOCK)
        print(f"put {args.manifest} ({len(text)} bytes) on ank/desired", flush=True)
        try:
            rejected = rejections.get(timeout=args.wait)
        except queue.Empty:
            print(f"no rejection within {args.wait:g} s", flush=True)
            return 0
        print(f"rejected: {rejection_text(rejected)}", flush=True)
        return 1
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
