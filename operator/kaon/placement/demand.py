"""TrainingJob and InferenceService specs as placement demands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from kaon.api.inferenceservice import InferenceServiceSpec
from kaon.api.resources import Resources
from kaon.api.trainingjob import JobPlacement, PoolPreference, TrainingJobSpec, WorkerResources
from kaon.placement.model import GangDemand, Preference, Reservation
from kaon.placement.preempt import RunningGang
from kaon.placement.quota import Consumption


def pool_preferences(
    given: Sequence[PoolPreference], resources: WorkerResources
) -> tuple[Preference, ...]:
    """The ordered pool preferences, or the default: GPU pools for pods asking for GPUs, else
    CPU pools."""
    if given:
        return tuple(Preference(p.type, p.accelerator, p.pool) for p in given)
    if resources.gpus > 0:
        return (Preference("gpu", resources.gpu_type),)
    return (Preference("cpu"),)


def preferences(spec: TrainingJobSpec) -> tuple[Preference, ...]:
    return pool_preferences(spec.placement.pool_preferences, spec.resources)


def per_pod(resources: WorkerResources) -> Resources:
    return Resources.of(resources.cpu, resources.memory, resources.gpus, 1)


def gang_demand(
    key: str, spec: TrainingJobSpec, created: str = "", queue: str | None = None
) -> GangDemand:
    return GangDemand(
        key=key,
        workers=spec.workers,
        per_worker=per_pod(spec.resources),
        preferences=preferences(spec),
        cluster_selector=spec.placement.cluster_selector,
        priority=spec.run_policy.priority,
        created=created,
        queue=queue,
        spot=spec.placement.spot,
    )


def replica_demand(key: str, spec: InferenceServiceSpec) -> GangDemand:
    """One server replica as a gang of one: the pool must hold at least one replica now."""
    return GangDemand(
        key=key,
        workers=1,
        per_worker=per_pod(spec.resources),
        preferences=pool_preferences(spec.placement.pool_preferences, spec.resources),
        cluster_selector=spec.placement.cluster_selector,
        spot=spec.placement.spot,
    )


def held_by_job(
    spec: TrainingJobSpec, cluster: str, pool: str, gpus_per_worker: int, bound: int
) -> Reservation | None:
    """What a placed gang holds beyond its workers bound to nodes (no GPUs on a CPU pool)."""
    left = spec.workers - bound
    if left <= 0:
        return None
    per_worker = replace(per_pod(spec.resources), gpus=gpus_per_worker)
    return Reservation(cluster, pool, per_worker, left)


def held_by_replicas(
    spec: InferenceServiceSpec,
    cluster: str,
    pool: str,
    gpus_per_replica: int,
    wanted: int,
    bound: int,
) -> Reservation | None:
    """What a service's decided replicas in one cluster hold beyond those bound to nodes."""
    left = wanted - bound
    if left <= 0:
        return None
    per_replica = replace(per_pod(spec.resources), gpus=gpus_per_replica)
    return Reservation(cluster, pool, per_replica, left)


def job_consumption(spec: TrainingJobSpec, placement: JobPlacement) -> Consumption:
    """What an admitted gang takes from its queue where it was placed."""
    total = replace(per_pod(spec.resources), gpus=placement.gpus_per_worker).times(spec.workers)
    return Consumption(
        placement.cluster,
        placement.accelerator or None,
        total.milli_cpu,
        total.memory,
        total.gpus,
        round(placement.cost_per_hour * 1000),
    )


def running_gang(
    key: str,
    spec: TrainingJobSpec,
    placement: JobPlacement,
    queue: str | None,
    workers_on: Mapping[str, int],
    running_s: float,
    leaving_for: str | None,
) -> RunningGang:
    """An admitted job as a possible victim: `workers_on` counts its workers per node."""
    per_worker = replace(per_pod(spec.resources), gpus=placement.gpus_per_worker)
    return RunningGang(
        key=key,
        queue=queue,
        priority=spec.run_policy.priority,
        cluster=placement.cluster,
        pool=placement.pool,
        consumption=job_consumption(spec, placement),
        on_nodes={node: per_worker.times(n) for node, n in workers_on.items()},
        running_s=running_s,
        protected=running_s < spec.run_policy.min_runtime_seconds,
        leaving_for=leaving_for,
    )
