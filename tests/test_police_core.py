"""The pure parts of the police stand-in programs: the vehicle model, the
Kuksa datapoint conversion, the alert filter, PGM frames and their PNG."""

from __future__ import annotations

import struct
import zlib

import msgspec
import pytest

from manifests.police.alerts import SpeedAlertFilter, on_speed
from manifests.police.camera_bridge import frame, frame_number
from manifests.police.camera_websocket import PgmError, grey_png, parse_pgm
from manifests.police.carla_spawner import VehicleState, signals, speed_at, step
from manifests.police.kuksa_bridge import VssDatapoint, to_datapoint


def test_vehicle_speed_cycles_between_30_and_130_and_crosses_the_limit() -> None:
    speeds = [speed_at(t / 10, cycle_s=60) for t in range(600)]
    assert min(speeds) == pytest.approx(30, abs=0.1) and max(speeds) == pytest.approx(130, abs=0.1)
    assert 0.2 < sum(s > 100 for s in speeds) / len(speeds) < 0.5


def test_vehicle_moves_by_its_speed() -> None:
    state = VehicleState(speed_kmh=36.0)
    later = step(state, 1.0, cycle_s=60)
    moved_m = ((later.latitude - state.latitude) ** 2) ** 0.5 * 111_320
    assert later.elapsed_s == 1.0 and 5 < moved_m < 12  # ~30 km/h for one second, heading ~north


def test_signals_are_vss_speed_and_location() -> None:
    (loc_key, loc), (speed_key, speed) = signals(VehicleState(speed_kmh=88.123), 1234)
    assert speed_key == "vehicle/Vehicle.Speed" and loc_key == "vehicle/Vehicle.CurrentLocation"
    assert msgspec.json.decode(speed) == {"path": "Vehicle.Speed", "value": 88.12, "unit": "km/h", "timestamp": 1234}
    assert set(msgspec.json.decode(loc)["value"]) == {"Latitude", "Longitude", "Heading"}


def test_kuksa_datapoint_of_a_signal() -> None:
    key, payload = signals(VehicleState(speed_kmh=120.0), 1_700_000_000_000)[1]
    result = to_datapoint(key, payload)
    assert not isinstance(result, str)
    out_key, out = result
    point = msgspec.json.decode(out, type=VssDatapoint)
    assert out_key == "kuksa/Vehicle.Speed" and point.path == "Vehicle.Speed" and point.dp.value == 120.0
    assert point.dp.ts == "2023-11-14T22:13:20.000+00:00"


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{}", b'{"path": "Vehicle.Speed", "value": 1}', b'{"path": "Other", "value": 1, "timestamp": 1}'],
)
def test_kuksa_refuses_malformed_signals_with_a_reason(payload: bytes) -> None:
    result = to_datapoint("vehicle/Vehicle.Speed", payload)
    assert isinstance(result, str) and "vehicle/Vehicle.Speed" in result


def test_alert_filter_alerts_once_per_speeding_episode() -> None:
    f = SpeedAlertFilter(limit_kmh=100, rearm_below_kmh=95)
    raised = []
    for t, speed in enumerate([80, 99, 101, 120, 98, 103, 90, 104]):
        f, alert = on_speed(f, speed, t, (48.1, 11.5))
        if alert:
            raised.append((t, alert.speed_kmh, alert.latitude))
    # 101 raises; 98 and 103 stay in the episode (above the re-arm speed); 90 re-arms; 104 raises again.
    assert raised == [(2, 101, 48.1), (7, 104, 48.1)]


def test_frames_are_64x48_pgm_numbered_in_the_top_row() -> None:
    pgm = frame(1234)
    width, height, pixels = parse_pgm(pgm)
    assert (width, height, len(pixels)) == (64, 48, 64 * 48)
    assert frame_number(pgm) == 1234 and frame(1) != frame(2)


def test_png_of_a_frame_decodes_to_the_same_pixels() -> None:
    width, height, pixels = parse_pgm(frame(7))
    png = grey_png(width, height, pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (64, 48)
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    rows = zlib.decompress(png[41 : 41 + idat_len])
    assert b"".join(rows[y * 65 + 1 : (y + 1) * 65] for y in range(48)) == pixels


@pytest.mark.parametrize("data", [b"", b"P6\n1 1\n255\n\x00", b"P5\n4 4\n255\n\x00\x00", b"P5\n1 1\n65535\n\x00\x00"])
def test_bad_pgm_is_refused(data: bytes) -> None:
    with pytest.raises(PgmError):
        parse_pgm(data)
