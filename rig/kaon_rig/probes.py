"""Container probes as a kubelet runs them: their specs and the state their results drive (pure).

`container_probes` reads a container's startupProbe, readinessProbe and livenessProbe with the
Kubernetes defaults. `ContainerHealth` keeps one container run's probe results and turns them into
what the pod's status shows (`started`, `ready`) and whether the container must be restarted:

- without a startup probe a running container is started; with one, it is started once the probe
  succeeds, and readiness and liveness are only probed after that;
- without a readiness probe a started container is ready; with one, it is not ready until the
  probe has succeeded `successThreshold` times in a row, and not ready again after
  `failureThreshold` failures in a row;
- `failureThreshold` liveness failures in a row (or startup failures) mean: kill the container and
  restart it as the pod's restartPolicy says; its probes stop until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Obj = dict[str, Any]


class Kind(StrEnum):
    STARTUP = "startupProbe"
    READINESS = "readinessProbe"
    LIVENESS = "livenessProbe"


class ProbeError(ValueError):
    """A probe this agent cannot run."""


@dataclass(frozen=True)
class HttpGet:
    port: int
    path: str = "/"
    host: str | None = None  # None: the pod's IP
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpSocket:
    port: int
    host: str | None = None


@dataclass(frozen=True)
class Exec:
    command: tuple[str, ...]


Action = HttpGet | TcpSocket | Exec


@dataclass(frozen=True)
class Probe:
    kind: Kind
    action: Action
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    grace_s: float | None = None  # the probe's terminationGracePeriodSeconds, if it has one


def container_port(port: int | str, container: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ProbeError(f"container {container.get('name')} has no port named {port!r}")


def _action(spec: Obj, container: Obj) -> Action:
    if "httpGet" in spec:
        get = spec["httpGet"]
        scheme = str(get.get("scheme") or "HTTP").upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ProbeError(f"httpGet scheme {scheme} is not HTTP or HTTPS")
        return HttpGet(
            port=container_port(get["port"], container),
            path=str(get.get("path") or "/"),
            host=get.get("host") or None,
            scheme=scheme,
            headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or []),
        )
    if "tcpSocket" in spec:
        tcp = spec["tcpSocket"]
        return TcpSocket(port=container_port(tcp["port"], container), host=tcp.get("host") or None)
    if "exec" in spec:
        command = tuple(str(w) for w in spec["exec"].get("command") or [])
        if not command:
            raise ProbeError("exec probe without a command")
        return Exec(command)
    what = "grpc" if "grpc" in spec else "none given"
    raise ProbeError(f"probe action not supported by the rig agent: {what}")


def parse_probe(kind: Kind, spec: Obj, container: Obj) -> Probe:
    """One probe with the Kubernetes defaults filled in."""
    grace = spec.get("terminationGracePeriodSeconds")
    return Probe(
        kind=kind,
        action=_action(spec, container),
        initial_delay_s=float(spec.get("initialDelaySeconds") or 0),
        period_s=float(spec.get("periodSeconds") or 10),
        timeout_s=float(spec.get("timeoutSeconds") or 1),
        # The API server already insists on 1 for startup and liveness probes.
        success_threshold=int(spec.get("successThreshold") or 1),
        failure_threshold=int(spec.get("failureThreshold") or 3),
        grace_s=None if grace is None else float(grace),
    )


def container_probes(container: Obj) -> dict[Kind, Probe]:
    return {
        kind: parse_probe(kind, container[kind], container) for kind in Kind if container.get(kind)
    }


@dataclass
class _Streak:
    """Consecutive equal results of one probe."""

    last: bool | None = None
    count: int = 0

    def add(self, ok: bool) -> int:
        self.count = self.count + 1 if ok == self.last else 1
        self.last = ok
        return self.count


@dataclass
class ContainerHealth:
    """The probe results of one run of a container (a restarted container starts afresh)."""

    probes: Mapping[Kind, Probe]
    started: bool = field(init=False)
    failed: Kind | None = field(init=False, default=None)  # liveness/startup gave up: restart
    _readiness: bool = field(init=False)
    _streaks: dict[Kind, _Streak] = field(init=False)

    def __post_init__(self) -> None:
        self.started = Kind.STARTUP not in self.probes
        self._readiness = Kind.READINESS not in self.probes
        self._streaks = {kind: _Streak() for kind in self.probes}

    @property
    def ready(self) -> bool:
        return self.started and self._readiness and self.failed is None

    def wants(self, kind: Kind) -> bool:
        """Whether the probe runs now: startup until started, the others only after that."""
        if kind not in self.probes or self.failed is not None:
            return False
        return not self.started if kind is Kind.STARTUP else self.started

    def record(self, kind: Kind, ok: bool) -> bool:
        """Take one probe result; whether `started`, `ready` or `failed` changed."""
        if not self.wants(kind):
            return False
        probe = self.probes[kind]
        run = self._streaks[kind].add(ok)
        if run < (probe.success_threshold if ok else probe.failure_threshold):
            return False
        before = (self.started, self.ready, self.failed)
        if kind is Kind.READINESS:
            self._readiness = ok
        elif not ok:
            self.failed = kind
        elif kind is Kind.STARTUP:
            self.started = True
        return (self.started, self.ready, self.failed) != before
