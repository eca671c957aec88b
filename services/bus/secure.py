"""Secured Zenoh configurations: TLS with mutual authentication, and the
router's access control (docs/security.md).

Theory of operation:

- Every process has an *identity*: `cli` (the CLI, middleware, dashboard),
  `planner`, `health-watcher`, `scheduler`, `agent-<name>` per agent,
  `observer` (read-only), `workload` (the workloads' own programs: every key
  outside ank/**, nothing inside it) and `router`. Its certificate (`scripts/make-certs.sh`) carries the identity as
  common name, signed by the deployment's CA; its key is `<identity>.key`.
- Links are TLS with mutual authentication: a client without a certificate
  from the CA cannot connect at all. The router then knows each link's common
  name, and its access control (default: deny) decides, per common name, what
  the link may *send* — the policy table (services.bus.policy). What a link
  may receive follows from what it may subscribe to or query, so egress is
  open on `ank/**` for every known identity.
- The table is services.bus.policy.POLICY (identity x operation x key,
  deny by default). Key expressions in it name the widest key allowed; a
  message or declaration is allowed only when a granted key expression
  includes it, so `ank/state/**` does not admit a subscriber on `ank/**`,
  and `ank/cmd/state` does not admit a query on `ank/cmd/*`.
- Agents are known by name when the router starts: their rules are generated
  from the `agent` row with `{agent}` replaced. A new agent joins through an
  enrolment router (`edge_router_config`), which the running main router
  trusts as the `edge` identity; a revoked identity (`revoked=`) gets no rule.

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
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zenoh

from ank_common.names import agent_name_error
from services.bus import BusConfigError, default_config_path, insert_settings
from services.bus.policy import (
    AGENT_TEMPLATE,
    DELETE,
    LIVELINESS_QUERY,
    LIVELINESS_SUBSCRIBE,
    OPERATIONS,
    ORCHESTRATOR_KEYS,
    POLICY,
    PUT,
    QUERY,
    QUERYABLE,
    REPLY,
    SERVICE_IDENTITIES,
    SUBSCRIBE,
    TOKEN,
    WORKLOAD,
    grants_of,
)
from services.bus.router import DEFAULT_CONFIG as PLAIN_ROUTER_CONFIG

ALL_MESSAGES = OPERATIONS
WORKLOAD_IDENTITY = WORKLOAD
ROUTER_IDENTITY = "router"
AGENT_PREFIX = "agent-"
DEFAULT_SECURE_PORT = 7447
# Identities with a row of their own in the policy (agents are per name).
FIXED_IDENTITIES = tuple(i for i in POLICY if i not in (AGENT_TEMPLATE, WORKLOAD))
EDGE_IDENTITY = "edge"

# Re-exported: the operation names, for callers of this module.
EXPORTED_OPERATIONS = (PUT, DELETE, SUBSCRIBE, QUERY, QUERYABLE, REPLY, TOKEN, LIVELINESS_SUBSCRIBE, LIVELINESS_QUERY)


class SecureConfigError(BusConfigError):
    """A secured configuration that cannot be built; the message names the problem."""


# -- pure: identities, ACL, TLS settings ------------------------------------------------------------------------------
def agent_identity(agent: str) -> str:
    return f"{AGENT_PREFIX}{agent}"


def check_agent_names(agents: Iterable[str]) -> list[str]:
    """The agent names, checked (the workload-name rule) and without duplicates."""
    names: list[str] = []
    for agent in agents:
        problem = agent_name_error(agent)
        if problem:
            raise SecureConfigError(f"bad {problem}")
        if agent not in names:
            names.append(agent)
    return names


def _rules(identity: str, grants: Mapping[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    """One allow rule per granted operation (ingress), and the egress rule:
    every known identity may receive what the router forwards on ank/**."""
    rules = [
        {
            "id": f"{identity}/{op}",
            "messages": [op],
            "flows": ["ingress"],
            "permission": "allow",
            "key_exprs": list(keys),
        }
        for op, keys in grants.items()
        if keys
    ]
    rules.append(
        {
            "id": f"{identity}/receive",
            "messages": list(OPERATIONS),
            "flows": ["egress"],
            "permission": "allow",
            "key_exprs": [ORCHESTRATOR_KEYS],
        }
    )
    return rules


def _workload_rules() -> list[dict[str, Any]]:
    """Workloads may do anything outside ank/**, nothing inside it, in both
    directions: ingress so that they cannot write, query or declare on a key
    under ank/; egress so that a queryable or subscriber of theirs on `**`
    never receives the orchestrator's traffic (deny wins over allow)."""
    return [
        {
            "id": "workload/app",
            "messages": list(OPERATIONS),
            "flows": ["ingress", "egress"],
            "permission": "allow",
            "key_exprs": ["**"],
        },
        {
            "id": "workload/orchestrator",
            "messages": list(OPERATIONS),
            "flows": ["ingress", "egress"],
            "permission": "deny",
            "key_exprs": [ORCHESTRATOR_KEYS],
        },
    ]


def read_revoked(path: str | Path) -> list[str]:
    """The revoked identities a deny-list file names, one per line (`#` comments)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SecureConfigError(f"cannot read the revocation list {path}: {exc.strerror}") from exc
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def access_control(agents: Iterable[str], revoked: Iterable[str] = ()) -> dict[str, Any]:
    """The router's `access_control` section, generated from the policy
    table (services.bus.policy) for these agents (names, not identities:
    `car1` for `agent-car1`). Default: deny. A `revoked` identity (common
    name) gets no rule at all: its certificate may still complete TLS, but
    the router lets nothing it sends through and sends it nothing."""
    agent_names = check_agent_names(agents)
    gone = set(revoked)
    per_identity = [(identity, _rules(identity, grants_of(identity))) for identity in FIXED_IDENTITIES]
    per_identity += [
        (agent_identity(a), _rules(agent_identity(a), grants_of(agent_identity(a), [a]))) for a in agent_names
    ]
    per_identity.append((WORKLOAD, _workload_rules()))
    return _deny_by_default(per_identity, gone)


def _deny_by_default(per_identity: list[tuple[str, list[dict[str, Any]]]], gone: set[str]) -> dict[str, Any]:
    """Zenoh's `access_control` section: each identity (certificate common
    name) a subject with its own rules, those in `gone` none; deny otherwise."""
    rules: list[dict[str, Any]] = []
    subjects: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    for identity, identity_rules in per_identity:
        if identity in gone:
            continue
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


def router_settings(cert_dir: Path, agents: Iterable[str], listen: str, revoked: Iterable[str] = ()) -> dict[str, Any]:
    """What a secured router sets on top of the plain router configuration:
    path -> JSON value, as `zenoh.Config.insert_json5` takes them."""
    return {
        "listen/endpoints": tls_endpoints(listen),
        "transport/link/tls": tls_settings(cert_dir, ROUTER_IDENTITY, listening=True),
        "access_control": access_control(agents, revoked),
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
    return insert_settings(conf, settings, error=SecureConfigError, where=" in the secured configuration")


def edge_access_control(agents: Iterable[str], revoked: Iterable[str] = ()) -> dict[str, Any]:
    """An enrolment (edge) router's ACL: its agents, each held to its own
    keys by the policy table, and the main router (common name `router`)
    trusted on ank/** both ways. Nothing else: no service, no workload."""
    agent_names = check_agent_names(agents)
    gone = set(revoked)
    members = [(agent_identity(a), _rules(agent_identity(a), grants_of(agent_identity(a), [a]))) for a in agent_names]
    upstream = {
        "id": "upstream",
        "messages": list(OPERATIONS),
        "flows": ["ingress", "egress"],
        "permission": "allow",
        "key_exprs": [ORCHESTRATOR_KEYS],
    }
    members.append((ROUTER_IDENTITY, [upstream]))
    return _deny_by_default(members, gone)


def edge_router_settings(
    cert_dir: Path, agents: Iterable[str], listen: str, upstream: str, revoked: Iterable[str] = ()
) -> dict[str, Any]:
    """An enrolment router: listens for its agents with the router's
    certificate, connects to the main router with the `edge` certificate."""
    tls = tls_settings(cert_dir, ROUTER_IDENTITY, listening=True)
    edge = cert_files(cert_dir, EDGE_IDENTITY)
    tls["connect_certificate"] = str(edge["certificate"])
    tls["connect_private_key"] = str(edge["private_key"])
    return {
        "listen/endpoints": tls_endpoints(listen),
        "connect/endpoints": tls_endpoints(upstream),
        "transport/link/tls": tls,
        "access_control": edge_access_control(agents, revoked),
    }


def edge_router_config(
    cert_dir: str | Path,
    agents: list[str],
    listen: str,
    upstream: str = f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}",
    *,
    base: str | Path | None = None,
    revoked: Iterable[str] = (),
) -> zenoh.Config:
    """An enrolment router for agents the main router does not list: it
    joins the running main router (which trusts the `edge` identity with
    every agent's grants) and holds each of its agents to its own keys.
    Enrolling or revoking restarts only this router, never the main one."""
    cert_dir = Path(cert_dir).resolve()
    _check_files(cert_dir, ROUTER_IDENTITY)
    _check_files(cert_dir, EDGE_IDENTITY)
    settings = edge_router_settings(cert_dir, agents, listen, upstream, revoked)
    return _overlay(Path(base) if base else PLAIN_ROUTER_CONFIG, settings)


def router_config(
    cert_dir: str | Path,
    agents: list[str],
    listen: str = f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}",
    *,
    base: str | Path | None = None,
    revoked: Iterable[str] = (),
) -> zenoh.Config:
    """A secured router: TLS with mTLS on `listen`, access control for the
    services and these agents (names: `car1` for identity `agent-car1`),
    nothing for the `revoked` identities."""
    cert_dir = Path(cert_dir).resolve()
    _check_files(cert_dir, ROUTER_IDENTITY)
    settings = router_settings(cert_dir, agents, listen, revoked)
    return _overlay(Path(base) if base else PLAIN_ROUTER_CONFIG, settings)


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
    router.add_argument(
        "--revoked", help="file of revoked identities, one per line (e.g. agent-car2): they get no rule"
    )
    edge = sub.add_parser("edge", help="an enrolment router for new agents, joining the running main router")
    edge.add_argument("--agent", action="append", required=True, help="agent name (repeat), e.g. car7")
    edge.add_argument("--listen", required=True, help="where its agents connect, e.g. tls/127.0.0.1:7450")
    edge.add_argument("--upstream", default=f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}", help="the main router")
    edge.add_argument("--revoked", help="file of revoked identities, one per line")
    client = sub.add_parser("client", help="a client's configuration")
    client.add_argument("--identity", required=True, help="cli, planner, health-watcher, scheduler or agent-NAME")
    client.add_argument("--connect", default=f"tls/127.0.0.1:{DEFAULT_SECURE_PORT}")
    args = parser.parse_args(argv)
    try:
        revoked = read_revoked(args.revoked) if getattr(args, "revoked", None) else []
        if args.kind == "router":
            conf = router_config(args.cert_dir, args.agent, args.listen, base=args.base, revoked=revoked)
        elif args.kind == "edge":
            conf = edge_router_config(
                args.cert_dir, args.agent, args.listen, args.upstream, base=args.base, revoked=revoked
            )
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
