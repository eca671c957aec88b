"""Where the agent's energy figure comes from (sysfs battery, simulation)."""

from __future__ import annotations

from pathlib import Path

from services.agent.energy import SimulatedBattery, read_power_supply


def test_energy_now_in_microwatt_hours_is_read_as_wh(tmp_path: Path) -> None:
    bat = tmp_path / "BAT0"
    bat.mkdir()
    (bat / "energy_now").write_text("42500000\n")
    (bat / "energy_full").write_text("50000000\n")
    assert read_power_supply(tmp_path) == (42.5, 50.0)


def test_charge_times_voltage_is_used_without_energy_now(tmp_path: Path) -> None:
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "charge_now").write_text("2000000\n")  # 2 Ah
    (bat / "voltage_now").write_text("12000000\n")  # 12 V
    energy, capacity = read_power_supply(tmp_path) or (None, None)
    assert energy == 24.0 and capacity is None


def test_no_battery_gives_none(tmp_path: Path) -> None:
    (tmp_path / "AC").mkdir()
    (tmp_path / "AC" / "online").write_text("1\n")
    assert read_power_supply(tmp_path) is None
    assert read_power_supply(tmp_path / "absent") is None


def test_simulated_battery_drains_by_power_times_time() -> None:
    battery = SimulatedBattery(energy_wh=10.0, capacity_wh=20.0, drain_w=36.0, since_mono=100.0)
    assert battery.energy_at(100.0) == 10.0
    assert abs(battery.energy_at(200.0) - 9.0) < 1e-9  # 36 W for 100 s = 1 Wh
    assert battery.energy_at(10_000.0) == 0.0
