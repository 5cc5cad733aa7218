"""CustomResourceDefinitions generated from the pydantic models (the only source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.config import JsonDict

from kaon.api import computecluster, inferenceservice, queue, trainingjob
from kaon.api.common import GROUP, VERSION
from kaon.api.schema import Schema, model_schema


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    scope: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    short_names: tuple[str, ...] = ()
    printer_columns: tuple[dict[str, Any], ...] = ()
    root_rules: tuple[JsonDict, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _col(
    name: str, path: str, type_: str = "string", priority: int = 0, **kw: str
) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority
    return col | kw


AGE = _col("Age", ".metadata.creationTimestamp", "date")

COMPUTE_CLUSTER = Resource(
    kind="ComputeCluster",
    plural="computeclusters",
    scope="Cluster",
    spec=computecluster.ComputeClusterSpec,
    status=computecluster.ComputeClusterStatus,
    description="A member cluster kaon places workloads on, with its node pools.",
    short_names=("cc",),
    printer_columns=(
        _col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        _col("Reason", '.status.conditions[?(@.type=="Ready")].reason'),
        _col("Pools", ".spec.pools[*].name"),
        _col("Version", ".status.kubernetesVersion", priority=1),
        AGE,
    ),
)

TRAINING_JOB = Resource(
    kind="TrainingJob",
    plural="trainingjobs",
    scope="Namespaced",
    spec=trainingjob.TrainingJobSpec,
    status=trainingjob.TrainingJobStatus,
    description="A gang of workers training one model, placed on one cluster and node pool.",
    short_names=("tj",),
    printer_columns=(
        _col("State", ".status.state"),
        _col("Cluster", ".status.placement.cluster"),
        _col("Pool", ".status.placement.pool"),
        _col("Ready", ".status.workers.ready", "integer"),
        _col("Workers", ".spec.workers", "integer"),
        _col("Progress", ".status.progress.percent", "integer"),
        _col("Reason", '.status.conditions[?(@.type=="Admitted")].reason', priority=1),
        _col("Restarts", ".status.restarts", "integer", priority=1),
        _col("Queue", ".status.queue", priority=1),
        _col("Cost/h", ".status.placement.costPerHour", "number", priority=1),
        AGE,
    ),
    root_rules=tuple(trainingjob.root_rules()),
)

QUEUE = Resource(
    kind="Queue",
    plural="queues",
    scope="Cluster",
    spec=queue.QueueSpec,
    status=queue.QueueStatus,
    description="A share of the fleet: nominal quota per resource, borrowing within a cohort.",
    short_names=("kq",),
    printer_columns=(
        _col("Cohort", ".spec.cohort"),
        _col("Admitted", ".status.admitted", "integer"),
        _col("Pending", ".status.pending", "integer"),
        _col("Usage", ".status.summary"),
        _col("Weight", ".spec.weight", "number", priority=1),
        AGE,
    ),
)

INFERENCE_SERVICE = Resource(
    kind="InferenceService",
    plural="inferenceservices",
    scope="Namespaced",
    spec=inferenceservice.InferenceServiceSpec,
    status=inferenceservice.InferenceServiceStatus,
    description="Replicas of the V2 model server, placed on node pools of one or more clusters.",
    short_names=("isvc",),
    printer_columns=(
        _col("State", ".status.state"),
        _col("URL", ".status.url"),
        _col("Ready", ".status.readyReplicas", "integer"),
        _col("Replicas", ".status.replicas", "integer"),
        _col("Pools", ".status.pools"),
        _col("Canary", ".status.canary.effectivePercent", "integer"),
        _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
        AGE,
    ),
)

RESOURCES = (COMPUTE_CLUSTER, TRAINING_JOB, INFERENCE_SERVICE, QUEUE)


def openapi_schema(resource: Resource) -> Schema:
    root: Schema = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": model_schema(resource.spec),
            "status": model_schema(resource.status),
        },
    }
    if resource.root_rules:
        root["x-kubernetes-validations"] = list(resource.root_rules)
    return root


def crd(resource: Resource) -> dict[str, Any]:
    singular = resource.kind.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.name, "labels": {"app.kubernetes.io/part-of": "kaon"}},
        "spec": {
            "group": GROUP,
            "scope": resource.scope,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": singular,
                "shortNames": list(resource.short_names),
                "categories": ["kaon"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(resource.printer_columns),
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }
