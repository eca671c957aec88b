"""Reading, Ankaios-compatible validation and Handlebars rendering of
manifests: one code path for `ank apply --dry-run` and for the planner.
See parse.py for the theory of operation and docs/manifest.md for the rules.

| module | concern |
|---|---|
| `document.py` | text -> plain mapping (size, alias bombs, depth, YAML 1.2) |
| `parse.py` | the entry points and the verdict (`Parsed`) |
| `validate.py` | the shape of a manifest and its cross-checks (cycles) |
| `name_rules.py`, `access_rules.py` | names and Control Interface rules |
| `render.py`, `templating.py` | what is rendered with what; the engine |
| `masks.py` | `ank set state` update masks |
| `identity.py` | instance ids |
| `issues.py` | path-named errors and warnings |
| `dry_run.py` | `ank apply --dry-run` |
"""

from ank_common.manifest.document import ManifestError, load_document
from ank_common.manifest.dry_run import dry_run, manifest_to_text
from ank_common.manifest.identity import instance_id
from ank_common.manifest.masks import apply_update_masks
from ank_common.manifest.parse import Parsed, parse_manifest, parse_state_file
from ank_common.manifest.render import render_manifest
from ank_common.manifest.validate import find_dependency_cycle

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
