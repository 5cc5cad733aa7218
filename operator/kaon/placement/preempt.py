"""Preemption: which running gangs a waiting one may push out, in one cluster, fewest first.

Only a queue's gangs preempt, as its spec.preemption allows. Two kinds, as Kueue has them:
a queue reclaiming the nominal quota it lent (victims: gangs of other queues of its cohort
that borrow, and lower-priority gangs of its own queue; the gang must then fit within its
queue's nominal amounts), and priority within one queue (victims: its lower-priority gangs).
Victims are chosen in the cluster of one pool only, never across members; a gang still
inside its minimum runtime, or already leaving, is never a victim. Among the pools of the
first preference with any answer, the fewest victims win, then the lowest priority, then
the least work since their start, then the pool's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from kaon.api.resources import Resources
from kaon.placement.filters import fits_when_empty, score
from kaon.placement.model import GangDemand, PoolOffer
from kaon.placement.quota import Consumption, QuotaBook, rejection

Kind = Literal["Reclaim", "Priority"]
KINDS: tuple[Kind, ...] = ("Reclaim", "Priority")


@dataclass(frozen=True)
class RunningGang:
    """An admitted gang as a possible victim."""

    key: str
    queue: str | None
    priority: int
    cluster: str
    pool: str
    consumption: Consumption
    on_nodes: Mapping[str, Resources]  # what its pods hold on each node
    running_s: float  # since it was admitted: the work a preemption interrupts
    protected: bool = False  # inside its minRuntimeSeconds
    leaving_for: str | None = None  # already being preempted, for this gang


@dataclass(frozen=True)
class Preemption:
    preemptor: str
    kind: Kind
    cluster: str
    pool: str
    victims: tuple[RunningGang, ...]
    queue: str | None = None  # the preemptor's

    def describe(self) -> str:
        names = ", ".join(v.key for v in self.victims)
        why = "to reclaim its queue's lent quota" if self.kind == "Reclaim" else "by priority"
        return f"preempting {names} in cluster {self.cluster} {why}"


def _may_preempt(kind: Kind, demand: GangDemand, victim: RunningGang, book: QuotaBook) -> bool:
    policy = book.queues.get(demand.queue or "")
    if policy is None or victim.protected or victim.leaving_for is not None:
        return False  # only a queue's gangs preempt
    if victim.queue == demand.queue:
        return policy.within_queue and victim.priority < demand.priority
    cohort = policy.cohort
    return (
        kind == "Reclaim"
        and policy.reclaim
        and victim.queue is not None
        and cohort is not None
        and book.cohort_of(victim.queue) == cohort
        and book.borrows(victim.queue, victim.consumption)
    )


def freed(offer: PoolOffer, victims: Sequence[RunningGang]) -> PoolOffer:
    """The pool as it would be once `victims` are gone (only theirs on its nodes count)."""
    free = list(offer.node_free)
    index = {name: i for i, name in enumerate(offer.node_names)}
    for v in victims:
        if v.pool != offer.pool:
            continue
        for node, held in v.on_nodes.items():
            if node in index:
                free[index[node]] = free[index[node]] + held
    return replace(offer, node_free=tuple(free))


def release(book: QuotaBook, victims: Sequence[RunningGang]) -> None:
    """Give back to their queues what `victims` hold."""
    for v in victims:
        if v.queue is not None:
            book.release(v.queue, v.consumption)


def _fits(
    demand: GangDemand,
    offer: PoolOffer,
    book: QuotaBook,
    victims: Sequence[RunningGang],
    borrowing: bool,
) -> bool:
    sim = book.copy()
    sim.borrowing = borrowing
    release(sim, victims)
    return rejection(demand, freed(offer, victims), sim) is None


def fewest_victims(
    demand: GangDemand,
    offer: PoolOffer,
    book: QuotaBook,
    running: Sequence[RunningGang],
    kind: Kind,
) -> tuple[RunningGang, ...] | None:
    """A small set of victims that lets the gang onto the pool: one victim alone if any will
    do; else greedily (lowest priority and newest first, or biggest first), each victim given
    back afterwards if the gang fits without it. Fewest victims, then least work lost."""
    borrowing = kind == "Priority"
    candidates = [
        r for r in running if r.cluster == offer.cluster and _may_preempt(kind, demand, r, book)
    ]
    singles = [(r,) for r in candidates if _fits(demand, offer, book, (r,), borrowing)]
    if singles:
        return min(singles, key=_cost)
    orders = (
        sorted(candidates, key=lambda r: (r.priority, r.running_s, r.key)),
        sorted(candidates, key=lambda r: (r.priority, -_size(r), r.key)),
    )
    found = [_greedy(demand, offer, book, order, borrowing) for order in orders]
    return min((f for f in found if f), key=_cost, default=None)


def _size(r: RunningGang) -> int:
    return sum(h.gpus * 1_000_000 + h.milli_cpu for h in r.on_nodes.values())


def _cost(victims: tuple[RunningGang, ...]) -> tuple[int, int, float, tuple[str, ...]]:
    """Fewest victims, then the lowest priority among them, then the least work lost."""
    return (
        len(victims),
        max(v.priority for v in victims),
        sum(v.running_s for v in victims),
        tuple(v.key for v in victims),
    )


def _greedy(
    demand: GangDemand,
    offer: PoolOffer,
    book: QuotaBook,
    order: Sequence[RunningGang],
    borrowing: bool,
) -> tuple[RunningGang, ...] | None:
    chosen: list[RunningGang] = []
    for victim in order:
        if _fits(demand, offer, book, chosen, borrowing):
            break
        chosen.append(victim)
    if not chosen or not _fits(demand, offer, book, chosen, borrowing):
        return None
    for victim in reversed(list(chosen)):
        trial = [v for v in chosen if v is not victim]
        if _fits(demand, offer, book, trial, borrowing):
            chosen = trial
    return tuple(chosen)


def find_preemption(
    demand: GangDemand,
    offers: Sequence[PoolOffer],
    book: QuotaBook,
    running: Sequence[RunningGang],
) -> Preemption | None:
    selector = demand.cluster_selector
    eligible = [
        o
        for o in offers
        if o.available
        and (selector is None or selector.matches(dict(o.cluster_labels)))
        and fits_when_empty(demand, o) is None
    ]
    for pref in demand.preferences:
        options = []
        for offer in (o for o in eligible if o.matches(pref)):
            for kind in KINDS:
                victims = fewest_victims(demand, offer, book, running, kind)
                if victims:
                    options.append(((*_cost(victims), score(demand, offer)), offer, victims))
        if options:
            _, offer, victims = min(options, key=lambda o: o[0])
            reclaim = any(v.queue != demand.queue for v in victims)
            found: Kind = "Reclaim" if reclaim else "Priority"
            return Preemption(demand.key, found, offer.cluster, offer.pool, victims, demand.queue)
    return None
