"""The V2 routes without sockets: requests handed to `App`, answers collected from its callback."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from kaon_kernels.serve.app import App
from kaon_kernels.serve.batcher import Batcher, Part
from kaon_kernels.serve.http11 import Request
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.protocol import (
    BatchResult,
    InferRequest,
    OutputRows,
    Signature,
    TensorSpec,
)
from kaon_kernels.serve.requestlog import Counters, LogPlace, RequestLog

SIG = Signature(
    "digits",
    "1",
    TensorSpec("input", "FP32", (-1, 2)),
    (TensorSpec("total", "FP32", (-1,)), TensorSpec("label", "INT64", (-1,))),
)
Answer = tuple[int, dict[str, str], bytes]


class SumEngine:
    """A stand-in model: `total` is the sum of a sample's values, `label` its row in the batch."""

    signature = SIG
    num_classes = 8  # labels are rows of a batch of at most 8
    monitor = None

    def metadata(self) -> dict[str, Any]:
        return {"name": SIG.model_name, "versions": ["1"], "platform": "test"}

    def run(self, parts: Sequence[Part[InferRequest]]) -> BatchResult:
        totals = [
            sum(p.payload.values[2 * i : 2 * i + 2]) for p in parts for i in range(p.start, p.stop)
        ]
        labels = list(range(len(totals)))
        return BatchResult(
            {
                "total": OutputRows(totals, struct.pack(f"<{len(totals)}f", *totals), 4),
                "label": OutputRows(labels, struct.pack(f"<{len(labels)}q", *labels), 8),
            }
        )


def request(method: str, path: str, body: bytes = b"", **headers: str) -> Request:
    return Request(method, path, {k.replace("_", "-"): v for k, v in headers.items()}, body, True)


async def ask(app: App, req: Request) -> Answer:
    answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    def reply(status: int, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...]) -> None:
        answered.set_result((status, {"content-type": ctype, **dict(extra)}, body))

    app.handle(req, reply)
    return await asyncio.wait_for(answered, 10)


def served() -> tuple[App, Batcher[InferRequest, BatchResult]]:
    app = App("digits", ServeMetrics("digits", "stable"))
    app.metrics.watch_quality(app.quality)
    engine = SumEngine()
    batcher = Batcher(asyncio.get_running_loop(), engine.run, 8, 0.0, app.metrics.observe_batch)
    app.start_serving(engine, batcher)
    return app, batcher


def infer_body(**extra: Any) -> bytes:
    doc = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    return json.dumps(doc | extra).encode()


def test_health_answers_before_and_after_the_model_is_ready() -> None:
    async def scenario() -> None:
        app = App("digits", ServeMetrics("digits"))
        assert await ask(app, request("GET", "/v2/health/live")) == (
            200,
            {"content-type": "application/json"},
            b'{"live":true}',
        )
        status, _, body = await ask(app, request("GET", "/v2/health/ready"))
        assert status == 503 and "loading the model" in json.loads(body)["error"]
        status, _, body = await ask(app, request("POST", "/v2/models/digits/infer", infer_body()))
        assert status == 503 and "not ready" in json.loads(body)["error"]
        app, batcher = served()
        assert (await ask(app, request("GET", "/v2/health/ready")))[2] == b'{"ready":true}'
        status, _, body = await ask(app, request("GET", "/v2/models/digits/versions/1/ready"))
        assert status == 200 and json.loads(body) == {"name": "digits", "ready": True}
        batcher.close()

    asyncio.run(scenario())


def test_routes_refuse_unknown_paths_methods_models_and_versions() -> None:
    async def scenario() -> None:
        app, batcher = served()
        cases = [
            (request("GET", "/v3"), 404, "no route"),
            (request("GET", "/v2/models/digits/explain"), 404, "no route"),
            (request("DELETE", "/v2/health/live"), 405, "use GET"),
            (request("GET", "/v2/models/digits/infer"), 405, "use POST"),
            (request("GET", "/v2/models/cats"), 404, "this server serves 'digits'"),
            (request("POST", "/v2/models/digits/versions/2/infer", b"{}"), 404, "no version '2'"),
        ]
        for req, status, words in cases:
            got, headers, body = await ask(app, req)
            assert (got, headers["content-type"]) == (status, "application/json")
            assert words in json.loads(body)["error"]
        assert (await ask(app, cases[2][0]))[1]["Allow"] == "GET"
        status, _, body = await ask(app, request("GET", "/v2"))
        assert status == 200 and "binary_tensor_data" in json.loads(body)["extensions"]
        status, _, body = await ask(app, request("GET", "/v2/models/digits%2F.."))
        assert status == 404
        batcher.close()

    asyncio.run(scenario())


