"""How the rig's process agent runs a pod's container as a local process (no I/O here).

A pod names container paths (volume mounts, its termination message file); the agent gives each
a directory or file on this machine and rewrites every environment value, argument and working
directory that points into one of them. Each pod has an IP of its own (`podnet`), which the
downward API (`status.podIP`) hands to the container. Names of the cluster's DNS for pods behind a
headless Service become 127.0.0.1, where a gang's rendezvous is found (torch's store listens on
every local address), and the torchrun rendezvous port `MASTER_PORT` becomes a free local port
shared by the pods of one Service and attempt, so two gangs never collide. `python`/`python3` run
as the agent's own interpreter, which has the kaon runtime installed; the image itself is never
pulled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from kaon.api.names import ATTEMPT_LABEL
from kaon.api.resources import parse

Obj = dict[str, Any]
Lookup = Callable[[str, str], Mapping[str, str] | None]  # (configmaps|secrets, name) -> data
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
DEFAULT_GRACE_S = 30.0
POD_DNS = re.compile(
    r"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2}\.svc(\.cluster\.local)?\b"
)
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")
PYTHONS = ("python", "python3")


class PodRunError(ValueError):
    """A pod this agent cannot run; `reason` goes into the pod's status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LocalRun:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_log: Path
    fallback_to_logs: bool  # terminationMessagePolicy FallbackToLogsOnError
    grace_s: float
    mounts: tuple[tuple[str, Path], ...] = ()
    python: str = "python"

    def local_argv(self, words: list[str]) -> list[str]:
        """Another command of this container (an exec probe's), mapped as its own command."""
        return local_argv(words, self.env, list(self.mounts), self.python)


@dataclass(frozen=True)
class Machine:
    """What the agent knows of itself: where things go and how to reach the API server."""

    pod_dir: Path
    python: str
    api_host: str
    api_port: str
    base_env: Mapping[str, str]
    node_ip: str = "127.0.0.1"
    pod_ip: str = "127.0.0.1"


def container(pod: Obj) -> Obj:
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if len(containers) != 1 or spec.get("initContainers"):
        raise PodRunError("UnsupportedPod", "the rig agent runs pods of exactly one container")
    return dict(containers[0])


def volume_sources(pod: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}


def mounts(pod: Obj, volume_dirs: Mapping[str, Path], pod_dir: Path) -> list[tuple[str, Path]]:
    """(container path, host path), longest container path first, including the message file."""
    c = container(pod)
    out = []
    for m in c.get("volumeMounts") or []:
        if m["name"] not in volume_dirs:
            raise PodRunError("UnsupportedVolume", f"volume {m['name']} has no local directory")
        host = volume_dirs[m["name"]] / (m.get("subPath") or "")
        out.append((str(PurePosixPath(m["mountPath"])), host))
    term = c.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    out.append((term, pod_dir / "termination-log"))
    return sorted(out, key=lambda m: len(m[0]), reverse=True)


def remap(value: str, table: list[tuple[str, Path]]) -> str:
    """A container path inside a mount becomes the host path; anything else is left alone."""
    for inside, host in table:
        if value == inside:
            return str(host)
        if value.startswith(inside.rstrip("/") + "/"):
            return str(host / value[len(inside.rstrip("/")) + 1 :])
    return value


def field_value(pod: Obj, path: str, node_ip: str, pod_ip: str) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": node_ip,
        "status.hostIPs": node_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return str(simple[path])
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    raise PodRunError("UnsupportedField", f"fieldRef {path} is not supported by the rig agent")


def resource_value(c: Obj, ref: Obj) -> str:
    kind, _, name = ref["resource"].partition(".")
    amounts = (c.get("resources") or {}).get(kind) or {}
    raw = amounts.get(name) or ((c.get("resources") or {}).get("limits") or {}).get(name)
    if raw is None:
        return "0"
    divisor = parse(ref.get("divisor") or "1")
    return str(math.ceil(parse(raw) / (divisor or Decimal(1))))


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` escapes a `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return VAR_REF.sub(sub, value)


def _ref_value(kind: str, ref: Obj, lookup: Lookup) -> str | None:
    data = lookup(kind, ref["name"])
    value = None if data is None else data.get(ref["key"])
    if value is None and not ref.get("optional"):
        raise PodRunError(
            "CreateContainerConfigError", f"{kind[:-1]} {ref['name']} has no key {ref['key']}"
        )
    return value


