"""The manager: builds the engine (fleet, admission, clock) and one controller per kind, wires
the events between them, and runs their loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kaon.api.common import API_VERSION
from kaon.api.names import ObjectKey
from kaon.api.settings import Settings
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.informer import list_all
from kaon.controllers.computecluster import ComputeClusterController, pool_inventory
from kaon.controllers.inferenceservice import InferenceServiceController
from kaon.controllers.queue import QueueController
from kaon.controllers.trainingjob import TrainingJobController
from kaon.controllers.workers import WorkerOps
from kaon.engine import metrics
from kaon.engine.admission import Admission
from kaon.engine.clock import Clock, SystemClock
from kaon.engine.fleet import Fleet
from kaon.engine.heap import trim_loop

log = logging.getLogger(__name__)
LIST_RETRY_S = 2.0


class Manager:
    def __init__(
        self,
        hub: KubeClient,
        hub_kubeconfig: Mapping[str, Any],
        settings: Settings,
        clock: Clock | None = None,
        connect: Callable[..., KubeClient] = KubeClient,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.clock = clock or SystemClock()
        self.fleet = Fleet(
            hub,
            hub_kubeconfig,
            settings,
            on_job_pods=self._job_pods,
            on_capacity=self._capacity,
            on_service_pods=self._service_pods,
            connect=connect,
            on_health=self._health,
            monotonic=self.clock.monotonic,
        )
        self.admission = Admission(self.fleet)
        self.workers = WorkerOps(self.fleet, settings)
        self.queues = QueueController(hub)
        self.jobs = TrainingJobController(
            hub,
            self.fleet,
            self.admission,
            self.workers,
            settings,
            self.clock,
            self.queues,
            on_change=self._job_changed,
        )
        self.services = InferenceServiceController(
            hub,
            self.fleet,
            self.admission,
            settings,
            self.clock,
            self.jobs.facts,
            self.workers.ensure_namespace,
            self.queues,
        )
        self.clusters = ComputeClusterController(
            hub, self.fleet, self.clock, self.jobs.want_placement
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def _job_pods(self, key: ObjectKey) -> None:
        self.jobs.pods_changed(key)

    def _service_pods(self, key: ObjectKey) -> None:
        self.services.pods_changed(key)

    def _capacity(self, _cluster: str) -> None:
        self.jobs.want_placement()

    def _health(self, cluster: str) -> None:
        self.clusters.health_changed(cluster)
        self.jobs.member_health_changed(cluster)

    def _job_changed(self, key: ObjectKey) -> None:
        self.services.job_changed(key)

    def metrics_collector(self) -> metrics.StateCollector:
        return metrics.StateCollector(
            self.jobs.cache.items, self.services.cache.items, lambda: pool_inventory(self.fleet)
        )

    def start(self, trim_heap: bool = True) -> None:
        """Act: until now the controllers only took in hub events (a standby's warm caches)."""
        self.started = True
        self._tasks = [asyncio.create_task(self._act(trim_heap), name="start")]

    async def _act(self, trim_heap: bool) -> None:
        await self._list_what_admission_reads()
        self.jobs.queue.start()
        self.services.queue.start()
        loops = [
            ("members", self.clusters.activate()),
            ("placement", self.jobs.placement_loop()),
            ("services-resync", self.services.resync_loop()),
            ("cluster-status", self.clusters.publish_loop()),
            ("queue-status", self.queues.publish_loop()),
        ]
        if trim_heap:
            loops.append(("heap-trim", trim_loop()))
        self._tasks += [asyncio.create_task(loop, name=name) for name, loop in loops]

    async def _list_what_admission_reads(self) -> None:
        """ComputeClusters, Queues and Namespaces, listed before the first decision: a job
        judged before its cluster is known would fail NoMatchingCluster, one before its
        namespace's default queue is known would be admitted past its quota. kopf's watches
        deliver them too, but may list later than the first pass."""
        while True:
            try:
                clusters, queues, namespaces = await asyncio.gather(
                    self._items(paths.custom(API_VERSION, "computeclusters")),
                    self._items(paths.custom(API_VERSION, "queues")),
                    self._items(paths.namespaces()),
                )
            except ApiError as exc:
                log.warning("listing what admission reads: %s; trying again", exc)
                await asyncio.sleep(LIST_RETRY_S)
                continue
            self.clusters.listed(clusters)
            self.queues.listed(queues, namespaces)
            return

    async def _items(self, path: str) -> list[Obj]:
        """The objects of a collection; none where its CRD is not installed (a hub without
        queues, as kopf's watch of it waits for the CRD)."""
        try:
            items, _ = await list_all(self.hub, path, {})
        except ApiError as exc:
            if exc.not_found:
                return []
            raise
        return items

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.queue.stop()
        await self.services.queue.stop()
        await self.fleet.stop()
