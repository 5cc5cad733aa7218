"""HTTPS on a real socket: the server's certificate, its renewal, and clients that close early.

Certificates come from the openssl CLI (tests/tlskit.py); each test issues its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kaon_kernels.serve.app import App
from kaon_kernels.serve.auth import Authenticator, Review, StaticTokens
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.server import HttpServer
from kaon_kernels.serve.settings import SettingsError
from kaon_kernels.serve.tls import CertReloader

import tlskit
from tlskit import Issued

TOKEN = "client-token"


def issue(work: Path) -> Issued:
    return tlskit.issue(work, ["localhost"], ("127.0.0.1",))


def mount(directory: Path, version: str, files: dict[str, Path]) -> None:
    """What the kubelet does to a Secret volume: the files in a new directory, `..data` swapped
    to it, and a link per key through `..data`."""
    (directory / version).mkdir(parents=True)
    for key, source in files.items():
        shutil.copy(source, directory / version / key)
    (directory / "..data_tmp").symlink_to(version)
    os.replace(directory / "..data_tmp", directory / "..data")
    for key in files:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def peer_certificate(port: int, ca: Path) -> bytes:
    """The certificate a new connection is served (verified against `ca`), DER."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(ca))
    served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    assert isinstance(served, bytes)
    return served


async def https_get(
    port: int, path: str, ca: Path, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://127.0.0.1:{port}{path}", ssl=trusting(ca), headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.read()


@asynccontextmanager
async def serving(app: App, context: ssl.SSLContext) -> AsyncIterator[HttpServer]:
    server = HttpServer(app, 1 << 20)
    await server.start("127.0.0.1", 0, ssl=context)
    try:
        yield server
    finally:
        await server.drain(1.0)


def port_of(server: HttpServer) -> int:
    assert server.server is not None
    return int(server.server.sockets[0].getsockname()[1])


def test_https_serves_the_certificate_and_follows_its_renewal(tmp_path: Path) -> None:
    first, second, third = (issue(tmp_path / name) for name in ("v1", "v2", "v3"))
    live = tmp_path / "live"
    mount(live, "..v1", {"tls.crt": first.cert, "tls.key": first.key})
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "client").write_text(TOKEN)
    said: list[str] = []
    reloader = CertReloader(live / "tls.crt", live / "tls.key", said.append)
    app = App("digits", ServeMetrics("digits"), auth=Authenticator(StaticTokens(tokens, print)))

    async def scenario() -> None:
        async with serving(app, reloader.context) as server:
            port = port_of(server)
            status, _, body = await https_get(port, "/v2/health/live", first.ca)
            assert (status, body) == (200, b'{"live":true}')
            status, headers, _ = await https_get(port, "/v2", first.ca)
            assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="kaon"')
            status, _, body = await https_get(port, "/v2", first.ca, TOKEN)
            assert status == 200 and json.loads(body)["name"] == "kaon"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain HTTP
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = await asyncio.wait_for(reader.read(100), 5)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"HTTP")  # HTTPS only
            writer.close()

            assert not reloader.check()  # nothing changed
            assert await peer_certificate(port, first.ca) == der(first.cert)
            mount(live, "..v2", {"tls.crt": second.cert, "tls.key": second.key})
            assert reloader.check()
            assert await peer_certificate(port, second.ca) == der(second.cert)
            assert (await https_get(port, "/v2/health/live", second.ca))[0] == 200
            assert said == [f"TLS: serving the renewed certificate of {live / 'tls.crt'}"]

            # Half written: the new certificate beside the old key. The old pair stays.
            shutil.copy(third.cert, live / "..v2" / "tls.crt")
            assert not reloader.check()
            assert not reloader.check()
            assert len(said) == 2 and said[1].startswith(
                "TLS: keeping the current certificate: the new pair does not load"
            )
            assert await peer_certificate(port, second.ca) == der(second.cert)
            shutil.copy(third.key, live / "..v2" / "tls.key")
            assert reloader.check()
            assert await peer_certificate(port, third.ca) == der(third.cert)
            assert len(said) == 3

    asyncio.run(scenario())


def test_a_pair_that_does_not_load_at_start_is_a_settings_error(tmp_path: Path) -> None:
    first, second = issue(tmp_path / "v1"), issue(tmp_path / "v2")
    with pytest.raises(SettingsError, match="--tls-cert-file/--tls-key-file: cannot load"):
        CertReloader(first.cert, second.key, print)
    with pytest.raises(SettingsError, match="cannot load"):
        CertReloader(first.cert, tmp_path / "missing.key", print)


class HeldReviewer:
    """Allows every token, once `gate` is set."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()

    async def review(self, token: str, audiences: Sequence[str]) -> Review:
        self.asked.set()
        await self.gate.wait()
        return Review(True, (audiences[0],))

    async def close(self) -> None:
        pass


def test_a_tls_client_that_closes_before_its_answer_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issued = issue(tmp_path / "v1")
    reloader = CertReloader(issued.cert, issued.key, print)
    reviewer = HeldReviewer()
    app = App("digits", ServeMetrics("digits"), auth=Authenticator(None, reviewer, "aud"))
    jwt = "e30." + base64.urlsafe_b64encode(b'{"aud": "aud"}').decode().rstrip("=") + ".c2ln"
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        async with serving(app, reloader.context) as server:
            port = port_of(server)
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(issued.ca))
            writer.write(
                f"GET /v2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\n\r\n".encode()
            )
            await writer.drain()
            await asyncio.wait_for(reviewer.asked.wait(), 5)
            writer.close()  # close_notify, then the socket
            await asyncio.wait_for(writer.wait_closed(), 5)
            for _ in range(100):
                if not server.connections:
                    break
                await asyncio.sleep(0.01)
            reviewer.gate.set()
            await asyncio.wait_for(app.idle.wait(), 5)
            status, _, body = await https_get(port, "/v2", issued.ca, jwt)
            assert status == 200 and json.loads(body)["name"] == "kaon"

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        asyncio.run(scenario())
    assert not errors
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
