"""`ank up [MANIFEST]`: the whole embedded system on one machine — a Zenoh
router, the planner, one agent, the health-watcher and the scheduler, each a
separate child process — then the manifest applied and the live table until
Ctrl-C, after which every child is stopped (SIGTERM, then SIGKILL after a
grace period): no stray process is left."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from schemas.messages import ApplyRequest
from services.bus import Bus
from services.cli.client import Client, NoPlanner

ROOT = Path(__file__).resolve().parents[2]


def child_environment(endpoint: str) -> dict[str, str]:
    """Children (and the workloads the agent starts) reach the same router and
    find this checkout's programs: the venv's bin first in PATH, the checkout
    on PYTHONPATH."""
    env = dict(os.environ)
    env["ANK_SERVER"] = endpoint
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("CONTAINERS_CONF", str(ROOT / "containers.conf"))
    return env


def services(
    agent: str,
    state_dir: Path,
    endpoint: str,
    configs: dict[str, Path] | None = None,
    extra_agents: int = 0,
    dashboard_port: int = 0,
) -> list[tuple[str, list[str]]]:
    """Each child's command line. `configs` (identity → Zenoh configuration
    file) secures them: each service then connects with its own certificate.
    `extra_agents` adds agents <agent>2, <agent>3, ... (benchmarks)."""
    py = sys.executable

    def zconf(identity: str) -> list[str]:
        return ["--zenoh-config", str(configs[identity])] if configs else []

    def agent_argv(name: str) -> list[str]:
        run_dir = str(state_dir / "agents" / name)
        return [py, "-m", "services.agent", "--name", name, "--run-dir", run_dir, *zconf(f"agent-{name}")]

    router = ["--zenoh-config", str(configs["router"])] if configs else ["--listen", endpoint]
    return [
        ("router", [py, "-m", "services.bus.router", *router]),
        ("planner", [py, "-m", "services.planner", "--state-dir", str(state_dir / "planner"), *zconf("planner")]),
        # The whole system stops with `ank up`: so do the workloads.
        ("agent", [*agent_argv(agent), "--stop-workloads-on-exit"]),
        *((f"agent{i}", agent_argv(f"{agent}{i}")) for i in range(2, 2 + extra_agents)),
        ("health-watcher", [py, "-m", "services.health_watcher", "--agent", agent, *zconf("health-watcher")]),
        # One machine, usually no battery: every live agent is a candidate.
        ("scheduler", [py, "-m", "services.scheduler", "--allow-unmetered", *zconf("scheduler")]),
        *(
            [("dashboard", [py, "-m", "services.dashboard", "--port", str(dashboard_port), *zconf("cli")])]
            if dashboard_port
            else []
        ),
    ]


def secure_configs(agent: str, state_dir: Path, endpoint: str) -> dict[str, Path]:
    """Makes the certificates (scripts/make-certs.sh) and one Zenoh
    configuration per identity under state_dir; returns identity → file."""
    from services.bus import secure

    cert_dir, conf_dir = state_dir / "certs", state_dir / "zenoh"
    conf_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-certs.sh"), str(cert_dir), f"agent-{agent}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"making certificates failed: {done.stderr.strip()}")
    configs = {"router": conf_dir / "router.json5"}
    secure.write_config(secure.router_config(cert_dir, [agent], endpoint), configs["router"])
    for identity in ("cli", "planner", "health-watcher", "scheduler", "workload", f"agent-{agent}"):
        configs[identity] = conf_dir / f"{identity}.json5"
        secure.write_config(secure.client_config(cert_dir, identity, endpoint), configs[identity])
    return configs


class Embedded:
    """The child processes of `ank up`, started in order, stopped in reverse."""

    def __init__(
        self,
        agent: str,
        state_dir: Path,
        port: int,
        *,
        secure: bool = False,
        extra_agents: int = 0,
        dashboard_port: int = 0,
    ) -> None:
        self.agent = agent
        self.extra_agents = extra_agents
        self.dashboard_port = dashboard_port
        self.state_dir = state_dir
        self.endpoint = f"{'tls' if secure else 'tcp'}/127.0.0.1:{port}"
        self.port = port
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.configs = secure_configs(agent, state_dir, self.endpoint) if secure else None
        self.env = child_environment(self.endpoint)
        if self.configs:
            # The workloads' own programs connect as the `workload` identity.
            self.env["ANK_ZENOH_CONFIG"] = str(self.configs["workload"])

    def start(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for name, argv in services(
            self.agent, self.state_dir, self.endpoint, self.configs, self.extra_agents, self.dashboard_port
        ):
            log = open(self.state_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child
            proc = subprocess.Popen(
                argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
            self.children.append((name, proc))
            if name == "router":
                _wait_port(self.port, proc)

    def stop(self, grace: float = 10.0) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

        for run_dir in (self.state_dir / "agents").glob("*"):
            stop_recorded_processes(run_dir)

    def dead(self) -> list[str]:
        return [name for name, proc in self.children if proc.poll() is not None]


def stop_recorded_processes(run_dir: Path, grace: float = 5.0) -> int:
    """Stops the process workloads an agent recorded in run_dir (they run in
    their own sessions and outlive the agent by design, for adoption): used
    when the whole embedded system stops. Returns how many were signalled."""
    import json

    groups = []
    for rec in run_dir.glob("records/*.json"):
        try:
            handle = json.loads(rec.read_text()).get("handle", {})
            if handle.get("runtime") == "process" and handle.get("record", {}).get("pid"):
                groups.append(int(handle["record"]["pid"]))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
                alive.append(pgid)
            except OSError:
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 0)
        while alive and time.monotonic() < deadline:
            alive = [g for g in alive if _group_alive(g)]
            time.sleep(0.05)
        groups = alive
    return len(groups)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the router exited with {proc.returncode} (is port {port} in use?)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the router did not listen on port {port} within {timeout:g} s")


def run_up(args: argparse.Namespace) -> int:
    agent = args.agent or socket.gethostname().split(".")[0].replace(".", "-")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        system = Embedded(
            agent, Path(args.state_dir).resolve(), args.port, secure=args.secure, dashboard_port=args.dashboard_port
        )
    except (RuntimeError, OSError) as exc:
        print(f"ank up: {exc}", file=sys.stderr)
        return 1
    try:
        system.start()
        print(f"ank up: router {system.endpoint}, agent {agent!r}, state in {system.state_dir}", file=sys.stderr)
        if system.dashboard_port:
            print(f"ank up: dashboard on http://127.0.0.1:{system.dashboard_port}/", file=sys.stderr)
        cli_config = system.configs["cli"] if system.configs else None
        if cli_config:
            print(f"ank up: secured; use `ank --zenoh-config {cli_config} ...`", file=sys.stderr)
        with Bus("ank-up", config=cli_config, server=system.endpoint) as bus:
            client = Client(bus, args.response_timeout)
            _wait_planner(client, system)
            if args.manifest:
                with open(args.manifest, encoding="utf-8") as f:
                    result = client.apply(ApplyRequest(manifest=f.read(), agent=agent))
                for w in result.warnings:
                    print(f"warning: {w}", file=sys.stderr)
                if not result.ok:
                    for e in result.errors:
                        print(f"error: {e}", file=sys.stderr)
                    return 1
                print(
                    f"ank up: applied {args.manifest}: added {', '.join(result.added) or '-'}; "
                    f"updated {', '.join(result.updated) or '-'}",
                    file=sys.stderr,
                )
            from services.cli.live import watch_workloads

            watcher_args = argparse.Namespace(names=None, agent=None, state=None)
            watch = threading.Thread(target=watch_workloads, args=(client, watcher_args, stop), daemon=True)
            watch.start()
            while not stop.is_set():
                if stop.wait(0.5):
                    break
                dead = system.dead()
                if dead:
                    print(f"ank up: {', '.join(dead)} exited; stopping", file=sys.stderr)
                    return 1
            watch.join(2)
        return 0
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, NoPlanner, OSError) as exc:
        print(f"ank up: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        print("ank up: stopping", file=sys.stderr)
        system.stop()


def _wait_planner(client: Client, system: Embedded, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.state()
            return
        except NoPlanner:
            if system.dead():
                raise RuntimeError(f"{', '.join(system.dead())} exited at start; see {system.state_dir}/logs") from None
            if time.monotonic() > deadline:
                raise
            # not a busy loop: a get without a planner returns at once, and on
            # two cores asking non-stop slows the planner's own start (P9)
            time.sleep(0.01)
