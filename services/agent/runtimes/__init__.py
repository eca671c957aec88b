"""Runtime connectors, one folder each, behind services.agent.runtimes.base.Runtime.

Each connector package offers `make_runtime(run_dir) -> Runtime`; the agent
loads those it finds. A connector that fails to load is left out (logged),
so the agent still runs the others.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from services.agent.runtimes.base import Runtime

log = logging.getLogger("ank.agent")

CONNECTORS = ("process", "podman", "podman_kube")


def load_runtimes(run_dir: str | Path, connectors: tuple[str, ...] = CONNECTORS) -> dict[str, Runtime]:
    """Runtime name ("process", "podman", "podman-kube") → connector."""
    runtimes: dict[str, Runtime] = {}
    for package in connectors:
        try:
            module = importlib.import_module(f"services.agent.runtimes.{package}")
            make = getattr(module, "make_runtime", None)
            if make is None:
                log.info("runtime connector %s offers no make_runtime(run_dir): left out", package)
                continue
            runtime: Runtime = make(run_dir)
        except Exception as exc:
            log.warning("runtime connector %s cannot be loaded: %s", package, exc)
            continue
        runtimes[runtime.name] = runtime
    return runtimes
