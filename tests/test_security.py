"""The secured deployment (docs/security.md): certificates from
scripts/make-certs.sh, a real router process with the configuration
services/bus/secure.py generates, and client sessions with different
certificates. A denied message is shown never to arrive by ordering: the
same session sends it and then an allowed one on the same link; the allowed
one arriving means the denied one would have arrived before it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zenoh

from services.bus import Bus, BusConfigError, secure
from tests.helpers import ROOT, Collector, child_env, free_port, stop_process, wait_for, wait_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")

MAKE_CERTS = ROOT / "scripts" / "make-certs.sh"
AGENTS = ["car1", "car2"]
# A grace period after the ordering proof, for links other than the sender's.
GRACE_S = 0.5
# Connections that must fail give up after this (the default is 3 s).
REFUSED_TIMEOUT_MS = 1000


def make_certs(cert_dir: Path, *identities: str) -> str:
    done = subprocess.run(
        ["bash", str(MAKE_CERTS), str(cert_dir), *identities], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert_dir = tmp_path_factory.mktemp("certs")
    make_certs(cert_dir, "agent-car1", "agent-car2", "intruder")
    return cert_dir


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates of another CA, with the same identity names."""
    cert_dir = tmp_path_factory.mktemp("foreign-certs")
    make_certs(cert_dir)
    return cert_dir


