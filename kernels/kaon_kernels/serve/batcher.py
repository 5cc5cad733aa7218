"""Dynamic batching: concurrent requests merged into one forward pass on one worker thread.

Policy. A batch holds at most `max_batch` samples. When a request arrives and the worker is
idle, the batch runs at once if the queue holds `max_batch` samples, otherwise when the oldest
queued request has waited `max_latency_s` (0: at once). While the worker computes, requests
queue; when it finishes, the next batch starts under the same rule, so under load batches fill
up without waiting. A request larger than `max_batch` is split across consecutive batches (each
at most `max_batch` samples) and answered when its last part is done.

All methods except the worker's run on the event loop's thread; the worker hands results back
with `call_soon_threadsafe`. The batcher does not know tensors: a request is an opaque payload
with a sample count, and `run` receives the slices of one batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")  # a request's payload
R = TypeVar("R")  # one batch's result


@dataclass(slots=True)
class Part(Generic[P]):
    """Samples `start:stop` of one request's payload, in a batch."""

    payload: P
    start: int
    stop: int


@dataclass(slots=True)
class Done(Generic[R]):
    """A request's answer: its rows of each batch it went into, in order, and the timings."""

    rows: list[tuple[R, int, int]]  # (batch result, first row, row after the last)
    queue_s: float  # arrival to the start of its first batch
    error: BaseException | None = None


Callback = Callable[[Done[Any]], None]


@dataclass(slots=True)
class _Item(Generic[P]):
    payload: P
    size: int
    done: Callback
    arrived: float
    taken: int = 0  # samples already put into batches
    finished: int = 0  # samples whose batch has returned
    started: float = -1.0
    rows: list[tuple[Any, int, int]] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(slots=True)
class _Batch:
    items: list[tuple[_Item[Any], int, int, int]]  # (item, start, stop, first row in batch)
    size: int
    result: Any = None
    error: BaseException | None = None
    compute_s: float = 0.0


BatchObserver = Callable[[int, float], None]  # (batch size, compute seconds)


class Batcher(Generic[P, R]):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[Sequence[Part[P]]], R],
        max_batch: int,
        max_latency_s: float,
        observe: BatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.loop = loop
        self.run = run
        self.max_batch = max_batch
        self.max_latency_s = max(0.0, max_latency_s)
        self.observe = observe
        self.clock = clock
        self._queue: deque[_Item[P]] = deque()
        self._queued = 0  # samples waiting, not yet in a batch
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._work: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._worker, name="kaon-serve-batch", daemon=True)
        self._thread.start()

    @property
    def queued_samples(self) -> int:
        return self._queued

    def submit(self, payload: P, size: int, done: Callback) -> None:
        """Queue `size` samples; `done` is called on the loop's thread with the answer."""
        if size < 1:
            raise ValueError("a request needs at least one sample")
        self._queue.append(_Item(payload, size, done, self.clock()))
        self._queued += size
        if not self._busy:
            self._schedule()

    def close(self) -> None:
        """Stop the worker after the batches already handed to it."""
        self._work.put(None)
        self._thread.join(timeout=5.0)

    def _schedule(self) -> None:
        if not self._queue:
            return
        wait = self._queue[0].arrived + self.max_latency_s - self.clock()
        if self._queued >= self.max_batch or wait <= 0:
            self._dispatch()
        elif self._timer is None:
            self._timer = self.loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._busy:
            self._schedule()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.clock()
        parts: list[tuple[_Item[Any], int, int, int]] = []
        size = 0
        while self._queue and size < self.max_batch:
            item = self._queue[0]
            take = min(item.size - item.taken, self.max_batch - size)
            if item.started < 0:
                item.started = now
            parts.append((item, item.taken, item.taken + take, size))
            item.taken += take
            size += take
            if item.taken == item.size:
                self._queue.popleft()
        self._queued -= size
        self._busy = True
        self._work.put(_Batch(parts, size))

    def _worker(self) -> None:
        while (batch := self._work.get()) is not None:
            started = time.perf_counter()
            try:
                batch.result = self.run([Part(i.payload, a, b) for i, a, b, _ in batch.items])
            except Exception as err:  # a model failure answers its requests, it never kills us
                batch.error = err
            batch.compute_s = time.perf_counter() - started
            try:
                self.loop.call_soon_threadsafe(self._finish, batch)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                return

    def _finish(self, batch: _Batch) -> None:
        self._busy = False
        if self.observe is not None:
            self.observe(batch.size, batch.compute_s)
        for item, start, stop, row in batch.items:
            item.rows.append((batch.result, row, row + stop - start))
            item.error = item.error or batch.error
            item.finished += stop - start
            if item.finished == item.size:
                try:
                    item.done(Done(item.rows, item.started - item.arrived, item.error))
                except Exception:  # one answer failing to send must not stall the others
                    traceback.print_exc()
        self._schedule()
