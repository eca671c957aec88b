"""Every bus key of the orchestrator, in one place: the table of key
families (what docs/internals.md shows, drift-tested), a builder for each
family, a parser where code reads names back out of a key, and the wildcard
expressions services subscribe to or query.

Builders do not validate: names are checked where they enter the system
(manifests, `ank-agent --name`); a builder given a wildcard chunk (`*`,
`**`) builds the matching key expression, which is how the subscriptions
and queryables below are written. Parsers are strict: a key of another
family, of the wrong length or with an empty or wildcard chunk where a name
belongs parses to None.

The ACL policy (services.bus.policy) builds its grants from these builders,
so a key family and the identities allowed to use it cannot drift apart.

Pure: no Zenoh, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

ROOT = "ank"
# The agent segment of the state key of a workload without an agent.
UNSCHEDULED = "~"


@dataclass(frozen=True)
class KeyFamily:
    """One row of the contract: a key (with `<name>` placeholders), how it is
    used, who publishes or answers it, and its payload."""

    key: str
    use: str
    publisher: str
    payload: str


# The contract (docs/internals.md's keys table is generated from it).
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("ank/desired", "put", "users, middleware", "manifest text (YAML/JSON)"),
    KeyFamily("ank/cmd/apply", "query", "planner answers", "`ApplyRequest` → `ApplyResult`"),
    KeyFamily("ank/cmd/delete", "query", "planner answers", "`DeleteRequest` → `ApplyResult`"),
    KeyFamily("ank/cmd/state", "query", "planner answers", "(no payload; `?since=<ms>`) → `CompleteState`"),
    KeyFamily("ank/plan/<agent>", "put + queryable", "planner (a queryable on `ank/plan/*`)", "`AgentPlan`"),
    KeyFamily(
        "ank/state/<agent>/<wl>",
        "put + queryable",
        "the agent; the planner for workloads no live agent owns (AgentDisconnected, Pending(Initial) of an"
        " agent never seen, Removed after a delete on a lost agent)",
        "`WorkloadState`",
    ),
    KeyFamily(
        "ank/state/~/<wl>",
        "put + queryable",
        "planner: workloads with no agent (NotScheduled)",
        '`WorkloadState` (agent "")',
    ),
    KeyFamily("ank/agents/<agent>", "liveliness token", "agent", "—"),
    KeyFamily("ank/agents/<agent>/status", "put, every 2 s", "agent", "`AgentStatus`"),
    KeyFamily("ank/energy/<node>", "put", "agents, robots, the scheduler's InfluxDB source", "`EnergyReport`"),
    KeyFamily("ank/bind/<wl>", "put + queryable", "scheduler", "`Binding`"),
    KeyFamily("ank/health/<agent>/<wl>", "put + queryable", "health-watcher", "`HealthReport`"),
    KeyFamily(
        "ank/events/<kind>", "put + queryable", "anyone (`Bus.event`); the planner keeps the recent ones", "`Event`"
    ),
    KeyFamily(
        "ank/logs/<agent>/<wl>",
        "query",
        "the agent answers (`ank logs`)",
        "`?tail=N`/`?offset=N`/`follow=1` → `LogsReply`",
    ),
    KeyFamily(
        "ank/logs/<agent>/<wl>/stream",
        "put",
        "the agent, while a follower renews `follow=1` (`ank logs -f`)",
        "`LogsReply` (the lines after `start`)",
    ),
)

# -- fixed keys ------------------------------------------------------------------
DESIRED = "ank/desired"
CMD_APPLY = "ank/cmd/apply"
CMD_DELETE = "ank/cmd/delete"
CMD_STATE = "ank/cmd/state"

# -- wildcard expressions ------------------------------------------------------
ALL = "ank/**"
CMDS = "ank/cmd/**"
PLANS = "ank/plan/*"
ALL_PLANS = "ank/plan/**"
STATES = "ank/state/**"
AGENT_TOKENS = "ank/agents/*"
ALL_AGENTS = "ank/agents/**"
AGENT_STATUSES = "ank/agents/*/status"
ENERGY = "ank/energy/*"
ALL_ENERGY = "ank/energy/**"
BINDINGS = "ank/bind/*"
ALL_BINDINGS = "ank/bind/**"
HEALTH = "ank/health/**"
EVENTS = "ank/events/**"
LOGS = "ank/logs/**"


# -- builders ----------------------------------------------------------------------
def plan_key(agent: str) -> str:
    return f"ank/plan/{agent}"


def state_key(agent: str, workload: str) -> str:
    """`ank/state/<agent>/<wl>`; an empty agent is the unscheduled segment `~`."""
    return f"ank/state/{agent or UNSCHEDULED}/{workload}"


def agent_states(agent: str) -> str:
    """Every state key of one agent (`ank/state/<agent>/**`)."""
    return f"ank/state/{agent}/**"


def agent_token_key(agent: str) -> str:
    return f"ank/agents/{agent}"


def agent_keys(agent: str) -> str:
    """Every key under one agent's token (`ank/agents/<agent>/**`)."""
    return f"ank/agents/{agent}/**"


