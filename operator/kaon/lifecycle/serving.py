"""InferenceService decisions: replicas from load, their split over clusters and revisions, and
the status that says where they run and why not."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from kaon.api.inferenceservice import (
    CanaryStatus,
    ClusterServing,
    InferenceServiceStatus,
    Replicas,
    ResolvedModel,
)
from kaon.lifecycle.conditions import with_condition, with_generation

STALE_LOAD_S = 30.0  # a load report older than this is ignored (its server is gone or stuck)


@dataclass(frozen=True)
class Load:
    """One server's load report (its pod annotation)."""

    inflight: float
    rps: float
    ts: float
    drift: float | None = None  # the largest per-feature PSI of its recent inputs
    drift_feature: int | None = None


def parse_load(raw: str | None, now: float) -> Load | None:
    """A fresh load report, or None when absent, malformed or stale."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
        load = Load(float(record["inflight"]), float(record.get("rps", 0.0)), float(record["ts"]))
        drift, feature = record.get("drift"), record.get("driftFeature")
        measured = isinstance(drift, int | float) and not isinstance(drift, bool)
        if measured and math.isfinite(drift) and drift >= 0:
            feature = feature if isinstance(feature, int) and feature >= 0 else None
            load = Load(load.inflight, load.rps, load.ts, float(drift), feature)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not math.isfinite(load.inflight) or load.inflight < 0 or now - load.ts > STALE_LOAD_S:
        return None
    return load


@dataclass(frozen=True)
class Report:
    """A replica's load report and where the replica runs."""

    cluster: str
    revision: str
    load: Load


def with_drift(
    s: InferenceServiceStatus, reports: Sequence[Report], threshold: float, gen: int, now: str
) -> InferenceServiceStatus:
    """The Drift condition from the replicas' fresh reports: True once any replica's inputs
    drift past the threshold, False while all that measured are within it, Unknown while none
    has measured (too few requests, or an artifact without reference statistics). Messages
    carry no measured values (those change every report and are in the metrics), so the
    condition is written only when it changes."""
    measured = [r for r in reports if r.load.drift is not None]
    if not measured:
        message = "no replica has measured its recent inputs yet (200 samples are needed)"
        return _cond(s, "Drift", "Unknown", "NotMeasured", message, gen, now)
    worst = max(measured, key=lambda r: r.load.drift or 0.0)
    if (worst.load.drift or 0.0) > threshold:
        feature = worst.load.drift_feature
        on = f" on input feature {feature}" if feature is not None else ""
        message = (
            f"recent inputs of a {worst.revision} replica in {worst.cluster} differ from the "
            f"training inputs by more than PSI {threshold:g}{on}"
        )
        return _cond(s, "Drift", True, "InputDrift", message, gen, now)
    message = f"recent inputs are within PSI {threshold:g} of the training inputs"
    return _cond(s, "Drift", False, "NoDrift", message, gen, now)


def _clamp(n: int, bounds: Replicas) -> int:
    return max(bounds.min, min(bounds.max, n))


def recommend(loads: Sequence[Load], target: float, bounds: Replicas) -> int | None:
    """Replicas that keep in-flight requests per replica at the target; None without reports."""
    if not loads:
        return None
    total = sum(load.inflight for load in loads)
    return _clamp(math.ceil(total / target - 1e-9), bounds)


def next_desired(
    current: int,
    recommended: int | None,
    bounds: Replicas,
    since_last_scale_s: float | None,
    scale_down_delay_s: int,
) -> int:
    """Scale up at once; scale down only once the delay has passed since the last change."""
    base = _clamp(current or bounds.min, bounds)
    if recommended is None or recommended == base:
        return base
    if recommended > base:
        return recommended
    if since_last_scale_s is None or since_last_scale_s >= scale_down_delay_s:
        return recommended
    return base


def split_over(total: int, clusters: int) -> list[int]:
    """Replicas per cluster: as even as possible, earlier clusters first, at least one each."""
    if clusters <= 0:
        return []
    total = max(total, clusters)
    base, extra = divmod(total, clusters)
    return [base + (1 if i < extra else 0) for i in range(clusters)]


def canary_split(replicas: int, percent: int) -> tuple[int, int]:
    """(stable, canary) replicas behind one Service for a canary share of `percent`.

    A share strictly between 0 and 100 needs one replica of each revision, so such a cluster
    runs at least two; otherwise the nearest ratio is taken (status reports it).
    """
    if percent <= 0:
        return replicas, 0
    if percent >= 100:
        return 0, replicas
    replicas = max(replicas, 2)
    canary = min(max(round(replicas * percent / 100), 1), replicas - 1)
    return replicas - canary, canary


