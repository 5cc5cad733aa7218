"""Gang placement: one cluster, one pool, all workers at once, or a reason."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from kaon.api.resources import Resources
from kaon.placement.model import GangDemand, Outcome, Placed, PoolOffer, Unplaceable, Waiting

GIB = 1 << 30


def gang_assignment(
    per_worker: Resources, workers: int, nodes: Sequence[Resources]
) -> list[int] | None:
    """Workers per node if all fit at once (first fit; exact for identical workers), else None."""
    counts, left = [], workers
    for free in nodes:
        n = min(per_worker.copies_in(free), left)
        counts.append(n)
        left -= n
    return counts if left == 0 else None


def _shortage(demand: GangDemand, offer: PoolOffer, nodes: Sequence[Resources]) -> tuple[str, str]:
    """The first resource the pool lacks for the gang, as (reason, message)."""
    need = demand.on(offer)
    total = need.times(demand.workers)
    have = sum(nodes, Resources())
    checks = [
        ("InsufficientGPU", total.gpus, have.gpus, "GPUs", 1),
        ("InsufficientCPU", total.milli_cpu, have.milli_cpu, "CPUs", 1000),
        ("InsufficientMemory", total.memory, have.memory, "GiB of memory", GIB),
        ("InsufficientPods", total.pods, have.pods, "pod slots", 1),
    ]
    for reason, wanted, free, unit, scale in checks:
        if wanted > free:
            return reason, (
                f"{offer.where()} has {_fmt(free, scale)} of {_fmt(wanted, scale)} {unit} free "
                f"for {demand.workers} workers"
            )
    return "InsufficientNodeCapacity", (
        f"{offer.where()} has enough in total, but not on few enough nodes: each worker needs "
        f"{_describe(need)} on one node"
    )


def _fmt(value: int, scale: int) -> str:
    v = value / scale
    return f"{max(v, 0):g}" if scale == 1 else f"{max(v, 0):.3g}"


def _describe(r: Resources) -> str:
    gpu = f", {r.gpus} GPU" if r.gpus else ""
    return f"{r.cpu:g} CPU, {r.memory / GIB:.3g} GiB{gpu}"


def _candidates(demand: GangDemand, offers: Iterable[PoolOffer]) -> list[PoolOffer]:
    selector = demand.cluster_selector
    return [o for o in offers if selector is None or selector.matches(dict(o.cluster_labels))]


def decide(demand: GangDemand, offers: Sequence[PoolOffer]) -> Outcome:
    """Place one gang on the first preference with a fitting pool (cheapest wins), or explain."""
    eligible = _candidates(demand, offers)
    if not offers:
        return Waiting("NoClusters", "no ComputeCluster is registered yet")
    if not eligible:
        return Unplaceable(
            "NoMatchingCluster", "no registered cluster matches spec.placement.clusterSelector"
        )
    ever_fits = False
    first_shortage: tuple[str, str] | None = None
    for pref in demand.preferences:
        pools = [o for o in eligible if o.matches(pref)]
        fitting: list[tuple[float, str, str, PoolOffer, list[int]]] = []
        for offer in pools:
            need = demand.on(offer)
            if gang_assignment(need, demand.workers, offer.node_allocatable) is None:
                continue
            ever_fits = True
            if not offer.available:
                first_shortage = first_shortage or (
                    "ClusterUnavailable",
                    f"cluster {offer.cluster} is not ready",
                )
                continue
            counts = gang_assignment(need, demand.workers, offer.node_free)
            if counts is None:
                first_shortage = first_shortage or _shortage(demand, offer, offer.node_free)
                continue
            fitting.append((offer.cost_per_hour, offer.cluster, offer.pool, offer, counts))
        if fitting:
            _, _, _, best, counts = min(fitting, key=lambda f: f[:3])
            return Placed(
                best.cluster, best.pool, best.accelerator, demand.on(best).gpus, tuple(counts)
            )
    if not ever_fits:
        wanted = ", then ".join(p.describe() for p in demand.preferences)
        return Unplaceable(
            "NoPoolFits",
            f"no pool can ever hold {demand.workers} workers of "
            f"{_describe(demand.per_worker)} (looked at {wanted})",
        )
    reason, message = first_shortage or ("NoCapacity", "no pool has room")
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