@pytest.fixture(scope="module")
def secure_router(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real router process with the generated secured configuration."""
    port = free_port()
    endpoint = f"tls/127.0.0.1:{port}"
    config_file = tmp_path_factory.mktemp("router") / "router.secure.json5"
    secure.write_config(secure.router_config(certs, AGENTS, endpoint), config_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.bus.router", "--zenoh-config", str(config_file)],
        cwd=ROOT,
        env=child_env(endpoint),
    )
    try:
        wait_port(port)
        yield endpoint
    finally:
        stop_process(proc)


@pytest.fixture
def open_as(certs: Path, secure_router: str) -> Iterator[Callable[[str], Bus]]:
    """Opens a Bus with an identity's certificate; all closed at the end."""
    opened: list[Bus] = []

    def factory(identity: str) -> Bus:
        bus = Bus(identity, zenoh_config=secure.client_config(certs, identity, secure_router))
        opened.append(bus)
        return bus

    yield factory
    for bus in opened:
        bus.close()


def put_until_seen(bus: Bus, key: str, payload: bytes, seen: Collector, timeout: float = 5.0) -> None:
    """Positive control: puts until the subscriber gets it (its declaration may
    still be on its way to the router), every 0.2 s, for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        bus.put(key, payload)
        try:
            seen.wait(lambda items: (key, payload) in items, timeout=0.2, what=f"{payload!r} on {key}")
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def keys(collector: Collector) -> list[str]:
    return [key for key, _ in collector.items]


def payloads(collector: Collector) -> list[object]:
    return [payload for _, payload in collector.items]


# -- certificates ----------------------------------------------------------------------------------
def test_make_certs_names_each_identity_and_keeps_what_exists(tmp_path: Path) -> None:
    first = make_certs(tmp_path, "agent-car9")
    assert "made CA" in first
    ca_before = (tmp_path / "ca.pem").read_bytes()
    cli_before = (tmp_path / "cli.pem").read_bytes()

    second = make_certs(tmp_path, "agent-car9", "agent-car10")

    assert second.strip() == f"made {tmp_path / 'agent-car10.pem'} (CN=agent-car10)"
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "cli.pem").read_bytes() == cli_before
    for identity in ("router", "cli", "planner", "health-watcher", "scheduler", "agent-car9", "agent-car10"):
        subject = subprocess.run(
            ["openssl", "x509", "-in", str(tmp_path / f"{identity}.pem"), "-noout", "-subject"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert subject.strip().endswith(f"CN = {identity}")
        assert (tmp_path / f"{identity}.key").stat().st_mode & 0o077 == 0
    sans = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "router.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in sans and "DNS:localhost" in sans


def test_make_certs_refuses_a_bad_identity_name(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(MAKE_CERTS), str(tmp_path), "../evil"], capture_output=True, text=True)
    assert done.returncode != 0
    assert "bad identity name '../evil'" in done.stderr
    assert not any(tmp_path.iterdir())


# -- configuration errors --------------------------------------------------------------------------
def test_missing_certificate_is_named_with_how_to_make_it(certs: Path) -> None:
    with pytest.raises(BusConfigError, match=r"agent-car7.*agent-car7\.pem.*make-certs\.sh .* agent-car7"):
        secure.client_config(certs, "agent-car7", "tls/127.0.0.1:1")


def test_a_non_tls_endpoint_is_refused(certs: Path) -> None:
    with pytest.raises(secure.SecureConfigError, match=r"'tcp/127.0.0.1:1' is not TLS"):
        secure.client_config(certs, "cli", "tcp/127.0.0.1:1")
    assert secure.tls_endpoints("127.0.0.1:7447") == ["tls/127.0.0.1:7447"]


@pytest.mark.parametrize("name", ["car/**", "car1\n", "café", "", "x" * 64])
def test_a_bad_agent_name_is_refused(certs: Path, name: str) -> None:
    """The one agent-name rule (ank_common.names): a trailing newline passed the old `^...$` pattern."""
    with pytest.raises(secure.SecureConfigError, match=r"bad agent name "):
        secure.router_config(certs, [name])
    assert secure.check_agent_names(["car1", "car_2-x", "car1"]) == ["car1", "car_2-x"]


def _documented(path: Path, key: str) -> object:
    return json.loads(zenoh.Config.from_file(str(path)).get_json(key))


def test_router_secure_json5_is_what_secure_py_generates_for_car1_and_car2() -> None:
    settings = secure.router_settings(Path("certs"), AGENTS, "tls/127.0.0.1:7447")
    generated = zenoh.Config.from_file(str(ROOT / "router.json5"))
    for key, value in settings.items():
        generated.insert_json5(key, json.dumps(value))
    documented = zenoh.Config.from_file(str(ROOT / "router.secure.json5"))
    assert json.loads(str(documented)) == json.loads(str(generated))


def test_zenoh_secure_json5_is_what_secure_py_generates_for_cli() -> None:
    settings = secure.client_settings(Path("certs"), "cli", "tls/127.0.0.1:7447")
    generated = zenoh.Config.from_file(str(ROOT / "zenoh.json5"))
    for key, value in settings.items():
        generated.insert_json5(key, json.dumps(value))
    documented = zenoh.Config.from_file(str(ROOT / "zenoh.secure.json5"))
    assert json.loads(str(documented)) == json.loads(str(generated))


# -- authentication --------------------------------------------------------------------------------
def _refused_quickly(conf: zenoh.Config) -> zenoh.Config:
    conf.insert_json5("connect/timeout_ms", json.dumps({"router": REFUSED_TIMEOUT_MS, "client": REFUSED_TIMEOUT_MS}))
    return conf


def test_a_client_without_a_certificate_cannot_connect(certs: Path, secure_router: str) -> None:
    Bus("cli", zenoh_config=_refused_quickly(secure.client_config(certs, "cli", secure_router))).close()
    conf = _refused_quickly(secure.client_config(certs, "cli", secure_router))
    conf.insert_json5("transport/link/tls/connect_certificate", "null")
    conf.insert_json5("transport/link/tls/connect_private_key", "null")
    with pytest.raises(BusConfigError, match="cannot open Zenoh session"):
        Bus("no-certificate", zenoh_config=conf).close()


def test_a_client_with_a_certificate_of_another_ca_cannot_connect(
    certs: Path, foreign_certs: Path, secure_router: str
) -> None:
    # It trusts the right CA (so it would accept the router); the router must refuse it.
    conf = _refused_quickly(secure.client_config(certs, "cli", secure_router))
    conf.insert_json5("transport/link/tls/connect_certificate", json.dumps(str(foreign_certs / "cli.pem")))
    conf.insert_json5("transport/link/tls/connect_private_key", json.dumps(str(foreign_certs / "cli.key")))
    with pytest.raises(BusConfigError, match="cannot open Zenoh session"):
        Bus("foreign-cli", zenoh_config=conf).close()


def test_a_plain_tcp_client_cannot_connect(secure_router: str) -> None:
    conf = _refused_quickly(zenoh.Config.from_file(str(ROOT / "zenoh.json5")))
    conf.insert_json5("connect/endpoints", json.dumps([secure_router.replace("tls/", "tcp/")]))
    with pytest.raises(BusConfigError, match="cannot open Zenoh session"):
        Bus("plain", zenoh_config=conf).close()


# -- access control --------------------------------------------------------------------------------
def test_only_cli_may_publish_the_desired_state(open_as: Callable[[str], Bus]) -> None:
    planner = open_as("planner")
    seen = Collector()
    planner.subscribe_raw("ank/desired", seen)
    planner.subscribe_raw("ank/state/**", seen)
    cli, car1, intruder = open_as("cli"), open_as("agent-car1"), open_as("intruder")

    put_until_seen(cli, "ank/desired", b"from cli", seen)

    intruder.put("ank/desired", b"from intruder")
    car1.put("ank/desired", b"from agent-car1")
    car1.put("ank/state/car1/marker", b"after the forged manifest")
    seen.wait(lambda items: "ank/state/car1/marker" in keys(seen), timeout=5, what="agent-car1's own state")
    assert b"from agent-car1" not in payloads(seen)
    time.sleep(GRACE_S)  # the intruder's link has no later allowed message to order against
    assert b"from agent-car1" not in payloads(seen)
    assert b"from intruder" not in payloads(seen)


@pytest.mark.parametrize(
    ("family", "own", "refused", "later"),
    [
        ("ank/state/**", "ank/state/car2/x", ["ank/state/car1/x"], "ank/state/car2/y"),
        (
            "ank/logs/**",
            "ank/logs/car2/x/stream",
            ["ank/logs/car1/x/stream", "ank/logs/car2/x"],  # another agent's stream; not a stream key
            "ank/logs/car2/y/stream",
        ),
    ],
    ids=["states", "log-streams"],
)
def test_an_agent_publishes_its_own_keys_but_not_another_agents(
    open_as: Callable[[str], Bus], family: str, own: str, refused: list[str], later: str
) -> None:
    cli = open_as("cli")
    seen = Collector()
    cli.subscribe_raw(family, seen)
    car2 = open_as("agent-car2")

    put_until_seen(car2, own, b"own", seen)
    for key in refused:
        car2.put(key, b"spoofed")
    car2.put(later, b"own, after the refused ones")
    seen.wait(lambda items: later in keys(seen), timeout=5, what="agent-car2's later put")

    assert set(keys(seen)) == {own, later}


def test_an_agent_cannot_answer_for_another_agents_states(open_as: Callable[[str], Bus]) -> None:
    car2 = open_as("agent-car2")
    car2.queryable(
        "ank/state/car2/**",
        lambda _key, _payload, _params: [("ank/state/car1/x", b"spoofed"), ("ank/state/car2/x", b"own")],
    )
    planner = open_as("planner")

    # Retried until the queryable's declaration has reached the router.
    replies = wait_for(lambda: planner.get("ank/state/**", timeout=1.0), timeout=5, what="agent-car2's replies")

    assert replies == [("ank/state/car2/x", b"own")]


def test_an_agent_cannot_declare_another_agents_liveliness(open_as: Callable[[str], Bus]) -> None:
    planner = open_as("planner")
    seen = Collector()
    planner.watch_liveliness("ank/agents/*", seen)
    car2 = open_as("agent-car2")

    car2.liveliness_token("ank/agents/car1")
    car2.liveliness_token("ank/agents/car2")
    seen.wait(lambda items: ("ank/agents/car2", True) in items, timeout=5, what="agent-car2's token")

    assert seen.items == [("ank/agents/car2", True)]
    # The router's token table: car1's token was sent first on the same link, so
    # it would be there. (A liveliness get right after a session declared a
    # liveliness subscriber sometimes answers [] with or without ACL: retried.)
    alive = wait_for(lambda: planner.alive("ank/agents/*"), timeout=5, what="the live tokens")
    assert alive == ["ank/agents/car2"]


def test_only_cli_and_agents_may_send_commands(open_as: Callable[[str], Bus]) -> None:
    # Agents forward their workloads' Control Interface requests (checked
    # against the workload's rules first); every other identity is refused.
    planner = open_as("planner")
    answered: list[str] = []
    lock = threading.Lock()

    def answer(key: str, _payload: bytes | None, _params: str) -> list[tuple[str, bytes]]:
        with lock:
            answered.append(key)
        return [(key, b"applied")]

    planner.queryable("ank/cmd/apply", answer)
    cli, car1 = open_as("cli"), open_as("agent-car1")
    refused = [open_as(identity) for identity in ("scheduler", "health-watcher", "workload")]

    first = wait_for(lambda: cli.get("ank/cmd/apply", b"manifest", timeout=1.0), timeout=5, what="the planner's answer")
    assert first == [("ank/cmd/apply", b"applied")]
    for bus in refused:
        assert bus.get("ank/cmd/apply", b"manifest", timeout=1.0) == []
    assert car1.get("ank/cmd/apply", b"manifest", timeout=5.0) == [("ank/cmd/apply", b"applied")]
    assert cli.get("ank/cmd/apply", b"manifest", timeout=5.0) == [("ank/cmd/apply", b"applied")]
    assert answered == ["ank/cmd/apply"] * 3


def test_an_agent_receives_its_own_plan_but_cannot_subscribe_to_anothers(open_as: Callable[[str], Bus]) -> None:
    car1 = open_as("agent-car1")
    seen = Collector()
    car1.subscribe_raw("ank/plan/car2", seen)  # denied: the router never registers it
    car1.subscribe_raw("ank/plan/car1", seen)
    planner = open_as("planner")

    put_until_seen(planner, "ank/plan/car1", b"plan of car1", seen)
    planner.put("ank/plan/car2", b"plan of car2")
    planner.put("ank/plan/car1", b"plan of car1, again")
    seen.wait(lambda items: ("ank/plan/car1", b"plan of car1, again") in items, timeout=5, what="car1's second plan")

    assert set(keys(seen)) == {"ank/plan/car1"}


# -- the real services under the policy ------------------------------------------------------------------------------
SECURED_MANIFEST = """\
apiVersion: v1
workloads:
  pinned:
    runtime: process
    agent: car1
    restartPolicy: NEVER
    runtimeConfig: |
      command: sleep
      args: ["60"]
  placed:
    runtime: process
    agent: ""
    restartPolicy: NEVER
    runtimeConfig: |
      command: sleep
      args: ["60"]
"""


@pytest.mark.slow
def test_the_services_work_under_the_policy_and_a_service_without_the_grant_cannot_apply(
    certs: Path, secure_router: str, tmp_path: Path
) -> None:
    """Planner, agent-car1, scheduler and health-watcher, each with its own
    certificate: the cli's apply runs a pinned workload and one the scheduler
    places; the same command with the scheduler's certificate is not answered."""
    configs = {}
    for identity in ("cli", "planner", "agent-car1", "scheduler", "health-watcher"):
        configs[identity] = tmp_path / f"{identity}.json5"
        secure.write_config(secure.client_config(certs, identity, secure_router), configs[identity])
    env = child_env(secure_router)
    commands = {
        "planner": ["services.planner", "--state-dir", str(tmp_path / "planner")],
        "agent-car1": [
            *("services.agent", "--name", "car1", "--run-dir", str(tmp_path / "car1")),
            *("--battery-wh", "50", "--battery-capacity-wh", "100"),
        ],
        "scheduler": ["services.scheduler.shell", "--resync-s", "2"],
        "health-watcher": ["services.health_watcher", "--no-podman"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(SECURED_MANIFEST)

    def ank(identity: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "services.cli.main", "--zenoh-config", str(configs[identity]), *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    def running_on_car1() -> dict[str, str]:
        out = ank("cli", "get", "workloads", "-o", "json")
        rows = json.loads(out.stdout) if out.returncode == 0 else []
        return {r["name"]: r["agent"] for r in rows if r["state"] == "Running"}

    try:
        for identity, argv in commands.items():
            log = open(tmp_path / f"{identity}.log", "ab")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv, "--zenoh-config", str(configs[identity])],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()

        wait_for(lambda: ank("cli", "get", "workloads").returncode == 0, timeout=30, what="the planner answering")
        refused = ank("scheduler", "--response-timeout", "1", "--no-wait", "apply", str(manifest))
        assert refused.returncode != 0, refused.stdout

        applied = ank("cli", "--no-wait", "apply", str(manifest))
        assert applied.returncode == 0, applied.stdout + applied.stderr
        wait_for(
            lambda: running_on_car1() == {"pinned": "car1", "placed": "car1"},
            timeout=30,
            what="both workloads Running on car1",
        )
        assert len(recorded_pids(tmp_path / "car1")) == 2
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for pid in recorded_pids(tmp_path / "car1"):  # workloads run in their own sessions
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def recorded_pids(run_dir: Path) -> list[int]:
    """The process ids in the agent's workload records (`handle.record.pid`)."""
    pids = []
    for record in run_dir.glob("records/*.json"):
        try:
            pid = json.loads(record.read_text())["handle"]["record"]["pid"]
            pids.append(int(pid))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return pids


def test_workloads_talk_freely_on_their_keys_but_cannot_write_the_orchestrators(
    open_as: Callable[[str], Bus],
) -> None:
    workload, peer, cli = open_as("workload"), open_as("workload"), open_as("cli")
    app, desired, states = Collector(), Collector(), Collector()
    peer.subscribe_raw("vehicle/**", app)
    cli.subscribe_raw("ank/desired", desired)
    cli.subscribe_raw("ank/state/**", states)
    put_until_seen(workload, "vehicle/Vehicle.Speed", b"42", app)
    # Denied writes, then an allowed one from the same session: once the
    # allowed one has arrived, the denied ones would have too.
    workload.put("ank/desired", b"apiVersion: v1\nworkloads: {}\n")
    workload.put("ank/state/car1/x", b"{}")
    put_until_seen(cli, "ank/desired", b"from-cli", desired)
    put_until_seen(workload, "vehicle/Vehicle.Speed", b"43", app)
    assert payloads(desired) == [b"from-cli"] * len(desired.items)
    assert states.items == []
