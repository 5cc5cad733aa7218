"""Train into the rig's S3 server, then serve from it, for real: a TrainingJob with
spec.checkpoint.location publishes its model there, an InferenceService of that job copies the
store Secret into the member, and its server downloads the model and answers over V2."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import numpy as np
import torch
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from kaon.builders.worker import STORE_ENV
from kaon_kernels.serve.fetch import fetch_model
from kaon_kernels.serve.model import Engine
from kaon_rig import s3

from kaonrig import Jobs, Rig, state, wait_for

NAME = "digits-s3"
TIMEOUT_S = 420.0
JOB = {
    "model": {"family": "cnn", "cnn": {"channels": [16, 32]}},
    "training": {"epochs": 4, "batchSize": 32},
    "workers": 1,
    "resources": {"cpu": 1, "memory": "2Gi"},
    "checkpoint": {"location": f"s3://{s3.BUCKET}/e2e-serving", "secretRef": {"name": "store"}},
    "placement": {"poolPreferences": [{"type": "cpu", "pool": "local"}]},
}
SERVICE = {
    "model": {"trainingJobRef": {"name": NAME}},
    "resources": {"cpu": "500m", "memory": "1Gi"},
    "placement": {"poolPreferences": [{"type": "cpu", "pool": "local"}]},
}


def test_a_model_trained_into_the_store_is_served_from_it(
    kaon_rig: Rig, jobs: Jobs, namespace: str, local_pool: str, tmp_path: Path
) -> None:
    hub = kaon_rig.core("hub")
    found = hub.read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    meta = client.V1ObjectMeta(name="store")
    hub.create_namespaced_secret(namespace, client.V1Secret(metadata=meta, data=found.data))
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    jobs.create(namespace, NAME, JOB)
    services.create(namespace, NAME, SERVICE)

    job = jobs.wait_state(namespace, NAME, "Succeeded", "Failed", timeout_s=TIMEOUT_S)
    assert state(job) == "Succeeded", job["status"]
    artifact = job["status"]["artifact"]
    assert artifact.startswith(f"s3://{s3.BUCKET}/e2e-serving/{namespace}/{NAME}/")
    svc = services.wait(namespace, NAME, lambda s: state(s) == "Ready", "ready", TIMEOUT_S)
    assert svc["status"]["model"] == {"path": "", "uri": artifact, "secretRef": {"name": "store"}}

    # The member behind the process-agent pool it runs on (west-local, or east-local if that
    # is registered too).
    (served,) = svc["status"]["clusters"]
    member = kaon_rig.core(served["cluster"].removesuffix("-local"))
    copy = member.read_namespaced_secret(f"{NAME}-stable-model-store", namespace)
    keys = {key for _, key, _ in STORE_ENV}
    assert copy.data == {k: v for k, v in found.data.items() if k in keys}
    (pod,) = member.list_namespaced_pod(
        namespace, label_selector=f"kaon.dev/inferenceservice={NAME}"
    ).items

    images = load_digits().images[-64:].astype(np.float32)[:, None, :, :]
    doc = {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = images.reshape(-1).tolist()
    request = urllib.request.Request(
        f"http://{pod.status.pod_ip}:8080/v2/models/{NAME}/infer", json.dumps(doc).encode()
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as answer:
        outputs = {o["name"]: o["data"] for o in json.loads(answer.read())["outputs"]}
    env = {var: base64.b64decode(found.data[key]).decode() for var, key, _ in STORE_ENV}
    fetch_model(artifact, tmp_path, env)
    expected = Engine(tmp_path, NAME).forward(torch.from_numpy(images)).outputs["label"].rows
    assert outputs["label"] == expected

    services.delete(namespace, NAME)

    def copy_gone() -> bool:
        try:
            member.read_namespaced_secret(f"{NAME}-stable-model-store", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(copy_gone, bool, "the member's copy of the store Secret removed", 60)
