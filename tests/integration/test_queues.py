"""Queues on the rig's hub: a namespace's default queue, nominal quota, borrowing in a cohort,
a lender that waits for its lent quota, the reasons a job waits, and kubectl get queues."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kaon.api.common import GROUP, VERSION
from kaon.api.names import QUEUE_LABEL

from kaonrig import Jobs, Rig, condition, kubectl, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
A100_ONLY = {"poolPreferences": [{"type": "gpu", "accelerator": "nvidia-a100"}]}


def gpu_job(gpus: int = 4, **more: Any) -> dict[str, Any]:
    return {
        "model": {"family": "cnn"},
        "workers": 1,
        "resources": {"cpu": 2, "memory": "4Gi", "gpus": gpus},
        "placement": A100_ONLY,
        **more,
    }


def queue(name: str, cohort: str, nominal: int, **more: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {
            "cohort": cohort,
            "quotas": [{"resource": "gpus", "accelerator": "nvidia-a100", "nominal": nominal}],
            **more,
        },
    }


@pytest.fixture
def teams(kaon_rig: Rig, namespace: str) -> Iterator[tuple[str, str]]:
    """Queues team-a and team-b (4 A100s each) in one cohort; the namespace uses team-a.
    team-b waits for what it lent instead of reclaiming it (see test_queue_preemption)."""
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))
    suffix = namespace.rsplit("-", 1)[-1]
    a, b = f"team-a-{suffix}", f"team-b-{suffix}"
    cohort = f"research-{suffix}"
    custom.create_cluster_custom_object(GROUP, VERSION, "queues", queue(a, cohort, 4))
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "queues",
        queue(b, cohort, 4, namespaceSelector={}, preemption={"reclaimWithinCohort": "Never"}),
    )
    kaon_rig.core("hub").patch_namespace(namespace, {"metadata": {"labels": {QUEUE_LABEL: a}}})
    yield a, b
    for name in (a, b):
        custom.delete_cluster_custom_object(GROUP, VERSION, "queues", name)


def admitted_reason(job: dict[str, Any]) -> str:
    return str(condition(job, "Admitted").get("reason", ""))


def queue_status(kaon_rig: Rig, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))
    body: dict[str, Any] = custom.get_cluster_custom_object(GROUP, VERSION, "queues", name)
    return body.get("status") or {}


def test_a_team_borrows_idle_quota_and_the_lender_waits_until_it_is_back(
    kaon_rig: Rig, jobs: Jobs, namespace: str, teams: tuple[str, str]
) -> None:
    a, b = teams
    jobs.create(namespace, "a1", gpu_job(), LONG_RUN)
    first = jobs.wait_state(namespace, "a1", "Running")
    assert first["status"]["queue"] == a  # the namespace's label chose it
    assert first["status"]["placement"]["costPerHour"] > 0
    jobs.create(namespace, "a2", gpu_job(), LONG_RUN)  # beyond nominal: borrowed from team-b
    assert jobs.wait_state(namespace, "a2", "Running")["status"]["queue"] == a
    jobs.create(namespace, "a3", gpu_job(), LONG_RUN)
    over = jobs.wait(
        namespace, "a3", lambda j: admitted_reason(j) == "WaitingForQuota", "waiting for quota"
    )
    assert condition(over, "Admitted")["message"] == (
        f"queue {a}: needs 4 nvidia-a100 GPUs, 0 of 8 free (8 in use)"  # the whole cohort's 8
    )
    usage = wait_for(
        lambda: queue_status(kaon_rig, a),
        lambda s: s.get("admitted") == 2 and s.get("pending") == 1,
        f"queue {a}'s status counted",
    )
    assert usage["usage"] == [
        {
            "resource": "gpus",
            "accelerator": "nvidia-a100",
            "cluster": "",
            "nominal": "4",
            "used": "8",
            "borrowed": "4",
        }
    ]
    table = kubectl(kaon_rig, "get", "queues", a, b)
    assert "nvidia-a100 8/4" in table and "nvidia-a100 0/4" in table, table

    jobs.create(namespace, "b1", gpu_job(queue=b), LONG_RUN)  # its own nominal, lent out
    lender = jobs.wait(
        namespace, "b1", lambda j: admitted_reason(j) == "WaitingForQuota", "b1 waiting"
    )
    assert "lent to other queues of cohort" in str(condition(lender, "Admitted")["message"])
    jobs.delete(namespace, "a2")
    back = jobs.wait_state(namespace, "b1", "Running")
    assert back["status"]["queue"] == b
    assert admitted_reason(jobs.get(namespace, "a3")) == "WaitingForQuota"
    wide = kubectl(kaon_rig, "get", "tj", "-n", namespace, "-o", "wide")
    assert "COST/H" in wide and "QUEUE" in wide, wide


def test_a_missing_or_barred_queue_or_a_gang_over_its_quota_is_the_reason_a_job_waits(
    kaon_rig: Rig, jobs: Jobs, namespace: str, teams: tuple[str, str]
) -> None:
    a, _ = teams
    jobs.create(namespace, "nowhere", gpu_job(queue="no-such-queue"))
    missing = jobs.wait(
        namespace, "nowhere", lambda j: admitted_reason(j) == "QueueNotFound", "QueueNotFound"
    )
    assert "queue no-such-queue (spec.queue) does not exist" in str(
        condition(missing, "Admitted")["message"]
    )
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))
    closed = f"closed-{namespace.rsplit('-', 1)[-1]}"
    custom.create_cluster_custom_object(GROUP, VERSION, "queues", queue(closed, "other", 4))
    try:
        jobs.create(namespace, "barred", gpu_job(queue=closed))
        jobs.wait(
            namespace, "barred", lambda j: admitted_reason(j) == "QueueNotAllowed", "not allowed"
        )
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "queues", closed)
    # 12 A100s at once: the fleet has 16, but team-a can never hold more than its cohort's 8.
    jobs.create(namespace, "too-big", gpu_job(workers=3))
    big = jobs.wait(
        namespace, "too-big", lambda j: admitted_reason(j) == "QuotaExceeded", "QuotaExceeded"
    )
    assert f"queue {a}: needs 12 nvidia-a100 GPUs at once" in str(
        condition(big, "Admitted")["message"]
    )
    jobs.create(namespace, "placed", gpu_job(), LONG_RUN)
    jobs.wait_state(namespace, "placed", "Running")
    with pytest.raises(client.ApiException) as refused:
        jobs.patch_spec(namespace, "placed", {"queue": a + "-x"})
    assert refused.value.status == 422
    assert "spec.queue cannot change once the job is admitted" in str(refused.value.body)
