"""`ank apply --dry-run`: read, validate and render a manifest, and print
what would be applied (or why not), without touching the bus."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import msgspec
import yaml

from ank_common.manifest.document import MAX_DOCUMENT_BYTES
from ank_common.manifest.parse import parse_manifest
from schemas.manifest import Manifest

OUTPUT_FORMATS = ("yaml", "json")


class _BlockStringDumper(yaml.SafeDumper):
    """Multi-line strings (runtimeConfig, file data) as `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockStringDumper.add_representer(str, _represent_str)


def manifest_to_text(manifest: Manifest, output: str) -> str:
    """The manifest as YAML or JSON text (camelCase fields, as written)."""
    plain: Any = msgspec.to_builtins(manifest)
    if output == "json":
        return json.dumps(plain, indent=2, ensure_ascii=False) + "\n"
    return str(yaml.dump(plain, Dumper=_BlockStringDumper, sort_keys=False, allow_unicode=True, width=1_000_000))


def _read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
    with open(source, "rb") as handle:
        return handle.read(MAX_DOCUMENT_BYTES + 1)


def dry_run(source: str, agent: str | None, output: str, stdout: IO[str], stderr: IO[str]) -> int:
    """Prints the normalised, rendered manifest read from `source` (a path or
    "-" for stdin) and returns 0; or prints every error as `path: reason`
    to stderr and returns 1. Warnings go to stderr in both cases."""
    if output not in OUTPUT_FORMATS:
        print(f"unknown output format '{output}', expected one of {', '.join(OUTPUT_FORMATS)}", file=stderr)
        return 1
    try:
        data = _read_source(source)
    except OSError as err:
        print(f"{source}: cannot read: {err.strerror or err}", file=stderr)
        return 1
    parsed = parse_manifest(data, agent=agent)
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=stderr)
    if parsed.rendered is None:
        for error in parsed.errors:
            print(str(error), file=stderr)
        return 1
    stdout.write(manifest_to_text(parsed.rendered, output))
    return 0
