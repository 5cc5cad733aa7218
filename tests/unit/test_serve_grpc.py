"""The V2 gRPC endpoint on a real socket, beside HTTP on the same loop, asked by unmodified V2
clients: tritonclient.grpc in-process (KServe's InferenceGRPCClient, from its own venv, in
tests/e2e/test_v2_conformance.py)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from test_serve_app import SumEngine
from tritonclient.utils import InferenceServerException

from kaon_kernels.serve.app import App
from kaon_kernels.serve.auth import Authenticator, StaticTokens
from kaon_kernels.serve.batcher import Batcher
from kaon_kernels.serve.grpc_server import CertFetcher, GrpcServer
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.server import HttpServer

import tlskit

REPO = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO / ".venv" / "kserve" / "bin" / "python"
TOKEN = "grpc-client-token"
SAMPLES = [[1.0, 2.0], [3.0, 4.5], [-1.0, 0.25]]


@dataclass
class Running:
    app: App
    http_port: int
    grpc_port: int
    loop: asyncio.AbstractEventLoop

    def on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)


@contextmanager
def running(
    auth: Authenticator | None = None, tls: tlskit.Issued | None = None, ready: bool = True
) -> Iterator[Running]:
    """HTTP and gRPC servers of one App (SumEngine behind a real batcher) on a loop of their own
    thread, as `__main__.serve` runs them."""
    loop = asyncio.new_event_loop()
    started: list[Running] = []
    stop = asyncio.Event()

    async def main() -> None:
        app = App("digits", ServeMetrics("digits"), auth=auth)
        engine = SumEngine()
        batcher = Batcher(loop, engine.run, 8, 0.0, app.metrics.observe_batch)
        if ready:
            app.start_serving(engine, batcher)
        http = HttpServer(app, app.max_body)
        http_port = await http.start("127.0.0.1", 0)
        grpc_server = GrpcServer(app, app.max_body)
        fetcher = CertFetcher(tls.cert, tls.key, print) if tls is not None else None
        grpc_port = await grpc_server.start("127.0.0.1", 0, fetcher)
        started.append(Running(app, http_port, grpc_port, loop))
        await stop.wait()
        app.stop_serving("shutting down")
        await asyncio.gather(http.drain(5), grpc_server.drain(5))
        batcher.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if started:
                break
            threading.Event().wait(0.01)
        assert started, "the servers did not start"
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def triton_input(samples: list[list[float]]) -> triton.InferInput:
    x = np.asarray(samples, dtype=np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def http_infer(port: int, samples: list[list[float]], token: str | None = None) -> Any:
    body = {"inputs": [{"name": "input", "shape": [len(samples), 2], "datatype": "FP32",
                        "data": samples}]}  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/digits/infer", json.dumps(body).encode(), headers
    )
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.loads(answer.read())


def requests_counted(app: App, endpoint: str, code: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "kaon_serve_requests_total", {"model": "digits", "endpoint": endpoint, "code": code}
    )
    return value or 0.0


def test_tritonclient_grpc_checks_health_metadata_and_infers_as_http_answers() -> None:
    with running() as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits", as_json=True)
        assert meta["name"] == "digits" and meta["versions"] == ["1"]
        assert client.get_server_metadata(as_json=True)["name"] == "kaon"

        answer = client.infer("digits", [triton_input(SAMPLES)], request_id="grpc-1")
        assert answer.get_response().id == "grpc-1"
        http = {o["name"]: o["data"] for o in http_infer(server.http_port, SAMPLES)["outputs"]}
        total, label = answer.as_numpy("total"), answer.as_numpy("label")
        assert total is not None and label is not None
        assert (total.dtype, label.dtype, total.shape) == (np.float32, np.int64, (3,))
        assert label.tolist() == http["label"] == [0, 1, 2]
        assert total.tolist() == pytest.approx(http["total"]) == [3.0, 7.5, -0.75]
        assert requests_counted(server.app, "grpc_infer", "200") == 1
        assert requests_counted(server.app, "grpc_ready", "200") == 1

        with pytest.raises(InferenceServerException) as unknown:
            client.infer("cats", [triton_input(SAMPLES)])
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
        assert "this server serves 'digits'" in unknown.value.message()
        bad = triton.InferInput("input", [3, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as invalid:
            client.infer("digits", [bad])
        assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert (
            invalid.value.message()
            == "input 'input': shape [3, 3] does not match [-1, 2] (n samples)"
        )
        assert requests_counted(server.app, "grpc_infer", "400") == 1
        client.close()


def test_grpc_readiness_follows_the_app_while_loading() -> None:
    with running(ready=False) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready("digits")
        with pytest.raises(InferenceServerException) as loading:
            client.infer("digits", [triton_input(SAMPLES)])
        assert loading.value.status() == "StatusCode.UNAVAILABLE"
        assert "loading the model" in loading.value.message()
        client.close()


def test_grpc_and_http_requests_are_batched_together() -> None:
    with running() as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        batch_sizes: list[int] = []
        batcher = server.app.batcher
        assert batcher is not None
        run = batcher.run

        def slow_run(parts: Any) -> Any:
            batch_sizes.append(sum(p.stop - p.start for p in parts))
            threading.Event().wait(0.3)
            return run(parts)

        batcher.run = slow_run  # type: ignore[method-assign]
        answers: list[Any] = []
        callers = [
            threading.Thread(target=lambda: answers.append(http_infer(server.http_port, [[0, 1]])))
        ] + [
            threading.Thread(
                target=lambda: answers.append(client.infer("digits", [triton_input([[5, 5]])]))
            )
            for _ in range(3)
        ]
        for caller in callers:
            caller.start()
            threading.Event().wait(0.05)
        for caller in callers:
            caller.join(10)
        assert len(answers) == 4
        assert batch_sizes == [1, 3]  # the first alone, the others queued meanwhile: merged
        client.close()


def test_grpc_calls_need_the_token_but_health_does_not(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "client").write_text(TOKEN)
    auth = Authenticator(StaticTokens(tmp_path / "tokens", print))
    with running(auth=auth) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits", [triton_input(SAMPLES)])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as wrong:
            client.is_model_ready("digits", headers={"authorization": "Bearer nope"})
        assert wrong.value.status() == "StatusCode.UNAUTHENTICATED"
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert client.is_model_ready("digits", headers=headers)
        answer = client.infer("digits", [triton_input(SAMPLES)], headers=headers)
        assert answer.as_numpy("label").tolist() == [0, 1, 2]  # type: ignore[union-attr]
        assert requests_counted(server.app, "grpc_infer", "401") == 1
        client.close()


def test_grpc_over_tls_with_the_servers_certificate(tmp_path: Path) -> None:
    issued = tlskit.issue(tmp_path / "pki", ["localhost"], ("127.0.0.1",))
    with running(tls=issued) as server:
        client = triton.InferenceServerClient(
            f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(issued.ca)
        )
        assert client.is_server_ready()
        answer = client.infer("digits", [triton_input(SAMPLES)])
        assert answer.as_numpy("total").tolist() == [3.0, 7.5, -0.75]  # type: ignore[union-attr]
        client.close()
        plain = triton.InferenceServerClient(f"localhost:{server.grpc_port}")
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=2)
        plain.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
