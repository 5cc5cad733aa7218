"""Train, then serve, for real: a TrainingJob's model behind an InferenceService, asked over V2.

Both are applied with kubectl from examples/inferenceservices/digits.yaml. The job trains on the
process agent's node onto a claim; the service's server replica runs there too, and answers at
its endpoint (the rig has no kube-proxy: the EndpointSlice's address is what a client dials).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton
from kubernetes import client
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from kaonrig import (
    REPO,
    Jobs,
    Rig,
    bound_claim,
    condition,
    kserve_client,
    kubectl,
    state,
    wait_for,
)

EXAMPLE = REPO / "examples" / "inferenceservices" / "digits.yaml"
SERVE_TIMEOUT_S = 420.0


def ready_endpoint(kaon_rig: Rig, namespace: str, service: str) -> str:
    """HOST:PORT of a ready endpoint of the Service in west."""
    discovery = client.DiscoveryV1Api(kaon_rig.api("west"))

    def ready() -> list[str]:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        return [
            f"{address}:{s.ports[0].port}"
            for s in slices
            for e in s.endpoints or []
            if e.conditions and e.conditions.ready
            for address in e.addresses
        ]

    return wait_for(ready, bool, f"a ready endpoint of {service}", 60)[0]


def test_a_trained_model_is_served_and_both_clients_read_digits_right(
    kaon_rig: Rig, jobs: Jobs, namespace: str, local_pool: str, tmp_path: Path
) -> None:
    bound_claim(kaon_rig, "west", namespace, "models", tmp_path)
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    kubectl(kaon_rig, "apply", "-n", namespace, "-f", str(EXAMPLE))

    # The service waits for its model, and says so.
    svc = services.wait(
        namespace,
        "digits",
        lambda s: condition(s, "Ready").get("reason") == "ModelNotReady",
        "waiting for the job",
    )
    assert state(svc) == "Waiting"
    job = jobs.wait_state(
        namespace, "digits-model", "Succeeded", "Failed", timeout_s=SERVE_TIMEOUT_S
    )
    assert state(job) == "Succeeded", job["status"]
    svc = services.wait(
        namespace, "digits", lambda s: state(s) == "Ready", "ready", SERVE_TIMEOUT_S
    )
    assert [c["cluster"] for c in svc["status"]["clusters"]] == [local_pool]
    assert (tmp_path / "jobs" / "digits-model" / "output" / "model.pt").is_file()

    url = ready_endpoint(kaon_rig, namespace, "digits")
    digits = load_digits()
    images = digits.images[-300:].astype(np.float32)[:, None, :, :]
    truth = digits.target[-300:]

    # tritonclient, with its defaults (binary tensors both ways).
    triton_client = triton.InferenceServerClient(url=url)
    assert triton_client.is_server_ready() and triton_client.is_model_ready("digits")
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    answer = triton_client.infer("digits", [tensor])
    labels = answer.as_numpy("label")
    assert labels is not None and labels.shape == (300,)
    accuracy = float((labels == truth).mean())
    assert accuracy >= 0.9, accuracy

    # KServe's own V2 REST client (in its venv), JSON and binary tensors.
    found = kserve_client(f"http://{url}", "digits", images[:50], tmp_path)
    assert found["ready"] == [True, True, True]
    for mode in ("json", "binary"):
        assert found[mode]["model_name"] == "digits"
        assert found[mode]["outputs"]["label"] == labels[:50].tolist()

    # The server reports its load on its pod; the operator reads it (min 1, no load -> 1).
    core = kaon_rig.core("west")
    pods = core.list_namespaced_pod(namespace, label_selector="kaon.dev/inferenceservice=digits")
    wait_for(
        lambda: [
            json.loads((p.metadata.annotations or {}).get("kaon.dev/load", "{}"))
            for p in core.list_namespaced_pod(
                namespace, label_selector="kaon.dev/inferenceservice=digits"
            ).items
        ],
        lambda loads: bool(loads) and all("inflight" in load for load in loads),
        "a load report on the server's pod",
        30,
    )
    assert len(pods.items) == 1
    assert services.get(namespace, "digits")["status"]["desiredReplicas"] == 1

    quality_and_drift(services, namespace, url, images, truth)


def infer_doc(images: Any, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.flatten().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }


def post(url: str, path: str, doc: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://{url}{path}",
        json.dumps(doc).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def scrape(url: str) -> dict[str, float]:
    """The server's metrics: each sample line's name with labels, and its value."""
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def quality_and_drift(services: Jobs, namespace: str, url: str, images: Any, truth: Any) -> None:
    """Live accuracy from labels sent back; no drift on digits, drift on inverted digits."""
    # Quality: true labels sent back for an answer by its id give live accuracy.
    answer_doc = post(url, "/v2/models/digits/infer", infer_doc(images[:40], "fb-1"))
    predicted = answer_doc["outputs"][0]["data"]
    paired = post(url, "/v2/models/digits/feedback", {"id": "fb-1", "labels": truth[:40].tolist()})
    assert paired == {"id": "fb-1", "paired": 40}
    metrics = scrape(url)
    expected = float(np.mean(np.array(predicted) == truth[:40]))
    assert (
        abs(metrics['kaon_model_live_accuracy{model="digits",revision="stable"}'] - expected) < 1e-9
    )

    # Drift: the 440 unshifted digits so far are within the threshold; inverted digits are not.
    drift = wait_for(
        lambda: condition(services.get(namespace, "digits"), "Drift"),
        lambda c: c.get("status") in ("True", "False"),
        "the drift of the unshifted digits measured",
        60,
    )
    assert drift["reason"] == "NoDrift", drift
    assert metrics['kaon_model_drift_score{model="digits",revision="stable"}'] < 0.25
    triton_client = triton.InferenceServerClient(url=url)
    inverted = triton.InferInput("input", list(images.shape), "FP32")
    for _ in range(4):  # 1200 samples: the window (1000) holds shifted inputs only
        inverted.set_data_from_numpy(16 - images)
        triton_client.infer("digits", [inverted])
    drift = wait_for(
        lambda: condition(services.get(namespace, "digits"), "Drift"),
        lambda c: c.get("status") == "True",
        "the Drift condition raised within a minute",
        60,
    )
    assert drift["reason"] == "InputDrift" and "stable replica" in drift["message"]
    assert scrape(url)['kaon_model_drift_score{model="digits",revision="stable"}'] > 0.25
