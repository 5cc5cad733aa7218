"""The InferenceService controller: resolve the model, place replicas, scale them, report status.

Hub events, member pod events (readiness, the servers' load reports) and a periodic resync
all end in `reconcile(key)`; the decisions are the pure functions of `placement`,
`lifecycle.serving` and `lifecycle.models`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from pydantic import ValidationError

from kaon.api.inferenceservice import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelSource,
    ResolvedModel,
)
from kaon.api.names import (
    FINALIZER,
    LOAD_ANNOTATION,
    REVISION_LABEL,
    ROUTER_PATH_PREFIX,
    WANTED_ANNOTATION,
    ObjectKey,
    key_of,
)
from kaon.api.settings import Settings
from kaon.builders.server import (
    SERVER_PORT,
    TLS_SECRET_KEYS,
    Revision,
    ServiceRef,
    auth_tokens_secret,
    deployment,
    model_secret,
    request_log_secret,
    service,
    service_url,
    tls_secret,
)
from kaon.clusters.client import KubeClient, Obj
from kaon.clusters.member import Member
from kaon.controllers.base import Reconciler
from kaon.controllers.queue import QueueController, Use
from kaon.controllers.serverops import Applied, ServerOps
from kaon.engine import metrics
from kaon.engine.admission import Admission
from kaon.engine.cache import Memory
from kaon.engine.clock import Clock, age, seconds_since
from kaon.engine.fleet import Fleet
from kaon.engine.workqueue import WorkQueue
from kaon.lifecycle import serving
from kaon.lifecycle.conditions import find_condition, with_condition
from kaon.lifecycle.models import JobFacts, ModelProblem, resolve_model
from kaon.placement import (
    GangDemand,
    HealthHistory,
    Placed,
    Reservation,
    Waiting,
    place_service,
    replica_demand,
)
from kaon.placement.demand import held_by_replicas
from kaon.placement.quota import Consumption
from kaon.placement.serving import QuotaFit, replicas_within_quota

log = logging.getLogger(__name__)
PLURAL = "inferenceservices"
KIND = "InferenceService"
RESYNC_S = 3.0  # load reports, capacity and member health are looked at this often
RETRY_S = 2.0
STORE_SECRET_INVALID = "StoreSecretInvalid"
SECRET_INVALID = "SecretInvalid"  # spec.tls's certificate or spec.auth's tokens


@dataclass(slots=True)
class ServiceMemory:
    """What the operator remembers of one service between reconciles."""

    applied: Applied = field(default_factory=dict)
    # Replicas decided per (cluster, pool, GPUs per replica): held by admission until bound.
    wanted: dict[tuple[str, str, int], int] = field(default_factory=dict)
    spec: InferenceServiceSpec | None = None
    store_problem: str = ""  # the last Secret copy problem reported in an Event
    queue: str | None = None  # the queue its replicas count against
    used: tuple[Consumption, ...] = ()  # what they take from it, per cluster
    waits: str = ""  # why no replica is allowed by the queue, if so
    busy_at: float | None = None  # wall: a replica last reported a request (or we began)


def _name_of(obj: Obj) -> str:
    name: str = obj["metadata"]["name"]
    return name


def _secret_field(spec: InferenceServiceSpec, revision: Revision) -> str:
    """The field that names the store Secret a revision's model is read with."""
    if revision == "canary" and spec.canary is not None:
        source, field = spec.canary.model, "spec.canary.model"
    else:
        source, field = spec.model, "spec.model"
    if source.training_job_ref is not None:
        return f"spec.checkpoint.secretRef of TrainingJob {source.training_job_ref.name}"
    return f"{field}.secretRef"


