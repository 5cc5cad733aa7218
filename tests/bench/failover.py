"""Failover benchmark: N TrainingJobs (kwok-simulated, 4 workers) on one member, with the
default grace of 15 s.

1. Blips: the member's API server stopped and started again 20 times, each time down about
   5 s: the figure is the number of failovers this caused (any is a false one).
2. Loss: the member stopped for good: for each of its jobs, the time from the stop until all
   its workers run on the other member; p50 and max, against the grace (what a lost member
   costs at least).

    python tests/bench/failover.py [--jobs 50] [--blips 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from typing import Any

from controlplane import MEMBERS, NS, RunningPods, bounded, cleanup, prepare, progress
from results import record, table

from kaon.api.common import API_VERSION
from kaon.clusters import paths as rest
from kaon.clusters.client import KubeClient, Obj
from kaon_rig import paths, rig
from kaon_rig.config import load_config

GRACE_S = 15  # spec.runPolicy.failover.graceSeconds' default
BLIP_S = 5.0
JOBS = rest.custom(API_VERSION, "trainingjobs", NS)
LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "3600s"}


def job_manifest(name: str, workers: int) -> Obj:
    """No cluster selector: the gang may run on either member's bench pool."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": name, "annotations": LONG_RUN},
        "spec": {
            "model": {"family": "cnn"},
            "workers": workers,
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "placement": {"poolPreferences": [{"type": "cpu", "pool": "bench"}]},
        },
    }


async def jobs_now(hub: KubeClient) -> dict[str, Obj]:
    listing = await hub.get(JOBS)
    return {j["metadata"]["name"]: j for j in listing["items"]}


def where(job: Obj) -> tuple[str, str, int, int]:
    status = job.get("status") or {}
    cluster = (status.get("placement") or {}).get("cluster", "")
    return cluster, status.get("state", ""), status.get("attempt", 0), status.get("failovers", 0)


async def start_operator() -> asyncio.subprocess.Process:
    log = paths.rig_dir() / "bench-failover-operator.log"
    env = dict(os.environ, KUBECONFIG=str(paths.kubeconfig_path("hub")))
    with log.open("w") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kaon.cli",
            "run",
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def wait_all(hub: KubeClient, names: list[str], cluster: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        now = await jobs_now(hub)
        if all(where(now[n])[:2] == (cluster, "Running") for n in names if n in now):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not all Running in {cluster} after {timeout_s}s")
        await asyncio.sleep(0.5)


async def blips(hub: KubeClient, member: str, count: int) -> tuple[int, float]:
    """(failovers caused, the longest blip in seconds)."""
    before = sum(where(j)[3] for j in (await jobs_now(hub)).values())
    longest = 0.0
    for i in range(count):
        t0 = time.monotonic()
        await asyncio.to_thread(rig.stop_cluster, member)
        await asyncio.sleep(max(0.0, BLIP_S - (time.monotonic() - t0)))
        await asyncio.to_thread(rig.start_cluster, member)
        longest = max(longest, time.monotonic() - t0)
        await asyncio.sleep(3)  # back, heartbeats answered, before the next one
        progress(f"blip {i + 1}/{count}: {time.monotonic() - t0:.1f}s")
    await asyncio.sleep(GRACE_S + 2)  # a failover decided late would show by now
    after = sum(where(j)[3] for j in (await jobs_now(hub)).values())
    return after - before, longest


async def loss(hub: KubeClient, member: str, other: str, names: list[str]) -> list[float]:
    """Seconds from stopping `member` until each job runs in `other`."""
    t0 = time.monotonic()
    await asyncio.to_thread(rig.stop_cluster, member)
    moved: dict[str, float] = {}
    try:
        while len(moved) < len(names):
            now = await jobs_now(hub)
            for n in names:
                if n not in moved and where(now[n])[:2] == (other, "Running"):
                    moved[n] = time.monotonic() - t0
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"{len(moved)} of {len(names)} moved after 600s")
            await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(rig.start_cluster, member)
    return sorted(moved.values())


async def main(n: int, workers: int, count: int) -> None:
    rig.up(load_config())
    hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
    members = {m: KubeClient.from_file(paths.kubeconfig_path(m)) for m in MEMBERS}
    # One member cheaper: every job goes there first (the score would spread equal ones).
    await prepare(hub, members, costs={MEMBERS[0]: 1.0, MEMBERS[1]: 2.0})
    op = await start_operator()
    try:
        names = [f"fo-{i}" for i in range(n)]
        await bounded(hub.create(JOBS, job_manifest(name, workers)) for name in names)
        watcher = RunningPods(members)
        watcher.start()
        await watcher.wait(n * workers)
        await watcher.stop()
        placed = {where(j)[0] for j in (await jobs_now(hub)).values()}
        if len(placed) != 1:
            raise SystemExit(f"expected one member to hold every job, got {placed}")
        (cluster,) = placed
        member = cluster.removeprefix("bench-")
        other = f"bench-{next(m for m in MEMBERS if m != member)}"
        progress(f"{n} jobs running in {cluster}; {count} blips of {BLIP_S:.0f}s")
        false_failovers, longest = await blips(hub, member, count)
        progress(f"blips done: {false_failovers} failovers; now {member} is lost")
        times = await loss(hub, member, other, names)
    finally:
        op.send_signal(signal.SIGTERM)
        await asyncio.wait_for(op.wait(), 60)
        await cleanup(hub, members)
        for c in (hub, *members.values()):
            await c.close()
    entries: dict[str, Any] = {
        "failover.member_lost_p50_s": record(
            "failover.member_lost_p50_s", statistics.median(times), "s", GRACE_S
        ),
        "failover.member_lost_max_s": record("failover.member_lost_max_s", times[-1], "s", GRACE_S),
        "failover.false_failovers": record(
            "failover.false_failovers", float(false_failovers), "failovers"
        ),
        "failover.longest_blip_s": record("failover.longest_blip_s", longest, "s", GRACE_S),
    }
    print(f"\n{n} jobs x {workers} workers lost with {member}; grace {GRACE_S}s")
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--blips", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.workers, args.blips))
