"""The admission pipeline's seams: ordered filters, each with a machine-readable reason, then
one score. A new rule is one function here (and its test), added to FILTERS or SCORE_KEYS.

A filter looks at one pool for one gang and either passes it or rejects it with a Rejection.
A rejection that is `never` means the pool can never hold the gang (it does not make the gang
wait, and if every pool says so the gang is Unplaceable); any other rejection makes the gang
wait, and the first one found is the reason users see.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kaon.api.resources import Resources
from kaon.placement.cost import gang_cost
from kaon.placement.model import GangDemand, PoolOffer

GIB = 1 << 30


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str
    never: bool = False
    rank: int = 3  # what a waiting gang shows: the lowest rank met (placement.quota's ranks)


PoolFilter = Callable[[GangDemand, PoolOffer], Rejection | None]


def gang_assignment(
    per_worker: Resources, workers: int, nodes: Sequence[Resources]
) -> list[int] | None:
    """Workers per node if all fit at once, else None. Best fit: the nodes with room for the
    fewest workers are filled first, so gangs pack into fragments and whole nodes stay free
    for the gangs that need them (exact for identical workers: the order changes where, never
    whether)."""
    copies = [per_worker.copies_in(free) for free in nodes]
    counts, left = [0] * len(nodes), workers
    for i in sorted(range(len(nodes)), key=lambda i: copies[i]):
        counts[i] = min(copies[i], left)
        left -= counts[i]
    return counts if left == 0 else None


def fits_when_empty(demand: GangDemand, offer: PoolOffer) -> Rejection | None:
    """The pool's nodes, empty, could hold the whole gang. Only an available cluster's pools
    can say never: one not ready may not have listed its nodes yet (an operator just started,
    a member just registered or back), and a gang it could hold must wait, not fail."""
    if not offer.available:
        return None
    if gang_assignment(demand.on(offer), demand.workers, offer.node_allocatable) is None:
        return Rejection("NoPoolFits", f"{offer.where()} can never hold the gang", never=True)
    return None


def cluster_available(_demand: GangDemand, offer: PoolOffer) -> Rejection | None:
    """The pool's cluster answers and is not suspended."""
    if not offer.available:
        return Rejection("ClusterUnavailable", f"cluster {offer.cluster} is not ready")
    return None


def room_now(demand: GangDemand, offer: PoolOffer) -> Rejection | None:
    """The pool's free resources, after every reservation, hold the whole gang now."""
    if gang_assignment(demand.on(offer), demand.workers, offer.node_free) is None:
        return Rejection(*shortage(demand, offer))
    return None


def spot_opted_in(demand: GangDemand, offer: PoolOffer) -> Rejection | None:
    """Spot pools (cheaper, their nodes may vanish) take only gangs that opt in."""
    if offer.spot and not demand.spot:
        return Rejection(
            "SpotNotAllowed",
            f"{offer.where()} is a spot pool and the job does not opt in (spec.placement.spot)",
            never=True,
        )
    return None


FILTERS: tuple[PoolFilter, ...] = (fits_when_empty, spot_opted_in, cluster_available, room_now)

Score = tuple[float | str, ...]


def by_cost(demand: GangDemand, offer: PoolOffer) -> Score:
    """The gang's cost per hour there: cheapest first."""
    return (round(gang_cost(demand, offer), 6),)


def by_free_capacity(demand: GangDemand, offer: PoolOffer) -> Score:
    """The pool left with the larger share of its GPUs (CPU pools: cores) free goes first,
    so equal-cost gangs spread instead of filling one pool while another idles."""
    need = demand.on(offer).times(demand.workers)
    free = sum(offer.node_free, Resources())
    total = sum(offer.node_allocatable, Resources())
    if offer.is_gpu:
        left, whole = free.gpus - need.gpus, total.gpus
    else:
        left, whole = free.milli_cpu - need.milli_cpu, total.milli_cpu
    return (-round(left / whole, 6) if whole else 0.0,)


def by_name(_demand: GangDemand, offer: PoolOffer) -> Score:
    """Ties by cluster and pool name, so the choice is deterministic."""
    return (offer.cluster, offer.pool)


# Within the first pool preference that has a passing pool, the lowest key wins.
SCORE_KEYS: tuple[Callable[[GangDemand, PoolOffer], Score], ...] = (
    by_cost,
    by_free_capacity,
    by_name,
)


def score(demand: GangDemand, offer: PoolOffer) -> Score:
    return tuple(part for key in SCORE_KEYS for part in key(demand, offer))


def first_rejection(demand: GangDemand, offer: PoolOffer) -> Rejection | None:
    for check in FILTERS:
        rejection = check(demand, offer)
        if rejection is not None:
            return rejection
    return None


def shortage(demand: GangDemand, offer: PoolOffer) -> tuple[str, str]:
    """The first resource the pool lacks for the gang, as (reason, message)."""
    need = demand.on(offer)
    total = need.times(demand.workers)
    have = sum(offer.node_free, Resources())
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
        f"{describe(need)} on one node"
    )


def _fmt(value: int, scale: int) -> str:
    v = value / scale
    return f"{max(v, 0):g}" if scale == 1 else f"{max(v, 0):.3g}"


def describe(r: Resources) -> str:
    gpu = f", {r.gpus} GPU" if r.gpus else ""
    return f"{r.cpu:g} CPU, {r.memory / GIB:.3g} GiB{gpu}"
