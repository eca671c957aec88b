"""Messages whose size would grow with the whole state, in bounded parts.

- An agent's plan (`AgentPlan`) is split into parts of at most
  `PART_BUDGET_BYTES` of workloads; `PlanAssembler` (the agent's) puts them
  back together and hands out a plan once it holds every part.
- The `ank/cmd/state` reply (`CompleteState`) is a stream of parts, one
  reply each; `get_complete_state` is the one way every reader (CLI,
  dashboard, health-watcher, scheduler) asks for it and merges the parts.

Parts are decoded here without the bus's per-key sequence check: the parts
of one reply share a key and may interleave with another reply's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from schemas import keys
from schemas.limits import MAX_MESSAGE_BYTES, MAX_PARTS, PART_BUDGET_BYTES, size_of
from schemas.manifest import Manifest
from schemas.messages import AgentPlan, CompleteState, PlannedWorkload, PlanRef

if TYPE_CHECKING:
    from services.bus.protocol import BusLike

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
log = logging.getLogger("ank.bus.paging")

STATE_QUERY = keys.CMD_STATE


def chunks(items: Sequence[T], sizes: Sequence[int], budget: int = PART_BUDGET_BYTES) -> list[list[T]]:
    """`items` in order, cut into runs whose sizes add up to at most
    `budget` (an item larger than the budget gets a run of its own); at
    least one (maybe empty) run."""
    out: list[list[T]] = [[]]
    used = 0
    for item, size in zip(items, sizes, strict=True):
        if out[-1] and used + size + 1 > budget:
            out.append([])
            used = 0
        out[-1].append(item)
        used += size + 1
    return out


# -- plans -------------------------------------------------------------------------


def split_plan(plan: AgentPlan, budget: int = PART_BUDGET_BYTES) -> list[AgentPlan]:
    """The plan as parts of at most `budget` bytes of entries each."""
    items: list[PlannedWorkload | PlanRef] = [*plan.workloads, *plan.kept]
    runs = chunks(items, [size_of(w) for w in items], budget)
    if len(runs) == 1:
        return [msgspec.structs.replace(plan, part=0, parts=1)]
    return [
        msgspec.structs.replace(
            plan,
            workloads=[w for w in run if isinstance(w, PlannedWorkload)],
            kept=[k for k in run if isinstance(k, PlanRef)],
            part=i,
            parts=len(runs),
        )
        for i, run in enumerate(runs)
    ]


def plan_update(previous: AgentPlan | None, plan: AgentPlan) -> AgentPlan:
    """What to send for `plan` after `previous` was sent: the entries sent
    before (same name and instance, same epoch, earlier generation) only as
    references; the whole plan when there is no such previous plan (a
    re-send of the same generation is whole too: the agent may have
    restarted)."""
    if previous is None or previous.epoch != plan.epoch or previous.generation >= plan.generation:
        return plan
    sent = {(w.name, w.instance) for w in previous.workloads}
    return msgspec.structs.replace(
        plan,
        workloads=[w for w in plan.workloads if (w.name, w.instance) not in sent],
        kept=[PlanRef(w.name, w.instance, w.hold) for w in plan.workloads if (w.name, w.instance) in sent],
    )


def resolve_plan(plan: AgentPlan, known: Callable[[str, str], PlannedWorkload | None]) -> AgentPlan | None:
    """The whole plan from an update: each kept entry's workload from
    `known(name, instance)`; None if one is not known (then ask for the
    whole plan)."""
    if not plan.kept:
        return plan
    workloads = list(plan.workloads)
    for ref in plan.kept:
        body = known(ref.name, ref.instance)
        if body is None:
            return None
        workloads.append(msgspec.structs.replace(body, hold=ref.hold))
    workloads.sort(key=lambda w: w.name)
    return msgspec.structs.replace(plan, workloads=workloads, kept=[])


class PlanAssembler:
    """Collects the parts of plans; `add` returns a whole plan (parts=1) once
    every part of one (epoch, generation) is there. Older incomplete plans
    are dropped when a newer one completes; at most `keep` incomplete ones
    are held (memory stays bounded whatever is sent)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._pending: dict[tuple[int, int, int], dict[int, AgentPlan]] = {}

    @property
    def incomplete(self) -> bool:
        return bool(self._pending)

    def waiting(self, epoch: int, generation: int) -> bool:
        """Whether parts of that plan are held, waiting for the rest."""
        return any(k[:2] == (epoch, generation) for k in self._pending)

    def add(self, plan: AgentPlan) -> AgentPlan | None:
        if plan.parts <= 1 and plan.part == 0:
            self._drop_older((plan.epoch, plan.generation))
            return plan
        if not (0 <= plan.part < plan.parts <= MAX_PARTS):
            log.warning("ignored plan part %d of %d: out of range", plan.part, plan.parts)
            return None
        key = (plan.epoch, plan.generation, plan.parts)
        got = self._pending.setdefault(key, {})
        got[plan.part] = plan
        if len(got) < plan.parts:
            while len(self._pending) > self.keep:
                del self._pending[min(self._pending)]
            return None
        del self._pending[key]
        self._drop_older((plan.epoch, plan.generation))
        workloads = [w for i in range(plan.parts) for w in got[i].workloads]
        kept = [k for i in range(plan.parts) for k in got[i].kept]
        return msgspec.structs.replace(got[0], workloads=workloads, kept=kept, part=0, parts=1)

    def _drop_older(self, than: tuple[int, int]) -> None:
        for key in [k for k in self._pending if k[:2] <= than]:
            del self._pending[key]


