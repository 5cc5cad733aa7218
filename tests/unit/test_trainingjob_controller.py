"""The TrainingJob controller on in-memory API servers: admission, reservations, launch, every
status transition, restarts, suspend/resume, deadline, TTL, deletion, gang rollback and
preemption."""

from __future__ import annotations

import json

import pytest

from kaon.api.names import ATTEMPT_LABEL, GPU_RESOURCE, JOB_LABEL, QUEUE_LABEL, RANK_LABEL
from kaon.clusters import paths
from kaon.clusters.client import ApiError, Obj
from kaon.controllers.trainingjob import (
    COUNTS_INTERVAL_S,
    EXPECTATION_TTL_S,
    LAUNCHED_ALONE_S,
    ROLLBACK_RETRY_S,
    STARTING_COUNTS_INTERVAL_S,
    UNREACHABLE_RETRY_S,
)
from kaon.engine.clock import rfc3339, rfc3339_micro
from kaon.lifecycle.status import WAIT_FIGURES_REFRESH_S

from enginekit import (
    GPU_TOLERATION,
    NS,
    POOL_LABEL,
    MemberSpec,
    World,
    has_finalizer,
    inferenceservice,
    job_path,
    on_loop,
    trainingjob,
)


def condition(status: Obj, type_: str) -> Obj:
    found: list[Obj] = [c for c in status.get("conditions") or [] if c["type"] == type_]
    assert found, f"no {type_} condition in {status}"
    return found[0]


def pod_posts(world: World, member: str = "west") -> int:
    return sum(1 for m, p in world.members[member].writes if (m, p) == ("POST", paths.pods(NS)))


async def placed(world: World, name: str, spec: Obj | None = None) -> None:
    """Created, given its finalizer, and admitted to a pool."""
    world.apply(trainingjob(name, spec))
    await world.reconcile_job(name)
    await world.place()
    assert world.job_status(name)["state"] == "Admitted", world.job_status(name)


async def launched(world: World, name: str, spec: Obj | None = None) -> list[str]:
    """Placed, its workers created and seen by the member; their names."""
    await placed(world, name, spec)
    await world.reconcile_job(name)
    await world.settle()
    workers = sorted(world.pods(selector=f"{JOB_LABEL}={name}"))
    assert workers, f"no workers of {name}"
    return workers


async def running(world: World, name: str, spec: Obj | None = None) -> list[str]:
    """Launched, every worker bound and running, and the job says so."""
    workers = await launched(world, name, spec)
    world.run_pods(workers)
    await world.settle()
    await world.reconcile_job(name)
    assert world.job_status(name)["state"] == "Running", world.job_status(name)
    return workers


# Finalizer, spec, admission --------------------------------------------------------------------


@on_loop
async def test_the_first_reconcile_adds_the_finalizer_once(world: World) -> None:
    world.apply(trainingjob("j1"))
    writes = world.hub_writes()
    assert await world.reconcile_job("j1") is None
    assert has_finalizer(world.job("j1"))
    assert world.hub_writes() == writes + 1  # the finalizer; status waits for admission
    await world.reconcile_job("j1")
    assert world.hub_writes() == writes + 1


@on_loop
async def test_an_invalid_spec_fails_the_job_once(world: World) -> None:
    body = trainingjob("bad")
    body["spec"] = {"workers": 2}  # no model: the CRD would refuse it, an older operator not
    world.apply(body)
    await world.reconcile_job("bad")
    status = world.job_status("bad")
    assert status["state"] == "Failed"
    assert condition(status, "Failed")["reason"] == "InvalidSpec"
    writes = world.hub_writes()
    await world.reconcile_job("bad")
    await world.place()
    assert world.hub_writes() == writes
    assert world.pods() == {}


