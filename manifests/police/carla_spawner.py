"""carla-spawner stand-in: a simulated patrol target vehicle publishing
VSS-like signals at 10 Hz in place of a CARLA simulation.

    vehicle/Vehicle.Speed            {"path", "value" (km/h), "unit", "timestamp" (ms)}
    vehicle/Vehicle.CurrentLocation  {"path", "value": {"Latitude", "Longitude", "Heading"}, "timestamp"}

Theory of operation: the vehicle model is pure (`step` takes a state and a
time step and returns the next state); its speed follows a smooth cycle
between 30 and 130 km/h so that it is over the usual 100 km/h limit for
about a third of every cycle, which gives police-websocket something to
alert on. The shell only ticks the model on a monotonic schedule and puts
the signals (congestion control DROP: a late sample is worth nothing).
"""

from __future__ import annotations

import argparse
import math
import time

import msgspec

from manifests.police.program import program_bus, setup_program_logging, stop_event_on_signals

SPEED_KEY = "vehicle/Vehicle.Speed"
LOCATION_KEY = "vehicle/Vehicle.CurrentLocation"
METRES_PER_DEGREE = 111_320.0


class VehicleState(msgspec.Struct, frozen=True):
    elapsed_s: float = 0.0
    speed_kmh: float = 30.0
    latitude: float = 48.1351  # Munich, where the simulated patrol drives
    longitude: float = 11.5820
    heading_deg: float = 0.0


def speed_at(elapsed_s: float, cycle_s: float) -> float:
    """The speed profile: 80 ± 50 km/h over one cycle, starting at its slowest."""
    return 80.0 - 50.0 * math.cos(2.0 * math.pi * elapsed_s / cycle_s)


def step(state: VehicleState, dt_s: float, cycle_s: float) -> VehicleState:
    """The vehicle after dt_s seconds: new speed from the profile, the position
    advanced along a slowly turning heading."""
    elapsed = state.elapsed_s + dt_s
    speed = speed_at(elapsed, cycle_s)
    heading = (state.heading_deg + 3.0 * dt_s) % 360.0  # a wide circle: 2 minutes a turn
    distance_m = speed / 3.6 * dt_s
    rad = math.radians(heading)
    lat = state.latitude + distance_m * math.cos(rad) / METRES_PER_DEGREE
    lon = state.longitude + distance_m * math.sin(rad) / (METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return VehicleState(elapsed, speed, lat, lon, heading)


def signals(state: VehicleState, time_ms: int) -> list[tuple[str, bytes]]:
    """The (key, payload) pairs published for one state."""
    speed = {"path": "Vehicle.Speed", "value": round(state.speed_kmh, 2), "unit": "km/h", "timestamp": time_ms}
    location = {
        "path": "Vehicle.CurrentLocation",
        "value": {
            "Latitude": round(state.latitude, 7),
            "Longitude": round(state.longitude, 7),
            "Heading": round(state.heading_deg, 1),
        },
        "timestamp": time_ms,
    }
    # Location first: an alert raised on this speed then carries this tick's position.
    return [(LOCATION_KEY, msgspec.json.encode(location)), (SPEED_KEY, msgspec.json.encode(speed))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carla-spawner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="samples per second (default 10)")
    parser.add_argument("--cycle", type=float, default=60.0, help="seconds of one speed cycle (default 60)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.cycle <= 0:
        parser.error("--rate and --cycle must be positive")
    log = setup_program_logging("carla-spawner")
    stop = stop_event_on_signals()
    period = 1.0 / args.rate
    with program_bus("carla-spawner") as bus:
        log.info("vehicle spawned; publishing %s and %s at %.1f Hz", SPEED_KEY, LOCATION_KEY, args.rate)
        state = VehicleState()
        next_tick = time.monotonic()
        while not stop.is_set():
            for key, payload in signals(state, time.time_ns() // 1_000_000):
                bus.put(key, payload, reliable=False)
            next_tick += period
            stop.wait(max(0.0, next_tick - time.monotonic()))
            state = step(state, period, args.cycle)
    log.info("vehicle despawned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
