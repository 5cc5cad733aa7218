"""One member cluster: its client, its live inventory and the kaon worker pods on it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kaon.api.names import (
    HEARTBEAT_LEASE,
    HEARTBEAT_LEASE_NAMESPACE,
    ISVC_LABEL,
    JOB_LABEL,
    MANAGED_BY,
    MANAGER,
    MAX_REPORT_BYTES,
    REPORT_ANNOTATIONS,
    ObjectKey,
)
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.informer import run_informer
from kaon.clusters.inventory import ClusterInventory

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 2.0  # so a member that stops answering is not ready within ~3 s


def slim_pod(pod: Obj) -> Obj:
    """Only the fields of a kaon pod the operator reads: small at thousands of pods."""
    meta, status = pod["metadata"], pod.get("status") or {}
    slim_meta = {
        k: meta[k] for k in ("name", "namespace", "labels", "deletionTimestamp") if k in meta
    }
    annotations = meta.get("annotations") or {}
    reports = {
        k: annotations[k][:MAX_REPORT_BYTES] for k in REPORT_ANNOTATIONS if annotations.get(k)
    }
    if reports:
        slim_meta["annotations"] = reports
    return {
        "metadata": slim_meta,
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase", "Pending"),
            "podIP": status.get("podIP", ""),  # a ready replica's address, for the router
            "reason": status.get("reason", ""),
            "message": status.get("message", ""),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
            "containerStatuses": [
                {"state": {"terminated": cs["state"]["terminated"]}}
                for cs in status.get("containerStatuses") or []
                if (cs.get("state") or {}).get("terminated")
            ],
        },
    }


@dataclass
class Health:
    reachable: bool = False
    reason: str = "Connecting"
    message: str = "no answer from the API server yet"
    version: str = ""
    last_answer: float | None = None  # monotonic: the heartbeat's last answer
    unready_since: float | None = None  # monotonic: since when the member has not been ready


def lease_heartbeat(holder: str, duration_s: int, now: datetime) -> Obj:
    """The hub's heartbeat Lease in a member (renewTime is a MicroTime)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": HEARTBEAT_LEASE, "namespace": HEARTBEAT_LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


