"""Dynamic batching on a real event loop and worker thread, with a stand-in model."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from kaon_kernels.serve.batcher import Batcher, Done, Part

Rows = list[str]


class Model:
    """Answers each sample with "payload:index"; can hold the worker until released."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def run(self, parts: Sequence[Part[str]]) -> Rows:
        self.gate.wait(10)
        self.batches.append([(p.payload, p.start, p.stop) for p in parts])
        if self.fail:
            raise RuntimeError("model broke")
        return [f"{p.payload}:{i}" for p in parts for i in range(p.start, p.stop)]


def on_loop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A plain test that runs `scenario` on a fresh event loop."""

    @functools.wraps(scenario)
    def test() -> None:
        asyncio.run(scenario())

    return test


def answer_rows(done: Done[Rows]) -> list[str]:
    return [row for result, a, b in done.rows for row in result[a:b]]


async def submit_all(batcher: Batcher[str, Rows], sizes: dict[str, int]) -> dict[str, Done[Rows]]:
    loop = asyncio.get_running_loop()
    futures: dict[str, asyncio.Future[Done[Rows]]] = {}
    for name, size in sizes.items():
        futures[name] = loop.create_future()
        batcher.submit(name, size, futures[name].set_result)
    return {name: await asyncio.wait_for(f, 10) for name, f in futures.items()}


def batched(model: Model, max_batch: int, latency_s: float = 0.0) -> Batcher[str, Rows]:
    return Batcher(asyncio.get_running_loop(), model.run, max_batch, latency_s)


@on_loop
async def test_requests_queued_while_the_worker_computes_share_one_batch() -> None:
    model = Model()
    batcher = batched(model, max_batch=8)
    model.gate.clear()
    loop = asyncio.get_running_loop()
    first: asyncio.Future[Done[Rows]] = loop.create_future()
    batcher.submit("a", 1, first.set_result)  # runs at once, held at the gate
    rest = asyncio.ensure_future(submit_all(batcher, {"b": 2, "c": 3, "d": 1}))
    await asyncio.sleep(0.05)
    model.gate.set()
    answers = {"a": await first, **(await rest)}
    batcher.close()
    assert model.batches == [[("a", 0, 1)], [("b", 0, 2), ("c", 0, 3), ("d", 0, 1)]]
    assert answer_rows(answers["c"]) == ["c:0", "c:1", "c:2"]
    assert all(done.error is None and done.queue_s >= 0 for done in answers.values())


@on_loop
async def test_batches_never_exceed_the_maximum_and_a_large_request_is_split() -> None:
    model = Model()
    batcher = batched(model, max_batch=4)
    answers = await submit_all(batcher, {"a": 3, "big": 7, "c": 1})
    batcher.close()
    sizes = [sum(stop - start for _, start, stop in batch) for batch in model.batches]
    assert sizes == [3, 4, 4]
    assert model.batches[2] == [("big", 4, 7), ("c", 0, 1)]
    assert answer_rows(answers["big"]) == [f"big:{i}" for i in range(7)]
    assert [len(done.rows) for done in answers.values()] == [1, 2, 1]


@on_loop
async def test_a_full_batch_runs_without_waiting_for_the_latency_bound() -> None:
    model = Model()
    batcher = batched(model, max_batch=4, latency_s=3600.0)
    answers = await submit_all(batcher, {"a": 1, "b": 3})
    batcher.close()
    assert model.batches == [[("a", 0, 1), ("b", 0, 3)]]
    assert answer_rows(answers["a"]) == ["a:0"]


@on_loop
async def test_a_lone_request_runs_once_the_latency_bound_passes() -> None:
    model = Model()
    batcher = batched(model, max_batch=32, latency_s=0.02)
    answers = await submit_all(batcher, {"a": 1, "b": 1})
    batcher.close()
    assert model.batches == [[("a", 0, 1), ("b", 0, 1)]]
    assert answer_rows(answers["b"]) == ["b:0"]


@on_loop
async def test_a_failing_forward_answers_its_requests_with_the_error_and_serving_goes_on() -> None:
    model = Model()
    batcher = batched(model, max_batch=4)
    model.fail = True
    failed = await submit_all(batcher, {"a": 1})
    model.fail = False
    ok = await submit_all(batcher, {"b": 1})
    batcher.close()
    assert isinstance(failed["a"].error, RuntimeError)
    assert ok["b"].error is None and answer_rows(ok["b"]) == ["b:0"]


@on_loop
async def test_empty_requests_are_refused() -> None:
    batcher = batched(Model(), max_batch=4)
    with pytest.raises(ValueError, match="at least one sample"):
        batcher.submit("a", 0, lambda done: None)
    batcher.close()
