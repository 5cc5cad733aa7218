"""kopf handlers on the hub: registrations only, they hand every event to the Manager.

Only event-watching handlers are used, so kopf keeps no progress or diff-base annotations on the
objects: kaon never writes spec or metadata beyond its finalizer, which GitOps tools expect.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
import yaml

from kaon.api.common import GROUP, VERSION
from kaon.api.settings import Settings
from kaon.clusters.client import KubeClient
from kaon.engine import metrics
from kaon.manager import Manager

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
    manager = Manager(KubeClient(kubeconfig), kubeconfig, Settings.from_env())
    manager.start()
    metrics.serve(manager.settings.metrics_port, manager.metrics_collector())
    memo.manager = manager


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.manager.stop()
    await memo.manager.hub.close()


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def trainingjob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.manager.jobs.object_event(event["type"] or "ADDED", event["object"])


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def inferenceservice_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.manager.services.object_event(event["type"] or "ADDED", event["object"])


@kopf.on.event(GROUP, VERSION, "computeclusters")
async def computecluster_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await memo.manager.clusters.object_event(event["type"] or "ADDED", dict(event["object"]))
