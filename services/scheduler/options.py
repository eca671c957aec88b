"""The options both scheduler modes share (energy age and cost, in flight,
backoff), checked and converted once: native mode's `native_config`
(services.scheduler.shell) and Kubernetes mode's `kube_config`
(services.scheduler.kube_shell) both start from `shared_settings`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def shared_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fields NativeConfig and KubeConfig share, from the parsed options;
    ValueError naming the first nonsensical one (nan and infinity included)."""
    for name in ("in_flight_s", "backoff_initial_s", "backoff_max_s"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{_flag(name)} must be a positive number of seconds, got {value}")
    for name in ("max_energy_age_s", "energy_cost_wh"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{_flag(name)} must not be negative, got {value}")
    if args.backoff_max_s < args.backoff_initial_s:
        raise ValueError("--backoff-max-s must not be below --backoff-initial-s")
    return {
        "max_energy_age_ms": int(args.max_energy_age_s * 1000),
        "default_energy_cost_wh": args.energy_cost_wh,
        "in_flight_ms": int(args.in_flight_s * 1000),
        "backoff_initial_ms": int(args.backoff_initial_s * 1000),
        "backoff_max_ms": int(args.backoff_max_s * 1000),
    }
