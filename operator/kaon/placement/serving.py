"""Where an InferenceService's replicas run: one pool in each of up to N clusters.

Unlike a gang, replicas are independent: a cluster is chosen when its best pool (by the
preferences, then cost) holds one replica now; the member's scheduler places the others. A
placement is sticky while its cluster is registered and not lost, so replicas do not move
between clusters on every capacity change. A service of a queue runs as many replicas as the
queue's quota allows (`replicas_within_quota`); services neither preempt nor are preempted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from kaon.placement.cost import gang_cost
from kaon.placement.decide import decide
from kaon.placement.filters import Rejection
from kaon.placement.model import GangDemand, Placed, PoolOffer, Unplaceable, Waiting
from kaon.placement.quota import Consumption, QuotaBook, consumption


@dataclass(frozen=True)
class ServicePlan:
    """The clusters (with their pool) to run in, and why fewer than wanted, if so."""

    slots: tuple[Placed, ...]
    shortfall: Waiting | Unplaceable | None = None


def place_service(
    replica: GangDemand,
    clusters: int,
    offers: Sequence[PoolOffer],
    current: Sequence[Placed],
    lost: Collection[str] = (),
) -> ServicePlan:
    """Keep the current clusters that still qualify, then add clusters up to `clusters`.

    `lost` are clusters unreachable for longer than the failover grace: their replicas are
    replaced elsewhere. A cluster that is merely not ready yet keeps its slot.
    """
    selector = replica.cluster_selector
    registered = {(o.cluster, o.pool): o for o in offers}
    kept: list[Placed] = []
    for slot in current:
        offer = registered.get((slot.cluster, slot.pool))
        if offer is None or slot.cluster in lost:
            continue
        if selector is not None and not selector.matches(dict(offer.cluster_labels)):
            continue
        if len(kept) < clusters:
            kept.append(slot)
    shortfall: Waiting | Unplaceable | None = None
    while len(kept) < clusters:
        taken = {s.cluster for s in kept} | set(lost)
        outcome = decide(replica, [o for o in offers if o.cluster not in taken])
        if not isinstance(outcome, Placed):
            if kept:
                outcome = Waiting(
                    "SpreadIncomplete",
                    f"running in {len(kept)} of {clusters} clusters: {outcome.message}",
                )
            shortfall = outcome
            break
        kept.append(
            Placed(outcome.cluster, outcome.pool, outcome.accelerator, outcome.gpus_per_worker)
        )
    return ServicePlan(tuple(kept), shortfall)


@dataclass(frozen=True)
class QuotaFit:
    """How many of a service's replicas (over how many of its clusters) its queue allows."""

    replicas: int
    clusters: int
    used: tuple[Consumption, ...] = ()
    problem: Rejection | None = None  # why fewer than wanted, if so


def replicas_within_quota(
    replica: GangDemand,
    slots: Sequence[PoolOffer | None],
    wanted: int,
    book: QuotaBook,
    split: Callable[[int, int], list[int]],
) -> QuotaFit:
    """The most replicas, up to `wanted`, that fit the replica's queue (what others use is in
    `book`), split over the first clusters as `split` does. A slot whose pool is not offered
    now counts nothing against the quota."""
    assert replica.queue is not None
    first: Rejection | None = None
    for n in range(wanted, 0, -1):
        clusters = min(len(slots), n)
        sim, used, problem = book.copy(), [], None
        for offer, count in zip(slots[:clusters], split(n, clusters), strict=True):
            if offer is None:
                continue
            gang = replace(replica, workers=count)
            need = consumption(gang, offer, gang_cost(gang, offer))
            problem = sim.check(replica.queue, need)
            if problem is not None:
                break
            sim.take(replica.queue, need)
            used.append(need)
        if problem is None:
            return QuotaFit(n, clusters, tuple(used), first)
        first = first or problem
    return QuotaFit(0, 0, (), first)
