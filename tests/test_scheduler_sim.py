"""The fleet study (services.scheduler.sim): MALE keeps the first robot alive
longer than round-robin for the same work, and the plots are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scheduler.sim import FleetSpec, main, run_policy, study


def test_male_extends_time_to_first_depletion_by_25_percent_over_round_robin_with_equal_work() -> None:
    summaries, _ = study(FleetSpec(hours=8.0), seeds=[1, 2])
    by_policy = {s.policy: s for s in summaries}
    male, rr = by_policy["MALE"], by_policy["round-robin"]
    assert male.first_depletion_h >= 1.25 * rr.first_depletion_h
    assert male.served_h == pytest.approx(rr.served_h, rel=1e-9)  # same work in the common window
    assert male.refused == rr.refused == 0
    assert male.spread_wh < rr.spread_wh


def test_a_run_is_deterministic_for_a_seed() -> None:
    spec = FleetSpec(hours=2.0, robots=4)
    first, again = run_policy("random", spec, 3), run_policy("random", spec, 3)
    assert first.energy == again.energy and first.first_depletion_s == again.first_depletion_s


@pytest.mark.slow
def test_main_prints_the_table_and_writes_the_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "1", "--hours", "6", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MALE vs round-robin: time to first depletion" in out
    for name in ("fleet_energy.png", "fleet_summary.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--robots", "1", "--no-plots"]) == 2
    assert "--robots >= 2" in capsys.readouterr().err
