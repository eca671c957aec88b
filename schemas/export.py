"""Writes the JSON Schema file of every contract Struct into schemas/json/.

python -m schemas.export          # (re)generate
python -m schemas.export --check  # exit 1 if the files drifted from the Structs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

import schemas

OUT = Path(__file__).resolve().parent / "json"

EXPORTED: tuple[type[msgspec.Struct], ...] = (
    schemas.Manifest,
    schemas.WorkloadState,
    schemas.AgentPlan,
    schemas.AgentStatus,
    schemas.EnergyReport,
    schemas.Binding,
    schemas.HealthReport,
    schemas.Event,
    schemas.ApplyRequest,
    schemas.DeleteRequest,
    schemas.ApplyResult,
    schemas.CompleteState,
    schemas.LogsReply,
    schemas.PodmanConfig,
    schemas.PodmanKubeConfig,
    schemas.ProcessConfig,
)


def normalised(node: Any) -> Any:
    """The schema with every description folded to single-spaced text.

    How a library dedents and wraps docstrings is not part of the contract
    (msgspec 0.23 changed it); the words are, so the files keep only those.
    """
    if isinstance(node, dict):
        return {
            k: " ".join(v.split()) if k == "description" and isinstance(v, str) else normalised(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [normalised(v) for v in node]
    return node


def rendered() -> dict[str, str]:
    """File name → JSON Schema text, for every exported Struct."""
    files = {}
    for struct in EXPORTED:
        schema = normalised(msgspec.json.schema(struct))
        schema["$id"] = f"https://ank-zenoh/schemas/{struct.__name__}.schema.json"
        schema["title"] = struct.__name__
        files[f"{struct.__name__}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = rendered()
    if "--check" in argv:
        drifted = [n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        stale = [p.name for p in OUT.glob("*.schema.json") if p.name not in files]
        for name in drifted + stale:
            print(f"schemas/json/{name} is out of date: run `make schemas`", file=sys.stderr)
        return 1 if drifted or stale else 0
    OUT.mkdir(exist_ok=True)
    for stale_file in OUT.glob("*.schema.json"):
        if stale_file.name not in files:
            stale_file.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(files)} JSON Schema files to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
