"""Enrolling an agent without restarting the router (docs/security.md §9):
an enrolment ("edge") router, started later for an agent the running main
router does not list, joins it with the `edge` certificate; the agent works
through it, and the edge router's own ACL still holds it to its own keys."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zenoh

from services.bus import secure
from tests.helpers import Collector, free_port, wait_for
from tests.test_security import make_certs


def test_a_new_agent_joins_through_an_edge_router_and_speaks_only_for_itself(tmp_path: Path) -> None:
    make_certs(tmp_path, "agent-car1", "agent-car7", "edge")
    main_ep, edge_ep = f"tls/127.0.0.1:{free_port()}", f"tls/127.0.0.1:{free_port()}"
    main = zenoh.open(secure.router_config(tmp_path, ["car1"], main_ep))  # car7 is not listed
    opened: list[zenoh.Session] = []
    try:
        cli = zenoh.open(secure.client_config(tmp_path, "cli", main_ep))
        planner = zenoh.open(secure.client_config(tmp_path, "planner", main_ep))
        opened += [cli, planner]
        states = Collector()
        cli.declare_subscriber("ank/state/**", lambda s: states(str(s.key_expr), s.payload.to_bytes()))
        tokens = Collector()
        planner.liveliness().declare_subscriber("ank/agents/*", lambda s: tokens(str(s.key_expr), str(s.kind)))

        # Later, with the main router running: the edge router and the new agent.
        edge = zenoh.open(secure.edge_router_config(tmp_path, ["car7"], edge_ep, main_ep))
        opened.append(edge)
        car7 = zenoh.open(secure.client_config(tmp_path, "agent-car7", edge_ep))
        opened.append(car7)
        plans = Collector()
        car7.declare_subscriber("ank/plan/car7", lambda s: plans(str(s.key_expr), s.payload.to_bytes()))
        car7.declare_subscriber("ank/plan/**", lambda s: plans(str(s.key_expr), s.payload.to_bytes()))

        def own_state_seen() -> bool:
            car7.put("ank/state/car1/w", b"spoofed")
            car7.put("ank/state/car7/w", b"own")
            return ("ank/state/car7/w", b"own") in states.items

        wait_for(own_state_seen, 15, "car7's state through the edge router")
        car7.liveliness().declare_token("ank/agents/car1")
        car7.liveliness().declare_token("ank/agents/car7")
        tokens.wait(lambda items: ("ank/agents/car7", "SampleKind.PUT") in items, 10, "car7's token")

        def plan_seen() -> bool:
            planner.put("ank/plan/car1", b"plan of car1")
            planner.put("ank/plan/car7", b"plan of car7")
            return ("ank/plan/car7", b"plan of car7") in plans.items

        wait_for(plan_seen, 10, "car7's plan")
        car7.put("ank/state/car7/z", b"later")
        states.wait(lambda items: ("ank/state/car7/z", b"later") in items, 5, "car7's later state")
        time.sleep(0.3)  # the planner's link for the token: nothing later on it to order by
        assert {k for k, _ in states.items} == {"ank/state/car7/w", "ank/state/car7/z"}
        assert {k for k, _ in plans.items} == {"ank/plan/car7"}
        assert {k for k, _ in tokens.items} == {"ank/agents/car7"}
    finally:
        for session in reversed(opened):
            session.close()
        main.close()


def test_an_edge_router_needs_the_edge_certificate(tmp_path: Path) -> None:
    make_certs(tmp_path)
    with pytest.raises(secure.SecureConfigError, match=r"edge.*make-certs\.sh .* edge"):
        secure.edge_router_config(tmp_path, ["car7"], "tls/127.0.0.1:1")
