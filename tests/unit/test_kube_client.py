"""The API client's own transport (what the in-memory double replaces) against a local HTTP
server: headers, errors, the token read again after a 401, watch streams, an unreachable host."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from kaon.clusters.client import MERGE_PATCH, ApiError, KubeClient, WatchExpiredError

from enginekit import on_loop


def kubeconfig(server: str, token_file: Path | None = None) -> dict[str, Any]:
    user: dict[str, Any] = {"tokenFile": str(token_file)} if token_file else {"token": "t0"}
    return {
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
        "users": [{"name": "u", "user": user}],
    }


class Server:
    """A few API server answers, and what arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []  # method, path, auth, content type
        self.bodies: list[Any] = []
        self.accepted_token = "t0"
        self.watch_lines: list[bytes] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.seen.append((request.method, request.path, auth, request.content_type))
        body = await request.json() if request.can_read_body else None
        if body is not None:
            self.bodies.append(body)
        if auth != f"Bearer {self.accepted_token}":
            return web.json_response({"reason": "Unauthorized", "message": "no"}, status=401)
        if request.query.get("watch"):
            response = web.StreamResponse()
            await response.prepare(request)
            for line in self.watch_lines:
                await response.write(line)
            return response
        if request.path == "/metrics":
            return web.Response(text="up 1\n")
        if request.path == "/version":
            return web.json_response({"gitVersion": "v1.31.2"})
        if request.path.endswith("/missing"):
            return web.json_response({"reason": "NotFound", "message": "gone"}, status=404)
        named = (body or {}).get("metadata", {}).get("name")
        if request.method == "POST" and named == "taken":
            return web.json_response({"reason": "AlreadyExists", "message": "x"}, status=409)
        if request.path.endswith("/plain-error"):
            return web.Response(text="upstream broke", status=502)
        if request.path.endswith("/expired"):
            return web.Response(text="too old", status=410)
        return web.json_response({"metadata": {"name": request.path.rsplit("/", 1)[-1]}})


@asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    await server.server.start_server()
    try:
        yield server
    finally:
        await server.server.close()


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


@on_loop
async def test_requests_carry_the_token_and_decode_answers(tmp_path: Path) -> None:
    async with running(Server()) as server:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig(server.url)))
        client = KubeClient.from_file(path)
        assert client.server == server.url
        got = await client.get("/api/v1/namespaces/ns/pods/p1", labelSelector="a=b")
        assert got == {"metadata": {"name": "p1"}}
        assert await client.create("/api/v1/namespaces/ns/pods", {"a": 1}, answer=False) == {}
        await client.merge_patch("/api/v1/namespaces/ns/pods/p1", {"b": 2})
        assert await client.delete_if_present("/api/v1/namespaces/ns/pods/p1") is True
        assert await client.delete_if_present("/api/v1/namespaces/ns/pods/missing") is False
        taken = await client.create_or_get(
            "/api/v1/namespaces/ns/pods", {"metadata": {"name": "taken"}}
        )
        assert taken == {"metadata": {"name": "taken"}}
        assert await client.text("/metrics") == "up 1\n"
        assert await client.version() == "v1.31.2"
        await client.close()
    methods = [(m, p.rsplit("/", 1)[-1], a) for m, p, a, _ in server.seen]
    assert methods[:4] == [
        ("GET", "p1", "Bearer t0"),
        ("POST", "pods", "Bearer t0"),
        ("PATCH", "p1", "Bearer t0"),
        ("DELETE", "p1", "Bearer t0"),
    ]
    assert server.seen[2][3] == MERGE_PATCH
    assert server.bodies[:2] == [{"a": 1}, {"b": 2}]


@on_loop
async def test_errors_are_raised_with_status_reason_and_message() -> None:
    async with running(Server()) as server:
        client = KubeClient(kubeconfig(server.url))
        with pytest.raises(ApiError) as missing:
            await client.get("/api/v1/namespaces/ns/pods/missing")
        assert (missing.value.status, missing.value.reason, missing.value.message) == (
            404,
            "NotFound",
            "gone",
        )
        with pytest.raises(ApiError) as plain:
            await client.get("/api/v1/plain-error")
        assert (plain.value.status, plain.value.reason) == (502, "")
        assert plain.value.message == "upstream broke"
        with pytest.raises(WatchExpiredError):
            await client.get("/api/v1/expired")
        await client.close()


@on_loop
async def test_after_a_401_the_token_is_read_again_and_the_request_repeated(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")
    async with running(Server()) as server:
        server.accepted_token = "new"
        client = KubeClient(kubeconfig(server.url, token))
        with pytest.raises(ApiError) as refused:  # the file still holds the old token
            await client.get("/api/v1/nodes")
        assert refused.value.unauthorized
        token.write_text("new\n")  # the kubelet rotated the projected token
        assert await client.get("/api/v1/nodes") == {"metadata": {"name": "nodes"}}
        await client.close()
    assert [auth for _, _, auth, _ in server.seen] == [
        "Bearer old",
        "Bearer old",
        "Bearer new",
    ]


async def collect(client: KubeClient, path: str) -> list[tuple[str, Any]]:
    return [(kind, obj) async for kind, obj in client.watch(path, "7", {"labelSelector": "a"})]


@on_loop
async def test_a_watch_streams_events_until_the_server_ends_it() -> None:
    async with running(Server()) as server:
        server.watch_lines = [
            event("ADDED", {"metadata": {"name": "a", "resourceVersion": "8"}}),
            b"\n",
            event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}),
        ]
        client = KubeClient(kubeconfig(server.url))
        got = await collect(client, "/api/v1/pods")
        assert [kind for kind, _ in got] == ["ADDED", "BOOKMARK"]
        server.watch_lines = [event("ERROR", {"code": 410, "message": "too old"})]
        with pytest.raises(WatchExpiredError):
            await collect(client, "/api/v1/pods")
        server.watch_lines = [event("ERROR", {"code": 500, "reason": "InternalError"})]
        with pytest.raises(ApiError) as failed:
            await collect(client, "/api/v1/pods")
        assert (failed.value.status, failed.value.reason) == (500, "InternalError")
        server.accepted_token = "other"
        with pytest.raises(ApiError) as refused:
            await collect(client, "/api/v1/pods")
        assert refused.value.status == 401
        await client.close()
    query = [p for m, p, _, _ in server.seen if m == "GET"]
    assert query and all(p == "/api/v1/pods" for p in query)


@on_loop
async def test_a_host_that_does_not_answer_is_status_zero() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = KubeClient(kubeconfig(f"http://127.0.0.1:{port}"))
    with pytest.raises(ApiError) as down:
        await client.get("/api/v1/nodes")
    assert (down.value.status, down.value.reason) == (0, "Unreachable")
    assert str(down.value).startswith(f"Unreachable: http://127.0.0.1:{port}")  # no status "0"
    with pytest.raises(ApiError) as watch_down:
        await collect(client, "/api/v1/pods")
    assert watch_down.value.status == 0
    await client.close()
