"""Kept for importers not moved yet: the manifest library is split by
concern (parse.py, validate.py, render.py, masks.py, identity.py); import
from `ank_common.manifest` or from those modules."""

from ank_common.manifest.identity import instance_id
from ank_common.manifest.parse import Parsed, parse_manifest, parse_state_file
from ank_common.manifest.render import render_manifest

__all__ = ["Parsed", "instance_id", "parse_manifest", "parse_state_file", "render_manifest"]