@dataclass
class Member:
    """Watches nodes and pods of a member; tells its owner when a job's pods or capacity change."""

    name: str
    client: KubeClient
    on_job_pods: Callable[[ObjectKey], None] = lambda key: None
    on_service_pods: Callable[[ObjectKey], None] = lambda key: None
    on_capacity: Callable[[str], None] = lambda name: None
    on_health: Callable[[str], None] = lambda name: None
    inventory: ClusterInventory = field(default_factory=ClusterInventory)
    job_pods: dict[ObjectKey, dict[str, Obj]] = field(default_factory=dict)
    service_pods: dict[ObjectKey, dict[str, Obj]] = field(default_factory=dict)
    health: Health = field(default_factory=Health)
    # Its own connection: a heartbeat queued behind a burst of pod writes would time out.
    heartbeat_client: KubeClient | None = None
    holder: str = "kaon"
    monotonic: Callable[[], float] = time.monotonic
    swept: bool = False  # pods of fenced-off attempts removed since the member came back
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _synced: set[str] = field(default_factory=set)
    _was_ready: bool = False

    def start(self) -> None:
        self.health.unready_since = self.monotonic()
        self._tasks = [
            asyncio.create_task(self._watch_nodes(), name=f"{self.name}-nodes"),
            asyncio.create_task(self._watch_pods(), name=f"{self.name}-pods"),
            asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        if self.heartbeat_client not in (None, self.client):
            await self.heartbeat_client.close()

    @property
    def ready(self) -> bool:
        """Reachable, and both views listed since the last failure."""
        return self.health.reachable and self._synced >= {"nodes", "pods"}

    def unready_for(self) -> float:
        """Seconds since the member was last ready (0 when ready)."""
        since = self.health.unready_since
        return 0.0 if self.ready or since is None else max(self.monotonic() - since, 0.0)

    def _ready_changed(self) -> None:
        ready = self.ready
        if ready == self._was_ready:
            return
        self._was_ready = ready
        if ready:
            self.health.unready_since = None
        else:  # counted from the last answer: the member stopped answering then, not now
            self.health.unready_since = self.health.last_answer or self.monotonic()
            self.swept = False
        self.on_health(self.name)

    def pods_of(self, key: ObjectKey) -> dict[str, Obj]:
        return self.job_pods.get(key, {})

    def replicas_of(self, key: ObjectKey) -> dict[str, Obj]:
        """The server pods of an InferenceService (namespace, name) in this member."""
        return self.service_pods.get(key, {})

    async def _watch_nodes(self) -> None:
        def reset(items: list[Obj]) -> None:
            self.inventory.nodes.clear()
            for n in items:
                self.inventory.apply_node("ADDED", n)
            self._synced.add("nodes")
            self._ready_changed()
            self.on_capacity(self.name)

        def event(kind: str, obj: Obj) -> None:
            self.inventory.apply_node(kind, obj)
            self.on_capacity(self.name)

        await run_informer(self.client, paths.nodes(), reset, event, self._health_changed("nodes"))

    async def _watch_pods(self) -> None:
        def reset(items: list[Obj]) -> None:
            touched = set(self.job_pods)
            served = set(self.service_pods)
            self.inventory.pods.clear()
            self.inventory.used.clear()
            self.job_pods.clear()
            self.service_pods.clear()
            for p in items:
                self._apply_pod("ADDED", p)
            self._synced.add("pods")
            self._ready_changed()
            for key in touched | set(self.job_pods):
                self.on_job_pods(key)
            for key in served | set(self.service_pods):
                self.on_service_pods(key)
            self.on_capacity(self.name)

        def event(kind: str, obj: Obj) -> None:
            job, service = self._apply_pod(kind, obj)
            if job:
                self.on_job_pods(job)
            if service:
                self.on_service_pods(service)
            self.on_capacity(self.name)

        await run_informer(self.client, paths.pods(), reset, event, self._health_changed("pods"))

    def _apply_pod(self, kind: str, obj: Obj) -> tuple[ObjectKey | None, ObjectKey | None]:
        """Account the pod; the job (if a worker) or the service (if a server) it belongs to."""
        self.inventory.apply_pod(kind, obj)
        job = self._group(self.job_pods, JOB_LABEL, kind, obj)
        service = None if job else self._group(self.service_pods, ISVC_LABEL, kind, obj)
        return job, service

    @staticmethod
    def _group(
        groups: dict[ObjectKey, dict[str, Obj]], label: str, kind: str, obj: Obj
    ) -> ObjectKey | None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGER or label not in labels:
            return None
        key = (meta["namespace"], labels[label])
        pods = groups.setdefault(key, {})
        if kind == "DELETED":
            pods.pop(meta["name"], None)
            if not pods:
                del groups[key]
        else:
            pods[meta["name"]] = slim_pod(obj)
        return key

    def _health_changed(self, view: str | None) -> Callable[[ApiError | None], None]:
        def update(error: ApiError | None) -> None:
            before = (self.health.reachable, self.health.reason)
            if error is None:
                self.health.reachable = True
                self.health.reason, self.health.message = "Reachable", "the API server answers"
            else:
                if view is not None:
                    self._synced.discard(view)
                self.health.reachable = False
                self.health.reason = "BadCredentials" if error.unauthorized else "Unreachable"
                self.health.message = str(error)[:500]
            if (self.health.reachable, self.health.reason) != before:
                log.info("member %s: %s", self.name, self.health.reason)
                self._ready_changed()
                self.on_health(self.name)

        return update

    async def _heartbeat(self) -> None:
        """Renew the hub's Lease in the member every second. Any answer in time proves the
        API server works (a member role without Lease rights answers 403: still an answer)."""
        client = self.heartbeat_client or self.client
        report = self._health_changed(None)
        path = paths.lease(HEARTBEAT_LEASE_NAMESPACE, HEARTBEAT_LEASE)
        duration = int(HEARTBEAT_TIMEOUT_S + HEARTBEAT_INTERVAL_S) + 1
        while True:
            lease = lease_heartbeat(self.holder, duration, datetime.now(UTC))
            try:
                try:
                    await client.request(
                        "PUT", path, body=lease, timeout_s=HEARTBEAT_TIMEOUT_S, answer=False
                    )
                except ApiError as exc:
                    if not exc.not_found:
                        raise
                    await client.request(
                        "POST",
                        paths.lease(HEARTBEAT_LEASE_NAMESPACE),
                        body=lease,
                        timeout_s=HEARTBEAT_TIMEOUT_S,
                        answer=False,
                    )
                answered: ApiError | None = None
            except ApiError as exc:
                answered = None if exc.status else exc  # an HTTP answer is an answer
                if exc.unauthorized and exc.status == 401:
                    answered = exc
            if answered is None:
                self.health.last_answer = self.monotonic()
                if self.health.reason != "BadCredentials":
                    report(None)
            else:
                report(answered)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def probe_version(self) -> None:
        try:
            self.health.version = await self.client.version()
        except ApiError as exc:
            log.debug("member %s version: %s", self.name, exc)
