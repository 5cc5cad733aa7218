"""The engine behind the kopf handlers: a cache of hub objects, a work queue, placement passes.

Hub events (via kopf) and member events (via our watches) both end in `reconcile(job)`, which
reads what is known, asks the pure layers what to do, does it, and patches status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from kaon.api.common import now_rfc3339
from kaon.api.names import ATTEMPT_LABEL, FINALIZER, RANK_LABEL
from kaon.api.settings import Settings
from kaon.api.trainingjob import JobPlacement, TrainingJobSpec, TrainingJobStatus
from kaon.builders.names import artifact_uri
from kaon.clusters.client import KubeClient, Obj
from kaon.clusters.member import JobKey
from kaon.handlers import hubio, metrics
from kaon.handlers.fleet import Fleet, Reservation
from kaon.handlers.jobcache import JobCache, job_key
from kaon.handlers.services import ServiceController
from kaon.handlers.workers import WorkerOps
from kaon.handlers.workqueue import WorkQueue
from kaon.lifecycle import Fail, JobView, Launch, Observe, Restart, Succeed, next_action
from kaon.lifecycle import status as transitions
from kaon.lifecycle.conditions import find_condition
from kaon.lifecycle.workers import WorkerState, observe_pod
from kaon.placement import Placed, Unplaceable, Waiting, gang_demand, plan

log = logging.getLogger(__name__)
PLURAL = "trainingjobs"
KIND = "TrainingJob"
ROLLBACK_RETRY_S = 5.0
UNREACHABLE_RETRY_S = 2.0
EXPECTATION_TTL_S = 30.0
COUNTS_INTERVAL_S = 1.0  # at most one status write a second for worker counts alone
LAUNCHED_ALONE_S = 10.0  # `launched` waits this long for a write to ride along with


class Controller:
    def __init__(self, hub: KubeClient, hub_kubeconfig: Mapping[str, Any], settings: Settings):
        self.hub = hub
        self.settings = settings
        self.jobs = JobCache()
        self.fleet = Fleet(hub, hub_kubeconfig, settings, self._job_pods_changed, self._capacity)
        self.queue: WorkQueue[JobKey] = WorkQueue(
            self.reconcile, workers=32, on_error=metrics.reconcile_error("trainingjob")
        )
        self.workers = WorkerOps(self.fleet, settings)
        self.services = ServiceController(
            hub, self.fleet, settings, self.jobs, self.reservations, self.workers.ensure_namespace
        )
        self.fleet.on_service_pods = self.services.pods_changed
        self._placement_wanted = asyncio.Event()
        self._not_before: dict[JobKey, float] = {}
        self._expected: dict[JobKey, dict[tuple[int, int], float]] = {}
        self._counts_patched: dict[JobKey, float] = {}
        self._launched: dict[JobKey, int] = {}  # attempt whose pods were all created
        self._models: dict[JobKey, tuple[str, TrainingJobSpec | None, TrainingJobStatus]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- wiring -----------------------------------------------------------------------------

    def start(self) -> None:
        self.queue.start()
        self.services.start()
        self._tasks.append(asyncio.create_task(self._placement_loop(), name="placement"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()
        await self.services.stop()
        await self.fleet.stop()

    def job_event(self, kind: str, body: Obj) -> None:
        key = job_key(body)
        if kind == "DELETED":
            self.jobs.deleted(key)
            self._forget(key)
            self.want_placement()
        else:
            self.jobs.observed(body)
            self.queue.add(key)
        self.services.job_changed(key)

    def _forget(self, key: JobKey) -> None:
        for memo in (
            self._not_before,
            self._expected,
            self._models,
            self._counts_patched,
            self._launched,
        ):
            memo.pop(key, None)

    def _job_pods_changed(self, key: JobKey) -> None:
        if key in self.jobs:
            self.queue.add(key)

    def _capacity(self, _cluster: str) -> None:
        self.want_placement()

    def want_placement(self) -> None:
        self._placement_wanted.set()

    # --- reconcile one job ------------------------------------------------------------------

    async def reconcile(self, key: JobKey) -> float | None:
        body = self.jobs.get(key)
        if body is None:
            self._forget(key)  # an in-flight pass may have remembered things after the delete
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._finalize(key, body)
        if FINALIZER not in (meta.get("finalizers") or []):
            body = await self._save_meta(
                await hubio.set_finalizers(
                    self.hub, PLURAL, body, [*(meta.get("finalizers") or []), FINALIZER]
                )
            )
        spec, status = self._parsed(body)
        gen = int(meta.get("generation", 0))
        if spec is None:
            if status.state != "Failed":
                message = "spec does not match the TrainingJob schema of this operator version"
                await self._patch(
                    body, transitions.failed(status, "InvalidSpec", message, gen, now_rfc3339())
                )
            return None
        if status.state in transitions.TERMINAL:
            return await self._finished(key, body, spec, status)
        if spec.run_policy.suspend:
            if status.placement is not None:
                await self.workers.remove_all(key, status.placement.cluster)
            if status.state != "Suspended":
                await self._patch(body, transitions.suspended(status, gen, now_rfc3339()))
                await self._event(body, "Normal", "Suspended", "workers removed, pool freed")
                self.want_placement()
            return None
        if status.state == "Suspended":
            await self._patch(body, transitions.resumed(status, gen, now_rfc3339()))
            await self._event(body, "Normal", "Resumed", "waiting to be placed again")
        if status.placement is None:
            self.want_placement()
            return None
        return await self._run_placed(key, body, spec, status, gen)

    async def _run_placed(
        self, key: JobKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus, gen: int
    ) -> float | None:
        placement = status.placement
        assert placement is not None
        member = self.fleet.member(placement.cluster)
        if member is None or not member.ready:
            return UNREACHABLE_RETRY_S
        pods = member.pods_of(key)
        current = {
            int(p["metadata"]["labels"][RANK_LABEL]): observe_pod(
                p, int(p["metadata"]["labels"][RANK_LABEL])
            )
            for p in pods.values()
            if p["metadata"]["labels"].get(ATTEMPT_LABEL) == str(status.attempt)
        }
        self._add_expected(key, status.attempt, spec.workers, current)
        stale = [
            n
            for n, p in pods.items()
            if p["metadata"]["labels"].get(ATTEMPT_LABEL) != str(status.attempt)
        ]
        if stale:
            await self.workers.delete_pods(member, key[0], stale)
        written = status
        if not status.launched and self._launched.get(key) == status.attempt:
            status = transitions.launched(status, gen)
        view = JobView(
            workers=spec.workers,
            attempt=status.attempt,
            launched=status.launched,
            restarts=status.restarts,
            backoff_limit=spec.run_policy.backoff_limit,
            seconds_since_admitted=metrics.seconds_since(status.admitted_at),
            active_deadline_seconds=spec.run_policy.active_deadline_seconds,
        )
        action = next_action(view, current)
        now = now_rfc3339()
        if isinstance(action, Launch):
            error = await self.workers.launch(body, spec, placement, status.attempt, action.ranks)
            if error:
                await self.workers.remove_all(key, placement.cluster)
                message = f"gang rolled back: {error}"
                await self._patch(
                    body, transitions.waiting(status, "GangRollback", message, gen, now)
                )
                await self._event(body, "Warning", "GangRollback", message)
                self._not_before[key] = asyncio.get_running_loop().time() + ROLLBACK_RETRY_S
                self.queue.add_after(key, ROLLBACK_RETRY_S)
                return None
            loop_now = asyncio.get_running_loop().time()
            self._expected[key] = {
                (status.attempt, r): loop_now + EXPECTATION_TTL_S for r in action.ranks
            }
            # Recorded with the next status write (the workers' counts follow within seconds),
            # not in a write of its own: until then a restarted operator only re-creates pods
            # of this attempt that are missing, which creating them again does anyway.
            self._launched[key] = status.attempt
            self._counts_patched[key] = loop_now
        elif isinstance(action, Restart):
            await self.workers.remove_attempt(member, key, status.attempt)
            await self._patch(body, transitions.restarting(status, action, gen, now))
            charged = "charged to backoffLimit" if action.charged else "not charged"
            await self._event(body, "Warning", "GangRestarted", f"{action.message} ({charged})")
        elif isinstance(action, Succeed):
            claim = spec.checkpoint.claim_name
            # On a claim, the artifact is named where servers mount it, not where it was written.
            uri = artifact_uri(claim, key[1]) if claim else None
            await self._patch(body, transitions.succeeded(status, action, gen, now, uri))
            await self._event(body, "Normal", "Succeeded", "all workers exited 0")
            self.want_placement()
        elif isinstance(action, Fail):
            await self.workers.stop_running(member, key)
            await self._patch(
                body, transitions.failed(status, action.reason, action.message, gen, now)
            )
            await self._event(body, "Warning", action.reason, action.message)
            self.want_placement()
        elif isinstance(action, Observe):
            retry = await self._observe(key, body, written, status, action, gen, now)
            if retry is not None:
                return retry
        deadline = spec.run_policy.active_deadline_seconds
        if deadline is not None and view.seconds_since_admitted is not None:
            return max(deadline - view.seconds_since_admitted, 0) + 0.5
        return None

    async def _observe(
        self,
        key: JobKey,
        body: Obj,
        written: TrainingJobStatus,
        status: TrainingJobStatus,
        action: Observe,
        gen: int,
        now: str,
    ) -> float | None:
        """Write what changed: state at once, counts and progress at most once a second, and
        `launched` with them (or alone once the workers have been quiet for a while)."""
        new = transitions.observed(status, action, gen, now)
        loop_now = asyncio.get_running_loop().time()
        since = loop_now - self._counts_patched.get(key, 0.0)
        if new == status:
            if new.launched == written.launched:
                return None
            if since < LAUNCHED_ALONE_S:
                return LAUNCHED_ALONE_S - since
        elif new.state == status.state and since < COUNTS_INTERVAL_S:
            return COUNTS_INTERVAL_S - since  # coalesce worker-count updates
        if new.state == "Running" and status.state != "Running":
            metrics.TIME_TO_RUNNING.observe(metrics.seconds_since(status.admitted_at) or 0.0)
        await self._patch(body, new)
        self._counts_patched[key] = loop_now
        return None

    async def _finished(
        self, key: JobKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus
    ) -> float | None:
        ttl = spec.run_policy.ttl_seconds_after_finished
        if ttl is None:
            return None
        left = ttl - (metrics.seconds_since(status.completion_time) or 0)
        if left > 0:
            return left + 0.5
        await hubio.delete(self.hub, PLURAL, body)
        return None

    async def _finalize(self, key: JobKey, body: Obj) -> float | None:
        finalizers = body["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            return None
        status = TrainingJobStatus.model_validate(body.get("status") or {})
        clusters = {status.placement.cluster} if status.placement else set()
        clusters |= {
            name
            for name, reg in self.fleet.clusters.items()
            if reg.member and reg.member.pods_of(key)
        }
        for cluster in clusters:
            if not await self.workers.remove_all(key, cluster):
                log.info("job %s/%s: cluster %s unreachable, cleanup retried", *key, cluster)
                return UNREACHABLE_RETRY_S
        await self._save_meta(
            await hubio.set_finalizers(
                self.hub, PLURAL, body, [f for f in finalizers if f != FINALIZER]
            )
        )
        self.want_placement()
        return None

    def _add_expected(
        self, key: JobKey, attempt: int, workers: int, current: dict[int, WorkerState]
    ) -> None:
        """Pods we created that the member's watch has not shown yet count as Pending, not lost.

        Without this, a reconcile between our create and the watch event would see a launched
        gang with a missing worker and restart it.
        """
        expected = self._expected.get(key)
        if not expected:
            return
        now = asyncio.get_running_loop().time()
        for (a, rank), deadline in list(expected.items()):
            if a != attempt or rank in current or deadline < now:
                del expected[(a, rank)]
            elif rank < workers:
                current[rank] = WorkerState(rank=rank, phase="Pending")
        if not expected:
            del self._expected[key]

    # --- placement --------------------------------------------------------------------------

    async def _placement_loop(self) -> None:
        while True:
            await self._placement_wanted.wait()
            await asyncio.sleep(self.settings.placement_interval_s)
            self._placement_wanted.clear()
            try:
                await self.place_waiting()
            except Exception:
                log.exception("placement pass failed")
                self.want_placement()

    def _parsed(self, body: Obj) -> tuple[TrainingJobSpec | None, TrainingJobStatus]:
        """Spec (None if invalid) and status as models, cached per resourceVersion."""
        key, rv = job_key(body), body["metadata"].get("resourceVersion", "")
        cached = self._models.get(key)
        if cached and cached[0] == rv:
            return cached[1], cached[2]
        status = TrainingJobStatus.model_validate(body.get("status") or {})
        try:
            spec: TrainingJobSpec | None = TrainingJobSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        self._models[key] = (rv, spec, status)
        return spec, status

    def _waiting(self) -> list[tuple[JobKey, Obj, TrainingJobSpec, TrainingJobStatus]]:
        now = asyncio.get_running_loop().time()
        out = []
        for key, body in self.jobs.items():
            if body["metadata"].get("deletionTimestamp") or self._not_before.get(key, 0) > now:
                continue
            spec, status = self._parsed(body)
            if status.placement is not None or status.state in transitions.TERMINAL:
                continue
            if spec is not None and not spec.run_policy.suspend:
                out.append((key, body, spec, status))
        return out

    def reservations(self) -> list[Reservation]:
        held = []
        for key, body in self.jobs.items():
            raw = body.get("status") or {}
            if not raw.get("placement") or raw.get("state") in transitions.TERMINAL:
                continue
            if body["metadata"].get("deletionTimestamp"):
                continue  # its workers are being removed; bound ones still count on their nodes
            spec, status = self._parsed(body)
            placement = status.placement
            if spec is None or placement is None:
                continue
            member = self.fleet.member(placement.cluster)
            bound = 0
            launched = status.launched or self._launched.get(key) == status.attempt
            if member is not None and launched:
                bound = sum(
                    1
                    for p in member.pods_of(key).values()
                    if p["metadata"]["labels"].get(ATTEMPT_LABEL) == str(status.attempt)
                    and p["spec"].get("nodeName")
                )
            # What each worker holds where it was placed (no GPUs on a CPU fallback pool).
            per_worker = replace(gang_demand("", spec).per_worker, gpus=placement.gpus_per_worker)
            if spec.workers - bound > 0:
                held.append(
                    Reservation(placement.cluster, placement.pool, per_worker, spec.workers - bound)
                )
        return held

    async def place_waiting(self) -> None:
        waiting = self._waiting()
        if not waiting:
            return
        demands = [
            gang_demand(f"{k[0]}/{k[1]}", spec, body["metadata"].get("creationTimestamp", ""))
            for k, body, spec, _ in waiting
        ]
        outcomes = plan(demands, self.fleet.offers(self.reservations()))
        now = now_rfc3339()
        sem = asyncio.Semaphore(32)

        async def apply(
            key: JobKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus
        ) -> None:
            outcome = outcomes[f"{key[0]}/{key[1]}"]
            gen = int(body["metadata"].get("generation", 0))
            async with sem:
                if isinstance(outcome, Placed):
                    metrics.ADMISSION_WAIT.observe(
                        metrics.seconds_since(body["metadata"].get("creationTimestamp")) or 0.0
                    )
                    placement = JobPlacement(
                        cluster=outcome.cluster,
                        pool=outcome.pool,
                        accelerator=outcome.accelerator or "",
                        gpus_per_worker=outcome.gpus_per_worker,
                    )
                    await self._patch(
                        body, transitions.admitted(status, placement, spec.workers, gen, now)
                    )
                    await self._event(
                        body,
                        "Normal",
                        "Placed",
                        f"pool {outcome.pool} in cluster {outcome.cluster}",
                    )
                    self.queue.add(key)
                elif isinstance(outcome, Waiting):
                    await self._patch(
                        body, transitions.waiting(status, outcome.reason, outcome.message, gen, now)
                    )
                    current = find_condition(status.conditions, "Admitted")
                    if current is None or current.reason != outcome.reason:
                        await self._event(
                            body, "Normal", "Waiting", f"{outcome.reason}: {outcome.message}"
                        )
                elif isinstance(outcome, Unplaceable):
                    await self._patch(
                        body, transitions.failed(status, outcome.reason, outcome.message, gen, now)
                    )
                    await self._event(body, "Warning", outcome.reason, outcome.message)

        # Only jobs with something to write get a task: at hundreds of waiting jobs most
        # passes change nothing for most of them.
        todo = []
        for key, body, spec, status in waiting:
            outcome = outcomes[f"{key[0]}/{key[1]}"]
            metrics.placement("trainingjob", outcome)
            if not (
                isinstance(outcome, Waiting)
                and transitions.waits_as_said(status, outcome.reason, outcome.message)
            ):
                todo.append(apply(key, body, spec, status))
        await asyncio.gather(*todo)

    # --- hub writes -------------------------------------------------------------------------

    async def _patch(self, body: Obj, status: TrainingJobStatus) -> Obj:
        dumped = status.model_dump(mode="json", by_alias=True)
        updated = await hubio.patch_status(self.hub, PLURAL, body, dumped)
        return await self._save_meta(updated)

    async def _save_meta(self, updated: Obj) -> Obj:
        return self.jobs.written(updated) or updated

    async def _event(self, body: Obj, type_: str, reason: str, message: str) -> None:
        await hubio.post_event(self.hub, KIND, body, type_, reason, message)
