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

from schemas.manifest import Manifest
from schemas.messages import CompleteState, WorkloadState
from schemas.state import ExecutionState
from services.bus.memory import MemoryBus
from services.cli import main as cli
from services.cli.client import Client
from tests.helpers import wait_for
from tests.memory_helpers import memory_hub


def test_a_change_the_planner_had_not_taken_when_asked_is_reported_by_the_second_read() -> None:
    stopping = WorkloadState(
        workload="w", agent="a", execution_state=ExecutionState("Stopping", "Stopping", ""), instance="i1"
    )
    with memory_hub() as hub:
        planner, agent, user = MemoryBus(hub, "planner"), MemoryBus(hub, "agent"), MemoryBus(hub, "cli")
        # the first two reads: the workload Stopping (the second is stale), then gone
        answers = [[stopping], [stopping], []]
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
            wait_for(lambda: len(asked) >= 1, 10, "the first read")
            removed = WorkloadState(
                workload="w", agent="a", execution_state=ExecutionState("Removed", "", ""), instance="i1"
            )
            agent.put("ank/state/a/w", removed)  # the notice; the planner still answers Stopping
            wait_for(lambda: len(asked) >= 3, 10, "a read after the stale one")
            wait_for(lambda: "removedFields" in out.getvalue(), 10, "the removal reported")
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
        assert [e["removedFields"] for e in events] == [["workloadStates.a"]], events
