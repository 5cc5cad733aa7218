"""The InferenceService controller with models in an S3 store, on in-memory API servers: the
member's copy of the store Secret, the server's environment, what a bad Secret does, models of
TrainingJobs that checkpoint to a store, canaries, and the clean-up of the copies."""

from __future__ import annotations

import base64
import json

from kaon.api.names import REVISION_LABEL
from kaon.builders.server import Revision
from kaon.clusters import paths
from kaon.clusters.client import Obj

from enginekit import NS, World, deployment_path, inferenceservice, isvc_path, on_loop, trainingjob

S3 = "s3://kaon/models/digits"
FROM_STORE: Obj = {"model": {"uri": S3, "secretRef": {"name": "store"}}}
CREDENTIALS = {
    "accessKeyId": "KAONKEY",
    "secretAccessKey": "hush",
    "endpoint": "http://s3.example:8333",
    "region": "us-east-1",
}


def hub_secret(world: World, name: str = "store", **data: str) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}}
    world.hub.put(secret | {"data": encoded})


def copy_of(world: World, revision: Revision = "stable", member: str = "west") -> Obj | None:
    return world.members[member].peek(paths.secret(NS, f"svc-{revision}-model-store"))


def plain(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def server_env(world: World, revision: Revision = "stable", member: str = "west") -> dict[str, Obj]:
    dep = world.members[member].peek(deployment_path("svc", revision))
    assert dep is not None, f"no {revision} Deployment in {member}"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def ready_condition(world: World) -> Obj:
    status = world.service_status("svc")
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@on_loop
async def test_a_model_in_a_store_is_served_with_a_copy_of_its_secret(world: World) -> None:
    hub_secret(world, **CREDENTIALS, unrelated="not for the member")
    world.apply(inferenceservice("svc", FROM_STORE))
    await world.reconcile_service("svc")

    copy = copy_of(world)
    assert copy is not None and plain(copy) == CREDENTIALS
    assert copy["metadata"]["labels"][REVISION_LABEL] == "stable"
    env = server_env(world)
    assert env["KAON_MODEL_URI"]["value"] == S3
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "svc-stable-model-store",
        "key": "secretAccessKey",
        "optional": False,
    }
    status = world.service_status("svc")
    assert status["model"] == {"path": "", "uri": S3, "secretRef": {"name": "store"}}
    assert status["state"] == "Deploying" and ready_condition(world)["reason"] == "ReplicasNotReady"

    writes = len(world.members["west"].writes)
    await world.reconcile_service("svc")
    assert len(world.members["west"].writes) == writes  # neither copied nor applied again


@on_loop
async def test_a_changed_service_takes_in_the_hubs_current_credentials(world: World) -> None:
    hub_secret(world, **CREDENTIALS)
    world.apply(inferenceservice("svc", FROM_STORE))
    await world.reconcile_service("svc")
    hub_secret(world, **(CREDENTIALS | {"secretAccessKey": "rotated"}))
    await world.reconcile_service("svc")
    copy = copy_of(world)
    assert copy is not None and plain(copy)["secretAccessKey"] == "hush"  # nothing to roll out

    world.edit(isvc_path("svc"), {"spec": {"batching": {"maxBatchSize": 8}}})
    await world.reconcile_service("svc")
    copy = copy_of(world)
    assert copy is not None and plain(copy)["secretAccessKey"] == "rotated"


@on_loop
async def test_a_missing_secret_holds_the_deployment_back_and_says_why_once(
    world: World,
) -> None:
    world.apply(inferenceservice("svc", FROM_STORE))
    await world.reconcile_service("svc")
    await world.reconcile_service("svc")
    said = "cluster west: Secret team/store (spec.model.secretRef) does not exist"
    assert ready_condition(world)["reason"] == "StoreSecretInvalid"
    assert ready_condition(world)["message"] == said
    assert [(e["type"], e["message"]) for e in world.events("svc", "StoreSecretInvalid")] == [
        ("Warning", said)
    ]
    assert world.members["west"].peek(deployment_path("svc", "stable")) is None

    hub_secret(world, accessKeyId="KAONKEY")
    await world.reconcile_service("svc")
    assert ready_condition(world)["message"] == (
        "cluster west: Secret team/store (spec.model.secretRef) has no secretAccessKey"
    )
    assert len(world.events("svc", "StoreSecretInvalid")) == 2

    hub_secret(world, **CREDENTIALS)
    await world.reconcile_service("svc")
    assert ready_condition(world)["reason"] == "ReplicasNotReady"
    assert copy_of(world) is not None and "KAON_MODEL_URI" in server_env(world)


