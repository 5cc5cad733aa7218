"""The V2 gRPC endpoint (`inference.GRPCInferenceService`), beside HTTP on the same event loop.

It answers through the same `App`: the same model and batcher (a ModelInfer is batched with HTTP
requests), readiness, request counters (endpoints `grpc_*`, HTTP status codes), tokens (the
`authorization` metadata; ServerLive and ServerReady need none, like /v2/health/*) and, with
TLS, the same certificate files, reloaded for new handshakes when they change.

A ModelInfer is checked by `protocol.parse_infer`, so a bad tensor gets the message HTTP gives;
its outputs are always answered in `raw_output_contents`, which every V2 client decodes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

import kaon_kernels
from kaon_kernels.serve import grpc_predict_v2_pb2 as pb
from kaon_kernels.serve.app import EXTENSIONS, SERVER_NAME, App
from kaon_kernels.serve.auth import UNAVAILABLE, Verdict
from kaon_kernels.serve.batcher import Done
from kaon_kernels.serve.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from kaon_kernels.serve.http11 import HttpError
from kaon_kernels.serve.protocol import BatchResult, InferRequest, parse_infer
from kaon_kernels.serve.tls import RELOAD_INTERVAL_S, PairWatch

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}

# V2 datatype -> the InferTensorContents field that carries it (FP16 has none: raw only).
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}


class CallError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def infer_document(req: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The request as the binary tensor extension's body and JSON header length, which
    `parse_infer` checks as it checks HTTP's."""
    raw = b""
    inputs: list[dict[str, Any]] = []
    if req.raw_input_contents and len(req.raw_input_contents) != len(req.inputs):
        raise CallError(
            400,
            f"{len(req.raw_input_contents)} raw_input_contents for {len(req.inputs)} input(s)",
        )
    for i, tensor in enumerate(req.inputs):
        doc: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if req.raw_input_contents:
            if tensor.HasField("contents"):
                raise CallError(400, f"input '{tensor.name}': both contents and raw_input_contents")
            raw += req.raw_input_contents[i]
            doc["parameters"] = {"binary_data_size": len(req.raw_input_contents[i])}
        else:
            field = CONTENTS.get(tensor.datatype)
            doc["data"] = list(getattr(tensor.contents, field)) if field else []
        inputs.append(doc)
    header: dict[str, Any] = {"inputs": inputs}
    if req.id:
        header["id"] = req.id
    if req.outputs:
        header["outputs"] = [{"name": o.name} for o in req.outputs]
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


def infer_response(
    request: InferRequest, done: Done[BatchResult], app: App
) -> pb.ModelInferResponse:
    if done.error is not None:
        raise CallError(500, f"inference failed: {type(done.error).__name__}: {done.error}")
    assert app.engine is not None
    sig = app.engine.signature
    parts = done.rows
    for result, start, stop in parts:
        if result.bad_rows and any(start <= r < stop for r in result.bad_rows):
            raise CallError(400, f"input '{sig.input.name}' holds NaN or infinite FP32 values")
    answer = pb.ModelInferResponse(
        model_name=sig.model_name, model_version=sig.version, id=request.id
    )
    for name, _ in request.outputs:
        spec = sig.output(name)
        assert spec is not None  # checked by parse_infer
        tensor = answer.outputs.add(name=name, datatype=spec.datatype)
        tensor.shape.extend([request.samples, *spec.shape[1:]])
        answer.raw_output_contents.append(
            b"".join(
                r.outputs[name].raw[a * r.outputs[name].row_bytes : b * r.outputs[name].row_bytes]
                for r, a, b in parts
            )
        )
    return answer


