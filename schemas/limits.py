"""Size limits of what travels on the bus, checked where a message is made.

Every message is at most `MAX_MESSAGE_BYTES` (services.bus drops a larger
one). Messages that carry a part of something that grows with the whole
state (an agent's plan, the `ank/cmd/state` reply) are split into parts of at
most `PART_BUDGET_BYTES` of entries; one entry (a rendered workload as
planned, a config item) must fit in a part, so it may be at most
`MAX_ENTRY_BYTES`. The planner refuses an apply whose entries break that,
naming the workload and the limit, instead of accepting something it cannot
deliver.
"""

from __future__ import annotations

import msgspec

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# What one part's entries may take; the rest of the message (envelope,
# agent, counters, JSON punctuation) stays far below the difference.
PART_BUDGET_BYTES = 3 * 1024 * 1024
MAX_ENTRY_BYTES = 2 * 1024 * 1024
# The most parts one plan or state reply may have (a bound for receivers).
MAX_PARTS = 100_000

_ENCODER = msgspec.json.Encoder()


def size_of(obj: object) -> int:
    """The size of an object as JSON on the bus."""
    return len(_ENCODER.encode(obj))
