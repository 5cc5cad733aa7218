"""A member stopped for real mid-load: past the grace its gangs move (or, pinned to it, wait
for it), the fenced-off attempts are swept when it is back; a blip shorter than the grace
moves nothing."""

from __future__ import annotations

import time

from kaon_rig import agents, rig
from kaon_rig.config import load_config

from chaos.invariants import PodSampler, check_load, list_jobs
from chaos.load import Load, scaled
from chaos.realjob import RealJob
from kaonrig import Jobs, OperatorProcess, Rig, state, wait_for

GRACE_S = 5
BLIP_GRACE_S = 45
JOBS = scaled(12, 60)  # per batch; three batches: before, during and after the loss


def running_in_west(kaon_rig: Rig, namespace: str, at_least: int) -> None:
    wait_for(
        lambda: list_jobs(kaon_rig, namespace),
        lambda found: (
            sum(
                state(j) == "Running" and j["status"]["placement"]["cluster"] == "west"
                for j in found.values()
            )
            >= at_least
        ),
        f"{at_least} jobs running in west",
        90,
    )


def placed_in_west(kaon_rig: Rig, namespace: str) -> set[str]:
    return {
        name
        for name, j in list_jobs(kaon_rig, namespace).items()
        if state(j) not in ("Succeeded", "Failed")
        and ((j.get("status") or {}).get("placement") or {}).get("cluster") == "west"
    }


def test_member_lost_past_the_grace_moves_its_gangs_once(
    kaon_rig: Rig,
    jobs: Jobs,
    namespace: str,
    operator: OperatorProcess,
    load: Load,
    sampler: PodSampler,
) -> None:
    real = RealJob(kaon_rig, jobs, namespace, GRACE_S)
    try:
        real.start(load)
        real.wait_checkpointed()
        lost_with_a_real_job(kaon_rig, namespace, operator, load, sampler, real)
    finally:
        real.stop()


def lost_with_a_real_job(
    kaon_rig: Rig,
    namespace: str,
    operator: OperatorProcess,
    load: Load,
    sampler: PodSampler,
    real: RealJob,
) -> None:
    load.prefix, load.grace_s, load.duration_s = "moved", GRACE_S, (4.0, 8.0)
    load.wheres = ("any", "any", "east", "west")  # most may move; some can only wait for west
    load.create(JOBS)
    running_in_west(kaon_rig, namespace, 3)
    config = load_config()
    rig.lose_cluster("west", config)  # with its machine: the real job's processes die too
    real.note_committed()
    try:
        time.sleep(1.0)  # what the operator had seen end in west before is written by now
        lost = placed_in_west(kaon_rig, namespace)
        movable = {n for n in lost if load.expected[n].where == "any"}
        load.create(JOBS)
        wait_for(
            lambda: list_jobs(kaon_rig, namespace),
            lambda found: all(
                (found[n].get("status") or {}).get("failovers", 0) >= 1 for n in movable
            ),
            f"{sorted(movable)} failed over",
            GRACE_S + 60,
        )
        time.sleep(load.rng.uniform(0.0, 5.0))
    finally:
        rig.start_cluster("west")
        agents.start(config, None)
    load.create(JOBS)
    report = check_load(
        kaon_rig,
        namespace,
        load,
        sampler,
        timeout_s=scaled(150, 600),
        operators=(operator,),
        failed_over=lost,
    )
    problems = real.check()
    assert not problems, "\n".join(problems)
    moved = [n for n, j in report.jobs.items() if (j.get("status") or {}).get("failovers")]
    print(
        f"west lost with {len(lost)} gangs placed there; {len(moved)} failed over; fenced-off "
        f"attempts seen live up to {report.fenced_for_s:.1f} s after west was back; the real "
        f"job resumed at step {real.resumed} (committed {real.committed} at the loss)"
    )


def test_blip_shorter_than_the_grace_fails_nothing_over(
    kaon_rig: Rig, namespace: str, operator: OperatorProcess, load: Load, sampler: PodSampler
) -> None:
    load.prefix, load.grace_s, load.duration_s = "blipped", BLIP_GRACE_S, (3.0, 8.0)
    load.create(JOBS)
    running_in_west(kaon_rig, namespace, 3)
    started = time.monotonic()
    rig.stop_cluster("west")
    try:
        time.sleep(load.rng.uniform(0.0, 3.0))
    finally:
        rig.start_cluster("west")
    blip = time.monotonic() - started
    assert blip < BLIP_GRACE_S - 10, f"the blip took {blip:.0f}s, too near the grace"
    load.create(JOBS)
    check_load(
        kaon_rig,
        namespace,
        load,
        sampler,
        timeout_s=scaled(150, 600),
        operators=(operator,),
        no_failover=True,
    )
    print(f"west away {blip:.1f} s of a {BLIP_GRACE_S} s grace")
