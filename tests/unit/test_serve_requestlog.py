"""The request log without a store: which requests are sampled, the bounded buffer and what it
drops, the objects' keys and lines, failed uploads, and the uploading thread."""

from __future__ import annotations

import gzip
import json
import threading
from array import array
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from kaon_kernels.serve.protocol import BatchResult, InferRequest, OutputRows, Signature, TensorSpec
from kaon_kernels.serve.requestlog import (
    BUFFER_FULL,
    UPLOAD_FAILED,
    Counters,
    LogPlace,
    RequestLog,
    Sampler,
)
from kaon_kernels.serve.requestlog_store import store_env

SIG = Signature(
    "digits",
    "1",
    TensorSpec("input", "FP32", (-1, 2)),
    (TensorSpec("scores", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))),
)
PLACE = LogPlace("digits", "canary", "digits-canary-7d9f-x2")
NOW = datetime(2025, 3, 4, 5, 6, 7, 890_000, UTC).timestamp()


class Store:
    """A stand-in for the S3 store: the objects put, and `fail` puts that raise first."""

    def __init__(self, fail: int = 0) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail
        self.tries = 0
        self.put_one = threading.Event()

    def put(self, key: str, body: bytes) -> None:
        self.tries += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("store unreachable")
        self.objects[key] = body
        self.put_one.set()

    def lines(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in gzip.decompress(self.objects[key]).splitlines()]


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.dropped: Counter[str] = Counter()
        self.said: list[str] = []

    def counters(self) -> Counters:
        return Counters(self._written, self._dropped)

    def _written(self, n: int) -> None:
        self.written += n

    def _dropped(self, reason: str, n: int) -> None:
        self.dropped[reason] += n


def a_log(store: Store, counts: Counts, rate: float = 1.0, **options: Any) -> RequestLog:
    options = {"retry_delays_s": (0.0, 0.0), "say": counts.said.append} | options
    return RequestLog(PLACE, SIG, store.put, rate, counts.counters(), clock=lambda: NOW, **options)


Answer = tuple[InferRequest, list[tuple[BatchResult, int, int]]]


def answered(
    request_id: str, samples: int = 2, outputs: Sequence[str] = ("scores", "label")
) -> Answer:
    """An infer request and its answer, split over two batches as the batcher may."""
    values = array("f", [float(v) for v in range(2 * samples)])
    request = InferRequest(request_id, values, samples, tuple((o, False) for o in outputs))
    scores = [[0.5 * i, 1.0, 2.0] for i in range(samples)]
    batch = BatchResult(
        {
            "scores": OutputRows(scores, b"", 12),
            "label": OutputRows(list(range(samples)), b"", 8),
        }
    )
    half = samples // 2
    return request, [(batch, 0, half), (batch, half, samples)]


def test_the_sampler_takes_the_first_then_every_nth_evenly() -> None:
    quarter = Sampler(0.25)
    assert [quarter() for _ in range(9)] == [True, False, False, False] * 2 + [True]
    percent = Sampler(0.01)
    assert sum(percent() for _ in range(10_000)) == 100
    third = Sampler(1 / 3)
    assert sum(third() for _ in range(3000)) == 1000
    every = Sampler(1.0)
    assert all(every() for _ in range(50))
    for rate in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            Sampler(rate)


def test_objects_are_keyed_by_model_revision_pod_utc_date_time_and_sequence() -> None:
    at = datetime(2025, 3, 4, 23, 59, 58, 7_000, UTC)
    assert PLACE.key(at, 12) == (
        "digits/canary/digits-canary-7d9f-x2/2025-03-04/20250304T235958.007Z-000012.jsonl.gz"
    )
    assert LogPlace("team/digits", "", "pod").key(at, 0).startswith("team_digits/none/pod/")


