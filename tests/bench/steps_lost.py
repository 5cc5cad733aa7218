"""Steps lost benchmark: a CNN that really trains (the rig's process agents, checkpoints every
20 steps in the rig's S3 server) loses its member mid-way and resumes on the other one.

Figures: the steps lost beyond the last committed checkpoint (kaon's promise: 0), the step it
resumed from against that checkpoint's (a requeue without a shared store resumes from 0), the
seconds from the loss until it runs again elsewhere, and its accuracy against the bar of an
uninterrupted run. West is lost with its machine: its process agent and the worker's processes
are killed too (a stopped API server alone would leave the old attempt training on).

    python tests/bench/steps_lost.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import time
from typing import Any

import yaml
from controlplane import MEMBERS, NS, REPO, cleanup, ignore_conflict, prepare, progress
from failover import jobs_now, start_operator
from results import record, table

from kaon.api.common import API_VERSION
from kaon.clusters import paths as rest
from kaon.clusters.client import KubeClient, Obj
from kaon_rig import agents, paths, rig, s3
from kaon_rig.config import RigConfig, load_config

NAME = "real-steps"
EXAMPLE = REPO / "examples" / "trainingjobs" / "cnn-digits-s3.yaml"
CLUSTERS = REPO / "examples" / "clusters"
ACCURACY_BAR = 0.95  # cnn-digits' bar uninterrupted (tests/e2e/test_training.py)
TIMEOUT_S = 900.0
GRACE_S = 10  # the example's spec.runPolicy.failover.graceSeconds


def committed_step(secret: dict[str, str], job: Obj) -> int:
    meta = job["metadata"]
    found = s3.committed_manifest(secret, meta["namespace"], meta["name"], meta["uid"])
    return int(found.get("step", 0))


async def copy_store_secret(hub: KubeClient) -> dict[str, str]:
    secrets = rest.collection("v1", "secrets", s3.SECRET_NAMESPACE)
    found = await hub.get(f"{secrets}/{s3.SECRET_NAME}")
    body = {"metadata": {"name": s3.SECRET_NAME}, "data": found["data"]}
    await ignore_conflict(hub.create(rest.collection("v1", "secrets", NS), body))
    return {k: base64.b64decode(v).decode() for k, v in found["data"].items()}


async def register(hub: KubeClient, example: str) -> str:
    body = yaml.safe_load((CLUSTERS / example).read_text())
    await ignore_conflict(hub.create(rest.custom(API_VERSION, "computeclusters"), body))
    return str(body["metadata"]["name"])


async def wait_job(hub: KubeClient, done: Any, what: str) -> Obj:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        job = (await jobs_now(hub)).get(NAME)
        if job is not None and done(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAME}: not {what} after {TIMEOUT_S:.0f}s: {job}")
        await asyncio.sleep(0.5)


def status(job: Obj) -> Obj:
    return job.get("status") or {}


async def run(hub: KubeClient, epochs: int, config: RigConfig) -> dict[str, float]:
    secret = await copy_store_secret(hub)
    # west-local only: it starts in west (east-local, left by a demo, would take it first).
    await hub.delete_if_present(rest.custom(API_VERSION, "computeclusters", None, "east-local"))
    registered = [await register(hub, "local.yaml")]
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": NAME}
    body["spec"]["training"]["epochs"] = epochs
    await hub.create(rest.custom(API_VERSION, "trainingjobs", NS), body)
    try:
        await wait_job(
            hub,
            lambda j: status(j).get("state") == "Running" and committed_step(secret, j) >= 40,
            "running with two checkpoints",
        )
        registered.append(await register(hub, "local-east.yaml"))
        await asyncio.sleep(5)  # east-local ready, and the job some steps past its checkpoint
        t0 = time.monotonic()
        await asyncio.to_thread(rig.lose_cluster, "west", config)
        try:
            # The old attempt's last commit: nothing of west writes after this.
            committed = committed_step(secret, (await jobs_now(hub))[NAME])
            progress(f"{NAME}: west lost with its machine; committed step {committed}")
            await wait_job(
                hub,
                lambda j: (
                    (status(j).get("placement") or {}).get("cluster") == "east-local"
                    and status(j).get("state") == "Running"
                ),
                "running in east-local",
            )
            recovered = time.monotonic() - t0
        finally:
            await asyncio.to_thread(rig.start_cluster, "west")
            agents.start(config, None)
        done = await wait_job(
            hub, lambda j: status(j).get("state") in ("Succeeded", "Failed"), "ended"
        )
    finally:
        await hub.delete_if_present(rest.custom(API_VERSION, "trainingjobs", NS) + f"/{NAME}")
        for name in registered:
            await hub.delete_if_present(rest.custom(API_VERSION, "computeclusters", None, name))
    final = status(done)
    if final.get("state") != "Succeeded" or not final.get("failovers"):
        raise SystemExit(f"{NAME} did not fail over and succeed: {final}")
    resumed = int(final["progress"]["resumedFromStep"])
    return {
        "committed": committed,
        "resumed": resumed,
        "recovered": recovered,
        "accuracy": float(final["metrics"]["accuracy"]),
    }


async def main(epochs: int) -> None:
    config = load_config()
    rig.up(config)
    hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
    members = {m: KubeClient.from_file(paths.kubeconfig_path(m)) for m in MEMBERS}
    await prepare(hub, members)
    await ignore_conflict(hub.create(rest.namespaces(), {"metadata": {"name": NS}}))
    op = await start_operator()
    try:
        got = await run(hub, epochs, config)
    finally:
        op.send_signal(signal.SIGTERM)
        await asyncio.wait_for(op.wait(), 60)
        await cleanup(hub, members)
        for c in (hub, *members.values()):
            await c.close()
    entries = {
        "failover.real_steps_lost_beyond_checkpoint": record(
            "failover.real_steps_lost_beyond_checkpoint",
            float(max(got["committed"] - got["resumed"], 0)),
            "steps",
        ),
        "failover.real_resumed_step": record(
            "failover.real_resumed_step", float(got["resumed"]), "step", got["committed"]
        ),
        "failover.real_running_again_s": record(
            "failover.real_running_again_s", got["recovered"], "s", GRACE_S
        ),
        "failover.real_accuracy": record(
            "failover.real_accuracy", got["accuracy"], "accuracy", ACCURACY_BAR
        ),
    }
    print(
        f"\n{NAME}: committed step {got['committed']}, lost west with its machine, "
        f"resumed at {got['resumed']} in east-local"
    )
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    asyncio.run(main(parser.parse_args().epochs))
