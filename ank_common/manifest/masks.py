"""Update masks: Ankaios's `ank set state` semantics on a desired state.

For each mask (`desiredState`, `desiredState.workloads`,
`desiredState.workloads.NAME`, `desiredState.configs`,
`desiredState.configs.NAME`, or any deeper path), the value at that path in
the new state replaces the one in the current state, or is removed when the
new state has none. The paths walk the plain (camelCase) form of the
states, like Ankaios's `Object::set`/`Object::remove`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ank_common.manifest.issues import Issues, type_name
from ank_common.manifest.parse import Parsed, verdict
from schemas.manifest import Manifest


def apply_update_masks(current: Manifest, new: Manifest, masks: list[str]) -> Parsed:
    """`ank set state`: `masks` applied to `current` from `new` (no masks:
    `new` replaces everything). The result is validated as a whole."""
    issues = Issues()
    if not masks:
        document: dict[str, Any] = msgspec.to_builtins(new)
        return verdict(document, None, issues)
    tree: dict[str, Any] = {"desiredState": msgspec.to_builtins(current)}
    source: dict[str, Any] = {"desiredState": msgspec.to_builtins(new)}
    for mask in masks:
        _apply_mask(tree, source, mask, issues)
    if issues.errors:
        return Parsed(None, None, issues.errors, issues.warnings)
    state = tree.get("desiredState")
    if not isinstance(state, dict):
        issues.error("desiredState", f"expected a mapping, found {type_name(state)}")
        return Parsed(None, None, issues.errors, issues.warnings)
    # Agents are already resolved in both inputs; "desiredState" is not part
    # of the reported paths (they name manifest fields).
    return verdict(state, None, issues)


def _apply_mask(tree: dict[str, Any], source: dict[str, Any], mask: str, issues: Issues) -> None:
    """One mask: `tree` takes the value `source` has at its path."""
    parts = mask.split(".")
    if parts[0] != "desiredState" or any(not part for part in parts) or "*" in parts:
        issues.error(mask, "unsupported update mask: expected 'desiredState' or a path below it, without '*'")
        return
    found, value = _mask_get(source, parts)
    if len(parts) == 1:
        tree["desiredState"] = value if found else {}
        return
    if not (_mask_set(tree, parts, value) if found else _mask_remove(tree, parts)):
        issues.error(mask, f"Could not find field {mask}")


def _mask_get(tree: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False, None
    return True, tree


def _mask_set(tree: dict[str, Any], parts: list[str], value: Any) -> bool:
    """Ankaios's Object::set: missing intermediate mappings are created."""
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):
            return False
        tree = child
    tree[parts[-1]] = value
    return True


def _mask_remove(tree: dict[str, Any], parts: list[str]) -> bool:
    """Ankaios's Object::remove: the parent must be a mapping; a missing key
    is not an error."""
    found, parent = _mask_get(tree, parts[:-1])
    if not found or not isinstance(parent, dict):
        return False
    parent.pop(parts[-1], None)
    return True
