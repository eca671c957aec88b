"""The one name rule of workload, agent and config names (Ankaios's
`[a-zA-Z0-9_-]`), matched against the whole string: `re.match` with `$`
accepts a trailing newline, `re.fullmatch` does not."""

from __future__ import annotations

import re

NAME_CHARS = re.compile(r"[a-zA-Z0-9_-]*")
MAX_AGENT_NAME = 63


def has_name_chars(value: str) -> bool:
    """Only letters a-z A-Z, digits, '_' and '-' (empty allowed)."""
    return NAME_CHARS.fullmatch(value) is not None


def agent_name_error(name: str) -> str | None:
    """Why `name` cannot be an agent's own name (None if it can)."""
    if not name or len(name) > MAX_AGENT_NAME or not has_name_chars(name):
        return f"agent name {name!r}: use 1-{MAX_AGENT_NAME} of the characters a-z, A-Z, 0-9, '_' and '-'"
    return None