def test_a_line_holds_the_request_its_requested_outputs_and_when() -> None:
    store, counts = Store(), Counts()
    log = a_log(store, counts)
    log.append(*answered("q-1"), 0.0125)
    log.append(*answered("q-2", samples=1, outputs=("label",)), 0.5)
    log.flush()
    (key,) = store.objects
    assert (
        key == "digits/canary/digits-canary-7d9f-x2/2025-03-04/20250304T050607.890Z-000000.jsonl.gz"
    )
    first, second = store.lines(key)
    assert first == {
        "id": "q-1",
        "model": "digits",
        "revision": "canary",
        "time": "2025-03-04T05:06:07.877Z",  # arrival: the answer's time less the latency
        "latency_s": 0.0125,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [0, 1, 2, 3]}],
        "outputs": [
            {"name": "scores", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 0.5, 1, 2]},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]},
        ],
    }
    assert second["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}]
    assert (counts.written, counts.dropped) == (2, Counter())


def test_a_full_buffer_drops_and_counts_what_does_not_fit() -> None:
    store, counts = Store(), Counts()
    one = 256 + 2 * (2 * 4 + 3 * 8 + 8)  # a record's own fields and its two samples' tensors
    log = a_log(store, counts, capacity_bytes=3 * one)
    for i in range(5):
        log.append(*answered(f"q-{i}"), 0.001)
    assert counts.dropped == Counter({BUFFER_FULL: 2})
    log.flush()
    assert [r["id"] for key in store.objects for r in store.lines(key)] == ["q-0", "q-1", "q-2"]
    log.append(*answered("q-5"), 0.001)  # room again once uploaded
    log.flush()
    assert counts.written == 4 and counts.dropped == Counter({BUFFER_FULL: 2})


def test_an_upload_is_retried_then_its_records_are_dropped_and_counted() -> None:
    store, counts = Store(fail=2), Counts()
    log = a_log(store, counts)
    log.append(*answered("q-1"), 0.001)
    log.flush()
    assert (store.tries, counts.written, len(store.objects)) == (3, 1, 1)

    store.fail = 10
    log.append(*answered("q-2"), 0.001)
    log.append(*answered("q-3"), 0.001)
    log.flush()
    assert store.tries == 6 and counts.dropped == Counter({UPLOAD_FAILED: 2})
    assert "dropped 2 records" in counts.said[-1] and "ConnectionError" in counts.said[-1]
    assert len(store.objects) == 1


def test_a_flush_writes_flush_records_an_object_with_a_new_sequence_each() -> None:
    store, counts = Store(), Counts()
    log = a_log(store, counts, flush_records=2)
    for i in range(5):
        log.append(*answered(f"q-{i}"), 0.001)
    log.flush()
    keys = sorted(store.objects)
    assert [k.rsplit("-", 1)[1] for k in keys] == [
        "000000.jsonl.gz",
        "000001.jsonl.gz",
        "000002.jsonl.gz",
    ]
    assert [len(store.lines(k)) for k in keys] == [2, 2, 1]


def test_the_thread_uploads_once_flush_records_are_buffered_and_the_rest_on_close() -> None:
    store, counts = Store(), Counts()
    log = a_log(store, counts, flush_records=2, flush_seconds=3600)
    log.start()
    log.append(*answered("q-1"), 0.001)
    log.append(*answered("q-2"), 0.001)
    assert store.put_one.wait(30), "no upload once flush_records were buffered"
    log.append(*answered("q-3"), 0.001)
    assert log.close(30)
    ids = [r["id"] for key in sorted(store.objects) for r in store.lines(key)]
    assert ids == ["q-1", "q-2", "q-3"] and counts.written == 3


def test_a_log_never_started_uploads_on_close() -> None:
    store, counts = Store(), Counts()
    log = a_log(store, counts)
    log.append(*answered("q-1"), 0.001)
    assert log.close() and counts.written == 1


def test_the_logs_own_credentials_win_over_the_models_and_are_never_mixed() -> None:
    model = {"AWS_ACCESS_KEY_ID": "M", "AWS_SECRET_ACCESS_KEY": "m", "AWS_ENDPOINT_URL_S3": "e"}
    own = {"KAON_REQUEST_LOG_AWS_ACCESS_KEY_ID": "L", "KAON_REQUEST_LOG_AWS_SECRET_ACCESS_KEY": "l"}
    assert store_env(model | own | {"KAON_REQUEST_LOG_URI": "s3://b/p"}) == {
        "AWS_ACCESS_KEY_ID": "L",
        "AWS_SECRET_ACCESS_KEY": "l",
    }
    assert store_env(model | {"HOME": "/root"}) == model
