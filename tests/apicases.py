"""Specs every kaon kind must refuse, shared by the unit tests (pydantic) and the integration
tests (the rig's real API server), with the field each refusal names and what it says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from kaon.api.crd import RESOURCES

Kind = Literal["TrainingJob", "InferenceService", "ComputeCluster", "Queue"]

JOB: dict[str, Any] = {"model": {"family": "cnn"}}
SERVE: dict[str, Any] = {"model": {"uri": "pvc://models/digits"}}
AUDITED: dict[str, Any] = {"uri": "s3://audit/requests", "secretRef": {"name": "audit-s3"}}
POOL: dict[str, Any] = {"name": "p", "nodeSelector": {"a": "b"}}
CLUSTER: dict[str, Any] = {"hub": True, "pools": [POOL]}
GPUS: dict[str, Any] = {"resource": "gpus", "nominal": 8}
MAX_QUANTITY_LENGTH = 32


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    spec: dict[str, Any]
    field: str  # as the API server names it: spec.placement.poolPreferences[0].accelerator
    says: str  # a CEL rule's message exactly; for a schema bound, words both refusals contain

    @property
    def id(self) -> str:
        return f"{self.kind}: {self.name}"


def api_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API server writes a field: spec.pools[0].name."""
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def refusals(kind: Kind, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of each error pydantic finds in `spec` of a `kind`; [] when valid."""
    model = next(r.spec for r in RESOURCES if r.kind == kind)
    try:
        model.model_validate(spec)
    except ValidationError as err:
        return [(api_path(e["loc"]), e["msg"]) for e in err.errors()]
    return []


def pool(**fields: Any) -> dict[str, Any]:
    return CLUSTER | {"pools": [POOL | fields]}


# One case or more per CEL rule of the models (tests/unit/test_api_rules.py checks that none is
# missing); `says` is the rule's message, which pydantic and the API server both give.
CPU_RANGE = "cpu must be between 1m and 1024"
MEMORY_RANGE = "memory must be between 1Mi and 64Ti"

RULE_CASES = [
    Case(
        "kernel sizes mismatch",
        "TrainingJob",
        {"model": {"family": "cnn", "cnn": {"channels": [8, 16], "kernelSizes": [3]}}},
        "spec.model.cnn.kernelSizes",
        "kernelSizes must give one size per conv block (as many as channels)",
    ),
    Case(
        "cnn settings on an rnn",
        "TrainingJob",
        {"model": {"family": "rnn", "cnn": {"channels": [8]}}},
        "spec.model.cnn",
        "cnn settings are given but family is not cnn",
    ),
    Case(
        "rnn settings on a cnn",
        "TrainingJob",
        {"model": {"family": "cnn", "rnn": {"cell": "gru"}}},
        "spec.model.rnn",
        "rnn settings are given but family is not rnn",
    ),
    Case(
        "file data without path",
        "TrainingJob",
        JOB | {"data": {"source": "file"}},
        "spec.data.path",
        "path is required when source is file",
    ),
    Case(
        "a path for the digits set",
        "TrainingJob",
        JOB | {"data": {"source": "digits", "path": "/data/x.pt"}},
        "spec.data.path",
        "path is only read when source is file",
    ),
    Case(
        "gpu type without gpus",
        "TrainingJob",
        JOB | {"resources": {"gpuType": "nvidia-a100"}},
        "spec.resources.gpuType",
        "gpuType requires gpus > 0",
    ),
    Case(
        "accelerator on a cpu preference",
        "TrainingJob",
        JOB | {"placement": {"poolPreferences": [{"type": "cpu", "accelerator": "nvidia-t4"}]}},
        "spec.placement.poolPreferences[0].accelerator",
        "accelerator applies to gpu pools only",
    ),
    Case(
        "negative cpu",
        "TrainingJob",
        JOB | {"resources": {"cpu": -7}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "negative cpu text",
        "TrainingJob",
        JOB | {"resources": {"cpu": "-500m"}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "zero cpu",
        "TrainingJob",
        JOB | {"resources": {"cpu": "0"}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "cpu under a millicore",
        "TrainingJob",
        JOB | {"resources": {"cpu": "100u"}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "absurd cpu",
        "TrainingJob",
        JOB | {"resources": {"cpu": "1e30"}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "negative memory",
        "TrainingJob",
        JOB | {"resources": {"memory": "-2Gi"}},
        "spec.resources.memory",
        MEMORY_RANGE,
    ),
    Case(
        "zero memory",
        "TrainingJob",
        JOB | {"resources": {"memory": "0"}},
        "spec.resources.memory",
        MEMORY_RANGE,
    ),
    Case(
        "memory of two bytes",
        "TrainingJob",
        JOB | {"resources": {"memory": 2}},
        "spec.resources.memory",
        MEMORY_RANGE,
    ),
    Case(
        "absurd memory",
        "TrainingJob",
        JOB | {"resources": {"memory": "99999999Ei"}},
        "spec.resources.memory",
        MEMORY_RANGE,
    ),
    Case(
        "replica gpu type without gpus",
        "InferenceService",
        SERVE | {"resources": {"gpuType": "nvidia-t4"}},
        "spec.resources.gpuType",
        "gpuType requires gpus > 0",
    ),
    Case(
        "replica accelerator on a cpu preference",
        "InferenceService",
        SERVE | {"placement": {"poolPreferences": [{"type": "cpu", "accelerator": "nvidia-t4"}]}},
        "spec.placement.poolPreferences[0].accelerator",
        "accelerator applies to gpu pools only",
    ),
    Case(
        "negative replica cpu",
        "InferenceService",
        SERVE | {"resources": {"cpu": -7}},
        "spec.resources.cpu",
        CPU_RANGE,
    ),
    Case(
        "negative replica memory",
        "InferenceService",
        SERVE | {"resources": {"memory": "-2Gi"}},
        "spec.resources.memory",
        MEMORY_RANGE,
    ),
    Case(
        "two model sources",
        "InferenceService",
        {"model": {"uri": "pvc://models/digits", "trainingJobRef": {"name": "digits"}}},
        "spec.model.uri",
        "set exactly one of trainingJobRef and uri",
    ),
    Case(
        "no model source",
        "InferenceService",
        {"model": {}},
        "spec.model.uri",
        "set exactly one of trainingJobRef and uri",
    ),
    Case(
        "canary without a model source",
        "InferenceService",
        SERVE | {"canary": {"model": {}, "trafficPercent": 10}},
        "spec.canary.model.uri",
        "set exactly one of trainingJobRef and uri",
    ),
    Case(
        "an s3 model without credentials",
        "InferenceService",
        {"model": {"uri": "s3://kaon/models/digits"}},
        "spec.model.secretRef",
        "an s3:// uri needs secretRef",
    ),
    Case(
        "an s3 canary without credentials",
        "InferenceService",
        SERVE | {"canary": {"model": {"uri": "s3://kaon/models/v2"}, "trafficPercent": 10}},
        "spec.canary.model.secretRef",
        "an s3:// uri needs secretRef",
    ),
    Case(
        "credentials for a model on a claim",
        "InferenceService",
        {"model": {"uri": "pvc://models/digits", "secretRef": {"name": "kaon-s3"}}},
        "spec.model.secretRef",
        "secretRef is for an s3:// uri (a trainingJobRef's model is read with the job's)",
    ),
    Case(
        "credentials for a job's model",
        "InferenceService",
        {"model": {"trainingJobRef": {"name": "digits"}, "secretRef": {"name": "kaon-s3"}}},
        "spec.model.secretRef",
        "secretRef is for an s3:// uri (a trainingJobRef's model is read with the job's)",
    ),
    Case(
        "request logging without credentials",
        "InferenceService",
        SERVE | {"requestLogging": {"uri": "s3://audit/requests"}},
        "spec.requestLogging.secretRef",
        "requestLogging needs secretRef",
    ),
    Case(
        "auth that accepts no token",
        "InferenceService",
        SERVE | {"auth": {"serviceAccountTokens": False}},
        "spec.auth.serviceAccountTokens",
        "auth needs serviceAccountTokens or tokensSecretName",
    ),
    Case(
        "min above max",
        "InferenceService",
        SERVE | {"replicas": {"min": 3, "max": 2}},
        "spec.replicas.min",
        "min must not exceed max",
    ),
    Case(
        "neither hub nor secret",
        "ComputeCluster",
        {"pools": [POOL]},
        "spec.kubeconfigSecretRef",
        "set exactly one of hub (this is the hub cluster) and kubeconfigSecretRef",
    ),
    Case(
        "both hub and secret",
        "ComputeCluster",
        CLUSTER | {"kubeconfigSecretRef": {"name": "east"}},
        "spec.kubeconfigSecretRef",
        "set exactly one of hub (this is the hub cluster) and kubeconfigSecretRef",
    ),
    Case(
        "duplicate pools",
        "ComputeCluster",
        CLUSTER | {"pools": [POOL, POOL]},
        "spec.pools",
        "pool names must be unique",
    ),
    Case(
        "an s3 location without credentials",
        "TrainingJob",
        JOB | {"checkpoint": {"location": "s3://kaon/jobs"}},
        "spec.checkpoint.secretRef",
        "location needs secretRef",
    ),
    Case(
        "an s3 location and a claim",
        "TrainingJob",
        JOB
        | {
            "checkpoint": {
                "location": "s3://kaon/jobs",
                "secretRef": {"name": "kaon-s3"},
                "claimName": "state",
            }
        },
        "spec.checkpoint.location",
        "set at most one of location and claimName",
    ),
    Case(
        "an accelerator on a cpu quota",
        "Queue",
        {"quotas": [{"resource": "cpu", "accelerator": "nvidia-a100", "nominal": 8}]},
        "spec.quotas[0].accelerator",
        "accelerator applies to resource gpus only",
    ),
    Case(
        "half a GPU",
        "Queue",
        {"quotas": [GPUS | {"nominal": "1500m"}]},
        "spec.quotas[0].nominal",
        "gpus are whole devices",
    ),
    Case(
        "a negative quota",
        "Queue",
        {"quotas": [{"resource": "cpu", "nominal": "-4"}]},
        "spec.quotas[0].nominal",
        "quota must be between 0 and 1E",
    ),
    Case(
        "an absurd quota",
        "Queue",
        {"quotas": [{"resource": "memory", "nominal": "2E"}]},
        "spec.quotas[0].nominal",
        "quota must be between 0 and 1E",
    ),
    Case(
        "borrowing without a cohort",
        "Queue",
        {"quotas": [GPUS | {"borrowingLimit": 4}]},
        "spec.quotas",
        "borrowingLimit needs a cohort to borrow from",
    ),
    Case(
        "two quotas of one resource",
        "Queue",
        {"quotas": [GPUS, GPUS | {"nominal": 4}]},
        "spec.quotas",
        "at most one quota per resource, accelerator and cluster",
    ),
    Case(
        "toleration value with Exists",
        "ComputeCluster",
        pool(tolerations=[{"key": "gpu", "operator": "Exists", "value": "yes"}]),
        "spec.pools[0].tolerations[0].value",
        "value must be empty when operator is Exists",
    ),
]

# Schema bounds (OpenAPI minimum, maximum, lengths): `says` is what pydantic's and the API
# server's wording share.
AT_LEAST = "greater than or equal to"
AT_MOST = "less than or equal to"

BOUND_CASES = [
    Case(
        "negative gpus",
        "TrainingJob",
        JOB | {"resources": {"gpus": -1}},
        "spec.resources.gpus",
        f"{AT_LEAST} 0",
    ),
    Case(
        "too many gpus",
        "TrainingJob",
        JOB | {"resources": {"gpus": 65}},
        "spec.resources.gpus",
        f"{AT_MOST} 64",
    ),
    Case("zero workers", "TrainingJob", JOB | {"workers": 0}, "spec.workers", f"{AT_LEAST} 1"),
    Case(
        "too many workers", "TrainingJob", JOB | {"workers": 257}, "spec.workers", f"{AT_MOST} 256"
    ),
    Case(
        "zero epochs",
        "TrainingJob",
        JOB | {"training": {"epochs": 0}},
        "spec.training.epochs",
        f"{AT_LEAST} 1",
    ),
    Case(
        "absurd batch size",
        "TrainingJob",
        JOB | {"training": {"batchSize": 10**9}},
        "spec.training.batchSize",
        f"{AT_MOST} 65536",
    ),
    Case(
        "absurd learning rate",
        "TrainingJob",
        JOB | {"training": {"learningRate": 1e30}},
        "spec.training.learningRate",
        f"{AT_MOST} 10",
    ),
    Case(
        "dropout over 0.9",
        "TrainingJob",
        {"model": {"family": "rnn", "rnn": {"dropout": 1.5}}},
        "spec.model.rnn.dropout",
        f"{AT_MOST} 0.9",
    ),
    Case(
        "zero channels",
        "TrainingJob",
        {"model": {"family": "cnn", "cnn": {"channels": [0]}}},
        "spec.model.cnn.channels[0]",
        f"{AT_LEAST} 1",
    ),
    Case(
        "validation fraction of one",
        "TrainingJob",
        JOB | {"data": {"validationFraction": 1}},
        "spec.data.validationFraction",
        "less than 1",
    ),
    Case(
        "checkpoint interval zero",
        "TrainingJob",
        JOB | {"checkpoint": {"intervalSteps": 0}},
        "spec.checkpoint.intervalSteps",
        f"{AT_LEAST} 1",
    ),
    Case(
        "zero failover grace",
        "TrainingJob",
        JOB | {"runPolicy": {"failover": {"graceSeconds": 0}}},
        "spec.runPolicy.failover.graceSeconds",
        f"{AT_LEAST} 1",
    ),
    Case(
        "an hour and more of failover grace",
        "TrainingJob",
        JOB | {"runPolicy": {"failover": {"graceSeconds": 3601}}},
        "spec.runPolicy.failover.graceSeconds",
        f"{AT_MOST} 3600",
    ),
    Case(
        "a location that is not s3",
        "TrainingJob",
        JOB | {"checkpoint": {"location": "gs://kaon/jobs", "secretRef": {"name": "kaon-s3"}}},
        "spec.checkpoint.location",
        "should match",
    ),
    Case(
        "a model uri that is neither pvc nor s3",
        "InferenceService",
        {"model": {"uri": "gs://kaon/models/digits"}},
        "spec.model.uri",
        "should match",
    ),
    Case(
        "a request log uri that is not s3",
        "InferenceService",
        SERVE | {"requestLogging": AUDITED | {"uri": "pvc://audit/requests"}},
        "spec.requestLogging.uri",
        "should match",
    ),
    Case(
        "a request log sample rate over 1",
        "InferenceService",
        SERVE | {"requestLogging": AUDITED | {"sampleRate": 1.5}},
        "spec.requestLogging.sampleRate",
        f"{AT_MOST} 1",
    ),
    Case(
        "an audience with a space",
        "InferenceService",
        SERVE | {"auth": {"audience": "digits api"}},
        "spec.auth.audience",
        "should match",
    ),
    Case(
        "a certificate Secret that is no name",
        "InferenceService",
        SERVE | {"tls": {"secretName": "Not_A_Name"}},
        "spec.tls.secretName",
        "should match",
    ),
    Case(
        "a negative request log sample rate",
        "InferenceService",
        SERVE | {"requestLogging": AUDITED | {"sampleRate": -0.01}},
        "spec.requestLogging.sampleRate",
        f"{AT_LEAST} 0",
    ),
    Case(
        "negative backoff",
        "TrainingJob",
        JOB | {"runPolicy": {"backoffLimit": -1}},
        "spec.runPolicy.backoffLimit",
        f"{AT_LEAST} 0",
    ),
    Case(
        "zero deadline",
        "TrainingJob",
        JOB | {"runPolicy": {"activeDeadlineSeconds": 0}},
        "spec.runPolicy.activeDeadlineSeconds",
        f"{AT_LEAST} 1",
    ),
    Case(
        "deadline over a year",
        "TrainingJob",
        JOB | {"runPolicy": {"activeDeadlineSeconds": 10**12}},
        "spec.runPolicy.activeDeadlineSeconds",
        f"{AT_MOST} 31536000",
    ),
    Case(
        "negative ttl",
        "TrainingJob",
        JOB | {"runPolicy": {"ttlSecondsAfterFinished": -1}},
        "spec.runPolicy.ttlSecondsAfterFinished",
        f"{AT_LEAST} 0",
    ),
    Case(
        "a negative minimum runtime",
        "TrainingJob",
        JOB | {"runPolicy": {"minRuntimeSeconds": -5}},
        "spec.runPolicy.minRuntimeSeconds",
        f"{AT_LEAST} 0",
    ),
    Case(
        "a minimum runtime beyond a year",
        "TrainingJob",
        JOB | {"runPolicy": {"minRuntimeSeconds": 400 * 24 * 3600}},
        "spec.runPolicy.minRuntimeSeconds",
        AT_MOST,
    ),
    Case(
        "priority over 1000",
        "TrainingJob",
        JOB | {"runPolicy": {"priority": 1001}},
        "spec.runPolicy.priority",
        f"{AT_MOST} 1000",
    ),
    Case(
        "negative min replicas",
        "InferenceService",
        SERVE | {"replicas": {"min": -1, "max": 1}},
        "spec.replicas.min",
        f"{AT_LEAST} 0",
    ),
    Case(
        "zero max replicas",
        "InferenceService",
        SERVE | {"replicas": {"min": 0, "max": 0}},
        "spec.replicas.max",
        f"{AT_LEAST} 1",
    ),
    Case(
        "an idle period of a few seconds",
        "InferenceService",
        SERVE | {"autoscaling": {"scaleToZeroAfterSeconds": 3}},
        "spec.autoscaling.scaleToZeroAfterSeconds",
        f"{AT_LEAST} 10",
    ),
    Case(
        "too many replicas",
        "InferenceService",
        SERVE | {"replicas": {"min": 1, "max": 257}},
        "spec.replicas.max",
        f"{AT_MOST} 256",
    ),
    Case(
        "zero target concurrency",
        "InferenceService",
        SERVE | {"autoscaling": {"targetConcurrency": 0}},
        "spec.autoscaling.targetConcurrency",
        "greater than 0",
    ),
    Case(
        "zero drift threshold",
        "InferenceService",
        SERVE | {"monitoring": {"driftThreshold": 0}},
        "spec.monitoring.driftThreshold",
        "greater than 0",
    ),
    Case(
        "drift threshold as text",
        "InferenceService",
        SERVE | {"monitoring": {"driftThreshold": "high"}},
        "spec.monitoring.driftThreshold",
        "number",
    ),
    Case(
        "negative scale-down delay",
        "InferenceService",
        SERVE | {"autoscaling": {"scaleDownDelaySeconds": -1}},
        "spec.autoscaling.scaleDownDelaySeconds",
        f"{AT_LEAST} 0",
    ),
    Case(
        "zero batch size",
        "InferenceService",
        SERVE | {"batching": {"maxBatchSize": 0}},
        "spec.batching.maxBatchSize",
        f"{AT_LEAST} 1",
    ),
    Case(
        "negative batch latency",
        "InferenceService",
        SERVE | {"batching": {"maxLatencyMs": -1}},
        "spec.batching.maxLatencyMs",
        f"{AT_LEAST} 0",
    ),
    Case(
        "spread over zero clusters",
        "InferenceService",
        SERVE | {"placement": {"clusters": 0}},
        "spec.placement.clusters",
        f"{AT_LEAST} 1",
    ),
    Case(
        "canary share below 0",
        "InferenceService",
        SERVE | {"canary": {"model": {"uri": "pvc://models/v2"}, "trafficPercent": -1}},
        "spec.canary.trafficPercent",
        f"{AT_LEAST} 0",
    ),
    Case(
        "canary share over 100",
        "InferenceService",
        SERVE | {"canary": {"model": {"uri": "pvc://models/v2"}, "trafficPercent": 101}},
        "spec.canary.trafficPercent",
        f"{AT_MOST} 100",
    ),
    Case(
        "zero accelerators per node",
        "ComputeCluster",
        pool(accelerator={"type": "nvidia-t4", "countPerNode": 0}),
        "spec.pools[0].accelerator.countPerNode",
        f"{AT_LEAST} 1",
    ),
    Case(
        "negative cost",
        "ComputeCluster",
        pool(costPerHour=-1),
        "spec.pools[0].costPerHour",
        f"{AT_LEAST} 0",
    ),
    Case(
        "absurd cost",
        "ComputeCluster",
        pool(costPerHour=1e30),
        "spec.pools[0].costPerHour",
        AT_MOST,
    ),
    Case(
        "negative toleration seconds",
        "ComputeCluster",
        pool(tolerations=[{"key": "gpu", "effect": "NoExecute", "tolerationSeconds": -5}]),
        "spec.pools[0].tolerations[0].tolerationSeconds",
        f"{AT_LEAST} 0",
    ),
]
