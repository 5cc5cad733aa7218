"""Bring the local multi-cluster rig up and down with kwokctl's binary runtime.

Each cluster is a real etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok,
run as local processes. `up` is idempotent: running clusters are reused, stopped ones restarted,
ones built from an older configuration replaced.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon.api.names import GPU_RESOURCE
from kaon.api.resources import parse
from kaon_rig import agents, build, paths, s3
from kaon_rig.config import (
    POOL_LABEL,
    RIG_LABEL,
    RigCluster,
    RigConfig,
    node_manifests,
    stages_text,
)
from kaon_rig.kube import (
    Obj,
    api_client,
    create_node,
    is_reachable,
    is_ready,
    list_nodes,
    node_is_ready,
    reclaim_kwok_leases,
)
from kaon_rig.versions import VERSIONS

CONFIG_STAMP = "kaon-rig.sha256"
NODE_READY_TIMEOUT_S = 120


class RigError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[kaon rig] {msg}", file=sys.stderr, flush=True)


def _kwok_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KWOK_WORKDIR=str(paths.rig_dir()),
        KWOK_RUNTIME="binary",
        KWOK_KUBE_BINARY_PREFIX=str(paths.kube_bin_dir()),
        KWOK_ETCD_BINARY=str(paths.etcd_binary()),
        KWOK_CONTROLLER_BINARY=str(paths.kwok_bin_dir() / "kwok"),
    )
    return env


def _kwokctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(paths.kwokctl_binary()), *args],
        check=False,
        env=_kwok_env(),
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise RigError(f"kwokctl {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def _stages_file() -> Path:
    path = paths.rig_dir() / "stages.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = stages_text()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _create_args(name: str) -> list[str]:
    return [
        "create",
        "cluster",
        "--name",
        name,
        "--disable-qps-limits",
        "--config",
        str(_stages_file()),
        # The binary runtime starts kwok with --manage-all-nodes=true; later flags win, so kwok
        # leaves nodes without the fake-node annotation to a process agent.
        "--extra-args",
        "kwok-controller=manage-all-nodes=false",
        "--extra-args",
        "kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--wait",
        "2m",
    ]


def _config_digest(name: str) -> str:
    h = hashlib.sha256()
    h.update(stages_text().encode())
    h.update(" ".join(_create_args(name)).encode())
    h.update(repr(VERSIONS).encode())
    return h.hexdigest()


def _cluster_dir(name: str) -> Path:
    return paths.rig_dir() / "clusters" / name


def existing_clusters() -> list[str]:
    if not paths.kwokctl_binary().exists():
        return []
    out = _kwokctl("get", "clusters", check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _ensure_cluster(name: str) -> str:
    """Make the cluster run with the current configuration; returns what was done."""
    kubeconfig = paths.kubeconfig_path(name)
    stamp = _cluster_dir(name) / CONFIG_STAMP
    digest = _config_digest(name)
    exists = name in existing_clusters()
    if exists and (not stamp.exists() or stamp.read_text() != digest):
        _log(f"{name}: built from an older configuration, re-creating")
        _kwokctl("delete", "cluster", "--name", name, check=False)
        exists = False
    if exists and is_reachable(kubeconfig):
        return "reused"
    if exists:
        _log(f"{name}: stopped, starting")
        if _kwokctl("start", "cluster", "--name", name, check=False).returncode == 0 and (
            _wait_reachable(kubeconfig, 60)
        ):
            with api_client(kubeconfig) as api:
                reclaim_kwok_leases(api)
            return "restarted"
        _log(f"{name}: could not be restarted, re-creating")
        _kwokctl("delete", "cluster", "--name", name, check=False)
    _kwokctl(*_create_args(name))
    stamp.write_text(digest)
    if not _wait_reachable(kubeconfig, 60):
        raise RigError(f"cluster {name} was created but its API server does not answer")
    return "created"


def _wait_reachable(kubeconfig: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(kubeconfig):
            return True
        time.sleep(0.5)
    return False


def sync_nodes(cluster: RigCluster) -> None:
    """Create the pools' nodes, remove rig nodes no longer described, wait until all are Ready."""
    wanted = {m["metadata"]["name"]: m for m in node_manifests(cluster)}
    selector = f"{RIG_LABEL}=true"
    with api_client(paths.kubeconfig_path(cluster.name)) as api:
        present = {n["metadata"]["name"] for n in list_nodes(api, selector)}
        for name in present - wanted.keys():
            client.CoreV1Api(api).delete_node(name)
        for name in wanted.keys() - present:
            create_node(api, wanted[name])
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        while True:
            nodes = list_nodes(api, selector)
            ready = [n for n in nodes if node_is_ready(n)]
            if len(ready) == len(wanted) == len(nodes):
                return
            if time.monotonic() > deadline:
                raise RigError(
                    f"cluster {cluster.name}: {len(ready)}/{len(wanted)} nodes Ready after "
                    f"{NODE_READY_TIMEOUT_S}s"
                )
            time.sleep(0.5)


