"""A member's API server stopped for real (kwokctl stop cluster): it is marked not ready, its
TrainingJobs move to the other member after their grace, the old attempt's pods are removed
when it is back; a stop shorter than the grace moves nothing."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kaon_rig import rig

from kaonrig import Jobs, Rig, condition, wait_event, wait_for, worker_pods

pytestmark = pytest.mark.usefixtures("kaon_operator")

LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
# West's T4 pool first, east's A100 pool if west is not there: both can run the gang.
T4_THEN_A100 = {
    "poolPreferences": [
        {"type": "gpu", "accelerator": "nvidia-t4"},
        {"type": "gpu", "accelerator": "nvidia-a100"},
    ]
}


def spec(grace_s: int) -> dict[str, Any]:
    return {
        "model": {"family": "cnn"},
        "workers": 2,
        "resources": {"cpu": 2, "memory": "4Gi", "gpus": 1},
        "placement": T4_THEN_A100,
        "runPolicy": {"failover": {"graceSeconds": grace_s}},
    }


def cluster_ready(kaon_rig: Rig, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    body = api.get_cluster_custom_object("kaon.dev", "v1alpha1", "computeclusters", name)
    return next(c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready")


def running_in_west(jobs: Jobs, namespace: str, name: str) -> dict[str, Any]:
    job = jobs.wait(
        namespace,
        name,
        lambda j: (j.get("status") or {}).get("state") == "Running",
        "running",
        90,
    )
    assert job["status"]["placement"]["cluster"] == "west"
    return job


def test_a_stopped_member_loses_its_gang_to_the_other_and_gets_it_swept_when_back(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, "mover", spec(grace_s=5), LONG_RUN)
    running_in_west(jobs, namespace, "mover")
    old = sorted(p.metadata.name for p in worker_pods(kaon_rig.core("west"), namespace, "mover"))
    assert old == ["mover-a0-w0", "mover-a0-w1"]
    rig.stop_cluster("west")
    try:
        ready = wait_for(
            lambda: cluster_ready(kaon_rig, "west"),
            lambda c: c["status"] == "False",
            "west marked not ready",
            30,
        )
        assert ready["reason"] == "Unreachable"
        job = jobs.wait(
            namespace,
            "mover",
            lambda j: (
                (j.get("status") or {}).get("placement", {}).get("cluster") == "east"
                and j["status"]["state"] == "Running"
            ),
            "running in east",
            90,
        )
    finally:
        rig.start_cluster("west")
    status = job["status"]
    assert (status["attempt"], status["failovers"], status["restarts"]) == (1, 1, 0)
    assert condition(job, "FailedOver")["status"] == "True"
    moved = sorted(p.metadata.name for p in worker_pods(kaon_rig.core("east"), namespace, "mover"))
    assert moved == ["mover-a1-w0", "mover-a1-w1"]
    seen = wait_event(kaon_rig, namespace, "TrainingJob", "mover", "FailedOver")
    message = next(m for _, r, m in seen if r == "FailedOver")
    assert "from cluster west (lost) to cluster east" in message
    assert any(r == "ClusterLost" for _, r, _ in seen)
    # Back, west loses the fenced-off attempt's pods; the job runs on in east.
    wait_for(
        lambda: worker_pods(kaon_rig.core("west"), namespace, "mover"),
        lambda pods: all(p.metadata.deletion_timestamp for p in pods),
        "attempt 0 removed from west",
        90,
    )
    assert jobs.get(namespace, "mover")["status"]["placement"]["cluster"] == "east"
    wait_for(
        lambda: cluster_ready(kaon_rig, "west"),
        lambda c: c["status"] == "True",
        "west ready again",
        60,
    )


def test_a_stop_shorter_than_the_grace_moves_nothing(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, "stayer", spec(grace_s=60), LONG_RUN)
    running_in_west(jobs, namespace, "stayer")
    rig.stop_cluster("west")
    rig.start_cluster("west")
    wait_for(
        lambda: cluster_ready(kaon_rig, "west"),
        lambda c: c["status"] == "True",
        "west ready again",
        60,
    )
    job = jobs.get(namespace, "stayer")
    status = job["status"]
    assert status["placement"]["cluster"] == "west"
    assert (status["attempt"], status.get("failovers", 0)) == (0, 0)
    pods = worker_pods(kaon_rig.core("west"), namespace, "stayer")
    assert sorted(p.metadata.name for p in pods) == ["stayer-a0-w0", "stayer-a0-w1"]
    assert worker_pods(kaon_rig.core("east"), namespace, "stayer") == []
