"""The one timer facility of the shells: what a loop must offer to run
something later (`Timers`), and `WakeTimer`, one wake-up at the earliest time
a core asked for.

A core says when it next wants to be woken (`next_due_ms`, `next_wake_ms`);
its shell arms a `WakeTimer` with that time after every step. The loop's
timers cannot be cancelled, so a `WakeTimer` keeps only the earliest
wake-up: asked for a later one while an earlier one is armed, it does
nothing (the earlier wake-up steps the core, which names its next time
again); asked for an earlier one, it arms that and the one armed before
becomes stale — it still fires, and is ignored, so the core is never
woken twice for one arming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Timers(Protocol):
    """What a shell's loop offers: `services.bus.loop.EventLoop` (timers on
    its injected clock), `services.dashboard.web.Fanout` (the web server's
    asyncio loop). Both are safe to call from any thread; `fn` runs on the
    loop's thread."""

    def post(self, fn: Callable[..., None], *args: Any) -> None: ...
    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None: ...


class WakeTimer:
    """Calls `fire()` on the loop at the earliest time `arm` was given
    since it last fired. `now_ms` is the clock the times are counted in
    (the one the core is given); `slack_s` is added to each delay (a wall
    clock counted in whole milliseconds may otherwise wake the core a
    fraction of a millisecond early, to find nothing due). Loop thread only."""

    def __init__(
        self, timers: Timers, fire: Callable[[], None], now_ms: Callable[[], int], *, slack_s: float = 0.0
    ) -> None:
        self._timers = timers
        self._fire = fire
        self._now_ms = now_ms
        self._slack_s = slack_s
        self._due_ms: int | None = None
        self._armings = 0  # which arming is live; an older one fires and is ignored

    @property
    def due_ms(self) -> int | None:
        """The time armed, or None when nothing is."""
        return self._due_ms

    def arm(self, due_ms: int | None) -> None:
        """Wake at `due_ms` (None: nothing to wake for), unless an earlier or equal wake-up is armed."""
        if due_ms is None or (self._due_ms is not None and self._due_ms <= due_ms):
            return
        self._due_ms = due_ms
        self._armings += 1
        delay = max(0.0, (due_ms - self._now_ms()) / 1000) + self._slack_s
        self._timers.call_later(delay, self._fired, self._armings)

    def _fired(self, arming: int) -> None:
        if arming != self._armings or self._due_ms is None:
            return  # superseded by an earlier arming, which has fired or will
        self._due_ms = None
        self._fire()
