"""A TrainingJob's spec as a gang demand."""

from __future__ import annotations

from kaon.api.trainingjob import TrainingJobSpec
from kaon.clusters.resources import Resources
from kaon.placement.model import GangDemand, Preference


def preferences(spec: TrainingJobSpec) -> tuple[Preference, ...]:
    """The ordered pool preferences, or the default: GPU pools for a GPU job, else CPU pools."""
    given = spec.placement.pool_preferences
    if given:
        return tuple(Preference(p.type, p.accelerator, p.pool) for p in given)
    if spec.resources.gpus > 0:
        return (Preference("gpu", spec.resources.gpu_type),)
    return (Preference("cpu"),)


def gang_demand(key: str, spec: TrainingJobSpec, created: str = "") -> GangDemand:
    r = spec.resources
    return GangDemand(
        key=key,
        workers=spec.workers,
        per_worker=Resources.of(r.cpu, r.memory, r.gpus, 1),
        preferences=preferences(spec),
        cluster_selector=spec.placement.cluster_selector,
        priority=spec.run_policy.priority,
        created=created,
    )