@dataclass(frozen=True)
class Slot:
    """Where the service's replicas run in one cluster."""

    cluster: str
    pool: str
    accelerator: str | None = None
    gpus_per_replica: int = 0


@dataclass(frozen=True)
class ClusterView:
    """What is wanted and what is ready in one cluster."""

    slot: Slot
    url: str
    stable: int
    canary: int
    ready_stable: int
    ready_canary: int

    @property
    def ready(self) -> bool:
        """Every revision it runs has a ready replica."""
        return (self.stable == 0 or self.ready_stable > 0) and (
            self.canary == 0 or self.ready_canary > 0
        )


_with = with_generation
_cond = with_condition


def not_serving(
    s: InferenceServiceStatus, reason: str, message: str, gen: int, now: str, failed: bool = False
) -> InferenceServiceStatus:
    """Nothing runs: not yet (model not ready, no pool with room), or ever (failed)."""
    s = _cond(s, "Placed", False, reason, message, gen, now)
    s = _cond(s, "Ready", False, reason, message, gen, now)
    state = "Failed" if failed else "Waiting"
    return _with(s, gen, state=state, url="", clusters=[], pools="", replicas=0, ready_replicas=0)


def _canary_status(views: Sequence[ClusterView], percent: int) -> CanaryStatus:
    total = sum(v.stable + v.canary for v in views)
    canary = sum(v.canary for v in views)
    effective = round(100 * canary / total) if total else 0
    return CanaryStatus(requested_percent=percent, effective_percent=effective, replicas=canary)


def serving(
    s: InferenceServiceStatus,
    gen: int,
    now: str,
    model: ResolvedModel,
    views: Sequence[ClusterView],
    shortfall: tuple[str, str] | None,
    desired: int,
    last_scale_time: str | None,
    canary_percent: int | None,
) -> InferenceServiceStatus:
    """The status of a placed service from what each cluster wants and has ready."""
    where = ", ".join(f"{v.slot.cluster} (pool {v.slot.pool})" for v in views)
    if shortfall is None:
        s = _cond(s, "Placed", True, "Placed", f"replicas in {where}", gen, now)
    else:
        s = _cond(s, "Placed", True, *shortfall, gen, now)
    ready_clusters = [v for v in views if v.ready]
    counts = "; ".join(
        f"{v.slot.cluster}: {v.ready_stable + v.ready_canary}/{v.stable + v.canary} ready"
        for v in views
    )
    if len(ready_clusters) == len(views):
        s = _cond(s, "Ready", True, "ReplicasReady", counts, gen, now)
        state = "Degraded" if shortfall else "Ready"
    else:
        reason = "ReplicasNotReady" if not ready_clusters else "ClusterNotReady"
        s = _cond(s, "Ready", False, reason, counts, gen, now)
        state = "Degraded" if ready_clusters else "Deploying"
    canary = None
    if canary_percent is not None:
        canary = _canary_status(views, canary_percent)
        exact = canary.effective_percent == canary_percent
        message = (
            f"requested {canary_percent}%, {canary.replicas} of "
            f"{sum(v.stable + v.canary for v in views)} replicas give {canary.effective_percent}%"
        )
        s = _cond(s, "CanaryShare", exact, "Exact" if exact else "Approximated", message, gen, now)
    else:
        s = s.model_copy(
            update={"conditions": [c for c in s.conditions if c.type != "CanaryShare"]}
        )
    clusters = [
        ClusterServing(
            cluster=v.slot.cluster,
            pool=v.slot.pool,
            accelerator=v.slot.accelerator or "",
            gpus_per_replica=v.slot.gpus_per_replica,
            url=v.url,
            replicas=v.stable + v.canary,
            ready_replicas=v.ready_stable + v.ready_canary,
            canary_replicas=v.canary,
        )
        for v in views
    ]
    return _with(
        s,
        gen,
        state=state,
        url=views[0].url if views else "",
        model=model,
        clusters=clusters,
        pools=",".join(f"{c.cluster}/{c.pool}" for c in clusters),
        replicas=sum(c.replicas for c in clusters),
        ready_replicas=sum(c.ready_replicas for c in clusters),
        desired_replicas=desired,
        last_scale_time=last_scale_time,
        canary=canary,
    )
