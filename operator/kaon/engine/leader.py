"""Leader election on the hub: one Lease, one acting operator (as client-go's leaderelection).

Every `kaon run` tries to hold the Lease; the holder renews it every `retry_s`, the others
look as often and take it over only once it has not been renewed for `lease_s` by their own
clock (the holder's timestamps are not compared with ours: clocks differ). A holder that cannot
renew within `renew_deadline_s` stops acting at once (the process exits): it may no longer be
the only one. Writes are guarded by resourceVersion, so two candidates never both win.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.engine.clock import Clock

log = logging.getLogger(__name__)
MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"

Step = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class Timing:
    lease_s: float = 15.0  # a standby takes over after the Lease went unrenewed this long
    renew_deadline_s: float = 10.0  # the leader gives up after failing to renew this long
    retry_s: float = 2.0  # how often the leader renews and the standbys look


def next_step(lease: Obj | None, identity: str, unchanged_for_s: float, lease_s: float) -> Step:
    """What a candidate does, given the Lease (None: there is none) and how long its holder and
    renewTime have been the same as far as this candidate has watched."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return "renew"
    duration = float(spec.get("leaseDurationSeconds") or lease_s)
    if not holder or unchanged_for_s >= duration:
        return "take"
    return "wait"


class LeaderElection:
    def __init__(
        self,
        hub: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        timing: Timing = Timing(),
    ) -> None:
        self.hub = hub
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.clock = clock
        self.timing = timing
        self._seen: tuple[Any, Any] | None = None  # (holder, renewTime) last seen
        self._seen_at = 0.0  # monotonic: when `_seen` last changed
        self.renewed_at: float | None = None  # monotonic: our last successful write

    async def acquire(self) -> None:
        """Return once this candidate holds the Lease."""
        announced = False
        while not await self.try_once():
            if not announced:
                holder = (self._seen or ("?",))[0]
                log.info(
                    "leader election: %s holds Lease %s/%s; standing by",
                    holder,
                    self.namespace,
                    self.name,
                )
                announced = True
            await asyncio.sleep(self.timing.retry_s)
        log.info(
            "leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name
        )

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until a renewal has failed for `renew_deadline_s`; then `on_lost()`."""
        while True:
            await asyncio.sleep(self.timing.retry_s)
            try:
                if await self.try_once():
                    continue
                log.error("leader election: another operator holds the Lease; stopping")
                on_lost()
                return
            except ApiError as exc:
                since = self.clock.monotonic() - (self.renewed_at or 0.0)
                if since >= self.timing.renew_deadline_s:
                    log.error("leader election: not renewed for %.0fs (%s); stopping", since, exc)
                    on_lost()
                    return
                left = self.timing.renew_deadline_s - since
                log.warning("leader election: renewal failed (%s), %.0fs left", exc, left)

    async def release(self) -> None:
        """On a clean stop: hand the Lease over at once instead of after `lease_s`."""
        try:
            lease = await self.hub.get(self._path())
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.hub.request("PUT", self._path(), body=lease)
        except ApiError as exc:
            log.info("leader election: release: %s", exc)

    async def try_once(self) -> bool:
        """One look: True if this candidate holds the Lease afterwards."""
        lease = await self._get()
        now = self.clock.monotonic()
        spec = (lease or {}).get("spec") or {}
        seen = (spec.get("holderIdentity"), spec.get("renewTime"))
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        step = next_step(lease, self.identity, now - self._seen_at, self.timing.lease_s)
        if step == "wait":
            return False
        body = self._record(lease, step)
        try:
            if step == "create":
                await self.hub.create(paths.lease(self.namespace), body)
            else:
                await self.hub.request("PUT", self._path(), body=body)
        except ApiError as exc:
            if exc.conflict:
                return False  # someone else wrote first: look again next time
            if exc.not_found and step == "create":
                raise ApiError(
                    exc.status,
                    exc.reason,
                    f"leader election needs namespace {self.namespace!r} on the hub "
                    f"(KAON_NAMESPACE), or run with --standalone: {exc}",
                ) from exc
            raise
        self.renewed_at = self.clock.monotonic()
        return True

    def _record(self, lease: Obj | None, step: Step) -> Obj:
        now = datetime.fromtimestamp(self.clock.wall(), UTC).strftime(MICROTIME)
        spec = dict((lease or {}).get("spec") or {})
        if step != "renew":
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self.timing.lease_s),
            renewTime=now,
        )
        meta: Obj = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _get(self) -> Obj | None:
        try:
            return await self.hub.get(self._path())
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def _path(self) -> str:
        return paths.lease(self.namespace, self.name)
