"""One worker pod's state, and whether its failure is the application's or the infrastructure's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kaon.api.names import PROGRESS_ANNOTATION, RESUMABLE_EXIT_CODE

# Pod status reasons set by kubelet, the node lifecycle controller or the scheduler when the
# infrastructure, not the program, ended the pod.
INFRA_POD_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "NodeShutdown",
        "Shutdown",
        "Terminated",
        "Preempting",
        "UnexpectedAdmissionError",
        "NodeAffinity",
        "OutOfcpu",
        "OutOfmemory",
        "OutOfpods",
    }
)


@dataclass(frozen=True)
class WorkerState:
    rank: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    infra: bool = False  # a failure not charged to the backoff budget
    deleting: bool = False
    progress: str = ""  # the runtime's progress annotation (JSON), as written

    @property
    def failed(self) -> bool:
        return self.phase == "Failed" or (self.deleting and self.phase != "Succeeded")

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return {}


def observe_pod(pod: dict[str, Any], rank: int) -> WorkerState:
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    disruption = next(
        (
            c
            for c in conditions
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    term = _terminated(pod)
    deleting = bool(pod.get("metadata", {}).get("deletionTimestamp"))
    pod_reason = status.get("reason", "")
    resumable = phase == "Failed" and term.get("exitCode") == RESUMABLE_EXIT_CODE
    infra = (
        pod_reason in INFRA_POD_REASONS
        or disruption is not None
        or (deleting and phase not in ("Succeeded", "Failed"))
        or resumable
    )
    reason = (
        (disruption or {}).get("reason")
        or pod_reason
        or ("Preempted" if resumable else "")
        or term.get("reason", "")
    )
    message = term.get("message") or status.get("message") or (disruption or {}).get("message", "")
    return WorkerState(
        rank=rank,
        phase=phase,
        ready=ready,
        exit_code=term.get("exitCode"),
        reason=reason or ("Deleted" if deleting else ""),
        message=str(message).strip(),
        infra=infra,
        deleting=deleting,
        progress=(pod.get("metadata", {}).get("annotations") or {}).get(PROGRESS_ANNOTATION, ""),
    )
