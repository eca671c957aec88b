"""The access policy: one table, identity x operation x key, deny by default.

It is the single source of the router's access control
(services.bus.secure generates Zenoh's `access_control` from it), of the
policy table in docs/security.md (drift-tested) and of the exhaustive ACL
test (tests/test_acl_matrix.py).

Semantics, verified against a real Zenoh 1.10 router (tests/test_acl_matrix.py):
a message is allowed when a granted key expression *includes* its key
expression. So a grant on `ank/plan/car1` admits neither `ank/plan/*` nor
`ank/**` nor `ank/plan/car$*`: every wildcard or prefix form of a key is
denied to an identity the table does not grant the whole form to. Deny rules
also match by inclusion, which is why `workload` (free outside `ank/`) is
filtered in both directions: what it sends on a key under `ank/` is refused
on the way in, and a wider form it may send (`**`, `*/cmd/apply`) is refused
on the way out to the orchestrator's processes, whose egress admits only keys
under `ank/`; what it could intercept (a queryable or subscriber on `**`)
never receives a message on a key under `ank/`.

Pure: no Zenoh, no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from schemas import keys as K

# Operations (the ACL's message names).
PUT = "put"
DELETE = "delete"
SUBSCRIBE = "declare_subscriber"
QUERY = "query"
QUERYABLE = "declare_queryable"
REPLY = "reply"
TOKEN = "liveliness_token"
LIVELINESS_SUBSCRIBE = "declare_liveliness_subscriber"
LIVELINESS_QUERY = "liveliness_query"
OPERATIONS = (PUT, DELETE, SUBSCRIBE, QUERY, QUERYABLE, REPLY, TOKEN, LIVELINESS_SUBSCRIBE, LIVELINESS_QUERY)

# The orchestrator's key space: only the identities below get anything in it.
ORCHESTRATOR_KEYS = K.ALL
AGENT_TEMPLATE = "agent-{agent}"
# The agent placeholder in the agent row's key expressions.
_A = "{agent}"
# The identity of the workloads themselves (middleware programs): every
# operation outside ank/**, nothing inside it.
WORKLOAD = "workload"
# A read-only identity: states and events (e.g. a monitoring workload).
OBSERVER = "observer"
EDGE = "edge"

Grants = Mapping[str, tuple[str, ...]]

_READ = {SUBSCRIBE: (K.STATES, K.EVENTS), QUERY: (K.STATES, K.EVENTS)}
_LIVELINESS = {LIVELINESS_SUBSCRIBE: (K.ALL_AGENTS,), LIVELINESS_QUERY: (K.ALL_AGENTS,)}


def _grants(*parts: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The union of grant maps, keys in order, without duplicates."""
    out: dict[str, tuple[str, ...]] = {}
    for part in parts:
        for op, keys in part.items():
            out[op] = tuple(dict.fromkeys((*out.get(op, ()), *keys)))
    return out


def _put(*keys: str) -> dict[str, tuple[str, ...]]:
    return {PUT: keys, DELETE: keys}


# identity -> operation -> key expressions (the widest each may use).
# `{agent}` in the agent row is the agent's name. Anything not here: denied.
POLICY: dict[str, Grants] = {
    # Users, the dashboard: the only ones who change the desired state and
    # send commands (ank/cmd/apply, ank/cmd/delete are queries).
    "cli": _grants(_put(K.EVENTS, K.DESIRED), {SUBSCRIBE: (K.ALL,), QUERY: (K.ALL,)}, _LIVELINESS),
    # Answers the commands, owns the plans and the states no live agent owns.
    "planner": _grants(
        _put(K.EVENTS, K.ALL_PLANS, K.STATES),
        _READ,
        {
            SUBSCRIBE: (K.DESIRED, K.ALL_BINDINGS, K.AGENT_STATUSES),
            QUERY: (K.ALL_BINDINGS,),
            QUERYABLE: (K.CMDS, K.ALL_PLANS, K.STATES, K.EVENTS),
            REPLY: (K.CMDS, K.ALL_PLANS, K.STATES, K.EVENTS),
        },
        _LIVELINESS,
    ),
    # Reads the desired state through ank/cmd/state (read-only command).
    "health-watcher": _grants(
        _put(K.EVENTS, K.HEALTH),
        _READ,
        {
            SUBSCRIBE: (K.DESIRED, K.HEALTH),
            QUERY: (K.CMD_STATE, K.HEALTH),
            QUERYABLE: (K.HEALTH,),
            REPLY: (K.HEALTH,),
        },
        _LIVELINESS,
    ),
    # Publishes energy for nodes it reads from InfluxDB, hence ank/energy/**.
    "scheduler": _grants(
        _put(K.EVENTS, K.ALL_BINDINGS, K.ALL_ENERGY),
        _READ,
        {
            SUBSCRIBE: (K.DESIRED, K.ALL_AGENTS, K.ALL_ENERGY, K.ALL_BINDINGS),
            QUERY: (K.CMD_STATE, K.ALL_BINDINGS),
            QUERYABLE: (K.ALL_BINDINGS,),
            REPLY: (K.ALL_BINDINGS,),
        },
        _LIVELINESS,
    ),
    # One agent: only its own keys, so it cannot speak for another agent.
    AGENT_TEMPLATE: _grants(
        _put(K.EVENTS, K.agent_states(_A), K.agent_keys(_A), K.energy_key(_A), K.logs_stream_key(_A, "*")),
        _READ,
        {
            TOKEN: (K.agent_token_key(_A),),
            SUBSCRIBE: (K.plan_key(_A), K.agent_health(_A)),
            # The Control Interface: the agent forwards its workloads' requests
            # (after checking each against the workload's own rules, as
            # Ankaios's agent does) as the commands and log reads a user sends.
            QUERY: (K.plan_key(_A), K.CMD_STATE, K.CMD_APPLY, K.LOGS),
            QUERYABLE: (K.agent_states(_A), K.agent_logs(_A)),
            REPLY: (K.agent_states(_A), K.agent_logs(_A)),
        },
    ),
    OBSERVER: _grants(_READ, _LIVELINESS),
    # An enrolment router (services.bus.secure edge_router_config) speaking
    # for agents the main router does not know by name: every agent's grants,
    # any agent. Its own ACL holds each of its agents to its own keys.
    EDGE: {},
    # Outside ank/**: everything (see WORKLOAD); inside: nothing.
    WORKLOAD: {},
}

