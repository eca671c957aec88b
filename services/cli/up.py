"""`ank up [MANIFEST]`: the whole embedded system on one machine — a Zenoh
router, the planner, one agent, the health-watcher and the scheduler, each a
separate child process — then the manifest applied and the live table until
Ctrl-C, SIGTERM or SIGHUP, after which every child is stopped (the agent
first, given longer than its own stop grace so that a runtime's stop is never
cut short; then the others; SIGKILL only after that): no stray process is
left. Every child also gets SIGTERM when `ank up` itself dies, whatever kills
it (PR_SET_PDEATHSIG). Before starting anything it refuses a state directory
another process holds and a busy router or dashboard port, naming them."""

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

from ank_common.lifecycle import (
    Busy,
    DirLock,
    busy_port_message,
    check_free,
    default_state_dir,
    die_with_parent,
    port_in_use,
)
from ank_common.names import agent_name_error
from schemas.messages import ApplyRequest
from services.bus import Bus
from services.cli.client import Client, NoPlanner
from services.dashboard import token as dashboard_token

ROOT = Path(__file__).resolve().parents[2]
AGENT_STOP_GRACE_S = 10.0  # the agent's --stop-grace (its default)
# The agent stops its workloads (grace, then its own SIGKILL) and removes
# them: `ank up` waits longer than that before it would kill the agent.
AGENT_EXIT_WAIT_S = AGENT_STOP_GRACE_S + 30.0


def default_up_dir() -> Path:
    """`ank up`'s state: next to the planner's default, whatever the cwd."""
    return default_state_dir().parent / "up"


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
    token_arg = dashboard_token.argv(state_dir, secure=configs is not None)
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
            [("dashboard", [py, "-m", "services.dashboard", "--port", str(dashboard_port), *zconf("cli"), *token_arg])]
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
                argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),  # no orphan if `ank up` dies
            )
            log.close()
            self.children.append((name, proc))
            if name == "router":
                _wait_port(self.port, proc)

    def stop(self, grace: float = 10.0, agent_wait: float = AGENT_EXIT_WAIT_S) -> None:
        """The agents first (they stop their workloads, the bus still up),
        each given longer than its own stop grace; then the other services."""
        agents = [(n, p) for n, p in self.children if n.startswith("agent")]
        others = [(n, p) for n, p in reversed(self.children) if not n.startswith("agent")]
        for group, wait in ((agents, agent_wait), (others, grace)):
            for _name, proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + wait
            for name, proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"ank up: {name} (pid {proc.pid}) did not stop within {wait:g} s: killed", file=sys.stderr)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except OSError:
                        pass
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

    from services.agent.runtimes.process import containment

    groups = []
    cgroups = []
    for rec in run_dir.glob("records/*.json"):
        try:
            handle = json.loads(rec.read_text()).get("handle", {})
            if handle.get("runtime") == "process" and handle.get("record", {}).get("pid"):
                groups.append(int(handle["record"]["pid"]))
                cgroups.append(str(handle["record"].get("cgroup", "")))
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
    for cgroup in cgroups:  # what daemonised from them, and the cgroups themselves
        containment.dispose(cgroup)
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


def preflight(agent: str, state_dir: Path, port: int, dashboard_port: int) -> DirLock:
    """Everything that would make this `ank up` step on another system,
    checked before anything is started or written: the state directory (held
    for the whole run: the returned lock), the planner's and the agent's
    directories, the router and dashboard ports. Raises Busy naming them."""
    lock = DirLock(state_dir, "ank up state directory").acquire()
    try:
        check_free(state_dir / "planner", "planner state directory")
        check_free(state_dir / "agents" / agent, "agent run directory")
        if port_in_use(port):
            raise Busy(busy_port_message(port, "router"))
        if dashboard_port and port_in_use(dashboard_port):
            raise Busy(busy_port_message(dashboard_port, "dashboard") + " (choose another with --dashboard-port)")
    except BaseException:
        lock.release()
        raise
    return lock


def with_default_agent(manifest: str, agent: str) -> str:
    """The manifest with `agent` set on the workloads that name no agent at
    all; `agent: ""` (for the scheduler) and other agents are kept. A text
    that does not parse is returned as it is: the planner names its errors."""
    import json

    import yaml

    try:
        data = yaml.safe_load(manifest)
    except yaml.YAMLError:
        return manifest
    workloads = data.get("workloads") if isinstance(data, dict) else None
    if not isinstance(workloads, dict):
        return manifest
    changed = False
    for workload in workloads.values():
        if isinstance(workload, dict) and "agent" not in workload:
            workload["agent"] = agent
            changed = True
    if not changed:
        return manifest
    try:
        return json.dumps(data)
    except (TypeError, ValueError):
        return manifest


def run_up(args: argparse.Namespace) -> int:
    agent = args.agent or socket.gethostname().split(".")[0].replace(".", "-")
    problem = agent_name_error(agent)
    if problem:
        print(f"ank up: --agent: {problem}", file=sys.stderr)
        return 1
    manifest = ""
    if args.manifest:
        try:
            with open(args.manifest, encoding="utf-8") as f:
                manifest = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            print(f"ank up: cannot read {args.manifest}: {why}; nothing started", file=sys.stderr)
            return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops the system cleanly too
        signal.signal(sig, lambda *_: stop.set())
    state_dir = Path(args.state_dir).resolve() if args.state_dir else default_up_dir()
    try:
        up_lock = preflight(agent, state_dir, args.port, args.dashboard_port)
    except (Busy, OSError) as exc:
        print(f"ank up: {exc}; nothing started", file=sys.stderr)
        return 1
    try:
        system = Embedded(agent, state_dir, args.port, secure=args.secure, dashboard_port=args.dashboard_port)
    except (RuntimeError, OSError) as exc:
        print(f"ank up: {exc}", file=sys.stderr)
        up_lock.release()
        return 1
    try:
        token_note = dashboard_token.prepare(system.state_dir, args.secure) if system.dashboard_port else None
        system.start()
        print(f"ank up: router {system.endpoint}, agent {agent!r}, state in {system.state_dir}", file=sys.stderr)
        if system.dashboard_port:
            print(f"ank up: dashboard on http://127.0.0.1:{system.dashboard_port}/", file=sys.stderr)
            if token_note:
                print(f"ank up: {token_note}", file=sys.stderr)
        cli_config = system.configs["cli"] if system.configs else None
        if cli_config:
            print(f"ank up: secured; use `ank --zenoh-config {cli_config} ...`", file=sys.stderr)
        with Bus("ank-up", config=cli_config, server=system.endpoint) as bus:
            client = Client(bus, args.response_timeout)
            _wait_planner(client, system)
            if args.manifest:
                # --agent is the default for workloads without one only
                result = client.apply(ApplyRequest(manifest=with_default_agent(manifest, agent)))
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
        up_lock.release()


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
