"""Test shorthands for the planner's `core.step` on commands whose answer is a
Reply action: the step without its Reply, and the reply's result."""

from __future__ import annotations

from schemas.messages import ApplyResult, DeleteRequest
from services.planner import core


def without_reply(step: core.Step) -> tuple[core.Step, ApplyResult]:
    """`step` split into the step without its Reply (always its last action)
    and the reply's result."""
    *actions, reply = step.actions
    assert isinstance(reply, core.Reply), f"the last action is {reply!r}, not the Reply"
    return core.Step(step.state, actions), reply.result


def delete_workloads(state: core.PlannerState, names: list[str], now_ms: int) -> tuple[core.Step, ApplyResult]:
    """`ank delete workload NAME...` through `core.step`."""
    return without_reply(core.step(state, DeleteRequest(workloads=names), now_ms))
