"""A TrainingJob's worker pods and rendezvous Service, with the kaon runtime injected."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kaon.api.computecluster import PoolSpec
from kaon.api.names import (
    ATTEMPT_LABEL,
    GPU_RESOURCE,
    JOB_LABEL,
    JOB_UID_LABEL,
    MANAGED_BY,
    MANAGER,
    PROGRESS_ANNOTATION,
    RANK_LABEL,
    REPORT_ANNOTATIONS,
)
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec, WorkerResources
from kaon.builders.names import (
    checkpoint_uri,
    job_checkpoint_path,
    job_output_path,
    service_name,
    store_secret_name,
    worker_hostname,
    worker_pod_name,
)

Obj = dict[str, Any]
WORKER_IDENTITY = "kaon-worker"  # ServiceAccount, Role and RoleBinding in each namespace
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LOG = "/dev/termination-log"
STATE_ROOT = "/var/lib/kaon"  # the state volume: the job's claim, else an emptyDir
KUBECTL_DOMAIN = "kubectl.kubernetes.io/"  # kubectl's notes on the TrainingJob object itself


@dataclass(frozen=True)
class JobRef:
    namespace: str
    name: str
    uid: str
    annotations: dict[str, str]


def _labels(job: JobRef, attempt: int, rank: int | None = None) -> dict[str, str]:
    labels = {
        MANAGED_BY: MANAGER,
        "app.kubernetes.io/name": "kaon-worker",
        JOB_LABEL: job.name,
        JOB_UID_LABEL: job.uid,
        ATTEMPT_LABEL: str(attempt),
    }
    if rank is not None:
        labels[RANK_LABEL] = str(rank)
    return labels


def pod_annotations(job: JobRef) -> dict[str, str]:
    """The annotations a TrainingJob passes to its worker pods: all of its own, but two kinds.

    kaon has no pod template, so this is how a job gives its pods what tools on the member read
    from pods (`karpenter.sh/do-not-disrupt`, a sidecar injector's opt-out, ...). Left out are
    kubectl's (its last-applied copy is about the job, and large) and the reports the runtime
    writes on its own pod, which the operator must read from the runtime alone.
    """
    return {
        k: v
        for k, v in job.annotations.items()
        if not k.startswith(KUBECTL_DOMAIN) and k not in REPORT_ANNOTATIONS
    }


def master_addr(job: JobRef) -> str:
    return f"{worker_hostname(0)}.{service_name(job.name)}.{job.namespace}.svc"


def _env(job: JobRef, spec: TrainingJobSpec, attempt: int, rank: int, s: Settings) -> list[Obj]:
    plain = {
        "MASTER_ADDR": master_addr(job),
        "MASTER_PORT": str(s.master_port),
        "WORLD_SIZE": str(spec.workers),
        "RANK": str(rank),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "NNODES": str(spec.workers),
        "NODE_RANK": str(rank),
        "KAON_JOB_NAME": job.name,
        "KAON_JOB_NAMESPACE": job.namespace,
        "KAON_ATTEMPT": str(attempt),
        "KAON_SPEC": json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
        "KAON_CHECKPOINT_DIR": f"{STATE_ROOT}/{job_checkpoint_path(job.name)}",
        "KAON_OUTPUT_DIR": f"{STATE_ROOT}/{job_output_path(job.name)}",
        "KAON_PROGRESS_ANNOTATION": PROGRESS_ANNOTATION,
        "KAON_SERVICEACCOUNT_DIR": SERVICEACCOUNT_DIR,
        "KAON_TERMINATION_LOG": TERMINATION_LOG,
    }
    env: list[Obj] = [{"name": k, "value": v} for k, v in plain.items()]
    env += _store_env(job, spec)
    env += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    return env


# The store's credentials as boto3 reads them, from the member's copy of a hub Secret.
STORE_ENV = (
    ("AWS_ACCESS_KEY_ID", "accessKeyId", False),
    ("AWS_SECRET_ACCESS_KEY", "secretAccessKey", False),
    ("AWS_ENDPOINT_URL_S3", "endpoint", True),
    ("AWS_DEFAULT_REGION", "region", True),
)


def store_env(secret: str, prefix: str = "") -> list[Obj]:
    """The AWS_* variables (each behind `prefix`), read from `secret`, the member's copy of the
    store credentials."""
    return [
        {
            "name": prefix + var,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
        }
        for var, key, optional in STORE_ENV
    ]


def _store_env(job: JobRef, spec: TrainingJobSpec) -> list[Obj]:
    location = spec.checkpoint.location
    if not location:
        return []
    uri = checkpoint_uri(location, job.namespace, job.name, job.uid)
    return [{"name": "KAON_CHECKPOINT_URI", "value": uri}, *store_env(store_secret_name(job.name))]


def secret_copy(name: str, namespace: str, labels: dict[str, str], data: dict[str, str]) -> Obj:
    """A member's copy of store credentials (base64 values, as read from the hub)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": data,
    }


