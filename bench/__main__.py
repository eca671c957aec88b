"""`make bench`: runs every benchmark module (bench/bench_*.py, each with
`run(quick: bool) -> list[dict]`), prints a table and writes
bench-results.json in the working directory.

    python -m bench [--quick] [--only P1,P4] [--out bench-results.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import traceback
from pathlib import Path
from typing import Any

FIELDS = ("id", "name", "unit", "p50", "p99", "floor", "peer", "target")


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--only", help="comma-separated benchmark ids, e.g. P1,P4")
    ap.add_argument("--modules", help="comma-separated bench modules, e.g. bench_agent")
    ap.add_argument("--out", default="bench-results.json")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",")} if args.only else None
    modules = args.modules.split(",") if args.modules else discover()
    rows: list[dict[str, Any]] = []
    failed = []
    for name in modules:
        try:
            mod = importlib.import_module(f"bench.{name}")
            for row in mod.run(quick=args.quick, only=only) if _takes_only(mod) else mod.run(quick=args.quick):
                if only and row.get("id") not in only:
                    continue
                rows.append({k: row.get(k) for k in FIELDS} | {k: v for k, v in row.items() if k not in FIELDS})
                _print_row(rows[-1])
        except Exception:
            failed.append(name)
            traceback.print_exc()
    rows.sort(key=lambda r: (len(str(r["id"])), str(r["id"])))
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(markdown_table(rows))
    print(f"\nwrote {args.out}")
    if failed:
        print(f"benchmark modules that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _takes_only(mod: Any) -> bool:
    import inspect

    return "only" in inspect.signature(mod.run).parameters


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['id']}: {r['name']}: p50 {_fmt(r['p50'])} {r['unit']} p99 {_fmt(r['p99'])} "
        f"floor {_fmt(r['floor'])} peer {_fmt(r['peer'])} target {_fmt(r['target'])}",
        flush=True,
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = ["| id | benchmark | unit | p50 | p99 | floor | peer | target |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[k]) for k in FIELDS) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
