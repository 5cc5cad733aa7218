"""An InferenceService's objects in one member: a Deployment per revision and one Service.

The runtime's V2 server (`python -m kaon_kernels.serve`) is injected here, with probes on its
health endpoints. Both revisions carry the service's label, so the one Service sends requests
to stable and canary replicas alike: the replica ratio is the traffic share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kaon.api.computecluster import PoolSpec
from kaon.api.inferenceservice import InferenceServiceSpec, ResolvedModel
from kaon.api.names import (
    ISVC_LABEL,
    ISVC_UID_LABEL,
    LOAD_ANNOTATION,
    MANAGED_BY,
    MANAGER,
    REVISION_LABEL,
)
from kaon.api.settings import Settings
from kaon.builders.names import (
    auth_tokens_secret_name,
    model_secret_name,
    request_log_secret_name,
    tls_secret_name,
    token_reviewer_name,
)
from kaon.builders.worker import (
    POD_SECURITY,
    RESTRICTED,
    SERVICEACCOUNT_DIR,
    WORKER_IDENTITY,
    Obj,
    pod_resources,
    secret_copy,
    store_env,
)

Revision = Literal["stable", "canary"]
SERVER_PORT = 8080
GRPC_PORT = 8001  # V2 over gRPC beside HTTP (Triton's port; the operator's metrics use 8081)
SERVICE_PORT = 80
MODEL_STORE = "/var/lib/kaon/models"
# The request log's store credentials: the AWS_* variables behind this prefix (its store may
# not be the model's).
REQUEST_LOG_ENV_PREFIX = "KAON_REQUEST_LOG_"
TLS_DIR = "/etc/kaon/tls"
AUTH_TOKENS_DIR = "/etc/kaon/auth-tokens"
TLS_SECRET_KEYS = ("tls.crt", "tls.key")


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    uid: str


def deployment_name(service: str, revision: Revision) -> str:
    return f"{service}-{revision}"


def service_url(ref: ServiceRef, spec: InferenceServiceSpec | None = None) -> str:
    scheme = "https" if spec is not None and spec.tls is not None else "http"
    return f"{scheme}://{ref.name}.{ref.namespace}.svc.cluster.local"


def audience(ref: ServiceRef, spec: InferenceServiceSpec) -> str:
    """The audience the service's ServiceAccount tokens must be issued for."""
    given = spec.auth.audience if spec.auth is not None else None
    return given or f"{ref.name}.{ref.namespace}"


def _labels(ref: ServiceRef, revision: Revision | None = None) -> dict[str, str]:
    labels = {MANAGED_BY: MANAGER, ISVC_LABEL: ref.name, ISVC_UID_LABEL: ref.uid}
    if revision:
        labels[REVISION_LABEL] = revision
    return labels


def _probe(path: str, period_s: int, failures: int, tls: bool) -> Obj:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTPS" if tls else "HTTP"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def model_secret(ref: ServiceRef, revision: Revision, data: dict[str, str]) -> Obj:
    """The member's copy of the credentials of the store the revision's model is read from."""
    name = model_secret_name(ref.name, revision)
    return secret_copy(name, ref.namespace, _labels(ref, revision), data)


def request_log_secret(ref: ServiceRef, revision: Revision, data: dict[str, str]) -> Obj:
    """The member's copy of the credentials of the store the revision's request log goes to."""
    name = request_log_secret_name(ref.name, revision)
    return secret_copy(name, ref.namespace, _labels(ref, revision), data)


def _request_log_env(ref: ServiceRef, revision: Revision, spec: InferenceServiceSpec) -> list[Obj]:
    logging = spec.request_logging
    if logging is None:
        return []
    return [
        {"name": "KAON_REQUEST_LOG_URI", "value": logging.uri},
        {"name": "KAON_REQUEST_LOG_SAMPLE_RATE", "value": str(logging.sample_rate)},
        *store_env(request_log_secret_name(ref.name, revision), REQUEST_LOG_ENV_PREFIX),
    ]


def tls_secret(ref: ServiceRef, data: dict[str, str]) -> Obj:
    """The member's copy of the service's certificate (spec.tls.secretName)."""
    copy = secret_copy(tls_secret_name(ref.name), ref.namespace, _labels(ref), data)
    return copy | {"type": "kubernetes.io/tls"}


def auth_tokens_secret(ref: ServiceRef, data: dict[str, str]) -> Obj:
    """The member's copy of the service's accepted tokens (spec.auth.tokensSecretName)."""
    return secret_copy(auth_tokens_secret_name(ref.name), ref.namespace, _labels(ref), data)


def _security_env(ref: ServiceRef, spec: InferenceServiceSpec) -> list[Obj]:
    env = []
    if spec.tls is not None:
        env += [
            {"name": "KAON_TLS_CERT_FILE", "value": f"{TLS_DIR}/tls.crt"},
            {"name": "KAON_TLS_KEY_FILE", "value": f"{TLS_DIR}/tls.key"},
        ]
    if spec.auth is not None and spec.auth.service_account_tokens:
        env.append({"name": "KAON_AUTH_AUDIENCE", "value": audience(ref, spec)})
    if spec.auth is not None and spec.auth.tokens_secret_name:
        env.append({"name": "KAON_AUTH_TOKENS_DIR", "value": AUTH_TOKENS_DIR})
    return env


