"""A sampled share of the answered infer requests, written to an S3 store for audit (off unless
`--request-log-uri` is given).

`App` asks `sampled()` for every infer request answered with 200: an integer counter, so a rate
of 0.25 takes the 1st, 5th, 9th... request. A sampled request is appended to a bounded buffer
(its parsed inputs and its rows of each output, by reference: nothing is converted or encoded on
the event loop). A background thread takes the buffer every `flush_seconds`, or once it holds
`flush_records` requests, encodes them as JSON Lines, gzipped, and uploads one object:

    s3://BUCKET/PREFIX/<model>/<revision>/<pod>/<UTC date>/<UTC time>-<seq>.jsonl.gz

A line: `{"id", "model", "revision", "time" (arrival, UTC), "latency_s", "inputs",
"outputs"}`, tensors as in a V2 JSON body (the input as the model got it: FP32). A full buffer
drops the request; an upload that fails `UPLOAD_ATTEMPTS` times drops its records. Both are
counted (`kaon_request_log_dropped_total{reason}`); nothing here stops the server. `close`
uploads what is left (on shutdown, after the requests in flight have their answers).
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kaon_kernels.serve.protocol import BatchResult, InferRequest, Signature

Put = Callable[[str, bytes], None]  # (key under the URI's prefix, body): upload one object

RATE_SCALE = 1_000_000  # rates are honoured to a millionth
FLUSH_SECONDS = 60.0
FLUSH_RECORDS = 1000
CAPACITY_BYTES = 64 << 20  # what the buffered requests' tensors hold, at most
UPLOAD_ATTEMPTS = 3
RETRY_DELAYS_S = (1.0, 4.0)  # before the 2nd and the 3rd attempt
BUFFER_FULL = "buffer_full"
UPLOAD_FAILED = "upload_failed"
_RECORD_BYTES = 256  # a record's own fields, beside its tensors


class Sampler:
    """Says yes to `rate` of its calls, evenly spread, starting with the first."""

    __slots__ = ("_credit", "_step")

    def __init__(self, rate: float) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sample rate {rate} is outside (0, 1]")
        self._step = max(1, round(rate * RATE_SCALE))
        self._credit = RATE_SCALE - self._step

    def __call__(self) -> bool:
        self._credit += self._step
        if self._credit < RATE_SCALE:
            return False
        self._credit -= RATE_SCALE
        return True


@dataclass(frozen=True)
class LogPlace:
    """Where a server's objects go, under the URI's prefix."""

    model: str
    revision: str
    pod: str

    def key(self, at: datetime, seq: int) -> str:
        folder = "/".join(_segment(s) for s in (self.model, self.revision, self.pod))
        stamp = at.strftime("%Y%m%dT%H%M%S.") + f"{at.microsecond // 1000:03d}Z"
        return f"{folder}/{at:%Y-%m-%d}/{stamp}-{seq:06d}.jsonl.gz"


def _segment(name: str) -> str:
    return name.replace("/", "_") or "none"


@dataclass(slots=True)
class Sampled:
    request: InferRequest
    outputs: list[tuple[str, list[Any]]]  # each requested output's rows (a value or a list each)
    arrived: float  # epoch seconds
    latency_s: float
    size: int  # bytes its tensors hold, counted against the buffer's capacity


@dataclass(frozen=True)
class Counters:
    """What the log reports: records written, and records dropped with the reason."""

    written: Callable[[int], None]
    dropped: Callable[[str, int], None]


class RequestLog:
    def __init__(
        self,
        place: LogPlace,
        signature: Signature,
        put: Put,
        rate: float,
        counters: Counters,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        flush_records: int = FLUSH_RECORDS,
        capacity_bytes: int = CAPACITY_BYTES,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.place = place
        self.signature = signature
        self.put = put
        self.sampled = Sampler(rate)
        self.counters = counters
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.capacity_bytes = capacity_bytes
        self.retry_delays_s = tuple(retry_delays_s)[: UPLOAD_ATTEMPTS - 1]
        self.say = say or _stderr
        self.clock = clock
        self._buffer: list[Sampled] = []
        self._buffered_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._seq = 0
        self._thread: threading.Thread | None = None
        out_sizes = {o.name: math.prod(o.shape[1:]) * 8 for o in signature.outputs}
        self._sample_bytes = signature.sample_size * 4, out_sizes

    # --- the event loop's side -------------------------------------------------------------

    def append(
        self, request: InferRequest, rows: list[tuple[BatchResult, int, int]], latency_s: float
    ) -> None:
        """Keep a sampled request's answer for the next upload, or drop it when full."""
        per_input, per_output = self._sample_bytes
        size = _RECORD_BYTES + request.samples * (
            per_input + sum(per_output.get(name, 0) for name, _ in request.outputs)
        )
        # Its own rows only: the batches' results hold every request of the batch.
        outputs = [
            (name, [row for result, a, b in rows for row in result.outputs[name].rows[a:b]])
            for name, _ in request.outputs
        ]
        sampled = Sampled(request, outputs, self.clock() - latency_s, latency_s, size)
        with self._lock:
            full = self._buffered_bytes + size > self.capacity_bytes
            if not full:
                self._buffer.append(sampled)
                self._buffered_bytes += size
            due = len(self._buffer) >= self.flush_records
        if full:
            self.counters.dropped(BUFFER_FULL, 1)
        elif due and not self._wake.is_set():
            self._wake.set()

    # --- the uploading thread --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kaon-request-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float | None = None) -> bool:
        """Upload what is buffered and stop; False if that took longer than `timeout_s`."""
        self._stopping = True
        self._wake.set()
        if self._thread is None:
            self.flush()
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stopping
            try:
                self.flush()
            except Exception as err:  # a bug here must not end the thread, nor the server
                self.say(f"request log: flush failed: {type(err).__name__}: {err}")
            if stopping:
                return

    def flush(self) -> None:
        """Upload everything buffered, `flush_records` records an object."""
        while True:
            with self._lock:
                taken = self._buffer[: self.flush_records]
                del self._buffer[: self.flush_records]
                self._buffered_bytes -= sum(s.size for s in taken)
            if not taken:
                return
            self._upload(taken)

    def _upload(self, taken: list[Sampled]) -> None:
        lines = [self.encode(s) for s in taken]
        body = gzip.compress(b"".join(lines), compresslevel=6)
        key = self.place.key(datetime.fromtimestamp(self.clock(), UTC), self._seq)
        self._seq += 1
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                self.put(key, body)
            except Exception as err:
                if attempt < len(self.retry_delays_s):
                    time.sleep(self.retry_delays_s[attempt])
                    continue
                self.say(
                    f"request log: dropped {len(taken)} records, {key} not written after "
                    f"{attempt + 1} attempts: {type(err).__name__}: {err}"
                )
                self.counters.dropped(UPLOAD_FAILED, len(taken))
                return
            self.counters.written(len(taken))
            return

    def encode(self, s: Sampled) -> bytes:
        """One JSON line: the request, its answer's outputs and when."""
        sig, n = self.signature, s.request.samples
        inputs = [
            {
                "name": sig.input.name,
                "datatype": "FP32",
                "shape": [n, *sig.sample_shape],
                "data": s.request.values.tolist(),
            }
        ]
        outputs = []
        for name, rows in s.outputs:
            spec = sig.output(name)
            assert spec is not None  # checked when the request was parsed
            data = [v for row in rows for v in row] if rows and isinstance(rows[0], list) else rows
            shape = [n, *spec.shape[1:]]
            outputs.append({"name": name, "datatype": spec.datatype, "shape": shape, "data": data})
        record = {
            "id": s.request.id,
            "model": self.place.model,
            "revision": self.place.revision,
            "time": _rfc3339(s.arrived),
            "latency_s": round(s.latency_s, 6),
            "inputs": inputs,
            "outputs": outputs,
        }
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _rfc3339(epoch_s: float) -> str:
    at = datetime.fromtimestamp(epoch_s, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _stderr(message: str) -> None:
    print(f"kaon-serve: {message}", file=sys.stderr, flush=True)
