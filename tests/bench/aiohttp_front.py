"""Bench only: kaon's V2 `App` behind aiohttp.web instead of kaon's own HTTP/1.1 layer.

The same process as `python -m kaon_kernels.serve` (same settings, same model loading on a
thread, same batcher, same `App` with its routing, V2 codec and metrics); only the layer that
parses requests and writes answers is aiohttp's (its C llhttp parser when built with it). Each
aiohttp request becomes the `http11.Request` that `App.handle` takes, and `App`'s reply becomes a
`web.Response` with the same status, body, Content-Type and extra headers. Request bodies are
not decompressed by aiohttp (`auto_decompress=False`): `App` decodes Content-Encoding itself.

Two flavours: `server` (default), aiohttp's low-level `web.Server`, the least aiohttp does per
request (`App` routes anyway); `application`, a `web.Application` with one catch-all route, as
an app would usually be written.

Run: `.venv/bin/python tests/bench/aiohttp_front.py --model-dir DIR [--flavor application] ...`
(every other option as `python -m kaon_kernels.serve`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from kaon_kernels.eventloop import loop_factory
from kaon_kernels.serve.__main__ import EXIT_BAD_INPUT, EXIT_LOAD_FAILED, _start_loading
from kaon_kernels.serve.app import App
from kaon_kernels.serve.batcher import Batcher
from kaon_kernels.serve.http11 import JSON, Request, error_body
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.settings import Settings, SettingsError, artifact_name, parse_settings

FLAVORS = ("server", "application")
Answer = tuple[int, bytes, str, tuple[tuple[str, str], ...]]


def log(message: str) -> None:
    print(f"kaon-serve (aiohttp): {message}", file=sys.stderr, flush=True)


def to_request(request: web.BaseRequest, body: bytes) -> Request:
    """What `App.handle` takes: lower-case header names, repeats joined, path without query."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path = request.raw_path.split("?", 1)[0]
    return Request(request.method, path, headers, body, request.keep_alive)


def handler(app: App) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            app.metrics.answered("unknown", 413)
            message = f"request body over the {app.max_body}-byte limit"
            return answer(app, (413, error_body(message), JSON, ()))
        loop = asyncio.get_running_loop()
        replied: asyncio.Future[Answer] = loop.create_future()

        def reply(
            status: int, body: bytes, ctype: str, headers: tuple[tuple[str, str], ...]
        ) -> None:
            if not replied.done():
                replied.set_result((status, body, ctype, headers))

        app.handle(to_request(request, body), reply)
        return answer(app, await replied)

    return handle


def answer(app: App, result: Answer) -> web.Response:
    status, body, ctype, extra = result
    headers = {"Content-Type": ctype, **dict(extra)}
    response = web.Response(status=status, body=body, headers=headers)
    if app.draining:
        response.force_close()
    return response


def runner(app: App, flavor: str) -> web.BaseRunner:
    handle = handler(app)
    if flavor == "application":
        web_app = web.Application(client_max_size=app.max_body)
        web_app.router.add_route("*", "/{tail:.*}", handle)
        return web.AppRunner(web_app, access_log=None, auto_decompress=False)
    loop = asyncio.get_running_loop()

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=app.max_body
        )

    server = web.Server(handle, request_factory=make_request, auto_decompress=False)
    return web.ServerRunner(server, access_log=None)


async def serve(settings: Settings, name: str, flavor: str) -> int:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    app = App(name, ServeMetrics(name), settings.max_payload_bytes)
    front = runner(app, flavor)
    await front.setup()
    site = web.TCPSite(front, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log(f"model '{name}': listening on http://{settings.host}:{settings.port} ({flavor})")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loading = _start_loading(loop, settings, name)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    batcher = None
    code = 0
    if loading.done() and not stop.is_set():
        try:
            engine = loading.result()
        except Exception as err:
            log(f"model failed to load: {type(err).__name__}: {err}")
            code = EXIT_LOAD_FAILED
            stop.set()
        else:
            batcher = Batcher(
                loop,
                engine.run,
                settings.max_batch_size,
                settings.max_latency_ms / 1000,
                app.metrics.observe_batch,
            )
            gc.collect()
            gc.freeze()  # as the own layer's server does
            app.start_serving(engine, batcher)
            log(f"ready in {time.monotonic() - started:.2f} s")
    await stopping
    app.stop_serving("shutting down")
    app.draining = True
    await front.cleanup()
    if batcher is not None:
        batcher.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flavor = "server"
    if "--flavor" in args:
        at = args.index("--flavor")
        flavor = args[at + 1] if at + 1 < len(args) else ""
        del args[at : at + 2]
    if flavor not in FLAVORS:
        log(f"--flavor must be one of {', '.join(FLAVORS)}")
        return EXIT_BAD_INPUT
    try:
        settings = parse_settings(args, os.environ)
        name = settings.name or artifact_name(settings.model_dir)
        _, new_loop = loop_factory(settings.loop)  # the own layer's loop: only the layer differs
    except SettingsError as err:
        log(str(err))
        return EXIT_BAD_INPUT
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(serve(settings, name, flavor))


if __name__ == "__main__":
    sys.exit(main())
