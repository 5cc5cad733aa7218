"""kaon's router in front of real V2 servers on the process-agent pool: one address per service
(status.url), a service at zero replicas that answers its first request, and a canary that gets
exactly its share of the requests."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from kubernetes import client
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from kaon.builders.worker import STORE_ENV
from kaon_kernels.artifact import save_artifact
from kaon_kernels.config import CNNConfig, ModelConfig
from kaon_kernels.models import build_model
from kaon_kernels.serve.model import Engine
from kaon_kernels.store import S3Store, s3_client
from kaon_rig import s3

from kaonrig import (
    MEMBER_OF,
    Jobs,
    Rig,
    condition,
    kaon_rig_cli,
    kserve_client,
    state,
    wait_for,
)

SHAPE = (1, 8, 8)
CFG = ModelConfig(family="cnn", cnn=CNNConfig(channels=[4], hidden_units=16))
TIMEOUT_S = 240.0
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
IMAGES = load_digits().images[-32:].astype(np.float32)[:, None, :, :]


@pytest.fixture(scope="module")
def artifacts(kaon_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two models of different weights in the rig's S3 store (stable and canary), and the
    labels each gives IMAGES."""
    found = kaon_rig.core("hub").read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    env = {var: base64.b64decode(found.data[key]).decode() for var, key, _ in STORE_ENV}
    out: dict[str, Any] = {"secret": found.data}
    for seed, revision in enumerate(("stable", "canary")):
        torch.manual_seed(seed)
        model = build_model(CFG, SHAPE, 10).eval()
        written = tmp_path_factory.mktemp(revision)
        save_artifact(written, model, CFG, SHAPE, 10, 4.9, 6.0, "digits")
        prefix = f"s3://{s3.BUCKET}/test-router-{uuid.uuid4().hex[:8]}/{revision}"
        uri = S3Store(prefix, 1, s3_client(env)).publish(written)
        labels = Engine(written, "digits").forward(torch.from_numpy(IMAGES)).outputs["label"]
        out[revision] = (uri, labels.rows)
    return out


def store_secret(kaon_rig: Rig, namespace: str, data: dict[str, str]) -> None:
    meta = client.V1ObjectMeta(name="store")
    kaon_rig.core("hub").create_namespaced_secret(
        namespace, client.V1Secret(metadata=meta, data=data)
    )


def service(uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "model": {"uri": uri, "secretRef": {"name": "store"}},
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "placement": {"poolPreferences": [{"type": "cpu", "pool": "local"}]},
        **spec,
    }


def create_ready(
    services: Jobs, namespace: str, name: str, spec: dict[str, Any], replicas: int
) -> dict[str, Any]:
    """The service created, once Ready with `replicas` ready replicas."""
    services.create(namespace, name, spec)
    return services.wait(
        namespace,
        name,
        lambda s: state(s) == "Ready" and s["status"].get("readyReplicas") == replicas,
        f"{replicas} ready replicas",
        TIMEOUT_S,
    )


