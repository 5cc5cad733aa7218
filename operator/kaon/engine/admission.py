"""Admission: the one path by which any workload gets capacity.

Every controller that holds capacity registers a holder: a function listing its reservations
(a placed job's workers not bound to nodes yet, a service's decided replicas not bound yet).
Offers are the fleet's free capacity less all of them, so what one decision took counts for
the next from the moment it is made, whichever kind made it. Jobs' gangs are admitted in a
batch pass and services' replicas per reconcile, both through `placement.decide`'s filters
and score.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from kaon.api.names import ObjectKey
from kaon.engine.fleet import Fleet
from kaon.placement import (
    GangDemand,
    Placed,
    PoolOffer,
    Reservation,
    ServicePlan,
    place_service,
)
from kaon.placement.decide import PassResult, plan_pass
from kaon.placement.preempt import RunningGang
from kaon.placement.quota import QuotaBook

Holder = Callable[[], Iterable[tuple[ObjectKey, Reservation]]]


class Admission:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._holders: list[tuple[str, Holder]] = []

    def register(self, kind: str, holder: Holder) -> None:
        self._holders.append((kind, holder))

    def reservations(self, exclude: tuple[str, ObjectKey] | None = None) -> list[Reservation]:
        return [
            r
            for kind, holder in self._holders
            for key, r in holder()
            if exclude is None or (kind, key) != exclude
        ]

    def offers(self, exclude: tuple[str, ObjectKey] | None = None) -> list[PoolOffer]:
        """The fleet's pools with every reservation taken out (but `exclude`'s own)."""
        return self.fleet.offers(self.reservations(exclude))

    def admit_gangs(
        self,
        demands: Sequence[GangDemand],
        book: QuotaBook | None = None,
        running: Sequence[RunningGang] = (),
    ) -> PassResult:
        """Where waiting gangs go, and whom those that still wait preempt."""
        return plan_pass(demands, self.offers(), book, running)

    def admit_replicas(
        self,
        kind: str,
        key: ObjectKey,
        replica: GangDemand,
        clusters: int,
        current: Sequence[Placed],
        lost: Collection[str],
    ) -> ServicePlan:
        """Where a service's replicas run; its own reservations do not count against it."""
        return place_service(replica, clusters, self.offers((kind, key)), current, lost)
