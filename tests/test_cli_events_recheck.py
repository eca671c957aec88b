"""`ank get events` against a planner that has not yet taken the change it
was notified of (the notice and the planner's copy race): the CLI reads once
more shortly after, so the last change (a Removed) is still reported.
In memory (services.bus.memory): the planner is a queryable whose answers
the test stages."""

from __future__ import annotations

import argparse
import io
import json
import signal
import threading
from contextlib import redirect_stdout

import pytest

from schemas.manifest import Manifest
from schemas.messages import CompleteState, WorkloadState
from schemas.state import ExecutionState
from services.bus.memory import MemoryBus
from services.cli import main as cli
from services.cli.client import Client
from tests.helpers import wait_for
from tests.memory_helpers import memory_hub


def _state(execution_state: ExecutionState) -> WorkloadState:
    return WorkloadState(workload="w", agent="a", execution_state=execution_state, instance="i1")


STOPPING, RUNNING, SUCCEEDED, PENDING = (
    _state(ExecutionState("Stopping", "Stopping", "")),
    _state(ExecutionState("Running", "Ok", "")),
    _state(ExecutionState("Succeeded", "Ok", "")),
    _state(ExecutionState("Pending", "Starting", "")),
)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # the notice of a Removed; the planner still answers Stopping, then has it
        ([[STOPPING], [STOPPING], []], [("removed", "workloadStates.a")]),
        # Running and Succeeded noticed together; the planner answers Running, then Succeeded
        (
            [[PENDING], [RUNNING], [SUCCEEDED]],
            [
                ("updated", "workloadStates.a.w.i1.state"),
                ("updated", "workloadStates.a.w.i1.subState"),
                ("updated", "workloadStates.a.w.i1.state"),
            ],
        ),
    ],
    ids=["removed-after-a-stale-read", "succeeded-after-a-read-that-found-running"],
)
def test_the_read_a_notice_causes_is_made_once_more_shortly_after(
    answers: list[list[WorkloadState]], expected: list[tuple[str, str]]
) -> None:
    with memory_hub() as hub:
        planner, agent, user = MemoryBus(hub, "planner"), MemoryBus(hub, "agent"), MemoryBus(hub, "cli")
        asked: list[int] = []

        def answer(key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
            states = answers[min(len(asked), len(answers) - 1)]
            asked.append(1)
            complete = CompleteState(desired=Manifest(api_version="v1"), workload_states=states)
            return [(key, planner.encode(complete))]

        planner.queryable("ank/cmd/state", answer)
        out = io.StringIO()
        args = argparse.Namespace(masks=["workloadStates"], output="json", include_current_state=False)
        main = threading.main_thread().ident
        assert main is not None

        def drive() -> None:
            try:
                wait_for(lambda: len(asked) >= 1, 10, "the first read")
                agent.put("ank/state/a/w", answers[-1][0] if answers[-1] else STOPPING)  # one notice
                wait_for(lambda: len(asked) >= len(answers), 10, "every staged answer read")
                wait_for(lambda: all(f in out.getvalue() for _, f in expected), 10, "the events")
            finally:  # the stream ends either way; the assertions below tell
                signal.pthread_kill(main, signal.SIGTERM)

        previous = signal.getsignal(signal.SIGTERM)
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        try:
            with redirect_stdout(out):
                assert cli.cmd_get_events(Client(user, 5.0), args) == 0
        finally:
            signal.signal(signal.SIGTERM, previous)
        driver.join(10)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        got = [(kind, f) for e in events for kind in ("added", "updated", "removed") for f in e[f"{kind}Fields"]]
        assert got == expected, events
