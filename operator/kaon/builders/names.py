"""Deterministic names and labels: a restarted operator finds, never duplicates, its objects."""

from __future__ import annotations

from kaon.api.names import ISVC_LABEL, JOB_LABEL, MANAGED_BY, MANAGER


def worker_pod_name(job: str, attempt: int, rank: int) -> str:
    return f"{job}-a{attempt}-w{rank}"


def worker_hostname(rank: int) -> str:
    return f"worker-{rank}"


def service_name(job: str) -> str:
    return job


def job_selector(job: str) -> str:
    return f"{MANAGED_BY}={MANAGER},{JOB_LABEL}={job}"


def job_output_path(job: str) -> str:
    """Where a job's artifact lives on its state volume: one directory per job, so jobs that
    share a claim never mix checkpoints or artifacts."""
    return f"jobs/{job}/output"


def job_checkpoint_path(job: str) -> str:
    return f"jobs/{job}/checkpoints"


def store_secret_name(job: str) -> str:
    """The member's copy of the job's checkpoint-store credentials."""
    return f"{job}-checkpoint-store"


def model_secret_name(service: str, revision: str) -> str:
    """The member's copy of the credentials of the store a service's revision is read from."""
    return f"{service}-{revision}-model-store"


def request_log_secret_name(service: str, revision: str) -> str:
    """The member's copy of the credentials of the store a service's request log goes to."""
    return f"{service}-{revision}-request-log-store"


def tls_secret_name(service: str) -> str:
    """The member's copy of a service's certificate Secret (spec.tls.secretName)."""
    return f"{service}-serving-tls"


def auth_tokens_secret_name(service: str) -> str:
    """The member's copy of a service's accepted tokens (spec.auth.tokensSecretName)."""
    return f"{service}-auth-tokens"


def token_reviewer_name(namespace: str) -> str:
    """The member ClusterRoleBinding that lets a namespace's servers ask for TokenReviews."""
    return f"kaon-token-review-{namespace}"


def checkpoint_uri(location: str, namespace: str, job: str, uid: str) -> str:
    """The job's own prefix in the store: a job made again under the same name starts afresh."""
    return f"{location.rstrip('/')}/{namespace}/{job}/{uid}"


def artifact_uri(claim: str, job: str) -> str:
    return f"pvc://{claim}/{job_output_path(job)}"


def service_selector(service: str) -> str:
    return f"{MANAGED_BY}={MANAGER},{ISVC_LABEL}={service}"
