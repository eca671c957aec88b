"""`ank`: Eclipse Ankaios's CLI verbs, spoken over Zenoh.

ank apply [-d] [--agent A] [--dry-run] FILE|-
ank delete workload NAME...
ank delete config NAME...
ank get workloads [-a AGENT] [-s STATE] [NAME...] [-w] [-o table|json|yaml]
ank get workload NAME
ank get state [MASK...] [-o yaml|json]
ank get agents | nodes
ank get configs
ank get events [MASK...] [-c] [-o yaml|json]   (the state-change stream)
ank get eventlog [-w]                          (rejections, restarts, scheduling)
ank logs NAME [-f] [-t N]
ank run workload NAME --runtime R --config C --agent A
ank set state MASK... FILE
ank up [MANIFEST] [--agent NAME]
ank dashboard
ank sim fleet
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from ank_common.views import event_row, workload_row
from schemas import keys
from schemas.messages import (
    AgentStatus,
    ApplyRequest,
    ApplyResult,
    CompleteState,
    Event,
    WorkloadState,
)
from services.bus import Bus, BusConfigError
from services.bus.log_follower import ask_logs, follow_logs, text_from
from services.cli import ankaios, views
from services.cli.client import Client, NoPlanner
from services.dashboard import options as dashboard_options
from services.scheduler import sim_options

# As Ankaios's ank: 1 for every failure, the server unreachable included (usage errors: 2).
EXIT_OK, EXIT_ERROR, EXIT_NO_SERVER = 0, 1, 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ank", description="ank-zenoh: Ankaios-compatible orchestration over Zenoh")
    _global_options(p, defaults=True)
    # Like Ankaios's (clap `global`) options, these are also accepted after the
    # subcommand: every subcommand parser gets them with suppressed defaults.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True)

    def add(subparsers: Any, *names: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(*names, parents=[common], **kw)
        return parser

    ap = add(sub, "apply", help="apply a manifest (add or update its workloads)")
    ap.add_argument("manifest", nargs="+", help="manifest file(s), or - for stdin")
    ap.add_argument("-d", "--delete", action="store_true", help="delete the manifest's workloads")
    ap.add_argument("--agent", default=None, help="agent for workloads without one ('' = NotScheduled)")
    ap.add_argument("--dry-run", action="store_true", help="validate and print the rendered manifest; no bus")
    ap.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for workloads to settle")

    de = add(sub, "delete", help="delete workloads")
    de_sub = de.add_subparsers(dest="object", required=True)
    dw = add(de_sub, "workload", aliases=["workloads"])
    dw.add_argument("names", nargs="+")
    dw.add_argument("--timeout", type=float, default=60.0)
    dc = add(de_sub, "config", aliases=["configs"])
    dc.add_argument("names", nargs="+")

    ge = add(sub, "get", help="show state")
    ge_sub = ge.add_subparsers(dest="object", required=True)
    gws = add(ge_sub, "workloads")
    gws.add_argument("names", nargs="*")
    gws.add_argument("-a", "--agent")
    gws.add_argument("-s", "--state")
    gws.add_argument("-w", "--watch", action="store_true")
    gws.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    gw = add(ge_sub, "workload")
    gw.add_argument("name")
    gw.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    gs = add(ge_sub, "state")
    gs.add_argument("masks", nargs="*", metavar="FIELD_MASK", help="e.g. desiredState.workloads.nginx")
    gs.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    for name in ("agents", "nodes"):
        ga = add(ge_sub, name)
        ga.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add(ge_sub, "configs", aliases=["config"])
    gev = add(ge_sub, "events", help="the state-change event stream, until interrupted")
    gev.add_argument("masks", nargs="*", metavar="FIELD_MASK", help="e.g. workloadStates, desiredState.workloads")
    gev.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    gev.add_argument("-c", "--include-current-state", action="store_true", help="first print the current state")
    gel = add(ge_sub, "eventlog", help="rejections, restarts, scheduling decisions, dropped messages")
    gel.add_argument("-w", "--watch", action="store_true")
    gel.add_argument("-o", "--output", choices=["table", "json"], default="table")

    lg = add(sub, "logs", help="a workload's output")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-t", "--tail", type=int)

    ru = add(sub, "run", help="run one workload without a manifest file")
    ru_sub = ru.add_subparsers(dest="object", required=True)
    rw = add(ru_sub, "workload")
    rw.add_argument("name")
    rw.add_argument("--runtime", required=True)
    rw.add_argument("--config", required=True, help="the runtimeConfig text")
    rw.add_argument("--agent", required=True)
    rw.add_argument("--restart-policy", default="NEVER", choices=["NEVER", "ON_FAILURE", "ALWAYS"])
    rw.add_argument("--timeout", type=float, default=120.0)

    se = add(sub, "set", help="Ankaios `set state` with update masks")
    se_sub = se.add_subparsers(dest="object", required=True)
    ss = add(se_sub, "state")
    ss.add_argument("args", nargs="+", metavar="MASK... FILE")
    ss.add_argument("--timeout", type=float, default=120.0)

    up = add(sub, "up", help="start the embedded system on this machine")
    up.add_argument("manifest", nargs="?")
    up.add_argument(
        "--agent",
        default=None,
        help="the agent's name (default: the host name); also the agent of the manifest's workloads that name none",
    )
    up.add_argument(
        "--state-dir",
        default=None,
        help="where the system keeps its state and logs (default $XDG_STATE_HOME/ank-zenoh/up, "
        "/var/lib/ank-zenoh/up for root); locked while it runs",
    )
    up.add_argument("--port", type=int, default=7447, help="the router's loopback port")
    up.add_argument("--no-watch", action="store_true", help="print state changes as lines instead of a live table")
    up.add_argument("--dashboard-port", type=int, default=8800, help="the web dashboard's port (0: none)")
    up.add_argument("--secure", action="store_true", help="TLS with mutual authentication and access control")

    da = add(sub, "dashboard", help="the web dashboard and read-only HTTP API")
    dashboard_options.add_arguments(da, bus_options=False)

    si = add(sub, "sim", help="simulations")
    si_sub = si.add_subparsers(dest="object", required=True)
    sf = add(si_sub, "fleet", help="the fleet energy study")
    sim_options.add_arguments(sf)
    return p


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        default=d(os.environ.get("ANK_INSECURE", "").lower() in ("1", "true", "yes")),
        help="no TLS even when PEM files are given (env ANK_INSECURE)",
    )
    # `-s` after a subcommand is that subcommand's (`get workloads -s STATE`).
    p.add_argument(
        *(["-s"] if defaults else []),
        "--server-url",
        default=d(os.environ.get("ANK_SERVER_URL") or None),
        help="the router: http(s)://host:port (Ankaios's form), host:port or tcp/host:port (env ANK_SERVER_URL)",
    )
    for pem in ("ca_pem", "crt_pem", "key_pem"):
        p.add_argument(f"--{pem}", default=d(None), help=f"mTLS: {pem} file (env ANK_{pem.upper()})")
    if defaults:  # before the subcommand only: `run workload --config` is the runtimeConfig
        p.add_argument(
            "-x",
            "--config",
            dest="ank_config",
            default=os.environ.get("ANK_CONFIG") or None,
            help="Ankaios's ank configuration file (TOML; env ANK_CONFIG)",
        )
    p.add_argument("--zenoh-config", default=d(None), help="Zenoh configuration file (default zenoh.json5)")
    p.add_argument("--response-timeout", type=float, default=d(5.0), help="seconds to wait for the planner")
    p.add_argument("-v", "--verbose", action="count", default=d(0))
    p.add_argument("-q", "--quiet", action="store_true", default=d(False))
    p.add_argument("--no-wait", action="store_true", default=d(False), help="do not wait for workloads to settle")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ank_config:
        try:
            _apply_config_file(args, argv if argv is not None else sys.argv[1:])
        except (OSError, ValueError) as exc:
            print(f"ank: cannot use config file {args.ank_config}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    from ank_common.logsetup import setup_logging

    setup_logging("ank", args.verbose, quiet=not args.verbose)
    try:
        return _dispatch(args)
    except NoPlanner as exc:
        print(f"ank: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except BusConfigError as exc:
        print(f"ank: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except KeyboardInterrupt:
        return 130


def _apply_config_file(args: argparse.Namespace, argv: list[str]) -> None:
    """Ankaios's ank.conf: its values for what the command line leaves out
    (response_timeout in ms, verbose, quiet, no_wait, and under [default]
    server_url, insecure and the PEM files or their *_content)."""
    import tomllib

    with open(args.ank_config, "rb") as f:
        conf = tomllib.load(f)
    if conf.get("version", "v1") != "v1":
        raise ValueError(f"unsupported version {conf.get('version')!r}")
    given = set(argv)
    if "response_timeout" in conf and "--response-timeout" not in given:
        args.response_timeout = float(conf["response_timeout"]) / 1000
    for key, flags in (("verbose", ("-v", "--verbose")), ("quiet", ("-q", "--quiet")), ("no_wait", ("--no-wait",))):
        if key in conf and not given & set(flags):
            value = bool(conf[key])
            setattr(args, key, int(value) if key == "verbose" else value)
    context = conf.get("default", {})
    if not isinstance(context, dict):
        raise ValueError("[default] must be a table")
    if "server_url" in context and not given & {"-s", "--server-url"} and not os.environ.get("ANK_SERVER_URL"):
        args.server_url = str(context["server_url"])
    if context.get("insecure") and not args.insecure:
        args.insecure = str(context["insecure"]).lower() in ("true", "1", "yes")
    for pem in ("ca_pem", "crt_pem", "key_pem"):
        if getattr(args, pem) or os.environ.get(f"ANK_{pem.upper()}"):
            continue
        if context.get(pem) and context.get(f"{pem}_content"):
            raise ValueError(f"give {pem} or {pem}_content, not both")
        if context.get(pem):
            setattr(args, pem, str(context[pem]))
        elif context.get(f"{pem}_content"):
            import tempfile

            fd, path = tempfile.mkstemp(prefix=f"ank-{pem}-", suffix=".pem")
            with os.fdopen(fd, "w") as out:
                out.write(str(context[f"{pem}_content"]))
            setattr(args, pem, path)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "apply" and args.dry_run:
        from ank_common.manifest import dry_run

        return max(int(dry_run(m, args.agent, args.output, sys.stdout, sys.stderr)) for m in args.manifest)
    if args.command == "up":
        from services.cli.up import run_up

        return run_up(args)
    if args.command == "dashboard":
        from services.dashboard import shell as dashboard

        args.server = args.server_url
        return int(dashboard.run(args))
    if args.command == "sim":
        from services.scheduler import sim

        return sim.run(args)
    with _bus(args) as bus:
        client = Client(bus, args.response_timeout)
        return COMMANDS[(args.command, getattr(args, "object", None))](client, args)


def _bus(args: argparse.Namespace) -> Bus:
    """The CLI's session: Ankaios's server URL and PEM options mapped onto
    the Zenoh configuration (-k: plain TCP even with PEM files)."""
    from services.bus import ankaios_tls

    pem = ankaios_tls.Pem() if args.insecure else ankaios_tls.pem_from(args.ca_pem, args.crt_pem, args.key_pem, "ANK_")
    server = ankaios_tls.default_server(args.server_url, args.zenoh_config, pem)
    if pem.given or (server and "://" in server):
        return Bus("ank-cli", zenoh_config=ankaios_tls.client_config(server, pem, args.zenoh_config))
    return Bus("ank-cli", config=args.zenoh_config, server=server)


# -- apply / delete / set state / run ------------------------------------------
def _read_source(path: str) -> str:
    """The text of a manifest file (or stdin); OSError naming the problem,
    also for bytes that are not UTF-8."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise OSError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    texts = []
    for path in args.manifest:
        try:
            texts.append(_read_source(path))
        except OSError as exc:
            print(f"ank: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
    text = texts[0] if len(texts) == 1 else _merge_manifests(args.manifest, texts)
    if text is None:
        return EXIT_ERROR
    request = ApplyRequest(manifest=text, agent=args.agent, delete=args.delete)
    return _apply_and_wait(client, args, request)


def _merge_manifests(paths: list[str], texts: list[str]) -> str | None:
    """Several manifests applied as one (as Ankaios's `ank apply A B`): their
    workloads and configs together; a name in two files is an error."""
    import yaml

    merged: dict[str, Any] = {}
    for path, text in zip(paths, texts, strict=True):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            print(f"ank: {path}: not YAML: {exc}", file=sys.stderr)
            return None
        if not isinstance(doc, dict):
            print(f"ank: {path}: expected a mapping at the top", file=sys.stderr)
            return None
        for key, value in doc.items():
            if key in ("workloads", "configs") and isinstance(value, dict):
                into = merged.setdefault(key, {})
                for name in value:
                    if name in into:
                        print(f"ank: {path}: {key}.{name} is also in an earlier manifest", file=sys.stderr)
                        return None
                into.update(value)
            elif key not in merged:
                merged[key] = value
    return yaml.safe_dump(merged, sort_keys=False)


def cmd_set_state(client: Client, args: argparse.Namespace) -> int:
    *masks, path = args.args
    if not masks:
        print("ank: set state needs at least one update mask and a file", file=sys.stderr)
        return EXIT_ERROR
    try:
        text = _read_source(path)
    except OSError as exc:
        print(f"ank: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return _apply_and_wait(client, args, ApplyRequest(manifest=text, masks=masks))


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    manifest = {
        "apiVersion": "v1",
        "workloads": {
            args.name: {
                "runtime": args.runtime,
                "agent": args.agent,
                "restartPolicy": args.restart_policy,
                "runtimeConfig": args.config,
            }
        },
    }
    return _apply_and_wait(client, args, ApplyRequest(manifest=json.dumps(manifest)))


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    states: list[WorkloadState] = []
    lock = threading.Condition()
    if not args.no_wait:
        client.watch_states(lambda st: _append(lock, states, st))
    result = client.delete(args.names)
    return _report_and_wait(client, args, result, states, lock)


def _append(lock: threading.Condition, states: list[WorkloadState], st: WorkloadState) -> None:
    with lock:
        states.append(st)
        lock.notify_all()


def _apply_and_wait(client: Client, args: argparse.Namespace, request: ApplyRequest) -> int:
    states: list[WorkloadState] = []
    lock = threading.Condition()
    if not args.no_wait:
        client.watch_states(lambda st: _append(lock, states, st))
    result = client.apply(request)
    return _report_and_wait(client, args, result, states, lock)


def _report_and_wait(
    client: Client,
    args: argparse.Namespace,
    result: ApplyResult,
    states: list[WorkloadState],
    lock: threading.Condition,
) -> int:
    """Prints the result, then waits until every added/updated workload
    reports a settled state of the instance the planner planned for it (and
    every deleted one Removed). States are told apart by instance, never by
    comparing this machine's clock with the agents' (a clock 60 s off must
    not matter)."""
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not result.ok:
        for e in result.errors:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.no_wait:
        return EXIT_OK
    waiting = {n: False for n in result.added + result.updated} | {n: True for n in result.deleted}
    if not waiting:
        return EXIT_OK
    # The instance each workload must reach: the planner's plans after the change.
    planned = client.planned_instances()
    # States already current before our subscription saw them: read them once.
    cs = client.state()
    for st in cs.workload_states:
        _append(lock, states, st)
    progress = _Progress(cs, sorted(waiting), live=sys.stdout.isatty() and not args.quiet)
    progress.quiet = args.quiet
    progress.added = set(result.added)
    deadline = time.monotonic() + args.timeout
    try:
        with lock:
            while True:
                latest = views.latest_states(
                    s for s in states if s.workload in result.deleted or _of_planned(s, planned.get(s.workload))
                )
                progress.show(latest)
                pending = [
                    n
                    for n, deleting in waiting.items()
                    if not views.settled(
                        (latest[n].execution_state.state, latest[n].execution_state.substate) if n in latest else None,
                        deleting=deleting,
                    )
                ]
                if not pending:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    progress.close()
                    print(f"ank: timed out waiting for {', '.join(sorted(pending))} to settle", file=sys.stderr)
                    return EXIT_ERROR
                lock.wait(remaining)
    finally:
        progress.close()
    return EXIT_OK


def _of_planned(state: WorkloadState, instance: str | None) -> bool:
    """Whether a state is about the planned instance (states the planner
    derives itself, e.g. for an unscheduled workload, name no instance)."""
    return not instance or not state.instance or state.instance == instance


class _Progress:
    """`ank apply`'s progress: the workloads table of what the apply touched,
    redrawn in place on a terminal as their states change (Pending(Initial) ->
    Pending(Starting) -> Running(Ok)); printed once, settled, otherwise."""

    def __init__(self, cs: CompleteState, names: list[str], *, live: bool) -> None:
        self.cs = cs
        self.names = names
        self.live = live
        self._live: Any = None
        self._last = ""
        self.quiet = False
        self.added: set[str] = set()
        self._printed: dict[str, str] = {}

    def table(self, latest: dict[str, WorkloadState]) -> str:
        rows = [workload_row(n, self.cs.desired, latest.get(n)) for n in self.names]
        return ankaios.workload_table(rows)

    def show(self, latest: dict[str, WorkloadState]) -> None:
        if not self.live:
            self._lines(latest)
            return
        text = self.table(latest)
        if text == self._last:
            return
        self._last = text
        from rich.live import Live
        from rich.text import Text

        if self._live is None:
            self._live = Live(Text(text), auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(Text(text), refresh=True)

    def _lines(self, latest: dict[str, WorkloadState]) -> None:
        """Not a terminal: the header once, then each workload's row every
        time its state changes — the frames Ankaios draws, one after another."""
        if self.quiet:
            return
        rows = [workload_row(n, self.cs.desired, latest.get(n)) for n in self.names]
        # Padded to the widest state any row may take, so columns stay put.
        widest = {**rows[0], "state": "Stopping", "substate": "WaitingToStop", "additionalInfo": ""}
        lines = ankaios.workload_table([*rows, widest]).splitlines()[:-1]
        if not self._printed:
            print(lines[0], flush=False)
            # Ankaios's first frame: every added workload Pending(Initial).
            initial = [{**row, "state": "Pending", "substate": "Initial", "additionalInfo": ""} for row in rows]
            first = ankaios.workload_table([*initial, widest]).splitlines()[1:-1]
            for row, line in zip(initial, first, strict=True):
                if row["name"] in self.added:
                    self._printed[row["name"]] = line
                    print(line, flush=False)
        for name, line in zip(self.names, lines[1:], strict=True):
            if self._printed.get(name) != line:
                self._printed[name] = line
                print(line, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


# -- get -----------------------------------------------------------------------
def _rows(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    cs = client.state()
    return views.workload_rows(
        cs.desired, cs.workload_states, names=args.names or None, agent=args.agent, state=args.state
    )


def cmd_get_workloads(client: Client, args: argparse.Namespace) -> int:
    if args.watch:
        from services.cli.live import watch_workloads

        return watch_workloads(client, args)
    rows = _rows(client, args)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        print(ankaios.workload_table(rows))
    return EXIT_OK


def cmd_get_workload(client: Client, args: argparse.Namespace) -> int:
    cs = client.state()
    if args.name not in cs.desired.workloads and not any(s.workload == args.name for s in cs.workload_states):
        print(f"ank: workload {args.name!r} not found", file=sys.stderr)
        return EXIT_ERROR
    lines = views.workload_detail(args.name, cs.desired, cs.workload_states)
    if args.output == "table":
        width = max(len(k) for k, _ in lines)
        for k, v in lines:
            print(f"{k + ':':<{width + 1}} {v}")
    else:
        import yaml

        row = workload_row(args.name, cs.desired, views.latest_states(cs.workload_states).get(args.name))
        wl = cs.desired.workloads.get(args.name)
        row["dependencies"] = {d: c for d, c in sorted(wl.dependencies.items())} if wl else {}
        print(json.dumps(row, indent=2) if args.output == "json" else yaml.safe_dump(row, sort_keys=False), end="\n")
    return EXIT_OK


def _statuses_if(client: Client, masks: list[str]) -> dict[str, AgentStatus]:
    """Agent statuses, asked for only when the masks select `agents`."""
    wanted = not masks or any(m == "agents" or m.startswith("agents.") or m.startswith("*") for m in masks)
    return client.agent_statuses() if wanted else {}


def cmd_get_state(client: Client, args: argparse.Namespace) -> int:
    cs = client.state()
    doc = ankaios.select(ankaios.state_document(cs, _statuses_if(client, args.masks)), args.masks)
    print(_render(doc, args.output), end="")
    return EXIT_OK


def _yaml(doc: Any) -> str:
    """Multi-line strings (runtimeConfig) as `|` blocks, as Ankaios prints them
    (yaml is imported here: `ank get workloads` does not need it)."""
    import yaml

    class _BlockDumper(yaml.SafeDumper):
        pass

    def _str_presenter(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        if "\n" in text:
            return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
        return dumper.represent_scalar("tag:yaml.org,2002:str", text)

    _BlockDumper.add_representer(str, _str_presenter)
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)


def _render(doc: Any, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2) + "\n"
    return _yaml(doc)


def cmd_get_configs(client: Client, args: argparse.Namespace) -> int:
    print(ankaios.plain_table(ankaios.CONFIG_HEADERS, ([n] for n in ankaios.config_names(client.state()))))
    return EXIT_OK


def cmd_delete_configs(client: Client, args: argparse.Namespace) -> int:
    known = set(client.state().desired.configs)
    missing = [n for n in args.names if n not in known]
    for n in missing:
        print(f"ank: config {n!r} not found", file=sys.stderr)
    present = [n for n in args.names if n in known]
    if not present:
        return EXIT_ERROR if missing else EXIT_OK
    masks = [f"desiredState.configs.{n}" for n in present]
    result = client.apply(ApplyRequest(manifest="desiredState:\n  apiVersion: v1\n", masks=masks))
    for e in result.errors:
        print(f"error: {e}", file=sys.stderr)
    return EXIT_OK if result.ok and not missing else EXIT_ERROR


def cmd_get_agents(client: Client, args: argparse.Namespace) -> int:
    statuses = client.agent_statuses()
    rows = views.agent_rows(statuses, client.energy())
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK

    print(ankaios.agents_table(statuses, {r["name"]: r["workloads"] for r in rows}))
    return EXIT_OK


def cmd_get_eventlog(client: Client, args: argparse.Namespace) -> int:
    got: list[Event] = []
    done = threading.Event()

    def on_event(ev: Event) -> None:
        if args.watch:
            _print_event(ev, args.output)
        else:
            got.append(ev)

    client.watch_events(on_event)
    # Recent events are kept by the planner; the live ones come from the stream.
    replies = client.bus.get_decoded(keys.EVENTS, Event, timeout=client.timeout)
    for ev in sorted(replies, key=lambda e: e.time_ms):
        _print_event(ev, args.output)
    if args.watch:
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        try:
            _wait_set(done)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_get_events(client: Client, args: argparse.Namespace) -> int:
    """Ankaios's event stream: one document per change of the selected parts
    of the complete state (with the added/updated/removed field paths and an
    RFC 3339 timestamp), until interrupted. A change is noticed from the bus
    (workload states, plans, agent liveliness and statuses, the planner's
    events) and the complete state is then read again and compared."""
    changed = threading.Event()
    statuses: dict[str, AgentStatus] = {}
    lock = threading.Lock()
    wants_agents = not args.masks or any(m == "agents" or m.startswith(("agents.", "*")) for m in args.masks)

    def on_status(_key: str, st: AgentStatus) -> None:
        with lock:
            old = statuses.get(st.agent)
            statuses[st.agent] = st
        if wants_agents and (old is None or old.tags != st.tags):
            changed.set()

    client.bus.subscribe(keys.AGENT_STATUSES, AgentStatus, on_status)
    client.bus.subscribe_raw(keys.STATES, lambda _k, _p: changed.set())
    client.bus.subscribe_raw(keys.PLANS, lambda _k, _p: changed.set())
    client.bus.subscribe_raw(keys.EVENTS, lambda _k, _p: changed.set())
    client.bus.watch_liveliness(keys.AGENT_TOKENS, lambda _k, _up: changed.set(), history=False)
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        changed.set()

    signal.signal(signal.SIGTERM, on_term)
    previous: dict[str, Any] | None = None
    first = True
    after_notice = False  # the last read was caused by a notice (and gets one more read)
    while not stop.is_set():
        changed.clear()
        with lock:
            known = dict(statuses)
        # The stream starts when this command started, not once it is
        # subscribed: the first read asks for the desired state as it was then.
        since = process_start_ms() if first and not args.include_current_state else None
        cs = client.state(since_ms=since)
        doc = ankaios.select(ankaios.state_document(cs, known), args.masks)
        if first and not args.include_current_state:
            if cs.desired_since is not None:  # changed while this command was starting
                then = msgspec.structs.replace(cs, desired=cs.desired_since)
                before = ankaios.select(ankaios.state_document(then, known), args.masks)
                event = ankaios.event_document(before, doc, time.time_ns() // 1_000_000)
                if event is not None:
                    _print_state_event(event, args.output)
            previous = doc
        else:
            event = ankaios.event_document(previous, doc, time.time_ns() // 1_000_000)
            if event is not None:
                _print_state_event(event, args.output)
            previous = doc
        first = False
        if after_notice:
            # A notice and the planner's own copy of that change race: the read
            # it caused is made once more shortly after, so that a last change
            # (a Succeeded right after a Running, a Removed) the planner had not
            # taken yet is not left unreported until some later change.
            after_notice = changed.wait(RECHECK_S)
        else:
            _wait_set(changed)
            after_notice = True
    return EXIT_OK


RECHECK_S = 0.25  # `ank get events`: a read a notice caused is made again this much later


def _wait_set(event: threading.Event) -> None:
    """As ank_common.lifecycle.wait_for_stop (not imported: the CLI stays
    lean): in slices, so that a SIGTERM the kernel gave to one of Zenoh's
    threads is acted upon."""
    while not event.wait(0.5):
        pass


def process_start_ms() -> int | None:
    """When this process started, on the wall clock in ms (from the kernel's
    start time in clock ticks since boot and the uptime, to ~10 ms)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    age = max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    return int((time.time() - age) * 1000)


def _print_state_event(event: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(event, separators=(",", ":")), flush=True)
    else:
        print("---", flush=False)
        print(_yaml(event), end="", flush=True)


def _print_event(ev: Event, output: str) -> None:
    if output == "json":
        # One event per line, ASCII-escaped: a message may carry characters
        # that line-based readers split on (U+2028, U+0085).
        print(json.dumps(event_row(ev), separators=(",", ":")), flush=True)
    else:
        when = time.strftime("%H:%M:%S", time.localtime(ev.time_ms / 1000)) if ev.time_ms else "--:--:--"
        print(f"{when} {ev.severity:<7} {ev.kind:<18} {ev.subject:<24} {ev.message}", flush=True)


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    """The workload's log from its agent; `-f`: then what it writes, pushed
    by the agent on `ank/logs/<agent>/<wl>/stream` while this command renews
    its `follow=1` lease (services.bus.log_follower), until Ctrl-C or SIGTERM."""
    cs = client.state()
    st = views.latest_states(cs.workload_states).get(args.name)
    if st is None or not st.agent:
        print(f"ank: workload {args.name!r} has no agent running it", file=sys.stderr)
        return EXIT_ERROR
    if not args.follow:
        reply = ask_logs(
            client.bus, st.agent, args.name, f"tail={args.tail}" if args.tail is not None else "", client.timeout
        )
        if reply is None:
            print(f"ank: agent {st.agent} did not answer for {args.name}'s logs", file=sys.stderr)
            return EXIT_ERROR
        _write(text_from(reply, reply.start))
        return EXIT_OK
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # on the main thread, in slices, so that Ctrl-C and SIGTERM are acted upon (see _wait_set)
    if not follow_logs(client.bus, st.agent, args.name, _write, stop, tail=args.tail, timeout=client.timeout):
        print(f"ank: agent {st.agent} did not answer for {args.name}'s logs", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _console() -> Any:
    from rich.console import Console

    return Console()


COMMANDS = {
    ("apply", None): cmd_apply,
    ("delete", "workload"): cmd_delete,
    ("delete", "workloads"): cmd_delete,
    ("get", "workloads"): cmd_get_workloads,
    ("get", "workload"): cmd_get_workload,
    ("get", "state"): cmd_get_state,
    ("get", "agents"): cmd_get_agents,
    ("get", "nodes"): cmd_get_agents,
    ("get", "events"): cmd_get_events,
    ("get", "eventlog"): cmd_get_eventlog,
    ("get", "configs"): cmd_get_configs,
    ("get", "config"): cmd_get_configs,
    ("delete", "config"): cmd_delete_configs,
    ("delete", "configs"): cmd_delete_configs,
    ("logs", None): cmd_logs,
    ("run", "workload"): cmd_run,
    ("set", "state"): cmd_set_state,
}

if __name__ == "__main__":
    raise SystemExit(main())