@on_loop
async def test_the_artifact_of_a_job_in_a_store_is_served_with_the_jobs_secret(
    world: World,
) -> None:
    hub_secret(world, "job-store", **CREDENTIALS)
    checkpoint = {"location": "s3://kaon/jobs", "secretRef": {"name": "job-store"}}
    world.apply(trainingjob("trainer", {"workers": 1, "checkpoint": checkpoint}))
    await world.reconcile_job("trainer")
    await world.place()
    await world.reconcile_job("trainer")
    await world.settle()
    artifact = "s3://kaon/jobs/team/trainer/u1/attempt-0/model"
    report = json.dumps({"metrics": {"accuracy": 0.9}, "artifact": artifact})
    world.run_pods(["trainer-a0-w0"], phase="Succeeded", termination_message=report)
    await world.settle()
    await world.reconcile_job("trainer")
    assert world.job_status("trainer")["artifact"] == artifact

    from_job = {"model": {"uri": None, "trainingJobRef": {"name": "trainer"}}}
    world.apply(inferenceservice("svc", from_job))
    await world.reconcile_service("svc")
    assert world.service_status("svc")["model"]["uri"] == artifact
    assert server_env(world)["KAON_MODEL_URI"]["value"] == artifact
    copy = copy_of(world)
    assert copy is not None and plain(copy) == CREDENTIALS

    world.hub.remove(paths.secret(NS, "job-store"))
    world.edit(isvc_path("svc"), {"spec": {"batching": {"maxBatchSize": 8}}})
    await world.reconcile_service("svc")
    (event,) = world.events("svc", "StoreSecretInvalid")
    assert event["message"] == (
        "cluster west: Secret team/job-store (spec.checkpoint.secretRef of TrainingJob "
        "trainer) does not exist"
    )


@on_loop
async def test_a_canary_in_a_store_gets_its_own_copy_removed_with_it(world: World) -> None:
    hub_secret(world, "canary-store", **CREDENTIALS)
    canary = {"model": {"uri": S3, "secretRef": {"name": "canary-store"}}, "trafficPercent": 50}
    world.apply(inferenceservice("svc", {"replicas": {"min": 2, "max": 2}, "canary": canary}))
    await world.reconcile_service("svc")
    assert copy_of(world, "canary") is not None and copy_of(world) is None
    assert "KAON_MODEL_URI" in server_env(world, "canary")
    assert "KAON_MODEL_URI" not in server_env(world)

    body = world.hub.peek(isvc_path("svc"))
    assert body is not None
    del body["spec"]["canary"]
    world.apply(body)
    await world.reconcile_service("svc")
    assert world.members["west"].peek(deployment_path("svc", "canary")) is None
    assert copy_of(world, "canary") is None


@on_loop
async def test_copies_are_removed_with_the_services_replicas(world: World) -> None:
    hub_secret(world, **CREDENTIALS)
    world.apply(inferenceservice("svc", FROM_STORE))
    await world.reconcile_service("svc")
    assert copy_of(world) is not None

    world.delete(isvc_path("svc"))
    await world.reconcile_service("svc")
    assert world.hub.peek(isvc_path("svc")) is None
    assert copy_of(world) is None
    assert world.members["west"].peek(deployment_path("svc", "stable")) is None


@on_loop
async def test_copies_leave_a_member_the_replicas_fail_over_from(world2: World) -> None:
    world = world2
    hub_secret(world, **CREDENTIALS)
    world.apply(inferenceservice("svc", FROM_STORE))
    await world.reconcile_service("svc")
    assert copy_of(world) is not None

    await world.lose("west")
    await world.reconcile_service("svc")
    world.clock.advance(world.settings.failover_grace_s)
    await world.reconcile_service("svc")
    assert [c["cluster"] for c in world.service_status("svc")["clusters"]] == ["east"]
    assert copy_of(world, member="east") is not None

    await world.regain("west")
    await world.reconcile_service("svc")
    assert copy_of(world) is None
