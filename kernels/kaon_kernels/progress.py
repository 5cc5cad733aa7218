"""Progress reports of rank 0: a `KAON_PROGRESS {json}` line on stdout and `progress.json`.

In a pod, a sink also forwards each record to the pod's annotation (see `podreport`).

Reporting is cheap: the caller accumulates the loss on the device without synchronising, and
only a reporting step reads it back. A step reports when it is a multiple of `every` and at least
`min_seconds` have passed since the last report (and the last step always reports), so a fast
run does not spend its time writing files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PREFIX = "KAON_PROGRESS "
ProgressSink = Callable[[dict[str, Any]], None]


def report_interval(total_steps: int) -> int:
    """About 50 reports per run, at least every step and at most every 100 steps."""
    return max(1, min(100, total_steps // 50))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


class ProgressReporter:
    """Writes progress for steps `start_step + 1 .. total_steps` of this run."""

    def __init__(
        self,
        path: Path,
        total_steps: int,
        start_step: int,
        every: int | None = None,
        stream: TextIO | None = None,
        min_seconds: float = 1.0,
        sink: ProgressSink | None = None,
    ) -> None:
        self.path = path
        self.total_steps = total_steps
        self.start_step = start_step
        self.every = every or report_interval(total_steps)
        self.stream = stream or sys.stdout
        self.min_seconds = min_seconds
        self.sink = sink
        self.started = time.monotonic()
        self.last = float("-inf")

    def due(self, step: int) -> bool:
        if step == self.total_steps:
            return True
        return step % self.every == 0 and time.monotonic() - self.last >= self.min_seconds

    def report(self, epoch: int, step: int, loss: float | None) -> dict[str, Any]:
        done_here = step - self.start_step
        self.last = time.monotonic()
        elapsed = self.last - self.started
        eta = (
            round(elapsed / done_here * (self.total_steps - step))
            if done_here > 0 and self.total_steps >= step
            else None
        )
        record = {
            "epoch": epoch,
            "step": step,
            "totalSteps": self.total_steps,
            "percent": min(100, (100 * step) // self.total_steps) if self.total_steps else 100,
            "loss": None if loss is None else round(loss, 6),
            "etaSeconds": eta,
            "resumedFromStep": self.start_step,
        }
        print(PREFIX + json.dumps(record), file=self.stream, flush=True)
        write_json_atomic(self.path, record)
        if self.sink is not None:
            self.sink(record)
        return record
