"""Reading a path in nested JSON objects (API server objects, Kubernetes
manifests) without a chain of `.get(...) or {}`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dig(value: Any, *keys: str) -> Any:
    """`value[k1][k2]...`, or None as soon as a step is not an object or lacks the key."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
