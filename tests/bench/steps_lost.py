"""Steps lost benchmark: a CNN that really trains (the rig's process agents, checkpoints every
20 steps in the rig's S3 server) loses its member mid-way and resumes on the other one.

Figures: the steps lost beyond the last committed checkpoint (kaon's promise: 0), the steps
trained again (the work since that checkpoint, against a restart from step 0, what a requeue
without a shared store costs), the seconds from the stop until it runs again elsewhere, and its
accuracy against the bar of an uninterrupted run.

    python tests/bench/steps_lost.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time
from typing import Any

import boto3
import yaml
from botocore.config import Config
from controlplane import MEMBERS, NS, REPO, cleanup, ignore_conflict, prepare, progress
from failover import jobs_now, start_operator
from results import record, table

from kaon.api.common import API_VERSION
from kaon.clusters import paths as rest
from kaon.clusters.client import KubeClient, Obj
from kaon_rig import paths, rig, s3
from kaon_rig.config import load_config

NAME = "real-steps"
EXAMPLE = REPO / "examples" / "trainingjobs" / "cnn-digits-s3.yaml"
CLUSTERS = REPO / "examples" / "clusters"
ACCURACY_BAR = 0.95  # cnn-digits' bar uninterrupted (tests/e2e/test_training.py)
TIMEOUT_S = 900.0
GRACE_S = 10  # the example's spec.runPolicy.failover.graceSeconds


def store(secret: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=secret["endpoint"],
        region_name=secret["region"],
        aws_access_key_id=secret["accessKeyId"],
        aws_secret_access_key=secret["secretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )


def committed_step(s3c: Any, job: Obj) -> int:
    meta = job["metadata"]
    key = f"checkpoints/{meta['namespace']}/{meta['name']}/{meta['uid']}/manifest.json"
    try:
        return int(json.loads(s3c.get_object(Bucket=s3.BUCKET, Key=key)["Body"].read())["step"])
    except s3c.exceptions.NoSuchKey:
        return 0


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


async def run(hub: KubeClient, epochs: int) -> dict[str, float]:
    secret = await copy_store_secret(hub)
    s3c = store(secret)
    registered = [await register(hub, "local.yaml")]  # west-local only: it starts in west
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": NAME}
    body["spec"]["training"]["epochs"] = epochs
    await hub.create(rest.custom(API_VERSION, "trainingjobs", NS), body)
    try:
        job = await wait_job(
            hub,
            lambda j: status(j).get("state") == "Running" and committed_step(s3c, j) >= 40,
            "running with two checkpoints",
        )
        registered.append(await register(hub, "local-east.yaml"))
        await asyncio.sleep(5)  # east-local ready, and the job some steps past its checkpoint
        job = (await jobs_now(hub))[NAME]
        trained = int((status(job).get("progress") or {}).get("step", 0))
        committed = committed_step(s3c, job)
        progress(f"{NAME}: at step {trained}, committed {committed}; west stops")
        t0 = time.monotonic()
        await asyncio.to_thread(rig.stop_cluster, "west")
        try:
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
        "trained": trained,
        "committed": committed,
        "resumed": resumed,
        "recovered": recovered,
        "accuracy": float(final["metrics"]["accuracy"]),
    }


async def main(epochs: int) -> None:
    rig.up(load_config())
    hub = KubeClient.from_file(paths.kubeconfig_path("hub"))
    members = {m: KubeClient.from_file(paths.kubeconfig_path(m)) for m in MEMBERS}
    await prepare(hub, members)
    await ignore_conflict(hub.create(rest.namespaces(), {"metadata": {"name": NS}}))
    op = await start_operator()
    try:
        got = await run(hub, epochs)
    finally:
        op.send_signal(signal.SIGTERM)
        await asyncio.wait_for(op.wait(), 60)
        await cleanup(hub, members)
        for c in (hub, *members.values()):
            await c.close()
    redone = max(got["trained"] - got["resumed"], 0)
    entries = {
        "failover.real_steps_lost_beyond_checkpoint": record(
            "failover.real_steps_lost_beyond_checkpoint",
            float(max(got["committed"] - got["resumed"], 0)),
            "steps",
        ),
        # Against a restart from step 0: the steps a requeue without a shared store trains again.
        "failover.real_steps_trained_again": record(
            "failover.real_steps_trained_again", float(redone), "steps", got["trained"]
        ),
        "failover.real_running_again_s": record(
            "failover.real_running_again_s", got["recovered"], "s", GRACE_S
        ),
        "failover.real_accuracy": record(
            "failover.real_accuracy", got["accuracy"], "accuracy", ACCURACY_BAR
        ),
    }
    print(
        f"\n{NAME}: trained to step {got['trained']}, committed {got['committed']}, lost west, "
        f"resumed at {got['resumed']} in east-local"
    )
    print(table(entries))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    asyncio.run(main(parser.parse_args().epochs))
