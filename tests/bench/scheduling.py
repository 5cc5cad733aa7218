"""Scheduling benchmark: three team queues in a cohort share two members' GPU pools.

One workload, run twice on the same rig: first with no queues (priority, then first come first
served), then with the three queues (weights 1, 2, 3, nominal GPUs in the same proportion,
lending and reclaiming in one cohort). N jobs (default 1000) of mixed sizes (1, 2 or 4 workers
of 1, 2 or 4 GPUs) and priorities, each a kwok-simulated run of a few seconds, more work than
the fleet holds at once. Teams a and b submit at the start, team c later, so a and b first
borrow c's idle quota by fair share and then c reclaims it by preemption.

Figures, into .bench/results.json:
- throughput: jobs/s and pods/s from the first create to every job Succeeded, with queues
  against without (what quotas, borrowing and preemption cost the fleet);
- fairness: each queue's share of the GPU-seconds while it and the others had jobs waiting,
  against its share of the weights (max relative error over both phases);
- preemptions per admitted job, and the longest any job waited to be admitted;
- cost: what the admitted gangs cost per hour (pools' costPerHour per GPU, from placement to
  their end), integrated over the run, against a lower bound the bench computes at every
  sample: the same number of GPUs on the cheapest GPUs of the fleet first (ignoring nodes and
  gangs, so no placement beats it). The same for the running pods alone: there the bound also
  moves the work of GPUs idle between one gang's end and the next one's start onto the cheap
  member, so it is further off the shorter the jobs (the fleet's busy share is printed too).

    python tests/bench/scheduling.py [--jobs 1000] [--stagger 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

from controlplane import (
    bounded,
    clear_jobs,
    clear_pods,
    fresh_namespace,
    ignore_conflict,
    install_crds,
    progress,
    watch_forever,
)
from results import record, table

from kaon.api.common import API_VERSION
from kaon.api.names import GPU_RESOURCE, JOB_LABEL, QUEUE_LABEL
from kaon.clusters import paths as rest
from kaon.clusters.client import KubeClient, Obj
from kaon_rig import paths, rig
from kaon_rig.config import SIM_DURATION, SIM_EXIT_CODE, RigPool, load_config, node_manifest

MEMBERS = ("east", "west")
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 3.0}
POOL = RigPool(name="sched", nodes=9, cpu="64", memory="512Gi", gpus=8, accelerator="nvidia-a100")
NODE_COST = {"east": 8.0, "west": 16.0}  # per node-hour: east's GPUs cost half of west's
FLEET_GPUS = POOL.gpus * POOL.nodes * len(MEMBERS)
SAMPLE_S = 0.5
SETTLE_S = 10.0  # after a change of who submits, before shares are compared with weights
JOBS_ALL = rest.custom(API_VERSION, "trainingjobs")
QUEUES = rest.custom(API_VERSION, "queues")


def namespace(team: str) -> str:
    return f"sched-{team}"


def queue_name(team: str) -> str:
    return f"sched-{team}"


@dataclass(frozen=True)
class Job:
    name: str
    team: str
    workers: int
    gpus: int
    priority: int
    duration_s: int
    at_s: float  # when it is submitted, from the start

    def manifest(self) -> Obj:
        return {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "metadata": {
                "name": self.name,
                "namespace": namespace(self.team),
                "annotations": {SIM_EXIT_CODE: "0", SIM_DURATION: f"{self.duration_s}s"},
            },
            "spec": {
                "model": {"family": "cnn"},
                "workers": self.workers,
                "resources": {"cpu": "1", "memory": "1Gi", "gpus": self.gpus},
                "placement": {"poolPreferences": [{"type": "gpu", "pool": POOL.name}]},
                "runPolicy": {"priority": self.priority},
            },
        }


def workload(n: int, stagger_s: float, seed: int = 14) -> list[Job]:
    """N jobs split over the teams by weight: each team's backlog lasts about as long."""
    rng = random.Random(seed)
    total = sum(WEIGHTS.values())
    counts = {t: round(n * w / total) for t, w in WEIGHTS.items()}
    counts["c"] = n - counts["a"] - counts["b"]
    jobs = []
    for team, count in counts.items():
        for i in range(count):
            jobs.append(
                Job(
                    name=f"{team}-{i}",
                    team=team,
                    workers=rng.choice((1, 2, 4)),
                    gpus=rng.choice((1, 2, 4)),
                    priority=rng.choices((0, 5, 10), weights=(7, 2, 1))[0],
                    duration_s=rng.choice((2, 4, 6)),
                    at_s=stagger_s if team == "c" else 0.0,
                )
            )
    return jobs


