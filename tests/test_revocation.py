"""Revoking a certificate (docs/security.md): the router's configuration
references a deny list of identities; a revoked one keeps a valid
certificate but gets no rule, so the router passes nothing it sends and
sends it nothing. (Zenoh 1.10 has no CRL check; the list takes effect when
the router is started with the regenerated configuration.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import zenoh

from services.bus import secure
from tests.helpers import ROOT, Collector, free_port, wait_for
from tests.test_security import make_certs


def test_a_revoked_agent_can_send_and_receive_nothing(tmp_path: Path) -> None:
    make_certs(tmp_path, "agent-car1", "agent-car2")
    endpoint = f"tls/127.0.0.1:{free_port()}"
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# stolen on 2026-11-30\nagent-car2\n")
    router = zenoh.open(
        secure.router_config(tmp_path, ["car1", "car2"], endpoint, revoked=secure.read_revoked(revoked))
    )
    sessions = {i: zenoh.open(secure.client_config(tmp_path, i, endpoint)) for i in ("cli", "agent-car1", "agent-car2")}
    try:
        states = Collector()
        sessions["cli"].declare_subscriber("ank/state/**", lambda s: states(str(s.key_expr), s.payload.to_bytes()))
        plans = Collector()
        sessions["agent-car2"].declare_subscriber("ank/plan/car2", lambda s: plans(str(s.key_expr), b""))

        def car1_seen() -> bool:
            sessions["agent-car2"].put("ank/state/car2/w", b"revoked")
            sessions["agent-car1"].put("ank/state/car1/w", b"ok")
            return any(k == "ank/state/car1/w" for k, _ in states.items)

        wait_for(car1_seen, 10, "agent-car1's state")
        router.put("ank/plan/car2", b"plan")
        sessions["agent-car2"].put("ank/state/car2/w", b"revoked")
        sessions["agent-car1"].put("ank/state/car1/w", b"ok, later")
        states.wait(lambda items: ("ank/state/car1/w", b"ok, later") in items, 5, "the later state")
        time.sleep(0.5)  # agent-car2's link: nothing allowed to order by
        assert all(k == "ank/state/car1/w" for k, _ in states.items)
        assert plans.items == []
    finally:
        for session in sessions.values():
            session.close()
        router.close()


def test_the_router_configuration_references_the_revocation_list(tmp_path: Path) -> None:
    make_certs(tmp_path, "agent-car1", "agent-car2")
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("agent-car2\n")
    out = tmp_path / "router.json5"
    argv = [sys.executable, "-m", "services.bus.secure", "--cert-dir", str(tmp_path), "-o", str(out), "router"]
    argv += ["--agent", "car1", "--agent", "car2", "--revoked", str(revoked)]
    subprocess.run(argv, cwd=ROOT, check=True, timeout=60)
    subjects = [s["id"] for s in json.loads(out.read_text())["access_control"]["subjects"]]
    assert "agent-car1" in subjects and "agent-car2" not in subjects
    missing = subprocess.run([*argv[:-1], str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read the revocation list" in missing.stderr
