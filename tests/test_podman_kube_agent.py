"""A real agent running a podman-kube workload: its status reports the
transport both podman connectors share ("api" where podman's service runs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from schemas.manifest import Workload
from schemas.messages import AgentStatus, PlannedWorkload
from services.bus import Bus
from tests.helpers import Collector, wait_for
from tests.test_agent_shell import AgentProcess, send_plan, start_agent, up, wait_state
from tests.test_podman_helpers import kube_unusable, podman

pytestmark = [pytest.mark.podman, pytest.mark.slow]
__all__ = ["start_agent"]  # the fixture, imported for pytest


def test_agent_status_reports_the_api_transport_for_podman_kube(
    make_bus: Callable[[str], Bus], start_agent: Callable[..., AgentProcess]
) -> None:
    reason = kube_unusable()
    if reason:
        pytest.skip(reason)
    bus, states, agent = up(make_bus, start_agent)
    statuses = Collector()
    bus.subscribe(f"ank/agents/{agent.name}/status", AgentStatus, statuses)
    pod = f"status-{agent.name}"
    config = (
        "manifest: |\n  apiVersion: v1\n  kind: Pod\n  metadata:\n"
        f"    name: {pod}\n  spec:\n    restartPolicy: Never\n    containers:\n"
        "    - name: c\n      image: localhost/ank-test/alpine:latest\n"
        '      command: ["/bin/sh", "-c", "sleep 60"]\n'
    )
    workload = Workload(runtime="podman-kube", runtime_config=config, restart_policy="NEVER")
    send_plan(bus, agent, 1, PlannedWorkload("kubed", "i1", workload))
    wait_state(states, "kubed", "Running(Ok)", timeout=60)

    def reported(items: list[tuple[str, object]]) -> AgentStatus | None:
        for _, m in items:
            if isinstance(m, AgentStatus) and m.runtime_transports.get("podman-kube"):
                return m
        return None

    status: AgentStatus = statuses.wait(reported, 15, "a status naming podman-kube's transport")
    # one service for both podman connectors: the podman one reports it too
    assert status.runtime_transports["podman-kube"] == "api"
    assert status.runtime_transports.get("podman") == "api"
    send_plan(bus, agent, 2)
    wait_state(states, "kubed", "Removed", timeout=60)
    wait_for(lambda: podman("pod", "exists", pod).returncode == 1, 30, "the pod torn down")
