"""`ank-server`: the server role of a node, with Eclipse Ankaios's options.

It starts the Zenoh router (listening where `--address`/`--bind` says; Ankaios's
`host:port`), the planner and, unless told not to, the scheduler and the
health-watcher, each as the separate process it is; applies the
`--startup-manifest`; and stops them all when it is stopped (SIGTERM/SIGINT)
or when one of them dies. Its children also get SIGTERM from the kernel when
ank-server itself is killed (parent-death signal), so none is left behind.

Options (command line > environment > `--server-config` TOML file):
  -c/--startup-manifest PATH   ANKSERVER_STARTUP_MANIFEST   startup_manifest
  -a/--address/--bind H:P      ANKSERVER_ADDRESS            address
  -k/--insecure                ANKSERVER_INSECURE           insecure
  --ca_pem/--crt_pem/--key_pem ANKSERVER_CA_PEM ...         ca_pem ... / *_pem_content
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import zenoh

from schemas import keys
from services.bus import BusConfigError, ankaios_tls, insert_settings
from services.bus.ankaios_config import PEMS, LayeredConfig
from services.bus.router import DEFAULT_CONFIG as ROUTER_CONFIG

ROOT = Path(__file__).resolve().parents[2]
# The project's default endpoint (what ank, ank-agent and the services connect
# to without options) and Ankaios's default address.
DEFAULT_ADDRESSES = ["127.0.0.1:7447", "127.0.0.1:25551"]
EXIT_ERROR = 1
# How long ank-server gives its planner to answer before starting the others anyway, s.
PLANNER_START_TIMEOUT = 30.0


def version() -> str:
    try:
        return metadata.version("ank-zenoh")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ank-server", description="ank-zenoh's server role (Ankaios's ank-server options)")
    p.add_argument("--version", "-V", action="version", version=f"ank-server {version()}")
    p.add_argument("-c", "--startup-manifest", "--startup-config", dest="startup_manifest", help="manifest to apply")
    p.add_argument(
        "-a",
        "--address",
        "--bind",
        dest="address",
        action="append",
        help="host:port to listen on (repeatable; default 127.0.0.1:7447 and 127.0.0.1:25551)",
    )
    p.add_argument("-x", "--server-config", help="Ankaios server configuration file (TOML)")
    p.add_argument("-k", "--insecure", action="store_true", default=None, help="plain TCP, no mTLS")
    p.add_argument("--ca_pem", help="CA certificate (PEM) for mTLS")
    p.add_argument("--crt_pem", help="the server's certificate (PEM)")
    p.add_argument("--key_pem", help="the server's private key (PEM)")
    p.add_argument("--state-dir", help="the planner's state directory (default: the planner's)")
    p.add_argument(
        "--fresh-state",
        action="store_true",
        default=os.environ.get("ANKSERVER_FRESH_STATE", "").lower() in ("1", "true", "yes"),
        help="start from the startup manifest alone, as Ankaios's server does: the planner keeps its state in a "
        "temporary directory removed on exit (env ANKSERVER_FRESH_STATE)",
    )
    p.add_argument("--no-scheduler", action="store_true", help="do not start ank-scheduler")
    p.add_argument("--no-health-watcher", action="store_true", help="do not start ank-health-watcher")
    p.add_argument("--stop-grace", type=float, default=10.0, help="SIGTERM -> SIGKILL grace for the children, s")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


class Settings:
    """The effective options after command line, environment and file."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        path = args.server_config or os.environ.get("ANKSERVER_SERVER_CONFIG")
        try:
            conf = LayeredConfig("ANKSERVER", "server config", path, dict(os.environ))
        except ValueError as exc:
            raise BusConfigError(str(exc)) from exc
        if conf.conf.get("version", "v1") != "v1":
            raise BusConfigError(f"server config {path}: unsupported version {conf.conf.get('version')!r}")
        self.startup_manifest: str | None = conf.pick(args.startup_manifest, "startup_manifest")
        address = args.address or ([os.environ["ANKSERVER_ADDRESS"]] if os.environ.get("ANKSERVER_ADDRESS") else None)
        if address is None and conf.conf.get("address"):
            address = [str(conf.conf["address"])]
        self.addresses: list[str] = address or list(DEFAULT_ADDRESSES)
        self.insecure = conf.flag(args.insecure, "insecure")

        def write(content: str, name: str) -> str:
            file = run_dir / f"{name}.pem"
            file.write_text(content)
            file.chmod(0o600)
            return str(file)

        try:
            self.pem = conf.pem({p: getattr(args, p) for p in PEMS}, self.insecure, write)
        except ValueError as exc:
            raise BusConfigError(str(exc)) from exc


def _parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when ank-server dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _check_manifest(path: str) -> str:
    """The startup manifest's text, checked here first as the planner will
    (schema, templates, dependency cycles): a bad one stops ank-server before
    anything starts, as Ankaios's exits with an error."""
    from services.planner import core

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BusConfigError(f"cannot read startup manifest {path}: {exc.strerror}") from exc
    _step, result = core.apply_manifest(core.PlannerState(durable=core.Durable()), text, int(time.time() * 1000))
    if not result.ok:
        raise BusConfigError(
            f"startup manifest {path} is invalid: " + "; ".join(f"{e.path}: {e.message}" for e in result.errors)
        )
    return text


