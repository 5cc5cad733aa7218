"""HTTP/1.1 on the wire, without sockets: an incremental request parser and response bytes.

The parser takes bytes as they arrive and yields complete requests: Content-Length and chunked
bodies, keep-alive per version and `Connection`, `Expect: 100-continue`, and limits on the head
and the body. A request it cannot accept raises `HttpError` with the status to answer, always a
4xx (an HTTP version or transfer coding it does not speak is the client's mistake here: 400);
after one, the connection is closed (the stream position is no longer trusted).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

MAX_HEAD_BYTES = 64 * 1024
METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
JSON = "application/json"


class HttpError(Exception):
    """A client's mistake: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(slots=True)
class Request:
    method: str
    path: str  # the target without its query string, still percent-encoded
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool


@dataclass(slots=True)
class _Head:
    method: str
    path: str
    headers: dict[str, str]
    keep_alive: bool
    length: int  # body bytes for Content-Length, -1 for chunked
    expect_continue: bool


class RequestParser:
    """Bytes in (`feed`), complete requests out (`next_request`), in order."""

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self._buf = bytearray()
        self._head: _Head | None = None
        self._chunks: list[bytes] = []
        self._chunked_size = 0
        self._continue_sent = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def wants_continue(self) -> bool:
        """True once per request that asked `Expect: 100-continue` and awaits its body."""
        head = self._head
        if head is None or not head.expect_continue or self._continue_sent:
            return False
        self._continue_sent = True
        return True

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive; HttpError if invalid."""
        if self._head is None:
            while self._buf.startswith(b"\r\n"):  # empty lines before a request are ignored
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0 or end > self.max_head:
                if len(self._buf) > self.max_head:
                    raise HttpError(431, f"request head over {self.max_head} bytes")
                return None
            raw = bytes(self._buf[:end])
            del self._buf[: end + 4]
            self._head = _parse_head(raw, self.max_body)
            self._continue_sent = False
        head = self._head
        body = self._read_body(head)
        if body is None:
            return None
        self._head = None
        return Request(head.method, head.path, head.headers, body, head.keep_alive)

    def _read_body(self, head: _Head) -> bytes | None:
        if head.length >= 0:
            if len(self._buf) < head.length:
                return None
            body = bytes(self._buf[: head.length])
            del self._buf[: head.length]
            return body
        return self._read_chunks()

    def _read_chunks(self) -> bytes | None:
        while True:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                if len(self._buf) > 1024:
                    raise HttpError(400, "chunk size line too long")
                return None
            size_field = bytes(self._buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise HttpError(400, f"bad chunk size {size_field[:32]!r}") from None
            if size < 0:
                raise HttpError(400, "bad chunk size")
            if size == 0:
                return self._finish_chunks(line_end + 2)
            if self._chunked_size + size > self.max_body:
                raise HttpError(413, f"request body over the {self.max_body}-byte limit")
            start = line_end + 2
            if len(self._buf) < start + size + 2:
                return None
            if self._buf[start + size : start + size + 2] != b"\r\n":
                raise HttpError(400, "chunk not followed by CRLF")
            self._chunks.append(bytes(self._buf[start : start + size]))
            self._chunked_size += size
            del self._buf[: start + size + 2]

    def _finish_chunks(self, after_size_line: int) -> bytes | None:
        # Trailer fields (ignored), then an empty line.
        if self._buf[after_size_line : after_size_line + 2] == b"\r\n":
            end = after_size_line + 2
        else:
            found = self._buf.find(b"\r\n\r\n", after_size_line)
            if found < 0:
                if len(self._buf) > self.max_head:
                    raise HttpError(431, "chunked trailer too long")
                return None
            end = found + 4
        del self._buf[:end]
        body = b"".join(self._chunks)
        self._chunks = []
        self._chunked_size = 0
        return body


def _parse_head(raw: bytes, max_body: int) -> _Head:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= METHOD_CHARS or not parts[1]:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if not version.startswith(b"HTTP/"):
            raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
        raise HttpError(400, f"HTTP version {version.decode('latin-1')} not supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 connections persist unless closed; HTTP/1.0 ones only when asked to.
    persistent = version == b"HTTP/1.1"
    keep_alive = "close" not in connection if persistent else "keep-alive" in connection
    length = _body_length(headers, max_body)
    expect = headers.get("expect", "").lower()
    if expect and expect != "100-continue":
        raise HttpError(417, f"unsupported expectation {expect!r}")
    path = target.decode("latin-1").split("?", 1)[0]
    return _Head(
        method.decode("ascii"),
        path,
        headers,
        keep_alive,
        length,
        expect == "100-continue" and length != 0,
    )


def _body_length(headers: dict[str, str], max_body: int) -> int:
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if "content-length" in headers:
            raise HttpError(400, "both Transfer-Encoding and Content-Length given")
        if coding.lower() != "chunked":
            raise HttpError(400, f"Transfer-Encoding {coding!r} not supported (only chunked)")
        return -1
    field = headers.get("content-length")
    if field is None:
        return 0
    values = {v.strip() for v in field.split(",")}
    if len(values) != 1 or not (value := values.pop()).isdigit():
        raise HttpError(400, f"bad Content-Length {field[:40]!r}")
    length = int(value)
    if length > max_body:
        raise HttpError(413, f"request body of {length} bytes over the {max_body}-byte limit")
    return length


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date_cache  # noqa: PLW0603  # one formatting per second, not per response
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def render(
    status: int,
    body: bytes,
    content_type: str = JSON,
    keep_alive: bool = True,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete response: status line, headers (Content-Length always) and the body."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Date: {http_date()}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
