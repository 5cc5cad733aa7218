"""Serving from zero and the exact split, through kaon's router on the rig, against KServe's
ModelServer in the same run.

kaon: an InferenceService with `replicas.min: 0` on the rig's process-agent pool (its replicas
are real V2 server processes), serving the same digits CNN as serving.py from the rig's S3
store, behind `kaon router` and `kaon run`. Each try waits until the service has scaled to zero
and its replica is gone, then times one V2 infer request to its `status.url` (held by the
router while the operator scales to one, the pod is scheduled and started, and the server
downloads and loads the model) until the answer.

KServe: its ModelServer (kserve_server.py) started as a process with the same artifact on
local disk, timed from the spawn to the first V2 infer answer. That is the least a cold start
of KServe takes: without Knative's activator nothing would hold the request, and KServe's own
scale from zero adds Knative's pod scheduling on top (knative/serving #9104).

Figures, into .bench/results.json:
- `serving.from_zero.p50_s`, `serving.from_zero.max_s`: kaon's from zero to the first answer,
  median and worst of `--tries` (10), against KServe's same figures (ratio < 1: kaon sooner);
- `serving.canary.split_error_points`: |canary share - 10%| over 2,000 requests through the
  router, in percentage points, a 10% canary on two replicas (one of each revision).

Run: `.venv/bin/python tests/bench/coldstart.py [--tries N]` (brings the rig up if needed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from results import record, table
from serving import MODEL, digits, free_port, json_doc, kserve_command, train_artifact

from kaon.builders.worker import STORE_ENV
from kaon_kernels.store import S3Store, s3_client
from kaon_rig import paths, rig, s3
from kaon_rig.config import load_config
from kaon_rig.kube import api_client

REPO = Path(__file__).resolve().parents[2]
NS = "bench-coldstart"
GROUP, VERSION, PLURAL = "kaon.dev", "v1alpha1", "inferenceservices"
IDLE_S = 10  # the smallest scaleToZeroAfterSeconds
JSON = {"Content-Type": "application/json"}
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


def progress(message: str) -> None:
    print(f"[coldstart {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait(fetch: Callable[[], T], done: Callable[[T], bool], what: str, timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what} (last: {value!r})")
        time.sleep(0.1)


def apply_file(path: Path) -> None:
    kubectl = paths.kubectl_binary()
    subprocess.run(
        [str(kubectl), "--kubeconfig", str(paths.kubeconfig_path("hub")), "apply", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def publish(model_dir: Path, core: client.CoreV1Api) -> tuple[str, dict[str, str]]:
    """The artifact in the rig's store; its URI and the store Secret's data."""
    found = core.read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    env = {var: base64.b64decode(found.data[key]).decode() for var, key, _ in STORE_ENV}
    prefix = f"s3://{s3.BUCKET}/bench-coldstart/{int(time.time())}"
    return S3Store(prefix, 1, s3_client(env)).publish(model_dir), found.data


def service(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": uri, "secretRef": {"name": "store"}},
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "placement": {"poolPreferences": [{"type": "cpu", "pool": "local"}]},
            **spec,
        },
    }


def infer(url: str, body: bytes, timeout_s: float = 180) -> tuple[int, str]:
    """(status, revision) of a V2 infer request to a service's URL (its model's name is the
    service's: the URL's last part)."""
    name = url.rsplit("/", 1)[1]
    request = urllib.request.Request(f"{url}/v2/models/{name}/infer", body)
    request.add_header("Content-Type", "application/json")
    with DIRECT.open(request, timeout=timeout_s) as answer:
        answer.read()
        return answer.status, answer.headers.get("X-Kaon-Revision", "")


def kserve_cold_start(model_dir: Path, body: bytes) -> float:
    """Spawn to the first infer answer."""
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        kserve_command(model_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", f"/v2/models/{MODEL}/infer", body, JSON)
                if conn.getresponse().status == 200:
                    return time.perf_counter() - began
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - began > 120:
                raise RuntimeError("KServe did not answer")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Processes:
    """`kaon run` and `kaon router` against the rig's hub (its admin kubeconfig)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "KUBECONFIG": str(paths.kubeconfig_path("hub")),
            "KAON_ROUTER_URL": self.url,
            "KAON_RUNTIME_IMAGE": "kaon/runtime:bench",
            "KAON_METRICS_PORT": "0",
        }
        kaon = [sys.executable, "-m", "kaon.cli"]
        router = [*kaon, "router", "--host", "127.0.0.1", "--port", str(self.port)]
        self.procs = [
            subprocess.Popen(
                command,
                env=env,
                stdout=(log_dir / f"{command[3]}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for command in (
                [*kaon, "run", "--standalone"],
                [*router, "--hold-timeout-seconds", "180"],
            )
        ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def status(custom: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    try:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    found: dict[str, Any] = body.get("status") or {}
    return found


def from_zero(
    custom: client.CustomObjectsApi, west: client.CoreV1Api, body: bytes, tries: int
) -> list[float]:
    times = []
    for i in range(tries):
        url = wait(
            lambda: status(custom, "zero"),
            lambda s: s.get("state") == "ScaledToZero",
            "scaled to zero",
            180,
        )["url"]
        wait(
            lambda: west.list_namespaced_pod(NS, label_selector="kaon.dev/inferenceservice=zero"),
            lambda pods: not pods.items,
            "replica gone",
            120,
        )
        began = time.perf_counter()
        code, _ = infer(url, body)
        elapsed = time.perf_counter() - began
        if code != 200:
            raise RuntimeError(f"the first request got {code}")
        times.append(elapsed)
        progress(f"from zero, try {i + 1}: {elapsed:.2f}s")
    return times


def clear(custom: client.CustomObjectsApi) -> None:
    """What an interrupted run left."""
    for name in ("zero", "split"):
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    for name in ("zero", "split"):
        wait(lambda n=name: status(custom, n), lambda s: not s, f"{name} deleted", 120)


def split_error(custom: client.CustomObjectsApi, body: bytes, router: str) -> float:
    svc = wait(
        lambda: status(custom, "split"),
        lambda s: (
            s.get("state") == "Ready"
            and s.get("readyReplicas") == 2
            and s.get("url", "").startswith(router)
        ),
        "both revisions ready",
        300,
    )
    shares: Counter[str] = Counter()
    for _ in range(2000):
        shares[infer(svc["url"], body)[1]] += 1
    progress(f"2000 requests: {dict(shares)}")
    return abs(100 * shares["canary"] / 2000 - 10)


def main(tries: int) -> None:
    rig.up(load_config())
    hub = api_client(paths.kubeconfig_path("hub"))
    core, custom = client.CoreV1Api(hub), client.CustomObjectsApi(hub)
    west = client.CoreV1Api(api_client(paths.kubeconfig_path("west")))
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        apply_file(crd)
    apply_file(REPO / "examples" / "clusters" / "local.yaml")
    for api in (core, west):
        try:
            api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        except ApiException as exc:
            if exc.status != 409:
                raise
    body = json_doc(digits()[0])
    with tempfile.TemporaryDirectory(prefix="kaon-coldstart-") as tmp:
        progress("training the model")
        train_artifact(Path(tmp))
        model_dir = Path(tmp) / "model"
        uri, data = publish(model_dir, core)
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name="store"), data=data)
        try:
            core.create_namespaced_secret(NS, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
        kserve = []
        for i in range(tries):
            kserve.append(kserve_cold_start(model_dir, body))
            progress(f"KServe, try {i + 1}: {kserve[-1]:.2f}s")
        processes = Processes(Path(tmp))
        try:
            clear(custom)  # what an interrupted run left (the operator removes its finalizers)
            idle = {
                "replicas": {"min": 0, "max": 1},
                "autoscaling": {"scaleToZeroAfterSeconds": IDLE_S},
            }
            manifests = Path(tmp) / "services.yaml"
            canary = {"model": {"uri": uri, "secretRef": {"name": "store"}}, "trafficPercent": 10}
            split = service("split", uri, replicas={"min": 2, "max": 2}, canary=canary)
            manifests.write_text(yaml.safe_dump_all([service("zero", uri, **idle), split]))
            apply_file(manifests)
            error = split_error(custom, body, processes.url)
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "split")
            ours = from_zero(custom, west, body, tries)
        finally:
            clear(custom)
            processes.stop()
    entries = {
        name: record(name, *figure)
        for name, figure in {
            "serving.from_zero.p50_s": (
                statistics.median(ours),
                "s",
                statistics.median(kserve),
            ),
            "serving.from_zero.max_s": (max(ours), "s", max(kserve)),
            "serving.canary.split_error_points": (error, "points"),
        }.items()
    }
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=10, help="cold starts of each (10)")
    main(parser.parse_args().tries)
