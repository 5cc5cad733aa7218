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
    ReplicaEndpoint,
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


def at_zero_or_not(desired: int, scale_to_zero: bool, idle_s: float, idle_after_s: int) -> int:
    """A service that may scale to zero (replicas.min 0) runs none once idle (no request
    answered or held) for `idle_after_s`, and at least one until then."""
    if not scale_to_zero:
        return desired
    return 0 if idle_s >= idle_after_s else max(desired, 1)


def busy(loads: Sequence[Load]) -> bool:
    """Some replica answered a request in its last report's window, or has one in flight."""
    return any(load.rps > 0 or load.inflight > 0 for load in loads)


def split_over(total: int, clusters: int) -> list[int]:
    """Replicas per cluster: as even as possible, earlier clusters first, at least one each
    (none at all when scaled to zero)."""
    if clusters <= 0:
        return []
    if total <= 0:
        return [0] * clusters
    total = max(total, clusters)
    base, extra = divmod(total, clusters)
    return [base + (1 if i < extra else 0) for i in range(clusters)]


def canary_split(replicas: int, percent: int) -> tuple[int, int]:
    """(stable, canary) replicas behind one Service for a canary share of `percent`.

    A share strictly between 0 and 100 needs one replica of each revision, so such a cluster
    runs at least two; otherwise the nearest ratio is taken (status reports it).
    """
    if percent <= 0 or replicas <= 0:
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
    endpoints: tuple[tuple[str, str], ...] = ()  # (HOST:PORT, revision) of ready replicas

    @property
    def ready(self) -> bool:
        """Every revision it runs has a ready replica."""
        return (self.stable == 0 or self.ready_stable > 0) and (
            self.canary == 0 or self.ready_canary > 0
        )


_with = with_generation
_cond = with_condition
AT_ZERO = (
    "no replica runs after an idle period: the router holds the next request until one is ready"
)


def _without(s: InferenceServiceStatus, type_: str) -> InferenceServiceStatus:
    return s.model_copy(update={"conditions": [c for c in s.conditions if c.type != type_]})


def not_serving(
    s: InferenceServiceStatus, reason: str, message: str, gen: int, now: str, failed: bool = False
) -> InferenceServiceStatus:
    """Nothing runs: not yet (model not ready, no pool with room), or ever (failed)."""
    s = _cond(s, "Placed", False, reason, message, gen, now)
    s = _cond(s, "Ready", False, reason, message, gen, now)
    state = "Failed" if failed else "Waiting"
    return _with(s, gen, state=state, url="", clusters=[], pools="", replicas=0, ready_replicas=0)


def _canary_status(views: Sequence[ClusterView], percent: int, routed: bool) -> CanaryStatus:
    """Through the router the share is the requested one while both revisions have a ready
    replica (all to the one that has); behind a Service alone it is the replica ratio."""
    total = sum(v.stable + v.canary for v in views)
    canary = sum(v.canary for v in views)
    if routed:
        stable_ready = any(v.ready_stable for v in views)
        canary_ready = any(v.ready_canary for v in views)
        effective = percent if stable_ready and canary_ready else (100 if canary_ready else 0)
    else:
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
    address: str = "",
    scale_to_zero: bool = False,
) -> InferenceServiceStatus:
    """The status of a placed service from what each cluster wants and has ready; `address`
    is its URL through the router (else the first cluster's Service is)."""
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
    if desired == 0:
        s = _cond(s, "Ready", True, "ScaledToZero", AT_ZERO, gen, now)
        s = _cond(s, "ScaledToZero", True, "Idle", AT_ZERO, gen, now)
        state = "ScaledToZero"
    elif len(ready_clusters) == len(views):
        s = _cond(s, "Ready", True, "ReplicasReady", counts, gen, now)
        state = "Degraded" if shortfall else "Ready"
    else:
        reason = "ReplicasNotReady" if not ready_clusters else "ClusterNotReady"
        s = _cond(s, "Ready", False, reason, counts, gen, now)
        state = "Degraded" if ready_clusters else "Deploying"
    if desired > 0 and scale_to_zero:
        s = _cond(s, "ScaledToZero", False, "Serving", f"{desired} replicas wanted", gen, now)
    elif desired > 0:
        s = _without(s, "ScaledToZero")
    canary = None
    if canary_percent is not None:
        canary = _canary_status(views, canary_percent, routed=bool(address))
        exact = canary.effective_percent == canary_percent
        replicas = f"{canary.replicas} of {sum(v.stable + v.canary for v in views)} replicas"
        if address:
            message = (
                f"requested {canary_percent}%, split by the router: {replicas} are canaries, "
                f"{canary.effective_percent}% of requests go to ready ones"
            )
        else:
            message = f"requested {canary_percent}%, {replicas} give {canary.effective_percent}%"
        s = _cond(s, "CanaryShare", exact, "Exact" if exact else "Approximated", message, gen, now)
    else:
        s = _without(s, "CanaryShare")
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
            endpoints=[ReplicaEndpoint(address=a, revision=r) for a, r in v.endpoints],
        )
        for v in views
    ]
    return _with(
        s,
        gen,
        state=state,
        url=address or (views[0].url if views else ""),
        model=model,
        clusters=clusters,
        pools=",".join(f"{c.cluster}/{c.pool}" for c in clusters),
        replicas=sum(c.replicas for c in clusters),
        ready_replicas=sum(c.ready_replicas for c in clusters),
        desired_replicas=desired,
        last_scale_time=last_scale_time,
        canary=canary,
    )
