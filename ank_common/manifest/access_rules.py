"""A workload's `controlInterfaceAccess`: its allow and deny rules, checked
as Ankaios checks them (StateRule filter masks, LogRule workload names)."""

from __future__ import annotations

import re
from typing import Any

from ank_common.manifest.issues import Issues, expect_list, expect_mapping, expect_str, warn_unknown
from ank_common.manifest.name_rules import ALLOWED_CHAR_SET, log_rule_name_problem
from schemas.manifest import AccessRule, ControlInterfaceAccess

RULE_OPERATIONS = ("Read", "Write", "ReadWrite")
RULE_TYPES = ("StateRule", "LogRule")

_FILTER_MASK = re.compile(r"^(?:\*|[a-zA-Z0-9_-]+)(?:\.(?:\*|[a-zA-Z0-9_-]+))*$")
# Both rule kinds' fields: a normalised rule carries the other kind's empty ones.
_RULE_FIELDS = ("type", "operation", "filterMasks", "filterMask", "workloadNames")


def read_access(value: Any, v0_1: bool, path: str, issues: Issues) -> ControlInterfaceAccess | None:
    """`v0_1`: the manifest's apiVersion is v0.1 (rules may spell `filterMask`)."""
    access = expect_mapping(value, path, issues)
    if access is None:
        return None
    warn_unknown(access, ("allowRules", "denyRules"), path, issues)
    lists: dict[str, list[AccessRule]] = {}
    for key in ("allowRules", "denyRules"):
        rules: list[AccessRule] = []
        for index, entry in enumerate(expect_list(access.get(key), f"{path}.{key}", issues) or []):
            rule = _read_rule(entry, v0_1, f"{path}.{key}.{index}", issues)
            if rule is not None:
                rules.append(rule)
        lists[key] = rules
    if not lists["allowRules"] and not lists["denyRules"]:
        return None  # Ankaios treats an access without rules as none at all
    return ControlInterfaceAccess(allow_rules=lists["allowRules"], deny_rules=lists["denyRules"])


def _read_rule(entry: Any, v0_1: bool, path: str, issues: Issues) -> AccessRule | None:
    rule = expect_mapping(entry, path, issues)
    if rule is None:
        return None
    rule_type = rule.get("type")
    if rule_type not in RULE_TYPES:
        issues.error(f"{path}.type", f"unknown rule type {rule_type!r}, expected 'StateRule' or 'LogRule'")
        return None
    warn_unknown(rule, _RULE_FIELDS, path, issues)
    if rule_type == "StateRule":
        return _read_state_rule(rule, v0_1, path, issues)
    return _read_log_rule(rule, path, issues)


def _read_state_rule(rule: dict[str, Any], v0_1: bool, path: str, issues: Issues) -> AccessRule | None:
    operation = rule.get("operation")
    if operation not in RULE_OPERATIONS:
        issues.error(
            f"{path}.operation", f"unknown operation {operation!r}, expected one of {', '.join(RULE_OPERATIONS)}"
        )
        return None
    if "filterMask" in rule and not v0_1:
        issues.error(f"{path}.filterMask", "'filterMask' is the v0.1 spelling: apiVersion v1 uses 'filterMasks'")
        return None
    masks_key = "filterMasks" if "filterMasks" in rule else "filterMask"
    if masks_key not in rule:
        issues.error(path, "missing field 'filterMasks'")
        return None
    masks = _read_filter_masks(rule[masks_key], f"{path}.{masks_key}", issues)
    return AccessRule(type="StateRule", operation=operation, filter_masks=masks)


def _read_filter_masks(value: Any, path: str, issues: Issues) -> list[str]:
    masks: list[str] = []
    for index, mask in enumerate(expect_list(value, path, issues) or []):
        mask_path = f"{path}.{index}"
        text = expect_str(mask, mask_path, issues)
        if text is None:
            continue
        if not text:
            issues.error(mask_path, "Empty filter masks are not allowed in Control Interface access rules")
        elif not _FILTER_MASK.match(text):
            issues.error(
                mask_path,
                f"Unsupported filter mask '{text}'. Only \".\" separated sequences allowed where each part is "
                f'either a wildcard "*" or chars in {ALLOWED_CHAR_SET}',
            )
        else:
            masks.append(text)
    return masks


def _read_log_rule(rule: dict[str, Any], path: str, issues: Issues) -> AccessRule:
    names: list[str] = []
    for index, name in enumerate(expect_list(rule.get("workloadNames"), f"{path}.workloadNames", issues) or []):
        name_path = f"{path}.workloadNames.{index}"
        text = expect_str(name, name_path, issues)
        if text is None:
            continue
        problem = log_rule_name_problem(text)
        if problem:
            issues.error(name_path, problem)
        else:
            names.append(text)
    return AccessRule(type="LogRule", workload_names=names)
