"""The emergency-alert filter of police-websocket: a speeding vehicle raises
one alert, not one per sample.

Theory of operation: the filter is a two-state machine over the speed
datapoints, pure (values in, new filter and at most one alert out). It
alerts when the speed goes over the limit and re-arms only once the speed
has dropped below `rearm_below_kmh`, so a speed hovering around the limit
does not flood `police/alerts`.

    state     | speed > limit       | speed < rearm      | otherwise
    ----------+---------------------+--------------------+----------
    clear     | speeding, ALERT     | clear              | clear
    speeding  | speeding            | clear              | speeding
"""

from __future__ import annotations

from typing import Literal

import msgspec

ALERT_KEY = "police/alerts"


class SpeedAlertFilter(msgspec.Struct, frozen=True):
    limit_kmh: float = 100.0
    rearm_below_kmh: float = 95.0
    state: Literal["clear", "speeding"] = "clear"


class Alert(msgspec.Struct, frozen=True):
    kind: str
    message: str
    speed_kmh: float
    limit_kmh: float
    time_ms: int
    latitude: float | None = None
    longitude: float | None = None


def on_speed(
    alert_filter: SpeedAlertFilter,
    speed_kmh: float,
    time_ms: int,
    location: tuple[float, float] | None = None,
) -> tuple[SpeedAlertFilter, Alert | None]:
    """The filter after one speed sample, and the alert it raises, if any."""
    if alert_filter.state == "clear" and speed_kmh > alert_filter.limit_kmh:
        lat, lon = location if location is not None else (None, None)
        alert = Alert(
            kind="speeding",
            message=f"vehicle at {speed_kmh:.1f} km/h exceeds the {alert_filter.limit_kmh:.0f} km/h limit",
            speed_kmh=speed_kmh,
            limit_kmh=alert_filter.limit_kmh,
            time_ms=time_ms,
            latitude=lat,
            longitude=lon,
        )
        return msgspec.structs.replace(alert_filter, state="speeding"), alert
    if alert_filter.state == "speeding" and speed_kmh < alert_filter.rearm_below_kmh:
        return msgspec.structs.replace(alert_filter, state="clear"), None
    return alert_filter, None
