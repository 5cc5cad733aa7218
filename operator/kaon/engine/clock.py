"""Time as the engine reads it: injected, so tests move it by hand instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


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


def seconds_since(clock: Clock, timestamp: str | None) -> float | None:
    """Age of an RFC 3339 timestamp written in status (None when there is none)."""
    if not timestamp:
        return None
    then = datetime.strptime(timestamp, RFC3339).replace(tzinfo=UTC).timestamp()
    return max(clock.wall() - then, 0.0)
