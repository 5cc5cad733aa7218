"""Writes to the hub: status patches, finalizers, Events (never spec)."""

from __future__ import annotations

import logging
from typing import Any

from kaon.api.common import API_VERSION
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj

log = logging.getLogger(__name__)


def _path(plural: str, body: Obj) -> str:
    meta = body["metadata"]
    return paths.custom(API_VERSION, plural, meta.get("namespace"), meta["name"])


async def patch_status(
    hub: KubeClient, plural: str, body: Obj, status: dict[str, Any], guarded: bool = False
) -> Obj:
    """Merge-patch status; `guarded`: only onto the body's resourceVersion (else a 409), so a
    write made from a stale view (another operator's, or ours before a change) is refused."""
    patch: dict[str, Any] = {"status": status}
    if guarded:
        patch["metadata"] = {"resourceVersion": body["metadata"]["resourceVersion"]}
    return await hub.merge_patch(_path(plural, body) + "/status", patch)


async def get(hub: KubeClient, plural: str, body: Obj) -> Obj:
    return await hub.get(_path(plural, body))


async def set_finalizers(hub: KubeClient, plural: str, body: Obj, finalizers: list[str]) -> Obj:
    """Replace the finalizers, guarded by resourceVersion (a concurrent change gets a 409)."""
    meta = body["metadata"]
    patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
    return await hub.merge_patch(_path(plural, body), patch)


async def delete(hub: KubeClient, plural: str, body: Obj) -> None:
    await hub.delete_if_present(_path(plural, body))


async def post_event(
    hub: KubeClient, kind: str, body: Obj, type_: str, reason: str, message: str, now: str
) -> None:
    """A core/v1 Event on the object; failures are logged, never fatal."""
    meta = body["metadata"]
    ns = meta.get("namespace") or "default"
    event = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": ns},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "kaon-operator"},
        "reportingComponent": "kaon.dev/operator",
        "reportingInstance": "kaon-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await hub.create(paths.events(ns), event, answer=False)
    except ApiError as exc:
        log.debug("event %s on %s: %s", reason, meta["name"], exc)
