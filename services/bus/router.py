"""`ank-router`: the embedded system's Zenoh router, as a Python process
(there is no zenohd on PyPI or in Debian)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import zenoh

from ank_common.lifecycle import wait_for_stop
from ank_common.logsetup import setup_logging

_CHECKOUT = Path(__file__).resolve().parents[2] / "router.json5"
DEFAULT_CONFIG = _CHECKOUT if _CHECKOUT.exists() else Path(__file__).resolve().parent / "router.json5"
CLOSE_TIMEOUT_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ank-router", description=__doc__)
    parser.add_argument("--zenoh-config", default=str(DEFAULT_CONFIG), help="router configuration (json5)")
    parser.add_argument("--listen", action="append", help="endpoint to listen on, e.g. tcp/127.0.0.1:7447")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    log = setup_logging("ank-router", args.verbose)
    try:
        conf = zenoh.Config.from_file(args.zenoh_config)
        if args.listen:
            conf.insert_json5("listen/endpoints", json.dumps(args.listen))
        session = zenoh.open(conf)
    except Exception as exc:
        print(f"ank-router: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("router up (zid %s)", session.info.zid())
    try:
        wait_for_stop(stop)
    finally:
        log.info("router stopping")
        # Bounded: a close that hangs (every peer going at once, e.g. when
        # `ank up` dies) must not keep the router, and its port, alive. The
        # bound is the kernel's (SIGALRM's default action ends the process),
        # not a Python thread's: a close that hangs holding the interpreter
        # lock would hold such a watchdog thread too.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(CLOSE_TIMEOUT_S))
        session.close()
        signal.alarm(0)
    log.info("router stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
