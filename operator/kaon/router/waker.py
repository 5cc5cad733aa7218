"""Tells the operator that a service without a ready replica has a request waiting: the
annotation kaon.dev/wanted-at on the InferenceService, written at most every few seconds."""

from __future__ import annotations

import logging

from kaon.api.common import API_VERSION
from kaon.api.names import WANTED_ANNOTATION, ObjectKey
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient
from kaon.engine.clock import Clock, SystemClock, rfc3339_micro

log = logging.getLogger(__name__)
WAKE_INTERVAL_S = 2.0  # held requests of one service write the annotation this often at most


class Waker:
    def __init__(self, hub: KubeClient, clock: Clock | None = None) -> None:
        self.hub = hub
        self.clock = clock or SystemClock()
        self._written: dict[ObjectKey, float] = {}

    async def want(self, key: ObjectKey) -> None:
        now = self.clock.monotonic()
        if now - self._written.get(key, float("-inf")) < WAKE_INTERVAL_S:
            return
        self._written[key] = now
        path = paths.custom(API_VERSION, "inferenceservices", key[0], key[1])
        patch = {"metadata": {"annotations": {WANTED_ANNOTATION: rfc3339_micro(self.clock)}}}
        try:
            await self.hub.merge_patch(path, patch)
        except ApiError as exc:
            self._written.pop(key, None)  # the next held request tries again
            log.warning("could not ask for a replica of %s/%s: %s", *key, exc)
