from typing import Any

from kaon.api.trainingjob import JobPlacement, TrainingJobStatus
from kaon.lifecycle import (
    Fail,
    JobView,
    Launch,
    Observe,
    Restart,
    Succeed,
    WorkerState,
    next_action,
    observe_pod,
)
from kaon.lifecycle import status as transitions
from kaon.lifecycle.conditions import find_condition

NOW = "2026-12-06T12:00:00Z"


def pod(phase: str, *, code: int | None = None, reason: str = "", **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if code is not None:
        status["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": code, "message": f"code {code}"}}}
        ]
    if phase == "Running":
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    status.update(extra.pop("status", {}))
    return {"metadata": extra.pop("metadata", {}), "status": status}


VIEW = JobView(workers=2, attempt=0, launched=True, restarts=0, backoff_limit=2)


def run(*states: WorkerState, view: JobView = VIEW) -> object:
    return next_action(view, {w.rank: w for w in states})


def test_not_launched_creates_the_missing_ranks() -> None:
    view = JobView(workers=3, attempt=0, launched=False, restarts=0, backoff_limit=1)
    assert run(observe_pod(pod("Pending"), 1), view=view) == Launch((0, 2))


def test_app_failure_restarts_the_gang_charged() -> None:
    got = run(observe_pod(pod("Running"), 0), observe_pod(pod("Failed", code=3), 1))
    assert isinstance(got, Restart) and got.charged
    assert "worker 1 exited with code 3: code 3" in got.message


def test_backoff_exhausted_fails() -> None:
    view = JobView(workers=1, attempt=2, launched=True, restarts=2, backoff_limit=2)
    got = run(observe_pod(pod("Failed", code=1), 0), view=view)
    assert isinstance(got, Fail) and got.reason == "BackoffLimitExceeded"


def test_eviction_and_preemption_and_lost_pods_are_not_charged() -> None:
    evicted = observe_pod(pod("Failed", reason="Evicted"), 0)
    assert evicted.infra
    preempted = observe_pod(
        pod(
            "Failed",
            code=137,
            status={
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "PreemptionByScheduler",
                    }
                ]
            },
        ),
        1,
    )
    assert preempted.infra and preempted.reason == "PreemptionByScheduler"
    for w in (evicted, preempted):
        got = run(w, observe_pod(pod("Running"), 1 - w.rank))
        assert isinstance(got, Restart) and not got.charged
    lost = run(observe_pod(pod("Running"), 0))
    assert isinstance(lost, Restart) and not lost.charged and lost.reason == "WorkerLost"


def test_a_worker_that_checkpointed_on_sigterm_is_resumable_and_not_charged() -> None:
    stopped = observe_pod(pod("Failed", code=143), 0)
    assert stopped.infra and stopped.reason == "Preempted"
    got = run(stopped, observe_pod(pod("Running"), 1))
    assert isinstance(got, Restart) and not got.charged
    other = observe_pod(pod("Failed", code=137), 0)  # killed, no checkpoint promised
    assert not other.infra


def test_deleted_running_pod_counts_as_lost() -> None:
    w = observe_pod(pod("Running", metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}), 0)
    assert w.failed and w.infra


def test_app_failure_is_charged_even_beside_an_infra_failure() -> None:
    got = run(
        observe_pod(pod("Failed", reason="Evicted"), 0), observe_pod(pod("Failed", code=2), 1)
    )
    assert isinstance(got, Restart) and got.charged


def test_all_succeeded_succeeds_with_rank_zero_message() -> None:
    got = run(observe_pod(pod("Succeeded", code=0), 0), observe_pod(pod("Succeeded", code=0), 1))
    assert got == Succeed("code 0")


def test_running_gang_reports_ready_workers() -> None:
    got = run(observe_pod(pod("Running"), 0), observe_pod(pod("Pending"), 1))
    assert got == Observe(ready=1, succeeded=0, failed=0, all_running=False)
    got = run(observe_pod(pod("Running"), 0), observe_pod(pod("Running"), 1))
    assert isinstance(got, Observe) and got.all_running


def test_deadline_fails_the_job() -> None:
    view = JobView(2, 0, True, 0, 2, seconds_since_admitted=61, active_deadline_seconds=60)
    got = run(observe_pod(pod("Running"), 0), observe_pod(pod("Running"), 1), view=view)
    assert isinstance(got, Fail) and got.reason == "DeadlineExceeded"


def test_a_job_waits_as_said_with_the_same_reason_and_message_or_figures_written_lately() -> None:
    fresh = TrainingJobStatus()
    assert not transitions.waits_as_said(fresh, "InsufficientGPU", "pool a has 0 of 8 GPUs free")
    waiting = transitions.waiting(
        fresh, "InsufficientGPU", "pool a has 0 of 8 GPUs free", 1, "2026-11-23T00:00:00Z"
    )
    assert transitions.waits_as_said(waiting, "InsufficientGPU", "pool a has 0 of 8 GPUs free")
    assert not transitions.waits_as_said(waiting, "InsufficientGPU", "pool a has 2 of 8 GPUs free")
    assert not transitions.waits_as_said(waiting, "InsufficientCPU", "pool a has 0 of 8 GPUs free")
    recent, refresh = 1.0, transitions.WAIT_FIGURES_REFRESH_S
    assert transitions.waits_as_said(waiting, "InsufficientGPU", "pool a has 2 of 8 GPUs", recent)
    assert not transitions.waits_as_said(waiting, "InsufficientGPU", "pool a has 2", refresh)
    assert not transitions.waits_as_said(waiting, "InsufficientCPU", "pool a has 0", recent)


def cond(s: TrainingJobStatus, type_: str) -> tuple[str, str]:
    found = find_condition(s.conditions, type_)
    assert found is not None
    return found.status, found.reason


def test_a_victim_keeps_its_placement_until_its_workers_leave_then_waits_as_a_new_attempt() -> None:
    placement = JobPlacement(cluster="east", pool="gpu", accelerator="nvidia-a100")
    running = transitions.admitted(TrainingJobStatus(), placement, 2, 1, NOW)
    leaving = transitions.preempting(running, "ns/urgent", "Reclaimed", "by ns/urgent", 1, NOW)
    assert transitions.leaving(leaving) and leaving.placement == placement
    assert cond(leaving, "Preempted") == ("True", "Reclaimed")
    gone = transitions.preempted(leaving, 1, NOW)
    assert not transitions.leaving(gone)
    assert (gone.state, gone.placement, gone.attempt, gone.preemptions, gone.restarts) == (
        "Waiting",
        None,
        running.attempt + 1,
        1,
        0,
    )
    again = transitions.admitted(gone, placement, 2, 1, NOW)
    assert again.preempted_by is None
    assert cond(again, "Preempted") == ("False", "PlacedAgain")