def queue_manifest(team: str) -> Obj:
    nominal = round(FLEET_GPUS * WEIGHTS[team] / sum(WEIGHTS.values()))
    return {
        "apiVersion": API_VERSION,
        "kind": "Queue",
        "metadata": {"name": queue_name(team)},
        "spec": {
            "cohort": "sched",
            "weight": WEIGHTS[team],
            "quotas": [{"resource": "gpus", "nominal": nominal}],
        },
    }


def lower_bound_cost(gpus: int) -> float:
    """The cheapest the fleet could run `gpus` GPUs per hour: cheapest GPUs first."""
    cost, left = 0.0, gpus
    for member in sorted(MEMBERS, key=lambda m: NODE_COST[m]):
        here = min(left, POOL.gpus * POOL.nodes)
        cost += here * NODE_COST[member] / POOL.gpus
        left -= here
    return cost


# The fleet ----------------------------------------------------------------------------------


async def prepare(hub: KubeClient, members: dict[str, KubeClient]) -> None:
    """Each member's GPU pool `sched` and its ComputeCluster; the teams' namespaces."""
    await install_crds(hub, "computeclusters", "trainingjobs", "queues")
    for member, client in members.items():
        for i in range(POOL.nodes):
            await ignore_conflict(client.create(rest.nodes(), node_manifest(member, POOL, i)))
        spec = {
            "kubeconfigSecretRef": {
                "name": rig.member_secret_name(member),
                "namespace": rig.MEMBER_SECRET_NAMESPACE,
            },
            "pools": [
                {
                    "name": POOL.name,
                    "nodeSelector": {"kaon.dev/pool": POOL.name},
                    "tolerations": [
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "accelerator": {"type": POOL.accelerator, "countPerNode": POOL.gpus},
                    "costPerHour": NODE_COST[member],
                }
            ],
        }
        name = f"sched-{member}"
        body = {
            "apiVersion": API_VERSION,
            "kind": "ComputeCluster",
            "metadata": {"name": name},
            "spec": spec,
        }
        await ignore_conflict(hub.create(rest.custom(API_VERSION, "computeclusters"), body))
        await hub.merge_patch(rest.custom(API_VERSION, "computeclusters", None, name), body)
    for team in WEIGHTS:
        for client in (hub, *members.values()):
            await fresh_namespace(client, namespace(team))
    await asyncio.sleep(2)  # the new nodes become Ready


async def use_queues(hub: KubeClient, on: bool) -> None:
    """The queues and each team namespace's default queue, or none of them."""
    for team in WEIGHTS:
        label = queue_name(team) if on else None
        await hub.merge_patch(
            f"{rest.namespaces()}/{namespace(team)}", {"metadata": {"labels": {QUEUE_LABEL: label}}}
        )
        if on:
            await ignore_conflict(hub.create(QUEUES, queue_manifest(team)))
        else:
            await hub.delete_if_present(f"{QUEUES}/{queue_name(team)}")


async def clear(hub: KubeClient, members: dict[str, KubeClient]) -> None:
    """Every bench job gone (no operator runs: finalizers released) and every pod deleted."""
    for team in WEIGHTS:
        await clear_jobs(hub, rest.custom(API_VERSION, "trainingjobs", namespace(team)))
        await clear_pods(members, namespace(team))


async def cleanup(hub: KubeClient, members: dict[str, KubeClient]) -> None:
    await clear(hub, members)
    await use_queues(hub, on=False)
    for member, client in members.items():
        await hub.delete_if_present(
            rest.custom(API_VERSION, "computeclusters", None, f"sched-{member}")
        )
        for i in range(POOL.nodes):
            await client.delete_if_present(f"{rest.nodes()}/{POOL.node_name(member, i)}")
    for team in WEIGHTS:
        await hub.delete_if_present(f"{rest.namespaces()}/{namespace(team)}")


# What the run saw -------------------------------------------------------------------------------


@dataclass
class JobSeen:
    team: str
    waiting_since: float | None = None  # None while it is placed (or before it is created)
    placed: bool = False
    longest_wait: float = 0.0
    admissions: int = 0
    preemptions: int = 0
    done: bool = False


@dataclass
class Observed:
    """The hub's jobs and the members' running pods, kept current by watches."""

    jobs: dict[str, JobSeen] = field(default_factory=dict)
    running: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    placed: dict[str, tuple[str, int]] = field(default_factory=dict)  # job: member, GPUs

    def created(self, job: Job, at: float) -> None:
        self.jobs[f"{namespace(job.team)}/{job.name}"] = JobSeen(job.team, waiting_since=at)

    def job_event(self, kind: str, body: Obj, now: float) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        seen = self.jobs.get(key)
        if seen is None or kind == "DELETED":
            return
        status = body.get("status") or {}
        placement = status.get("placement") or {}
        placed = bool(placement)
        if placed and status.get("state") not in ("Succeeded", "Failed"):  # holds its pool
            gpus = int(body["spec"]["workers"]) * int(placement.get("gpusPerWorker") or 0)
            self.placed[key] = (str(placement["cluster"]).removeprefix("sched-"), gpus)
        else:
            self.placed.pop(key, None)
        if placed and not seen.placed and seen.waiting_since is not None:
            seen.longest_wait = max(seen.longest_wait, now - seen.waiting_since)
            seen.waiting_since = None
            seen.admissions += 1
        elif not placed and seen.placed:
            seen.waiting_since = now  # preempted: waiting again
        seen.placed = placed
        seen.preemptions = int(status.get("preemptions") or 0)
        seen.done = status.get("state") == "Succeeded"

    def pod_event(self, member: str, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        team = meta["namespace"].removeprefix("sched-")
        if team not in WEIGHTS or JOB_LABEL not in (meta.get("labels") or {}):
            return
        key = (member, meta["namespace"], meta["name"])
        if kind != "DELETED" and (pod.get("status") or {}).get("phase") == "Running":
            limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
            self.running[key] = (team, int(limits.get(GPU_RESOURCE, 0)))
        else:
            self.running.pop(key, None)

    def pending(self, team: str) -> int:
        return sum(1 for j in self.jobs.values() if j.team == team and j.waiting_since is not None)


@dataclass
class Sample:
    t: float
    gpus: dict[str, int]  # running GPUs per team
    pending: dict[str, int]
    cost: float  # per hour, of the running pods where they run
    bound: float  # per hour, the same GPUs on the cheapest ones
    placed_cost: float  # per hour, of the admitted gangs (from placement to their end)
    placed_bound: float


def sample(seen: Observed, t: float) -> Sample:
    gpus = dict.fromkeys(WEIGHTS, 0)
    cost = 0.0
    for (member, _, _), (team, n) in seen.running.items():
        gpus[team] += n
        cost += n * NODE_COST[member] / POOL.gpus
    pending = {team: seen.pending(team) for team in WEIGHTS}
    placed = sum(n * NODE_COST[m] / POOL.gpus for m, n in seen.placed.values())
    placed_gpus = sum(n for _, n in seen.placed.values())
    return Sample(
        t,
        gpus,
        pending,
        cost,
        lower_bound_cost(sum(gpus.values())),
        placed,
        lower_bound_cost(placed_gpus),
    )


def share_error(samples: list[Sample], teams: tuple[str, ...]) -> tuple[float, float, str]:
    """Max relative error of the teams' GPU-second shares against their weights' shares over
    `samples`; the window's length; the shares in words."""
    used = {t: sum(s.gpus[t] for s in samples) * SAMPLE_S for t in teams}
    total = sum(used.values())
    weight = sum(WEIGHTS[t] for t in teams)
    if total == 0:
        return 0.0, 0.0, "no GPU in use"
    errors, words = [], []
    for t in teams:
        share, target = used[t] / total, WEIGHTS[t] / weight
        errors.append(abs(share - target) / target)
        words.append(f"{t} {share:.3f} (weight {target:.3f})")
    return max(errors), len(samples) * SAMPLE_S, ", ".join(words)


@dataclass
class RunFigures:
    makespan_s: float
    jobs: int
    pods: int
    admissions: int
    preemptions: int
    longest_wait_s: float
    cost: float
    bound: float
    placed_cost: float
    placed_bound: float
    utilization: float  # GPU-seconds of running pods over the fleet's, first create to last end
    samples: list[Sample]


async def run(
    hub: KubeClient, members: dict[str, KubeClient], jobs: list[Job], queued: bool
) -> RunFigures:
    label = "queues" if queued else "no queues"
    await use_queues(hub, queued)
    log = paths.rig_dir() / f"bench-scheduling-{'queues' if queued else 'plain'}.log"
    env = dict(os.environ, KUBECONFIG=str(paths.kubeconfig_path("hub")))
    with log.open("w") as out:
        op = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kaon.cli", "run", env=env, stdout=out, stderr=out
        )
    seen = Observed()
    samples: list[Sample] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.sleep(4)  # the operator connects to the hub and both members
        t0 = time.monotonic()
        tasks.append(
            asyncio.create_task(
                watch_forever(hub, JOBS_ALL, lambda k, o: seen.job_event(k, o, time.monotonic()))
            )
        )
        for member, client in members.items():
            tasks.append(
                asyncio.create_task(
                    watch_forever(
                        client,
                        rest.pods(),
                        lambda k, o, m=member: seen.pod_event(m, k, o),
                        {"labelSelector": JOB_LABEL},
                    )
                )
            )

        async def submit(batch: list[Job], at_s: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at_s - time.monotonic()))
            now = time.monotonic()
            for job in batch:
                seen.created(job, now)
            await bounded(
                hub.create(
                    rest.custom(API_VERSION, "trainingjobs", namespace(j.team)), j.manifest()
                )
                for j in batch
            )
            progress(f"{label}: {len(batch)} jobs submitted at {time.monotonic() - t0:.0f}s")

        for at_s in sorted({j.at_s for j in jobs}):
            tasks.append(asyncio.create_task(submit([j for j in jobs if j.at_s == at_s], at_s)))
        deadline = t0 + 120 + 2 * len(jobs)
        while True:
            for task in tasks:
                failure = task.exception() if task.done() else None
                if failure is not None:
                    raise failure
            now = time.monotonic()
            samples.append(sample(seen, now - t0))
            done = sum(1 for j in seen.jobs.values() if j.done)
            if len(seen.jobs) == len(jobs) and done == len(jobs):
                break
            if now > deadline:
                raise TimeoutError(f"{label}: {done} of {len(jobs)} jobs Succeeded in time")
            if len(samples) % 40 == 0:
                progress(f"{label}: {done} of {len(jobs)} jobs done at {now - t0:.0f}s")
            await asyncio.sleep(SAMPLE_S)
        makespan = time.monotonic() - t0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        op.send_signal(signal.SIGTERM)
        await asyncio.wait_for(op.wait(), 60)
    await clear(hub, members)
    waits = [j.longest_wait for j in seen.jobs.values()]
    return RunFigures(
        makespan_s=makespan,
        jobs=len(jobs),
        pods=sum(j.workers for j in jobs),
        admissions=sum(j.admissions for j in seen.jobs.values()),
        preemptions=sum(j.preemptions for j in seen.jobs.values()),
        longest_wait_s=max(waits, default=0.0),
        cost=sum(s.cost for s in samples) * SAMPLE_S,
        bound=sum(s.bound for s in samples) * SAMPLE_S,
        placed_cost=sum(s.placed_cost for s in samples) * SAMPLE_S,
        placed_bound=sum(s.placed_bound for s in samples) * SAMPLE_S,
        utilization=sum(sum(s.gpus.values()) for s in samples) / (FLEET_GPUS * len(samples)),
        samples=samples,
    )


