"""The rig agent's probe actions against real local endpoints (loopback, no cluster)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kaon_rig import prober, probes
from kaon_rig.podrun import LocalRun

HOST = "127.0.0.1"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok":
            self._answer(200)
        elif self.path == "/here":
            self._answer(302, {"Location": "/missing"})
        elif self.path == "/away":
            self._answer(302, {"Location": "http://192.0.2.1/"})
        elif self.path == "/header":
            self._answer(200 if self.headers.get("X-Token") == "s3cret" else 401)
        elif self.path == "/slow":
            threading.Event().wait(1)
            self._answer(200)
        else:
            self._answer(404)

    def _answer(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def run_in(tmp: Path) -> LocalRun:
    return LocalRun(
        argv=["x"],
        env={"WANT": "3"},
        cwd=tmp,
        termination_log=tmp / "termination-log",
        fallback_to_logs=False,
        grace_s=1.0,
        python=sys.executable,
    )


def once(action: probes.Action, tmp: Path, timeout_s: float = 1.0) -> bool:
    probe = probes.Probe(kind=probes.Kind.READINESS, action=action, timeout_s=timeout_s)

    async def go() -> bool:
        async with prober.http_session() as session:
            return await prober.check(probe, HOST, run_in(tmp), session)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("path", "headers", "ok"),
    [
        ("/ok", (), True),
        ("/nothing", (), False),
        ("/here", (), False),  # a redirect on the same host is followed: to a 404
        ("/away", (), True),  # one to another host counts as a success, as in kubelet
        ("/header", (("X-Token", "s3cret"),), True),
        ("/header", (), False),
    ],
)
def test_http_get(
    port: int, tmp_path: Path, path: str, headers: tuple[tuple[str, str], ...], ok: bool
) -> None:
    assert once(probes.HttpGet(port=port, path=path, headers=headers), tmp_path) is ok


def test_http_get_past_its_timeout_fails(port: int, tmp_path: Path) -> None:
    assert not once(probes.HttpGet(port=port, path="/slow"), tmp_path, timeout_s=0.3)


def test_tcp_socket(port: int, tmp_path: Path) -> None:
    assert once(probes.TcpSocket(port=port), tmp_path)
    with socket.socket() as s:
        s.bind((HOST, 0))
        closed = int(s.getsockname()[1])  # bound, not listening: refused
        assert not once(probes.TcpSocket(port=closed), tmp_path)


def test_exec_runs_with_the_containers_env_and_is_killed_at_its_timeout(tmp_path: Path) -> None:
    check = "import os, sys; sys.exit(0 if os.environ['WANT'] == '$(WANT)' else 1)"
    assert once(probes.Exec(("python", "-c", check)), tmp_path)
    assert not once(probes.Exec(("python", "-c", "raise SystemExit(3)")), tmp_path)
    assert not once(probes.Exec(("no-such-command-here",)), tmp_path)
    marker = tmp_path / "still-running"
    late = f"import time, pathlib; time.sleep(1); pathlib.Path({str(marker)!r}).touch()"
    assert not once(probes.Exec(("python", "-c", late)), tmp_path, timeout_s=0.3)
    asyncio.run(asyncio.sleep(1.5))
    assert not marker.exists()  # the timed-out probe's process was killed
