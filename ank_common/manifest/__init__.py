"""Reading, Ankaios-compatible validation and Handlebars rendering of
manifests: one code path for `ank apply --dry-run` and for the planner.
See core.py for the theory of operation and docs/manifest.md for the rules."""

from ank_common.manifest.core import (
    Parsed,
    apply_update_masks,
    find_dependency_cycle,
    instance_id,
    parse_manifest,
    parse_state_file,
    render_manifest,
)
from ank_common.manifest.document import ManifestError, load_document
from ank_common.manifest.dry_run import dry_run, manifest_to_text

__all__ = [
    "ManifestError",
    "Parsed",
    "apply_update_masks",
    "dry_run",
    "find_dependency_cycle",
    "instance_id",
    "load_document",
    "manifest_to_text",
    "parse_manifest",
    "parse_state_file",
    "render_manifest",
]
