"""What the bus adapter checks on every message it receives, beyond its
schema (pure: no Zenoh, no clock):

- a size cap per message kind (`max_size`): a state, a health report, an
  event or an agent's status has no business being megabytes long, and each
  one a process keeps is memory an attacker could fill;
- payload/key agreement (`disagreement`): the agent and workload a message
  names are the ones its key names, so that an identity the router lets
  publish on `ank/state/car1/**` cannot speak for car2's workloads through
  the payload.
"""

from __future__ import annotations

import msgspec

from schemas import keys
from schemas.messages import (
    AgentPlan,
    AgentStatus,
    Binding,
    EnergyReport,
    Event,
    HealthReport,
    WorkloadState,
)

KIB = 1024
MIB = 1024 * KIB
# The largest payload the bus accepts for any message (commands, plans, the complete state).
MAX_PAYLOAD = 4 * MIB
# Per message kind (bytes of the encoded payload).
SIZE_CAPS: dict[type[msgspec.Struct], int] = {
    Event: 32 * KIB,
    WorkloadState: 64 * KIB,
    HealthReport: 16 * KIB,
    EnergyReport: 16 * KIB,
    Binding: 16 * KIB,
    AgentStatus: 1 * MIB,
}
# What Bus.event keeps of an event's text (characters), so that its own
# events always fit their cap (a character takes at most 6 bytes in JSON).
EVENT_MESSAGE_CHARS = 4000
EVENT_SUBJECT_CHARS = 256
# The agent segment of the state key of a workload without an agent.
UNSCHEDULED = keys.UNSCHEDULED


def max_size(schema: type[msgspec.Struct]) -> int:
    return SIZE_CAPS.get(schema, MAX_PAYLOAD)


def expected_key(msg: msgspec.Struct) -> str | None:
    """The key a message must be published on, or None if any key will do."""
    if isinstance(msg, WorkloadState):
        return keys.state_key(msg.agent, msg.workload)
    if isinstance(msg, HealthReport):
        return keys.health_key(msg.agent, msg.workload)
    if isinstance(msg, AgentStatus):
        return keys.agent_status_key(msg.agent)
    if isinstance(msg, AgentPlan):
        return keys.plan_key(msg.agent)
    if isinstance(msg, EnergyReport):
        return keys.energy_key(msg.node)
    if isinstance(msg, Binding):
        return keys.bind_key(msg.workload)
    return None


def disagreement(key: str, msg: msgspec.Struct) -> str | None:
    """Why a message contradicts its key, or None if they agree. Only keys in
    the message kind's own key space are checked (a reply on another key,
    e.g. a test's, is left alone)."""
    expected = expected_key(msg)
    if expected is None:
        return None
    prefix = "/".join(expected.split("/")[:2]) + "/"
    if not key.startswith(prefix) or key == expected:
        return None
    return f"{type(msg).__name__} payload belongs on {expected}, not on {key}"