@on_loop
async def test_admission_places_the_gang_and_says_where(world: World) -> None:
    world.apply(trainingjob("j1"))
    await world.reconcile_job("j1")
    await world.place()
    status = world.job_status("j1")
    assert status["state"] == "Admitted"
    assert status["placement"] == {
        "cluster": "west",
        "pool": "cpu",
        "accelerator": "",
        "gpusPerWorker": 0,
        "costPerHour": 1.5,  # 2 workers of 6 of a node's 8 cores, 1 per node-hour
        "why": "preference 1 (cpu): 1.5/h, the only pool with room",
        "nodes": ["west-cpu-0", "west-cpu-1"],  # 6 of 8 cores each: one worker a node
    }
    assert status["admittedAt"] == rfc3339_micro(world.clock)
    assert status["workers"]["total"] == 2 and status["observedGeneration"] == 1
    assert condition(status, "Admitted")["status"] == "True"
    (event,) = world.events("j1", "Placed")
    assert event["message"] == (
        "pool cpu in cluster west: preference 1 (cpu): 1.5/h, the only pool with room"
    )
    assert event["type"] == "Normal"
    assert event["involvedObject"]["kind"] == "TrainingJob"


@on_loop
async def test_a_job_is_admitted_only_once_it_carries_the_finalizer(world: World) -> None:
    # Admitted first, the guarded status write would race the finalizer's and get a 409.
    world.apply(trainingjob("j1"))
    writes = world.hub_writes()
    await world.place()
    assert world.hub_writes() == writes
    assert "placement" not in world.job_status("j1")
    await world.reconcile_job("j1")
    await world.place()
    assert world.job_status("j1")["state"] == "Admitted"
    assert world.hub_writes() == writes + 2  # the finalizer, then the admission


@on_loop
async def test_a_gpu_gang_lands_on_the_gpu_pool_with_its_toleration(world: World) -> None:
    spec = {"workers": 2, "resources": {"cpu": "2", "gpus": 2}}
    workers = await launched(world, "gpu", spec)
    status = world.job_status("gpu")
    assert status["placement"]["pool"] == "gpu"
    assert status["placement"]["accelerator"] == "nvidia-t4"
    assert status["placement"]["gpusPerWorker"] == 2
    nodes = status["placement"]["nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 1  # 2 + 2 of a node's 4 GPUs: packed
    for name in workers:
        pod = world.pods()[name]["spec"]
        assert pod["nodeSelector"] == {POOL_LABEL: "gpu"}
        assert pod["tolerations"] == [GPU_TOLERATION]
        assert pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "2"
        preferred = pod["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert preferred[0]["preference"]["matchFields"][0]["values"] == nodes[:1]


@on_loop
async def test_a_job_that_cannot_fit_now_waits_and_tells_only_a_new_reason(world: World) -> None:
    await placed(world, "hog", {"workers": 1, "resources": {"cpu": "2", "gpus": 4}})
    world.apply(trainingjob("late", {"workers": 1, "resources": {"cpu": "2", "gpus": 4}}))
    await world.reconcile_job("late")
    await world.place()
    status = world.job_status("late")
    assert status["state"] == "Waiting" and status.get("placement") is None
    admitted = condition(status, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "InsufficientGPU")
    assert "0 of 4 GPUs free" in admitted["message"]
    assert len(world.events("late", "Waiting")) == 1

    writes = world.hub_writes()
    await world.place()  # nothing changed: nothing written, nothing told
    assert world.hub_writes() == writes and len(world.events("late", "Waiting")) == 1

    world.members["west"].add_node(
        "west-gpu-small", cpu="16", memory="64Gi", gpus=2, labels={POOL_LABEL: "gpu"}
    )
    await world.settle()
    await world.place()  # only the figures changed, just after a write: not written yet
    assert "0 of 4 GPUs free" in condition(world.job_status("late"), "Admitted")["message"]
    assert world.hub_writes() == writes
    world.clock.advance(WAIT_FIGURES_REFRESH_S)
    await world.place()  # the same reason, new figures, later: written, not told again
    assert "2 of 4 GPUs free" in condition(world.job_status("late"), "Admitted")["message"]
    assert world.hub_writes() == writes + 1 and len(world.events("late", "Waiting")) == 1

    await world.lose("west")
    await world.place()
    assert condition(world.job_status("late"), "Admitted")["reason"] == "ClusterUnavailable"
    assert len(world.events("late", "Waiting")) == 2


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"workers": 1, "resources": {"gpus": 8}}, "NoPoolFits"),
        (
            {"placement": {"clusterSelector": {"matchLabels": {"region": "mars"}}}},
            "NoMatchingCluster",
        ),
    ],
)
@on_loop
async def test_a_job_no_pool_can_ever_hold_fails(world: World, spec: Obj, reason: str) -> None:
    world.apply(trainingjob("never", spec))
    await world.reconcile_job("never")
    await world.place()
    status = world.job_status("never")
    assert status["state"] == "Failed"
    assert condition(status, "Failed")["reason"] == reason
    assert [e["type"] for e in world.events("never", reason)] == ["Warning"]


