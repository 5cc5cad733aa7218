"""Workers failing at random (kaon.dev/sim-fail): app exit codes are charged to backoffLimit,
143 (preempted, resumable) is free; every job ends as its plan says, restarts counted exactly."""

from __future__ import annotations

from chaos.invariants import PodSampler, check_load
from chaos.load import Load, scaled
from kaonrig import OperatorProcess, Rig

JOBS = scaled(30, 200)


def test_random_worker_failures_restart_within_the_backoff_limit(
    kaon_rig: Rig, namespace: str, operator: OperatorProcess, load: Load, sampler: PodSampler
) -> None:
    load.prefix, load.failures, load.duration_s = "flaky", True, (1.0, 3.0)
    load.create(JOBS // 2)
    load.create(JOBS - JOBS // 2)
    expected = load.expected.values()
    report = check_load(
        kaon_rig, namespace, load, sampler, timeout_s=scaled(150, 900), operators=(operator,)
    )
    print(
        f"{JOBS} jobs: {sum(e.state == 'Failed' for e in expected)} failed past backoffLimit, "
        f"{sum(e.restarts or 0 for e in expected)} charged and "
        f"{sum(e.infra_restarts or 0 for e in expected)} free restarts; "
        f"ended in {report.ended_after_s:.0f} s"
    )
