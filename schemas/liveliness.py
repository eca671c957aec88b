"""What an agent's liveliness token (`ank/agents/<name>`) says, as a value the
cores take as an event. Zenoh carries no payload for it: the shells build it
from the token's key and whether it appeared or vanished."""

from __future__ import annotations

import msgspec


class AgentLiveliness(msgspec.Struct, frozen=True):
    """An agent's liveliness token appeared (alive) or vanished."""

    agent: str
    alive: bool
