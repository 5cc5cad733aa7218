"""Probes as the rig agent runs them: specs with Kubernetes' defaults, and what results decide."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kaon_rig import prober
from kaon_rig.probes import (
    ContainerHealth,
    Exec,
    HttpGet,
    Kind,
    Probe,
    ProbeError,
    TcpSocket,
    container_probes,
)

SERVER: dict[str, Any] = {"name": "srv", "ports": [{"name": "http", "containerPort": 8080}]}


def probe(kind: Kind, **timing: Any) -> Probe:
    return Probe(kind=kind, action=TcpSocket(8080), period_s=0.0, **timing)


def test_probe_specs_get_kubernetes_defaults_and_named_ports() -> None:
    container = SERVER | {
        "readinessProbe": {
            "httpGet": {
                "path": "/v2/health/ready",
                "port": "http",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}],
            },
            "periodSeconds": 2,
            "successThreshold": 2,
        },
        "livenessProbe": {"tcpSocket": {"port": 9000}, "initialDelaySeconds": 5},
        "startupProbe": {"exec": {"command": ["python", "-c", "pass"]}, "failureThreshold": 30},
    }
    probes = container_probes(container)
    ready, live, start = probes[Kind.READINESS], probes[Kind.LIVENESS], probes[Kind.STARTUP]
    assert ready.action == HttpGet(
        port=8080, path="/v2/health/ready", headers=(("X-Probe", "1"),), scheme="HTTP"
    )
    assert (ready.period_s, ready.success_threshold, ready.failure_threshold) == (2, 2, 3)
    assert ready.timeout_s == 1 and ready.initial_delay_s == 0
    assert live.action == TcpSocket(port=9000) and live.initial_delay_s == 5
    assert live.period_s == 10 and live.grace_s is None
    assert start.action == Exec(("python", "-c", "pass")) and start.failure_threshold == 30
    assert container_probes(SERVER) == {}


@pytest.mark.parametrize(
    "spec",
    [
        {"grpc": {"port": 9000}},
        {"httpGet": {"port": "metrics"}},  # no such named port
        {"httpGet": {"port": 80, "scheme": "FTP"}},
        {"exec": {"command": []}},
    ],
)
def test_probes_the_agent_cannot_run_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ProbeError):
        container_probes(SERVER | {"livenessProbe": spec})


def test_without_probes_a_running_container_is_started_and_ready() -> None:
    health = ContainerHealth({})
    assert health.started and health.ready and health.failed is None
    assert not any(health.wants(kind) for kind in Kind)


def test_readiness_follows_its_thresholds() -> None:
    health = ContainerHealth({Kind.READINESS: probe(Kind.READINESS, success_threshold=2)})
    assert health.started and not health.ready  # not ready until the probe says so
    assert not health.record(Kind.READINESS, True)  # one success of two
    assert not health.record(Kind.READINESS, False)  # the streak breaks
    assert not health.record(Kind.READINESS, True)
    assert health.record(Kind.READINESS, True) and health.ready
    assert not health.record(Kind.READINESS, False) and not health.record(Kind.READINESS, False)
    assert health.ready  # two failures of three
    assert health.record(Kind.READINESS, False) and not health.ready
    assert health.failed is None  # readiness never restarts a container


def test_startup_gates_readiness_and_liveness() -> None:
    health = ContainerHealth(
        {
            Kind.STARTUP: probe(Kind.STARTUP),
            Kind.READINESS: probe(Kind.READINESS),
            Kind.LIVENESS: probe(Kind.LIVENESS),
        }
    )
    assert not health.started and not health.ready
    assert health.wants(Kind.STARTUP) and not health.wants(Kind.READINESS)
    assert not health.record(Kind.READINESS, True)  # not probed before the start
    assert not health.ready
    assert health.record(Kind.STARTUP, True) and health.started and not health.ready
    assert not health.wants(Kind.STARTUP) and health.wants(Kind.LIVENESS)
    assert health.record(Kind.READINESS, True) and health.ready


def test_no_readiness_probe_means_ready_once_started() -> None:
    health = ContainerHealth({Kind.STARTUP: probe(Kind.STARTUP, failure_threshold=2)})
    assert not health.ready
    assert health.record(Kind.STARTUP, True) and health.ready


def test_liveness_failures_past_the_threshold_ask_for_a_restart() -> None:
    health = ContainerHealth({Kind.LIVENESS: probe(Kind.LIVENESS, failure_threshold=3)})
    for _ in range(2):
        assert not health.record(Kind.LIVENESS, False)
    assert health.record(Kind.LIVENESS, True) is False  # a success resets the streak
    for _ in range(2):
        assert not health.record(Kind.LIVENESS, False)
    assert health.failed is None and health.ready
    assert health.record(Kind.LIVENESS, False)
    assert health.failed is Kind.LIVENESS and not health.ready
    assert not health.wants(Kind.LIVENESS)  # on hold until the container restarts


def test_a_startup_probe_that_never_passes_asks_for_a_restart() -> None:
    health = ContainerHealth({Kind.STARTUP: probe(Kind.STARTUP, failure_threshold=2)})
    assert not health.record(Kind.STARTUP, False)
    assert health.record(Kind.STARTUP, False) and health.failed is Kind.STARTUP


def test_supervise_reports_changes_and_returns_the_probe_that_gave_up() -> None:
    live = probe(Kind.LIVENESS, failure_threshold=2)
    ready = probe(Kind.READINESS)
    health = ContainerHealth({Kind.LIVENESS: live, Kind.READINESS: ready})
    liveness = iter([True, False, False])
    seen: list[tuple[bool, bool]] = []

    async def probe_once(p: Probe) -> bool:
        await asyncio.sleep(0)
        return p.kind is Kind.READINESS or next(liveness)

    async def changed() -> None:
        seen.append((health.ready, health.failed is not None))

    verdict = asyncio.run(asyncio.wait_for(prober.supervise(health, probe_once, changed), 5))
    assert verdict is Kind.LIVENESS
    assert seen == [(True, False), (False, True)]


def test_supervise_waits_out_the_initial_delay_while_probes_pass() -> None:
    health = ContainerHealth({Kind.READINESS: probe(Kind.READINESS, initial_delay_s=30)})
    calls: list[Probe] = []

    async def probe_once(p: Probe) -> bool:
        calls.append(p)
        return True

    async def changed() -> None:
        raise AssertionError("nothing changes before the initial delay")

    async def briefly() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(prober.supervise(health, probe_once, changed), 0.2)

    asyncio.run(briefly())
    assert calls == [] and not health.ready
