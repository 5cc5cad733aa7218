"""One pod of the rig agent, run for real as a local process against a stand-in for the agent."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kaon_rig import podproc, podrun, podstatus, prober
from kaon_rig.podproc import PodProcess

# Listens on the pod IP; /ready answers 200 once the file `go` exists in its working directory.
SERVER = """
import http.server, os, pathlib
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/ready" or pathlib.Path("go").exists()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((os.environ["IP"], int(os.environ["PORT"])), H).serve_forever()
"""


class FakeAgent:
    """What a PodProcess asks of the agent, with every status write recorded."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.api_host, self.api_port = "127.0.0.1", "6443"
        self.statuses: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.released: list[str] = []
        self.session: aiohttp.ClientSession | None = None
        self.procs: list[PodProcess] = []

    def start(self, pod: dict[str, Any]) -> PodProcess:
        self.procs.append(PodProcess(self, pod))
        return self.procs[-1]

    def pod_ip(self, pod: dict[str, Any]) -> str:
        return "127.0.0.1"

    def release_ip(self, uid: str) -> None:
        self.released.append(uid)

    def rendezvous_port(self, key: tuple[str, str, str]) -> int:
        raise AssertionError("no rendezvous here")

    def http_session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = prober.http_session()
        return self.session

    async def volume_dirs(self, pod: Any, pod_dir: Path, pod_ip: str) -> dict[str, Path]:
        return {}

    async def prefetch(self, pod: Any) -> podrun.Lookup:
        return lambda kind, name: None

    async def patch_status(self, pod: Any, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def remove(self, pod: Any) -> None:
        self.removed.append(pod["metadata"]["name"])


def server_pod(port: int, policy: str = "Always", **probes: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "srv", "namespace": "ns", "uid": "uid-1"},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "srv",
                    "command": ["python", "-c", SERVER],
                    "env": [
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "PORT", "value": str(port)},
                    ],
                    "ports": [{"name": "http", "containerPort": port}],
                    **probes,
                }
            ],
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def ready(status: dict[str, Any]) -> bool:
    return bool(status["containerStatuses"][0]["ready"])


def condition(status: dict[str, Any], type_: str) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == type_)


def test_readiness_gates_ready_and_only_changes_are_written(tmp_path: Path) -> None:
    port = free_port()
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 0.1}
    pod = server_pod(port, readinessProbe=probe)

    async def scenario(agent: FakeAgent) -> None:
        proc = agent.start(pod)
        await until(lambda: len(agent.statuses) >= 1)
        await asyncio.sleep(1.0)  # ten probe periods, all failing
        assert len(agent.statuses) == 1
        first = agent.statuses[0]
        assert first["phase"] == "Running" and first["podIP"] == "127.0.0.1"
        assert not ready(first) and condition(first, "Ready") == "False"
        assert first["containerStatuses"][0]["started"]

        (podproc.pod_dir(agent.work_dir, pod["metadata"]) / "go").touch()
        await until(lambda: len(agent.statuses) >= 2)
        await asyncio.sleep(1.0)  # ten passing probes later: nothing new to write
        assert len(agent.statuses) == 2 and ready(agent.statuses[1])
        assert condition(agent.statuses[1], "Ready") == "True"

        await proc.stop()
        last = agent.statuses[-1]
        assert last["phase"] == "Failed" and not ready(last)  # SIGTERM: exit 143
        assert last["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
        assert agent.removed == ["srv"] and agent.released == ["uid-1"]

    run(scenario, tmp_path)


def test_failing_liveness_restarts_per_restart_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(podstatus, "BACKOFF_CAP_S", 0.2)
    port = free_port()
    probe = {
        "httpGet": {"path": "/", "port": port + 1},  # nothing listens there
        "periodSeconds": 0.1,
        "failureThreshold": 2,
    }

    async def always(agent: FakeAgent) -> None:
        proc = agent.start(server_pod(port, livenessProbe=probe))
        await until(
            lambda: (
                bool(agent.statuses)
                and agent.statuses[-1]["containerStatuses"][0]["restartCount"] >= 2
            )
        )
        waiting = [s for s in agent.statuses if "waiting" in s["containerStatuses"][0]["state"]]
        assert waiting, "no CrashLoopBackOff between the starts"
        status = waiting[-1]["containerStatuses"][0]
        assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert status["lastState"]["terminated"]["exitCode"] in (137, 143)
        assert not status["ready"] and waiting[-1]["phase"] == "Running"
        await proc.stop()

    async def never(agent: FakeAgent) -> None:
        agent.start(server_pod(port, "Never", livenessProbe=probe))
        await until(lambda: bool(agent.statuses) and agent.statuses[-1]["phase"] == "Failed")
        assert agent.statuses[-1]["containerStatuses"][0]["restartCount"] == 0

    run(always, tmp_path / "always")
    run(never, tmp_path / "never")


def run(scenario: Any, work_dir: Path) -> None:
    async def main() -> None:
        agent = FakeAgent(work_dir)
        try:
            await asyncio.wait_for(scenario(agent), 60)
        finally:
            for proc in agent.procs:
                proc.kill()  # nothing left running when a scenario fails
            if agent.session is not None:
                await agent.session.close()

    asyncio.run(main())