def _wait_listening(host_port: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    host, _, port = host_port.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BusConfigError(f"the router exited with {proc.returncode} (is {host_port} in use?)")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BusConfigError(f"the router did not listen on {host_port} within {timeout:g} s")


def _wait_planner(client_conf: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the planner answers `ank/cmd/state` (bounded; a planner that is
    still not up then is left to come up while the others start)."""
    deadline = time.monotonic() + timeout
    with zenoh.open(zenoh.Config.from_file(str(client_conf))) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BusConfigError(f"the planner exited with {proc.returncode}")
            if any(True for _ in session.get(keys.CMD_STATE, timeout=1.0)):
                return
            time.sleep(0.05)


class Server:
    def __init__(self, settings: Settings, args: argparse.Namespace, run_dir: Path) -> None:
        self.settings = settings
        self.args = args
        self.run_dir = run_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        self.env["PATH"] = bindir + os.pathsep + self.env.get("PATH", "")
        self.env["PYTHONPATH"] = str(ROOT) + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.env.pop("ANK_SERVER", None)

    def configs(self) -> tuple[Path, Path]:
        """The router's configuration (the public endpoints, with mTLS when
        PEM files are given, plus a Unix socket in ank-server's private run
        directory) and its own services' (connecting through that socket:
        the server's certificate is not a client certificate)."""
        socket_endpoint = f"unixsock-stream/{self.run_dir / 'router.sock'}"
        router = zenoh.Config.from_file(str(ROUTER_CONFIG))
        settings = ankaios_tls.router_settings(self.settings.addresses, self.settings.pem)
        settings["listen/endpoints"] = [*settings["listen/endpoints"], socket_endpoint]
        insert_settings(router, settings)
        router_file = self.run_dir / "router.json5"
        router_file.write_text(str(router))
        client = ankaios_tls.client_config(socket_endpoint, ankaios_tls.Pem())
        client_file = self.run_dir / "client.json5"
        client_file.write_text(str(client))
        return router_file, client_file

    def start(self) -> Path:
        router_conf, client_conf = self.configs()
        py = sys.executable
        verbose = ["-v"] * self.args.verbose
        zc = ["--zenoh-config", str(client_conf)]
        argv: list[tuple[str, list[str]]] = [
            ("router", [py, "-m", "services.bus.router", "--zenoh-config", str(router_conf), *verbose]),
            (
                "planner",
                [py, "-m", "services.planner", *zc, *verbose, *self._state_dir(), *self._startup()],
            ),
        ]
        if not self.args.no_health_watcher:
            argv.append(("health-watcher", [py, "-m", "services.health_watcher", *zc, *verbose]))
        if not self.args.no_scheduler:
            argv.append(("scheduler", [py, "-m", "services.scheduler", "--allow-unmetered", *zc, *verbose]))
        for name, cmd in argv:
            proc = subprocess.Popen(cmd, env=self.env, preexec_fn=_parent_death_signal)
            self.children.append((name, proc))
            if name == "router":
                _wait_listening(self.settings.addresses[0], proc)
            elif name == "planner":
                # The planner first, alone on the (shared) cores: clients
                # started right after ank-server ask it, not the others.
                _wait_planner(client_conf, proc, PLANNER_START_TIMEOUT)
        return client_conf

    def _startup(self) -> list[str]:
        manifest = self.settings.startup_manifest
        return ["--startup-manifest", str(Path(manifest).resolve())] if manifest else []

    def _state_dir(self) -> list[str]:
        if self.args.state_dir:
            return ["--state-dir", self.args.state_dir]
        if self.args.fresh_state:
            return ["--state-dir", str(self.run_dir / "planner")]
        return []

    def dead(self) -> list[str]:
        return [name for name, proc in self.children if proc.poll() is not None]

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.args.stop_grace
        for _name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ank_common.logsetup import setup_logging

    log = setup_logging("ank-server", args.verbose)
    with tempfile.TemporaryDirectory(prefix="ank-server-") as tmp:
        run_dir = Path(tmp)
        try:
            settings = Settings(args, run_dir)
            if settings.startup_manifest:
                _check_manifest(settings.startup_manifest)
            for address in settings.addresses:
                ankaios_tls.endpoint(address, tls=False)
        except BusConfigError as exc:
            print(f"ank-server: {exc}", file=sys.stderr)
            return EXIT_ERROR
        server = Server(settings, args, run_dir)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        try:
            server.start()
            log.info("ank-server up: listening on %s", ", ".join(settings.addresses))
            while not stop.wait(0.5):
                if dead := server.dead():
                    log.error("%s exited: stopping the server", ", ".join(dead))
                    return EXIT_ERROR
            return 0
        except BusConfigError as exc:
            print(f"ank-server: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