def store_secret(job: JobRef, data: dict[str, str]) -> Obj:
    """The job's copy of its checkpoint store's credentials."""
    labels = {MANAGED_BY: MANAGER, JOB_LABEL: job.name, JOB_UID_LABEL: job.uid}
    return secret_copy(store_secret_name(job.name), job.namespace, labels, data)


def pod_resources(resources: WorkerResources, gpus: int) -> Obj:
    """Requests and limits of a kaon container; memory is limited, CPU is not (no throttling)."""
    requests: dict[str, Any] = {"cpu": str(resources.cpu), "memory": str(resources.memory)}
    limits: dict[str, Any] = {"memory": str(resources.memory)}
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _volume(spec: TrainingJobSpec) -> Obj:
    claim = spec.checkpoint.claim_name
    if claim:
        return {"name": "kaon-state", "persistentVolumeClaim": {"claimName": claim}}
    return {"name": "kaon-state", "emptyDir": {}}


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def worker_pod(
    job: JobRef,
    spec: TrainingJobSpec,
    pool: PoolSpec,
    gpus_per_worker: int,
    attempt: int,
    rank: int,
    settings: Settings,
    node: str | None = None,
) -> Obj:
    """Worker `rank` of attempt `attempt`, pinned to the pool, running the kaon runtime; it
    prefers `node`, placement's packing (a preference: the scheduler may know better)."""
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_pod_name(job.name, attempt, rank),
            "namespace": job.namespace,
            "labels": _labels(job, attempt, rank),
            "annotations": pod_annotations(job),
        },
        "spec": {
            "restartPolicy": "Never",
            "hostname": worker_hostname(rank),
            "subdomain": service_name(job.name),
            "nodeSelector": dict(pool.node_selector),
            "tolerations": [t.to_k8s() for t in pool.tolerations],
            # The token lets rank 0 write its progress annotation (the Role allows no more).
            "serviceAccountName": WORKER_IDENTITY,
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY,
            "containers": [
                {
                    "name": "runtime",
                    "image": settings.runtime_image,
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": ["python", "-m", "kaon_kernels.train"],
                    "env": _env(job, spec, attempt, rank, settings),
                    "ports": [{"name": "rendezvous", "containerPort": settings.master_port}],
                    "resources": pod_resources(spec.resources, gpus_per_worker),
                    "securityContext": RESTRICTED,
                    "terminationMessagePath": TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "kaon-state", "mountPath": STATE_ROOT},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [_volume(spec), {"name": "tmp", "emptyDir": {}}],
        },
    }
    if node:
        pod["spec"]["affinity"] = preferred_node(node)
    return pod


def preferred_node(node: str) -> Obj:
    """A strong preference for one node, by name (no label needed). The default scheduler
    weighs node affinity twice its resource scores, so the preference beats its spreading
    whenever the node still has room, and yields when it has not."""
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": by_name}
            ]
        }
    }


def rendezvous_service(job: JobRef, settings: Settings) -> Obj:
    """Headless Service giving rank 0 the stable DNS name torch.distributed rendezvous at.

    It selects rank 0 only: the other ranks find each other through rank 0's store, and an
    EndpointSlice that follows one pod instead of the whole gang keeps the member's control
    plane quiet when thousands of workers start at once.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job.name),
            "namespace": job.namespace,
            "labels": {MANAGED_BY: MANAGER, JOB_LABEL: job.name, JOB_UID_LABEL: job.uid},
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {MANAGED_BY: MANAGER, JOB_LABEL: job.name, RANK_LABEL: "0"},
            "ports": [{"name": "rendezvous", "port": settings.master_port}],
        },
    }


def worker_identity(namespace: str) -> list[tuple[str, str, Obj]]:
    """(apiVersion, plural, object): the workers' ServiceAccount and its least privilege.

    Rank 0 patches its own pod's progress annotation; get and patch on pods is all it may do.
    """
    labels = {MANAGED_BY: MANAGER}
    meta = {"name": WORKER_IDENTITY, "namespace": namespace, "labels": labels}
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        ("v1", "serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        (
            rbac,
            "roles",
            {
                "apiVersion": rbac,
                "kind": "Role",
                "metadata": meta,
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
            },
        ),
        (
            rbac,
            "rolebindings",
            {
                "apiVersion": rbac,
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": WORKER_IDENTITY,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": WORKER_IDENTITY, "namespace": namespace}
                ],
            },
        ),
    ]