MEMBER_SECRET_NAMESPACE = "kaon-system"
_FILE_KEYS = {
    "certificate-authority": "certificate-authority-data",
    "client-certificate": "client-certificate-data",
    "client-key": "client-key-data",
}


def inline_kubeconfig(path: Path) -> dict[str, Any]:
    """The kubeconfig with its certificate files embedded, so it works from a Secret."""
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    for section, inner in (("clusters", "cluster"), ("users", "user")):
        for entry in config.get(section) or []:
            fields = entry.get(inner) or {}
            for file_key, data_key in _FILE_KEYS.items():
                if file_key in fields:
                    raw = Path(fields.pop(file_key)).read_bytes()
                    fields[data_key] = base64.b64encode(raw).decode()
    return config


def member_secret_name(cluster: str) -> str:
    return f"rig-{cluster}-kubeconfig"


def _apply_secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "kaon-rig"}
        ),
        string_data=data,
    )
    try:
        core.create_namespaced_secret(namespace, secret)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, secret)


def _register_member_secrets(config: RigConfig, hub: str = "hub") -> None:
    """Put each member's kubeconfig in a Secret on the hub, for ComputeClusters to reference,
    and the S3 server's endpoint and key pair, for TrainingJobs to reference."""
    with api_client(paths.kubeconfig_path(hub)) as api:
        core = client.CoreV1Api(api)
        try:
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=MEMBER_SECRET_NAMESPACE))
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        for cluster in config.clusters:
            if cluster.name == hub:
                continue
            text = yaml.safe_dump(inline_kubeconfig(paths.kubeconfig_path(cluster.name)))
            name = member_secret_name(cluster.name)
            _apply_secret(core, MEMBER_SECRET_NAMESPACE, name, {"kubeconfig": text})
        _apply_secret(core, s3.SECRET_NAMESPACE, s3.SECRET_NAME, s3.secret_data())


def up(config: RigConfig, config_path: Path | None = None) -> dict[str, str]:
    """Build missing binaries, then make every cluster of the rig run with its node pools."""
    build.build_all()
    paths.rig_dir().mkdir(parents=True, exist_ok=True)
    s3_action = s3.start()  # it starts while the clusters do

    # kwokctl picks free ports when it creates a cluster: create one at a time, or two may pick
    # the same port. Nodes are then synced in parallel.
    actions = {c.name: _ensure_cluster(c.name) for c in config.clusters}
    with ThreadPoolExecutor(max_workers=len(config.clusters)) as pool:
        list(pool.map(sync_nodes, config.clusters))
    if s3.ensure() != "reused":
        s3_action = "restarted"
    _register_member_secrets(config)
    # An agent of a cluster created anew still talks to the API server that was deleted.
    created = {name for name, action in actions.items() if action == "created"}
    agents.stop([node for cluster, node in agents.agent_nodes(config) if cluster in created])
    for node in agents.start(config, config_path):
        _log(f"process agent for node {node} started, log {paths.agent_dir(node) / 'agent.log'}")
    _wait_agent_nodes(config)
    for name, action in actions.items():
        _log(f"{name}: {action}, kubeconfig {paths.kubeconfig_path(name)}")
    _log(f"s3: {s3_action}, {s3.ENDPOINT} bucket {s3.BUCKET}, Secret {s3.SECRET_NAME}")
    return actions


