"""The options both scheduler modes share are checked once
(services.scheduler.options): the same nonsense is refused, naming the
option, in native and in Kubernetes mode; nothing crashes on nan or inf."""

from __future__ import annotations

import pytest

from services.scheduler.core import NativeConfig
from services.scheduler.kube_core import KubeConfig
from services.scheduler.kube_shell import kube_config
from services.scheduler.shell import build_parser, native_config


def both(*argv: str) -> tuple[NativeConfig, KubeConfig]:
    args = build_parser().parse_args(list(argv))
    return native_config(args), kube_config(args, "none")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--in-flight-s", "0"], "--in-flight-s must be a positive number of seconds"),
        (["--in-flight-s", "inf"], "--in-flight-s must be a positive number of seconds"),
        (["--backoff-initial-s", "0"], "--backoff-initial-s must be a positive number of seconds"),
        (["--backoff-max-s", "nan"], "--backoff-max-s must be a positive number of seconds"),
        (["--backoff-initial-s", "5", "--backoff-max-s", "1"], "--backoff-max-s must not be below"),
        (["--max-energy-age-s", "-1"], "--max-energy-age-s must not be negative"),
        (["--max-energy-age-s", "nan"], "--max-energy-age-s must not be negative"),
        (["--energy-cost-wh", "-0.5"], "--energy-cost-wh must not be negative"),
        (["--energy-cost-wh", "inf"], "--energy-cost-wh must not be negative"),
    ],
)
def test_the_shared_options_are_refused_alike_in_both_modes(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(ValueError, match=message):
        native_config(args)
    with pytest.raises(ValueError, match=message):
        kube_config(args, "none")


@pytest.mark.parametrize(("flag", "value"), [("--min-dwell-s", "-1"), ("--hysteresis-wh", "nan")])
def test_native_only_options_are_checked_too(flag: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{flag} must not be negative"):
        native_config(build_parser().parse_args([flag, value]))


def test_both_modes_read_the_shared_options_the_same_way() -> None:
    native, kube = both("--in-flight-s", "2.5", "--backoff-initial-s", "0.2", "--energy-cost-wh", "3")
    for field in (
        "max_energy_age_ms",
        "default_energy_cost_wh",
        "in_flight_ms",
        "backoff_initial_ms",
        "backoff_max_ms",
    ):
        assert getattr(native, field) == getattr(kube, field)
    assert (native.in_flight_ms, native.backoff_initial_ms, native.default_energy_cost_wh) == (2500, 200, 3.0)
