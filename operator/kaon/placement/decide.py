"""Gang placement: one cluster, one pool, all workers at once, or a reason.

Clusters are first narrowed by the gang's cluster selector; then, preference by preference,
each pool runs the filters of `placement.filters` and the passing pools are scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from kaon.api.resources import Resources
from kaon.placement.filters import describe, first_rejection, gang_assignment, score
from kaon.placement.model import GangDemand, Outcome, Placed, PoolOffer, Unplaceable, Waiting

__all__ = ["decide", "gang_assignment", "plan"]


def _candidates(demand: GangDemand, offers: Iterable[PoolOffer]) -> list[PoolOffer]:
    selector = demand.cluster_selector
    return [o for o in offers if selector is None or selector.matches(dict(o.cluster_labels))]


def decide(demand: GangDemand, offers: Sequence[PoolOffer]) -> Outcome:
    """Place one gang on the first preference with a passing pool (best score wins), or explain."""
    if not offers:
        return Waiting("NoClusters", "no ComputeCluster is registered yet")
    eligible = _candidates(demand, offers)
    if not eligible:
        return Unplaceable(
            "NoMatchingCluster", "no registered cluster matches spec.placement.clusterSelector"
        )
    ever_fits = False
    first_wait: tuple[str, str] | None = None
    for pref in demand.preferences:
        passing = []
        for offer in (o for o in eligible if o.matches(pref)):
            rejection = first_rejection(demand, offer)
            if rejection is None:
                passing.append(offer)
            elif not rejection.never:
                first_wait = first_wait or (rejection.reason, rejection.message)
            ever_fits = ever_fits or rejection is None or not rejection.never
        if passing:
            best = min(passing, key=score)
            counts = gang_assignment(demand.on(best), demand.workers, best.node_free)
            assert counts is not None  # the room_now filter passed
            return Placed(
                best.cluster, best.pool, best.accelerator, demand.on(best).gpus, tuple(counts)
            )
    if not ever_fits:
        wanted = ", then ".join(p.describe() for p in demand.preferences)
        return Unplaceable(
            "NoPoolFits",
            f"no pool can ever hold {demand.workers} workers of "
            f"{describe(demand.per_worker)} (looked at {wanted})",
        )
    reason, message = first_wait or ("NoCapacity", "no pool has room")
    return Waiting(reason, message)


def _take(offer: PoolOffer, need: Resources, counts: Sequence[int]) -> PoolOffer:
    free = tuple(f - need.times(c) for f, c in zip(offer.node_free, counts, strict=True))
    return replace(offer, node_free=free)


def plan(demands: Iterable[GangDemand], offers: Sequence[PoolOffer]) -> dict[str, Outcome]:
    """One pass over waiting gangs: priority first, then FIFO; what is placed counts at once."""
    current = list(offers)
    outcomes: dict[str, Outcome] = {}
    for demand in sorted(demands, key=lambda d: (-d.priority, d.created, d.key)):
        outcome = decide(demand, current)
        outcomes[demand.key] = outcome
        if isinstance(outcome, Placed):
            i = next(
                i
                for i, o in enumerate(current)
                if (o.cluster, o.pool) == (outcome.cluster, outcome.pool)
            )
            need = demand.on(current[i])
            current[i] = _take(current[i], need, outcome.workers_per_node)
    return outcomes