class Servicer(GRPCInferenceServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        self.app.metrics.answered("grpc_live", 200)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        self.app.metrics.answered("grpc_ready", 200)
        return pb.ServerReadyResponse(ready=self.app.ready)

    async def ModelReady(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            self._check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.app.ready)

        return await self._call("grpc_model_ready", context, answer)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            return pb.ServerMetadataResponse(
                name=SERVER_NAME, version=kaon_kernels.__version__, extensions=list(EXTENSIONS)
            )

        return await self._call("grpc_server_metadata", context, answer)

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        async def answer() -> Any:
            self._check_model(request.name, request.version)
            engine = self._engine()
            meta = engine.metadata()
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta.get("versions", []),
                platform=meta.get("platform", ""),
                inputs=[tensor(**t) for t in meta.get("inputs", [])],
                outputs=[tensor(**t) for t in meta.get("outputs", [])],
            )

        return await self._call("grpc_model_metadata", context, answer)

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:  # noqa: N802
        arrived = time.perf_counter()
        app = self.app
        if not await self._allowed("grpc_infer", context):
            return None
        try:
            self._check_model(request.model_name, request.model_version)
            engine = self._engine()
            body, header_length = infer_document(request)
            parsed = parse_infer(body, header_length, engine.signature)
        except (CallError, HttpError) as err:
            return await self._refuse("grpc_infer", context, _refused(err))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answer(done: Done[BatchResult]) -> tuple[int, Callable[[], None]]:
            try:
                reply: Any = infer_response(parsed, done, app)
            except CallError as err:
                reply = err
            status = reply.status if isinstance(reply, CallError) else 200
            return status, lambda: None if future.done() else future.set_result(reply)

        app.submit(parsed, arrived, "grpc_infer", answer)
        result = await future
        if isinstance(result, CallError):
            await context.abort(CODES.get(result.status, grpc.StatusCode.UNKNOWN), result.message)
        return result

    async def _call(self, endpoint: str, context: aio.ServicerContext, answer: Any) -> Any:
        if not await self._allowed(endpoint, context):
            return None
        try:
            reply = await answer()
        except (CallError, HttpError) as err:
            return await self._refuse(endpoint, context, _refused(err))
        self.app.metrics.answered(endpoint, 200)
        return reply

    async def _allowed(self, endpoint: str, context: aio.ServicerContext) -> bool:
        auth = self.app.auth
        if auth is None:
            return True
        header = next(
            (v for k, v in context.invocation_metadata() or () if k == "authorization"), None
        )
        checked = auth.check(header if isinstance(header, str) else None)
        if isinstance(checked, Verdict):
            verdict = checked
        else:
            try:
                verdict = await checked
            except Exception:  # a cancelled review: the server is closing
                verdict = UNAVAILABLE
        if verdict.allowed:
            return True
        self.app.metrics.auth_denied(verdict.status)
        await self._refuse(endpoint, context, CallError(verdict.status, verdict.message))
        return False

    async def _refuse(self, endpoint: str, context: aio.ServicerContext, err: CallError) -> None:
        self.app.metrics.answered(endpoint, err.status)
        await context.abort(CODES.get(err.status, grpc.StatusCode.UNKNOWN), err.message)

    def _check_model(self, name: str, version: str) -> None:
        app = self.app
        if name != app.model_name:
            raise CallError(
                404, f"unknown model {name[:100]!r}: this server serves '{app.model_name}'"
            )
        if version not in ("", "1"):
            raise CallError(
                404, f"model '{app.model_name}' has no version {version[:40]!r} (versions: 1)"
            )

    def _engine(self) -> Any:
        app = self.app
        if app.engine is None or app.batcher is None:
            raise CallError(503, f"model '{app.model_name}' is not ready: {app.not_ready}")
        return app.engine


def _refused(err: CallError | HttpError) -> CallError:
    return err if isinstance(err, CallError) else CallError(err.status, err.message)


class CertFetcher:
    """gRPC's certificate configuration fetcher: asked before new handshakes, it hands a new
    configuration once the files changed (looked at every `interval_s` at most) and the pair
    loads; a pair that does not load keeps the current one, reported once."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        say: Callable[[str], None],
        interval_s: float = RELOAD_INTERVAL_S,
    ) -> None:
        self.interval_s = interval_s
        self.watch = PairWatch(cert_file, key_file, say, "gRPC TLS")
        self.initial = grpc.ssl_server_certificate_configuration(
            [(key_file.read_bytes(), cert_file.read_bytes())]
        )
        self._next_look = time.monotonic() + interval_s

    def __call__(self) -> Any:
        now = time.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + self.interval_s
        pair = self.watch.renewed(lambda cert, key: None)  # grpc takes the bytes themselves
        if pair is None:
            return None
        cert, key = pair
        return grpc.ssl_server_certificate_configuration([(key, cert)])


class GrpcServer:
    """The gRPC server of `app`: `start` listens, `drain` stops accepting and waits for the
    calls in flight."""

    def __init__(self, app: App, max_message_bytes: int) -> None:
        self.app = app
        self.server = aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        add = add_GRPCInferenceServiceServicer_to_server  # generated, untyped
        add(Servicer(app), self.server)  # type: ignore[no-untyped-call]

    async def start(self, host: str, port: int, tls: CertFetcher | None = None) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is None:
            bound = self.server.add_insecure_port(address)
        else:
            credentials = grpc.dynamic_ssl_server_credentials(tls.initial, tls)
            bound = self.server.add_secure_port(address, credentials)
        await self.server.start()
        return int(bound)

    async def drain(self, timeout_s: float) -> None:
        await self.server.stop(timeout_s)
