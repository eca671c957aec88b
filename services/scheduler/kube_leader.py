"""Leader election on a coordination.k8s.io/v1 Lease, as kube-scheduler does
it (client-go's leaderelection with a LeaseLock), so `replicas: 2` is safe:
only the holder of the Lease watches, binds and writes.

Theory of operation
-------------------
Every `retry_period_s` a candidate reads the Lease and feeds it to
`step(state, LeaseRead(lease), now)` (pure: the clock is passed in), which
returns the WriteLease to do, if any; the write's outcome comes back as
LeaseWritten, a clean stop as Releasing:

- no Lease (404): create it holding it (a 409 means another won the race);
- held by us: renew (`renewTime` = now) with a PUT carrying the Lease's
  `resourceVersion` — optimistic concurrency: a 409 means someone else
  wrote it since we read it, and we did not renew;
- held by another: its record is "observed" at the local time we first saw
  it change; only when it has not changed for `lease_duration_s` (by our own
  clock — clocks of different machines are never compared) do we take it
  over (`leaseTransitions` + 1), again by a PUT with the resourceVersion we
  read, so of two candidates only one wins;
- empty `holderIdentity` (released): taken at once.

A leader that has not renewed successfully for `renew_deadline_s` has lost:
the shell stops acting and the process exits (as kube-scheduler does, "leader
election lost"), to be restarted as a candidate. On a clean stop the leader
releases the Lease (holder "", leaseDurationSeconds 1), so a rolling update
fails over at once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.scheduler.kube_core import micro_time


class LeaderConfig(msgspec.Struct, frozen=True, kw_only=True):
    identity: str
    name: str = "sdi-scheduler"
    namespace: str = "kube-system"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


def _record(lease: dict[str, Any] | None) -> tuple[Any, ...]:
    spec = (lease or {}).get("spec") or {}
    return (
        spec.get("holderIdentity"),
        spec.get("leaseDurationSeconds"),
        spec.get("acquireTime"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
    )


class LeaderNow(msgspec.Struct, frozen=True):
    """The time of an event: monotonic seconds (durations, by our own clock)
    and the wall clock in ms (the Lease's timestamps)."""

    mono: float
    wall_ms: int


class LeaderState(msgspec.Struct, frozen=True):
    config: LeaderConfig
    leading: bool = False
    observed: tuple[Any, ...] | None = None  # the holder's record as last read
    observed_at: float = 0.0  # monotonic s when the observed record last changed
    renewed_at: float = 0.0  # monotonic s of our last successful write


# -- events ------------------------------------------------------------------


class LeaseRead(msgspec.Struct, frozen=True):
    """What a read of the Lease returned (None: it does not exist)."""

    lease: dict[str, Any] | None


class LeaseWritten(msgspec.Struct, frozen=True):
    """Whether our write went through (False: a 409, someone wrote it first)."""

    ok: bool


class Releasing(msgspec.Struct, frozen=True):
    """A clean stop: the Lease as read now."""

    lease: dict[str, Any] | None


LeaderEvent = LeaseRead | LeaseWritten | Releasing


# -- actions -----------------------------------------------------------------


class WriteLease(msgspec.Struct, frozen=True):
    """Create the Lease (none was read) or replace the one read."""

    body: dict[str, Any]
    create: bool


class LeaderStep(msgspec.Struct, frozen=True):
    state: LeaderState
    actions: list[WriteLease]


def step(state: LeaderState, event: LeaderEvent, now: LeaderNow) -> LeaderStep:
    """The candidate's reaction to one event: its new state and the Lease to write, if any."""
    if isinstance(event, LeaseWritten):
        if event.ok:
            state = msgspec.structs.replace(state, leading=True, renewed_at=now.mono)
        return LeaderStep(state, [])
    if isinstance(event, Releasing):
        body = _released(state.config, event.lease, now.wall_ms) if event.lease is not None else None
        return LeaderStep(state, [WriteLease(body, create=False)] if body is not None else [])
    record = _record(event.lease)
    if record != state.observed:
        state = msgspec.structs.replace(state, observed=record, observed_at=now.mono)
    body = _to_write(state, event.lease, now)
    return LeaderStep(state, [WriteLease(body, create=event.lease is None)] if body is not None else [])


def lost(state: LeaderState, now_mono: float) -> bool:
    """True once a leader has gone `renew_deadline_s` without a successful renew."""
    return state.leading and now_mono - state.renewed_at > state.config.renew_deadline_s


def retry_delay_s(state: LeaderState, jitter: float) -> float:
    """How long to wait before the next attempt: the retry period; a candidate
    adds up to 20 % (`jitter` in 0..1, the shell's random draw), as client-go's
    JitterFactor 1.2, so that candidates do not march in step."""
    period = state.config.retry_period_s
    return period if state.leading else period * (1.0 + 0.2 * jitter)


def _lease_body(config: LeaderConfig, lease: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if lease is not None:
        metadata["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def _to_write(state: LeaderState, lease: dict[str, Any] | None, now: LeaderNow) -> dict[str, Any] | None:
    """The Lease to write (create when `lease` is None, else replace), or None: wait."""
    config = state.config
    stamp = micro_time(now.wall_ms)
    duration = max(1, round(config.lease_duration_s))
    if lease is None:
        return _lease_body(
            config,
            None,
            {
                "holderIdentity": config.identity,
                "leaseDurationSeconds": duration,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        )
    spec = dict(lease.get("spec") or {})
    holder = spec.get("holderIdentity") or ""
    if holder == config.identity:
        spec.update(renewTime=stamp, leaseDurationSeconds=duration)
        return _lease_body(config, lease, spec)
    if holder and now.mono < state.observed_at + config.lease_duration_s:
        return None  # held, and renewed within a lease duration by our clock
    return _lease_body(
        config,
        lease,
        {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if holder else 0),
        },
    )


def _released(config: LeaderConfig, lease: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
    """The Lease given up (client-go's ReleaseOnCancel), or None if it is not ours."""
    spec = dict(lease.get("spec") or {})
    if spec.get("holderIdentity") != config.identity:
        return None
    stamp = micro_time(now_ms)
    spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=stamp, acquireTime=stamp)
    return _lease_body(config, lease, spec)
