"""What a placed job does next, given its workers' states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kaon.lifecycle.workers import WorkerState


@dataclass(frozen=True)
class JobView:
    workers: int
    attempt: int
    launched: bool
    restarts: int
    backoff_limit: int
    seconds_since_admitted: float | None = None
    active_deadline_seconds: int | None = None


@dataclass(frozen=True)
class Launch:
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Restart:
    charged: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Succeed:
    message: str  # rank 0's termination message: the runtime's final report
    progress: str = ""  # rank 0's last progress annotation


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str


@dataclass(frozen=True)
class Observe:
    ready: int
    succeeded: int
    failed: int
    all_running: bool
    progress: str = ""  # rank 0's progress annotation


Action = Launch | Restart | Succeed | Fail | Observe


def _describe(w: WorkerState) -> str:
    what = f"exited with code {w.exit_code}" if w.exit_code is not None else "failed"
    if w.infra:
        what = f"was lost ({w.reason or 'infrastructure'})"
    return f"worker {w.rank} {what}" + (f": {w.message}" if w.message else "")


def next_action(view: JobView, workers: Mapping[int, WorkerState]) -> Action:
    deadline = view.active_deadline_seconds
    if deadline is not None and (view.seconds_since_admitted or 0) > deadline:
        return Fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={deadline}")
    if not view.launched:
        return Launch(tuple(r for r in range(view.workers) if r not in workers))
    missing = [r for r in range(view.workers) if r not in workers]
    if missing:
        return Restart(
            False, "WorkerLost", f"worker {missing[0]} disappeared (node lost or deleted)"
        )
    failed = sorted((w for w in workers.values() if w.failed), key=lambda w: (w.infra, w.rank))
    if failed:
        first = failed[0]
        if first.infra:
            return Restart(False, first.reason or "WorkerLost", _describe(first))
        if view.restarts >= view.backoff_limit:
            return Fail(
                "BackoffLimitExceeded",
                f"{_describe(first)}; {view.restarts} restarts used of backoffLimit "
                f"{view.backoff_limit}",
            )
        return Restart(True, "WorkerFailed", _describe(first))
    states = [workers[r] for r in range(view.workers)]
    if all(w.succeeded for w in states):
        return Succeed(states[0].message, states[0].progress)
    return Observe(
        ready=sum(w.ready and w.phase == "Running" for w in states),
        succeeded=sum(w.succeeded for w in states),
        failed=0,
        all_running=all(w.phase in ("Running", "Succeeded") for w in states),
        progress=states[0].progress,
    )


SuspendStep = Literal["suspend", "resume", "run"]


def suspend_step(suspend: bool, state: str) -> SuspendStep:
    """spec.runPolicy.suspend against the state: remove the workers and free the pool
    ("suspend", again on every look until the workers are gone), put a suspended job back in
    line ("resume"), or carry on ("run")."""
    if suspend:
        return "suspend"
    return "resume" if state == "Suspended" else "run"
