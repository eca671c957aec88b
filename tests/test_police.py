"""The police stand-in programs as real processes against a real router:
each does its job, stops cleanly on SIGTERM, and fails clearly without Zenoh."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from websockets.sync.client import connect as ws_connect

from manifests.police.camera_bridge import frame, frame_number
from services.bus import Bus
from tests.helpers import ROOT, Collector, child_env, free_port, stop_process, wait_for, wait_port


@contextmanager
def running_program(module: str, router: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Runs manifests.police.<module>; the test calls `stopped_cleanly` to
    check its SIGTERM exit; the finally stops it whatever happens."""
    command = [sys.executable, "-m", f"manifests.police.{module}", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(router))
    try:
        yield proc
    finally:
        stop_process(proc)


def stopped_cleanly(proc: subprocess.Popen[bytes]) -> bool:
    proc.terminate()
    return proc.wait(10) == 0


def _until(attempt: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    return wait_for(attempt, timeout=timeout, what=what)


def _arrived(got: Collector) -> bool:
    """Whether something arrived within 0.1 s (one round of a bounded retry)."""
    try:
        got.wait(lambda items: items, timeout=0.1)
        return True
    except AssertionError:
        return False


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _speed(value: float, ts: str = "2026-01-01T00:00:00.000+00:00") -> bytes:
    return msgspec.json.encode({"path": "Vehicle.Speed", "dp": {"value": value, "ts": ts}})


def test_carla_spawner_publishes_speed_and_location_at_10_hz(router: str, make_bus: Callable[[str], Bus]) -> None:
    got = Collector()
    make_bus("watch").subscribe_raw("vehicle/**", got)
    with running_program("carla_spawner", router) as proc:
        got.wait(lambda items: len(items) >= 2, what="first samples")
        first = len(got.items)
        _until(lambda: proc.poll() is None and len(got.items) - first >= 20, "20 more samples")  # 10 of each key
        assert stopped_cleanly(proc)
    keys = {key for key, _ in got.items}
    assert keys == {"vehicle/Vehicle.Speed", "vehicle/Vehicle.CurrentLocation"}
    speeds = [json.loads(p)["value"] for k, p in got.items if k.endswith("Speed")]  # type: ignore[arg-type]
    assert all(20 <= s <= 140 for s in speeds)


def test_carla_spawner_rate_is_about_10_hz(router: str, make_bus: Callable[[str], Bus]) -> None:
    got = Collector()
    make_bus("rate").subscribe_raw("vehicle/Vehicle.Speed", got)
    with running_program("carla_spawner", router) as proc:
        got.wait(lambda items: len(items) >= 1, what="a first sample")
        got.wait(lambda items: len(items) >= 11, what="10 more samples")
        stamps = [json.loads(p)["timestamp"] for _, p in got.items[:11]]  # type: ignore[arg-type]
        assert stopped_cleanly(proc)
    assert 800 <= stamps[-1] - stamps[0] <= 1300  # 10 intervals of 100 ms, with scheduling slack


def test_kuksa_bridge_republishes_a_speed_it_received_and_survives_garbage(
    router: str, make_bus: Callable[[str], Bus]
) -> None:
    bus, got = make_bus("vehicle"), Collector()
    make_bus("kuksa-watch").subscribe_raw("kuksa/**", got)
    with running_program("kuksa_bridge", router) as proc:
        signal = msgspec.json.encode({"path": "Vehicle.Speed", "value": 123.4, "timestamp": 1_700_000_000_000})

        def republished() -> bool:
            bus.put("vehicle/Vehicle.Speed", b"\x00garbage")
            bus.put("vehicle/Vehicle.Speed", signal, reliable=False)
            return _arrived(got)

        _until(republished, "kuksa/Vehicle.Speed")
        key, payload = got.items[0]
        assert key == "kuksa/Vehicle.Speed"
        assert json.loads(payload) == {  # type: ignore[arg-type]
            "path": "Vehicle.Speed",
            "dp": {"value": 123.4, "ts": "2023-11-14T22:13:20.000+00:00"},
        }
        assert proc.poll() is None
        assert stopped_cleanly(proc)


def test_camera_bridge_streams_numbered_pgm_frames(router: str, make_bus: Callable[[str], Bus]) -> None:
    got = Collector()
    make_bus("camera-watch").subscribe_raw("camera/front", got)
    with running_program("camera_bridge", router, "--rate", "20") as proc:
        got.wait(lambda items: len(items) >= 3, what="3 frames")
        assert stopped_cleanly(proc)
    payloads: list[bytes] = [p for _, p in got.items]  # type: ignore[misc]
    assert all(p.startswith(b"P5\n64 48\n255\n") and len(p) == 13 + 64 * 48 for p in payloads)
    numbers = [frame_number(p) for p in payloads]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_police_websocket_alerts_on_speeding_and_shows_it(router: str, make_bus: Callable[[str], Bus]) -> None:
    bus, alerts = make_bus("kuksa"), Collector()
    make_bus("alert-watch").subscribe_raw("police/alerts", alerts)
    port = free_port()
    with running_program("police_websocket", router, "--port", str(port), "--limit", "100") as proc:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"

        def seen_slow() -> bool:  # the subscription reaches the router a moment after the port opens
            bus.put("kuksa/Vehicle.Speed", _speed(60.0), reliable=False)
            return json.loads(_get(f"{base}/api/latest")[1])["datapoints"].get("Vehicle.Speed") is not None

        _until(seen_slow, "a datapoint on the page")
        assert alerts.items == []
        with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "snapshot"
            for speed in (130.0, 131.0, 132.0):  # one episode: one alert
                bus.put("kuksa/Vehicle.Speed", _speed(speed))
            alerts.wait(lambda items: items, what="an alert on police/alerts")
            for _ in range(20):  # bounded: datapoint messages come first
                message = json.loads(ws.recv(timeout=5))
                if message["type"] == "alert":
                    break
            assert message["alert"]["speed_kmh"] == 130.0
        alert = json.loads(alerts.items[0][1])  # type: ignore[arg-type]
        assert alert["kind"] == "speeding" and alert["speed_kmh"] == 130.0 and alert["limit_kmh"] == 100.0
        latest = json.loads(_get(f"{base}/api/latest")[1])
        assert latest["datapoints"]["Vehicle.Speed"]["dp"]["value"] == 132.0
        assert [a["speed_kmh"] for a in latest["alerts"]] == [130.0]
        assert len(alerts.items) == 1
        status, page = _get(f"{base}/")
        assert status == 200 and b"Emergency alerts" in page
        assert stopped_cleanly(proc)


def test_camera_websocket_serves_the_latest_frame_as_png(router: str, make_bus: Callable[[str], Bus]) -> None:
    bus = make_bus("camera")
    port = free_port()
    with running_program("camera_websocket", router, "--port", str(port)) as proc:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/frame.png")[0] == 503  # nothing received yet

        def served() -> bool:
            bus.put("camera/front", b"P5 garbage", reliable=False)
            bus.put("camera/front", frame(42), reliable=False)
            return _get(f"{base}/frame.png")[0] == 200

        _until(served, "a frame served")
        status, png = _get(f"{base}/frame.png")
        assert status == 200
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[16:24] == b"\x00\x00\x00\x40\x00\x00\x00\x30"  # 64x48
        latest = json.loads(_get(f"{base}/api/latest")[1])
        assert latest["width"] == 64 and latest["height"] == 48 and latest["rejected"] >= 1
        with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert ws.recv(timeout=5) == png  # the latest frame first
        assert stopped_cleanly(proc)


def test_zenoh_router_relays_between_its_port_and_the_orchestrator_router(router: str) -> None:
    port = free_port()
    vehicle_endpoint = f"tcp/127.0.0.1:{port}"
    with running_program("zenoh_router", router, "--listen", vehicle_endpoint) as proc:
        wait_port(port)
        got = Collector()
        with Bus("orchestrator-side", server=router) as orchestrator, Bus("vehicle-side", server=vehicle_endpoint) as v:
            orchestrator.subscribe_raw("relay/**", got)

            def relayed() -> bool:
                v.put("relay/hello", b'{"from": "vehicle"}', reliable=False)
                return _arrived(got)

            _until(relayed, "a put on the vehicle router to reach the orchestrator router")
        assert got.items[0][0] == "relay/hello"
        assert stopped_cleanly(proc)


PROGRAMS = ["carla_spawner", "kuksa_bridge", "camera_bridge", "camera_websocket", "police_websocket", "zenoh_router"]


def test_every_program_without_zenoh_exits_2_naming_the_endpoint() -> None:
    dead = f"tcp/127.0.0.1:{free_port()}"
    # All at once: each waits out the configured connect timeout (3 s) before giving up.
    procs = {}
    try:
        for module in PROGRAMS:
            args = ["--listen", f"tcp/127.0.0.1:{free_port()}"] if module == "zenoh_router" else []
            procs[module] = subprocess.Popen(
                [sys.executable, "-m", f"manifests.police.{module}", *args],
                cwd=ROOT,
                env=child_env(dead),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        for module, proc in procs.items():
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 2, module
            assert f"reach Zenoh at {dead}" in stderr.decode(), module
    finally:
        for proc in procs.values():
            stop_process(proc)


def test_the_chain_vehicle_to_kuksa_to_alert_works_end_to_end(router: str, make_bus: Callable[[str], Bus]) -> None:
    alerts = Collector()
    make_bus("chain-watch").subscribe_raw("police/alerts", alerts)
    port = free_port()
    with (
        running_program("police_websocket", router, "--port", str(port)) as police,
        running_program("kuksa_bridge", router) as kuksa,
        running_program("carla_spawner", router, "--cycle", "2") as carla,  # over 100 km/h within a second
    ):
        alerts.wait(lambda items: items, timeout=15, what="a speeding alert from the simulated vehicle")
        alert = json.loads(alerts.items[0][1])  # type: ignore[arg-type]
        assert alert["speed_kmh"] > 100 and alert["latitude"] is not None
        latest = json.loads(_get(f"http://127.0.0.1:{port}/api/latest")[1])
        assert set(latest["datapoints"]) == {"Vehicle.Speed", "Vehicle.CurrentLocation"}
        assert all(stopped_cleanly(p) for p in (carla, kuksa, police))
