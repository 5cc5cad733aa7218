"""The latest known body of each TrainingJob, fed by hub watch events and by our own writes."""

from __future__ import annotations

from collections.abc import Iterator

from kaon.clusters.client import Obj
from kaon.clusters.member import JobKey

KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "annotations",
)


def slim_job(body: Obj) -> Obj:
    """What kaon reads of a TrainingJob (no managedFields): small at thousands of jobs."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


def job_key(body: Obj) -> JobKey:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _rv(body: Obj) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except ValueError:
        return 0


class JobCache:
    """Newest resourceVersion wins; only a watch event may add a job.

    The answer to our own write can arrive after the watch's DELETED event for the same job
    (the last finalizer removed deletes it at once). Letting that answer add the job back would
    leave a ghost that holds a reservation on its pool forever.
    """

    def __init__(self) -> None:
        self._jobs: dict[JobKey, Obj] = {}

    def observed(self, body: Obj) -> None:
        """A watch event (ADDED/MODIFIED) for the job."""
        self._store(body, add=True)

    def written(self, body: Obj) -> Obj | None:
        """The answer to our write; the cached body, or None if the job is gone meanwhile."""
        self._store(body, add=False)
        return self._jobs.get(job_key(body))

    def deleted(self, key: JobKey) -> None:
        self._jobs.pop(key, None)

    def get(self, key: JobKey) -> Obj | None:
        return self._jobs.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def items(self) -> Iterator[tuple[JobKey, Obj]]:
        return iter(list(self._jobs.items()))

    def _store(self, body: Obj, add: bool) -> None:
        key = job_key(body)
        known = self._jobs.get(key)
        if known is None and not add:
            return
        if known is None or _rv(body) >= _rv(known):
            self._jobs[key] = slim_job(body)
