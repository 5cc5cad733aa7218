"""The operator itself under chaos: SIGKILLed at random moments and restarted (the restarted one
leads once the killed one's Lease has lapsed), and a second operator acting beside it."""

from __future__ import annotations

import time
from pathlib import Path

from chaos.invariants import PodSampler, check_load
from chaos.load import Load, scaled
from chaos.ops import wait_leading
from kaonrig import OperatorProcess, Rig

KILLS = scaled(4, 20)
KILL_JOBS = scaled(30, 200)
TWO_JOBS = scaled(24, 150)
ENDED_WITHIN_S = scaled(150, 900)


def test_operator_sigkilled_at_random_moments_loses_and_doubles_nothing(
    kaon_rig: Rig, namespace: str, operator: OperatorProcess, load: Load, sampler: PodSampler
) -> None:
    load.prefix, load.failures = "killed", True
    batch = KILL_JOBS // (KILLS + 1)
    takeovers = []
    for _ in range(KILLS):
        load.create(batch)
        takeovers.append(wait_leading(operator))
        time.sleep(load.rng.uniform(0.0, 6.0))  # mid-admission, mid-launch, mid-restart ...
        operator.kill()
        operator.start()
    load.create(KILL_JOBS - batch * KILLS)
    takeovers.append(wait_leading(operator))
    report = check_load(
        kaon_rig, namespace, load, sampler, timeout_s=ENDED_WITHIN_S, operators=(operator,)
    )
    print(
        f"{KILLS} kills, {KILL_JOBS} jobs: took over after {[round(t, 1) for t in takeovers]} s; "
        f"all ended {report.ended_after_s:.0f} s after the last kill; {report.samples} samples"
    )


def test_two_operators_acting_at_once_keep_every_job_single(
    kaon_rig: Rig,
    namespace: str,
    operator: OperatorProcess,
    operator_kubeconfig: Path,
    load: Load,
    sampler: PodSampler,
    tmp_path: Path,
) -> None:
    """The second operator runs --standalone: no Lease keeps it from acting, so every status
    write and every launch of the two races; the fencing (resourceVersion-guarded writes, the
    placement confirmed on the hub before pods are created) must keep the jobs whole."""
    wait_leading(operator)
    no_metrics = {"KAON_METRICS_PORT": "0"}  # the first operator serves them on 8081
    second = OperatorProcess(
        operator_kubeconfig, tmp_path / "second-operator.log", ("--standalone",), no_metrics
    )
    second.start()
    try:
        load.prefix, load.failures = "twice", True
        for _ in range(3):
            load.create(TWO_JOBS // 3)
            time.sleep(load.rng.uniform(1.0, 4.0))
        report = check_load(
            kaon_rig,
            namespace,
            load,
            sampler,
            timeout_s=ENDED_WITHIN_S,
            operators=(operator, second),
        )
    finally:
        second.stop()
    assert second.proc is not None and second.proc.returncode in (0, -15)
    assert not second.rbac_denials()
    print(f"{len(load.expected)} jobs under two operators: ended in {report.ended_after_s:.0f} s")
