"""The InferenceService controller on in-memory API servers: model resolution, the objects it
applies to members, readiness, canary, autoscaling, failover and deletion."""

from __future__ import annotations

import json

import pytest

from kaon.api.names import ISVC_LABEL, LOAD_ANNOTATION, REVISION_LABEL, WANTED_ANNOTATION
from kaon.builders.server import Revision
from kaon.clusters import paths
from kaon.clusters.client import Obj
from kaon.controllers.inferenceservice import RETRY_S
from kaon.engine.clock import rfc3339, rfc3339_micro

from enginekit import (
    NS,
    POOL_LABEL,
    MemberSpec,
    World,
    cluster_path,
    compute_cluster,
    deployment_path,
    has_finalizer,
    inferenceservice,
    isvc_path,
    job_path,
    on_loop,
    trainingjob,
)

FROM_TRAINER: Obj = {"model": {"uri": None, "trainingJobRef": {"name": "trainer"}}}


def condition(status: Obj, type_: str) -> Obj:
    found: list[Obj] = [c for c in status.get("conditions") or [] if c["type"] == type_]
    assert found, f"no {type_} condition in {status}"
    return found[0]


def deployment(world: World, revision: Revision = "stable", member: str = "west") -> Obj | None:
    return world.members[member].peek(deployment_path("svc", revision))


def set_load(world: World, pod: str, inflight: float, member: str = "west", **extra: float) -> None:
    """The server reports its load on its own pod, as the runtime does."""
    report = json.dumps({"inflight": inflight, "rps": 1.0, "ts": world.clock.wall(), **extra})
    world.members[member].edit(
        paths.pod(NS, pod), {"metadata": {"annotations": {LOAD_ANNOTATION: report}}}
    )


async def ready(world: World, spec: Obj | None = None) -> list[str]:
    """The service `svc` applied, one stable replica running and the status Ready."""
    world.apply(inferenceservice("svc", spec))
    await world.reconcile_service("svc")
    pods = world.spawn_replicas("svc")
    world.run_pods(pods)
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "Ready", world.service_status("svc")
    return pods