def _security_volumes(ref: ServiceRef, spec: InferenceServiceSpec) -> list[tuple[Obj, Obj]]:
    """(volume, mount) of the certificate and the tokens, read-only."""
    out = []
    if spec.tls is not None:
        out.append(("tls", tls_secret_name(ref.name), TLS_DIR))
    if spec.auth is not None and spec.auth.tokens_secret_name:
        out.append(("auth-tokens", auth_tokens_secret_name(ref.name), AUTH_TOKENS_DIR))
    return [
        (
            {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440}},
            {"name": name, "mountPath": path, "readOnly": True},
        )
        for name, secret, path in out
    ]


def _model_volume(model: ResolvedModel) -> Obj:
    """The claim, mounted read-only; for a model in a store, the directory it is fetched to."""
    if model.claim:
        return {
            "name": "model",
            "persistentVolumeClaim": {"claimName": model.claim, "readOnly": True},
        }
    return {"name": "model", "emptyDir": {}}


def _container(
    ref: ServiceRef,
    revision: Revision,
    spec: InferenceServiceSpec,
    model: ResolvedModel,
    gpus: int,
    s: Settings,
) -> Obj:
    env: list[Obj] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KAON_LOAD_ANNOTATION", "value": LOAD_ANNOTATION},
        {"name": "KAON_SERVICEACCOUNT_DIR", "value": SERVICEACCOUNT_DIR},
        {"name": "KAON_REVISION", "value": revision},  # a label of its quality metrics
    ]
    if not gpus:
        env.append({"name": "KAON_DEVICE", "value": "cpu"})
    if model.uri:
        env.append({"name": "KAON_MODEL_URI", "value": model.uri})
        env += store_env(model_secret_name(ref.name, revision))
    env += _request_log_env(ref, revision, spec)
    env += _security_env(ref, spec)
    tls = spec.tls is not None
    return {
        "name": "server",
        "image": s.runtime_image,
        "imagePullPolicy": s.image_pull_policy,
        "command": ["python", "-m", "kaon_kernels.serve"],
        "args": [
            "--model-dir",
            f"{MODEL_STORE}/{model.path}".rstrip("/") if model.claim else MODEL_STORE,
            "--name",
            ref.name,
            "--host",
            "$(POD_IP)",
            "--port",
            str(SERVER_PORT),
            "--max-batch-size",
            str(spec.batching.max_batch_size),
            "--max-latency-ms",
            str(spec.batching.max_latency_ms),
            "--grpc-port",
            str(GRPC_PORT),
        ],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": SERVER_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
        ],
        "resources": pod_resources(spec.resources, gpus),
        "securityContext": RESTRICTED,
        # Fetching the model (from a store), loading torch and the model take a while on a
        # cold node: up to two minutes.
        "startupProbe": _probe("/v2/health/live", 2, 60, tls),
        "readinessProbe": _probe("/v2/health/ready", 2, 2, tls),
        "livenessProbe": _probe("/v2/health/live", 10, 3, tls),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_STORE, "readOnly": bool(model.claim)},
            {"name": "tmp", "mountPath": "/tmp"},
            *(mount for _, mount in _security_volumes(ref, spec)),
        ],
    }


def deployment(
    ref: ServiceRef,
    revision: Revision,
    spec: InferenceServiceSpec,
    model: ResolvedModel,
    pool: PoolSpec,
    gpus_per_replica: int,
    replicas: int,
    settings: Settings,
) -> Obj:
    """The replicas of one revision in one cluster, pinned to the chosen pool."""
    labels = _labels(ref, revision)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(ref.name, revision),
            "namespace": ref.namespace,
            "labels": labels,
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {ISVC_LABEL: ref.name, REVISION_LABEL: revision}},
            # A new model rolls out one replica at a time and never drops below the count.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": dict(pool.node_selector),
                    "tolerations": [t.to_k8s() for t in pool.tolerations],
                    # The token lets the server report its load on its own pod (get/patch only).
                    "serviceAccountName": WORKER_IDENTITY,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": POD_SECURITY,
                    "containers": [
                        _container(ref, revision, spec, model, gpus_per_replica, settings)
                    ],
                    "volumes": [
                        _model_volume(model),
                        {"name": "tmp", "emptyDir": {}},
                        *(volume for volume, _ in _security_volumes(ref, spec)),
                    ],
                },
            },
        },
    }


def token_reviewer(namespace: str) -> Obj:
    """Lets the namespace's servers (the workers' ServiceAccount) ask the member's API server
    whether a token is valid (TokenReview): the role Kubernetes ships for that."""
    rbac = "rbac.authorization.k8s.io"
    return {
        "apiVersion": f"{rbac}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": token_reviewer_name(namespace), "labels": {MANAGED_BY: MANAGER}},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": WORKER_IDENTITY, "namespace": namespace}],
    }


def service(ref: ServiceRef) -> Obj:
    """The one Service in front of both revisions' replicas of the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ref.name, "namespace": ref.namespace, "labels": _labels(ref)},
        "spec": {
            "selector": {ISVC_LABEL: ref.name},
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }
