"""The CLI's side of the bus: queries to the planner and the state stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec

from schemas import keys
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    CompleteState,
    DeleteRequest,
    EnergyReport,
    Event,
    WorkloadState,
)
from services.bus import Bus, paging

T = TypeVar("T")


class NoPlanner(Exception):
    """No planner answered within the response timeout."""


class Client:
    def __init__(self, bus: Bus, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    def _query(self, key: str, payload: bytes | None, schema: type[msgspec.Struct]) -> msgspec.Struct:
        replies = self._asking_again(
            lambda: self.bus.get_decoded(key, schema, payload=payload, timeout=self.timeout), f"on {key}"
        )
        return replies[0]

    def _asking_again(self, ask: Callable[[], list[T]], what: str) -> list[T]:
        """ask() until it has an answer or the response timeout is used up: a
        query no queryable matches ends at once, and just after `ank-server &`
        the planner may still be starting."""
        deadline = time.monotonic() + self.timeout
        while not (replies := ask()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoPlanner(
                    f"no planner answered {what} within {self.timeout:g} s "
                    "(is `ank-planner` running and connected to the same Zenoh router?)"
                )
            time.sleep(min(0.1, remaining))
        return replies

    def apply(self, request: ApplyRequest) -> ApplyResult:
        result = self._query(keys.CMD_APPLY, self.bus.encode(request), ApplyResult)
        assert isinstance(result, ApplyResult)
        return result

    def delete(self, names: list[str]) -> ApplyResult:
        result = self._query(keys.CMD_DELETE, self.bus.encode(DeleteRequest(workloads=names)), ApplyResult)
        assert isinstance(result, ApplyResult)
        return result

    def state(self, since_ms: int | None = None) -> CompleteState:
        """The whole state, read in bounded parts (services.bus.paging); with
        `since_ms`, also the desired state as it was then (`desired_since`)."""
        replies = self._asking_again(
            lambda: paging.get_complete_state(self.bus, self.timeout, since_ms),
            f"on {paging.STATE_QUERY} with a complete state",
        )
        return replies[0]

    def planned_instances(self) -> dict[str, str]:
        """workload → the instance the planner's current plans name for it."""
        # Whole plans (a query's answer), maybe in parts: each part names some workloads.
        parts = (paging.decode_part(k, data, AgentPlan) for k, data in self.bus.get(keys.PLANS, timeout=self.timeout))
        return {pw.name: pw.instance for plan in parts if plan is not None for pw in plan.workloads}

    def agent_statuses(self) -> dict[str, AgentStatus]:
        """The latest status of every live agent (waits one status period)."""
        tokens = (keys.parse_agent_token_key(k) for k in self.bus.alive(keys.AGENT_TOKENS, timeout=self.timeout))
        alive = {agent for agent in tokens if agent}
        statuses: dict[str, AgentStatus] = {}
        done = threading.Event()

        def on_status(key: str, st: AgentStatus) -> None:
            statuses[st.agent] = st
            if alive <= set(statuses):
                done.set()

        self.bus.subscribe(keys.AGENT_STATUSES, AgentStatus, on_status)
        # Agents answer with their latest status at once; older ones only publish it.
        for st in self.bus.get_decoded(keys.AGENT_STATUSES, AgentStatus, timeout=min(self.timeout, 2.0)):
            on_status("", st)
        if alive and not alive <= set(statuses):
            done.wait(min(self.timeout, 2.5))
        return {name: statuses[name] for name in sorted(alive) if name in statuses} | {
            name: AgentStatus(agent=name, arch="?", os="?") for name in sorted(alive) if name not in statuses
        }

    def energy(self, wait: float = 0.5) -> dict[str, EnergyReport]:
        reports: dict[str, EnergyReport] = {}
        self.bus.subscribe(keys.ENERGY, EnergyReport, lambda k, r: reports.__setitem__(r.node, r))
        time.sleep(wait)  # energy reports are periodic puts: sample one period
        return reports

    def watch_states(self, callback: Callable[[WorkloadState], None]) -> None:
        self.bus.subscribe(keys.STATES, WorkloadState, lambda _k, st: callback(st))

    def watch_events(self, callback: Callable[[Event], None]) -> None:
        self.bus.subscribe(keys.EVENTS, Event, lambda _k, ev: callback(ev))
