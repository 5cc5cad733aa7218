"""Helpers for tests against the rig: a handle on its clusters, and bounded waiting."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon.api.names import GPU_RESOURCE
from kaon_rig import paths
from kaon_rig.config import (
    GPU_TAINT_KEY,
    POOL_LABEL,
    SIM_DURATION,
    SIM_EXIT_CODE,
    SIM_MESSAGE,
    RigConfig,
)
from kaon_rig.kube import api_client

T = TypeVar("T")


@dataclass
class Rig:
    """The running rig: its description and one API client per cluster."""

    config: RigConfig
    clients: dict[str, client.ApiClient] = field(default_factory=dict)

    def api(self, cluster: str) -> client.ApiClient:
        if cluster not in self.clients:
            self.clients[cluster] = api_client(self.kubeconfig(cluster))
        return self.clients[cluster]

    def core(self, cluster: str) -> client.CoreV1Api:
        return client.CoreV1Api(self.api(cluster))

    def kubeconfig(self, cluster: str) -> Path:
        return paths.kubeconfig_path(cluster)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.config.clusters]


KSERVE_PY = Path(__file__).resolve().parent.parent / ".venv" / "kserve" / "bin" / "python"
KSERVE_CLIENT = Path(__file__).resolve().parent / "e2e" / "kserve_v2_client.py"


def kserve_client(
    url: str,
    model: str,
    samples: Any,
    work: Path,
    ca: Path | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """What KServe's own V2 REST client (in the KServe venv) found at `url`: readiness, and
    the answers to `samples` as JSON and as binary tensors (tests/e2e/kserve_v2_client.py);
    over HTTPS verified with `ca` (else unverified), with `token` as a bearer token."""
    inputs = work / "kserve-samples.json"
    inputs.write_text(json.dumps(samples.tolist()))
    env = dict(os.environ)
    env |= {"KAON_CLIENT_CA": str(ca)} if ca else {}
    env |= {"KAON_CLIENT_TOKEN": token} if token else {}
    done = subprocess.run(
        [str(KSERVE_PY), str(KSERVE_CLIENT), url, model, str(inputs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(url: str) -> int:
    """The status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {value}")
        time.sleep(interval_s)


def sim_pod(
    name: str,
    *,
    pool: str,
    gpus: int = 0,
    exit_code: int | None = None,
    duration: str = "1s",
    message: str | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if exit_code is not None:
        annotations = {SIM_EXIT_CODE: str(exit_code), SIM_DURATION: duration}
        if message is not None:
            annotations[SIM_MESSAGE] = message
    limits = {"cpu": "1", "memory": "1Gi"} | ({GPU_RESOURCE: str(gpus)} if gpus else {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {POOL_LABEL: pool},
            "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {"name": "main", "image": "kaon/runtime:test", "resources": {"limits": limits}}
            ],
        },
    }


# How the RBAC authorizer words a refusal: `User "system:serviceaccount:ns:sa" cannot patch
# resource "trainingjobs" in API group "kaon.dev" ...`.
RBAC_DENIAL = re.compile(r'User \\?"[^"\\]+\\?" cannot [a-z]+ ')


class OperatorProcess:
    """`kaon run` (or another `kaon` command: `router`) as a user runs it, against the rig's
    hub, logging to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        command: str = "run",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args
        self.env = env or {}
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.excused: list[tuple[int, int]] = []  # log byte ranges where denials are expected

    def start(self) -> None:
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            KAON_RUNTIME_IMAGE="kaon/runtime:test",
            **self.env,
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kaon.cli", self.command, *self.args],
                env=env,
                stdout=log,
                stderr=log,
            )

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def excuse_denials(self, since: int) -> None:
        """Denials logged from byte `since` until now were expected: a restarted API server
        refuses every request until it has loaded its RBAC objects."""
        self.excused.append((since, self.log_size()))

    def rbac_denials(self) -> list[str]:
        """Log lines where the API server refused the operator's identity a permission."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        found, at = [], 0
        for raw in data.splitlines(keepends=True):
            line = raw.decode(errors="replace")
            excused = any(start <= at < end for start, end in self.excused)
            if RBAC_DENIAL.search(line) and not excused:
                found.append(line.rstrip("\n"))
            at += len(raw)
        return found

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


GROUP, VERSION = "kaon.dev", "v1alpha1"


