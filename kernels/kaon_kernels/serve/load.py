"""The load signal for autoscaling: a compact record in this pod's own annotation.

Every `interval_s` (5 s) the server summarises the requests answered since the last record:

    {"ts": 1700000000, "inflight": 3.2, "rps": 410.5, "p50Ms": 7.1, "queueMs": 1.9, "ready": true}

`inflight` is the mean number of requests in the server over the window (Little's law: the sum
of the answered requests' latencies divided by the window's length), `rps` the answers per
second, `p50Ms` the median latency (from a bounded sample), `queueMs` the mean wait for a batch.
Once the drift window has enough samples the record also carries `drift` (the largest
per-feature PSI of the recent inputs) and `driftFeature` (which feature), for the service's
Drift condition.
The operator reads the annotation from the pod (key in `KAON_LOAD_ANNOTATION`); the reporter is
on only in a pod (see `PodAnnotator.from_env`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kaon_kernels.podreport import PodAnnotator

LOAD_ANNOTATION_ENV = "KAON_LOAD_ANNOTATION"
MAX_SAMPLES = 2048


class LoadWindow:
    """Requests answered since `start` (monotonic seconds); reset by each `snapshot`."""

    def __init__(self, start: float, rng: random.Random | None = None) -> None:
        self.start = start
        self.rng = rng or random.Random(0)
        self.count = 0
        self.latency_sum = 0.0
        self.queue_sum = 0.0
        self.sample: list[float] = []

    def observe(self, latency_s: float, queue_s: float) -> None:
        self.count += 1
        self.latency_sum += latency_s
        self.queue_sum += queue_s
        if len(self.sample) < MAX_SAMPLES:
            self.sample.append(latency_s)
        else:  # reservoir sampling keeps a uniform sample of the window
            slot = self.rng.randrange(self.count)
            if slot < MAX_SAMPLES:
                self.sample[slot] = latency_s

    def snapshot(self, now: float, wall: float, ready: bool) -> dict[str, Any]:
        """The record for the window ending at `now`; the window starts over."""
        span = max(now - self.start, 1e-9)
        record: dict[str, Any] = {
            "ts": int(wall),
            "inflight": round(self.latency_sum / span, 3),
            "rps": round(self.count / span, 2),
            "p50Ms": round(_median(self.sample) * 1000, 3) if self.sample else 0.0,
            "queueMs": round(self.queue_sum / self.count * 1000, 3) if self.count else 0.0,
            "ready": ready,
        }
        self.start = now
        self.count = 0
        self.latency_sum = self.queue_sum = 0.0
        self.sample = []
        return record


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class LoadReporter:
    """Offers the window's record to the annotator every `interval_s`, on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        annotator: PodAnnotator,
        ready: Callable[[], bool],
        interval_s: float = 5.0,
        extra: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.loop = loop
        self.annotator = annotator
        self.ready = ready
        self.extra = extra
        self.interval_s = interval_s
        self.window = LoadWindow(time.monotonic())
        self._timer = loop.call_later(interval_s, self._tick)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        loop: asyncio.AbstractEventLoop,
        ready: Callable[[], bool],
        extra: Callable[[], dict[str, Any]] = dict,
        interval_s: float = 5.0,
    ) -> LoadReporter | None:
        annotator = PodAnnotator.from_env(env, LOAD_ANNOTATION_ENV, min_interval_s=1.0)
        return cls(loop, annotator, ready, interval_s, extra) if annotator else None

    def _tick(self) -> None:
        record = self.window.snapshot(time.monotonic(), time.time(), self.ready())
        self.annotator.offer(record | self.extra())
        self._timer = self.loop.call_later(self.interval_s, self._tick)

    def close(self) -> None:
        """A last record (not ready: the server is going away), sent before returning."""
        self._timer.cancel()
        self.annotator.offer(self.window.snapshot(time.monotonic(), time.time(), False))
        self.annotator.close()


class DriftSource(Protocol):
    def drift(self) -> Any: ...


def drift_report(app: DriftSource) -> Callable[[], dict[str, Any]]:
    """The load record's drift fields, from the app's drift snapshot (none until it has one)."""

    def fields() -> dict[str, Any]:
        drift = app.drift()
        if drift is None or drift.score is None:
            return {}
        return {"drift": round(drift.score, 4), "driftFeature": drift.worst_feature}

    return fields
