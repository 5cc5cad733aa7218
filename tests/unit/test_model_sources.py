"""Where a served model comes from: a claim or an S3 store, given as a URI or as a TrainingJob's
artifact (`resolve_model`), and what the server's Deployment gets for each (`builders.server`)."""

from __future__ import annotations

from typing import Any

import pytest

from apicases import refusals
from kaon.api.common import StoreSecretRef
from kaon.api.computecluster import PoolSpec
from kaon.api.inferenceservice import InferenceServiceSpec, ModelSource, ResolvedModel
from kaon.api.names import REVISION_LABEL
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from kaon.builders.server import MODEL_STORE, Revision, ServiceRef, deployment, model_secret
from kaon.lifecycle.models import resolve_model

S3 = "s3://kaon/models/digits"
ARTIFACT = "s3://kaon/jobs/team/trainer/uid-1/attempt-2/model"
IN_STORE = {"location": "s3://kaon/jobs", "secretRef": {"name": "kaon-s3"}}
REF = ServiceRef("team", "svc", "uid-9")
POOL = PoolSpec.model_validate({"name": "cpu", "nodeSelector": {"pool": "cpu"}})


def by_uri(uri: str, secret: str | None = None) -> ModelSource:
    source: dict[str, Any] = {"uri": uri}
    if secret:
        source["secretRef"] = {"name": secret}
    return ModelSource.model_validate(source)


def trained(checkpoint: dict[str, Any], state: str = "Succeeded", **status: Any) -> Any:
    spec = TrainingJobSpec.model_validate({"model": {"family": "cnn"}, "checkpoint": checkpoint})
    return spec, TrainingJobStatus.model_validate({"state": state, **status})


FROM_JOB = ModelSource.model_validate({"trainingJobRef": {"name": "trainer"}})


def test_a_claim_uri_is_served_from_its_claim_and_an_s3_uri_with_its_secret() -> None:
    assert resolve_model(by_uri("pvc://models/a/b/"), None) == ResolvedModel(
        claim="models", path="a/b"
    )
    assert resolve_model(by_uri(S3, "kaon-s3"), None) == ResolvedModel(
        uri=S3, secret_ref=StoreSecretRef(name="kaon-s3")
    )


def test_a_succeeded_job_in_a_store_is_served_from_its_artifact_with_its_secret() -> None:
    got = resolve_model(FROM_JOB, trained(IN_STORE, artifact=ARTIFACT))
    assert got == ResolvedModel(uri=ARTIFACT, secret_ref=StoreSecretRef(name="kaon-s3"))


def test_a_job_on_a_claim_is_served_from_its_output_directory() -> None:
    got = resolve_model(FROM_JOB, trained({"claimName": "state"}, artifact="pvc://state/x"))
    assert got == ResolvedModel(claim="state", path="jobs/trainer/output")


@pytest.mark.parametrize(
    ("job", "reason", "words"),
    [
        (None, "ModelNotFound", "TrainingJob trainer does not exist"),
        (
            trained({}),
            "ModelNotServable",
            "keeps its artifact on the node (neither spec.checkpoint.claimName nor "
            "spec.checkpoint.location)",
        ),
        (trained(IN_STORE, "Running"), "ModelNotReady", "TrainingJob trainer is Running"),
        (trained(IN_STORE), "ModelNotServable", "there is no status.artifact"),
        (
            trained(IN_STORE, artifact="/var/lib/kaon/jobs/trainer/output"),
            "ModelNotServable",
            "status.artifact is /var/lib/kaon/jobs/trainer/output",
        ),
    ],
)
def test_a_job_that_cannot_be_served_says_what_is_missing(
    job: Any, reason: str, words: str
) -> None:
    got = resolve_model(FROM_JOB, job)
    assert isinstance(got, tuple) and got[0] == reason and words in got[1], got


def test_a_canary_model_may_come_from_a_store_too() -> None:
    spec = {
        "model": {"uri": "pvc://models/v1"},
        "canary": {"model": {"uri": S3, "secretRef": {"name": "kaon-s3"}}, "trafficPercent": 10},
    }
    assert refusals("InferenceService", spec) == []
    canary = InferenceServiceSpec.model_validate(spec).canary
    assert canary is not None and resolve_model(canary.model, None) == ResolvedModel(
        uri=S3, secret_ref=StoreSecretRef(name="kaon-s3")
    )


def server(model: ResolvedModel, revision: Revision = "stable") -> tuple[Any, Any]:
    spec = InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/x"}})
    dep = deployment(REF, revision, spec, model, POOL, 0, 1, Settings())
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize("revision", ["stable", "canary"])
def test_a_model_in_a_store_is_fetched_into_an_empty_dir_with_the_members_secret(
    revision: Revision,
) -> None:
    model = ResolvedModel(uri=S3, secret_ref=StoreSecretRef(name="kaon-s3"))
    pod, container = server(model, revision)
    env = {e["name"]: e for e in container["env"]}
    assert env["KAON_MODEL_URI"]["value"] == S3
    copy = f"svc-{revision}-model-store"
    assert {
        name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for name, e in env.items()
        if name.startswith("AWS_")
    } == {
        "AWS_ACCESS_KEY_ID": (copy, "accessKeyId"),
        "AWS_SECRET_ACCESS_KEY": (copy, "secretAccessKey"),
        "AWS_ENDPOINT_URL_S3": (copy, "endpoint"),
        "AWS_DEFAULT_REGION": (copy, "region"),
    }
    assert env["AWS_ENDPOINT_URL_S3"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert pod["volumes"][0] == {"name": "model", "emptyDir": {}}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": MODEL_STORE, "readOnly": False}
    args = container["args"]
    assert args[args.index("--model-dir") + 1] == MODEL_STORE


def test_a_model_on_a_claim_is_mounted_read_only_and_fetched_from_nowhere() -> None:
    pod, container = server(ResolvedModel(claim="models", path="v1"))
    assert not [e for e in container["env"] if e["name"].startswith(("AWS_", "KAON_MODEL_URI"))]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "model", "mountPath": MODEL_STORE, "readOnly": True} in container[
        "volumeMounts"
    ]
    args = container["args"]
    assert args[args.index("--model-dir") + 1] == f"{MODEL_STORE}/v1"


def test_the_members_copy_of_a_store_secret_is_named_and_labelled_per_revision() -> None:
    copy = model_secret(REF, "canary", {"accessKeyId": "QQ=="})
    assert copy["metadata"]["name"] == "svc-canary-model-store"
    assert copy["metadata"]["namespace"] == "team"
    assert copy["metadata"]["labels"][REVISION_LABEL] == "canary"
    assert copy["data"] == {"accessKeyId": "QQ=="} and copy["type"] == "Opaque"
