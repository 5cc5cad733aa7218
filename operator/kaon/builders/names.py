"""Deterministic names and labels: a restarted operator finds, never duplicates, its objects."""

from __future__ import annotations

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL = "kaon.dev/job-name"
ATTEMPT_LABEL = "kaon.dev/attempt"
RANK_LABEL = "kaon.dev/rank"
JOB_UID_LABEL = "kaon.dev/job-uid"
FINALIZER = "kaon.dev/cleanup"


def worker_pod_name(job: str, attempt: int, rank: int) -> str:
    return f"{job}-a{attempt}-w{rank}"


def worker_hostname(rank: int) -> str:
    return f"worker-{rank}"


def service_name(job: str) -> str:
    return job


def job_selector(job: str) -> str:
    return f"{MANAGED_BY}=kaon,{JOB_LABEL}={job}"
