"""Path-named issues and the typed reads that report them.

Every step of reading a manifest adds issues (`workloads.nginx.agent: ...`)
to one `Issues` instead of raising, so that a verdict names every problem at
once. The `expect_*` reads check the type of one value of a plain mapping
and report a wrong one under its path.
"""

from __future__ import annotations

from typing import Any

from schemas.messages import ValidationIssue


class Issues:
    """Collects errors and warnings while a manifest is read."""

    def __init__(self) -> None:
        self.errors: list[ValidationIssue] = []
        self.warnings: list[ValidationIssue] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ValidationIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ValidationIssue(path, message))


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def expect_str(value: Any, path: str, issues: Issues) -> str | None:
    if isinstance(value, str):
        return value
    issues.error(path, f"expected a string, found {type_name(value)}")
    return None


def expect_mapping(value: Any, path: str, issues: Issues) -> dict[str, Any] | None:
    """The mapping (absent: empty), or None after an error."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    issues.error(path, f"expected a mapping, found {type_name(value)}")
    return None


def expect_list(value: Any, path: str, issues: Issues) -> list[Any] | None:
    """The list (absent: empty), or None after an error."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    issues.error(path, f"expected a list, found {type_name(value)}")
    return None


def warn_unknown(mapping: dict[str, Any], known: tuple[str, ...], path: str, issues: Issues) -> None:
    for key in mapping:
        if key not in known:
            issues.warn(join_path(path, key), f"unknown field '{key}' is ignored (as Ankaios ignores it)")
