"""Where an InferenceService's replicas run: one pool in each of up to N clusters.

Unlike a gang, replicas are independent: a cluster is chosen when its best pool (by the
preferences, then cost) holds one replica now; the member's scheduler places the others. A
placement is sticky while its cluster is registered and not lost, so replicas do not move
between clusters on every capacity change.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kaon.placement.decide import decide
from kaon.placement.model import GangDemand, Placed, PoolOffer, Unplaceable, Waiting


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
