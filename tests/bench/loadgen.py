"""A closed-loop HTTP/1.1 load generator: N users, one keep-alive connection each.

Each user sends a request, waits for the whole answer, records its latency and sends the next
(no think time), cycling through prepared request bytes. Callbacks on asyncio.Protocol keep the
generator's own cost per request small, so the server, not the generator, is what is measured.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import cast

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:[ \t]*(\d+)")


@dataclass
class Tally:
    """Answers completed inside the measured window."""

    start: float = float("inf")
    end: float = float("-inf")
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


class User(asyncio.Protocol):
    def __init__(self, requests: list[bytes], offset: int, tally: Tally, stop_at: float) -> None:
        self.requests = requests
        self.next = offset
        self.tally = tally
        self.stop_at = stop_at
        self.buf = bytearray()
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        request = self.requests[self.next % len(self.requests)]
        self.next += 1
        self.sent = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        match = CONTENT_LENGTH.search(self.buf, 0, end + 2)
        length = int(match.group(1)) if match else 0
        if len(self.buf) < end + 4 + length:
            return
        now = time.perf_counter()
        status = bytes(self.buf[9:12])
        t = self.tally
        if t.start <= self.sent and now <= t.end:
            if status == b"200":
                t.latencies.append(now - self.sent)
            else:
                t.errors += 1
                t.first_error = t.first_error or bytes(self.buf[: end + 4 + length])[:300].decode(
                    "latin-1"
                )
        del self.buf[: end + 4 + length]
        if now >= self.stop_at:
            assert self.transport is not None
            self.transport.close()
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.stop_at:
            self.tally.errors += 1
            self.tally.first_error = self.tally.first_error or f"connection lost: {exc}"
        if not self.finished.done():
            self.finished.set_result(None)


async def closed_loop(
    host: str,
    port: int,
    requests: list[bytes],
    users: int,
    warmup_s: float,
    duration_s: float,
    tls: ssl.SSLContext | None = None,
) -> Tally:
    """Run `users` closed-loop users for warmup + duration; tally the duration only. With
    `tls`, each connection is HTTPS (its handshake before the warm-up ends)."""
    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    tally = Tally(start=begin + warmup_s, end=begin + warmup_s + duration_s)
    stop_at = tally.end
    conns = [
        await loop.create_connection(
            lambda i=i: User(requests, i * 7, tally, stop_at),  # type: ignore[misc]
            host,
            port,
            ssl=tls,
        )
        for i in range(users)
    ]
    await asyncio.gather(*(proto.finished for _, proto in conns))
    return tally


def http_request(
    path: str,
    body: bytes,
    host: str,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]
