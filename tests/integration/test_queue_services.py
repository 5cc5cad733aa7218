"""An InferenceService's replicas count against its queue: as many run as the quota allows,
the status says how many of how many and why, and the queue's jobs wait for what they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kaon.api.common import GROUP, VERSION
from kaon.api.names import QUEUE_LABEL

from kaonrig import Jobs, Rig, bound_claim, condition, state, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

CPU = {"poolPreferences": [{"type": "cpu"}]}


def test_a_service_runs_the_replicas_its_queue_allows_and_its_jobs_wait_for_them(
    kaon_rig: Rig, jobs: Jobs, namespace: str, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))
    name = f"serve-{namespace.rsplit('-', 1)[-1]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"quotas": [{"resource": "cpu", "nominal": "3"}]},
    }
    custom.create_cluster_custom_object(GROUP, VERSION, "queues", body)
    try:
        kaon_rig.core("hub").patch_namespace(
            namespace, {"metadata": {"labels": {QUEUE_LABEL: name}}}
        )
        for cluster in ("east", "west"):
            bound_claim(kaon_rig, cluster, namespace, "models", tmp_path / cluster)
        services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
        spec: dict[str, Any] = {
            "model": {"uri": "pvc://models/digits"},
            "resources": {"cpu": 1, "memory": "1Gi"},
            "replicas": {"min": 4, "max": 4},
            "placement": CPU,
        }
        services.create(namespace, "capped", spec)
        svc = services.wait(
            namespace,
            "capped",
            lambda s: (s.get("status") or {}).get("readyReplicas") == 3,
            "3 replicas ready",
            90,
        )
        status = svc["status"]
        assert status["queue"] == name and status["replicas"] == 3
        assert status["desiredReplicas"] == 4 and state(svc) == "Degraded"
        placed = condition(svc, "Placed")
        assert placed["reason"] == "QuotaExceeded"  # 4 replicas can never fit in 3 cores
        assert placed["message"].startswith(f"3 of 4 replicas: queue {name}: needs 4 CPUs at once")
        usage = wait_for(
            lambda: custom.get_cluster_custom_object(GROUP, VERSION, "queues", name),
            lambda q: (q.get("status") or {}).get("admitted") == 1,
            "the service counted as admitted",
        )["status"]["usage"]
        assert [(u["resource"], u["used"]) for u in usage] == [("cpu", "3")]

        job = {"model": {"family": "cnn"}, "workers": 1, "resources": {"cpu": 1}}
        jobs.create(namespace, "behind", job)
        waits = jobs.wait(
            namespace,
            "behind",
            lambda j: condition(j, "Admitted").get("reason") == "WaitingForQuota",
            "waiting for the service's quota",
        )
        assert "0 of 3 free (3 in use)" in str(condition(waits, "Admitted")["message"])
        services.delete(namespace, "capped")
        jobs.wait_state(namespace, "behind", "Admitted", "Running", "Succeeded", timeout_s=90)
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "queues", name)
