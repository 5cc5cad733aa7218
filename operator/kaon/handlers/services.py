"""The InferenceService engine: resolve the model, place replicas, scale them, report status.

Hub events, member pod events (readiness, the servers' load reports) and a periodic resync
all end in `reconcile(key)`; the decisions are the pure functions of `placement.serving` and
`lifecycle.serving`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from pydantic import ValidationError

from kaon.api.common import now_rfc3339
from kaon.api.inferenceservice import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelSource,
    ResolvedModel,
)
from kaon.api.names import FINALIZER, LOAD_ANNOTATION, REVISION_LABEL
from kaon.api.settings import Settings
from kaon.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from kaon.builders.names import job_output_path
from kaon.builders.server import Revision, ServiceRef, deployment, service, service_url
from kaon.clusters.client import KubeClient, Obj
from kaon.clusters.member import JobKey, Member
from kaon.handlers import hubio, metrics
from kaon.handlers.fleet import Fleet, Reservation
from kaon.handlers.jobcache import JobCache, job_key
from kaon.handlers.serverops import ServerOps
from kaon.handlers.workqueue import WorkQueue
from kaon.lifecycle import serving
from kaon.placement import Placed, place_service, replica_demand

log = logging.getLogger(__name__)
PLURAL = "inferenceservices"
KIND = "InferenceService"
RESYNC_S = 3.0  # load reports, capacity and member health are looked at this often
FAILOVER_AFTER_S = 10.0  # a member unreachable this long loses its replicas to another
RETRY_S = 2.0

ModelProblem = tuple[str, str]  # (reason, message)


def _is_ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod["status"].get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class ServiceController:
    def __init__(
        self,
        hub: KubeClient,
        fleet: Fleet,
        settings: Settings,
        jobs: JobCache,
        reservations: Callable[[], list[Reservation]],
        ensure_namespace: Callable[[Member, str], Awaitable[None]],
    ) -> None:
        self.hub = hub
        self.fleet = fleet
        self.settings = settings
        self.jobs = jobs
        self.reservations = reservations
        self.ensure_namespace = ensure_namespace
        self.services = JobCache()
        self.ops = ServerOps(fleet)
        self.queue: WorkQueue[JobKey] = WorkQueue(
            self.reconcile, workers=8, on_error=metrics.reconcile_error("inferenceservice")
        )
        self._unready_since: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.queue.start()
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="services-resync"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()

    def service_event(self, kind: str, body: Obj) -> None:
        key = job_key(body)
        if kind == "DELETED":
            self.services.deleted(key)
            self.ops.forget(key)
            return
        self.services.observed(body)
        self.queue.add(key)

    def pods_changed(self, key: JobKey) -> None:
        if key in self.services:
            self.queue.add(key)

    def job_changed(self, key: JobKey) -> None:
        """A TrainingJob changed: services serving its artifact look again."""
        for skey, body in self.services.items():
            if skey[0] != key[0]:
                continue
            spec = body.get("spec") or {}
            sources = [spec.get("model") or {}, (spec.get("canary") or {}).get("model") or {}]
            if any((s.get("trainingJobRef") or {}).get("name") == key[1] for s in sources):
                self.queue.add(skey)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            for key, _ in self.services.items():
                self.queue.add(key)

    # --- reconcile one service ----------------------------------------------------------------

    async def reconcile(self, key: JobKey) -> float | None:
        body = self.services.get(key)
        if body is None:
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._finalize(key, body)
        if FINALIZER not in (meta.get("finalizers") or []):
            body = self._saved(
                await hubio.set_finalizers(
                    self.hub, PLURAL, body, [*(meta.get("finalizers") or []), FINALIZER]
                )
            )
            if body is None:
                return None
        gen = int(meta.get("generation", 0))
        status = InferenceServiceStatus.model_validate(body.get("status") or {})
        try:
            spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = f"spec does not match the InferenceService schema: {exc.errors()[0]['msg']}"
            new = serving.not_serving(status, "InvalidSpec", message, gen, now_rfc3339(), True)
            await self._write(body, status, new)
            return None
        model = self._resolve(key[0], spec.model)
        if isinstance(model, tuple):
            if status.model is None:
                await self._remove_everywhere_but(key, set())
                new = serving.not_serving(status, *model, gen, now_rfc3339())
                await self._write(body, status, new)
                return None
            model = status.model  # keep serving what was resolved before
        return await self._serve(key, body, spec, status, model, gen)

    async def _serve(
        self,
        key: JobKey,
        body: Obj,
        spec: InferenceServiceSpec,
        status: InferenceServiceStatus,
        model: ResolvedModel,
        gen: int,
    ) -> float | None:
        now = now_rfc3339()
        current = [
            Placed(c.cluster, c.pool, c.accelerator or None, c.gpus_per_replica)
            for c in status.clusters
        ]
        home = self._home_cluster(key[0], spec.model)
        if home and not current:
            current = self._first_slot(key, spec, home)
        lost = self._lost({s.cluster for s in current})
        plan = place_service(
            replica_demand(f"{key[0]}/{key[1]}", spec),
            spec.placement.clusters,
            self.fleet.offers(self.reservations()),
            current,
            lost,
        )
        await self._remove_everywhere_but(key, {s.cluster for s in plan.slots})
        if not plan.slots:
            assert plan.shortfall is not None
            new = serving.not_serving(
                status, plan.shortfall.reason, plan.shortfall.message, gen, now
            )
            await self._write(body, status, new)
            return None
        if plan.shortfall is not None:
            metrics.placement("inferenceservice", plan.shortfall)
        if {s.cluster for s in plan.slots} != {c.cluster for c in status.clusters}:
            for placed in plan.slots:
                metrics.placement("inferenceservice", placed)
            where = ", ".join(f"{s.cluster}/{s.pool}" for s in plan.slots)
            moved_from = sorted(lost & {c.cluster for c in status.clusters})
            if moved_from:
                message = (
                    f"cluster {', '.join(moved_from)} unreachable for {FAILOVER_AFTER_S:.0f}s: "
                    f"replicas now in {where}"
                )
                await self._event(body, "Warning", "FailedOver", message)
            else:
                await self._event(body, "Normal", "Placed", f"replicas in {where}")
        desired, scaled_at = self._desired(key, spec, status, plan.slots, now)
        if desired != (status.desired_replicas or spec.replicas.min):
            verb = "ScaledUp" if desired > status.desired_replicas else "ScaledDown"
            await self._event(
                body, "Normal", verb, f"{status.desired_replicas} -> {desired} replicas"
            )
        canary_model, canary_percent = self._canary(key[0], spec)
        ref = ServiceRef(key[0], key[1], body["metadata"]["uid"])
        views = []
        shares = serving.split_over(desired, len(plan.slots))
        for placed, replicas in zip(plan.slots, shares, strict=True):
            slot = serving.Slot(
                placed.cluster, placed.pool, placed.accelerator, placed.gpus_per_worker
            )
            stable_n, canary_n = serving.canary_split(replicas, canary_percent or 0)
            views.append(
                await self._apply_cluster(ref, spec, model, canary_model, slot, stable_n, canary_n)
            )
        short = plan.shortfall
        shortfall = (short.reason, short.message) if short else None
        new = serving.serving(
            status, gen, now, model, views, shortfall, desired, scaled_at, canary_percent
        )
        await self._write(body, status, new)
        return None

    async def _apply_cluster(
        self,
        ref: ServiceRef,
        spec: InferenceServiceSpec,
        model: ResolvedModel,
        canary_model: ResolvedModel | None,
        slot: serving.Slot,
        stable_n: int,
        canary_n: int,
    ) -> serving.ClusterView:
        key = (ref.namespace, ref.name)
        member = self.fleet.member(slot.cluster)
        pool = self.fleet.pool(slot.cluster, slot.pool)
        url = service_url(ref)
        if member is None or pool is None or not member.ready:
            return serving.ClusterView(slot, url, stable_n, canary_n, 0, 0)
        await self.ensure_namespace(member, ref.namespace)
        await self.ops.apply(member, key, service(ref))
        revisions: list[tuple[Revision, ResolvedModel | None, int]] = [
            ("stable", model, stable_n),
            ("canary", canary_model, canary_n),
        ]
        for revision, source, n in revisions:
            if source is None:
                gone = deployment(ref, revision, spec, model, pool, 0, 0, self.settings)
                if revision in self._revisions_present(member, key) or self.ops.has(
                    member, key, gone
                ):
                    await self.ops.delete(member, key, gone)
                continue
            obj = deployment(
                ref, revision, spec, source, pool, slot.gpus_per_replica, n, self.settings
            )
            await self.ops.apply(member, key, obj)
        ready = {"stable": 0, "canary": 0}
        for pod in member.replicas_of(key).values():
            if _is_ready(pod):
                revision = pod["metadata"]["labels"].get(REVISION_LABEL, "stable")
                ready[revision] = ready.get(revision, 0) + 1
        return serving.ClusterView(
            slot, url, stable_n, canary_n, ready["stable"], ready["canary"] if canary_n else 0
        )

    @staticmethod
    def _revisions_present(member: Member, key: JobKey) -> set[str]:
        return {
            p["metadata"]["labels"].get(REVISION_LABEL, "")
            for p in member.replicas_of(key).values()
        }

    # --- model, placement, scale ------------------------------------------------------------

    def _job(self, namespace: str, name: str) -> tuple[TrainingJobSpec, TrainingJobStatus] | None:
        body = self.jobs.get((namespace, name))
        if body is None:
            return None
        try:
            spec = TrainingJobSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None
        return spec, TrainingJobStatus.model_validate(body.get("status") or {})

    def _resolve(self, namespace: str, source: ModelSource) -> ResolvedModel | ModelProblem:
        if source.uri:
            uri_claim, _, path = source.uri.removeprefix("pvc://").partition("/")
            return ResolvedModel(claim=uri_claim, path=path.strip("/"))
        assert source.training_job_ref is not None
        name = source.training_job_ref.name
        job = self._job(namespace, name)
        if job is None:
            return "ModelNotFound", f"TrainingJob {name} does not exist (or is not valid)"
        spec, status = job
        claim = spec.checkpoint.claim_name
        if not claim:
            return "ModelNotServable", (
                f"TrainingJob {name} keeps its artifact on the node (no "
                "spec.checkpoint.claimName), so no server can mount it"
            )
        if status.state != "Succeeded":
            percent = f", {status.progress.percent}%" if status.progress else ""
            return "ModelNotReady", f"TrainingJob {name} is {status.state}{percent}"
        return ResolvedModel(claim=claim, path=job_output_path(name))

    def _home_cluster(self, namespace: str, source: ModelSource) -> str | None:
        """The cluster whose claim holds a TrainingJob's artifact: the first to serve it."""
        if source.training_job_ref is None:
            return None
        job = self._job(namespace, source.training_job_ref.name)
        placement = job[1].placement if job else None
        return placement.cluster if placement else None

    def _first_slot(self, key: JobKey, spec: InferenceServiceSpec, home: str) -> list[Placed]:
        offers = [o for o in self.fleet.offers(self.reservations()) if o.cluster == home]
        plan = place_service(replica_demand(f"{key[0]}/{key[1]}", spec), 1, offers, [])
        return list(plan.slots)

    def _canary(
        self, namespace: str, spec: InferenceServiceSpec
    ) -> tuple[ResolvedModel | None, int | None]:
        if spec.canary is None:
            return None, None
        model = self._resolve(namespace, spec.canary.model)
        if isinstance(model, tuple):
            return None, 0  # reported as a 0% share until its model is ready
        return model, spec.canary.traffic_percent

    def _lost(self, clusters: Iterable[str]) -> set[str]:
        now = time.monotonic()
        lost = set()
        for cluster in clusters:
            member = self.fleet.member(cluster)
            if member is not None and member.ready:
                self._unready_since.pop(cluster, None)
                continue
            since = self._unready_since.setdefault(cluster, now)
            if now - since >= FAILOVER_AFTER_S:
                lost.add(cluster)
        return lost

    def _desired(
        self,
        key: JobKey,
        spec: InferenceServiceSpec,
        status: InferenceServiceStatus,
        slots: Iterable[Placed],
        now: str,
    ) -> tuple[int, str | None]:
        wall = time.time()
        loads = []
        for slot in slots:
            member = self.fleet.member(slot.cluster)
            for pod in (member.replicas_of(key) if member else {}).values():
                raw = (pod["metadata"].get("annotations") or {}).get(LOAD_ANNOTATION)
                load = serving.parse_load(raw, wall)
                if load is not None and not pod["metadata"].get("deletionTimestamp"):
                    loads.append(load)
        recommended = serving.recommend(loads, spec.autoscaling.target_concurrency, spec.replicas)
        desired = serving.next_desired(
            status.desired_replicas,
            recommended,
            spec.replicas,
            metrics.seconds_since(status.last_scale_time),
            spec.autoscaling.scale_down_delay_seconds,
        )
        changed = desired != status.desired_replicas
        return desired, now if changed else status.last_scale_time

    # --- clean-up -----------------------------------------------------------------------------

    async def _remove_everywhere_but(self, key: JobKey, keep: set[str]) -> None:
        """Remove the service from clusters it no longer runs in (after failover or a change)."""
        stale = set(self.ops.applied_in(key))
        for name, reg in self.fleet.clusters.items():
            if reg.member is not None and reg.member.replicas_of(key):
                stale.add(name)
        # Two ComputeClusters may register one API server (other pools of it): never clean up
        # a server that still runs the service under another name.
        kept = {m.client.server for m in map(self.fleet.member, keep) if m is not None}
        for cluster in stale - keep:
            member = self.fleet.member(cluster)
            if member is not None and member.client.server in kept:
                continue
            if not await self.ops.remove_all(key, cluster):
                log.info("service %s/%s: clean-up in %s retried", *key, cluster)

    async def _finalize(self, key: JobKey, body: Obj) -> float | None:
        finalizers = body["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            return None
        for cluster in list(self.fleet.clusters):
            if not await self.ops.remove_all(key, cluster):
                log.info("service %s/%s: cluster %s unreachable, clean-up retried", *key, cluster)
                return RETRY_S
        self.ops.forget(key)
        self._saved(
            await hubio.set_finalizers(
                self.hub, PLURAL, body, [f for f in finalizers if f != FINALIZER]
            )
        )
        return None

    # --- hub writes -------------------------------------------------------------------------

    def _saved(self, updated: Obj) -> Obj | None:
        return self.services.written(updated)

    async def _write(
        self, body: Obj, old: InferenceServiceStatus, new: InferenceServiceStatus
    ) -> None:
        if new == old:
            return
        dumped = new.model_dump(mode="json", by_alias=True)
        self._saved(await hubio.patch_status(self.hub, PLURAL, body, dumped))

    async def _event(self, body: Obj, type_: str, reason: str, message: str) -> None:
        await hubio.post_event(self.hub, KIND, body, type_, reason, message)
