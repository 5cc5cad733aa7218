"""TrainingJobs placed, run, restarted and cleaned up by the operator, on the rig's members."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kaon_rig import rig

from kaonrig import (
    Jobs,
    OperatorProcess,
    Rig,
    condition,
    sim_pod,
    state,
    wait_event,
    wait_for,
    worker_pods,
)

pytestmark = pytest.mark.usefixtures("kaon_operator")

SIM_OK = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "3s"}
LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
A100_ONLY = {"poolPreferences": [{"type": "gpu", "accelerator": "nvidia-a100"}]}
EAST = {"clusterSelector": {"matchLabels": {"region": "us-east"}}}
KIND = "TrainingJob"


def spec(
    workers: int = 2, gpus: int = 0, placement: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    return {
        "model": {"family": "cnn"},
        "workers": workers,
        "resources": {"cpu": 2, "memory": "4Gi", "gpus": gpus},
        "placement": placement or {},
        **more,
    }


@pytest.fixture
def fill_gpus(kaon_rig: Rig, namespace: str) -> Iterator[None]:
    """Blocker pods that take every GPU of both members' GPU pools."""
    made = []
    for cluster, pool, nodes, gpus in (("east", "gpu-a100", 2, 8), ("west", "gpu-t4", 1, 4)):
        for i in range(nodes):
            name = f"blocker-{pool}-{i}"
            kaon_rig.core(cluster).create_namespaced_pod(
                namespace, sim_pod(name, pool=pool, gpus=gpus)
            )
            made.append((cluster, name))
    for cluster, name in made:
        wait_for(
            lambda c=cluster, n=name: kaon_rig.core(c).read_namespaced_pod(n, namespace),
            lambda p: p.status.phase == "Running",
            f"{name} running",
        )
    yield


def test_gang_lands_in_one_member_and_pool_with_the_runtime_injected(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, "gang", spec(workers=2, gpus=4, placement=A100_ONLY), LONG_RUN)
    job = jobs.wait_state(namespace, "gang", "Running")
    placement = job["status"]["placement"]
    assert (placement["cluster"], placement["pool"], placement["gpusPerWorker"]) == (
        "east",
        "gpu-a100",
        4,
    )
    assert condition(job, "Admitted")["status"] == "True"
    assert job["status"]["workers"]["ready"] == 2

    core = kaon_rig.core("east")
    pods = worker_pods(core, namespace, "gang")
    assert sorted(p.metadata.name for p in pods) == ["gang-a0-w0", "gang-a0-w1"]
    for p in pods:
        node = core.read_node(p.spec.node_name)
        assert node.metadata.labels["kaon.dev/pool"] == "gpu-a100"
        env = {e.name: e.value for e in p.spec.containers[0].env}
        assert env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == f"worker-0.gang.{namespace}.svc"
        assert p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
    svc = core.read_namespaced_service("gang", namespace)
    assert svc.spec.cluster_ip == "None"
    assert worker_pods(kaon_rig.core("west"), namespace, "gang") == []


def test_gpu_to_cpu_fallback_when_gpu_pools_are_full(
    kaon_rig: Rig, jobs: Jobs, namespace: str, fill_gpus: None
) -> None:
    prefs = {"poolPreferences": [{"type": "gpu"}, {"type": "cpu"}]}
    jobs.create(namespace, "fallback", spec(workers=2, gpus=2, placement=prefs), LONG_RUN)
    job = jobs.wait_state(namespace, "fallback", "Running")
    placement = job["status"]["placement"]
    assert placement["pool"] == "cpu" and placement["gpusPerWorker"] == 0
    pods = worker_pods(kaon_rig.core(placement["cluster"]), namespace, "fallback")
    assert len(pods) == 2
    assert all(
        "nvidia.com/gpu" not in (p.spec.containers[0].resources.requests or {}) for p in pods
    )