def _is_ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod["status"].get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class InferenceServiceController(Reconciler):
    def __init__(
        self,
        hub: KubeClient,
        fleet: Fleet,
        admission: Admission,
        settings: Settings,
        clock: Clock,
        job_facts: Callable[[str, str], JobFacts | None],
        ensure_namespace: Callable[[Member, str], Awaitable[None]],
        queues: QueueController,
    ) -> None:
        super().__init__(hub, PLURAL, KIND, clock)
        self.fleet = fleet
        self.queues = queues
        self.admission = admission
        self.settings = settings
        self.job_facts = job_facts
        self.ensure_namespace = ensure_namespace
        self.ops = ServerOps(fleet)
        self.memory: Memory[ServiceMemory] = Memory(ServiceMemory)
        self.health = HealthHistory()
        self.queue: WorkQueue[ObjectKey] = WorkQueue(
            self.reconcile, workers=8, on_error=metrics.reconcile_error("inferenceservice")
        )
        admission.register(KIND, self.reservations)
        queues.register(self.queue_uses)

    # --- events -------------------------------------------------------------------------------

    def object_event(self, kind: str, body: Obj) -> None:
        key = key_of(body)
        if kind == "DELETED":
            self.cache.deleted(key)
            self.memory.forget(key)
            return
        self.cache.observed(body)
        self.queue.add(key)

    def job_changed(self, key: ObjectKey) -> None:
        """A TrainingJob changed: services serving its artifact look again."""
        for skey, body in self.cache.items():
            if skey[0] != key[0]:
                continue
            spec = body.get("spec") or {}
            sources = [spec.get("model") or {}, (spec.get("canary") or {}).get("model") or {}]
            if any((s.get("trainingJobRef") or {}).get("name") == key[1] for s in sources):
                self.queue.add(skey)

    async def resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            for key, _ in self.cache.items():
                self.queue.add(key)

    def reservations(self) -> Iterator[tuple[ObjectKey, Reservation]]:
        """Each service's decided replicas per cluster beyond those bound to nodes."""
        for key, _ in self.cache.items():
            memory = self.memory.peek(key)
            if memory is None or memory.spec is None:
                continue
            for (cluster, pool, gpus), wanted in memory.wanted.items():
                member = self.fleet.member(cluster)
                bound = sum(
                    1
                    for p in (member.replicas_of(key) if member else {}).values()
                    if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
                )
                held = held_by_replicas(memory.spec, cluster, pool, gpus, wanted, bound)
                if held is not None:
                    yield key, held

    def queue_uses(self) -> Iterator[Use]:
        """Each service of a queue: what its replicas take from it, or that none is allowed."""
        for key, body in self.cache.items():
            memory = self.memory.peek(key)
            if memory is None or memory.queue is None or body["metadata"].get("deletionTimestamp"):
                continue
            owner = (KIND, *key)
            if memory.used:
                yield Use(memory.queue, memory.used[0], more=memory.used[1:], owner=owner)
            elif memory.waits:
                yield Use(memory.queue, None, memory.waits, owner=owner)

    # --- reconcile one service ----------------------------------------------------------------

    async def reconcile(self, key: ObjectKey) -> float | None:
        body = self.cache.get(key)
        if body is None:
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._finalize(key, body)
        saved = await self.add_finalizer(body)
        if saved is None:
            return None
        body = saved
        gen = int(meta.get("generation", 0))
        status = InferenceServiceStatus.model_validate(body.get("status") or {})
        try:
            spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = f"spec does not match the InferenceService schema: {exc.errors()[0]['msg']}"
            new = serving.not_serving(status, "InvalidSpec", message, gen, self.now(), True)
            await self.write_status(body, new, status)
            return None
        model = self._resolve(key[0], spec.model)
        if isinstance(model, tuple):
            if status.model is None:
                await self._remove_everywhere_but(key, set())
                self.memory.of(key).wanted = {}
                new = serving.not_serving(status, *model, gen, self.now())
                await self.write_status(body, new, status)
                return None
            model = status.model  # keep serving what was resolved before
        return await self._serve(key, body, spec, status, model, gen)

    async def _serve(
        self,
        key: ObjectKey,
        body: Obj,
        spec: InferenceServiceSpec,
        status: InferenceServiceStatus,
        model: ResolvedModel,
        gen: int,
    ) -> float | None:
        now = self.now()
        memory = self.memory.of(key)
        current = [
            Placed(c.cluster, c.pool, c.accelerator or None, c.gpus_per_replica)
            for c in status.clusters
        ]
        home = self._home_cluster(key[0], spec.model)
        if home and not current:
            current = self._first_slot(key, spec, home)
        lost = self._lost({s.cluster for s in current})
        queue, problem = self.queues.resolve(key[0], spec.queue)
        if problem is not None and not status.clusters:
            return await self._not_serving(body, status, memory, problem.reason, problem.message)
        memory.queue = queue
        demand = replace(replica_demand(f"{key[0]}/{key[1]}", spec), queue=queue)
        plan = self.admission.admit_replicas(
            KIND, key, demand, spec.placement.clusters, current, lost
        )
        if not plan.slots:
            assert plan.shortfall is not None
            await self._remove_everywhere_but(key, set())
            reason, message = plan.shortfall.reason, plan.shortfall.message
            return await self._not_serving(body, status, memory, reason, message)
        desired, scaled_at = self._desired(
            spec, status, reports := self._reports(key, plan.slots), now, body, memory
        )
        slots, allowed, short = list(plan.slots), desired, plan.shortfall
        memory.used = ()
        if queue is not None and desired > 0:
            fit = self._within_quota(key, demand, slots, desired)
            if fit.replicas == 0:
                return await self._no_quota(key, body, status, memory, fit)
            slots, allowed, memory.used = slots[: fit.clusters], fit.replicas, fit.used
            if fit.problem is not None and short is None:
                message = f"{allowed} of {desired} replicas: {fit.problem.message}"
                short = Waiting(fit.problem.reason, message)
        memory.waits = ""
        await self._remove_everywhere_but(key, {s.cluster for s in slots})
        if short is not None:
            metrics.placement("inferenceservice", short)
        if {s.cluster for s in slots} != {c.cluster for c in status.clusters}:
            await self._say_where(body, status, slots, lost)
        if desired != (status.desired_replicas or spec.replicas.min):
            verb = "ScaledUp" if desired > status.desired_replicas else "ScaledDown"
            await self.event(
                body, "Normal", verb, f"{status.desired_replicas} -> {desired} replicas"
            )
        canary_model, canary_percent = self._canary(key[0], spec)
        ref = ServiceRef(key[0], key[1], body["metadata"]["uid"])
        memory.spec = spec
        splits = self._splits(memory, slots, allowed, canary_percent or 0)
        problems: list[tuple[str, str]] = []  # (reason, message)
        views = [
            await self._apply_cluster(memory, ref, spec, model, canary_model, problems, *split)
            for split in splits
        ]
        shortfall = (short.reason, short.message) if short else None
        new = serving.with_drift(
            serving.serving(
                status,
                gen,
                now,
                model,
                views,
                shortfall,
                desired,
                scaled_at,
                canary_percent,
                self._address(key),
                spec.replicas.min == 0,
            ).model_copy(update={"queue": queue}),
            reports,
            spec.monitoring.drift_threshold,
            gen,
            now,
        )
        new = await self._store_problems(body, memory, new, problems, gen, now)
        await self.write_status(body, new, status)
        return None

    @staticmethod
    def _splits(
        memory: ServiceMemory, slots: list[Placed], replicas: int, canary_percent: int
    ) -> list[tuple[serving.Slot, int, int]]:
        """(slot, stable, canary) replicas per cluster; remembered as wanted, for admission."""
        memory.wanted = {}
        splits = []
        for placed, n in zip(slots, serving.split_over(replicas, len(slots)), strict=True):
            slot = serving.Slot(
                placed.cluster, placed.pool, placed.accelerator, placed.gpus_per_worker
            )
            stable_n, canary_n = serving.canary_split(n, canary_percent)
            memory.wanted[(slot.cluster, slot.pool, slot.gpus_per_replica)] = stable_n + canary_n
            splits.append((slot, stable_n, canary_n))
        return splits

    async def _say_where(
        self, body: Obj, status: InferenceServiceStatus, slots: list[Placed], lost: set[str]
    ) -> None:
        """The clusters changed: a Placed Event, or FailedOver naming the lost ones."""
        for placed in slots:
            metrics.placement("inferenceservice", placed)
        where = ", ".join(f"{s.cluster}/{s.pool}" for s in slots)
        moved_from = sorted(lost & {c.cluster for c in status.clusters})
        if moved_from:
            grace = self.settings.failover_grace_s
            message = (
                f"cluster {', '.join(moved_from)} unreachable for {grace:.0f}s: "
                f"replicas now in {where}"
            )
            await self.event(body, "Warning", "FailedOver", message)
        else:
            await self.event(body, "Normal", "Placed", f"replicas in {where}")

    async def _no_quota(
        self,
        key: ObjectKey,
        body: Obj,
        status: InferenceServiceStatus,
        memory: ServiceMemory,
        fit: QuotaFit,
    ) -> float | None:
        """Its queue allows no replica now: none runs, and the service waits in the queue."""
        assert fit.problem is not None
        await self._remove_everywhere_but(key, set())
        memory.waits = fit.problem.reason
        message = f"no replica fits: {fit.problem.message}"
        return await self._not_serving(body, status, memory, fit.problem.reason, message)

    async def _not_serving(
        self,
        body: Obj,
        status: InferenceServiceStatus,
        memory: ServiceMemory,
        reason: str,
        message: str,
    ) -> float | None:
        memory.wanted, memory.used = {}, ()
        gen = int(body["metadata"].get("generation", 0))
        new = serving.not_serving(status, reason, message, gen, self.now())
        await self.write_status(body, new.model_copy(update={"queue": memory.queue}), status)
        return None

    def _within_quota(
        self, key: ObjectKey, demand: GangDemand, slots: list[Placed], wanted: int
    ) -> QuotaFit:
        """How many replicas the service's queue allows, beside what everything else uses."""
        offers = {(o.cluster, o.pool): o for o in self.admission.offers((KIND, key))}
        return replicas_within_quota(
            demand,
            [offers.get((s.cluster, s.pool)) for s in slots],
            wanted,
            self.queues.book((KIND, *key)),
            serving.split_over,
        )

    async def _store_problems(
        self,
        body: Obj,
        memory: ServiceMemory,
        new: InferenceServiceStatus,
        problems: list[tuple[str, str]],
        gen: int,
        now: str,
    ) -> InferenceServiceStatus:
        """A Secret that could not be copied (a store's, the certificate, the tokens) keeps its
        revision's Deployment from being written: said once in an Event, and in Ready unless
        replicas are ready anyway. The first problem's reason is the condition's."""
        message = "; ".join(dict.fromkeys(m for _, m in problems))
        reason = problems[0][0] if problems else STORE_SECRET_INVALID
        if message and message != memory.store_problem:
            await self.event(body, "Warning", reason, message)
        memory.store_problem = message
        ready = find_condition(new.conditions, "Ready")
        if not message or (ready is not None and ready.status == "True"):
            return new
        return with_condition(new, "Ready", False, reason, message, gen, now)

    async def _apply_cluster(
        self,
        memory: ServiceMemory,
        ref: ServiceRef,
        spec: InferenceServiceSpec,
        model: ResolvedModel,
        canary_model: ResolvedModel | None,
        problems: list[tuple[str, str]],
        slot: serving.Slot,
        stable_n: int,
        canary_n: int,
    ) -> serving.ClusterView:
        key = (ref.namespace, ref.name)
        member = self.fleet.member(slot.cluster)
        pool = self.fleet.pool(slot.cluster, slot.pool)
        url = service_url(ref, spec)
        if member is None or pool is None or not member.ready:
            return serving.ClusterView(slot, url, stable_n, canary_n, 0, 0)
        await self.ensure_namespace(member, ref.namespace)
        await self.ops.apply(member, memory.applied, service(ref))
        insecure = await self._secure(member, memory, ref, spec)
        if insecure:
            problems.append((SECRET_INVALID, f"cluster {member.name}: {insecure}"))
        revisions: list[tuple[Revision, ResolvedModel | None, int]] = [
            ("stable", model, stable_n),
            ("canary", canary_model, canary_n),
        ]
        for revision, source, n in revisions:
            copy = model_secret(ref, revision, {})
            if not (source and source.uri) and self.ops.has(member, memory.applied, copy):
                await self.ops.delete(member, memory.applied, copy)
            log_copy = request_log_secret(ref, revision, {})
            logs = source is not None and spec.request_logging is not None
            if not logs and self.ops.has(member, memory.applied, log_copy):
                await self.ops.delete(member, memory.applied, log_copy)
            if source is None:
                gone = deployment(ref, revision, spec, model, pool, 0, 0, self.settings)
                present = revision in self._revisions_present(member, key)
                if present or self.ops.has(member, memory.applied, gone):
                    await self.ops.delete(member, memory.applied, gone)
                continue
            obj = deployment(
                ref, revision, spec, source, pool, slot.gpus_per_replica, n, self.settings
            )
            if insecure:
                continue  # no replica without its certificate or tokens; running ones stay
            if source.secret_ref is not None:
                problem = await self.ops.copy_secret(
                    member,
                    memory.applied,
                    source.secret_ref.name,
                    _secret_field(spec, revision),
                    functools.partial(model_secret, ref, revision),
                    obj,
                )
                if problem:
                    problems.append((STORE_SECRET_INVALID, f"cluster {member.name}: {problem}"))
                    continue
            problem = await self._copy_request_log_secret(member, memory, ref, spec, revision, obj)
            if problem:
                problems.append((STORE_SECRET_INVALID, f"cluster {member.name}: {problem}"))
                continue
            await self.ops.apply(member, memory.applied, obj)
        ready = {"stable": 0, "canary": 0}
        endpoints = []
        for pod in member.replicas_of(key).values():
            if _is_ready(pod):
                revision = pod["metadata"]["labels"].get(REVISION_LABEL, "stable")
                ready[revision] = ready.get(revision, 0) + 1
                if pod["status"].get("podIP") and revision in ("stable", "canary"):
                    endpoints.append((f"{pod['status']['podIP']}:{SERVER_PORT}", revision))
        return serving.ClusterView(
            slot,
            url,
            stable_n,
            canary_n,
            ready["stable"],
            ready["canary"] if canary_n else 0,
            tuple(sorted(endpoints, key=lambda e: (e[1], e[0]))),
        )

    async def _secure(
        self, member: Member, memory: ServiceMemory, ref: ServiceRef, spec: InferenceServiceSpec
    ) -> str | None:
        """The member's copies of the certificate and the tokens, kept current, and the
        servers' right to review tokens; copies no longer named go. Why not, if they cannot be."""
        wanted: list[tuple[str, str, Callable[[dict[str, str]], Obj], tuple[str, ...]]] = []
        if spec.tls is not None:
            tls = functools.partial(tls_secret, ref)
            wanted.append((spec.tls.secret_name, "spec.tls.secretName", tls, TLS_SECRET_KEYS))
        auth = spec.auth
        if auth is not None and auth.tokens_secret_name:
            tokens = functools.partial(auth_tokens_secret, ref)
            wanted.append((auth.tokens_secret_name, "spec.auth.tokensSecretName", tokens, ()))
        if auth is not None and auth.service_account_tokens:
            await self.ops.ensure_token_reviewer(member, ref.namespace)
        named = {_name_of(build({})) for _, _, build, _ in wanted}
        for copy in (tls_secret(ref, {}), auth_tokens_secret(ref, {})):
            if _name_of(copy) not in named and self.ops.has(member, memory.applied, copy):
                await self.ops.delete(member, memory.applied, copy)
        problems = [
            await self.ops.mirror_secret(member, memory.applied, source, where, build, keys)
            for source, where, build, keys in wanted
        ]
        return "; ".join(p for p in problems if p) or None

    async def _copy_request_log_secret(
        self,
        member: Member,
        memory: ServiceMemory,
        ref: ServiceRef,
        spec: InferenceServiceSpec,
        revision: Revision,
        user: Obj,
    ) -> str | None:
        """The member's copy of the request log's store Secret, for the Deployment `user`."""
        logging = spec.request_logging
        if logging is None or logging.secret_ref is None:
            return None
        return await self.ops.copy_secret(
            member,
            memory.applied,
            logging.secret_ref.name,
            "spec.requestLogging.secretRef",
            functools.partial(request_log_secret, ref, revision),
            user,
        )

    @staticmethod
    def _revisions_present(member: Member, key: ObjectKey) -> set[str]:
        return {
            p["metadata"]["labels"].get(REVISION_LABEL, "")
            for p in member.replicas_of(key).values()
        }

    # --- model, placement, scale ------------------------------------------------------------

    def _resolve(self, namespace: str, source: ModelSource) -> ResolvedModel | ModelProblem:
        ref = source.training_job_ref
        job = self.job_facts(namespace, ref.name) if ref is not None else None
        return resolve_model(source, job)

    def _home_cluster(self, namespace: str, source: ModelSource) -> str | None:
        """The cluster whose claim holds a TrainingJob's artifact: the first to serve it (an
        artifact in an S3 store has none: every member reads it alike)."""
        if source.training_job_ref is None:
            return None
        job = self.job_facts(namespace, source.training_job_ref.name)
        if job is None or not job[0].checkpoint.claim_name:
            return None
        placement = job[1].placement
        return placement.cluster if placement else None

    def _first_slot(self, key: ObjectKey, spec: InferenceServiceSpec, home: str) -> list[Placed]:
        offers = [o for o in self.admission.offers((KIND, key)) if o.cluster == home]
        demand = replica_demand(f"{key[0]}/{key[1]}", spec)
        return list(place_service(demand, 1, offers, []).slots)

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
        ready = {}
        for cluster in clusters:
            member = self.fleet.member(cluster)
            ready[cluster] = member is not None and member.ready
        now = self.clock.monotonic()
        return self.health.lost(ready, now, self.settings.failover_grace_s)

    def _reports(self, key: ObjectKey, slots: Iterable[Placed]) -> list[serving.Report]:
        """The fresh load reports of the service's replicas (not those going away)."""
        wall = self.clock.wall()
        reports = []
        for slot in slots:
            member = self.fleet.member(slot.cluster)
            for pod in (member.replicas_of(key) if member else {}).values():
                meta = pod["metadata"]
                load = serving.parse_load(
                    (meta.get("annotations") or {}).get(LOAD_ANNOTATION), wall
                )
                if load is not None and not meta.get("deletionTimestamp"):
                    revision = meta["labels"].get(REVISION_LABEL, "stable")
                    reports.append(serving.Report(slot.cluster, revision, load))
        return reports

    def _desired(
        self,
        spec: InferenceServiceSpec,
        status: InferenceServiceStatus,
        reports: list[serving.Report],
        now: str,
        body: Obj,
        memory: ServiceMemory,
    ) -> tuple[int, str | None]:
        loads = [r.load for r in reports]
        recommended = serving.recommend(loads, spec.autoscaling.target_concurrency, spec.replicas)
        desired = serving.next_desired(
            status.desired_replicas,
            recommended,
            spec.replicas,
            seconds_since(self.clock, status.last_scale_time),
            spec.autoscaling.scale_down_delay_seconds,
        )
        wall = self.clock.wall()
        if memory.busy_at is None or serving.busy(loads):
            memory.busy_at = wall
        # A request the router held since the service last scaled (to zero) wakes it; one
        # from before (an operator restarted since) does not.
        wanted = (body["metadata"].get("annotations") or {}).get(WANTED_ANNOTATION)
        wanted_age = age(wall, wanted) if wanted else None
        scaled_age = seconds_since(self.clock, status.last_scale_time)
        if wanted_age is not None and (scaled_age is None or wanted_age < scaled_age):
            memory.busy_at = max(memory.busy_at, wall - max(wanted_age, 0.0))
        desired = serving.at_zero_or_not(
            desired,
            spec.replicas.min == 0,
            wall - memory.busy_at,
            spec.autoscaling.scale_to_zero_after_seconds,
        )
        changed = desired != status.desired_replicas
        return desired, now if changed else status.last_scale_time

    def _address(self, key: ObjectKey) -> str:
        """The service's URL through the router, if the operator knows the router's."""
        if not self.settings.router_url:
            return ""
        return f"{self.settings.router_url}{ROUTER_PATH_PREFIX}/{key[0]}/{key[1]}"

    # --- clean-up -----------------------------------------------------------------------------

    async def _remove_everywhere_but(self, key: ObjectKey, keep: set[str]) -> None:
        """Remove the service from clusters it no longer runs in (after failover or a change)."""
        applied = self.memory.of(key).applied
        stale = self.ops.applied_in(applied)
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
            if not await self.ops.remove_all(key, cluster, applied):
                log.info("service %s/%s: clean-up in %s retried", *key, cluster)

    async def _finalize(self, key: ObjectKey, body: Obj) -> float | None:
        if FINALIZER not in (body["metadata"].get("finalizers") or []):
            return None
        applied = self.memory.of(key).applied
        # Where it may run: status (survives a restart), what this process applied, and any
        # member showing its replicas. A registered cluster it never ran on cannot hold it up.
        status = InferenceServiceStatus.model_validate(body.get("status") or {})
        clusters = {c.cluster for c in status.clusters} | self.ops.applied_in(applied)
        clusters |= {
            name
            for name, reg in self.fleet.clusters.items()
            if reg.member is not None and reg.member.replicas_of(key)
        }
        for cluster in sorted(clusters):
            if not await self.ops.remove_all(key, cluster, applied):
                log.info("service %s/%s: cluster %s unreachable, clean-up retried", *key, cluster)
                return RETRY_S
        self.memory.forget(key)
        await self.remove_finalizer(body)
        return None
