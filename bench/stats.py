"""The one percentile every benchmark reports (nearest rank)."""

from __future__ import annotations

import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The value at quantile q (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(samples: list[float], digits: int = 1) -> tuple[float | None, float | None]:
    """Median and 99th percentile of samples in seconds, in ms (None, None without samples)."""
    if not samples:
        return None, None
    return round(statistics.median(samples) * 1000, digits), round(percentile(samples, 0.99) * 1000, digits)


def latency_row(
    id_: str,
    name: str,
    samples: list[float],
    *,
    peer: list[float] | None = None,
    floor: list[float] | None = None,
    target: str | None = None,
    note: str = "",
    digits: int = 1,
) -> dict[str, Any]:
    """One latency figure as every benchmark reports it: p50/p99 in ms, and
    the floor or peer measured in the same run (with the p50 ratio to the peer)."""
    p50, p99 = ms(samples, digits)
    row: dict[str, Any] = {"id": id_, "name": name, "unit": "ms", "p50": p50, "p99": p99, "floor": None}
    if floor is not None:
        row["floor"], row["floor_p99"] = ms(floor, digits)
    row["peer"] = None
    if peer is not None:
        row["peer"], row["peer_p99"] = ms(peer, digits)
    row["target"] = target
    if peer is not None:
        row["ratio"] = round(p50 / row["peer"], 2) if p50 and row["peer"] else None
    row["samples"] = len(samples)
    row["note"] = note
    return row