# Reservations: one admission path ----------------------------------------------------------------


@on_loop
async def test_a_placed_gang_holds_its_pool_before_its_pods_exist(world: World) -> None:
    await placed(world, "first")  # 12 of the pool's 16 cores; no pod created yet
    world.apply(trainingjob("second"))
    await world.reconcile_job("second")
    await world.place()
    assert world.pods() == {}
    assert condition(world.job_status("second"), "Admitted")["reason"] == "InsufficientCPU"


@on_loop
async def test_gangs_decided_in_one_pass_count_against_each_other(world: World) -> None:
    world.apply(trainingjob("a"))
    world.apply(trainingjob("b"))
    await world.reconcile_job("a")
    await world.reconcile_job("b")
    await world.place()
    assert world.job_status("a")["state"] == "Admitted"  # FIFO, then by name
    assert world.job_status("b")["state"] == "Waiting"


@on_loop
async def test_a_services_decided_replicas_hold_capacity_against_jobs(world: World) -> None:
    world.apply(inferenceservice("svc", {"resources": {"cpu": "6"}, "replicas": {"min": 2}}))
    await world.reconcile_service("svc")
    held = world.manager.admission.reservations()
    assert [(r.cluster, r.pool, r.count) for r in held] == [("west", "cpu", 2)]
    world.apply(trainingjob("j1"))
    await world.reconcile_job("j1")
    await world.place()
    assert world.pods() == {}  # no replica pod exists: the Deployment's are not made here
    assert condition(world.job_status("j1"), "Admitted")["reason"] == "InsufficientCPU"


@on_loop
async def test_a_placed_gang_holds_capacity_against_a_service(world: World) -> None:
    await placed(world, "j1")
    world.apply(inferenceservice("svc", {"resources": {"cpu": "6"}}))
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Waiting"
    assert condition(status, "Placed")["reason"] == "InsufficientCPU"


# Launch and running ---------------------------------------------------------------------------


@on_loop
async def test_launch_creates_the_rendezvous_service_and_one_pod_per_rank(world: World) -> None:
    workers = await launched(world, "j1")
    assert workers == ["j1-a0-w0", "j1-a0-w1"]
    for rank, name in enumerate(workers):
        labels = world.pods()[name]["metadata"]["labels"]
        assert labels[JOB_LABEL] == "j1" and labels[ATTEMPT_LABEL] == "0"
        assert labels[RANK_LABEL] == str(rank)
        assert world.pods()[name]["spec"]["nodeSelector"] == {POOL_LABEL: "cpu"}
    west = world.members["west"]
    service = west.peek(f"{paths.services(NS)}/j1")
    assert service is not None and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"][RANK_LABEL] == "0"
    assert west.peek(f"/api/v1/namespaces/{NS}/serviceaccounts/kaon-worker") is not None

    writes = world.hub_writes()
    await world.reconcile_job("j1")  # pods seen Pending: nothing to create, nothing to say yet
    assert pod_posts(world) == 2 and world.hub_writes() == writes
    assert world.job_status("j1").get("launched") is not True
    world.clock.advance(LAUNCHED_ALONE_S)
    await world.reconcile_job("j1")  # `launched` is written alone once the workers are quiet
    assert world.job_status("j1")["launched"] is True and world.hub_writes() == writes + 1


@on_loop
async def test_running_workers_make_the_job_running_with_counts(world: World) -> None:
    await running(world, "j1")
    status = world.job_status("j1")
    assert status["workers"] == {"total": 2, "ready": 2, "succeeded": 0, "failed": 0}
    assert status["launched"] is True and status["startTime"] == rfc3339(world.clock)
    assert condition(status, "Running")["reason"] == "WorkersRunning"

    writes, events = world.hub_writes(), len(world.events("j1"))
    await world.reconcile_job("j1")  # nothing changed: the status write is skipped
    assert world.hub_writes() == writes and len(world.events("j1")) == events


