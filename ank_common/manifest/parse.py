"""Manifests: reading, Ankaios-compatible validation, normalisation, rendering.

Theory of operation. A manifest goes through four pure steps, each adding
path-named issues (`workloads.nginx.agent: ...`, issues.py) instead of
raising:

1. read: text -> plain mapping (document.py: size, alias bombs, depth,
   YAML 1.2 scalars);
2. shape: the mapping -> `schemas.manifest.Manifest`, every field checked
   as Eclipse Ankaios checks it (validate.py; names in name_rules.py,
   Control Interface rules in access_rules.py), `apiVersion: v0.1`
   normalised to v1;
3. cross-checks on the whole manifest: config references, dependency
   cycles (validate.py);
4. render: the Handlebars templates of every workload that has `configs`,
   then the rendered agent names (render.py; the engine is templating.py).

This module runs the steps and gives the verdict (`Parsed`) for `ank apply`
(`parse_manifest`) and for `ank set state` (`parse_state_file`, then
masks.py on the current state). A manifest with any error yields no
Manifest at all (`Parsed.manifest is None`): nothing of it can be applied.
Where Ankaios and this package differ, docs/manifest.md says so.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ank_common.manifest.document import ManifestError, load_optional_document
from ank_common.manifest.issues import Issues, type_name, warn_unknown
from ank_common.manifest.render import render_into
from ank_common.manifest.validate import shape_manifest
from schemas.manifest import Manifest
from schemas.messages import ValidationIssue


class Parsed(msgspec.Struct):
    """The verdict on a manifest. Never raised: returned."""

    manifest: Manifest | None  # normalised, validated, templates kept; None on errors
    rendered: Manifest | None  # the same with templates rendered; None on errors
    errors: list[ValidationIssue] = []
    warnings: list[ValidationIssue] = []

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_manifest(data: bytes | str, *, agent: str | None = None) -> Parsed:
    """Reads, validates, normalises and renders a manifest (`ank apply`).

    `agent`: the CLI's `--agent` (None: not given; "": NotScheduled)."""
    issues = Issues()
    try:
        readable, document = _read(data, issues)
        if readable and document is None:
            issues.error("", "the document is empty")
        if document is not None and "desiredState" in document and "apiVersion" not in document:
            issues.error(
                "desiredState",
                "a 'desiredState:' document is the input of `ank set state`, not a manifest: "
                "put 'apiVersion' and 'workloads' at the top level",
            )
            document = None
        return verdict(document, agent, issues)
    except Exception as err:  # never raise on input, whatever it is; keep the cause visible
        issues.error("", f"internal error while reading the manifest: {type(err).__name__}: {err}")
        return Parsed(None, None, issues.errors, issues.warnings)


def parse_state_file(data: bytes | str, agent: str | None = None) -> Parsed:
    """Reads a file whose top level is `desiredState:` (the input of Ankaios's
    `ank set state`). An empty file is an empty state (masks then remove
    what they name). Such a file may be partial: references to configs it
    lacks, cycles and templates that do not render are warnings here and
    errors in `apply_update_masks`, which checks the state the masks
    produce; `rendered` is None when the file alone does not render."""
    issues = Issues()
    try:
        readable, document = _read(data, issues)
        if not readable:
            return Parsed(None, None, issues.errors, issues.warnings)
        if document is None:
            empty = Manifest(api_version="v1")
            return Parsed(empty, empty, issues.errors, issues.warnings)
        warn_unknown(document, ("desiredState",), "", issues)
        state = document.get("desiredState")
        if state is None:
            issues.error("desiredState", "missing field 'desiredState'")
            return Parsed(None, None, issues.errors, issues.warnings)
        if not isinstance(state, dict):
            issues.error("desiredState", f"expected a mapping, found {type_name(state)}")
            return Parsed(None, None, issues.errors, issues.warnings)
        return verdict(state, agent, issues, "desiredState", partial=True)
    except Exception as err:  # never raise on input
        issues.error("", f"internal error while reading the state: {type(err).__name__}: {err}")
        return Parsed(None, None, issues.errors, issues.warnings)


def verdict(
    document: dict[str, Any] | None, cli_agent: str | None, issues: Issues, path: str = "", partial: bool = False
) -> Parsed:
    """Steps 2 to 4 on a read document. `partial` (a state file): the
    render errors are warnings, checked again on the state the masks make."""
    if document is None:
        return Parsed(None, None, issues.errors, issues.warnings)
    manifest = shape_manifest(document, cli_agent, issues, path, partial)
    if partial and manifest is not None:
        render_issues = Issues()
        rendered = render_into(manifest, render_issues, path)
        for issue in render_issues.errors:
            issues.warn(issue.path, f"{issue.message} (checked again on the state after the update masks)")
        return Parsed(manifest, rendered, issues.errors, issues.warnings)
    rendered = render_into(manifest, issues, path) if manifest is not None else None
    if rendered is None:
        return Parsed(None, None, issues.errors, issues.warnings)
    return Parsed(manifest, rendered, issues.errors, issues.warnings)


def _read(data: bytes | str, issues: Issues) -> tuple[bool, dict[str, Any] | None]:
    """(readable, mapping or None when empty)."""
    try:
        return True, load_optional_document(data)
    except ManifestError as err:
        issues.error(err.path, err.message)
        return False, None
