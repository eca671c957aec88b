"""The one logger set-up every ank-zenoh process uses: one line per decision."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(service: str, verbose: int = 0, quiet: bool = False) -> logging.Logger:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 0 else logging.INFO
    env = os.environ.get("ANK_LOG")
    if env:
        level = getattr(logging, env.upper(), level)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)
