"""Gang placement: one cluster, one pool, all workers at once, or a reason.

Clusters are first narrowed by the gang's cluster selector; then, preference by preference,
each pool runs the filters of `placement.filters` (with its queue's quota checked right after
the pool is found big enough) and the passing pools are scored. A gang that waits shows the
reason of the lowest rank met: quota exceeded, then waiting for quota, then no room now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from kaon.api.resources import Resources
from kaon.placement.cost import gang_cost
from kaon.placement.filters import (
    Rejection,
    describe,
    first_rejection,
    fits_when_empty,
    gang_assignment,
    score,
)
from kaon.placement.model import GangDemand, Outcome, Placed, PoolOffer, Unplaceable, Waiting
from kaon.placement.quota import QuotaBook, consumption

__all__ = ["decide", "gang_assignment", "plan"]


def _candidates(demand: GangDemand, offers: Iterable[PoolOffer]) -> list[PoolOffer]:
    selector = demand.cluster_selector
    return [o for o in offers if selector is None or selector.matches(dict(o.cluster_labels))]


def _rejection(demand: GangDemand, offer: PoolOffer, book: QuotaBook | None) -> Rejection | None:
    never = fits_when_empty(demand, offer)
    if never is not None:
        return never
    if book is not None and demand.queue is not None:
        over = book.check(demand.queue, consumption(demand, offer, gang_cost(demand, offer)))
        if over is not None:
            return over
    return first_rejection(demand, offer)


def decide(
    demand: GangDemand, offers: Sequence[PoolOffer], book: QuotaBook | None = None
) -> Outcome:
    """Place one gang on the first preference with a passing pool (best score wins), or explain."""
    if not offers:
        return Waiting("NoClusters", "no ComputeCluster is registered yet")
    eligible = _candidates(demand, offers)
    if not eligible:
        return Unplaceable(
            "NoMatchingCluster", "no registered cluster matches spec.placement.clusterSelector"
        )
    ever_fits = False
    first_wait: Rejection | None = None
    for pref in demand.preferences:
        passing = []
        for offer in (o for o in eligible if o.matches(pref)):
            rejection = _rejection(demand, offer, book)
            if rejection is None:
                passing.append(offer)
            elif not rejection.never and (first_wait is None or rejection.rank < first_wait.rank):
                first_wait = rejection
            ever_fits = ever_fits or rejection is None or not rejection.never
        if passing:
            best = min(passing, key=score)
            counts = gang_assignment(demand.on(best), demand.workers, best.node_free)
            assert counts is not None  # the room_now filter passed
            return Placed(
                best.cluster,
                best.pool,
                best.accelerator,
                demand.on(best).gpus,
                tuple(counts),
                gang_cost(demand, best),
            )
    if not ever_fits:
        wanted = ", then ".join(p.describe() for p in demand.preferences)
        return Unplaceable(
            "NoPoolFits",
            f"no pool can ever hold {demand.workers} workers of "
            f"{describe(demand.per_worker)} (looked at {wanted})",
        )
    if first_wait is None:
        return Waiting("NoCapacity", "no pool has room")
    return Waiting(first_wait.reason, first_wait.message)


def _take(offer: PoolOffer, need: Resources, counts: Sequence[int]) -> PoolOffer:
    free = tuple(f - need.times(c) for f, c in zip(offer.node_free, counts, strict=True))
    return replace(offer, node_free=free)


def plan(
    demands: Iterable[GangDemand], offers: Sequence[PoolOffer], book: QuotaBook | None = None
) -> dict[str, Outcome]:
    """One pass over waiting gangs: priority first, then FIFO; what is placed counts at once,
    against the pool and against the gang's queue. Gangs that fit within their queue's own
    nominal quota go first; only then may the others borrow (as Kueue admits non-borrowing
    workloads first), so a lender's quota returns to the lender, not to the next borrower."""
    current = list(offers)
    ordered = sorted(demands, key=lambda d: (-d.priority, d.created, d.key))
    outcomes: dict[str, Outcome] = {}
    phases = (False, True) if book is not None and book.lends() else (True,)
    for borrowing in phases:
        if book is not None:
            book.borrowing = borrowing
        for demand in ordered:
            if isinstance(outcomes.get(demand.key), Placed | Unplaceable):
                continue
            outcome = decide(demand, current, book)
            outcomes[demand.key] = outcome
            if isinstance(outcome, Placed):
                _place(demand, outcome, current, book)
    return outcomes


def _place(
    demand: GangDemand, outcome: Placed, current: list[PoolOffer], book: QuotaBook | None
) -> None:
    i = next(
        i for i, o in enumerate(current) if (o.cluster, o.pool) == (outcome.cluster, outcome.pool)
    )
    if book is not None and demand.queue is not None:
        book.take(demand.queue, consumption(demand, current[i], outcome.cost_per_hour))
    current[i] = _take(current[i], demand.on(current[i]), outcome.workers_per_node)
