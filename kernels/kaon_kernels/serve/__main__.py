"""`python -m kaon_kernels.serve --model-dir DIR`: the V2 inference server (see `settings`).

With `--model-uri s3://...` the artifact is first downloaded into DIR (`fetch`). Then it listens
at once (live; ready answers 503), imports torch and loads the artifact on a thread,
warms up at the largest batch, then is ready (and, with `--request-log-uri`, starts the request
log's thread). SIGTERM or SIGINT: not ready, stop accepting, answer the requests in flight,
upload what the request log holds, exit 0. Exit 2: bad settings or no artifact (also one that
cannot be downloaded); 1: the model failed to load.

Once HTTP listens, the V2 gRPC endpoint listens on `--grpc-port` (8001; -1: none), serving the
same model through the same batcher (`grpc_server`). With `--tls-cert-file` and
`--tls-key-file` it serves HTTPS and gRPC over TLS only (`tls`: the pair is reloaded when
cert-manager renews it); with `--auth-tokens-dir` or `--auth-audience` every request but the
probes' and `/metrics` needs a bearer token (`auth`), on both ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kaon_kernels.eventloop import LoopUnavailableError, loop_factory
from kaon_kernels.serve.app import App
from kaon_kernels.serve.auth import Authenticator, authenticator, describe
from kaon_kernels.serve.batcher import Batcher
from kaon_kernels.serve.fetch import fetch_model
from kaon_kernels.serve.load import LoadReporter, drift_report
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.protocol import Signature
from kaon_kernels.serve.requestlog import Counters, LogPlace, RequestLog
from kaon_kernels.serve.requestlog_store import s3_put
from kaon_kernels.serve.server import HttpServer
from kaon_kernels.serve.settings import Settings, SettingsError, artifact_name, parse_settings
from kaon_kernels.serve.tls import CertReloader

if TYPE_CHECKING:
    from kaon_kernels.serve.grpc_server import GrpcServer
    from kaon_kernels.serve.model import Engine

EXIT_BAD_INPUT = 2
EXIT_LOAD_FAILED = 1


def log(message: str) -> None:
    print(f"kaon-serve: {message}", file=sys.stderr, flush=True)


def load_engine(settings: Settings, name: str) -> Engine:
    """Import torch, load the artifact and warm it up (on a thread: the loop keeps serving)."""
    import torch  # noqa: PLC0415  # the slow import, off the event loop

    from kaon_kernels.serve.model import Engine  # noqa: PLC0415

    torch.set_num_threads(settings.threads)
    engine = Engine(settings.model_dir, name)
    engine.warm_up(settings.max_batch_size)
    return engine


def _start_loading(
    loop: asyncio.AbstractEventLoop, settings: Settings, name: str
) -> asyncio.Future[Engine]:
    # A daemon thread, not the default executor: a SIGTERM while torch imports must not wait.
    future: asyncio.Future[Engine] = loop.create_future()

    def settle(result: Engine | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            engine = load_engine(settings, name)
        except BaseException as err:
            outcome: tuple[Engine | None, BaseException | None] = (None, err)
        else:
            outcome = (engine, None)
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone already
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name="kaon-serve-load", daemon=True).start()
    return future


REVISION_ENV = "KAON_REVISION"  # stable or canary: a label of the quality metrics
REQUEST_LOG_CLOSE_S = 10.0  # on shutdown, longest wait for the request log's last upload


def start_request_log(
    settings: Settings, name: str, signature: Signature, metrics: ServeMetrics
) -> RequestLog:
    assert settings.request_log_uri is not None
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    request_log = RequestLog(
        LogPlace(name, metrics.revision, pod),
        signature,
        s3_put(settings.request_log_uri, os.environ),
        settings.request_log_sample_rate,
        Counters(metrics.request_log_written, metrics.request_log_dropped),
        say=log,
    )
    request_log.start()
    log(
        f"request log: {settings.request_log_sample_rate * 100:g}% of the infer requests to "
        f"{settings.request_log_uri}"
    )
    return request_log


async def listen(
    server: HttpServer, settings: Settings, name: str, tls: CertReloader | None
) -> None:
    if tls is None:
        port = await server.start(settings.host, settings.port)
    else:
        port = await server.start(settings.host, settings.port, ssl=tls.context)
        tls.start(asyncio.get_running_loop())
    scheme = "http" if tls is None else "https"
    log(f"model '{name}' from {settings.model_dir}: listening on {scheme}://{settings.host}:{port}")


async def listen_grpc(app: App, settings: Settings) -> GrpcServer | None:
    """The gRPC endpoint, listening; None with --grpc-port -1."""
    if settings.grpc_port < 0:
        return None
    # grpc loads in a fraction of a second, but after HTTP listens: live answers first.
    from kaon_kernels.serve.grpc_server import CertFetcher, GrpcServer  # noqa: PLC0415

    server = GrpcServer(app, settings.max_payload_bytes)
    fetcher = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        fetcher = CertFetcher(settings.tls_cert_file, settings.tls_key_file, log)
    port = await server.start(settings.host, settings.grpc_port, fetcher)
    scheme = "grpc" if fetcher is None else "grpcs"
    log(f"V2 gRPC listening on {scheme}://{settings.host}:{port}")
    return server


async def serve(
    settings: Settings,
    name: str,
    tls: CertReloader | None = None,
    auth: Authenticator | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    metrics = ServeMetrics(name, os.environ.get(REVISION_ENV, ""))
    app = App(name, metrics, settings.max_payload_bytes, auth)
    metrics.watch_quality(app.quality)
    server = HttpServer(app, settings.max_payload_bytes)
    await listen(server, settings, name, tls)
    try:
        grpc_server = await listen_grpc(app, settings)
    except (RuntimeError, OSError) as err:  # the port is taken
        log(f"gRPC cannot listen on port {settings.grpc_port}: {err}")
        await server.drain(0)
        return EXIT_BAD_INPUT
    if auth is not None:
        log(describe(auth))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reporter = LoadReporter.from_env(os.environ, loop, lambda: app.ready, drift_report(app))
    if reporter is not None:
        app.load = reporter.window

    loading = _start_loading(loop, settings, name)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    batcher = None
    code = 0
    if loading.done() and not stop.is_set():
        try:
            engine = loading.result()
        except Exception as err:
            log(f"model failed to load from {settings.model_dir}: {type(err).__name__}: {err}")
            code = EXIT_LOAD_FAILED
            stop.set()
        else:
            batcher = Batcher(
                loop,
                engine.run,
                settings.max_batch_size,
                settings.max_latency_ms / 1000,
                metrics.observe_batch,
            )
            if settings.logs_requests:
                app.request_log = start_request_log(settings, name, engine.signature, metrics)
            # The model and the modules live as long as the process: out of the collector's
            # full passes, whose pauses were in the tail latency (docs/architecture.md).
            gc.collect()
            gc.freeze()
            app.start_serving(engine, batcher)
            log(
                f"ready in {time.monotonic() - started:.2f} s: max batch "
                f"{settings.max_batch_size}, max latency {settings.max_latency_ms:g} ms, "
                f"{settings.threads} torch thread(s)"
            )
    await stopping
    await shutdown(settings, app, server, grpc_server, batcher, reporter, auth, tls)
    return code


async def shutdown(
    settings: Settings,
    app: App,
    server: HttpServer,
    grpc_server: GrpcServer | None,
    batcher: Batcher[Any, Any] | None,
    reporter: LoadReporter | None,
    auth: Authenticator | None,
    tls: CertReloader | None,
) -> None:
    """Not ready, answer the requests in flight on both ports, then let everything go."""
    app.stop_serving("shutting down")
    log("stopping: answering the requests in flight")
    drains = [server.drain(settings.drain_seconds)]
    if grpc_server is not None:
        drains.append(grpc_server.drain(settings.drain_seconds))
    await asyncio.gather(*drains)
    if batcher is not None:
        batcher.close()
    if app.request_log is not None:
        closed = await asyncio.to_thread(app.request_log.close, REQUEST_LOG_CLOSE_S)
        if not closed:
            log(f"request log: the last upload did not end in {REQUEST_LOG_CLOSE_S:g} s")
    if reporter is not None:
        reporter.close()
    if auth is not None:
        await auth.close()
    if tls is not None:
        tls.close()
    log("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv, os.environ)
        if settings.model_uri:
            fetch_model(settings.model_uri, settings.model_dir, os.environ)
            log(f"fetched {settings.model_uri} into {settings.model_dir}")
        if not (settings.model_dir / "model.pt").is_file():
            raise SettingsError(f"{settings.model_dir}: no model.pt (not a kaon model artifact)")
        name = settings.name or artifact_name(settings.model_dir)
        tls = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            tls = CertReloader(settings.tls_cert_file, settings.tls_key_file, log)
        auth = authenticator(settings, os.environ, log)
        try:
            loop_name, new_loop = loop_factory(settings.loop)
        except LoopUnavailableError as err:
            raise SettingsError(f"--loop {settings.loop}: {err}") from None
    except SettingsError as err:
        log(str(err))
        return EXIT_BAD_INPUT
    log(f"event loop: {loop_name}")
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(serve(settings, name, tls, auth))


if __name__ == "__main__":
    sys.exit(main())
