"""camera-bridge stand-in: publishes small synthetic camera frames in place of
the CARLA front camera: 64x48 8-bit grey PGM (P5) images on `camera/front`
at 5 Hz.

Theory of operation: `frame(n)` is pure: a diagonal gradient that moves one
pixel per frame, with the frame number written as a bar code into the top
row so a viewer can tell frames apart. The shell ticks it on a monotonic
schedule and puts it (congestion control DROP: a stale frame is worthless).
"""

from __future__ import annotations

import argparse
import time

import zenoh

from manifests.police.program import program_bus, setup_program_logging, stop_event_on_signals

FRAME_KEY = "camera/front"
WIDTH, HEIGHT = 64, 48
PGM = zenoh.Encoding("image/x-portable-graymap")


def frame(number: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """Frame `number` as a binary PGM image."""
    pixels = bytearray(width * height)
    for y in range(height):
        row = y * width
        for x in range(width):
            pixels[row + x] = ((x + y + number) * 4) % 256
    for bit in range(min(width, 32)):  # the frame number, one pixel per bit, most significant first
        pixels[bit] = 255 if (number >> (31 - bit)) & 1 else 0
    return f"P5\n{width} {height}\n255\n".encode() + bytes(pixels)


def frame_number(pgm: bytes) -> int:
    """The number `frame` wrote into a frame's top row (for viewers and tests)."""
    body = pgm.split(b"\n", 3)[3]
    return sum(1 << (31 - bit) for bit in range(32) if body[bit] > 127)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camera-bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second (default 5)")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    log = setup_program_logging("camera-bridge")
    stop = stop_event_on_signals()
    period = 1.0 / args.rate
    with program_bus("camera-bridge") as bus:
        log.info("streaming %dx%d frames on %s at %.1f Hz", WIDTH, HEIGHT, FRAME_KEY, args.rate)
        number = 0
        next_tick = time.monotonic()
        while not stop.is_set():
            bus.session.put(FRAME_KEY, frame(number), encoding=PGM, congestion_control=zenoh.CongestionControl.DROP)
            number += 1
            next_tick += period
            stop.wait(max(0.0, next_tick - time.monotonic()))
    log.info("camera stopped after %d frames", number)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
