"""The server's HTTP/1.1 parser and response bytes, fed by hand (no sockets)."""

from __future__ import annotations

import pytest

from kaon_kernels.serve.http11 import HttpError, Request, RequestParser, render


def parse_all(data: bytes, max_body: int = 1024, step: int = 0) -> list[Request]:
    """Every complete request in `data`, fed at once or `step` bytes at a time."""
    parser = RequestParser(max_body)
    found = []
    chunks = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (req := parser.next_request()) is not None:
            found.append(req)
    return found


def error_of(data: bytes, max_body: int = 1024) -> HttpError:
    with pytest.raises(HttpError) as caught:
        parse_all(data, max_body)
    return caught.value


POST = b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
GET = b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("step", [0, 1, 7])
def test_pipelined_requests_come_out_whole_and_in_order_however_the_bytes_arrive(
    step: int,
) -> None:
    reqs = parse_all(b"\r\n" + POST + GET + POST, step=step)
    assert [(r.method, r.path, r.body) for r in reqs] == [
        ("POST", "/v2/models/m/infer", b"hello"),
        ("GET", "/v2/health/ready", b""),
        ("POST", "/v2/models/m/infer", b"hello"),
    ]
    assert reqs[0].headers["content-length"] == "5" and reqs[0].headers["host"] == "a"


def test_chunked_bodies_with_extensions_and_trailers() -> None:
    data = (
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n" + GET
    )
    for step in (0, 1, 3):
        reqs = parse_all(data, step=step)
        assert [r.body for r in reqs] == [b"Wikipedia", b""]


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(
    head: bytes, keep_alive: bool
) -> None:
    (req,) = parse_all(head)
    assert req.keep_alive is keep_alive


def test_expect_continue_is_offered_once_while_the_body_is_awaited() -> None:
    parser = RequestParser(1024)
    parser.feed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert parser.next_request() is None
    assert parser.wants_continue() is True
    assert parser.wants_continue() is False
    parser.feed(b"abc")
    req = parser.next_request()
    assert req is not None and req.body == b"abc"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"POST /x HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413, "2000 bytes"),
        (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n"
            b"400\r\n",
            413,
            "limit",
        ),
        (b"GARBAGE\r\n\r\n", 400, "request line"),
        (b"get / HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 400, "HTTP/2.0"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, "header line"),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "Length"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both",
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "gzip"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size"),
        (b"POST / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417, "magic"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, 431, "head"),
    ],
)
def test_bad_requests_name_their_problem(data: bytes, status: int, words: str) -> None:
    err = error_of(data)
    assert err.status == status
    assert words in err.message


def test_render_always_sends_a_length_and_says_when_it_closes() -> None:
    keep = render(200, b'{"a":1}', headers=(("X-Y", "z"),))
    head, body = keep.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b'{"a":1}'
    assert b"Content-Length: 7" in head and b"X-Y: z" in head
    assert b"Connection: close" not in head
    assert b"Connection: close" in render(413, b"", keep_alive=False)