# -- the complete state --------------------------------------------------------------


def split_complete_state(
    complete: CompleteState, snapshot: int, budget: int = PART_BUDGET_BYTES
) -> list[CompleteState]:
    """The state as parts of at most `budget` bytes of entries each; part 0
    carries the agents and (like every part) the manifest's apiVersion."""
    desired = complete.desired
    items: list[tuple[str, str, object]] = [("w", n, w) for n, w in desired.workloads.items()]
    items += [("c", n, c) for n, c in desired.configs.items()]
    items += [("s", "", s) for s in complete.workload_states]
    runs = chunks(items, [size_of(obj) + len(name) + 4 for _, name, obj in items], budget)
    parts = []
    for i, run in enumerate(runs):
        manifest = Manifest(
            api_version=desired.api_version,
            workloads={n: o for kind, n, o in run if kind == "w"},  # type: ignore[misc]
            configs={n: o for kind, n, o in run if kind == "c"},
        )
        parts.append(
            CompleteState(
                desired=manifest,
                workload_states=[o for kind, _, o in run if kind == "s"],  # type: ignore[misc]
                agents=complete.agents if i == 0 else [],
                part=i,
                parts=len(runs),
                snapshot=snapshot,
            )
        )
    return parts


def merge_complete_state(parts: Sequence[CompleteState]) -> CompleteState | None:
    """The whole state from the parts of one snapshot (the newest snapshot
    with every part), or None if no snapshot is complete."""
    by_snapshot: dict[tuple[str, int, int], dict[int, CompleteState]] = {}
    for p in parts:
        if 0 <= p.part < p.parts <= MAX_PARTS:
            by_snapshot.setdefault((p.sender, p.snapshot, p.parts), {})[p.part] = p
    complete = [(k, got) for k, got in by_snapshot.items() if len(got) == k[2]]
    if not complete:
        return None
    _, got = max(complete, key=lambda kg: kg[0][1])
    ordered = [got[i] for i in range(len(got))]
    first = ordered[0]
    if len(ordered) == 1:
        return first
    workloads = {n: w for p in ordered for n, w in p.desired.workloads.items()}
    configs = {n: c for p in ordered for n, c in p.desired.configs.items()}
    return msgspec.structs.replace(
        first,
        desired=Manifest(api_version=first.desired.api_version, workloads=workloads, configs=configs),
        workload_states=[s for p in ordered for s in p.workload_states],
        agents=first.agents,
        part=0,
        parts=1,
    )


def _log_drop(key: str, reason: str) -> None:
    log.warning("dropped a part on %s: %s", key, reason)


def decode_part(key: str, payload: bytes, schema: type[S], drop: Callable[[str, str], None] = _log_drop) -> S | None:
    """One part, decoded without the per-key sequence check; None if it is
    oversized, malformed or of another contract version (`drop(key,
    reason)` is told, e.g. `Bus.drop`, which counts and reports it)."""
    from services.bus import _decoder, checks

    if len(payload) > MAX_MESSAGE_BYTES:
        drop(key, f"payload of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return None
    try:
        msg = _decoder(schema).decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        drop(key, f"invalid {schema.__name__}: {exc}")
        return None
    if getattr(msg, "v", 1) != 1:
        drop(key, f"unsupported contract version {getattr(msg, 'v', None)}")
        return None
    disagreement = checks.disagreement(key, msg)  # the same payload/key agreement Bus.decode checks
    if disagreement is not None:
        drop(key, disagreement)
        return None
    return msg


def get_complete_state(bus: BusLike, timeout: float = 2.0, since_ms: int | None = None) -> list[CompleteState]:
    """Asks `ank/cmd/state` and merges the parts of the reply: [the state],
    or [] when no planner answered with a complete one in time."""
    replies = bus.get(STATE_QUERY if since_ms is None else f"{STATE_QUERY}?since={since_ms}", timeout=timeout)
    parts = [p for p in (decode_part(k, data, CompleteState) for k, data in replies) if p is not None]
    merged = merge_complete_state(parts)
    if merged is None:
        if parts:
            log.warning("%s: %d parts of an incomplete state received within %g s", STATE_QUERY, len(parts), timeout)
        return []
    return [merged]


def now_snapshot() -> int:
    """A snapshot id: the wall clock in microseconds."""
    return time.time_ns() // 1000
