"""Leader election on a coordination.k8s.io/v1 Lease, as kube-scheduler does
it (client-go's leaderelection with a LeaseLock), so `replicas: 2` is safe:
only the holder of the Lease watches, binds and writes.

Theory of operation
-------------------
Every `retry_period_s` a candidate reads the Lease and decides (`Elector`,
pure: the clock is passed in):

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

from services.scheduler.kube import micro_time


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


class Elector:
    """Decides what to write to the Lease; the shell reads and writes it."""

    def __init__(self, config: LeaderConfig) -> None:
        self.config = config
        self.leading = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0  # monotonic s when the observed record last changed
        self._renewed_at = 0.0  # monotonic s of our last successful write

    def _lease(self, lease: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if lease is not None:
            metadata["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def step(self, lease: dict[str, Any] | None, now_s: float, now_ms: int) -> dict[str, Any] | None:
        """The Lease to write (create when `lease` is None, else replace), or None: wait."""
        record = _record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, now_s
        stamp = micro_time(now_ms)
        duration = max(1, round(self.config.lease_duration_s))
        if lease is None:
            return self._lease(
                None,
                {
                    "holderIdentity": self.config.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": stamp,
                    "renewTime": stamp,
                    "leaseTransitions": 0,
                },
            )
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        if holder == self.config.identity:
            spec.update(renewTime=stamp, leaseDurationSeconds=duration)
            return self._lease(lease, spec)
        if holder and now_s < self._observed_at + self.config.lease_duration_s:
            return None  # held, and renewed within a lease duration by our clock
        return self._lease(
            lease,
            {
                "holderIdentity": self.config.identity,
                "leaseDurationSeconds": duration,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if holder else 0),
            },
        )

    def on_written(self, ok: bool, now_s: float) -> None:
        if ok:
            self.leading, self._renewed_at = True, now_s

    def lost(self, now_s: float) -> bool:
        """True once a leader has gone `renew_deadline_s` without a successful renew."""
        return self.leading and now_s - self._renewed_at > self.config.renew_deadline_s

    def release(self, lease: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
        """The Lease given up (client-go's ReleaseOnCancel), or None if it is not ours."""
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.config.identity:
            return None
        stamp = micro_time(now_ms)
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=stamp, acquireTime=stamp)
        return self._lease(lease, spec)
