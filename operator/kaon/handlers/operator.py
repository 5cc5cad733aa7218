"""kopf handlers on the hub: thin, they hand objects to the Controller.

Only event-watching handlers are used, so kopf keeps no progress or diff-base annotations on the
objects: kaon never writes spec or metadata beyond its finalizer, which GitOps tools expect.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
import yaml

from kaon.api.common import GROUP, VERSION
from kaon.api.settings import Settings
from kaon.clusters.client import KubeClient
from kaon.handlers import metrics
from kaon.handlers.clusterstatus import pool_inventory, publish_loop
from kaon.handlers.controller import Controller
from kaon.handlers.heap import trim_loop

log = logging.getLogger("kaon")


def hub_kubeconfig() -> dict[str, Any]:
    """The hub's kubeconfig: $KUBECONFIG (first file), else ~/.kube/config."""
    path = (os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(":")[0]
    with open(path) as f:
        config: dict[str, Any] = yaml.safe_load(f)
    return config


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    kubeconfig = hub_kubeconfig()
    hub = KubeClient(kubeconfig)
    controller = Controller(hub, kubeconfig, Settings.from_env())
    controller.start()
    metrics.serve(
        controller.settings.metrics_port,
        metrics.StateCollector(
            controller.jobs.items,
            controller.services.services.items,
            lambda: pool_inventory(controller.fleet),
        ),
    )
    memo.controller = controller
    memo.cluster_generations = {}
    memo.publisher = asyncio.create_task(
        publish_loop(hub, controller.fleet, memo.cluster_generations), name="cluster-status"
    )
    memo.trimmer = asyncio.create_task(trim_loop(), name="heap-trim")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.publisher.cancel()
    memo.trimmer.cancel()
    await memo.controller.stop()
    await memo.controller.hub.close()


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.job_event(event["type"] or "ADDED", event["object"])


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def inferenceservice_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.services.service_event(event["type"] or "ADDED", event["object"])


@kopf.on.event(GROUP, VERSION, "computeclusters")
async def computecluster_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    body: dict[str, Any] = dict(event["object"])
    name = body["metadata"]["name"]
    if event["type"] == "DELETED":
        await memo.controller.fleet.remove(name)
        memo.cluster_generations.pop(name, None)
    else:
        memo.cluster_generations[name] = int(body["metadata"].get("generation", 0))
        await memo.controller.fleet.upsert(body)
    memo.controller.want_placement()