def phases(
    samples: list[Sample], stagger_s: float
) -> list[tuple[str, tuple[str, ...], list[Sample]]]:
    """Borrowing (c not yet submitting: a and b share its idle quota) and all three; each from
    SETTLE_S after it began, while every team of it had jobs waiting."""
    borrowing = [
        s
        for s in samples
        if SETTLE_S <= s.t < stagger_s and s.pending["a"] > 0 and s.pending["b"] > 0
    ]
    everyone = [
        s for s in samples if s.t >= stagger_s + SETTLE_S and all(s.pending[t] > 0 for t in WEIGHTS)
    ]
    return [
        ("a, b borrowing c's quota", ("a", "b"), borrowing),
        ("a, b, c", tuple(WEIGHTS), everyone),
    ]


async def main(n: int, stagger_s: float) -> None:
    rig.up(load_config())
    hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
    members = {m: KubeClient.from_file(paths.kubeconfig_path(m)) for m in MEMBERS}
    jobs = workload(n, stagger_s)
    try:
        await prepare(hub, members)
        await clear(hub, members)  # what an interrupted run left
        plain = await run(hub, members, jobs, queued=False)
        queued = await run(hub, members, jobs, queued=True)
    finally:
        await cleanup(hub, members)
        for c in (hub, *members.values()):
            await c.close()

    errors = []
    print(f"\n{n} jobs ({queued.pods} pods) over {FLEET_GPUS} GPUs in {', '.join(MEMBERS)}")
    for title, teams, window in phases(queued.samples, stagger_s):
        error, length, words = share_error(window, teams)
        print(f"fair share, {title}, {length:.0f}s: {words}; max relative error {error:.3f}")
        if length >= 5:
            errors.append(error)
    for title, r in (("no queues", plain), ("queues", queued)):
        print(
            f"{title}: {r.makespan_s:.1f}s, {r.preemptions} preemptions, longest wait "
            f"{r.longest_wait_s:.1f}s, GPUs busy {r.utilization:.1%}; running pods cost "
            f"{r.cost / 3600:.2f} against a bound of {r.bound / 3600:.2f}, admitted gangs "
            f"{r.placed_cost / 3600:.2f} against {r.placed_bound / 3600:.2f} (cost units)"
        )
    entries = {
        name: record(name, *figure)
        for name, figure in {
            "scheduling.jobs_per_s": (
                n / queued.makespan_s,
                "jobs/s",
                n / plain.makespan_s,
            ),
            "scheduling.pods_per_s": (
                queued.pods / queued.makespan_s,
                "pods/s",
                plain.pods / plain.makespan_s,
            ),
            "scheduling.fair_share_max_rel_error": (max(errors, default=float("nan")), "ratio"),
            "scheduling.preemptions_per_admitted_job": (queued.preemptions / n, "ratio"),
            "scheduling.longest_wait_s": (queued.longest_wait_s, "s", plain.longest_wait_s),
            "scheduling.cost_vs_lower_bound": (
                queued.placed_cost / 3600,
                "cost",
                queued.placed_bound / 3600,
            ),
            "scheduling.running_cost_vs_lower_bound": (
                queued.cost / 3600,
                "cost",
                queued.bound / 3600,
            ),
            "scheduling.gpu_utilization": (queued.utilization, "ratio", plain.utilization),
        }.items()
    }
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("KAON_BENCH_SCHED_JOBS", "1000"))
    )
    parser.add_argument("--stagger", type=float, default=30.0, help="seconds before team c")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.stagger))