def infer(url: str, name: str) -> tuple[str, list[Any]]:
    """(revision that answered, labels) of one V2 JSON request to IMAGES[:4] through `url`."""
    doc = {"inputs": [{"name": "input", "shape": [4, 1, 8, 8], "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = IMAGES[:4].reshape(-1).tolist()
    request = urllib.request.Request(f"{url}/v2/models/{name}/infer", json.dumps(doc).encode())
    with DIRECT.open(request, timeout=150) as answer:
        outputs = {o["name"]: o["data"] for o in json.loads(answer.read())["outputs"]}
        return answer.headers["X-Kaon-Revision"], outputs["label"]


def test_a_service_at_zero_answers_its_first_request_through_the_router(
    kaon_rig: Rig,
    kaon_router: str,
    namespace: str,
    local_pool: str,
    artifacts: dict[str, Any],
    tmp_path: Path,
) -> None:
    store_secret(kaon_rig, namespace, artifacts["secret"])
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    uri, labels = artifacts["stable"]
    idle = {"replicas": {"min": 0, "max": 1}, "autoscaling": {"scaleToZeroAfterSeconds": 10}}
    services.create(namespace, "zero", service(uri, **idle))

    svc = services.wait(namespace, "zero", lambda s: state(s) == "Ready", "ready", TIMEOUT_S)
    url = svc["status"]["url"]
    assert url == f"{kaon_router}/serving/{namespace}/zero"
    assert condition(svc, "ScaledToZero")["status"] == "False"

    # tritonclient and KServe's client, unmodified, at the one address.
    triton_client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    assert triton_client.is_server_ready() and triton_client.is_model_ready("zero")
    tensor = triton.InferInput("input", list(IMAGES.shape), "FP32")
    tensor.set_data_from_numpy(IMAGES)
    found = triton_client.infer("zero", [tensor]).as_numpy("label")
    assert found is not None and found.tolist() == labels
    kserve = kserve_client(url, "zero", IMAGES[:8], tmp_path)
    assert kserve["ready"] == [True, True, True]
    assert kserve["json"]["outputs"]["label"] == labels[:8]

    # Idle: the last replica goes, the status says so.
    svc = services.wait(
        namespace, "zero", lambda s: state(s) == "ScaledToZero", "scaled to zero", 120
    )
    assert condition(svc, "ScaledToZero")["status"] == "True"
    member = kaon_rig.core("west")
    wait_for(
        lambda: member.list_namespaced_pod(namespace).items, lambda p: not p, "replica gone", 60
    )

    # The first request is held while a replica starts, then answered.
    start = time.monotonic()
    revision, answered = infer(url, "zero")
    cold_s = time.monotonic() - start
    assert (revision, answered) == ("stable", labels[:4]), cold_s
    svc = services.get(namespace, "zero")
    assert state(svc) == "Ready" and condition(svc, "ScaledToZero")["status"] == "False"


def test_a_canary_gets_exactly_its_share_through_the_router(
    kaon_rig: Rig, namespace: str, local_pool: str, artifacts: dict[str, Any]
) -> None:
    store_secret(kaon_rig, namespace, artifacts["secret"])
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    (stable_uri, stable_labels), (canary_uri, canary_labels) = (
        artifacts["stable"],
        artifacts["canary"],
    )
    assert stable_labels[:4] != canary_labels[:4]  # answers tell the revisions apart
    canary = {"model": {"uri": canary_uri, "secretRef": {"name": "store"}}, "trafficPercent": 10}
    spec = service(stable_uri, replicas={"min": 2, "max": 2}, canary=canary)
    svc = create_ready(services, namespace, "split", spec, 2)
    assert svc["status"]["canary"]["replicas"] == 1  # one replica of each of two

    answers: Counter[str] = Counter()
    expected = {"stable": stable_labels[:4], "canary": canary_labels[:4]}
    for _ in range(2000):
        revision, labels = infer(svc["status"]["url"], "split")
        assert labels == expected[revision]  # the revision named is the one that answered
        answers[revision] += 1
    assert abs(answers["canary"] / 2000 - 0.10) <= 0.03, answers


def test_the_one_address_keeps_answering_while_a_cluster_is_lost(
    kaon_rig: Rig, namespace: str, local_pools: list[str], artifacts: dict[str, Any]
) -> None:
    """One replica in each member's process-agent pool; one member is lost with its machine
    while requests flow: the router passes over its replica, and no request fails."""
    store_secret(kaon_rig, namespace, artifacts["secret"])
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    uri, labels = artifacts["stable"]
    processes = {"clusterSelector": {"matchLabels": {"kaon.dev/runs": "processes"}}}
    spec = service(uri, replicas={"min": 2, "max": 2})
    spec["placement"] |= {"clusters": 2, **processes}
    svc = create_ready(services, namespace, "everywhere", spec, 2)
    assert sorted(c["cluster"] for c in svc["status"]["clusters"]) == sorted(local_pools)
    url, lost = svc["status"]["url"], svc["status"]["clusters"][0]["cluster"]

    answered, stop = [], threading.Event()
    failures: list[tuple[int, Any, float]] = []

    slowest = [0.0]

    def ask() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                answered.append(infer(url, "everywhere")[1] == labels[:4])
            except urllib.error.HTTPError as exc:  # any failed request fails the test
                failures.append((exc.code, exc.read()[:300], time.monotonic()))
            except Exception as exc:
                failures.append((0, repr(exc), time.monotonic()))
            slowest[0] = max(slowest[0], time.monotonic() - began)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        wait_for(lambda: len(answered), lambda n: n >= 50, "requests flowing", 30)
        assert "lost" in kaon_rig_cli("stop", MEMBER_OF[lost])
        before = len(answered)
        moved = services.wait(
            namespace,
            "everywhere",
            lambda s: lost not in [c["cluster"] for c in s["status"].get("clusters", [])],
            "the lost member's replica moved",
            120,
        )
        wait_for(lambda: len(answered), lambda n: n >= before + 50, "answers go on", 60)
    finally:
        stop.set()
        asker.join(60)
        kaon_rig_cli("start", MEMBER_OF[lost])
    assert not failures, failures[:3]
    assert all(answered) and len(answered) > before
    print(f"{len(answered)} answers, the slowest in {slowest[0]:.2f}s")
    assert condition(moved, "Placed")["reason"] in ("Placed", "SpreadIncomplete")
