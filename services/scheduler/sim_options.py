"""`ank sim fleet`'s options: one definition for `ank sim fleet` and
`python -m services.scheduler.sim`.

Kept apart from the study so that the CLI can build its parser without
importing the scheduling core and the study's modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`ank sim fleet`'s options (shared by `ank` and `python -m services.scheduler.sim`)."""
    p.add_argument("--robots", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5, help="number of seeds to average over")
    p.add_argument("--seed", type=int, default=1, help="first seed")
    p.add_argument("--hours", type=float, default=12.0)
    p.add_argument("--arrivals-per-hour", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=Path("sim-out"), help="directory for the PNG plots")
    p.add_argument("--no-plots", action="store_true")
