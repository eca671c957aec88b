"""Eclipse Ankaios's `ank-agent` options on top of ank-agent's own:
`-n/--name`, `-s/--server-url/--server` (Ankaios's `http(s)://host:port`
mapped to a Zenoh endpoint), `-k/--insecure`, `--ca_pem/--crt_pem/--key_pem`,
`-r/--run-folder` (the agent keeps its files in `<run-folder>/<name>_io`) and
`-x/--agent-config/--config_path` (Ankaios's TOML agent configuration).
Command line > ANKAGENT_* environment > configuration file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.bus import Bus, BusConfigError, ankaios_tls
from services.bus.ankaios_config import PEMS, LayeredConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--insecure", action="store_true", default=None, help="plain TCP, no mTLS")
    for pem in ("ca_pem", "crt_pem", "key_pem"):
        parser.add_argument(f"--{pem}", help=f"mTLS: {pem} file (env ANKAGENT_{pem.upper()})")
    parser.add_argument("-r", "--run-folder", help="Ankaios's run folder: files go to <run-folder>/<name>_io")
    parser.add_argument("-x", "--agent-config", "--config_path", dest="agent_config", help="agent config (TOML)")


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fills name/server/run_dir/pem from the environment and the config file."""
    path = args.agent_config or os.environ.get("ANKAGENT_AGENT_CONFIG")
    try:
        conf = LayeredConfig("ANKAGENT", "agent config", path, dict(os.environ))
    except ValueError as exc:
        parser.error(str(exc))
    args.name = conf.pick(args.name, "name")
    if not args.name:
        parser.error("the agent needs a name: --name NAME (or name in the agent config, env ANKAGENT_NAME)")
    args.server = conf.pick(args.server, "server_url")
    run_folder = conf.pick(args.run_folder, "run_folder")
    if run_folder and not args.run_dir:
        args.run_dir = str(Path(run_folder) / f"{args.name}_io")
    args.insecure = conf.flag(args.insecure, "insecure")
    try:
        args.pem = conf.pem({p: getattr(args, p) for p in PEMS}, args.insecure, _content_file)
    except ValueError as exc:
        parser.error(str(exc))


def _content_file(content: str, name: str) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix=f"ank-agent-{name}-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return path


CONNECT_WINDOW_S = 30.0


def open_bus(args: argparse.Namespace) -> Bus:
    """The agent's session: with PEM files or an http(s):// URL through the
    Ankaios mapping, otherwise as before. Like Ankaios's agent, one started
    before its server waits for it (here: up to 30 s, one attempt after
    another), instead of giving up at the first refusal."""
    import time

    given = args.server
    deadline = time.monotonic() + CONNECT_WINDOW_S
    while True:
        args.server = given
        try:
            return _open_bus(args)
        except BusConfigError as exc:
            if "cannot open Zenoh session" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _open_bus(args: argparse.Namespace) -> Bus:
    pem: ankaios_tls.Pem = args.pem
    args.server = ankaios_tls.default_server(args.server, args.zenoh_config, pem)
    if pem.given or (args.server and "://" in args.server):
        return Bus(f"agent/{args.name}", zenoh_config=ankaios_tls.client_config(args.server, pem, args.zenoh_config))
    return Bus(f"agent/{args.name}", config=args.zenoh_config, server=args.server)


__all__ = ["BusConfigError", "add_arguments", "open_bus", "resolve"]
