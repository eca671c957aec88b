"""Liveness beyond the token: an agent whose liveliness token the planner
missed, but whose status arrives, is taken as alive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas.messages import AgentPlan, AgentStatus
from services.bus import Bus
from tests.helpers import Collector, wait_for
from tests.system import running_system

MANIFEST = """apiVersion: v1
workloads:
  job:
    runtime: process
    agent: ghost
    runtimeConfig: "command: 'true'"
"""


def test_an_agent_whose_token_is_gone_but_sends_status_gets_its_plan(
    router: str, make_bus: Callable[[str], Bus], tmp_path: Path
) -> None:
    with running_system(router, tmp_path) as system:
        system.planner()
        wait_for(lambda: system.ank("get", "state").returncode == 0, 40, "the planner answers")
        assert system.ank("apply", "--no-wait", "-", input=MANIFEST).returncode == 0
        assert system.workloads()["job"]["substate"] == "Initial"  # ghost was never seen
        ghost = make_bus("ghost")
        plans = Collector()
        ghost.subscribe("ank/plan/ghost", AgentPlan, plans)
        # No liveliness token: only the status says the agent is there.
        for _ in range(50):
            ghost.put("ank/agents/ghost/status", AgentStatus(agent="ghost", arch="x86_64", os="linux"))
            try:
                plans.wait(lambda items: any(p.workloads for _, p in items), 0.2)  # type: ignore[attr-defined]
                break
            except AssertionError:
                continue
        _, plan = plans.wait(lambda items: items[-1] if items else None, 1, "a plan for ghost")
        assert isinstance(plan, AgentPlan) and [w.name for w in plan.workloads] == ["job"]