def test_infer_answers_in_json_or_binary_and_counts_in_the_metrics() -> None:
    async def scenario() -> None:
        app, batcher = served()
        status, _, body = await ask(
            app, request("POST", "/v2/models/digits/infer", infer_body(id="q"))
        )
        answer = json.loads(body)
        assert status == 200 and answer["id"] == "q" and answer["model_name"] == "digits"
        assert answer["outputs"][0] == {
            "name": "total",
            "datatype": "FP32",
            "shape": [2],
            "data": [3.0, 7.0],
        }
        binary = infer_body(outputs=[{"name": "total", "parameters": {"binary_data": True}}])
        status, headers, body = await ask(app, request("POST", "/v2/models/digits/infer", binary))
        split = int(headers["Inference-Header-Content-Length"])
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        assert json.loads(body[:split])["outputs"][0]["parameters"] == {"binary_data_size": 8}
        assert struct.unpack("<2f", body[split:]) == (3.0, 7.0)
        status, _, body = await ask(
            app,
            request(
                "POST",
                "/v2/models/digits/infer",
                infer_body(),
                inference_header_content_length="x",
            ),
        )
        assert status == 400 and "Inference-Header-Content-Length" in json.loads(body)["error"]
        text = app.metrics.exposition().decode()
        assert 'kaon_serve_requests_total{code="200",endpoint="infer",model="digits"} 2.0' in text
        assert (
            'kaon_serve_request_errors_total{code="400",endpoint="infer",model="digits"} 1.0'
            in text
        )
        assert 'kaon_serve_batch_size_count{model="digits"} 2.0' in text
        assert app.inflight == 0 and app.idle.is_set()
        batcher.close()

    asyncio.run(scenario())


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    async def scenario() -> None:
        app, batcher = served()
        app.max_body = 4096
        path = "/v2/models/digits/infer"
        packed = gzip.compress(infer_body())
        status, _, body = await ask(app, request("POST", path, packed, content_encoding="gzip"))
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == [3.0, 7.0]
        deflated = zlib.compress(infer_body())
        status, _, _ = await ask(app, request("POST", path, deflated, content_encoding="deflate"))
        assert status == 200
        bomb = gzip.compress(b" " * 100_000)
        status, _, body = await ask(app, request("POST", path, bomb, content_encoding="gzip"))
        assert status == 413 and "4096-byte limit" in json.loads(body)["error"]
        status, _, body = await ask(
            app, request("POST", path, packed[:-9], content_encoding="gzip")
        )
        assert status == 400 and "truncated" in json.loads(body)["error"]
        status, _, body = await ask(app, request("POST", path, packed, content_encoding="br"))
        assert status == 415 and "'br'" in json.loads(body)["error"]
        batcher.close()

    asyncio.run(scenario())


def test_feedback_pairs_true_labels_with_earlier_answers_and_exports_live_quality() -> None:
    async def scenario() -> None:
        app, batcher = served()
        infer = "/v2/models/digits/infer"
        status, _, body = await ask(app, request("POST", infer, infer_body(id="q1")))
        assert status == 200  # predicted labels 0 and 1 (rows of the batch)

        def feedback(doc: Any) -> Request:
            return request("POST", "/v2/models/digits/feedback", json.dumps(doc).encode())

        status, _, body = await ask(app, feedback({"id": "q1", "labels": [0, 1, 1]}))
        assert status == 400 and "3 labels" in json.loads(body)["error"]
        status, _, body = await ask(app, feedback({"id": "q1", "labels": [0, "1"]}))
        assert status == 400 and "'labels'" in json.loads(body)["error"]
        status, _, body = await ask(app, feedback({"id": "q1", "labels": [0, 0]}))
        assert status == 200 and json.loads(body) == {"id": "q1", "paired": 2}
        status, _, body = await ask(app, feedback({"id": "q1", "labels": [0, 0]}))
        assert status == 404 and "q1" in json.loads(body)["error"]  # paired once only
        status, _, _ = await ask(app, request("GET", "/v2/models/digits/feedback"))
        assert status == 405

        text = app.metrics.exposition().decode()
        labels = 'model="digits",revision="stable"'
        assert f"kaon_model_live_accuracy{{{labels}}} 0.5" in text
        assert f"kaon_model_live_feedback_pairs{{{labels}}} 2.0" in text
        # classes 0 (true twice, predicted once right) and 1 (predicted once, wrongly)
        assert f"kaon_model_live_macro_recall{{{labels}}} 0.25" in text
        assert "kaon_model_drift_score" not in text  # this engine has no reference
        batcher.close()

    asyncio.run(scenario())


def test_every_other_answered_infer_request_goes_to_the_request_log() -> None:
    async def scenario() -> None:
        app, batcher = served()
        written: dict[str, bytes] = {}
        counters = Counters(app.metrics.request_log_written, app.metrics.request_log_dropped)
        place = LogPlace("digits", "stable", "digits-stable-1")
        app.request_log = RequestLog(place, SIG, written.__setitem__, 0.5, counters)
        infer = "/v2/models/digits/infer"
        for n in range(4):
            status, _, _ = await ask(app, request("POST", infer, infer_body(id=f"q{n}")))
            assert status == 200
        unknown_output = infer_body(id="bad", outputs=[{"name": "nope"}])
        assert (await ask(app, request("POST", infer, unknown_output)))[0] == 400
        app.request_log.close()
        (body,) = written.values()
        lines = [json.loads(line) for line in gzip.decompress(body).splitlines()]
        assert [(r["id"], r["outputs"][0]["data"]) for r in lines] == [
            ("q0", [3.0, 7.0]),
            ("q2", [3.0, 7.0]),
        ]
        text = app.metrics.exposition().decode()
        assert 'kaon_request_log_records_total{model="digits",revision="stable"} 2.0' in text
        batcher.close()

    asyncio.run(scenario())