@on_loop
async def test_a_uri_model_is_deployed_then_ready_when_its_replica_is(world: World) -> None:
    world.apply(inferenceservice("svc"))
    await world.reconcile_service("svc")
    assert has_finalizer(world.hub.peek(isvc_path("svc")))
    status = world.service_status("svc")
    assert status["state"] == "Deploying"
    assert status["model"] == {"claim": "models", "path": "digits"}
    assert status["clusters"] == [
        {
            "cluster": "west",
            "pool": "cpu",
            "accelerator": "",
            "gpusPerReplica": 0,
            "url": "http://svc.team.svc.cluster.local",
            "replicas": 1,
            "readyReplicas": 0,
            "canaryReplicas": 0,
            "endpoints": [],
        }
    ]
    assert status["desiredReplicas"] == 1 and status["url"] == "http://svc.team.svc.cluster.local"
    assert condition(status, "Ready")["reason"] == "ReplicasNotReady"
    (placed,) = world.events("svc", "Placed")
    assert placed["message"] == "replicas in west/cpu"

    stable = deployment(world)
    assert stable is not None and stable["spec"]["replicas"] == 1
    template = stable["spec"]["template"]["spec"]
    assert template["nodeSelector"] == {POOL_LABEL: "cpu"}
    assert template["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
    env = {e["name"]: e.get("value") for e in template["containers"][0]["env"]}
    assert env["KAON_REVISION"] == "stable"  # the revision label of its quality metrics
    assert condition(status, "Drift")["reason"] == "NotMeasured"
    assert deployment(world, "canary") is None
    service = world.members["west"].peek(f"{paths.services(NS)}/svc")
    assert service is not None and service["spec"]["selector"] == {ISVC_LABEL: "svc"}

    pods = world.spawn_replicas("svc")
    world.run_pods(pods)
    await world.settle()
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Ready" and status["readyReplicas"] == 1
    assert condition(status, "Ready")["reason"] == "ReplicasReady"
    (ready_pod,) = (world.members["west"].peek(paths.pod(NS, p)) for p in pods)
    assert ready_pod is not None
    address = f"{ready_pod['status']['podIP']}:8080"
    assert status["clusters"][0]["endpoints"] == [{"address": address, "revision": "stable"}]


@on_loop
async def test_nothing_is_applied_or_written_again_when_nothing_changed(world: World) -> None:
    await ready(world)
    member_writes, hub_writes = len(world.members["west"].writes), world.hub_writes()
    events = len(world.events("svc"))
    await world.reconcile_service("svc")
    await world.reconcile_service("svc")
    assert len(world.members["west"].writes) == member_writes
    assert world.hub_writes() == hub_writes and len(world.events("svc")) == events


@on_loop
async def test_an_invalid_spec_fails_the_service(world: World) -> None:
    body = inferenceservice("svc")
    body["spec"]["replicas"] = {"min": -1}
    world.apply(body)
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Failed"
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert deployment(world) is None


@on_loop
async def test_a_service_no_pool_can_hold_waits_with_the_reason(world: World) -> None:
    world.apply(inferenceservice("svc", {"resources": {"gpus": 8}}))
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Waiting"
    assert condition(status, "Placed")["reason"] == "NoPoolFits"
    assert deployment(world) is None and world.manager.admission.reservations() == []


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (None, "ModelNotFound"),
        ({}, "ModelNotServable"),
        ({"checkpoint": {"claimName": "models"}}, "ModelNotReady"),
    ],
)
@on_loop
async def test_a_model_from_a_job_waits_until_it_can_be_served(
    world: World, job: Obj | None, reason: str
) -> None:
    if job is not None:
        world.apply(trainingjob("trainer", job))
        await world.reconcile_job("trainer")
    world.apply(inferenceservice("svc", FROM_TRAINER))
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Waiting"
    assert condition(status, "Placed")["reason"] == reason
    assert deployment(world) is None


@on_loop
async def test_the_artifact_of_a_succeeded_job_is_served_from_its_claim(world: World) -> None:
    job = {"workers": 1, "resources": {"cpu": "1"}, "checkpoint": {"claimName": "models"}}
    world.apply(trainingjob("trainer", job))
    await world.reconcile_job("trainer")
    await world.place()
    await world.reconcile_job("trainer")
    await world.settle()
    world.apply(inferenceservice("svc", FROM_TRAINER))
    await world.reconcile_service("svc")
    assert condition(world.service_status("svc"), "Placed")["reason"] == "ModelNotReady"

    world.run_pods(["trainer-a0-w0"], phase="Succeeded")
    await world.settle()
    await world.reconcile_job("trainer")
    assert world.job_status("trainer")["state"] == "Succeeded"
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["model"] == {"claim": "models", "path": "jobs/trainer/output"}
    stable = deployment(world)
    assert stable is not None
    args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-dir") + 1] == "/var/lib/kaon/models/jobs/trainer/output"


@on_loop
async def test_a_canary_takes_its_share_of_the_replicas(world: World) -> None:
    canary = {"model": {"uri": "pvc://models/v2"}, "trafficPercent": 25}
    world.apply(inferenceservice("svc", {"replicas": {"min": 4, "max": 4}, "canary": canary}))
    await world.reconcile_service("svc")
    stable, canary_dep = deployment(world), deployment(world, "canary")
    assert stable is not None and canary_dep is not None
    assert (stable["spec"]["replicas"], canary_dep["spec"]["replicas"]) == (3, 1)
    args = canary_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-dir") + 1] == "/var/lib/kaon/models/v2"
    status = world.service_status("svc")
    assert status["canary"] == {"requestedPercent": 25, "effectivePercent": 25, "replicas": 1}
    assert condition(status, "CanaryShare")["reason"] == "Exact"
    assert status["clusters"][0]["canaryReplicas"] == 1

    world.run_pods(world.spawn_replicas("svc"))
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "Deploying"  # the canary has no ready replica
    world.run_pods(world.spawn_replicas("svc", "canary"))
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "Ready"

    world.edit(isvc_path("svc"), {"spec": {"canary": None}})
    await world.reconcile_service("svc")
    assert deployment(world, "canary") is None
    status = world.service_status("svc")
    assert status.get("canary") is None
    assert "CanaryShare" not in {c["type"] for c in status["conditions"]}
    revisions = {
        p["metadata"]["labels"][REVISION_LABEL]
        for p in world.pods(selector=f"{ISVC_LABEL}=svc").values()
    }
    assert revisions == {"stable", "canary"}  # pods go with their Deployment, on the member


