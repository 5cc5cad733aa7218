"""TrainingJob status transitions: each takes the current status and returns the next one."""

from __future__ import annotations

import json

from pydantic import ValidationError

from kaon.api.trainingjob import JobPlacement, Progress, TrainingJobStatus, WorkerCounts
from kaon.lifecycle.conditions import find_condition, with_condition, with_generation
from kaon.lifecycle.decide import Observe, Restart, Succeed

TERMINAL = ("Succeeded", "Failed")


_with = with_generation
_cond = with_condition


def waiting(
    s: TrainingJobStatus, reason: str, message: str, gen: int, now: str
) -> TrainingJobStatus:
    s = _cond(s, "Admitted", False, reason, message, gen, now)
    return _with(s, gen, state="Waiting", placement=None)


def rolled_back(s: TrainingJobStatus, message: str, gen: int, now: str) -> TrainingJobStatus:
    """The gang could not be created whole: it waits for a placement again, as a new attempt.
    Pods of the old one may be left where the rollback could not reach (a member that stopped
    answering mid-launch): fenced off like a lost cluster's, never the current attempt."""
    s = waiting(s, "GangRollback", message, gen, now)
    return _with(s, gen, attempt=s.attempt + 1, launched=False)


# A waiting job's message carries live figures (GPUs free, what its queue lacks): rewritten when
# only they change, hundreds of waiting jobs would each patch their status every pass.
WAIT_FIGURES_REFRESH_S = 30.0


def waits_as_said(
    s: TrainingJobStatus, reason: str, message: str, written_ago: float = float("inf")
) -> bool:
    """The job waits and its status already says why: the same reason, and the same message
    or one written less than WAIT_FIGURES_REFRESH_S ago (`written_ago`, seconds)."""
    admitted = find_condition(s.conditions, "Admitted")
    return (
        s.state == "Waiting"
        and admitted is not None
        and admitted.reason == reason
        and (admitted.message == message or written_ago < WAIT_FIGURES_REFRESH_S)
    )


def admitted(
    s: TrainingJobStatus,
    placement: JobPlacement,
    workers: int,
    gen: int,
    now: str,
    admitted_at: str | None = None,
) -> TrainingJobStatus:
    """Placed: `admitted_at` may be finer than `now` (conditions keep whole seconds)."""
    message = f"placed on pool {placement.pool} in cluster {placement.cluster}"
    s = _cond(s, "Admitted", True, "Placed", message, gen, now)
    if s.failed_over_from:
        s = _cond(s, "FailedOver", True, "ClusterLost", failover_message(s, placement), gen, now)
    s = _cond(s, "Suspended", False, "Resumed", "", gen, now) if _has(s, "Suspended") else s
    if s.preempted_by is not None:
        again = f"placed again after preemption by {s.preempted_by}"
        s = _cond(s, "Preempted", False, "PlacedAgain", again, gen, now)
    return _with(
        s,
        gen,
        state="Admitted",
        placement=placement,
        admitted_at=admitted_at or now,
        launched=False,
        workers=WorkerCounts(total=workers),
        failed_over_from=None,
        preempted_by=None,
    )


def failover_message(s: TrainingJobStatus, placement: JobPlacement) -> str:
    return (
        f"moved from cluster {s.failed_over_from} (lost) to cluster {placement.cluster}, "
        f"pool {placement.pool}; attempt {s.attempt} resumes from the last committed checkpoint"
    )


def failing_over(
    s: TrainingJobStatus, cluster: str, lost_for_s: float, gen: int, now: str
) -> TrainingJobStatus:
    """The gang's cluster is lost: a new attempt waits for a placement elsewhere. Not charged
    to backoffLimit; the lost cluster's pods belong to the old attempt and are fenced off."""
    message = f"cluster {cluster} has not answered for {lost_for_s:.0f}s; placing the gang again"
    s = _new_attempt_waits(s, "ClusterLost", message, gen, now)
    return _with(s, gen, failovers=s.failovers + 1, failed_over_from=cluster)


def _new_attempt_waits(
    s: TrainingJobStatus, reason: str, message: str, gen: int, now: str
) -> TrainingJobStatus:
    """Off its placement, not charged: the gang waits to be placed again as a new attempt."""
    if _has(s, "Running"):
        s = _cond(s, "Running", False, reason, message, gen, now)
    s = _cond(s, "Admitted", False, reason, message, gen, now)
    return _with(
        s,
        gen,
        state="Waiting",
        placement=None,
        attempt=s.attempt + 1,
        launched=False,
        workers=WorkerCounts(total=s.workers.total),
    )


def preempting(
    s: TrainingJobStatus, by: str, reason: str, message: str, gen: int, now: str
) -> TrainingJobStatus:
    """Chosen as a victim: its workers get SIGTERM and save a checkpoint; the placement (and
    what it holds) stays until they are gone, so the preemptor never overlaps them."""
    s = _cond(s, "Preempted", True, reason, message, gen, now)
    return _with(s, gen, preempted_by=by)