def container_env(pod: Obj, machine: Machine, lookup: Lookup) -> dict[str, str]:
    """The container's environment as a kubelet would build it (envFrom, then env in order)."""
    c = container(pod)
    env: dict[str, str] = {}
    for source in c.get("envFrom") or []:
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key in source:
                data = lookup(kind, source[key]["name"])
                if data is None and not source[key].get("optional"):
                    raise PodRunError(
                        "CreateContainerConfigError", f"{kind[:-1]} {source[key]['name']} missing"
                    )
                env.update({source.get("prefix", "") + k: v for k, v in (data or {}).items()})
    for item in c.get("env") or []:
        frm = item.get("valueFrom")
        if frm is None:
            env[item["name"]] = _expand(str(item.get("value", "")), env)
            continue
        value: str | None
        if "fieldRef" in frm:
            value = field_value(pod, frm["fieldRef"]["fieldPath"], machine.node_ip, machine.pod_ip)
        elif "resourceFieldRef" in frm:
            value = resource_value(c, frm["resourceFieldRef"])
        elif "configMapKeyRef" in frm:
            value = _ref_value("configmaps", frm["configMapKeyRef"], lookup)
        elif "secretKeyRef" in frm:
            value = _ref_value("secrets", frm["secretKeyRef"], lookup)
        else:
            raise PodRunError("UnsupportedField", f"env {item['name']}: unsupported valueFrom")
        if value is not None:
            env[item["name"]] = value
    return env


def cpu_threads(c: Obj) -> int:
    res = c.get("resources") or {}
    raw = (res.get("limits") or {}).get("cpu") or (res.get("requests") or {}).get("cpu") or "1"
    return max(1, math.ceil(parse(raw)))


def plan(
    pod: Obj,
    machine: Machine,
    volume_dirs: Mapping[str, Path],
    lookup: Lookup,
    master_port: int | None = None,
) -> LocalRun:
    """The process to start for the pod's container."""
    c = container(pod)
    command = [str(x) for x in c.get("command") or []]
    if not command:
        raise PodRunError("UnsupportedPod", "the rig agent needs an explicit command (no images)")
    table = mounts(pod, volume_dirs, machine.pod_dir)
    own = container_env(pod, machine, lookup)
    if master_port is not None and "MASTER_PORT" in own:
        own["MASTER_PORT"] = str(master_port)
    own = {k: POD_DNS.sub(machine.node_ip, remap(v, table)) for k, v in own.items()}
    spec = pod.get("spec") or {}
    env = {
        **machine.base_env,
        "HOSTNAME": spec.get("hostname") or pod["metadata"]["name"],
        "HOME": str(machine.pod_dir),
        "OMP_NUM_THREADS": str(cpu_threads(c)),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    if spec.get("automountServiceAccountToken", True):
        env |= {
            "KUBERNETES_SERVICE_HOST": machine.api_host,
            "KUBERNETES_SERVICE_PORT": machine.api_port,
        }
    env |= own
    argv = local_argv(command + [str(a) for a in c.get("args") or []], env, table, machine.python)
    workdir = c.get("workingDir")
    grace = spec.get("terminationGracePeriodSeconds")
    return LocalRun(
        argv=argv,
        env=env,
        cwd=Path(remap(workdir, table)) if workdir else machine.pod_dir,
        termination_log=machine.pod_dir / "termination-log",
        fallback_to_logs=c.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        grace_s=float(DEFAULT_GRACE_S if grace is None else grace),
        mounts=tuple(table),
        python=machine.python,
    )


def local_argv(
    words: list[str], env: Mapping[str, str], table: list[tuple[str, Path]], python: str
) -> list[str]:
    """`$(VAR)` expanded, paths inside mounts remapped, `python` as the agent's interpreter."""
    argv = [remap(_expand(w, env), table) for w in words]
    if argv and argv[0] in PYTHONS:
        argv[0] = python
    return argv


def rendezvous_key(pod: Obj) -> tuple[str, str, str] | None:
    """Pods that share a headless Service (subdomain) and attempt share one rendezvous port."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    if not spec.get("subdomain"):
        return None
    attempt = (meta.get("labels") or {}).get(ATTEMPT_LABEL, "")
    return meta.get("namespace", ""), spec["subdomain"], attempt
