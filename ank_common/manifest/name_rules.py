"""The rules for names in a manifest, with Ankaios's messages (its
ankaios_api helpers and workload.rs): workload names, agent names, config
keys and aliases, and the workload names of Control Interface log rules."""

from __future__ import annotations

from ank_common.names import has_name_chars

MAX_FIELD_LENGTH = 63
ALLOWED_CHAR_SET = "[a-zA-Z0-9_-]"
CONSTRAINT_FIELD_DESCRIPTION = (
    "Only a-z, A-Z, 0-9 chars, underscore (_), and hyphen (-) allowed. Maximum length is 63 characters."
)


def _byte_length(value: str) -> int:
    return len(value.encode("utf-8", errors="surrogatepass"))


def field_problem(value: str) -> str | None:
    """Ankaios's checks in order: not empty, allowed chars, length (bytes)."""
    if not value:
        return "Is empty."
    if not has_name_chars(value):
        return f"Expected to have characters in {ALLOWED_CHAR_SET}."
    length = _byte_length(value)
    if length > MAX_FIELD_LENGTH:
        return f"Length {length} exceeds the maximum limit of {MAX_FIELD_LENGTH} characters."
    return None


def workload_name_problem(name: str) -> str | None:
    problem = field_problem(name)
    return f"Unsupported workload name '{name}'. {problem}" if problem else None


def agent_name_problem(agent: str) -> str | None:
    # Ankaios checks only the characters of agent names (empty = not
    # scheduled); the length limit is not enforced for them.
    if has_name_chars(agent):
        return None
    return f"Unsupported agent name '{agent}'. {CONSTRAINT_FIELD_DESCRIPTION}"


def config_key_problem(key: str) -> str | None:
    if key and has_name_chars(key) and _byte_length(key) <= MAX_FIELD_LENGTH:
        return None
    return f"Unsupported config item key '{key}'. {CONSTRAINT_FIELD_DESCRIPTION}"


def log_rule_name_problem(name: str) -> str | None:
    """A log rule names a workload, or a filter with one `*`."""
    wildcards = name.count("*")
    if wildcards > 1:
        return "Log rule validation failed: Expected at most one '*' symbol."
    if wildcards == 0:
        problem = workload_name_problem(name)
        return f"Log rule validation failed: {problem}" if problem else None
    prefix, suffix = name.split("*")
    length = _byte_length(name)
    if length > MAX_FIELD_LENGTH + 1:
        reason = f"Filter length {length} exceeds the maximum limit of {MAX_FIELD_LENGTH + 1} characters."
    elif not has_name_chars(prefix) or not has_name_chars(suffix):
        reason = f"Expected to have characters in {ALLOWED_CHAR_SET}."
    else:
        return None
    return f"Log rule validation failed: Unsupported workload name filter with wildcard '{name}'. {reason}"
