"""Control-plane benchmark: N TrainingJobs x 4 workers over two members, against the raw limit.

Raw limit: a tight asyncio client creating the same worker pods directly in the members. Both
are timed from the first request to every worker pod Running, on the same rig in the same run.
Also: per-job time to admission (p50, p99), the operator's resident memory at 2N live jobs, and
the CPU seconds each process kind used while kaon worked (what limits it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import yaml
from results import record, table

from kaon.api.common import API_VERSION
from kaon.api.computecluster import PoolSpec
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec
from kaon.builders.worker import JobRef, worker_identity, worker_pod
from kaon.clusters import paths as rest
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.rig import paths, rig
from kaon.rig.config import RigPool, load_config, node_manifest

NS = "kaon-bench"
MEMBERS = ("east", "west")
POOL = RigPool(name="bench", nodes=2, cpu="1000", memory="4Ti", pods=1000)
IN_FLIGHT = 64
REPO = Path(__file__).resolve().parents[2]


def job_spec(member: str, workers: int) -> dict[str, Any]:
    return {
        "model": {"family": "cnn"},
        "workers": workers,
        "resources": {"cpu": "100m", "memory": "128Mi"},
        "placement": {"clusterSelector": {"matchLabels": {"kaon.dev/bench-member": member}}},
    }


async def bounded(tasks: Iterable[Awaitable[Any]], limit: int = IN_FLIGHT) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(t: Awaitable[Any]) -> Any:
        async with sem:
            return await t

    return await asyncio.gather(*(one(t) for t in tasks))


async def ignore_conflict(coro: Awaitable[Obj]) -> None:
    try:
        await coro
    except ApiError as exc:
        if not exc.conflict:
            raise


class RunningPods:
    """Counts Running worker pods in the bench namespace of each member, by watching."""

    def __init__(self, members: dict[str, KubeClient]) -> None:
        self.members = members
        self.running: dict[str, set[str]] = {m: set() for m in members}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._watch(m, c)) for m, c in self.members.items()]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.running.values())

    async def _watch(self, member: str, client: KubeClient) -> None:
        listing = await client.get(rest.pods(NS))
        for p in listing["items"]:
            self._apply(member, "ADDED", p)
        rv = listing["metadata"]["resourceVersion"]
        while True:
            async for kind, p in client.watch(rest.pods(NS), rv):
                rv = p["metadata"].get("resourceVersion", rv)
                if kind != "BOOKMARK":
                    self._apply(member, kind, p)

    def _apply(self, member: str, kind: str, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        if kind != "DELETED" and (pod.get("status") or {}).get("phase") == "Running":
            self.running[member].add(name)
        else:
            self.running[member].discard(name)

    async def wait(self, target: int, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count < target:
            for t in self.tasks:
                if t.done():
                    t.result()  # a watch that died says why
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {target} pods Running after {timeout_s}s")
            await asyncio.sleep(0.05)


async def fresh_namespace(client: KubeClient) -> None:
    """The bench namespace, after any earlier one has finished terminating."""
    while True:
        try:
            ns = await client.get(f"{rest.namespaces()}/{NS}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            await client.create(rest.namespaces(), {"metadata": {"name": NS}})
            return
        if not ns["metadata"].get("deletionTimestamp"):
            return
        await asyncio.sleep(1)


async def prepare(hub: KubeClient, members: dict[str, KubeClient]) -> None:
    for name in ("computeclusters.kaon.dev", "trainingjobs.kaon.dev"):
        body = yaml.safe_load((REPO / "crds" / f"{name}.yaml").read_text())
        await ignore_conflict(
            hub.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
        )
    for member, client in members.items():
        await fresh_namespace(client)
        for api_version, plural, obj in worker_identity(NS):  # the pods' ServiceAccount
            await ignore_conflict(client.create(rest.collection(api_version, plural, NS), obj))
        for i in range(POOL.nodes):
            await ignore_conflict(client.create(rest.nodes(), node_manifest(member, POOL, i)))
        await ignore_conflict(
            hub.create(
                rest.custom(API_VERSION, "computeclusters"),
                {
                    "apiVersion": API_VERSION,
                    "kind": "ComputeCluster",
                    "metadata": {
                        "name": f"bench-{member}",
                        "labels": {"kaon.dev/bench-member": member},
                    },
                    "spec": {
                        "kubeconfigSecretRef": {
                            "name": rig.member_secret_name(member),
                            "namespace": rig.MEMBER_SECRET_NAMESPACE,
                        },
                        "pools": [{"name": "bench", "nodeSelector": {"kaon.dev/pool": "bench"}}],
                    },
                },
            )
        )
    await fresh_namespace(hub)
    await asyncio.sleep(2)  # the new nodes become Ready


async def clear_pods(members: dict[str, KubeClient], watcher: RunningPods) -> None:
    for client in members.values():
        await client.request(
            "DELETE", rest.pods(NS), params={"gracePeriodSeconds": "0"}, timeout_s=600
        )
    while True:
        left = 0
        for c in members.values():
            left += len((await c.get(rest.pods(NS)))["items"])
        if left == 0:
            return
        await asyncio.sleep(0.5)


async def raw_limit(members: dict[str, KubeClient], n: int, workers: int) -> float:
    pool = PoolSpec(name="bench", node_selector={"kaon.dev/pool": "bench"})
    settings = Settings()
    pods = []
    for i in range(n):
        member = MEMBERS[i % 2]
        spec = TrainingJobSpec.model_validate(job_spec(member, workers))
        job = JobRef(NS, f"raw-{i}", f"uid-{i}", {})
        pods += [(member, worker_pod(job, spec, pool, 0, 0, r, settings)) for r in range(workers)]
    watcher = RunningPods(members)
    watcher.start()
    t0 = time.monotonic()
    await bounded(members[m].create(rest.pods(NS), p) for m, p in pods)
    await watcher.wait(len(pods))
    elapsed = time.monotonic() - t0
    await clear_pods(members, watcher)
    await watcher.stop()
    return elapsed


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> dict[str, float]:
    """CPU time of the rig's processes and the operator, by executable name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        exe = Path(cmd[0].decode(errors="replace")).name
        if b"kaon.cli" in b" ".join(cmd):
            exe = "kaon-operator"
        elif not any(k in exe for k in ("kube-", "etcd", "kwok")):
            continue
        else:  # .../clusters/<name>/bin/<exe>: charge it to its cluster
            parts = Path(cmd[0].decode(errors="replace")).parts
            exe = f"{parts[-3]}/{exe}" if len(parts) > 3 else exe
        out[exe] = out.get(exe, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class AdmissionClock:
    """When each TrainingJob was first seen admitted, by watching the hub."""

    def __init__(self, hub: KubeClient) -> None:
        self.hub = hub
        self.admitted: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _watch(self) -> None:
        path = rest.custom(API_VERSION, "trainingjobs", NS)
        rv = (await self.hub.get(path))["metadata"]["resourceVersion"]
        while True:
            async for kind, job in self.hub.watch(path, rv):
                rv = job["metadata"].get("resourceVersion", rv)
                if kind != "BOOKMARK" and (job.get("status") or {}).get("placement"):
                    self.admitted.setdefault(job["metadata"]["name"], time.monotonic())


async def with_kaon(
    hub: KubeClient, members: dict[str, KubeClient], n: int, workers: int
) -> dict[str, Any]:
    log = paths.rig_dir() / "bench-operator.log"
    env = dict(os.environ, KUBECONFIG=str(paths.kubeconfig_path("hub")))
    command = [sys.executable, "-m", "kaon.cli", "run"]
    profile = os.environ.get("KAON_BENCH_PROFILE")  # py-spy's output file: where the time goes
    if profile:
        py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if py_spy is None:
            raise SystemExit("KAON_BENCH_PROFILE needs py-spy: pip install py-spy")
        command = [py_spy, "record", "--format", "raw", "-o", profile, "--", *command]
    op = subprocess.Popen(
        command,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(4)  # the operator connects to the hub and both members
        watcher, clock = RunningPods(members), AdmissionClock(hub)
        watcher.start()
        clock.start()
        await asyncio.sleep(0.5)
        created: dict[str, float] = {}
        cpu0 = cpu_seconds()
        t0 = time.monotonic()

        async def create(i: int) -> None:
            name = f"job-{i}"
            await hub.create(
                rest.custom(API_VERSION, "trainingjobs", NS),
                {
                    "apiVersion": API_VERSION,
                    "kind": "TrainingJob",
                    "metadata": {"name": name},
                    "spec": job_spec(MEMBERS[i % 2], workers),
                },
            )
            created[name] = time.monotonic()

        await bounded(create(i) for i in range(n))
        progress(f"kaon: {n} jobs created")
        await watcher.wait(n * workers)
        progress(f"kaon: {n * workers} pods running")
        elapsed = time.monotonic() - t0
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu_seconds().items()}
        waits = sorted(clock.admitted[k] - created[k] for k in created if k in clock.admitted)
        await clock.stop()
        # More jobs than fit: the operator now holds 2N live jobs, N of them waiting.
        await bounded(create(i) for i in range(n, 2 * n))
        progress(f"kaon: {2 * n} jobs live")
        await asyncio.sleep(10)
        memory = rss_mib(op.pid)
        await watcher.stop()
        return {"elapsed": elapsed, "waits": waits, "cpu": cpu, "rss": memory}
    finally:
        op.send_signal(signal.SIGINT if profile else signal.SIGTERM)  # py-spy writes on SIGINT
        op.wait(60)


async def cleanup(hub: KubeClient, members: dict[str, KubeClient]) -> None:
    jobs = rest.custom(API_VERSION, "trainingjobs", NS)
    with contextlib.suppress(ApiError):  # no operator runs now: release kaon's finalizers
        listing = await hub.get(jobs)
        await bounded(
            hub.merge_patch(f"{jobs}/{j['metadata']['name']}", {"metadata": {"finalizers": None}})
            for j in listing["items"]
        )
    await hub.delete_if_present(f"{rest.namespaces()}/{NS}")
    for member, client in members.items():
        await hub.delete_if_present(
            rest.custom(API_VERSION, "computeclusters", None, f"bench-{member}")
        )
        await client.delete_if_present(f"{rest.namespaces()}/{NS}")
        for i in range(POOL.nodes):
            await client.delete_if_present(f"{rest.nodes()}/{POOL.node_name(member, i)}")


async def main(n: int, workers: int) -> None:
    rig.up(load_config())
    hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
    members = {m: KubeClient.from_file(paths.kubeconfig_path(m)) for m in MEMBERS}
    await prepare(hub, members)
    try:
        raw = await raw_limit(members, n, workers)
        kaon = await with_kaon(hub, members, n, workers)
    finally:
        await cleanup(hub, members)
        for c in (hub, *members.values()):
            await c.close()
    pods = n * workers
    waits = kaon["waits"]
    p50 = statistics.median(waits)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    entries = {
        "controlplane.pods_per_s": record(
            "controlplane.pods_per_s", pods / kaon["elapsed"], "pods/s", pods / raw
        ),
        "controlplane.admission_p50_s": record("controlplane.admission_p50_s", p50, "s"),
        "controlplane.admission_p99_s": record("controlplane.admission_p99_s", p99, "s", p50),
        f"controlplane.operator_rss_{2 * n}_jobs": record(
            f"controlplane.operator_rss_{2 * n}_jobs", kaon["rss"], "MiB", 150.0
        ),
    }
    print(f"\n{n} TrainingJobs x {workers} workers = {pods} pods over {', '.join(MEMBERS)}")
    print(f"raw asyncio client: {raw:.1f}s ({pods / raw:.1f} pods/s); kaon: {kaon['elapsed']:.1f}s")
    print(
        "CPU seconds while kaon worked:",
        ", ".join(f"{k} {v:.1f}" for k, v in sorted(kaon["cpu"].items(), key=lambda kv: -kv[1])),
    )
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("KAON_BENCH_JOBS", "500")))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.workers))
