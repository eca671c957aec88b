"""Where the agent's energy figure comes from: a simulated battery (flags)
or the node's own battery in /sys/class/power_supply."""

from __future__ import annotations

from pathlib import Path

import msgspec

POWER_SUPPLY = Path("/sys/class/power_supply")


class SimulatedBattery(msgspec.Struct, frozen=True):
    """A battery that drains at a constant power from the moment it was made."""

    energy_wh: float
    capacity_wh: float | None
    drain_w: float
    since_mono: float

    def energy_at(self, now_mono: float) -> float:
        drained = self.drain_w * max(0.0, now_mono - self.since_mono) / 3600.0
        return max(0.0, self.energy_wh - drained)


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_power_supply(root: Path = POWER_SUPPLY) -> tuple[float, float | None] | None:
    """(energy Wh, capacity Wh) summed over the batteries found, or None.
    energy_now/energy_full are µWh; otherwise charge_now (µAh) x voltage_now (µV)."""
    total = 0.0
    capacity = 0.0
    found = False
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    for supply in supplies:
        energy = _read_number(supply / "energy_now")
        full = _read_number(supply / "energy_full")
        if energy is None:
            charge = _read_number(supply / "charge_now")
            volts = _read_number(supply / "voltage_now")
            if charge is None or volts is None:
                continue
            energy = charge * volts / 1e6
            full_charge = _read_number(supply / "charge_full")
            full = full_charge * volts / 1e6 if full_charge is not None else None
        found = True
        total += energy / 1e6
        if full is not None:
            capacity += full / 1e6
    if not found:
        return None
    return total, capacity or None