POLICY[EDGE] = {op: tuple(k.replace("{agent}", "*") for k in keys) for op, keys in POLICY[AGENT_TEMPLATE].items()}

SERVICE_IDENTITIES = ("cli", "planner", "health-watcher", "scheduler")


def identity_of_agent(agent: str) -> str:
    return AGENT_TEMPLATE.format(agent=agent)


def grants_of(identity: str, agents: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """An identity's grants, `{agent}` filled in (empty for unknown identities)."""
    for agent in agents:
        if identity == identity_of_agent(agent):
            return {op: tuple(k.format(agent=agent) for k in keys) for op, keys in POLICY[AGENT_TEMPLATE].items()}
    if identity == AGENT_TEMPLATE or identity not in POLICY:
        return {}
    return dict(POLICY[identity])


def includes(wide: str, narrow: str) -> bool:
    """Whether key expression `wide` includes `narrow` (every key `narrow`
    matches, `wide` matches). Canonical forms; `$*` is a chunk wildcard
    within a chunk. Pure reimplementation for the tests' model, checked
    against zenoh.KeyExpr.includes in tests/test_acl_matrix.py."""
    return _includes(wide.split("/"), narrow.split("/"))


def _includes(wide: list[str], narrow: list[str]) -> bool:
    if not wide:
        return not narrow
    head, rest = wide[0], wide[1:]
    if head == "**":
        return any(_includes(rest, narrow[i:]) for i in range(len(narrow) + 1))
    if not narrow:
        return False
    if narrow[0] == "**":
        return False
    return _chunk_includes(head, narrow[0]) and _includes(rest, narrow[1:])


def _chunk_includes(wide: str, narrow: str) -> bool:
    if wide == "*":
        return True
    if narrow == "*":
        return False
    if "$*" not in wide:
        return "$*" not in narrow and wide == narrow
    if "$*" in narrow:
        # a wildcarded narrow chunk is included only by a same-shape or wider pattern: be conservative
        return wide == narrow
    return fnmatch.fnmatchcase(narrow, wide.replace("$*", "*").replace("[", "[[]"))


def allowed(identity: str, operation: str, key_expr: str, agents: Iterable[str] = ()) -> bool:
    """The table's answer: may `identity` use `key_expr` for `operation`
    inside ank/**? (`workload` and unknown identities: never.)"""
    return any(includes(grant, key_expr) for grant in grants_of(identity, agents).get(operation, ()))


def markdown_table(agents_placeholder: str = "<name>") -> str:
    """The policy as the markdown table docs/security.md shows (drift-tested)."""
    names = {
        PUT: "put",
        DELETE: "delete",
        SUBSCRIBE: "subscribe",
        QUERY: "query",
        QUERYABLE: "queryable",
        REPLY: "reply",
        TOKEN: "liveliness token",
        LIVELINESS_SUBSCRIBE: "liveliness subscribe",
        LIVELINESS_QUERY: "liveliness query",
    }
    lines = ["| identity | operation | key expressions |", "|---|---|---|"]
    for identity, grants in POLICY.items():
        shown = identity.format(agent=agents_placeholder)
        if not grants:
            lines.append(f"| `{shown}` | any | every key outside `{ORCHESTRATOR_KEYS}`; nothing inside it |")
            continue
        for op in OPERATIONS:
            keys = grants.get(op)
            if keys:
                listed = ", ".join(f"`{k.format(agent=agents_placeholder)}`" for k in keys)
                lines.append(f"| `{shown}` | {names[op]} | {listed} |")
    return "\n".join(lines) + "\n"