def test_waiting_job_says_why_and_is_admitted_when_capacity_frees(
    kaon_rig: Rig, jobs: Jobs, namespace: str, fill_gpus: None
) -> None:
    jobs.create(namespace, "patient", spec(workers=2, gpus=8, placement=A100_ONLY), SIM_OK)
    job = jobs.wait_state(namespace, "patient", "Waiting")
    admitted = condition(job, "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "InsufficientGPU"
    assert admitted["message"].startswith("pool gpu-a100 in cluster east has 0 of 16 GPUs free")
    ((type_, _, message),) = [
        e for e in wait_event(kaon_rig, namespace, KIND, "patient", "Waiting") if e[1] == "Waiting"
    ]
    assert type_ == "Normal" and message.startswith(f"InsufficientGPU: {admitted['message']}")
    for i in range(2):
        kaon_rig.core("east").delete_namespaced_pod(f"blocker-gpu-a100-{i}", namespace)
    job = jobs.wait_state(namespace, "patient", "Running", "Succeeded")
    assert job["status"]["placement"]["pool"] == "gpu-a100"
    jobs.wait_state(namespace, "patient", "Succeeded")
    seen = wait_event(kaon_rig, namespace, KIND, "patient", "Succeeded")
    placed = [m for t, r, m in seen if (t, r) == ("Normal", "Placed")]
    assert placed == [
        "pool gpu-a100 in cluster east: preference 1 (nvidia-a100 GPU pools): "
        f"{job['status']['placement']['costPerHour']:.4g}/h, the only pool with room"
    ]
    assert sorted(r for _, r, _ in seen) == ["Placed", "Succeeded", "Waiting"]


def test_gang_is_rolled_back_when_a_worker_cannot_be_created(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    core = kaon_rig.core("east")
    quota = {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("one-pod", namespace),
        lambda q: bool(q.status and q.status.hard),
        "the quota to be counted",
    )
    jobs.create(namespace, "blocked", spec(workers=3, placement=EAST), LONG_RUN)
    job = jobs.wait(
        namespace,
        "blocked",
        lambda j: condition(j, "Admitted").get("reason") == "GangRollback",
        "a rollback",
    )
    assert "exceeded quota" in condition(job, "Admitted")["message"]
    wait_for(
        lambda: worker_pods(core, namespace, "blocked"), lambda pods: pods == [], "no pods left"
    )
    core.delete_namespaced_resource_quota("one-pod", namespace)
    job = jobs.wait_state(namespace, "blocked", "Running", timeout_s=90)
    assert len(worker_pods(core, namespace, "blocked")) == 3


def test_worker_failure_restarts_the_gang_which_then_succeeds(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    flaky = SIM_OK | {"kaon.dev/sim-fail": "0:1:3"}
    jobs.create(namespace, "flaky", spec(workers=2, runPolicy={"backoffLimit": 2}), flaky)
    job = jobs.wait_state(namespace, "flaky", "Succeeded", "Failed")
    assert state(job) == "Succeeded"
    assert job["status"]["restarts"] == 1 and job["status"]["attempt"] == 1
    cluster = job["status"]["placement"]["cluster"]
    names = sorted(p.metadata.name for p in worker_pods(kaon_rig.core(cluster), namespace, "flaky"))
    assert names == ["flaky-a1-w0", "flaky-a1-w1"]
    seen = wait_event(kaon_rig, namespace, KIND, "flaky", "Succeeded")
    ((type_, _, message),) = [e for e in seen if e[1] == "GangRestarted"]
    assert type_ == "Warning" and message.endswith("(charged to backoffLimit)")


def test_backoff_exhausted_fails_the_job(kaon_rig: Rig, jobs: Jobs, namespace: str) -> None:
    always = {"kaon.dev/sim-exit-code": "7", "kaon.dev/sim-duration": "1s"}
    jobs.create(namespace, "doomed", spec(workers=1, runPolicy={"backoffLimit": 1}), always)
    job = jobs.wait_state(namespace, "doomed", "Failed")
    failed = condition(job, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "exited with code 7" in failed["message"]
    assert job["status"]["restarts"] == 1
    seen = wait_event(kaon_rig, namespace, KIND, "doomed", "BackoffLimitExceeded")
    assert ("Warning", "BackoffLimitExceeded", failed["message"]) in seen


def test_worker_lost_with_its_node_is_not_charged(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(
        namespace,
        "survivor",
        spec(workers=1, placement=EAST, runPolicy={"backoffLimit": 0}),
        LONG_RUN,
    )
    job = jobs.wait_state(namespace, "survivor", "Running")
    core = kaon_rig.core("east")
    (pod,) = worker_pods(core, namespace, "survivor")
    node = pod.spec.node_name
    try:
        core.delete_node(node)
        job = jobs.wait(
            namespace,
            "survivor",
            lambda j: j["status"].get("infraRestarts", 0) >= 1,
            "an uncharged restart",
            timeout_s=150,
        )
        job = jobs.wait_state(namespace, "survivor", "Running")
        assert job["status"]["restarts"] == 0 and state(job) == "Running"
        (new,) = worker_pods(core, namespace, "survivor")
        assert new.metadata.name == "survivor-a1-w0" and new.spec.node_name != node
    finally:
        rig.sync_nodes(kaon_rig.config.cluster("east"))


def test_job_that_can_never_fit_fails_at_once(jobs: Jobs, namespace: str) -> None:
    jobs.create(
        namespace,
        "giant",
        spec(workers=1, gpus=16, placement={"poolPreferences": [{"type": "gpu"}]}),
    )
    job = jobs.wait_state(namespace, "giant", "Failed")
    failed = condition(job, "Failed")
    assert failed["reason"] == "NoPoolFits"
    assert "16 GPU" in failed["message"]


def test_suspend_frees_the_pool_and_resume_places_again(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, "pausable", spec(workers=2, gpus=8, placement=A100_ONLY), LONG_RUN)
    job = jobs.wait_state(namespace, "pausable", "Running")
    core = kaon_rig.core("east")
    jobs.patch_spec(namespace, "pausable", {"runPolicy": {"suspend": True}})
    job = jobs.wait_state(namespace, "pausable", "Suspended")
    assert condition(job, "Suspended")["status"] == "True"
    assert "placement" not in job["status"] or job["status"]["placement"] is None
    wait_for(lambda: worker_pods(core, namespace, "pausable"), lambda p: p == [], "pods removed")
    jobs.patch_spec(namespace, "pausable", {"runPolicy": {"suspend": False}})
    job = jobs.wait_state(namespace, "pausable", "Running")
    assert len(worker_pods(core, namespace, "pausable")) == 2


def test_active_deadline_fails_and_ttl_deletes(jobs: Jobs, namespace: str) -> None:
    jobs.create(
        namespace, "slow", spec(workers=1, runPolicy={"activeDeadlineSeconds": 3}), LONG_RUN
    )
    job = jobs.wait_state(namespace, "slow", "Failed", timeout_s=30)
    assert condition(job, "Failed")["reason"] == "DeadlineExceeded"
    jobs.create(
        namespace, "brief", spec(workers=1, runPolicy={"ttlSecondsAfterFinished": 2}), SIM_OK
    )
    jobs.wait_state(namespace, "brief", "Succeeded")
    wait_for(lambda: jobs.exists(namespace, "brief"), lambda e: not e, "the TTL deletion", 30)


def test_deleting_a_job_removes_its_pods_and_service(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, "doomed", spec(workers=2, placement=EAST), LONG_RUN)
    jobs.wait_state(namespace, "doomed", "Running")
    jobs.delete(namespace, "doomed")
    wait_for(lambda: jobs.exists(namespace, "doomed"), lambda e: not e, "job deleted")
    core = kaon_rig.core("east")
    wait_for(lambda: worker_pods(core, namespace, "doomed"), lambda p: p == [], "pods deleted")
    services = core.list_namespaced_service(namespace).items
    assert [s.metadata.name for s in services] == []


def test_job_deleted_while_its_member_is_down_is_cleaned_up_when_it_returns(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    west = {"clusterSelector": {"matchLabels": {"region": "eu-west"}}}
    jobs.create(namespace, "stranded", spec(workers=2, placement=west), LONG_RUN)
    jobs.wait_state(namespace, "stranded", "Running")
    rig.stop_cluster("west")
    try:
        jobs.delete(namespace, "stranded")
        job = jobs.get(namespace, "stranded")  # held by kaon's finalizer while west is away
        assert job["metadata"].get("deletionTimestamp")
        assert "kaon.dev/cleanup" in job["metadata"]["finalizers"]
    finally:
        rig.start_cluster("west")
    wait_for(lambda: jobs.exists(namespace, "stranded"), lambda e: not e, "job deleted", 90)
    # Deleted or being deleted: a kwok controller that has just restarted may miss finishing
    # the deletion of pods it listed as Terminating (the namespace fixture force-removes them).
    pods = worker_pods(kaon_rig.core("west"), namespace, "stranded")
    assert all(p.metadata.deletion_timestamp for p in pods)


def test_operator_killed_mid_admission_leaves_no_duplicate_and_no_lost_job(
    kaon_rig: Rig, jobs: Jobs, namespace: str, kaon_operator: OperatorProcess
) -> None:
    names = [f"burst-{i}" for i in range(12)]
    for name in names:
        jobs.create(namespace, name, spec(workers=3, placement=EAST), LONG_RUN)
    wait_for(
        lambda: [state(jobs.get(namespace, n)) for n in names],
        lambda states: any(s in ("Admitted", "Running") for s in states),
        "some admissions",
    )
    kaon_operator.kill()
    kaon_operator.start()
    for name in names:
        jobs.wait_state(namespace, name, "Running", timeout_s=90)
    core = kaon_rig.core("east")
    for name in names:
        pods = worker_pods(core, namespace, name)
        assert sorted(p.metadata.name for p in pods) == [f"{name}-a0-w{r}" for r in range(3)]
    assert worker_pods(kaon_rig.core("west"), namespace, "burst-0") == []
