"""zenoh-router stand-in: the vehicle's own Zenoh router, relaying to the
orchestrator's.

The orchestrator already runs a router (ank-router, port 7447 under `ank
up`). This workload runs a second Zenoh router in-process on its own port
(default tcp/127.0.0.1:7448, `--listen` or env POLICE_ROUTER_LISTEN) and
connects it to the orchestrator's router (env ANK_SERVER). The two routers
route between them, so vehicle software that is configured for "the
vehicle router" (port 7448) and the workloads and dashboard on the
orchestrator's router see the same keys. It stays up until SIGTERM; if
the orchestrator's router cannot be reached at start it exits 2, and if
its own port is taken it exits 2 naming the port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import zenoh

from manifests.police.program import (
    EXIT_NO_ZENOH,
    server_endpoint,
    setup_program_logging,
    stop_event_on_signals,
)
from services.bus import load_config

DEFAULT_LISTEN = "tcp/127.0.0.1:7448"


def router_config(listen: str, upstream: str) -> zenoh.Config:
    """A router listening on `listen` that connects to `upstream`, starting
    from the project's client configuration (same lease and retry settings)."""
    conf = load_config(server=upstream)
    conf.insert_json5("mode", json.dumps("router"))
    conf.insert_json5("listen/endpoints", json.dumps([listen]))
    # Give up at start (exit, so the agent applies the restart policy)
    # rather than wait forever for an orchestrator router that is not there.
    conf.insert_json5("connect/exit_on_failure", json.dumps({"router": True, "peer": True, "client": True}))
    conf.insert_json5("scouting/delay", "0")
    return conf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zenoh-router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default=os.environ.get("POLICE_ROUTER_LISTEN", DEFAULT_LISTEN))
    args = parser.parse_args(argv)
    log = setup_program_logging("zenoh-router")
    stop = stop_event_on_signals()
    upstream = server_endpoint()
    try:
        session = zenoh.open(router_config(args.listen, upstream))
    except Exception as exc:
        print(
            f"zenoh-router: cannot listen on {args.listen} or reach Zenoh at {upstream}: {exc}",
            file=sys.stderr,
        )
        return EXIT_NO_ZENOH
    try:
        log.info("vehicle router %s listening on %s, relaying to %s", session.info.zid(), args.listen, upstream)
        stop.wait()
    finally:
        session.close()
    log.info("vehicle router stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