def preempted(s: TrainingJobStatus, gen: int, now: str) -> TrainingJobStatus:
    """The victim's workers are gone: it waits to be placed again as a new attempt, which
    resumes from the checkpoint they saved. Not charged to backoffLimit."""
    message = f"preempted by {s.preempted_by}; waiting to be placed again"
    s = _new_attempt_waits(s, "Preempted", message, gen, now)
    return _with(s, gen, preemptions=s.preemptions + 1)


def leaving(s: TrainingJobStatus) -> bool:
    """Being preempted: placed, with its workers on their way out."""
    return s.preempted_by is not None and s.placement is not None


def launched(s: TrainingJobStatus, gen: int) -> TrainingJobStatus:
    return _with(s, gen, launched=True)


def parse_progress(raw: str) -> Progress | None:
    """The runtime's progress annotation as a Progress, or None if it is not one."""
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    known = {f.alias or name for name, f in Progress.model_fields.items()}
    try:  # fields a newer runtime adds are left out, not a reason to drop the rest
        return Progress.model_validate({k: v for k, v in record.items() if k in known})
    except ValidationError:
        return None


def observed(s: TrainingJobStatus, obs: Observe, gen: int, now: str) -> TrainingJobStatus:
    counts = s.workers.model_copy(
        update={"ready": obs.ready, "succeeded": obs.succeeded, "failed": obs.failed}
    )
    progress = parse_progress(obs.progress)
    if progress is not None:
        s = s.model_copy(update={"progress": progress})
    if obs.all_running:
        message = f"{counts.total} of {counts.total} workers running"
        s = _cond(s, "Running", True, "WorkersRunning", message, gen, now)
        return _with(s, gen, state="Running", workers=counts, start_time=s.start_time or now)
    return _with(s, gen, workers=counts)


def restarting(s: TrainingJobStatus, r: Restart, gen: int, now: str) -> TrainingJobStatus:
    s = _cond(s, "Running", False, "GangRestarting", r.message, gen, now)
    return _with(
        s,
        gen,
        state="Admitted",
        attempt=s.attempt + 1,
        launched=False,
        restarts=s.restarts + (1 if r.charged else 0),
        infra_restarts=s.infra_restarts + (0 if r.charged else 1),
        workers=WorkerCounts(total=s.workers.total),
    )


def parse_result(message: str) -> tuple[dict[str, float], str | None]:
    """The runtime's final report (rank 0's termination message): metrics and artifact."""
    try:
        report = json.loads(message)
    except ValueError:
        return {}, None
    if not isinstance(report, dict):
        return {}, None
    metrics = {
        k: float(v)
        for k, v in (report.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    artifact = report.get("artifact")
    return metrics, artifact if isinstance(artifact, str) else None


def succeeded(
    s: TrainingJobStatus, done: Succeed, gen: int, now: str, artifact_uri: str | None = None
) -> TrainingJobStatus:
    metrics, artifact = parse_result(done.message)
    artifact = artifact_uri or artifact
    s = _cond(s, "Running", False, "Completed", "all workers exited 0", gen, now)
    s = _cond(s, "Succeeded", True, "Completed", "training finished", gen, now)
    last = parse_progress(done.progress) or s.progress or Progress()
    progress = last.model_copy(update={"percent": 100, "eta_seconds": 0})
    counts = s.workers.model_copy(update={"ready": 0, "succeeded": s.workers.total})
    return _with(
        s,
        gen,
        state="Succeeded",
        completion_time=now,
        metrics=metrics,
        artifact=artifact,
        progress=progress,
        workers=counts,
    )


def failed(
    s: TrainingJobStatus, reason: str, message: str, gen: int, now: str
) -> TrainingJobStatus:
    if _has(s, "Running"):
        s = _cond(s, "Running", False, reason, message, gen, now)
    if not _has(s, "Admitted"):
        s = _cond(s, "Admitted", False, reason, message, gen, now)
    s = _cond(s, "Failed", True, reason, message, gen, now)
    return _with(s, gen, state="Failed", completion_time=now)


def suspended(s: TrainingJobStatus, gen: int, now: str) -> TrainingJobStatus:
    s = _cond(s, "Suspended", True, "Suspended", "spec.runPolicy.suspend is true", gen, now)
    s = _cond(s, "Admitted", False, "Suspended", "suspended jobs hold no resources", gen, now)
    if _has(s, "Running"):
        s = _cond(s, "Running", False, "Suspended", "workers removed", gen, now)
    return _with(
        s,
        gen,
        state="Suspended",
        placement=None,
        launched=False,
        workers=WorkerCounts(total=s.workers.total),
    )


def resumed(s: TrainingJobStatus, gen: int, now: str) -> TrainingJobStatus:
    s = _cond(s, "Suspended", False, "Resumed", "spec.runPolicy.suspend is false", gen, now)
    return _with(s, gen, state="Pending")


def _has(s: TrainingJobStatus, type_: str) -> bool:
    return find_condition(s.conditions, type_) is not None
