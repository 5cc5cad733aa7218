"""A work queue keyed by object: one reconcile per key at a time, repeats coalesced.

Keys added `urgent` are handled before the others: a gang admitted a moment ago launches ahead
of the reconciles that its neighbours' pod events queued (several per job in a burst).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        handler: Callable[[K], Awaitable[float | None]],
        workers: int = 16,
        on_error: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._workers = workers
        self._lanes: tuple[deque[K], deque[K]] = (deque(), deque())  # urgent, then the rest
        self._queued = asyncio.Semaphore(0)  # one per lane entry
        self._pending: set[K] = set()
        self._urgent: set[K] = set()  # pending in the urgent lane
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._dirty_urgent: set[K] = set()
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: K, urgent: bool = False) -> None:
        if key in self._active:
            self._dirty.add(key)
            if urgent:
                self._dirty_urgent.add(key)
        elif key not in self._pending:
            self._pending.add(key)
            self._enqueue(key, urgent)
        elif urgent and key not in self._urgent:
            self._enqueue(key, urgent)  # its entry in the other lane is skipped when reached

    def _enqueue(self, key: K, urgent: bool) -> None:
        if urgent:
            self._urgent.add(key)
        self._lanes[0 if urgent else 1].append(key)
        self._queued.release()

    async def _next(self) -> K:
        while True:
            await self._queued.acquire()
            urgent, rest = self._lanes
            if urgent:
                key = urgent.popleft()
                self._urgent.discard(key)
            else:
                key = rest.popleft()
                if key in self._urgent:
                    continue  # handled from the urgent lane, or waiting there
            if key in self._pending:
                return key

    def add_after(self, key: K, delay_s: float) -> None:
        asyncio.get_running_loop().call_later(max(delay_s, 0.0), self.add, key)

    async def _work(self) -> None:
        while True:
            key = await self._next()
            self._pending.discard(key)
            self._active.add(key)
            delay: float | None = None
            try:
                delay = await self._handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_error(exc)
                n = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(30.0, 0.5 * 2 ** min(n, 6))
                log.exception("reconcile %s failed (retry in %.1fs)", key, delay)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key, urgent=key in self._dirty_urgent)
                self._dirty_urgent.discard(key)
            elif delay is not None:
                self.add_after(key, delay)
