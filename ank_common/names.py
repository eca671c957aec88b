"""The one name rule of workload, agent and config names (Ankaios's
`[a-zA-Z0-9_-]`), matched against the whole string: `re.match` with `$`
accepts a trailing newline, `re.fullmatch` does not."""

from __future__ import annotations

import re

NAME_CHARS = re.compile(r"[a-zA-Z0-9_-]*")
MAX_NAME = 63  # workload and agent names (Ankaios)
MAX_AGENT_NAME = MAX_NAME


def has_name_chars(value: str) -> bool:
    """Only letters a-z A-Z, digits, '_' and '-' (empty allowed)."""
    return NAME_CHARS.fullmatch(value) is not None


def valid_name(name: str) -> bool:
    """A whole workload or agent name: 1-63 of a-z A-Z 0-9 '_' '-' (nothing else: names end up in file names)."""
    return 0 < len(name) <= MAX_NAME and has_name_chars(name)


def agent_name_error(name: str) -> str | None:
    """Why `name` cannot be an agent's own name (None if it can)."""
    if not valid_name(name):
        return f"agent name {name!r}: use 1-{MAX_AGENT_NAME} of the characters a-z, A-Z, 0-9, '_' and '-'"
    return None
