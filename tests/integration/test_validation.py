"""Invalid manifests are refused by the API server (schema and CEL), naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from apicases import BOUND_CASES, JOB, MAX_QUANTITY_LENGTH, POOL, RULE_CASES, Case

from kaonrig import GROUP, VERSION, Jobs, Rig

pytestmark = pytest.mark.usefixtures("kaon_crds")

GOOD: dict[str, Any] = {"model": {"family": "cnn"}, "workers": 2}

INVALID_JOBS = [
    ("no model", {"workers": 1}, "spec.model", "Required value"),
    (
        "unknown family",
        {"model": {"family": "transformer"}},
        "spec.model.family",
        "Unsupported value",
    ),
    ("zero workers", GOOD | {"workers": 0}, "spec.workers", "greater than or equal to 1"),
    (
        "gpu type without gpus",
        GOOD | {"resources": {"gpuType": "nvidia-a100"}},
        "spec.resources.gpuType",
        "gpuType requires gpus > 0",
    ),
    (
        "bad cpu quantity",
        GOOD | {"resources": {"cpu": "lots"}},
        "spec.resources.cpu",
        "should match",
    ),
    (
        "checkpoint interval zero",
        GOOD | {"checkpoint": {"intervalSteps": 0}},
        "spec.checkpoint.intervalSteps",
        "greater than or equal to 1",
    ),
    (
        "rnn settings on a cnn",
        {"model": {"family": "cnn", "rnn": {"cell": "gru"}}},
        "spec.model.rnn",
        "rnn settings are given but family is not rnn",
    ),
    (
        "kernel sizes mismatch",
        {"model": {"family": "cnn", "cnn": {"channels": [8, 16], "kernelSizes": [3]}}},
        "spec.model.cnn.kernelSizes",
        "one size per conv block",
    ),
    (
        "file data without path",
        GOOD | {"data": {"source": "file"}},
        "spec.data.path",
        "path is required when source is file",
    ),
    (
        "unknown cell",
        {"model": {"family": "rnn", "rnn": {"cell": "transformer"}}},
        "spec.model.rnn.cell",
        "Unsupported value",
    ),
    (
        "negative backoff",
        GOOD | {"runPolicy": {"backoffLimit": -1}},
        "spec.runPolicy.backoffLimit",
        "greater than or equal to 0",
    ),
    (
        "accelerator on a cpu preference",
        GOOD | {"placement": {"poolPreferences": [{"type": "cpu", "accelerator": "nvidia-t4"}]}},
        "spec.placement.poolPreferences[0].accelerator",
        "accelerator applies to gpu pools only",
    ),
    (
        "learning rate zero",
        GOOD | {"training": {"learningRate": 0}},
        "spec.training.learningRate",
        "greater than 0",
    ),
    (
        "bad selector operator",
        GOOD
        | {
            "placement": {
                "clusterSelector": {"matchExpressions": [{"key": "region", "operator": "Near"}]}
            }
        },
        "spec.placement.clusterSelector.matchExpressions[0].operator",
        "Unsupported value",
    ),
]


def refusal(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


@pytest.mark.parametrize(
    ("case", "spec", "field", "says"), INVALID_JOBS, ids=[c[0] for c in INVALID_JOBS]
)
def test_invalid_trainingjob_is_refused_naming_the_field(
    kaon_rig: Rig, namespace: str, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ApiException) as refused:
        Jobs(kaon_rig.api("hub")).create(namespace, "bad", spec)
    assert refused.value.status == 422, case
    message = refusal(refused.value)
    assert field in message and says in message, message


def test_valid_job_gets_the_schema_defaults(kaon_rig: Rig, namespace: str) -> None:
    job = Jobs(kaon_rig.api("hub")).create(namespace, "good", GOOD)
    assert job["spec"]["training"]["epochs"] == 10
    assert job["spec"]["resources"] == {"cpu": "1", "memory": "2Gi", "gpus": 0}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3


def test_admitted_job_refuses_a_change_of_workers(kaon_rig: Rig, namespace: str) -> None:
    jobs = Jobs(kaon_rig.api("hub"))
    jobs.create(namespace, "fixed", GOOD)
    placed = {"state": "Admitted", "placement": {"cluster": "east", "pool": "cpu"}}
    jobs.api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingjobs", "fixed", {"status": placed}
    )
    with pytest.raises(ApiException) as refused:
        jobs.patch_spec(namespace, "fixed", {"workers": 4})
    assert "spec.workers cannot change once the job is admitted" in refusal(refused.value)
    jobs.patch_spec(namespace, "fixed", {"runPolicy": {"suspend": True}})  # still allowed


INVALID_CLUSTERS = [
    (
        "neither hub nor secret",
        {"pools": [{"name": "p", "nodeSelector": {"a": "b"}}]},
        "spec.kubeconfigSecretRef",
        "set exactly one of hub",
    ),
    ("no pools", {"hub": True, "pools": []}, "spec.pools", "should have at least 1 items"),
    (
        "duplicate pools",
        {"hub": True, "pools": [{"name": "p", "nodeSelector": {"a": "b"}}] * 2},
        "spec.pools",
        "pool names must be unique",
    ),
    (
        "pool without selector",
        {"hub": True, "pools": [{"name": "p", "nodeSelector": {}}]},
        "spec.pools[0].nodeSelector",
        "should have at least 1 properties",
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "field", "says"), INVALID_CLUSTERS, ids=[c[0] for c in INVALID_CLUSTERS]
)
def test_invalid_computecluster_is_refused_naming_the_field(
    kaon_rig: Rig, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ComputeCluster",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(kaon_rig.api("hub")).create_cluster_custom_object(
            GROUP, VERSION, "computeclusters", body
        )
    assert refused.value.status == 422, case
    message = refusal(refused.value)
    assert field in message and says in message, message


SERVE: dict[str, Any] = {"model": {"uri": "pvc://models/digits"}}

INVALID_SERVICES = [
    (
        "two model sources",
        {"model": {"uri": "pvc://models/digits", "trainingJobRef": {"name": "digits"}}},
        "spec.model.uri",
        "set exactly one of trainingJobRef and uri",
    ),
    ("no model source", {"model": {}}, "spec.model.uri", "set exactly one of"),
    (
        "uri neither on a claim nor in a store",
        {"model": {"uri": "https://bucket/digits"}},
        "spec.model.uri",
        "should match",
    ),
    (
        "min above max",
        SERVE | {"replicas": {"min": 3, "max": 2}},
        "spec.replicas.min",
        "min must not exceed max",
    ),
    (
        "canary share over 100",
        SERVE | {"canary": {"model": {"uri": "pvc://models/v2"}, "trafficPercent": 101}},
        "spec.canary.trafficPercent",
        "less than or equal to 100",
    ),
    (
        "zero target concurrency",
        SERVE | {"autoscaling": {"targetConcurrency": 0}},
        "spec.autoscaling.targetConcurrency",
        "greater than 0",
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "field", "says"), INVALID_SERVICES, ids=[c[0] for c in INVALID_SERVICES]
)
def test_invalid_inferenceservice_is_refused_naming_the_field(
    kaon_rig: Rig, namespace: str, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    with pytest.raises(ApiException) as refused:
        services.create(namespace, "bad", spec)
    assert refused.value.status == 422, case
    message = refusal(refused.value)
    assert field in message and says in message, message


def test_valid_inferenceservice_gets_the_schema_defaults(kaon_rig: Rig, namespace: str) -> None:
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    spec = services.create(namespace, "good", SERVE)["spec"]
    assert spec["replicas"] == {"min": 1, "max": 1}
    assert spec["batching"] == {"maxBatchSize": 32, "maxLatencyMs": 0}
    assert spec["placement"]["clusters"] == 1


PLURALS = {
    "TrainingJob": "trainingjobs",
    "InferenceService": "inferenceservices",
    "ComputeCluster": "computeclusters",
    "Queue": "queues",
}


def create(rig: Rig, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> Any:
    if kind in ("ComputeCluster", "Queue"):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        return client.CustomObjectsApi(rig.api("hub")).create_cluster_custom_object(
            GROUP, VERSION, PLURALS[kind], body
        )
    return Jobs(rig.api("hub"), kind, PLURALS[kind]).create(namespace, name, spec)


def refused_with(rig: Rig, namespace: str, case: Case) -> str:
    with pytest.raises(ApiException) as refused:
        create(rig, namespace, case.kind, "bad", case.spec)
    assert refused.value.status == 422, case.id
    return refusal(refused.value)


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.id)
def test_every_cel_rule_refuses_naming_the_field_as_pydantic_does(
    kaon_rig: Rig, namespace: str, case: Case
) -> None:
    """The same examples and messages as tests/unit/test_api_rules.py, here from the API server."""
    message = refused_with(kaon_rig, namespace, case)
    assert f"{case.field}: Invalid value" in message and case.says in message, message


@pytest.mark.parametrize("case", BOUND_CASES, ids=lambda c: c.id)
def test_out_of_range_values_are_refused_naming_the_field(
    kaon_rig: Rig, namespace: str, case: Case
) -> None:
    message = refused_with(kaon_rig, namespace, case)
    assert case.field in message and case.says in message, message


def test_an_unknown_queue_preemption_policy_is_refused(kaon_rig: Rig, namespace: str) -> None:
    spec = {"preemption": {"reclaimWithinCohort": "Sometimes"}}
    case = Case("preemption policy", "Queue", spec, "spec.preemption.reclaimWithinCohort", "")
    message = refused_with(kaon_rig, namespace, case)
    assert case.field in message and "Unsupported value" in message, message


CAREFUL_USER = [
    (
        "a huge quantity string",
        {"resources": {"cpu": "1" * 10_000}},
        "spec.resources.cpu",
        f"may not be more than {MAX_QUANTITY_LENGTH} bytes",
    ),
    (
        "a quantity of the wrong type",
        {"resources": {"memory": True}},
        "spec.resources.memory",
        "must be of type integer,string",
    ),
    ("workers as text", {"workers": "3"}, "spec.workers", "must be of type integer"),
    (
        "fractional gpus",
        {"resources": {"gpus": 1.5}},
        "spec.resources.gpus",
        "must be of type integer",
    ),
    ("an absurd integer", {"workers": 10**30}, "spec.workers", "must be of type integer"),
]


@pytest.mark.parametrize(
    ("case", "spec", "field", "says"), CAREFUL_USER, ids=[c[0] for c in CAREFUL_USER]
)
def test_wrong_types_and_huge_values_are_refused_naming_the_field(
    kaon_rig: Rig, namespace: str, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    message = refused_with(kaon_rig, namespace, Case(case, "TrainingJob", JOB | spec, field, says))
    assert field in message and says in message, message


@pytest.mark.parametrize(
    ("cpu", "memory"), [("1m", "1Mi"), ("1024", "64Ti"), (1024, 1 << 20), ("0.5", "1e9")]
)
def test_quantities_at_the_ends_of_their_range_are_accepted(
    kaon_rig: Rig, namespace: str, cpu: Any, memory: Any
) -> None:
    job = create(
        kaon_rig,
        namespace,
        "TrainingJob",
        "edge",
        JOB | {"resources": {"cpu": cpu, "memory": memory}},
    )
    assert (job["spec"]["resources"]["cpu"], job["spec"]["resources"]["memory"]) == (cpu, memory)


def test_a_pool_at_its_bounds_is_accepted(kaon_rig: Rig) -> None:
    spec = {
        "hub": True,
        "pools": [
            POOL
            | {
                "costPerHour": 1_000_000,
                "accelerator": {"type": "nvidia-t4", "countPerNode": 64},
                "tolerations": [{"key": "g", "effect": "NoExecute", "tolerationSeconds": 0}],
            }
        ],
    }
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    created = create(kaon_rig, "", "ComputeCluster", "edge-of-range", spec)
    try:
        assert created["spec"]["pools"][0]["costPerHour"] == 1_000_000
    finally:
        api.delete_cluster_custom_object(GROUP, VERSION, "computeclusters", "edge-of-range")