@on_loop
async def test_a_starting_gangs_partial_counts_wait_and_its_running_is_written_at_once(
    world: World,
) -> None:
    workers = await launched(world, "j1")
    world.run_pods(workers[:1])
    await world.settle()
    writes = world.hub_writes()
    delay = await world.reconcile_job("j1")
    assert delay is not None and 0 < delay <= STARTING_COUNTS_INTERVAL_S
    world.clock.advance(COUNTS_INTERVAL_S)
    await world.reconcile_job("j1")  # a running job's interval has passed, a starting one's not
    assert world.hub_writes() == writes
    world.clock.advance(STARTING_COUNTS_INTERVAL_S)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["workers"]["ready"] == 1 and status["state"] == "Admitted"
    assert status["launched"] is True  # rode along with the counts

    world.run_pods(workers[1:])
    await world.settle()
    await world.reconcile_job("j1")  # no wait: Running is a state, not a count
    assert world.job_status("j1")["state"] == "Running"


@on_loop
async def test_a_running_jobs_counts_are_written_at_most_once_a_second(world: World) -> None:
    workers = await running(world, "j1")
    world.run_pods(workers[1:], phase="Succeeded")
    await world.settle()
    writes = world.hub_writes()
    world.clock.advance(COUNTS_INTERVAL_S / 2)
    delay = await world.reconcile_job("j1")
    assert delay is not None and 0 < delay <= COUNTS_INTERVAL_S and world.hub_writes() == writes
    world.clock.advance(COUNTS_INTERVAL_S)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["workers"]["succeeded"] == len(workers) - 1 and status["state"] == "Running"


@on_loop
async def test_all_workers_succeeded_report_rank_zeros_metrics(world: World) -> None:
    workers = await running(world, "j1")
    report = {"metrics": {"accuracy": 0.97, "f1": 0.95}, "artifact": "/var/lib/kaon/out"}
    world.run_pods(workers[:1], phase="Succeeded", termination_message=json.dumps(report))
    world.run_pods(workers[1:], phase="Succeeded")
    await world.settle()
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["state"] == "Succeeded"
    assert status["metrics"] == {"accuracy": 0.97, "f1": 0.95}
    assert status["artifact"] == "/var/lib/kaon/out"
    assert status["progress"]["percent"] == 100 and status["completionTime"]
    assert status["workers"]["succeeded"] == 2
    assert condition(status, "Succeeded")["status"] == "True"
    assert len(world.events("j1", "Succeeded")) == 1


@on_loop
async def test_on_a_claim_the_artifact_is_named_where_servers_mount_it(world: World) -> None:
    workers = await running(world, "j1", {"checkpoint": {"claimName": "models"}})
    report = json.dumps({"artifact": "/var/lib/kaon/jobs/j1/output"})
    world.run_pods(workers, phase="Succeeded", termination_message=report)
    await world.settle()
    await world.reconcile_job("j1")
    assert world.job_status("j1")["artifact"] == "pvc://models/jobs/j1/output"


# Restarts ---------------------------------------------------------------------------------------


@on_loop
async def test_a_failed_worker_restarts_the_gang_charged(world: World) -> None:
    workers = await running(world, "j1")
    world.run_pods(workers[1:], phase="Failed", exit_code=2, termination_message="boom")
    await world.settle()
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert (status["attempt"], status["restarts"], status["infraRestarts"]) == (1, 1, 0)
    assert status["state"] == "Admitted" and status["launched"] is False
    assert condition(status, "Running")["reason"] == "GangRestarting"
    (event,) = world.events("j1", "GangRestarted")
    assert "worker 1 exited with code 2: boom" in event["message"]
    assert "(charged to backoffLimit)" in event["message"]

    await world.settle()
    assert world.pods() == {}  # the old attempt is gone
    await world.reconcile_job("j1")
    await world.settle()
    pods = world.pods()
    assert sorted(pods) == ["j1-a1-w0", "j1-a1-w1"]
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in pods.values()} == {"1"}


