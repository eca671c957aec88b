"""Secured Zenoh configurations: TLS with mutual authentication, and the
router's access control (docs/security.md).

Theory of operation:

- Every process has an *identity*: `cli` (the CLI, middleware, dashboard),
  `planner`, `health-watcher`, `scheduler`, `agent-<name>` per agent, and
  `router`. Its certificate (`scripts/make-certs.sh`) carries the identity as
  common name, signed by the deployment's CA; its key is `<identity>.key`.
- Links are TLS with mutual authentication: a client without a certificate
  from the CA cannot connect at all. The router then knows each link's common
  name, and its access control (default: deny) decides, per common name, what
  the link may *send* — the ingress table `INGRESS_GRANTS` below. What a link
  may receive follows from what it may subscribe to or query, so egress is
  open on `ank/**` for every known identity.
- Key expressions in the table name the widest key allowed; a declaration
  (subscriber, queryable) is allowed only when a granted key expression
  includes it, so `ank/state/**` does not admit a subscriber on `ank/**`.
- Agents are known by name when the router starts: their rules are generated
  from the `agent` row with `{agent}` replaced. A new agent needs a router
  restart with the longer list (and its certificate).

The pure part builds plain dictionaries (`access_control`, `tls_settings`,
`router_settings`, `client_settings`); `router_config` / `client_config` check
the certificate files and lay the settings over the plain configurations
(router.json5 / zenoh.json5), so lease and scouting are set in one place.
`python -m services.bus.secure router|client ...` writes such a configuration
to a file for `ank-router --zenoh-config FILE` or a service's --zenoh-config.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zenoh

from services.bus import BusConfigError, default_config_path
from services.bus.router import DEFAULT_CONFIG as PLAIN_ROUTER_CONFIG

# The ACL's names of the message kinds it filters.
PUT = "put"
DELETE = "delete"
SUBSCRIBE = "declare_subscriber"
QUERY = "query"
QUERYABLE = "declare_queryable"
REPLY = "reply"
TOKEN = "liveliness_token"
LIVELINESS_SUBSCRIBE = "declare_liveliness_subscriber"
LIVELINESS_QUERY = "liveliness_query"
ALL_MESSAGES = (PUT, DELETE, SUBSCRIBE, QUERY, QUERYABLE, REPLY, TOKEN, LIVELINESS_SUBSCRIBE, LIVELINESS_QUERY)

SERVICE_IDENTITIES = ("cli", "planner", "health-watcher", "scheduler")
# The identity of the workloads themselves (middleware programs such as the
# police example's): free on their own keys, read-only on the orchestrator's.
WORKLOAD_IDENTITY = "workload"
APP_KEYS = ("**",)
ORCHESTRATOR_KEYS = ("ank/**",)
COMMAND_KEYS = ("ank/cmd/apply", "ank/cmd/delete")
ROUTER_IDENTITY = "router"
AGENT_PREFIX = "agent-"
AGENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
DEFAULT_SECURE_PORT = 7447

Grants = Mapping[str, tuple[str, ...]]

# What every identity may send: read states and events, report events.
COMMON_GRANTS: Grants = {
    PUT: ("ank/events/**",),
    SUBSCRIBE: ("ank/state/**", "ank/events/**"),
    QUERY: ("ank/state/**", "ank/events/**"),
}

# What each identity may send besides COMMON_GRANTS (router ingress). A put
# grant also covers delete on the same keys (see _rules).
INGRESS_GRANTS: Mapping[str, Grants] = {
    # Users and middleware: the only ones who change the desired state.
    "cli": {
        PUT: ("ank/desired",),
        SUBSCRIBE: ("ank/**",),
        QUERY: ("ank/**",),
        LIVELINESS_SUBSCRIBE: ("ank/agents/**",),
        LIVELINESS_QUERY: ("ank/agents/**",),
    },
    # Answers the commands, owns the plans and the states no live agent owns.
    "planner": {
        PUT: ("ank/plan/**", "ank/state/**"),
        SUBSCRIBE: ("ank/desired", "ank/bind/**"),
        QUERY: ("ank/bind/**",),
        QUERYABLE: ("ank/cmd/**", "ank/plan/**", "ank/state/**", "ank/events/**"),
        REPLY: ("ank/cmd/**", "ank/plan/**", "ank/state/**", "ank/events/**"),
        LIVELINESS_SUBSCRIBE: ("ank/agents/**",),
        LIVELINESS_QUERY: ("ank/agents/**",),
    },
    # ank/cmd/state is read-only: the health-watcher and scheduler read the
    # desired state through it; apply/delete stay with `cli`.
    "health-watcher": {
        PUT: ("ank/health/**",),
        SUBSCRIBE: ("ank/desired", "ank/health/**"),
        QUERY: ("ank/cmd/state", "ank/health/**"),
        QUERYABLE: ("ank/health/**",),
        REPLY: ("ank/health/**",),
        LIVELINESS_SUBSCRIBE: ("ank/agents/**",),
        LIVELINESS_QUERY: ("ank/agents/**",),
    },
    # Publishes energy for nodes it reads from InfluxDB, hence ank/energy/**.
    "scheduler": {
        PUT: ("ank/bind/**", "ank/energy/**"),
        SUBSCRIBE: ("ank/desired", "ank/agents/**", "ank/energy/**", "ank/bind/**"),
        QUERY: ("ank/cmd/state", "ank/bind/**"),
        QUERYABLE: ("ank/bind/**",),
        REPLY: ("ank/bind/**",),
        LIVELINESS_SUBSCRIBE: ("ank/agents/**",),
        LIVELINESS_QUERY: ("ank/agents/**",),
    },
    # One agent: only its own keys, so it cannot speak for another agent.
    "agent": {
        PUT: ("ank/state/{agent}/**", "ank/agents/{agent}/**", "ank/energy/{agent}"),
        TOKEN: ("ank/agents/{agent}",),
        SUBSCRIBE: ("ank/plan/{agent}", "ank/health/{agent}/**"),
        QUERY: ("ank/plan/{agent}",),
        QUERYABLE: ("ank/state/{agent}/**", "ank/logs/{agent}/**"),
        REPLY: ("ank/state/{agent}/**", "ank/logs/{agent}/**"),
    },
}

# What every identity may receive: whatever the router forwards on ank/**.
EGRESS_KEYS = ("ank/**",)


class SecureConfigError(BusConfigError):
    """A secured configuration that cannot be built; the message names the problem."""


# -- pure: identities, ACL, TLS settings ------------------------------------------------------------------------------
def agent_identity(agent: str) -> str:
    return f"{AGENT_PREFIX}{agent}"


def check_agent_names(agents: Iterable[str]) -> list[str]:
    """The agent names, checked (the workload-name rule) and without duplicates."""
    names: list[str] = []
    for agent in agents:
        if not AGENT_NAME.match(agent):
            raise SecureConfigError(f"bad agent name {agent!r}: expected 1-63 of [A-Za-z0-9_-]")
        if agent not in names:
            names.append(agent)
    return names


def _rules(rule_prefix: str, grants: Grants, agent: str | None = None) -> list[dict[str, Any]]:
    rules = []
    for message, keys in grants.items():
        key_exprs = [key.format(agent=agent) if agent is not None else key for key in keys]
        messages = [PUT, DELETE] if message == PUT else [message]
        rules.append(
            {
                "id": f"{rule_prefix}/{message}",
                "messages": messages,
                "flows": ["ingress"],
                "permission": "allow",
                "key_exprs": key_exprs,
            }
        )
    return rules


def _workload_rules() -> list[dict[str, Any]]:
    """Workloads may do anything outside ank/**, and on ank/** only read
    (subscribe, query the state): deny rules on ank/** writes and on the
    commands win over the allow rule on **."""
    writes = [PUT, DELETE, QUERYABLE, REPLY, TOKEN]
    return [
        {
            "id": "workload/app",
            "messages": list(ALL_MESSAGES),
            "flows": ["ingress", "egress"],
            "permission": "allow",
            "key_exprs": list(APP_KEYS),
        },
        {
            "id": "workload/orchestrator",
            "messages": writes,
            "flows": ["ingress"],
            "permission": "deny",
            "key_exprs": list(ORCHESTRATOR_KEYS),
        },
        # Commands are queries: a workload may read the state, not change it.
        {
            "id": "workload/commands",
            "messages": [QUERY],
            "flows": ["ingress"],
            "permission": "deny",
            "key_exprs": list(COMMAND_KEYS),
        },
    ]


def access_control(agents: Iterable[str]) -> dict[str, Any]:
    """The router's `access_control` section for these agents (names, not
    identities: `car1` for `agent-car1`)."""
    agent_names = check_agent_names(agents)
    identities = [*SERVICE_IDENTITIES, *(agent_identity(a) for a in agent_names)]
    rules: list[dict[str, Any]] = [
        {
            "id": "everyone/receive",
            "messages": list(ALL_MESSAGES),
            "flows": ["egress"],
            "permission": "allow",
            "key_exprs": list(EGRESS_KEYS),
        },
        *_rules("everyone", COMMON_GRANTS),
    ]
    subjects: list[dict[str, Any]] = [{"id": "everyone", "cert_common_names": identities}]
    policies: list[dict[str, Any]] = [
        {"id": "everyone", "rules": [r["id"] for r in rules], "subjects": ["everyone"]},
    ]
    rules.extend(_workload_rules())
    subjects.append({"id": WORKLOAD_IDENTITY, "cert_common_names": [WORKLOAD_IDENTITY]})
    policies.append(
        {"id": WORKLOAD_IDENTITY, "rules": [r["id"] for r in _workload_rules()], "subjects": [WORKLOAD_IDENTITY]}
    )
    per_identity = [(identity, _rules(identity, INGRESS_GRANTS[identity])) for identity in SERVICE_IDENTITIES]
    per_identity += [(agent_identity(a), _rules(agent_identity(a), INGRESS_GRANTS["agent"], a)) for a in agent_names]
    for identity, identity_rules in per_identity:
        rules.extend(identity_rules)
        subjects.append({"id": identity, "cert_common_names": [identity]})
        policies.append({"id": identity, "rules": [r["id"] for r in identity_rules], "subjects": [identity]})
    return {
        "enabled": True,
        "default_permission": "deny",
        "rules": rules,
        "subjects": subjects,
        "policies": policies,
    }


def cert_files(cert_dir: Path, identity: str) -> dict[str, Path]:
    return {
        "ca": cert_dir / "ca.pem",
        "certificate": cert_dir / f"{identity}.pem",
        "private_key": cert_dir / f"{identity}.key",
    }


def tls_settings(cert_dir: Path, identity: str, *, listening: bool) -> dict[str, Any]:
    """`transport.link.tls` for an identity: the router listens with its
    certificate and demands one from every client (mTLS); a client presents
    its own and checks the router's name against the endpoint."""
    files = cert_files(cert_dir, identity)
    side = "listen" if listening else "connect"
    return {
        "root_ca_certificate": str(files["ca"]),
        f"{side}_certificate": str(files["certificate"]),
        f"{side}_private_key": str(files["private_key"]),
        "enable_mtls": True,
        "verify_name_on_connect": True,
        # A link whose certificate expires is closed, not kept on trust.
        "close_link_on_expiration": True,
    }


def tls_endpoints(text: str) -> list[str]:
    """Endpoints from `host:port` or `tls/host:port` (comma-separated); any
    other protocol would bypass TLS and is refused."""
    endpoints = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "/" not in part:
            part = f"tls/{part}"
        if not part.startswith("tls/"):
            raise SecureConfigError(f"endpoint {part!r} is not TLS: a secured configuration takes tls/HOST:PORT")
        endpoints.append(part)
    if not endpoints:
        raise SecureConfigError(f"no endpoint in {text!r}: expected tls/HOST:PORT")
    return endpoints


def router_settings(cert_dir: Path, agents: Iterable[str], listen: str) -> dict[str, Any]:
    """What a secured router sets on top of the plain router configuration:
    path -> JSON value, as `zenoh.Config.insert_json5` takes them."""
    return {
        "listen/endpoints": tls_endpoints(listen),
        "transport/link/tls": tls_settings(cert_dir, ROUTER_IDENTITY, listening=True),
        "access_control": access_control(agents),
    }


def client_settings(cert_dir: Path, identity: str, connect: str) -> dict[str, Any]:
    """What a secured client sets on top of the plain client configuration."""
    return {
        "connect/endpoints": tls_endpoints(connect),
        "transport/link/tls": tls_settings(cert_dir, identity, listening=False),
    }


# -- shell: files and zenoh.Config ----------------------------------------------------------------------------------
def _check_files(cert_dir: Path, identity: str) -> None:
    for what, path in cert_files(cert_dir, identity).items():
        if not path.is_file():
            hint = f"make it with: scripts/make-certs.sh {cert_dir}"
            if identity not in (ROUTER_IDENTITY, *SERVICE_IDENTITIES):
                hint += f" {identity}"
            raise SecureConfigError(f"{what} of identity {identity!r} not found: {path} ({hint})")


def _overlay(base: Path, settings: Mapping[str, Any]) -> zenoh.Config:
    try:
        conf = zenoh.Config.from_file(str(base))
    except Exception as exc:
        raise SecureConfigError(f"cannot read Zenoh configuration {base}: {exc}") from exc
    for path, value in settings.items():
        try:
            conf.insert_json5(path, json.dumps(value))
        except Exception as exc:
            raise SecureConfigError(f"cannot set {path} in the secured configuration: {exc}") from exc
    return conf


def router_config(
    cert_dir: str | Path,
    agents: list[str],
    listen: str = f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}",
    *,
    base: str | Path | None = None,
) -> zenoh.Config:
    """A secured router: TLS with mTLS on `listen`, access control for the
    services and these agents (names: `car1` for identity `agent-car1`)."""
    cert_dir = Path(cert_dir).resolve()
    _check_files(cert_dir, ROUTER_IDENTITY)
    return _overlay(Path(base) if base else PLAIN_ROUTER_CONFIG, router_settings(cert_dir, agents, listen))


def client_config(
    cert_dir: str | Path,
    identity: str,
    connect: str = f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}",
    *,
    base: str | Path | None = None,
) -> zenoh.Config:
    """A secured client session for `identity` (`cli`, `planner`,
    `health-watcher`, `scheduler` or `agent-<name>`) connecting to `connect`
    (`host:port` or `tls/host:port`, comma-separated)."""
    cert_dir = Path(cert_dir).resolve()
    _check_files(cert_dir, identity)
    return _overlay(Path(base) if base else default_config_path(), client_settings(cert_dir, identity, connect))


def write_config(conf: zenoh.Config, path: str | Path) -> None:
    """Writes a configuration as JSON (which json5 readers accept)."""
    Path(path).write_text(json.dumps(json.loads(str(conf)), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bus.secure", description="Writes a secured Zenoh configuration (docs/security.md)."
    )
    parser.add_argument("--cert-dir", required=True, help="directory made by scripts/make-certs.sh")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    parser.add_argument("--base", help="plain configuration to secure (default: router.json5 / zenoh.json5)")
    sub = parser.add_subparsers(dest="kind", required=True)
    router = sub.add_parser("router", help="the router's configuration")
    router.add_argument("--agent", action="append", default=[], help="agent name (repeat), e.g. car1")
    router.add_argument("--listen", default=f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}")
    client = sub.add_parser("client", help="a client's configuration")
    client.add_argument("--identity", required=True, help="cli, planner, health-watcher, scheduler or agent-NAME")
    client.add_argument("--connect", default=f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}")
    args = parser.parse_args(argv)
    try:
        if args.kind == "router":
            conf = router_config(args.cert_dir, args.agent, args.listen, base=args.base)
        else:
            conf = client_config(args.cert_dir, args.identity, args.connect, base=args.base)
        if args.output:
            write_config(conf, args.output)
        else:
            print(json.dumps(json.loads(str(conf)), indent=2))
    except (SecureConfigError, OSError) as exc:
        print(f"secure: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
