"""Train, then serve, for real: a TrainingJob's model behind an InferenceService, asked over V2.

Both are applied with kubectl from examples/inferenceservices/digits.yaml. The job trains on the
process agent's node onto a claim; the service's server replica runs there too, and answers at
its endpoint (the rig has no kube-proxy: the EndpointSlice's address is what a client dials).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from kubernetes import client
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from kaonrig import REPO, Jobs, Rig, bound_claim, condition, kubectl, state, wait_for

EXAMPLE = REPO / "examples" / "inferenceservices" / "digits.yaml"
KSERVE_PY = REPO / ".venv" / "kserve" / "bin" / "python"
KSERVE_CLIENT = Path(__file__).with_name("kserve_v2_client.py")
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
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(images[:50].tolist()))
    done = subprocess.run(
        [str(KSERVE_PY), str(KSERVE_CLIENT), f"http://{url}", "digits", str(samples)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
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