@on_loop
async def test_past_the_backoff_limit_the_job_fails_and_keeps_failed_pods(world: World) -> None:
    workers = await running(world, "j1", {"runPolicy": {"backoffLimit": 0}})
    world.run_pods(workers[1:], phase="Failed")
    await world.settle()
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["state"] == "Failed" and status["attempt"] == 0
    assert condition(status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert len(world.events("j1", "BackoffLimitExceeded")) == 1
    await world.settle()
    assert sorted(world.pods()) == ["j1-a0-w1"]  # the running rank stopped, the failed one kept


@on_loop
async def test_a_restart_is_recorded_on_the_hub_before_the_gang_is_removed(world: World) -> None:
    """An operator that dies between the two must not find the gang missing (a free restart)."""
    workers = await running(world, "j1")
    world.run_pods(workers[1:], phase="Failed", exit_code=2)
    await world.settle()
    world.hub.fail("PATCH", job_path("j1"), ApiError(500, "InternalError", "etcd"))
    with pytest.raises(ApiError):
        await world.reconcile_job("j1")
    await world.settle()
    assert sorted(world.pods()) == workers  # nothing removed: the restart was not written
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert (status["attempt"], status["restarts"], status["infraRestarts"]) == (1, 1, 0)


@on_loop
async def test_a_failed_job_stops_the_workers_still_running_when_looked_at_again(
    world: World,
) -> None:
    workers = await running(world, "j1", {"runPolicy": {"backoffLimit": 0}})
    world.run_pods(workers[1:], phase="Failed")
    await world.settle()
    world.members["west"].fail("DELETE", paths.pod(NS, workers[0]), ApiError(500, "x", "etcd"))
    with pytest.raises(ApiError):
        await world.reconcile_job("j1")
    assert world.job_status("j1")["state"] == "Failed"  # written before the workers stop
    await world.settle()
    assert sorted(world.pods()) == workers
    await world.reconcile_job("j1")
    await world.settle()
    assert sorted(world.pods()) == workers[1:]


@pytest.mark.parametrize("how", ["deleted", "disrupted"])
@on_loop
async def test_infrastructure_loss_restarts_the_gang_free(world: World, how: str) -> None:
    workers = await running(world, "j1", {"runPolicy": {"backoffLimit": 0}})
    if how == "deleted":
        world.members["west"].remove(paths.pod(NS, workers[0]))
    else:
        disruption = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByKubelet"}
        world.run_pods(workers[:1], phase="Failed", conditions=[disruption])
    await world.settle()
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert (status["attempt"], status["restarts"], status["infraRestarts"]) == (1, 0, 1)
    assert status["state"] == "Admitted"
    (event,) = world.events("j1", "GangRestarted")
    assert "(not charged)" in event["message"]
    assert ("disappeared" if how == "deleted" else "PreemptionByKubelet") in event["message"]


@on_loop
async def test_a_placed_job_on_an_unreachable_member_is_looked_at_again_later(
    world: World,
) -> None:
    await running(world, "j1")
    await world.lose("west")
    writes = world.hub_writes()
    assert await world.reconcile_job("j1") == UNREACHABLE_RETRY_S
    assert world.hub_writes() == writes and world.job_status("j1")["state"] == "Running"


# Suspend and resume -----------------------------------------------------------------------------


@on_loop
async def test_suspend_frees_the_pool_for_a_waiting_job_and_resume_queues_again(
    world: World,
) -> None:
    await running(world, "a")
    world.apply(trainingjob("b"))
    await world.reconcile_job("b")
    await world.place()
    assert world.job_status("b")["state"] == "Waiting"

    world.edit(job_path("a"), {"spec": {"runPolicy": {"suspend": True}}})
    await world.reconcile_job("a")
    status = world.job_status("a")
    assert status["state"] == "Suspended" and status.get("placement") is None
    assert condition(status, "Suspended")["status"] == "True"
    assert len(world.events("a", "Suspended")) == 1
    await world.settle()
    assert world.pods(selector=f"{JOB_LABEL}=a") == {}
    writes = world.hub_writes()
    await world.reconcile_job("a")  # suspended and said so: nothing more
    assert world.hub_writes() == writes

    await world.place()
    assert world.job_status("b")["state"] == "Admitted"
    assert world.job_status("a")["state"] == "Suspended"  # not placed while suspended

    world.edit(job_path("a"), {"spec": {"runPolicy": {"suspend": False}}})
    await world.reconcile_job("a")
    assert condition(world.job_status("a"), "Suspended")["status"] == "False"
    assert len(world.events("a", "Resumed")) == 1
    await world.place()
    assert world.job_status("a")["state"] == "Waiting"  # b holds the pool now

    world.delete(job_path("b"))
    await world.reconcile_job("b")
    await world.place()
    assert world.job_status("a")["state"] == "Admitted"


# Deadline, TTL, deletion ------------------------------------------------------------------------


@on_loop
async def test_past_its_active_deadline_the_job_fails(world: World) -> None:
    workers = await launched(world, "j1", {"runPolicy": {"activeDeadlineSeconds": 60}})
    world.run_pods(workers)
    await world.settle()
    assert await world.reconcile_job("j1") == 60.5  # looked at again once the deadline passed
    world.clock.advance(59)
    await world.reconcile_job("j1")
    assert world.job_status("j1")["state"] == "Running"
    world.clock.advance(2)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["state"] == "Failed"
    assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
    await world.settle()
    assert world.pods() == {}  # running workers are stopped


@on_loop
async def test_a_finished_job_is_deleted_once_its_ttl_passed(world: World) -> None:
    workers = await running(world, "j1", {"runPolicy": {"ttlSecondsAfterFinished": 30}})
    world.run_pods(workers, phase="Succeeded")
    await world.settle()
    await world.reconcile_job("j1")
    assert world.job_status("j1")["state"] == "Succeeded"
    assert await world.reconcile_job("j1") == 30.5
    world.clock.advance(29)
    assert await world.reconcile_job("j1") == 1.5
    world.clock.advance(2)
    await world.reconcile_job("j1")
    body = world.job("j1")
    assert body is not None and body["metadata"].get("deletionTimestamp")
    await world.reconcile_job("j1")  # the finalizer's clean-up, then it is gone
    assert world.job("j1") is None
    await world.settle()
    assert world.pods() == {}


@on_loop
async def test_deletion_cleans_the_member_then_removes_the_finalizer(world: World) -> None:
    await running(world, "j1")
    world.delete(job_path("j1"))
    assert has_finalizer(world.job("j1"))
    await world.reconcile_job("j1")
    assert world.job("j1") is None
    assert "j1" not in {k[1] for k, _ in world.jobs.cache.items()}
    assert world.jobs.memory.peek((NS, "j1")) is None
    await world.settle()
    assert world.pods() == {}
    assert world.members["west"].peek(f"{paths.services(NS)}/j1") is None


@on_loop
async def test_deletion_waits_for_an_unreachable_member(world: World) -> None:
    await running(world, "j1")
    await world.lose("west")
    world.delete(job_path("j1"))
    assert await world.reconcile_job("j1") == UNREACHABLE_RETRY_S
    assert has_finalizer(world.job("j1"))
    assert len(world.pods()) == 2

    await world.regain("west")
    await world.reconcile_job("j1")
    assert world.job("j1") is None
    await world.settle()
    assert world.pods() == {}


# Gang rollback ----------------------------------------------------------------------------------


@on_loop
async def test_a_gang_that_cannot_be_created_whole_is_rolled_back_and_waits(
    world: World,
) -> None:
    await placed(world, "j1")
    quota = ApiError(403, "Forbidden", 'pods "j1-a0-w1" is forbidden: exceeded quota')
    world.members["west"].fail("POST", paths.pods(NS), quota)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert status["state"] == "Waiting" and status.get("placement") is None
    admitted = condition(status, "Admitted")
    assert admitted["reason"] == "GangRollback" and "exceeded quota" in admitted["message"]
    assert len(world.events("j1", "GangRollback")) == 1
    await world.settle()
    assert world.pods() == {}  # the worker that was created is removed again

    writes = world.hub_writes()
    world.clock.advance(ROLLBACK_RETRY_S - 1)
    await world.place()
    assert world.hub_writes() == writes and world.job_status("j1")["state"] == "Waiting"

    world.clock.advance(1)
    await world.place()
    assert world.job_status("j1")["state"] == "Admitted"
    await world.reconcile_job("j1")
    await world.settle()
    assert sorted(world.pods()) == ["j1-a1-w0", "j1-a1-w1"]  # a new attempt


@on_loop
async def test_a_rollback_that_cannot_remove_its_pods_leaves_them_to_an_old_attempt(
    world: World,
) -> None:
    """A member that stops answering mid-launch keeps the workers already created. The job is
    placed again as a new attempt, so those can never pass for the current gang (nor commit)."""
    await placed(world, "j1")
    down = ApiError(0, "Unreachable", "connection reset")
    world.members["west"].fail("POST", paths.pods(NS), down)
    world.members["west"].fail("DELETE", paths.pods(NS), down)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert condition(status, "Admitted")["reason"] == "GangRollback"
    assert (status["attempt"], status["restarts"], status["infraRestarts"]) == (1, 0, 0)
    await world.settle()
    left = sorted(world.pods())
    assert left and all(name.startswith("j1-a0-") for name in left)
    world.clock.advance(ROLLBACK_RETRY_S)
    await world.place()
    await world.reconcile_job("j1")
    await world.settle()
    assert {n for n in world.pods() if n.startswith("j1-a1-")} == {"j1-a1-w0", "j1-a1-w1"}


# Lagging watches and leftovers --------------------------------------------------------------


@on_loop
async def test_workers_created_but_not_yet_seen_count_as_pending(world: World) -> None:
    await placed(world, "j1")
    world.members["west"].hold_watches()  # the member's watch lags behind our creates
    await world.reconcile_job("j1")
    await world.reconcile_job("j1")
    assert world.member().pods_of((NS, "j1")) == {}
    assert pod_posts(world) == 2  # not created again, and the gang is not restarted
    assert world.job_status("j1")["attempt"] == 0 and world.events("j1", "GangRestarted") == []
    world.members["west"].release_watches()
    await world.settle()
    assert set(world.member().pods_of((NS, "j1"))) == {"j1-a0-w0", "j1-a0-w1"}


@on_loop
async def test_workers_never_seen_are_taken_as_lost_after_a_while(world: World) -> None:
    await placed(world, "j1")
    west = world.members["west"]
    west.hold_watches()
    await world.reconcile_job("j1")
    for name in ("j1-a0-w0", "j1-a0-w1"):
        west.remove(paths.pod(NS, name))  # gone before the member's watch ever showed them
    world.clock.advance(EXPECTATION_TTL_S + 1)
    await world.reconcile_job("j1")
    status = world.job_status("j1")
    assert (status["attempt"], status["infraRestarts"], status["restarts"]) == (1, 1, 0)
    west.release_watches()


@on_loop
async def test_workers_of_an_older_attempt_are_removed(world: World) -> None:
    workers = await running(world, "j1")
    world.run_pods(workers[:1], phase="Failed")
    await world.settle()
    await world.reconcile_job("j1")  # restart: attempt 1
    await world.reconcile_job("j1")
    await world.settle()
    leftover = dict(world.pods()["j1-a1-w0"])  # as a restarted operator might find one
    leftover["metadata"] = {
        "name": "j1-a0-w0",
        "namespace": NS,
        "labels": {**leftover["metadata"]["labels"], ATTEMPT_LABEL: "0"},
    }
    world.members["west"].put(leftover)
    await world.settle()
    await world.reconcile_job("j1")
    await world.settle()
    assert sorted(world.pods()) == ["j1-a1-w0", "j1-a1-w1"]


@on_loop
async def test_a_rendezvous_service_that_cannot_be_made_rolls_the_gang_back(world: World) -> None:
    await placed(world, "j1")
    refusal = ApiError(403, "Forbidden", "services is forbidden")
    world.members["west"].fail("POST", paths.services(NS), refusal)
    await world.reconcile_job("j1")
    admitted = condition(world.job_status("j1"), "Admitted")
    assert admitted["reason"] == "GangRollback"
    assert (
        admitted["message"]
        == "gang rolled back: cluster west: 403 Forbidden: services is forbidden"
    )
    assert pod_posts(world) == 0


@on_loop
async def test_a_clean_up_the_member_refuses_is_tried_again(world: World) -> None:
    await running(world, "j1")
    world.members["west"].fail("DELETE", paths.pods(NS), ApiError(500, "InternalError", "etcd"))
    world.delete(job_path("j1"))
    assert await world.reconcile_job("j1") == UNREACHABLE_RETRY_S
    assert has_finalizer(world.job("j1"))
    await world.reconcile_job("j1")
    assert world.job("j1") is None


@on_loop
async def test_a_job_suspended_while_its_member_is_unreachable_stays_placed_until_its_workers_go(
    world: World,
) -> None:
    await running(world, "a")
    await world.lose("west")
    world.edit(job_path("a"), {"spec": {"runPolicy": {"suspend": True}}})
    assert await world.reconcile_job("a") == UNREACHABLE_RETRY_S
    status = world.job_status("a")
    assert status["state"] == "Running" and status["placement"]["cluster"] == "west"
    assert world.events("a", "Suspended") == []  # its workers may still run: the pool is held

    await world.regain("west")
    await world.reconcile_job("a")
    assert world.job_status("a")["state"] == "Suspended"
    await world.settle()
    assert world.pods(selector=f"{JOB_LABEL}=a") == {}
    world.apply(trainingjob("b"))
    await world.reconcile_job("b")
    await world.place()
    assert world.job_status("b")["state"] == "Admitted"  # the pool is free again


# Preemption ---------------------------------------------------------------------------------------


@on_loop
async def test_a_preempted_gang_holds_its_pool_until_its_workers_are_gone_then_waits_again(
    world: World,
) -> None:
    world.members["west"].graceful_pods = True  # workers stay until they have saved and exited
    queues = world.manager.queues
    queues.queue_event("ADDED", {"metadata": {"name": "q", "generation": 1}, "spec": {}})
    queues.namespace_event("ADDED", {"metadata": {"name": NS, "labels": {QUEUE_LABEL: "q"}}})
    workers = await running(world, "low")
    world.clock.advance(60)
    world.apply(trainingjob("urgent", {"runPolicy": {"priority": 5}}))
    await world.reconcile_job("urgent")
    await world.place()
    urgent, low = world.job_status("urgent"), world.job_status("low")
    assert urgent["state"] == "Waiting"
    assert condition(urgent, "Admitted")["reason"] == "PreemptionPending"
    assert low["preemptedBy"] == f"{NS}/urgent" and low["placement"]["cluster"] == "west"
    assert condition(low, "Preempted")["reason"] == "PreemptedByPriority"
    assert world.events("urgent", "Preempting") and world.events("low", "Preempted")

    await world.reconcile_job("low")  # SIGTERM to its workers; they are still saving
    await world.settle()
    leaving = world.pods(selector=f"{JOB_LABEL}=low")
    assert sorted(leaving) == workers
    assert all(p["metadata"].get("deletionTimestamp") for p in leaving.values())
    await world.place()  # the pool is still held: nothing else is decided
    assert condition(world.job_status("urgent"), "Admitted")["reason"] == "PreemptionPending"
    assert world.job_status("low")["placement"] is not None

    for name in workers:
        world.members["west"].remove(paths.pod(NS, name), force=True)  # saved, exited, gone
    await world.settle()
    await world.reconcile_job("low")
    low = world.job_status("low")
    assert (low["state"], low.get("placement"), low["attempt"], low["preemptions"]) == (
        "Waiting",
        None,
        1,
        1,
    )
    assert low["restarts"] == 0 and world.events("low", "Requeued")
    await world.place()
    assert world.job_status("urgent")["state"] == "Admitted"
    assert world.job_status("low")["state"] == "Waiting"


@on_loop
async def test_of_two_gangs_admitted_within_one_second_the_newer_is_preempted() -> None:
    async with World([MemberSpec("west", gpu_nodes=0)]) as world:  # 2 nodes of 8 cores
        queues = world.manager.queues
        queues.queue_event("ADDED", {"metadata": {"name": "q", "generation": 1}, "spec": {}})
        queues.namespace_event("ADDED", {"metadata": {"name": NS, "labels": {QUEUE_LABEL: "q"}}})
        one_worker = {"workers": 1}
        await running(world, "first", one_worker)
        world.clock.advance(0.4)  # the same whole second: only the microseconds tell them apart
        await running(world, "second", one_worker)
        first, second = world.job_status("first"), world.job_status("second")
        assert first["admittedAt"][:19] == second["admittedAt"][:19]
        assert first["admittedAt"] < second["admittedAt"]
        world.clock.advance(0.2)
        # Equally old to the second, the names would pick "first": only the microseconds say
        # that "second" came later.
        world.apply(trainingjob("urgent", {**one_worker, "runPolicy": {"priority": 5}}))
        await world.reconcile_job("urgent")
        await world.place()
        assert world.job_status("second")["preemptedBy"] == f"{NS}/urgent"
        assert world.job_status("first").get("preemptedBy") is None