@on_loop
async def test_a_replicas_drift_report_raises_the_drift_condition_at_the_spec_threshold(
    world: World,
) -> None:
    (pod,) = await ready(world, {"monitoring": {"driftThreshold": 0.5}})
    set_load(world, pod, 1, drift=0.3, driftFeature=7)
    await world.settle()
    await world.reconcile_service("svc")
    assert condition(world.service_status("svc"), "Drift")["reason"] == "NoDrift"
    set_load(world, pod, 1, drift=0.8, driftFeature=7)
    await world.settle()
    await world.reconcile_service("svc")
    drift = condition(world.service_status("svc"), "Drift")
    assert (drift["status"], drift["reason"]) == ("True", "InputDrift")
    assert "stable replica in west" in drift["message"] and "feature 7" in drift["message"]
    assert "PSI 0.5" in drift["message"]


@on_loop
async def test_load_reports_scale_up_at_once_and_down_after_the_delay(world: World) -> None:
    (pod,) = await ready(world, {"autoscaling": {"targetConcurrency": 8}})
    set_load(world, pod, 20)  # 20 in flight at 8 per replica: 3 replicas
    await world.settle()
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["desiredReplicas"] == 3 and status["lastScaleTime"] == rfc3339(world.clock)
    (event,) = world.events("svc", "ScaledUp")
    assert event["message"] == "1 -> 3 replicas"
    stable = deployment(world)
    assert stable is not None and stable["spec"]["replicas"] == 3

    set_load(world, pod, 0)
    await world.settle()
    world.clock.advance(30)
    set_load(world, pod, 0)
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["desiredReplicas"] == 3  # within scaleDownDelaySeconds
    world.clock.advance(31)
    set_load(world, pod, 0)
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["desiredReplicas"] == 1
    assert [e["message"] for e in world.events("svc", "ScaledDown")] == ["3 -> 1 replicas"]


@on_loop
async def test_replicas_fail_over_once_a_member_is_lost_for_the_grace(world2: World) -> None:
    world = world2
    world.apply(inferenceservice("svc"))
    await world.reconcile_service("svc")
    assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["west"]
    assert deployment(world) is not None

    await world.lose("west")
    await world.reconcile_service("svc")
    world.clock.advance(world.settings.failover_grace_s - 1)
    await world.reconcile_service("svc")
    assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["west"]
    assert world.events("svc", "FailedOver") == []

    world.clock.advance(1)
    await world.reconcile_service("svc")
    assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["east"]
    (event,) = world.events("svc", "FailedOver")
    assert event["type"] == "Warning"
    assert event["message"] == "cluster west unreachable for 10s: replicas now in east/cpu"
    assert deployment(world, member="east") is not None

    await world.regain("west")
    await world.reconcile_service("svc")  # what was left in west is removed once it answers
    assert deployment(world) is None
    assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["east"]