def agent_status_key(agent: str) -> str:
    return f"ank/agents/{agent}/status"


def energy_key(node: str) -> str:
    return f"ank/energy/{node}"


def bind_key(workload: str) -> str:
    return f"ank/bind/{workload}"


def health_key(agent: str, workload: str) -> str:
    return f"ank/health/{agent}/{workload}"


def agent_health(agent: str) -> str:
    """Every health key of one agent (`ank/health/<agent>/**`)."""
    return f"ank/health/{agent}/**"


def event_key(kind: str) -> str:
    return f"ank/events/{kind}"


def logs_key(agent: str, workload: str) -> str:
    return f"ank/logs/{agent}/{workload}"


def agent_logs(agent: str) -> str:
    """Every logs key of one agent (`ank/logs/<agent>/**`)."""
    return f"ank/logs/{agent}/**"


def logs_stream_key(agent: str, workload: str) -> str:
    """Where the agent pushes a followed workload's new output."""
    return f"ank/logs/{agent}/{workload}/stream"


# -- parsers -----------------------------------------------------------------------
class AgentWorkload(NamedTuple):
    agent: str
    workload: str


def _name(chunk: str) -> bool:
    return bool(chunk) and "*" not in chunk and "$" not in chunk


def _chunks(key: str, prefix: tuple[str, ...], names: int, suffix: tuple[str, ...] = ()) -> list[str] | None:
    parts = key.split("/")
    if len(parts) != len(prefix) + names + len(suffix):
        return None
    if tuple(parts[: len(prefix)]) != prefix or tuple(parts[len(prefix) + names :]) != suffix:
        return None
    found = parts[len(prefix) : len(prefix) + names]
    return found if all(_name(c) for c in found) else None


def _one(key: str, family: str, suffix: tuple[str, ...] = ()) -> str | None:
    """`ank/<family>/<name>[/<suffix>]` -> name."""
    found = _chunks(key, (ROOT, family), 1, suffix)
    return found[0] if found else None


def _two(key: str, family: str, suffix: tuple[str, ...] = ()) -> AgentWorkload | None:
    """`ank/<family>/<agent>/<wl>[/<suffix>]` -> (agent, wl)."""
    found = _chunks(key, (ROOT, family), 2, suffix)
    return AgentWorkload(found[0], found[1]) if found else None


def parse_plan_key(key: str) -> str | None:
    """`ank/plan/<agent>` -> agent."""
    return _one(key, "plan")


def parse_state_key(key: str) -> AgentWorkload | None:
    """`ank/state/<agent>/<wl>` -> (agent, wl); the `~` segment is agent ""."""
    found = _two(key, "state")
    return found._replace(agent="") if found and found.agent == UNSCHEDULED else found


def parse_agent_token_key(key: str) -> str | None:
    """`ank/agents/<agent>` (a liveliness token) -> agent."""
    return _one(key, "agents")


def parse_agent_status_key(key: str) -> str | None:
    """`ank/agents/<agent>/status` -> agent."""
    return _one(key, "agents", ("status",))


def parse_energy_key(key: str) -> str | None:
    """`ank/energy/<node>` -> node."""
    return _one(key, "energy")


def parse_bind_key(key: str) -> str | None:
    """`ank/bind/<wl>` -> workload."""
    return _one(key, "bind")


def parse_health_key(key: str) -> AgentWorkload | None:
    """`ank/health/<agent>/<wl>` -> (agent, wl)."""
    return _two(key, "health")


def parse_event_key(key: str) -> str | None:
    """`ank/events/<kind>` -> kind."""
    return _one(key, "events")


def parse_logs_key(key: str) -> AgentWorkload | None:
    """`ank/logs/<agent>/<wl>` -> (agent, wl)."""
    return _two(key, "logs")


def parse_logs_stream_key(key: str) -> AgentWorkload | None:
    """`ank/logs/<agent>/<wl>/stream` -> (agent, wl)."""
    return _two(key, "logs", ("stream",))


def markdown_table() -> str:
    """The contract as docs/internals.md shows it (drift-tested)."""
    lines = ["| key | use | publisher | payload |", "|---|---|---|---|"]
    lines += [f"| `{f.key}` | {f.use} | {f.publisher} | {f.payload} |" for f in FAMILIES]
    return "\n".join(lines) + "\n"
