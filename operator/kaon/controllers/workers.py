"""Creating and removing a job's worker pods and Service in its member cluster."""

from __future__ import annotations

import asyncio
import functools
import logging

from kaon.api.names import ATTEMPT_LABEL, MANAGED_BY, MANAGER, ObjectKey
from kaon.api.settings import Settings
from kaon.api.trainingjob import JobPlacement, TrainingJobSpec
from kaon.builders.names import job_selector, service_name, store_secret_name
from kaon.builders.worker import (
    JobRef,
    rendezvous_service,
    store_secret,
    worker_identity,
    worker_pod,
)
from kaon.clusters import paths
from kaon.clusters.client import ApiError, Obj
from kaon.clusters.member import Member
from kaon.controllers.stores import copy_store_secret
from kaon.engine.fleet import Fleet

log = logging.getLogger(__name__)


class WorkerOps:
    def __init__(self, fleet: Fleet, settings: Settings) -> None:
        self.fleet = fleet
        self.settings = settings
        self._namespaces: dict[str, set[str]] = {}
        self._preparing: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def ensure_namespace(self, member: Member, ns: str) -> None:
        """The namespace and the workers' identity in the member, made once: the gangs launched
        at once into a new namespace wait for the one that makes them."""
        known = self._namespaces.setdefault(member.name, set())
        if ns in known:
            return
        key = (member.name, ns)
        making = self._preparing.get(key)
        if making is None:
            making = asyncio.ensure_future(self._make_namespace(member, ns))
            self._preparing[key] = making
            making.add_done_callback(lambda _: self._preparing.pop(key, None))
        await asyncio.shield(making)  # a waiter cancelled does not cancel it for the others
        known.add(ns)

    @staticmethod
    async def _make_namespace(member: Member, ns: str) -> None:
        body = {"metadata": {"name": ns, "labels": {MANAGED_BY: MANAGER}}}
        await member.client.create_or_get(paths.namespaces(), body)
        for api_version, plural, obj in worker_identity(ns):
            await member.client.create_or_get(paths.collection(api_version, plural, ns), obj)

    async def launch(
        self,
        body: Obj,
        spec: TrainingJobSpec,
        placement: JobPlacement,
        attempt: int,
        ranks: tuple[int, ...],
    ) -> str | None:
        """Create the missing workers; returns why not, if any could not be created."""
        member = self.fleet.member(placement.cluster)
        pool = self.fleet.pool(placement.cluster, placement.pool)
        if member is None or pool is None:
            return f"pool {placement.pool} of cluster {placement.cluster} is no longer registered"
        meta = body["metadata"]
        job = JobRef(
            meta["namespace"], meta["name"], meta["uid"], dict(meta.get("annotations") or {})
        )
        try:
            await self.ensure_namespace(member, job.namespace)
            if spec.checkpoint.secret_ref is not None:
                problem = await copy_store_secret(
                    self.fleet.hub,
                    member,
                    job.namespace,
                    spec.checkpoint.secret_ref.name,
                    "spec.checkpoint.secretRef",
                    functools.partial(store_secret, job),
                )
                if problem:
                    return problem
            await member.client.create_or_get(
                paths.services(job.namespace), rendezvous_service(job, self.settings)
            )
        except ApiError as exc:
            return f"cluster {member.name}: {exc}"
        pods = [
            worker_pod(
                job,
                spec,
                pool,
                placement.gpus_per_worker,
                attempt,
                r,
                self.settings,
                placement.nodes[r] if r < len(placement.nodes) else None,
            )
            for r in ranks
        ]
        results = await asyncio.gather(
            *(member.client.create(paths.pods(job.namespace), p, answer=False) for p in pods),
            return_exceptions=True,
        )
        for pod, result in zip(pods, results, strict=True):
            if isinstance(result, ApiError) and not result.conflict:
                # The namespace or its worker identity may have been deleted behind our back.
                self._namespaces.get(member.name, set()).discard(job.namespace)
                return f"cluster {member.name}: pod {pod['metadata']['name']}: {result.message}"
            if isinstance(result, BaseException) and not isinstance(result, ApiError):
                raise result
        return None

    async def delete_pods(self, member: Member, ns: str, names: list[str]) -> None:
        await asyncio.gather(
            *(
                member.client.delete_if_present(paths.pod(ns, n), gracePeriodSeconds="0")
                for n in names
            )
        )

    async def remove_attempt(self, member: Member, key: ObjectKey, attempt: int) -> None:
        ns, name = key
        selector = f"{job_selector(name)},{ATTEMPT_LABEL}={attempt}"
        await member.client.delete(paths.pods(ns), labelSelector=selector)

    async def stop_running(self, member: Member, key: ObjectKey) -> None:
        """After the job failed: remove workers still running, keep finished ones for their logs."""
        running = [
            n
            for n, p in member.pods_of(key).items()
            if p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        await self.delete_pods(member, key[0], running)

    async def remove_all(self, key: ObjectKey, cluster: str) -> bool:
        """Delete every pod and the Service of the job in the cluster; False if not yet done.

        Done means: a fresh listing shows no worker that is not already being deleted. An API
        server that has just come back may answer before it serves everything, so a 404 or an
        error is never taken as success.
        """
        member, done = self.fleet.cleanup_member(cluster)
        if member is None:
            return done
        ns, name = key
        selector = job_selector(name)
        try:
            await member.client.delete(paths.pods(ns), labelSelector=selector)
            await member.client.delete_if_present(f"{paths.services(ns)}/{service_name(name)}")
            await member.client.delete_if_present(paths.secret(ns, store_secret_name(name)))
            left = await member.client.get(paths.pods(ns), labelSelector=selector)
        except ApiError as exc:
            log.info("cleanup of %s/%s in %s: %s", ns, name, cluster, exc)
            return False
        return all(p["metadata"].get("deletionTimestamp") for p in left.get("items", []))
