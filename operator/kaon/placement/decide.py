"""Gang placement: one cluster, one pool, all workers at once, or a reason.

Clusters are first narrowed by the gang's cluster selector; then, preference by preference,
each pool runs the filters of `placement.filters` (with its queue's quota checked right after
the pool is found big enough) and the passing pools are scored. A gang that waits shows the
reason of the lowest rank met: quota exceeded, then waiting for quota, then preemption
pending, then no room now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from kaon.api.resources import Resources
from kaon.placement.cost import gang_cost
from kaon.placement.filters import Rejection, describe, gang_assignment, score
from kaon.placement.model import GangDemand, Outcome, Placed, PoolOffer, Unplaceable, Waiting
from kaon.placement.preempt import Preemption, RunningGang, find_preemption, freed, release
from kaon.placement.quota import QuotaBook, consumption, gpu_prices, rejection

__all__ = ["PassResult", "decide", "gang_assignment", "plan", "plan_pass"]

# Preemption searches in one pass, at most: each one simulates pools with and without victims.
PREEMPTION_SEARCHES = 64
NOT_BY_PREEMPTION = frozenset({"QuotaExceeded", "NoClusters"})
WHY_LENGTH = 253


def _why(
    demand: GangDemand,
    n: int,
    wanted: str,
    ranked: Sequence[PoolOffer],
    cost: float,
    rejected: Sequence[tuple[PoolOffer, Rejection]],
) -> str:
    """The choice in a sentence: which preference and rule chose it, and the best alternative
    (a pool preferred but rejected, else the runner-up, else a rejected pool of this rank)."""
    if len(ranked) == 1:
        rule = "the only pool with room"
    elif round(gang_cost(demand, ranked[1]), 6) == round(cost, 6):
        rule = f"as cheap as the next of {len(ranked)} pools with room, with more free"
    else:
        rule = f"the cheapest of {len(ranked)} pools with room"
    why = f"preference {n} ({wanted}): {cost:.4g}/h, {rule}"
    waiting = [(o, r) for o, r in rejected if not r.never]
    if waiting and waiting[0][0].matches(demand.preferences[0]) and n > 1:
        offer, r = waiting[0]
        why += f"; preferred {offer.where()} rejected: {r.reason}"
    elif len(ranked) > 1:
        runner = ranked[1]
        why += f"; next {runner.where()} at {gang_cost(demand, runner):.4g}/h"
    elif rejected:
        offer, r = rejected[0]
        why += f"; {offer.where()} rejected: {r.reason}"
    return why[:WHY_LENGTH]


def _candidates(demand: GangDemand, offers: Iterable[PoolOffer]) -> list[PoolOffer]:
    selector = demand.cluster_selector
    return [o for o in offers if selector is None or selector.matches(dict(o.cluster_labels))]


def rank_nodes(names: Sequence[str], counts: Sequence[int]) -> tuple[str, ...]:
    """Each rank's node, ranks in node order; none where the nodes' names are unknown."""
    if len(names) != len(counts):
        return ()
    return tuple(name for name, count in zip(names, counts, strict=True) for _ in range(count))


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
    passed_over: list[tuple[PoolOffer, Rejection]] = []  # pools of earlier preferences
    for n, pref in enumerate(demand.preferences, 1):
        passing = []
        rejected: list[tuple[PoolOffer, Rejection]] = []
        for offer in (o for o in eligible if o.matches(pref)):
            found = rejection(demand, offer, book)
            if found is None:
                passing.append(offer)
            else:
                rejected.append((offer, found))
                if not found.never and (first_wait is None or found.rank < first_wait.rank):
                    first_wait = found
            ever_fits = ever_fits or found is None or not found.never
        if passing:
            ranked = sorted(passing, key=lambda o: score(demand, o))
            best = ranked[0]
            counts = gang_assignment(demand.on(best), demand.workers, best.node_free)
            assert counts is not None  # the room_now filter passed
            cost = gang_cost(demand, best)
            return Placed(
                best.cluster,
                best.pool,
                best.accelerator,
                demand.on(best).gpus,
                tuple(counts),
                cost,
                _why(demand, n, pref.describe(), ranked, cost, passed_over + rejected),
                rank_nodes(best.node_names, counts),
            )
        passed_over += rejected
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


@dataclass
class PassResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)


def plan(
    demands: Iterable[GangDemand], offers: Sequence[PoolOffer], book: QuotaBook | None = None
) -> dict[str, Outcome]:
    return plan_pass(demands, offers, book).outcomes


def plan_pass(
    demands: Iterable[GangDemand],
    offers: Sequence[PoolOffer],
    book: QuotaBook | None = None,
    running: Sequence[RunningGang] = (),
) -> PassResult:
    """One pass over waiting gangs: priority first, then FIFO; what is placed counts at once,
    against the pool and against the gang's queue. Gangs that fit within their queue's own
    nominal quota go first; only then may the others borrow (as Kueue admits non-borrowing
    workloads first), so a lender's quota returns to the lender, not to the next borrower.
    Borrowing goes by fair share: the queue of the lowest weighted dominant share next, the
    longest-waiting gang first among equals. Gangs still waiting may then preempt."""
    current = list(offers)
    ordered = sorted(demands, key=lambda d: (-d.priority, d.created, d.key))
    result = PassResult()
    if book is not None:
        book.prices = gpu_prices(current)
    if book is not None and book.lends():
        book.borrowing = False
        _admit(ordered, current, book, result.outcomes)
        book.borrowing = True
        _admit_fairly(ordered, current, book, result.outcomes)
    else:
        _admit(ordered, current, book, result.outcomes)
    if book is not None:  # only a queue's gangs preempt
        _preempt(ordered, current, book, running, result)
    return result


def _admit(
    ordered: Iterable[GangDemand],
    current: list[PoolOffer],
    book: QuotaBook | None,
    outcomes: dict[str, Outcome],
) -> None:
    for demand in ordered:
        if isinstance(outcomes.get(demand.key), Placed | Unplaceable):
            continue
        outcome = decide(demand, current, book)
        outcomes[demand.key] = outcome
        if isinstance(outcome, Placed):
            _place(demand, outcome, current, book)


def _admit_fairly(
    ordered: Sequence[GangDemand],
    current: list[PoolOffer],
    book: QuotaBook,
    outcomes: dict[str, Outcome],
) -> None:
    """Each queue's gangs in order; the queue with the lowest share (then the oldest head)
    goes next, its share counted again after each gang it places."""
    lines: dict[str | None, list[GangDemand]] = defaultdict(list)
    for demand in reversed(ordered):
        if not isinstance(outcomes.get(demand.key), Placed | Unplaceable):
            lines[demand.queue].append(demand)  # reversed: the next one is last
    while lines:
        queue = min(lines, key=lambda q: (book.share(q), lines[q][-1].created, q or ""))
        demand = lines[queue].pop()
        if not lines[queue]:
            del lines[queue]
        _admit((demand,), current, book, outcomes)


def _preempt(
    ordered: Sequence[GangDemand],
    current: list[PoolOffer],
    book: QuotaBook,
    running: Sequence[RunningGang],
    result: PassResult,
) -> None:
    leaving: dict[str, list[str]] = defaultdict(list)
    for r in running:
        if r.leaving_for is not None:
            leaving[r.leaving_for].append(r.key)
    taken: set[str] = set()
    searches = 0
    for demand in ordered:
        outcome = result.outcomes.get(demand.key)
        if demand.queue is None or not isinstance(outcome, Waiting):
            continue  # only a queue's gangs preempt
        if outcome.reason in NOT_BY_PREEMPTION:
            continue
        if demand.key in leaving:
            names = ", ".join(sorted(leaving[demand.key]))
            result.outcomes[demand.key] = Waiting(
                "PreemptionPending", f"waiting for preempted {names} to save and stop"
            )
            continue
        if searches >= PREEMPTION_SEARCHES:
            break
        searches += 1
        found = find_preemption(demand, current, book, [r for r in running if r.key not in taken])
        if found is None:
            continue
        taken.update(v.key for v in found.victims)
        result.preemptions.append(found)
        result.outcomes[demand.key] = Waiting("PreemptionPending", found.describe())
        _count_preemption(found, demand, current, book)


def _count_preemption(
    p: Preemption, demand: GangDemand, current: list[PoolOffer], book: QuotaBook
) -> None:
    """Within this pass the victims are gone and the preemptor placed: no later gang of the
    pass counts on what it will take."""
    i = next(i for i, o in enumerate(current) if (o.cluster, o.pool) == (p.cluster, p.pool))
    current[i] = freed(current[i], p.victims)
    release(book, p.victims)
    need = demand.on(current[i])
    counts = gang_assignment(need, demand.workers, current[i].node_free)
    if counts is not None:
        _place(
            demand,
            Placed(p.cluster, p.pool, None, 0, tuple(counts), gang_cost(demand, current[i])),
            current,
            book,
        )


def _take(offer: PoolOffer, need: Resources, counts: Sequence[int]) -> PoolOffer:
    free = tuple(f - need.times(c) for f, c in zip(offer.node_free, counts, strict=True))
    return replace(offer, node_free=free)


def _place(
    demand: GangDemand, outcome: Placed, current: list[PoolOffer], book: QuotaBook | None
) -> None:
    i = next(
        i for i, o in enumerate(current) if (o.cluster, o.pool) == (outcome.cluster, outcome.pool)
    )
    if book is not None and demand.queue is not None:
        book.take(demand.queue, consumption(demand, current[i], outcome.cost_per_hour))
    current[i] = _take(current[i], demand.on(current[i]), outcome.workers_per_node)
