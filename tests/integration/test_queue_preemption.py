"""Preemption on the rig's hub and members: a lender reclaims its lent quota from the newest
borrower, a queue's urgent job preempts one lower-priority gang in one cluster, a job inside
its minimum runtime is spared; victims go back to wait as a new attempt, never charged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kaon.api.common import GROUP, VERSION
from kaon.api.names import QUEUE_LABEL

from kaonrig import Jobs, Rig, condition, state, wait_event, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}


def gpu_job(gpus: int = 4, accelerator: str | None = "nvidia-a100", **more: Any) -> dict[str, Any]:
    prefs = [{"type": "gpu", "accelerator": accelerator}] if accelerator else [{"type": "gpu"}]
    return {
        "model": {"family": "cnn"},
        "workers": 1,
        "resources": {"cpu": 2, "memory": "4Gi", "gpus": gpus},
        "placement": {"poolPreferences": prefs},
        **more,
    }


def make_queue(kaon_rig: Rig, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": spec,
    }
    client.CustomObjectsApi(kaon_rig.api("hub")).create_cluster_custom_object(
        GROUP, VERSION, "queues", body
    )


@pytest.fixture
def queues(kaon_rig: Rig, namespace: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))
    for name in made:
        custom.delete_cluster_custom_object(GROUP, VERSION, "queues", name)


def suffix(namespace: str) -> str:
    return namespace.rsplit("-", 1)[-1]


def a100s(nominal: int) -> list[dict[str, Any]]:
    return [{"resource": "gpus", "accelerator": "nvidia-a100", "nominal": nominal}]


def test_a_lender_reclaims_its_quota_from_the_newest_borrower(
    kaon_rig: Rig, jobs: Jobs, namespace: str, queues: list[str]
) -> None:
    a, b, cohort = f"ra-{suffix(namespace)}", f"rb-{suffix(namespace)}", f"rc-{suffix(namespace)}"
    make_queue(kaon_rig, a, {"cohort": cohort, "quotas": a100s(4)})
    make_queue(kaon_rig, b, {"cohort": cohort, "quotas": a100s(4), "namespaceSelector": {}})
    queues.extend([a, b])
    kaon_rig.core("hub").patch_namespace(namespace, {"metadata": {"labels": {QUEUE_LABEL: a}}})
    jobs.create(namespace, "own", gpu_job(), LONG_RUN)
    jobs.wait_state(namespace, "own", "Running")
    jobs.create(namespace, "borrower", gpu_job(), LONG_RUN)  # team b's idle nominal
    jobs.wait_state(namespace, "borrower", "Running")

    jobs.create(namespace, "lender", gpu_job(queue=b), LONG_RUN)
    back = jobs.wait_state(namespace, "lender", "Running", timeout_s=90)
    assert back["status"]["queue"] == b
    victim = jobs.wait(
        namespace,
        "borrower",
        lambda j: j["status"].get("preemptions") == 1 and state(j) == "Waiting",
        "preempted and waiting again",
    )
    preempted = condition(victim, "Preempted")
    assert preempted["status"] == "True" and preempted["reason"] == "Reclaimed"
    assert f"preempted by {namespace}/lender to reclaim quota lent by queue {b}" in str(
        preempted["message"]
    )
    status = victim["status"]
    assert status["attempt"] == 1 and status["restarts"] == 0  # a new attempt, not charged
    jobs.wait(  # a's own 4 are in use, and b's are back with b
        namespace,
        "borrower",
        lambda j: condition(j, "Admitted").get("reason") == "WaitingForQuota",
        "waiting for quota again",
    )
    evs = wait_event(kaon_rig, namespace, "TrainingJob", "borrower", "Requeued")
    assert any(r == "Preempted" and "lender" in m for _, r, m in evs)
    evs = wait_event(kaon_rig, namespace, "TrainingJob", "lender", "Preempting")
    assert any(r == "Preempting" and f"{namespace}/borrower" in m for _, r, m in evs)
    assert state(jobs.get(namespace, "own")) == "Running"  # within its nominal: spared


def test_an_urgent_job_preempts_one_lower_priority_gang_in_one_cluster(
    kaon_rig: Rig, jobs: Jobs, namespace: str, queues: list[str]
) -> None:
    # One queue over every GPU of the fleet: 16 A100s in east, 4 T4s in west, all in use.
    q = f"all-{suffix(namespace)}"
    make_queue(kaon_rig, q, {"quotas": [{"resource": "gpus", "nominal": 64}]})
    queues.append(q)
    kaon_rig.core("hub").patch_namespace(namespace, {"metadata": {"labels": {QUEUE_LABEL: q}}})
    low = [f"low{i}" for i in range(5)]
    for name in low[:4]:
        jobs.create(namespace, name, gpu_job(), LONG_RUN)
    jobs.create(namespace, low[4], gpu_job(accelerator="nvidia-t4"), LONG_RUN)
    for name in low:
        jobs.wait_state(namespace, name, "Running")
    # The newest A100 gang runs under a minimum runtime: the next newest goes instead.
    jobs.delete(namespace, "low3")
    wait_for(lambda: jobs.exists(namespace, "low3"), lambda e: not e, "low3 gone")
    jobs.create(
        namespace,
        "guarded",
        gpu_job(runPolicy={"minRuntimeSeconds": 3600}),
        LONG_RUN,
    )
    jobs.wait_state(namespace, "guarded", "Running")

    jobs.create(namespace, "urgent", gpu_job(accelerator=None, runPolicy={"priority": 10}))
    jobs.wait_state(namespace, "urgent", "Admitted", "Running", timeout_s=90)
    states = {n: jobs.get(namespace, n) for n in [*low[:3], low[4], "guarded"]}
    gone = [n for n, j in states.items() if (j["status"].get("preemptions") or 0) > 0]
    assert len(gone) == 1, {n: state(j) for n, j in states.items()}  # one victim, one cluster
    assert gone != ["guarded"]
    victim = states[gone[0]]
    assert condition(victim, "Preempted")["reason"] == "PreemptedByPriority"
    assert state(victim) == "Waiting"
    assert all(state(j) == "Running" for n, j in states.items() if n not in gone)
