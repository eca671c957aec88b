"""`ank dashboard`'s options: one definition for `ank dashboard` and `python -m services.dashboard`.

Kept apart from the shell so that the CLI can build its parser without
importing the web stack.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_PORT = 8800


def add_arguments(parser: argparse.ArgumentParser, *, bus_options: bool = True) -> None:
    """The dashboard's own options (`bus_options`: also --zenoh-config/--server, which `ank` has globally)."""
    if bus_options:
        parser.add_argument("--zenoh-config", help="Zenoh configuration (json5; default zenoh.json5)")
        parser.add_argument("--server", help="router endpoint (host:port or tcp/host:port; env ANK_SERVER)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--token",
        default=os.environ.get("ANK_DASHBOARD_TOKEN") or None,
        help="bearer token the API requires (env ANK_DASHBOARD_TOKEN; default: none)",
    )
    parser.add_argument(
        "--token-file",
        help="file holding the bearer token (mode 600; `ank up` makes one); required on a secured bus",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=10.0,
        help="seconds between periodic state re-reads (0: none; it still reads at start and after puts on ank/desired)",
    )
