"""The TrainingJob controller: admit gangs, launch and watch their workers, report status.

Hub events (via kopf) and member events (via the fleet's watches) both end in `reconcile(key)`,
which reads what is known, asks the pure layers what to do, does it, and patches status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from kaon.api.names import ATTEMPT_LABEL, FINALIZER, RANK_LABEL, ObjectKey, key_of
from kaon.api.settings import Settings
from kaon.api.trainingjob import JobPlacement, TrainingJobSpec, TrainingJobStatus
from kaon.builders.names import artifact_uri
from kaon.clusters.client import KubeClient, Obj
from kaon.clusters.member import Member
from kaon.controllers.base import Reconciler, StaleView
from kaon.controllers.queue import QueueController, Use
from kaon.controllers.workers import WorkerOps
from kaon.engine import metrics
from kaon.engine.admission import Admission
from kaon.engine.cache import Memory
from kaon.engine.clock import Clock, age, rfc3339_micro, seconds_since
from kaon.engine.fleet import Fleet
from kaon.engine.workqueue import WorkQueue
from kaon.lifecycle import (
    Fail,
    JobView,
    Launch,
    Observe,
    Restart,
    Succeed,
    next_action,
    suspend_step,
)
from kaon.lifecycle import status as transitions
from kaon.lifecycle.conditions import find_condition
from kaon.lifecycle.models import JobFacts
from kaon.lifecycle.workers import WorkerState, observe_pod
from kaon.placement import (
    GangDemand,
    Outcome,
    Placed,
    Reservation,
    Unplaceable,
    Waiting,
    gang_demand,
)
from kaon.placement.demand import held_by_job, job_consumption, running_gang
from kaon.placement.health import failover_wait
from kaon.placement.preempt import Preemption, RunningGang

log = logging.getLogger(__name__)
PLURAL = "trainingjobs"
KIND = "TrainingJob"
ROLLBACK_RETRY_S = 5.0
UNREACHABLE_RETRY_S = 2.0
EXPECTATION_TTL_S = 30.0
COUNTS_INTERVAL_S = 1.0  # at most one status write a second for a running job's counts
# While a gang starts, only its state is written at once: partial counts, and `launched`, wait
# this long for the Running write to carry them. Under load (500 jobs applied at once on the
# rig) pods take 5-15 s to run, and writing counts then cost 0.6 status writes a job more.
STARTING_COUNTS_INTERVAL_S = 15.0
LAUNCHED_ALONE_S = STARTING_COUNTS_INTERVAL_S
LEAVING_POLL_S = 1.0  # a preempted gang looks this often until its workers are gone
PLACEMENT_WRITES = 32  # status writes of one placement pass in flight at once


@dataclass(slots=True)
class JobMemory:
    """What the operator remembers of one job between reconciles (lost on restart, rebuilt
    from status and the members' pods)."""

    parsed: tuple[str, TrainingJobSpec | None, TrainingJobStatus] | None = None  # per rv
    not_before: float = 0.0  # no placement before this (monotonic), after a gang rollback
    expected: dict[tuple[int, int], float] = field(default_factory=dict)  # (attempt, rank)
    counts_written_at: float = 0.0
    launched_attempt: int | None = None  # attempt whose pods were all created
    waiting_written_at: float = float("-inf")  # monotonic: the last Waiting status written


class TrainingJobController(Reconciler):
    guarded_writes = True  # status says where a gang runs: never written from a stale view

    def __init__(
        self,
        hub: KubeClient,
        fleet: Fleet,
        admission: Admission,
        workers: WorkerOps,
        settings: Settings,
        clock: Clock,
        queues: QueueController,
        on_change: Callable[[ObjectKey], None] = lambda key: None,
    ) -> None:
        super().__init__(hub, PLURAL, KIND, clock)
        self.fleet = fleet
        self.queues = queues
        self.admission = admission
        self.workers = workers
        self.settings = settings
        self.on_change = on_change  # services serving a job's artifact look again
        self.memory: Memory[JobMemory] = Memory(JobMemory)
        self.queue: WorkQueue[ObjectKey] = WorkQueue(
            self.reconcile, workers=32, on_error=metrics.reconcile_error("trainingjob")
        )
        self._placement_wanted = asyncio.Event()
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        admission.register(KIND, self.reservations)
        queues.register(self.queue_uses)

    # --- events -------------------------------------------------------------------------------

    def object_event(self, kind: str, body: Obj) -> None:
        key = key_of(body)
        if kind == "DELETED":
            self.cache.deleted(key)
            self.memory.forget(key)
            self.want_placement()
        elif self.cache.observed(body):
            self.queue.add(key)
        # else the echo of kaon's own write: the reconcile that wrote it saw this version
        self.on_change(key)  # services serving the job's artifact look again, echo or not

    def want_placement(self) -> None:
        self._placement_wanted.set()

    def member_health_changed(self, cluster: str) -> None:
        """A member became ready or stopped being: its jobs look again (to fail over, or to go
        on); one that is back first loses the pods of attempts fenced off meanwhile."""
        for key, body in self.cache.items():
            placement = (body.get("status") or {}).get("placement") or {}
            if placement.get("cluster") == cluster:
                self.queue.add(key)
        member = self.fleet.member(cluster)
        if member is not None and member.ready and not member.swept:
            running = self._sweeps.get(cluster)
            if running is None or running.done():
                self._sweeps[cluster] = asyncio.create_task(self.sweep(member))

    async def sweep(self, member: Member) -> None:
        """Remove the member's worker pods that no current attempt owns (a job that failed over
        while the member was away), before the member is offered to admission again. Pods of
        jobs this operator does not know are left to the jobs' finalizers."""
        try:
            for key, pods in list(member.job_pods.items()):
                body = self.cache.get(key)
                if body is None:
                    continue
                _, status = self._parsed(body)
                here = status.placement is not None and self.fleet.same_cluster(
                    status.placement.cluster, member.name
                )
                attempt = str(status.attempt)
                stale = [
                    name
                    for name, pod in pods.items()
                    if not here or pod["metadata"]["labels"].get(ATTEMPT_LABEL) != attempt
                ]
                if stale:
                    log.info(
                        "member %s: removing %d fenced-off pods of %s/%s",
                        member.name,
                        len(stale),
                        *key,
                    )
                    await self.workers.delete_pods(member, key[0], stale)
        except Exception:
            log.exception("sweep of member %s failed; retried when it is ready again", member.name)
            return
        member.swept = member.ready
        self.want_placement()

    def facts(self, namespace: str, name: str) -> JobFacts | None:
        """Spec and status of a valid job, for the services that serve its artifact."""
        body = self.cache.get((namespace, name))
        if body is None:
            return None
        spec, status = self._parsed(body)
        return (spec, status) if spec is not None else None

    # --- reconcile one job --------------------------------------------------------------------

    async def reconcile(self, key: ObjectKey) -> float | None:
        try:
            return await self._reconcile(key)
        except StaleView:
            return None  # queued again with the hub's current body

    async def _reconcile(self, key: ObjectKey) -> float | None:
        body = self.cache.get(key)
        if body is None:
            self.memory.forget(key)  # an in-flight pass may have remembered things after delete
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return await self._finalize(key, body)
        body = await self.add_finalizer(body) or body
        spec, status = self._parsed(body)
        gen = int(meta.get("generation", 0))
        if spec is None:
            if status.state != "Failed":
                message = "spec does not match the TrainingJob schema of this operator version"
                await self._patch(
                    body, transitions.failed(status, "InvalidSpec", message, gen, self.now())
                )
            return None
        if status.state in transitions.TERMINAL:
            return await self._finished(body, spec, status)
        step = suspend_step(spec.run_policy.suspend, status.state)
        if step == "suspend":
            cluster = status.placement.cluster if status.placement else None
            if cluster and not await self.workers.remove_all(key, cluster):
                # Not Suspended (placement kept, pool held) until its workers are gone.
                log.info("job %s/%s: cluster %s unreachable, suspend retried", *key, cluster)
                return UNREACHABLE_RETRY_S
            if status.state != "Suspended":
                await self._patch(body, transitions.suspended(status, gen, self.now()))
                await self.event(body, "Normal", "Suspended", "workers removed, pool freed")
                self.want_placement()
            return None
        if step == "resume":
            status = transitions.resumed(status, gen, self.now())
            body = await self._patch(body, status)
            await self.event(body, "Normal", "Resumed", "waiting to be placed again")
        if status.placement is None:
            self.want_placement()
            return None
        if transitions.leaving(status):
            return await self._leave(key, body, spec, status, gen)
        return await self._run_placed(key, body, spec, status, gen)

    async def _leave(
        self, key: ObjectKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus, gen: int
    ) -> float | None:
        """A preempted gang: its workers get SIGTERM (and save a checkpoint within their grace
        period); once none is left it waits again, as a new attempt."""
        assert status.placement is not None
        member = self.fleet.member(status.placement.cluster)
        if member is None or not member.ready:
            return await self._cluster_unready(key, body, spec, status, member, gen)
        pods = member.pods_of(key)
        if pods:
            undeleted = any(not p["metadata"].get("deletionTimestamp") for p in pods.values())
            if undeleted and not await self.workers.remove_all(key, member.name):
                return UNREACHABLE_RETRY_S
            return LEAVING_POLL_S
        memory = self.memory.of(key)
        memory.launched_attempt, memory.expected = None, {}
        body = await self._patch(body, transitions.preempted(status, gen, self.now()))
        await self.event(
            body,
            "Normal",
            "Requeued",
            f"workers of attempt {status.attempt} saved and stopped; waiting to be placed again",
        )
        self.want_placement()
        return None

    async def _run_placed(
        self, key: ObjectKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus, gen: int
    ) -> float | None:
        placement = status.placement
        assert placement is not None
        member = self.fleet.member(placement.cluster)
        if member is None or not member.ready:
            return await self._cluster_unready(key, body, spec, status, member, gen)
        memory = self.memory.of(key)
        pods = member.pods_of(key)
        attempt = str(status.attempt)
        current = {
            int(p["metadata"]["labels"][RANK_LABEL]): observe_pod(
                p, int(p["metadata"]["labels"][RANK_LABEL])
            )
            for p in pods.values()
            if p["metadata"]["labels"].get(ATTEMPT_LABEL) == attempt
        }
        self._add_expected(memory, status.attempt, spec.workers, current)
        stale = [
            n for n, p in pods.items() if p["metadata"]["labels"].get(ATTEMPT_LABEL) != attempt
        ]
        if stale:
            await self.workers.delete_pods(member, key[0], stale)
        written = status
        if not status.launched and memory.launched_attempt == status.attempt:
            status = transitions.launched(status, gen)
        view = JobView(
            workers=spec.workers,
            attempt=status.attempt,
            launched=status.launched,
            restarts=status.restarts,
            backoff_limit=spec.run_policy.backoff_limit,
            seconds_since_admitted=seconds_since(self.clock, status.admitted_at),
            active_deadline_seconds=spec.run_policy.active_deadline_seconds,
        )
        action = next_action(view, current)
        now = self.now()
        if isinstance(action, Launch):
            await self._launch(key, body, spec, status, memory, action, gen, now)
        elif isinstance(action, Restart):
            # Recorded on the hub first: an operator that dies between the two finds the old
            # attempt's pods stale, not missing (which would restart the gang again, free).
            await self._patch(body, transitions.restarting(status, action, gen, now))
            await self.workers.remove_attempt(member, key, status.attempt)
            charged = "charged to backoffLimit" if action.charged else "not charged"
            await self.event(body, "Warning", "GangRestarted", f"{action.message} ({charged})")
        elif isinstance(action, Succeed):
            claim = spec.checkpoint.claim_name
            # On a claim, the artifact is named where servers mount it, not where it was written.
            uri = artifact_uri(claim, key[1]) if claim else None
            await self._patch(body, transitions.succeeded(status, action, gen, now, uri))
            await self.event(body, "Normal", "Succeeded", "all workers exited 0")
            self.want_placement()
        elif isinstance(action, Fail):
            # Failed first, for the same reason; _finished stops what a crash left running.
            await self._patch(
                body, transitions.failed(status, action.reason, action.message, gen, now)
            )
            await self.workers.stop_running(member, key)
            await self.event(body, "Warning", action.reason, action.message)
            self.want_placement()
        elif isinstance(action, Observe):
            retry = await self._observe(memory, body, written, status, action, gen, now)
            if retry is not None:
                return retry
        deadline = spec.run_policy.active_deadline_seconds
        if deadline is not None and view.seconds_since_admitted is not None:
            return max(deadline - view.seconds_since_admitted, 0) + 0.5
        return None

    async def _cluster_unready(
        self,
        key: ObjectKey,
        body: Obj,
        spec: TrainingJobSpec,
        status: TrainingJobStatus,
        member: Member | None,
        gen: int,
    ) -> float | None:
        """The gang's cluster does not answer: wait out the grace, then fail over."""
        assert status.placement is not None
        cluster = status.placement.cluster
        policy = spec.run_policy.failover
        if member is not None:
            lost_for = member.unready_for()
        elif cluster in self.fleet.clusters:  # registered, but no client (e.g. Secret missing)
            lost_for = 0.0
        else:  # no ComputeCluster of that name: deleted, or not listed yet after a start
            lost_for = min(self.fleet.absent_for(cluster), float(policy.grace_seconds))
        wait = failover_wait(policy.mode, policy.grace_seconds, lost_for)
        if wait is None or (wait > 0 and lost_for == 0.0):
            return UNREACHABLE_RETRY_S
        if wait > 0:
            return wait + 0.05
        await self._patch(
            body, transitions.failing_over(status, cluster, lost_for, gen, self.now())
        )
        memory = self.memory.of(key)
        memory.launched_attempt, memory.expected = None, {}
        message = (
            f"cluster {cluster} has not answered for {lost_for:.0f}s "
            f"(grace {policy.grace_seconds}s): the gang is placed again as attempt "
            f"{status.attempt + 1}; the old attempt's pods are removed when {cluster} is back"
        )
        await self.event(body, "Warning", "ClusterLost", message)
        metrics.FAILOVERS.labels(cluster).inc()
        self.want_placement()
        return None

    async def _launch(
        self,
        key: ObjectKey,
        body: Obj,
        spec: TrainingJobSpec,
        status: TrainingJobStatus,
        memory: JobMemory,
        action: Launch,
        gen: int,
        now: str,
    ) -> None:
        placement = status.placement
        assert placement is not None
        if not await self._confirmed(body, status):
            return
        error = await self.workers.launch(body, spec, placement, status.attempt, action.ranks)
        if error:
            await self.workers.remove_all(key, placement.cluster)
            message = f"gang rolled back: {error}"
            await self._patch(body, transitions.rolled_back(status, message, gen, now))
            await self.event(body, "Warning", "GangRollback", message)
            memory.not_before = self.clock.monotonic() + ROLLBACK_RETRY_S
            self.queue.add_after(key, ROLLBACK_RETRY_S)
            return
        at = self.clock.monotonic()
        memory.expected = {(status.attempt, r): at + EXPECTATION_TTL_S for r in action.ranks}
        # Recorded with the next status write (the workers' counts follow within seconds),
        # not in a write of its own: until then a restarted operator only re-creates pods
        # of this attempt that are missing, which creating them again does anyway.
        memory.launched_attempt = status.attempt
        memory.counts_written_at = at

    async def _confirmed(self, body: Obj, status: TrainingJobStatus) -> bool:
        """Before creating pods: the hub still has this attempt at this placement. A view that
        lags (a watch behind, a second operator's write) must not start a gang anywhere."""
        current = await self.refresh(body, requeue=False)
        if current is None:
            return False
        _, now = self._parsed(current)
        return (now.attempt, now.placement) == (status.attempt, status.placement)

    async def _observe(
        self,
        memory: JobMemory,
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
        at = self.clock.monotonic()
        since = at - memory.counts_written_at
        if new == status:
            if new.launched == written.launched:
                return None
            if since < LAUNCHED_ALONE_S:
                return LAUNCHED_ALONE_S - since
        elif new.state == status.state:
            interval = COUNTS_INTERVAL_S if new.state == "Running" else STARTING_COUNTS_INTERVAL_S
            if since < interval:
                return interval - since  # coalesce worker-count updates
        if new.state == "Running" and status.state != "Running":
            metrics.TIME_TO_RUNNING.observe(seconds_since(self.clock, status.admitted_at) or 0.0)
        await self._patch(body, new)
        memory.counts_written_at = at
        return None

    async def _finished(
        self, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus
    ) -> float | None:
        member = self.fleet.member(status.placement.cluster) if status.placement else None
        if status.state == "Failed" and member is not None and member.ready:
            await self.workers.stop_running(member, key_of(body))
        ttl = spec.run_policy.ttl_seconds_after_finished
        if ttl is None:
            return None
        left = ttl - (seconds_since(self.clock, status.completion_time) or 0)
        if left > 0:
            return left + 0.5
        await self.delete(body)
        return None

    async def _finalize(self, key: ObjectKey, body: Obj) -> float | None:
        if FINALIZER not in (body["metadata"].get("finalizers") or []):
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
        await self.remove_finalizer(body)
        self.want_placement()
        return None

    def _add_expected(
        self, memory: JobMemory, attempt: int, workers: int, current: dict[int, WorkerState]
    ) -> None:
        """Pods we created that the member's watch has not shown yet count as Pending, not lost.

        Without this, a reconcile between our create and the watch event would see a launched
        gang with a missing worker and restart it.
        """
        now = self.clock.monotonic()
        for (a, rank), deadline in list(memory.expected.items()):
            if a != attempt or rank in current or deadline < now:
                del memory.expected[(a, rank)]
            elif rank < workers:
                current[rank] = WorkerState(rank=rank, phase="Pending")

    # --- admission ----------------------------------------------------------------------------

    async def placement_loop(self) -> None:
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
        """Spec (None if invalid) and status as models, remembered per resourceVersion."""
        memory = self.memory.of(key_of(body))
        rv = body["metadata"].get("resourceVersion", "")
        if memory.parsed and memory.parsed[0] == rv:
            return memory.parsed[1], memory.parsed[2]
        status = TrainingJobStatus.model_validate(body.get("status") or {})
        try:
            spec: TrainingJobSpec | None = TrainingJobSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        memory.parsed = (rv, spec, status)
        return spec, status

    def _waiting(self) -> Iterator[tuple[ObjectKey, Obj, TrainingJobSpec, TrainingJobStatus]]:
        now = self.clock.monotonic()
        for key, body in self.cache.items():
            meta = body["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            if FINALIZER not in (meta.get("finalizers") or []):
                # Its reconcile adds the finalizer and then wants placement: admitted before
                # that, the guarded status write would race the finalizer's and lose (a 409,
                # a refresh and another pass, for a third of the jobs of a burst).
                continue
            memory = self.memory.peek(key)
            if memory is not None and memory.not_before > now:
                continue
            spec, status = self._parsed(body)
            if status.placement is not None or status.state in transitions.TERMINAL:
                continue
            if spec is not None and not spec.run_policy.suspend:
                yield key, body, spec, status

    def reservations(self) -> Iterator[tuple[ObjectKey, Reservation]]:
        """What every placed, unfinished job holds beyond its workers bound to nodes."""
        for key, body in self.cache.items():
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
            memory = self.memory.peek(key)
            launched = status.launched or (
                memory is not None and memory.launched_attempt == status.attempt
            )
            bound = 0
            if member is not None and launched:
                attempt = str(status.attempt)
                bound = sum(
                    1
                    for p in member.pods_of(key).values()
                    if p["metadata"]["labels"].get(ATTEMPT_LABEL) == attempt
                    and p["spec"].get("nodeName")
                )
            held = held_by_job(
                spec, placement.cluster, placement.pool, placement.gpus_per_worker, bound
            )
            if held is not None:
                yield key, held

    def queue_uses(self) -> Iterator[Use]:
        """Every unfinished job of a queue: what its gang holds once admitted, or that it waits."""
        for key, body in self.cache.items():
            if body["metadata"].get("deletionTimestamp"):
                continue
            spec, status = self._parsed(body)
            if spec is None or status.state in transitions.TERMINAL:
                continue
            if status.placement is not None and status.queue:
                yield Use(status.queue, job_consumption(spec, status.placement))
            elif status.placement is None and not spec.run_policy.suspend:
                queue, _ = self.queues.resolve(key[0], spec.queue)
                if queue is not None:
                    admitted = find_condition(status.conditions, "Admitted")
                    yield Use(queue, None, admitted.reason if admitted else "Pending")

    def running_gangs(self) -> Iterator[RunningGang]:
        """Every admitted job of a queue, as a possible victim of preemption."""
        wall = self.clock.wall()
        for key, body in self.cache.items():
            if body["metadata"].get("deletionTimestamp"):
                continue
            spec, status = self._parsed(body)
            placement = status.placement
            if spec is None or placement is None or status.state in transitions.TERMINAL:
                continue
            if not status.queue:
                continue
            member = self.fleet.member(placement.cluster)
            attempt = str(status.attempt)
            nodes: Counter[str] = Counter(
                p["spec"]["nodeName"]
                for p in (member.pods_of(key).values() if member else ())
                if p["spec"].get("nodeName")
                and p["metadata"]["labels"].get(ATTEMPT_LABEL) == attempt
            )
            yield running_gang(
                f"{key[0]}/{key[1]}",
                spec,
                placement,
                status.queue,
                nodes,
                age(wall, status.admitted_at) or 0.0,
                status.preempted_by if transitions.leaving(status) else None,
            )

    def _demands(
        self, waiting: list[tuple[ObjectKey, Obj, TrainingJobSpec, TrainingJobStatus]]
    ) -> tuple[list[GangDemand], dict[str, Outcome]]:
        """Waiting jobs as gang demands, each in its queue; or why one has no queue to wait in."""
        demands: list[GangDemand] = []
        outcomes: dict[str, Outcome] = {}
        for k, body, spec, _ in waiting:
            queue, problem = self.queues.resolve(k[0], spec.queue)
            created = body["metadata"].get("creationTimestamp", "")
            if problem is not None:
                outcomes[f"{k[0]}/{k[1]}"] = problem
            else:
                demands.append(gang_demand(f"{k[0]}/{k[1]}", spec, created, queue))
        return demands, outcomes

    async def place_waiting(self) -> None:
        waiting = list(self._waiting())
        if not waiting:
            return
        demands, outcomes = self._demands(waiting)
        queue_of = {d.key: d.queue for d in demands}
        running = list(self.running_gangs()) if self.queues.specs else []
        result = self.admission.admit_gangs(demands, self.queues.book(), running)
        outcomes |= result.outcomes
        now, admitted_at = self.now(), rfc3339_micro(self.clock)
        await asyncio.gather(*(self._preempt(p, now) for p in result.preemptions))
        sem = asyncio.Semaphore(PLACEMENT_WRITES)

        async def apply(
            key: ObjectKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus
        ) -> None:
            try:
                await decide(key, body, spec, status)
            except StaleView:
                self.want_placement()  # the job changed meanwhile: the next pass decides again

        async def decide(
            key: ObjectKey, body: Obj, spec: TrainingJobSpec, status: TrainingJobStatus
        ) -> None:
            outcome = outcomes[f"{key[0]}/{key[1]}"]
            gen = int(body["metadata"].get("generation", 0))
            async with sem:
                if isinstance(outcome, Placed):
                    metrics.ADMISSION_WAIT.observe(
                        seconds_since(self.clock, body["metadata"].get("creationTimestamp")) or 0.0
                    )
                    placement = JobPlacement(
                        cluster=outcome.cluster,
                        pool=outcome.pool,
                        accelerator=outcome.accelerator or "",
                        gpus_per_worker=outcome.gpus_per_worker,
                        cost_per_hour=round(outcome.cost_per_hour, 4),
                        why=outcome.why,
                        nodes=list(outcome.nodes),
                    )
                    admitted = transitions.admitted(
                        status, placement, spec.workers, gen, now, admitted_at
                    )
                    queue = queue_of[f"{key[0]}/{key[1]}"]
                    await self._patch(body, admitted.model_copy(update={"queue": queue}))
                    self.queue.add(key, urgent=True)  # launched before the Events, and ahead of
                    # the reconciles that the pod events of gangs launched earlier queued
                    where = f"pool {outcome.pool} in cluster {outcome.cluster}" + (
                        f", queue {queue}" if queue else ""
                    )
                    where += f": {outcome.why}" if outcome.why else ""
                    await self.event(body, "Normal", "Placed", where)
                    if status.failed_over_from:
                        message = transitions.failover_message(status, placement)
                        await self.event(body, "Warning", "FailedOver", message)
                elif isinstance(outcome, Waiting):
                    await self._patch(
                        body, transitions.waiting(status, outcome.reason, outcome.message, gen, now)
                    )
                    self.memory.of(key).waiting_written_at = self.clock.monotonic()
                    current = find_condition(status.conditions, "Admitted")
                    if current is None or current.reason != outcome.reason:
                        await self.event(
                            body, "Normal", "Waiting", f"{outcome.reason}: {outcome.message}"
                        )
                elif isinstance(outcome, Unplaceable):
                    await self._patch(
                        body, transitions.failed(status, outcome.reason, outcome.message, gen, now)
                    )
                    await self.event(body, "Warning", outcome.reason, outcome.message)

        # Only jobs with something to write get a task: at hundreds of waiting jobs most
        # passes change nothing for most of them.
        todo = []
        mono = self.clock.monotonic()
        for key, body, spec, status in waiting:
            outcome = outcomes[f"{key[0]}/{key[1]}"]
            metrics.placement("trainingjob", outcome)
            memory = self.memory.peek(key)
            written_ago = mono - (memory.waiting_written_at if memory else float("-inf"))
            if not (
                isinstance(outcome, Waiting)
                and transitions.waits_as_said(status, outcome.reason, outcome.message, written_ago)
            ):
                todo.append(apply(key, body, spec, status))
        await asyncio.gather(*todo)

    async def _preempt(self, p: Preemption, now: str) -> None:
        """Tell each victim to leave (its reconcile removes the workers) and say so on both."""
        preemptor = self.cache.get(_split(p.preemptor))
        queue = p.queue
        if p.kind == "Reclaim":
            reason, why = "Reclaimed", f"to reclaim quota lent by queue {queue}"
        else:
            reason, why = "PreemptedByPriority", f"by priority within queue {queue}"
        for victim in p.victims:
            key = _split(victim.key)
            body = self.cache.get(key)
            if body is None:
                continue
            _, status = self._parsed(body)
            message = (
                f"preempted by {p.preemptor} {why} in cluster {p.cluster}: "
                "workers save a checkpoint and stop, then the job waits to be placed again"
            )
            gen = int(body["metadata"].get("generation", 0))
            try:
                body = await self._patch(
                    body, transitions.preempting(status, p.preemptor, reason, message, gen, now)
                )
            except StaleView:
                self.want_placement()
                continue
            await self.event(body, "Warning", "Preempted", message)
            metrics.PREEMPTIONS.labels(victim.queue or "", reason).inc()
            self.queue.add(key)
        if preemptor is not None:
            names = ", ".join(v.key for v in p.victims)
            await self.event(
                preemptor, "Normal", "Preempting", f"{names} in cluster {p.cluster}, {why}"
            )

    async def _patch(self, body: Obj, status: TrainingJobStatus) -> Obj:
        return await self.write_status(body, status) or body


def _split(key: str) -> ObjectKey:
    namespace, _, name = key.partition("/")
    return namespace, name
