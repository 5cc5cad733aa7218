"""The V2 endpoints: routing, health, metadata, infer through the batcher, metrics; with
`auth`, a request's bearer token is judged before anything else.

Torch-free: the engine (model.py) arrives once the model is loaded and warm, so the server
answers `live` (and `ready` with 503) while torch is still importing.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote

import kaon_kernels
from kaon_kernels.serve.auth import EXEMPT, UNAVAILABLE, Authenticator, Verdict
from kaon_kernels.serve.batcher import Batcher, Done, Part
from kaon_kernels.serve.feedback import FeedbackError, FeedbackWindow, Quality
from kaon_kernels.serve.http11 import JSON, HttpError, Request, error_body
from kaon_kernels.serve.load import LoadWindow
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.protocol import (
    BatchResult,
    InferRequest,
    Signature,
    encode_infer,
    parse_infer,
)
from kaon_kernels.serve.requestlog import RequestLog

SERVER_NAME = "kaon"
EXTENSIONS = ("binary_tensor_data",)
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
OCTETS = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"

# (status, body, content type, extra headers); the connection writes it.
Reply = Callable[[int, bytes, str, tuple[tuple[str, str], ...]], None]


class Engine(Protocol):
    signature: Signature
    num_classes: int
    monitor: Any  # a DriftMonitor (torch) or None

    def metadata(self) -> dict[str, Any]: ...

    def run(self, parts: Sequence[Part[InferRequest]]) -> BatchResult: ...


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


_LIVE = _json({"live": True})
_READY = _json({"ready": True})


class App:
    def __init__(
        self,
        model_name: str,
        metrics: ServeMetrics,
        max_body: int = 1 << 24,
        auth: Authenticator | None = None,
    ) -> None:
        self.model_name = model_name
        self.metrics = metrics
        self.max_body = max_body
        self.auth = auth  # None: every request is answered
        self.engine: Engine | None = None
        self.batcher: Batcher[InferRequest, BatchResult] | None = None
        self.load: LoadWindow | None = None
        self.feedback: FeedbackWindow | None = None
        self.request_log: RequestLog | None = None  # samples answered infer requests for audit
        self.not_ready = "loading the model"  # why not ready; "" once ready
        self.inflight = 0
        self.authenticating = 0  # requests waiting for their token's review
        self.draining = False  # shutting down: answers close their connections
        self.idle = asyncio.Event()
        self.idle.set()
        metrics.inflight.set_function(lambda: self.inflight)  # read when scraped, not per request

    @property
    def ready(self) -> bool:
        return not self.not_ready

    def drift(self) -> Any:
        """The drift monitor's snapshot; None before the model or without a reference."""
        monitor = self.engine.monitor if self.engine is not None else None
        return monitor.snapshot() if monitor is not None else None

    def quality(self) -> tuple[Any, Quality | None]:
        """The drift snapshot and the live quality from feedback."""
        return self.drift(), self.feedback.quality() if self.feedback is not None else None

    def start_serving(self, engine: Engine, batcher: Batcher[InferRequest, BatchResult]) -> None:
        self.engine = engine
        self.batcher = batcher
        self.feedback = FeedbackWindow(engine.num_classes)
        self.not_ready = ""
        self.metrics.ready.set(1)

    def stop_serving(self, why: str) -> None:
        """Not ready from now on (e.g. draining); requests still get answers."""
        self.not_ready = why
        self.metrics.ready.set(0)

    def handle(self, req: Request, reply: Reply) -> None:
        """Answer `req` through `reply`, now or later: once a new token is reviewed, once an
        infer request's batch is done."""
        if self.auth is not None and req.path not in EXEMPT:
            verdict = self.auth.check(req.headers.get("authorization"))
            if not isinstance(verdict, Verdict):
                self._after_review(req, reply, verdict)
                return
            if not verdict.allowed:
                self._deny(req, verdict, reply)
                return
        self._answer(req, reply)

    def _after_review(self, req: Request, reply: Reply, review: asyncio.Future[Verdict]) -> None:
        self.authenticating += 1
        self.idle.clear()

        def resume(done: asyncio.Future[Verdict]) -> None:
            self.authenticating -= 1
            verdict = UNAVAILABLE if done.cancelled() else done.result()
            try:
                if verdict.allowed:
                    self._answer(req, reply)
                else:
                    self._deny(req, verdict, reply)
            finally:
                self._settle()

        review.add_done_callback(resume)

    def _deny(self, req: Request, verdict: Verdict, reply: Reply) -> None:
        self.metrics.answered(_label(req.path), verdict.status)
        self.metrics.auth_denied(verdict.status)
        reply(verdict.status, error_body(verdict.message), JSON, verdict.headers)

    def _settle(self) -> None:
        if not self.inflight and not self.authenticating:
            self.idle.set()

    def _answer(self, req: Request, reply: Reply) -> None:
        try:
            endpoint, answer = self._route(req)
            if answer is None:
                self._infer(req, reply)
                return
            status, body, ctype = answer
        except HttpError as err:
            status, body, ctype = err.status, error_body(err.message), JSON
            self.metrics.answered(_label(req.path), status)
            reply(status, body, ctype, err.headers)
            return
        self.metrics.answered(endpoint, status)
        reply(status, body, ctype, ())

    def _route(self, req: Request) -> tuple[str, tuple[int, bytes, str] | None]:
        """(endpoint label, the answer) for everything but infer, which answers later (None)."""
        parts = req.path.split("/")
        if parts[0] != "" or len(parts) < 2:
            raise HttpError(404, f"no route {req.path[:200]!r}")
        parts = parts[1:]
        if parts == ["metrics"]:
            _allow(req, "GET")
            return "metrics", (200, self.metrics.exposition(), PROMETHEUS)
        if parts[0] != "v2":
            raise HttpError(404, f"no route {req.path[:200]!r}")
        rest = parts[1:]
        if rest in ([], [""]):
            _allow(req, "GET")
            return "server_metadata", (200, self._server_metadata(), JSON)
        if rest == ["health", "live"]:
            _allow(req, "GET")
            return "live", (200, _LIVE, JSON)
        if rest == ["health", "ready"]:
            _allow(req, "GET")
            return "ready", self._ready_answer()
        if rest[0] == "models" and len(rest) >= 2:
            return self._model_route(req, rest[1:])
        raise HttpError(404, f"no route {req.path[:200]!r}")

    def _model_route(
        self, req: Request, rest: list[str]
    ) -> tuple[str, tuple[int, bytes, str] | None]:
        name, rest = unquote(rest[0]), rest[1:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise HttpError(404, f"no route {req.path[:200]!r}")
            version, rest = unquote(rest[1]), rest[2:]
        if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer", "feedback")):
            raise HttpError(404, f"no route {req.path[:200]!r}")
        action = rest[0] if rest else "metadata"
        endpoint = ENDPOINTS[action]
        _allow(req, "POST" if action in ("infer", "feedback") else "GET")
        self._check_model(name, version)
        if action == "infer":
            return endpoint, None
        if action == "feedback":
            return endpoint, self._feedback(req)
        if action == "ready":
            return endpoint, self._ready_answer(model=True)
        if self.engine is None:
            raise HttpError(503, f"model '{self.model_name}' is not ready: {self.not_ready}")
        return endpoint, (200, _json(self.engine.metadata()), JSON)

    def _feedback(self, req: Request) -> tuple[int, bytes, str]:
        if self.feedback is None:
            raise HttpError(503, f"model '{self.model_name}' is not ready: {self.not_ready}")
        try:
            doc = json.loads(_decoded(req, self.max_body))
        except ValueError:
            raise HttpError(400, "feedback body is not JSON") from None
        if not isinstance(doc, dict):
            raise HttpError(400, 'feedback body must be {"id": ..., "labels": [...]}')
        try:
            paired = self.feedback.feedback(doc.get("id"), doc.get("labels"))
        except FeedbackError as err:
            raise HttpError(err.status, str(err)) from None
        return 200, _json({"id": doc["id"], "paired": paired}), JSON

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.model_name:
            raise HttpError(
                404, f"unknown model {name[:100]!r}: this server serves '{self.model_name}'"
            )
        if version is not None and version != "1":
            raise HttpError(
                404, f"model '{self.model_name}' has no version {version[:40]!r} (versions: 1)"
            )

    def _ready_answer(self, model: bool = False) -> tuple[int, bytes, str]:
        if self.not_ready:
            what = f"model '{self.model_name}'" if model else "server"
            return 503, error_body(f"{what} is not ready: {self.not_ready}"), JSON
        if model:
            return 200, _json({"name": self.model_name, "ready": True}), JSON
        return 200, _READY, JSON

    def _server_metadata(self) -> bytes:
        return _json(
            {
                "name": SERVER_NAME,
                "version": kaon_kernels.__version__,
                "extensions": list(EXTENSIONS),
            }
        )

    def _infer(self, req: Request, reply: Reply) -> None:
        arrived = time.perf_counter()
        engine = self.engine
        if engine is None or self.batcher is None:
            raise HttpError(503, f"model '{self.model_name}' is not ready: {self.not_ready}")
        header_length = _header_length(req.headers)
        body = _decoded(req, self.max_body)
        request = parse_infer(body, header_length, engine.signature)

        def answer(done: Done[BatchResult]) -> tuple[int, Callable[[], None]]:
            status, body, ctype, headers = _infer_answer(request, done, engine.signature)
            return status, lambda: reply(status, body, ctype, headers)

        self.submit(request, arrived, "infer", answer)

    def submit(
        self,
        request: InferRequest,
        arrived: float,
        endpoint: str,
        answer: Callable[[Done[BatchResult]], tuple[int, Callable[[], None]]],
    ) -> None:
        """Batch a parsed infer request (HTTP's or gRPC's); once done, `answer` encodes it and
        gives its status code and what sends it, sent after the accounting."""
        batcher = self.batcher
        assert batcher is not None  # callers answer 503 before the model is served
        self.inflight += 1
        self.idle.clear()

        def finish(done: Done[BatchResult]) -> None:
            self.inflight -= 1
            self._settle()
            status, send = answer(done)
            if done.error is None and self.feedback is not None:
                self.feedback.predicted(request.id, _labels(done))
            latency = time.perf_counter() - arrived
            log = self.request_log
            if log is not None and status == 200 and log.sampled():
                log.append(request, done.rows, latency)
            self.metrics.latency.observe(latency)
            self.metrics.queue.observe(done.queue_s)
            self.metrics.answered(endpoint, status)
            if self.load is not None:
                self.load.observe(latency, done.queue_s)
            send()

        batcher.submit(request, request.samples, finish)


ENDPOINTS = {
    "ready": "model_ready",
    "infer": "infer",
    "metadata": "model_metadata",
    "feedback": "feedback",
}


def _labels(done: Done[BatchResult]) -> tuple[int, ...]:
    """The request's predicted classes (the `label` output), over every batch it went into."""
    return tuple(
        int(v)
        for result, start, stop in done.rows
        for v in result.outputs["label"].rows[start:stop]
    )


def _infer_answer(
    request: InferRequest, done: Done[BatchResult], sig: Signature
) -> tuple[int, bytes, str, tuple[tuple[str, str], ...]]:
    if done.error is not None:
        message = f"inference failed: {type(done.error).__name__}: {done.error}"
        return 500, error_body(message), JSON, ()
    try:
        body, json_length = encode_infer(request, done.rows, sig)
    except HttpError as err:
        return err.status, error_body(err.message), JSON, ()
    if json_length is None:
        return 200, body, JSON, ()
    return 200, body, OCTETS, (("Inference-Header-Content-Length", str(json_length)),)


def _decoded(req: Request, max_body: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), within the size limit."""
    coding = req.headers.get("content-encoding", "identity").strip().lower()
    if coding == "identity":
        return req.body
    if coding not in ("gzip", "deflate"):
        raise HttpError(415, f"Content-Encoding {coding[:40]!r} not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if coding == "gzip" else 15)
    try:
        body = inflater.decompress(req.body, max_body)
    except zlib.error as err:
        raise HttpError(400, f"body is not valid {coding}: {err}") from None
    if inflater.unconsumed_tail:
        raise HttpError(413, f"decompressed body over the {max_body}-byte limit")
    if not inflater.eof:
        raise HttpError(400, f"body is truncated {coding}")
    return body


def _header_length(headers: dict[str, str]) -> int | None:
    field = headers.get(HEADER_LENGTH)
    if field is None:
        return None
    if not field.strip().isdigit():
        raise HttpError(400, f"bad Inference-Header-Content-Length {field[:40]!r}")
    return int(field)


_LABELS = {
    "/metrics": "metrics",
    "/v2": "server_metadata",
    "/v2/health/live": "live",
    "/v2/health/ready": "ready",
}


def _label(path: str) -> str:
    """The metrics' endpoint label of a refused request (a bounded set, whatever the path)."""
    if path.startswith("/v2/models/"):
        last = path.rsplit("/", 1)[-1]
        return {"infer": "infer", "ready": "model_ready", "feedback": "feedback"}.get(
            last, "model_metadata"
        )
    return _LABELS.get(path, "unknown")


def _allow(req: Request, method: str) -> None:
    if req.method != method:
        raise HttpError(
            405, f"{req.method} not allowed on {req.path[:200]}; use {method}", (("Allow", method),)
        )
