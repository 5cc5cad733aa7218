"""The HTTP/1.1 server: one asyncio.Protocol per connection over `http11` and `App`.

Requests on a connection are answered in order (pipelined ones wait in the parser's buffer).
After a request the parser rejects, the connection answers and closes gracefully: the write
side is shut, what the client still sends is read and dropped, so it sees the answer rather
than a reset. While the server drains (SIGTERM), answers carry `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from kaon_kernels.serve.app import App
from kaon_kernels.serve.http11 import CONTINUE, JSON, HttpError, RequestParser, error_body, render

LINGER_S = 2.0


class Connection(asyncio.Protocol):
    def __init__(self, app: App, max_body: int, registry: set[Connection]) -> None:
        self.app = app
        self.parser = RequestParser(max_body)
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # a request is being answered
        self.keep_alive = True
        self.discarding = False  # closing: input is read and dropped
        self.peer_done = False  # the client shut its side: close after the answer
        self.paused = False  # our writes back up: the client does not read its answers
        self.tls = False
        self._processing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.parser.feed(data)
        if not self.waiting and not self.paused:
            self._process()
        parser = self.parser
        if parser.buffered > parser.max_body + parser.max_head and self.transport is not None:
            self.transport.pause_reading()  # pipelined requests pile up: answer them first

    def eof_received(self) -> bool | None:
        # asyncio's TLS transport closes on EOF whatever this returns (and warns if True): the
        # answer of a client that closed after its request is then dropped with the connection.
        if self.waiting and not self.tls:
            self.peer_done = True
            return True  # the client half-closed after its request: answer, then close
        return None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._resume()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.parser.buffered

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while (
                not self.waiting
                and not self.paused
                and self.transport is not None
                and not self.discarding
            ):
                try:
                    req = self.parser.next_request()
                except HttpError as err:
                    self.app.metrics.answered("unknown", err.status)
                    self._write(err.status, error_body(err.message), JSON, err.headers, False)
                    self._linger()
                    return
                if req is None:
                    if self.parser.wants_continue():
                        self.transport.write(CONTINUE)
                    return
                self.waiting = True
                self.keep_alive = req.keep_alive
                self.app.handle(req, self._reply)
        finally:
            self._processing = False

    def _reply(
        self, status: int, body: bytes, ctype: str, headers: tuple[tuple[str, str], ...]
    ) -> None:
        self.waiting = False
        if self.transport is None:
            return
        keep = self.keep_alive and not self.app.draining and not self.peer_done
        self._write(status, body, ctype, headers, keep)
        if not keep:
            self._linger()
            return
        self._resume()

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()
        if self.parser.buffered:
            self._process()

    def _write(
        self,
        status: int,
        body: bytes,
        ctype: str,
        headers: tuple[tuple[str, str], ...],
        keep_alive: bool,
    ) -> None:
        if self.transport is not None:
            self.transport.write(render(status, body, ctype, keep_alive, headers))

    def _linger(self) -> None:
        """Close after the answer is sent, without resetting a client that still writes."""
        transport = self.transport
        if transport is None:
            return
        self.discarding = True
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        else:
            transport.close()


class HttpServer:
    """Listens, tracks connections, and drains them on shutdown."""

    def __init__(self, app: App, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.app, self.max_body, self.connections),
            host,
            port,
            reuse_address=True,
            backlog=1024,
            **kwargs,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, answer what is in flight (up to `timeout_s`), close connections."""
        if self.server is not None:
            self.server.close()
        self.app.draining = True
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.app.idle.wait(), timeout_s)
        for conn in list(self.connections):
            conn.close()
        if self.server is not None:
            await self.server.wait_closed()