def _wait_agent_nodes(config: RigConfig) -> None:
    for cluster, node in agents.agent_nodes(config):
        with api_client(paths.kubeconfig_path(cluster)) as api:
            deadline = time.monotonic() + NODE_READY_TIMEOUT_S
            while not any(
                n["metadata"]["name"] == node and node_is_ready(n) for n in list_nodes(api)
            ):
                if time.monotonic() > deadline:
                    log = paths.agent_dir(node) / agents.LOG_FILE
                    raise RigError(f"agent node {node} not Ready; see {log}")
                time.sleep(0.5)


def stop_cluster(name: str, timeout_s: float = 30.0) -> None:
    """Stop a cluster's processes, keeping its state (a member that went away).

    kwokctl returns once it has signalled them; an API server still shutting down holds its
    port, and a start before it has gone fails with "address already in use". So this waits.
    """
    _kwokctl("stop", "cluster", "--name", name)
    deadline = time.monotonic() + timeout_s
    while _cluster_processes(name):
        if time.monotonic() > deadline:
            raise RigError(f"cluster {name}: processes still running {timeout_s:.0f}s after stop")
        time.sleep(0.2)


def lose_cluster(name: str, config: RigConfig) -> None:
    """The cluster and its machines gone: its process agents killed with their pods'
    processes (a stopped API server alone leaves them running, training on), then the
    cluster stopped. `start_cluster`, then `agents.start`, bring it back."""
    agents.stop([node for cluster, node in agents.agent_nodes(config) if cluster == name])
    stop_cluster(name)


def start_cluster(name: str) -> None:
    """Start a stopped cluster again with its state."""
    _kwokctl("start", "cluster", "--name", name)
    kubeconfig = paths.kubeconfig_path(name)
    if not _wait_reachable(kubeconfig, 60):
        raise RigError(f"cluster {name} did not answer after start")
    with api_client(kubeconfig) as api:
        reclaim_kwok_leases(api)


def _cluster_processes(name: str) -> list[int]:
    """Processes kwokctl started for the cluster: their argv[0] is in the cluster's bin/ (links
    to the cached binaries, so /proc/PID/exe does not tell)."""
    bin_dir = str(paths.rig_dir() / "clusters" / name / "bin") + os.sep
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith(bin_dir):
            pids.append(int(proc.name))
    return pids


def _leftover_processes() -> list[int]:
    """Processes still running a binary from the rig's work directory (e.g. a failed create)."""
    root = str(paths.rig_dir().resolve())
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "exe").startswith(root + os.sep):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def down() -> list[str]:
    """Delete every cluster in the rig's work directory, stop strays, remove the directory."""
    agents.stop_all()
    s3.stop()
    names = existing_clusters()
    for name in names:
        _kwokctl("delete", "cluster", "--name", name, check=False)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _leftover_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        time.sleep(0.5)
    shutil.rmtree(paths.rig_dir(), ignore_errors=True)
    return names


@dataclass(frozen=True)
class PoolStatus:
    name: str
    nodes: int
    ready: int
    cpu: int
    gpus: int

    @classmethod
    def of(cls, name: str, nodes: list[Obj]) -> PoolStatus:
        def total(resource: str) -> int:
            return int(
                sum(parse(n["status"].get("allocatable", {}).get(resource, "0")) for n in nodes)
            )

        return cls(
            name, len(nodes), sum(map(node_is_ready, nodes)), total("cpu"), total(GPU_RESOURCE)
        )


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    state: str  # running | unreachable | absent
    server: str
    pools: list[PoolStatus]


def status(config: RigConfig) -> list[ClusterStatus]:
    present = set(existing_clusters())
    result = []
    for cluster in config.clusters:
        kubeconfig = paths.kubeconfig_path(cluster.name)
        if cluster.name not in present:
            result.append(ClusterStatus(cluster.name, "absent", "", []))
        elif not is_reachable(kubeconfig):
            result.append(ClusterStatus(cluster.name, "unreachable", "", []))
        else:
            with api_client(kubeconfig) as api:
                server = str(api.configuration.host)
                nodes = list_nodes(api)
            pools: dict[str, list[Obj]] = {}
            for n in nodes:
                pool = n["metadata"].get("labels", {}).get(POOL_LABEL, "-")
                pools.setdefault(pool, []).append(n)
            stats = [PoolStatus.of(name, ns) for name, ns in sorted(pools.items())]
            result.append(ClusterStatus(cluster.name, "running", server, stats))
    return result