@on_loop
async def test_replicas_spread_over_clusters(world2: World) -> None:
    world = world2
    world.apply(
        inferenceservice("svc", {"replicas": {"min": 3, "max": 3}, "placement": {"clusters": 2}})
    )
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert [(c["cluster"], c["replicas"]) for c in status["clusters"]] == [("west", 2), ("east", 1)]
    west, east = deployment(world), deployment(world, member="east")
    assert west is not None and east is not None
    assert (west["spec"]["replicas"], east["spec"]["replicas"]) == (2, 1)


@on_loop
async def test_deletion_removes_the_service_from_members_then_the_finalizer(
    world: World,
) -> None:
    await ready(world)
    await world.lose("west")
    world.delete(isvc_path("svc"))
    assert await world.reconcile_service("svc") == RETRY_S
    assert has_finalizer(world.hub.peek(isvc_path("svc")))
    assert deployment(world) is not None

    await world.regain("west")
    await world.reconcile_service("svc")
    assert world.hub.peek(isvc_path("svc")) is None
    assert deployment(world) is None
    assert world.members["west"].peek(f"{paths.services(NS)}/svc") is None
    assert world.services.memory.peek((NS, "svc")) is None


@on_loop
async def test_deletion_is_not_held_up_by_a_cluster_the_service_never_ran_on(
    world: World,
) -> None:
    await ready(world)
    # A second ComputeCluster whose kubeconfig Secret does not exist: registered, no client.
    body = compute_cluster(MemberSpec("north"), "north-kubeconfig")
    world.hub.put(body)
    stored = world.hub.peek(cluster_path("north"))
    assert stored is not None
    await world.manager.clusters.object_event("ADDED", stored)
    assert world.manager.fleet.member("north") is None

    world.delete(isvc_path("svc"))
    assert await world.reconcile_service("svc") is None
    assert world.hub.peek(isvc_path("svc")) is None
    assert deployment(world) is None


@on_loop
async def test_a_served_model_keeps_being_served_when_its_job_goes(world: World) -> None:
    job = {"workers": 1, "resources": {"cpu": "1"}, "checkpoint": {"claimName": "models"}}
    world.apply(trainingjob("trainer", job))
    await world.reconcile_job("trainer")
    await world.place()
    await world.reconcile_job("trainer")
    await world.settle()
    world.run_pods(["trainer-a0-w0"], phase="Succeeded")
    await world.settle()
    await world.reconcile_job("trainer")
    world.apply(inferenceservice("svc", FROM_TRAINER))
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "Deploying"

    world.delete(job_path("trainer"))
    await world.reconcile_job("trainer")
    assert world.job("trainer") is None
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["state"] == "Deploying"
    assert status["model"] == {"claim": "models", "path": "jobs/trainer/output"}
    assert deployment(world) is not None


@on_loop
async def test_a_canary_whose_model_is_not_ready_gets_no_share(world: World) -> None:
    world.apply(trainingjob("v2", {"checkpoint": {"claimName": "models"}}))
    await world.reconcile_job("v2")
    canary = {"model": {"trainingJobRef": {"name": "v2"}}, "trafficPercent": 50}
    world.apply(inferenceservice("svc", {"replicas": {"min": 2, "max": 2}, "canary": canary}))
    await world.reconcile_service("svc")
    assert deployment(world, "canary") is None
    stable = deployment(world)
    assert stable is not None and stable["spec"]["replicas"] == 2
    status = world.service_status("svc")
    assert status["canary"] == {"requestedPercent": 0, "effectivePercent": 0, "replicas": 0}


@on_loop
async def test_fewer_clusters_than_asked_for_is_degraded_once_ready(world: World) -> None:
    world.apply(inferenceservice("svc", {"placement": {"clusters": 2}}))
    await world.reconcile_service("svc")
    placed = condition(world.service_status("svc"), "Placed")
    assert (placed["status"], placed["reason"]) == ("True", "SpreadIncomplete")
    world.run_pods(world.spawn_replicas("svc"))
    await world.settle()
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "Degraded"


