"""An InferenceService's `requestLogging`: what each server's container gets (the URI, the rate,
the credentials behind their own prefix), and the member's copy of its Secret, made, refreshed
and removed by the controller on in-memory API servers."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kaon.api.computecluster import PoolSpec
from kaon.api.inferenceservice import InferenceServiceSpec, ResolvedModel
from kaon.api.names import REVISION_LABEL
from kaon.api.settings import Settings
from kaon.builders.server import Revision, ServiceRef, deployment, request_log_secret
from kaon.clusters import paths
from kaon.clusters.client import Obj

from enginekit import NS, World, deployment_path, inferenceservice, isvc_path, on_loop

AUDIT = "s3://audit/requests/team"
LOGGING: Obj = {"requestLogging": {"uri": AUDIT, "secretRef": {"name": "audit-store"}}}
REF = ServiceRef("team", "svc", "uid-9")
POOL = PoolSpec.model_validate({"name": "cpu", "nodeSelector": {"pool": "cpu"}})
CREDENTIALS = {"accessKeyId": "AUDITKEY", "secretAccessKey": "hush", "region": "eu-west-1"}


def container_env(spec: dict[str, Any], revision: Revision = "stable") -> dict[str, Obj]:
    model = ResolvedModel(claim="models", path="digits")
    parsed = InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/digits"}} | spec)
    dep = deployment(REF, revision, parsed, model, POOL, 0, 1, Settings())
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("revision", ["stable", "canary"])
def test_a_logging_server_gets_the_uri_the_rate_and_its_own_credentials(
    revision: Revision,
) -> None:
    spec = {"requestLogging": LOGGING["requestLogging"] | {"sampleRate": 0.25}}
    env = container_env(spec, revision)
    assert env["KAON_REQUEST_LOG_URI"]["value"] == AUDIT
    assert env["KAON_REQUEST_LOG_SAMPLE_RATE"]["value"] == "0.25"
    copy = f"svc-{revision}-request-log-store"
    assert {
        name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for name, e in env.items()
        if "AWS_" in name
    } == {
        "KAON_REQUEST_LOG_AWS_ACCESS_KEY_ID": (copy, "accessKeyId"),
        "KAON_REQUEST_LOG_AWS_SECRET_ACCESS_KEY": (copy, "secretAccessKey"),
        "KAON_REQUEST_LOG_AWS_ENDPOINT_URL_S3": (copy, "endpoint"),
        "KAON_REQUEST_LOG_AWS_DEFAULT_REGION": (copy, "region"),
    }  # the model's AWS_* (a model in a store) stay its own
    assert container_env(LOGGING)["KAON_REQUEST_LOG_SAMPLE_RATE"]["value"] == "0.01"


def test_a_server_without_request_logging_gets_none_of_it() -> None:
    assert not [name for name in container_env({}) if name.startswith("KAON_REQUEST_LOG_")]


def test_the_members_copy_of_the_logging_secret_is_named_and_labelled_per_revision() -> None:
    copy = request_log_secret(REF, "canary", {"accessKeyId": "QQ=="})
    assert copy["metadata"]["name"] == "svc-canary-request-log-store"
    assert copy["metadata"]["namespace"] == "team"
    assert copy["metadata"]["labels"][REVISION_LABEL] == "canary"
    assert copy["data"] == {"accessKeyId": "QQ=="}


def hub_secret(world: World, name: str, **data: str) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}}
    world.hub.put(secret | {"data": encoded})


def log_copy(world: World) -> Obj | None:
    return world.members["west"].peek(paths.secret(NS, "svc-stable-request-log-store"))


def plain(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@on_loop
async def test_the_logging_secret_is_copied_with_the_replicas_and_removed_when_logging_stops(
    world: World,
) -> None:
    hub_secret(world, "audit-store", **CREDENTIALS, unrelated="not for the member")
    world.apply(inferenceservice("svc", LOGGING))
    await world.reconcile_service("svc")
    copy = log_copy(world)
    assert copy is not None and plain(copy) == CREDENTIALS
    dep = world.members["west"].peek(deployment_path("svc", "stable"))
    assert dep is not None
    env = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"KAON_REQUEST_LOG_URI", "KAON_REQUEST_LOG_AWS_ACCESS_KEY_ID"} <= env

    body = world.hub.peek(isvc_path("svc"))
    assert body is not None
    del body["spec"]["requestLogging"]
    world.apply(body)
    await world.reconcile_service("svc")
    assert log_copy(world) is None

    world.edit(isvc_path("svc"), {"spec": LOGGING})
    await world.reconcile_service("svc")
    assert log_copy(world) is not None
    world.delete(isvc_path("svc"))
    await world.reconcile_service("svc")
    assert log_copy(world) is None


@on_loop
async def test_a_missing_logging_secret_holds_the_deployment_back_naming_the_field(
    world: World,
) -> None:
    world.apply(inferenceservice("svc", LOGGING))
    await world.reconcile_service("svc")
    assert world.members["west"].peek(deployment_path("svc", "stable")) is None
    (event,) = world.events("svc", "StoreSecretInvalid")
    assert event["message"] == (
        "cluster west: Secret team/audit-store (spec.requestLogging.secretRef) does not exist"
    )
    hub_secret(world, "audit-store", **CREDENTIALS)
    await world.reconcile_service("svc")
    assert world.members["west"].peek(deployment_path("svc", "stable")) is not None
