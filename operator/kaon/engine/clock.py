"""Time as the engine reads it: injected, so tests move it by hand instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
# Kubernetes' MicroTime: for an order among things done within one second (admissions).
RFC3339_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for intervals and deadlines in memory."""
        ...

    def wall(self) -> float:
        """Unix seconds: for timestamps written to status and read from other processes."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


def rfc3339(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.wall(), UTC).strftime(RFC3339)


def rfc3339_micro(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.wall(), UTC).strftime(RFC3339_MICRO)


def seconds_since(clock: Clock, timestamp: str | None) -> float | None:
    """Age of an RFC 3339 timestamp written in status (None when there is none)."""
    return age(clock.wall(), timestamp)


def age(wall: float, timestamp: str | None) -> float | None:
    """Seconds from an RFC 3339 timestamp (with or without microseconds) to `wall`: one
    reading of the clock for many timestamps keeps equal timestamps equally old."""
    if not timestamp:
        return None
    layout = RFC3339_MICRO if "." in timestamp else RFC3339
    then = datetime.strptime(timestamp, layout).replace(tzinfo=UTC).timestamp()
    return max(wall - then, 0.0)