@on_loop
async def test_a_jobs_artifact_is_served_first_where_its_claim_is(fast_backoff: None) -> None:
    east = MemberSpec("east", gpu_nodes=0, cpu_cost=2.0, labels={"region": "east"})
    async with World([MemberSpec("west"), east]) as world:
        job = {
            "workers": 1,
            "resources": {"cpu": "1"},
            "checkpoint": {"claimName": "models"},
            "placement": {"clusterSelector": {"matchLabels": {"region": "east"}}},
        }
        world.apply(trainingjob("trainer", job))
        await world.reconcile_job("trainer")
        await world.place()
        await world.reconcile_job("trainer")
        await world.settle()
        world.run_pods(["trainer-a0-w0"], member="east", phase="Succeeded")
        await world.settle()
        await world.reconcile_job("trainer")
        assert world.job_status("trainer")["state"] == "Succeeded"
        world.apply(inferenceservice("svc", FROM_TRAINER))
        await world.reconcile_service("svc")
        # west is cheaper, but east's claim holds the artifact
        assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["east"]
        assert deployment(world, member="east") is not None and deployment(world) is None


@on_loop
async def test_an_idle_service_scales_to_zero_and_a_held_request_wakes_it(world: World) -> None:
    spec = {"replicas": {"min": 0, "max": 2}, "autoscaling": {"scaleToZeroAfterSeconds": 60}}
    (pod,) = await ready(world, spec)
    assert condition(world.service_status("svc"), "ScaledToZero")["status"] == "False"
    world.clock.advance(50)
    set_load(world, pod, 0.2)  # a request within the idle period: the period starts again
    await world.settle()
    await world.reconcile_service("svc")
    world.clock.advance(50)
    await world.reconcile_service("svc")
    assert world.service_status("svc")["desiredReplicas"] == 1

    world.clock.advance(11)  # 61 s without a request (the report is stale by now)
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert (status["state"], status["desiredReplicas"], status["replicas"]) == (
        "ScaledToZero",
        0,
        0,
    )
    assert condition(status, "ScaledToZero")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "ScaledToZero"
    zero = deployment(world)
    assert zero is not None and zero["spec"]["replicas"] == 0  # kept, to scale up without a create
    assert [e["message"] for e in world.events("svc", "ScaledDown")] == ["1 -> 0 replicas"]
    await world.members["west"].delete(paths.pod(NS, pod))  # the ReplicaSet's doing
    await world.settle()

    world.clock.advance(30)
    world.edit(
        isvc_path("svc"),
        {"metadata": {"annotations": {WANTED_ANNOTATION: rfc3339_micro(world.clock)}}},
    )
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert (status["state"], status["desiredReplicas"]) == ("Deploying", 1)
    woken = deployment(world)
    assert woken is not None and woken["spec"]["replicas"] == 1
    assert condition(status, "ScaledToZero")["status"] == "False"


@on_loop
async def test_a_request_held_before_the_last_scaling_wakes_nothing(world: World) -> None:
    """An operator that restarts finds the annotation of a request it already answered."""
    spec = {"replicas": {"min": 0, "max": 2}, "autoscaling": {"scaleToZeroAfterSeconds": 60}}
    await ready(world, spec)
    world.edit(
        isvc_path("svc"),
        {"metadata": {"annotations": {WANTED_ANNOTATION: rfc3339_micro(world.clock)}}},
    )
    world.clock.advance(61)
    await world.reconcile_service("svc")
    assert world.service_status("svc")["state"] == "ScaledToZero"
    world.clock.advance(5)
    await world.reconcile_service("svc")
    assert world.service_status("svc")["desiredReplicas"] == 0


@on_loop
async def test_a_service_without_min_zero_keeps_its_replica_when_idle(world: World) -> None:
    await ready(world)
    world.clock.advance(3600)
    await world.reconcile_service("svc")
    status = world.service_status("svc")
    assert status["desiredReplicas"] == 1 and status["state"] == "Ready"
    assert not [c for c in status["conditions"] if c["type"] == "ScaledToZero"]