class Jobs:
    """TrainingJobs (or another kaon kind) on the hub, as a user handles them."""

    def __init__(
        self, hub: client.ApiClient, kind: str = "TrainingJob", plural: str = "trainingjobs"
    ) -> None:
        self.api = client.CustomObjectsApi(hub)
        self.kind, self.plural = kind, plural

    def create(
        self,
        ns: str,
        name: str,
        spec: dict[str, Any],
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        return self.api.create_namespaced_custom_object(GROUP, VERSION, ns, self.plural, body)  # type: ignore[no-any-return]

    def get(self, ns: str, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, ns, self.plural, name)  # type: ignore[no-any-return]

    def patch_spec(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, ns, self.plural, name, {"spec": spec}
        )

    def delete(self, ns: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, ns, self.plural, name)

    def exists(self, ns: str, name: str) -> bool:
        try:
            self.get(ns, name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def wait(
        self,
        ns: str,
        name: str,
        done: Callable[[dict[str, Any]], bool],
        what: str,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        return wait_for(lambda: self.get(ns, name), done, f"{name}: {what}", timeout_s)

    def wait_state(
        self, ns: str, name: str, *states: str, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        return self.wait(ns, name, lambda j: state(j) in states, f"state in {states}", timeout_s)


def state(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("state", ""))


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def events(kaon_rig: Rig, ns: str, kind: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the hub's Events on one object, oldest first."""
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    found = kaon_rig.core("hub").list_namespaced_event(ns, field_selector=selector).items
    found.sort(key=lambda e: e.metadata.creation_timestamp)
    return [(e.type, e.reason, e.message) for e in found]


def wait_event(
    kaon_rig: Rig, ns: str, kind: str, name: str, reason: str, timeout_s: float = 30.0
) -> list[tuple[str, str, str]]:
    """The object's Events once one with the reason is among them (the operator posts them
    after the status write they follow)."""
    return wait_for(
        lambda: events(kaon_rig, ns, kind, name),
        lambda evs: any(r == reason for _, r, _ in evs),
        f"a {reason} Event on {kind} {ns}/{name}",
        timeout_s,
    )


def worker_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/managed-by=kaon,kaon.dev/job-name={job}"
    return list(core.list_namespaced_pod(ns, label_selector=selector).items)


def run_kubectl(
    kaon_rig: Rig, *args: str, stdin: str | None = None, cluster: str = "hub"
) -> subprocess.CompletedProcess[str]:
    """The rig's kubectl as admin (or as whoever --as names); never raises on failure."""
    return subprocess.run(
        [str(paths.kubectl_binary()), "--kubeconfig", str(kaon_rig.kubeconfig(cluster)), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def kubectl(kaon_rig: Rig, *args: str, cluster: str = "hub", stdin: str | None = None) -> str:
    """The rig's own kubectl, as a user runs it; its stdout (CalledProcessError on failure)."""
    done = run_kubectl(kaon_rig, *args, stdin=stdin, cluster=cluster)
    done.check_returncode()
    return done.stdout


REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kaon"
RELEASE = "kaon"  # the chart names its objects after it: ServiceAccount kaon, kaon-user
RELEASE_NAMESPACE = "kaon-system"


def helm(kaon_rig: Rig, *args: str, cluster: str = "hub") -> str:
    """The rig's own helm against one of its clusters; its stdout."""
    return subprocess.run(
        [str(paths.helm_binary()), "--kubeconfig", str(kaon_rig.kubeconfig(cluster)), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def install_chart(kaon_rig: Rig, *sets: str, cluster: str = "hub") -> None:
    """`helm upgrade --install` of charts/kaon with the operator Deployment at 0 replicas: kwok
    nodes run no containers, so the tests run the operator as a local process under the chart's
    ServiceAccount instead."""
    values = [arg for s in ("operator.replicas=0", *sets) for arg in ("--set", s)]
    helm(
        kaon_rig,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        *values,
        cluster=cluster,
    )


def register_cluster(kaon_rig: Rig, path: Path) -> str:
    """Create the ComputeCluster of a manifest (kept if it exists); its name."""
    body = yaml.safe_load(path.read_text())
    try:
        client.CustomObjectsApi(kaon_rig.api("hub")).create_cluster_custom_object(
            GROUP, VERSION, "computeclusters", body
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    return str(body["metadata"]["name"])


def wait_members_ready(kaon_rig: Rig, names: tuple[str, ...] = ("east", "west")) -> None:
    objects = client.CustomObjectsApi(kaon_rig.api("hub"))
    for name in names:
        wait_for(
            lambda n=name: objects.get_cluster_custom_object(GROUP, VERSION, "computeclusters", n),
            lambda cc: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (cc.get("status") or {}).get("conditions") or []
            ),
            f"ComputeCluster {name} Ready",
        )


def bound_claim(kaon_rig: Rig, cluster: str, namespace: str, claim: str, host_dir: Path) -> str:
    """A claim in the member bound to a PersistentVolume on a directory of this machine."""
    core = kaon_rig.core(cluster)
    pv_name = f"{claim}-{namespace}"[:63]
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name, "labels": {"kaon.dev/test": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(host_dir)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(claim, namespace),
        lambda c: c.status.phase == "Bound",
        f"claim {claim} bound in {cluster}",
    )
    return claim


MEMBER_OF = {"east-local": "east", "west-local": "west"}  # process-agent pool -> rig member


def kaon_rig_cli(*args: str) -> str:
    """`kaon rig ARGS` as a user runs it (e.g. `stop west`: the member lost with its machine)."""
    done = subprocess.run(
        [sys.executable, "-m", "kaon.cli", "rig", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
