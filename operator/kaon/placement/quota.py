"""Queues' quotas: whether a gang placed on a pool fits its queue, borrowing in its cohort.

A queue is guaranteed its nominal amount of each listed resource. In a cohort it may use more,
up to its borrowing limit, out of what the cohort's other queues leave unused; the cohort as a
whole never uses more than the sum of its queues' nominal amounts. Amounts are integers:
millicores, bytes, devices and thousandths of a cost unit per hour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kaon.placement.cost import gang_cost
from kaon.placement.filters import GIB, Rejection, first_rejection, fits_when_empty
from kaon.placement.model import GangDemand, PoolOffer

# The rank of a reason: the lowest-ranked rejection met is the one a waiting gang shows.
QUOTA_EXCEEDED, WAITING_FOR_QUOTA, PREEMPTION_PENDING, NO_ROOM = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class QuotaKey:
    resource: str  # cpu, memory, gpus, costPerHour
    accelerator: str | None = None
    cluster: str | None = None

    def describe(self) -> str:
        what = {
            "cpu": "CPUs",
            "memory": "GiB of memory",
            "gpus": f"{self.accelerator} GPUs" if self.accelerator else "GPUs",
            "costPerHour": "cost per hour",
        }[self.resource]
        return f"{what} in cluster {self.cluster}" if self.cluster else what

    def fmt(self, amount: int) -> str:
        scale = {"cpu": 1000, "memory": GIB, "gpus": 1, "costPerHour": 1000}[self.resource]
        return f"{amount / scale:.4g}"


@dataclass(frozen=True, slots=True)
class Consumption:
    """What one admitted gang takes, wherever it was placed."""

    cluster: str
    accelerator: str | None
    milli_cpu: int
    memory: int
    gpus: int
    milli_cost: int  # cost per hour, in thousandths

    def amount(self, key: QuotaKey) -> int:
        if key.cluster is not None and key.cluster != self.cluster:
            return 0
        if key.resource == "gpus":
            matches = key.accelerator is None or key.accelerator == self.accelerator
            return self.gpus if matches else 0
        return {"cpu": self.milli_cpu, "memory": self.memory, "costPerHour": self.milli_cost}[
            key.resource
        ]


@dataclass(frozen=True, slots=True)
class Limit:
    nominal: int
    borrowing_limit: int | None = None  # None: as much as the cohort leaves unused


@dataclass(frozen=True)
class QueueQuota:
    name: str
    cohort: str | None = None
    weight: float = 1.0
    limits: Mapping[QuotaKey, Limit] = field(default_factory=dict)
    reclaim: bool = True  # its waiting gangs may preempt borrowers of the cohort
    within_queue: bool = True  # ... and its own gangs of lower priority


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key: QuotaKey
    nominal: int
    used: int

    @property
    def borrowed(self) -> int:
        return max(self.used - self.nominal, 0)


class QuotaBook:
    """Every queue's quota and what its admitted gangs use; `take` as a pass admits more."""

    def __init__(self, queues: Iterable[QueueQuota]) -> None:
        self.queues = {q.name: q for q in queues}
        self._used: dict[str, dict[QuotaKey, int]] = defaultdict(lambda: defaultdict(int))
        cohorts: dict[str, list[QueueQuota]] = defaultdict(list)
        for q in self.queues.values():
            if q.cohort:
                cohorts[q.cohort].append(q)
        self._cohorts = dict(cohorts)
        self.borrowing = True  # False: each queue holds to its nominal amounts for now
        self.prices: Mapping[str, float] = {}  # accelerator -> GPU price over the cheapest's

    def lends(self) -> bool:
        """Whether any queue is in a cohort (so borrowing can happen at all)."""
        return bool(self._cohorts)

    def copy(self) -> QuotaBook:
        book = QuotaBook(self.queues.values())
        for queue, used in self._used.items():
            book._used[queue].update(used)
        book.borrowing = self.borrowing
        book.prices = self.prices
        return book

    def take(self, queue: str, used: Consumption, sign: int = 1) -> None:
        quota = self.queues.get(queue)
        if quota is None:
            return
        for key in quota.limits:
            self._used[queue][key] += sign * used.amount(key)

    def release(self, queue: str, used: Consumption) -> None:
        self.take(queue, used, -1)

    def cohort_of(self, queue: str | None) -> str | None:
        quota = self.queues.get(queue or "")
        return quota.cohort if quota else None

    def borrows(self, queue: str, used: Consumption) -> bool:
        """The queue uses more than its nominal amount of something `used` takes."""
        quota = self.queues.get(queue)
        return quota is not None and any(
            used.amount(key) > 0 and self._used[queue][key] > limit.nominal
            for key, limit in quota.limits.items()
        )

    def share(self, queue: str | None) -> float:
        """The queue's weighted dominant share of its cohort: the largest fraction of the
        cohort's nominal amount of any resource that the queue uses, GPUs counted at their
        price relative to the cheapest accelerator, divided by the queue's weight."""
        quota = self.queues.get(queue or "")
        if quota is None or not quota.cohort:
            return 0.0
        dominant = 0.0
        for key in quota.limits:
            total = sum(
                q.limits[key].nominal for q in self._cohorts[quota.cohort] if key in q.limits
            )
            if total > 0:
                gpus = key.resource == "gpus"
                weight = self.prices.get(key.accelerator or "", 1.0) if gpus else 1.0
                dominant = max(dominant, weight * self._used[quota.name][key] / total)
        return dominant / quota.weight

    def usage(self, queue: str) -> list[KeyUsage]:
        quota = self.queues[queue]
        return [
            KeyUsage(key, limit.nominal, self._used[queue][key])
            for key, limit in quota.limits.items()
        ]

    def check(self, queue: str, wanted: Consumption) -> Rejection | None:
        """None if the queue can take `wanted` now; else the most telling reason it cannot."""
        quota = self.queues[queue]
        found: Rejection | None = None
        for key, limit in quota.limits.items():
            need = wanted.amount(key)
            if need == 0:
                continue
            rejection = self._check_key(quota, key, limit, need)
            if rejection is not None and (found is None or rejection.rank < found.rank):
                found = rejection
        return found

    def _check_key(
        self, quota: QueueQuota, key: QuotaKey, limit: Limit, need: int
    ) -> Rejection | None:
        used = self._used[quota.name][key]
        peers = [
            (q.name, q.limits[key])
            for q in self._cohorts.get(quota.cohort or "", [])
            if key in q.limits
        ]
        pool_nominal = sum(lim.nominal for _, lim in peers) if peers else limit.nominal
        pool_used = sum(self._used[name][key] for name, _ in peers) if peers else used
        ceiling = limit.nominal
        if quota.cohort and self.borrowing:
            extra = limit.borrowing_limit
            ceiling = min(pool_nominal, ceiling + (pool_nominal if extra is None else extra))
        what = key.describe()
        if need > ceiling:
            return Rejection(
                "QuotaExceeded",
                f"queue {quota.name}: needs {key.fmt(need)} {what} at once, more than the "
                f"queue can ever hold ({key.fmt(ceiling)}, nominal {key.fmt(limit.nominal)})",
                rank=QUOTA_EXCEEDED,
            )
        if used + need > ceiling:
            return Rejection(
                "WaitingForQuota",
                f"queue {quota.name}: needs {key.fmt(need)} {what}, {key.fmt(ceiling - used)} "
                f"of {key.fmt(ceiling)} free ({key.fmt(used)} in use)",
                rank=WAITING_FOR_QUOTA,
            )
        if quota.cohort and pool_used + need > pool_nominal:
            free = pool_nominal - pool_used
            if used + need <= limit.nominal:
                message = (
                    f"queue {quota.name}: needs {key.fmt(need)} {what} of its nominal "
                    f"{key.fmt(limit.nominal)}, lent to other queues of cohort {quota.cohort} "
                    f"({key.fmt(free)} free there)"
                )
            else:
                message = (
                    f"cohort {quota.cohort}: {key.fmt(free)} of {key.fmt(pool_nominal)} {what} "
                    f"unused, queue {quota.name} needs {key.fmt(need)}"
                )
            return Rejection("WaitingForQuota", message, rank=WAITING_FOR_QUOTA)
        return None


def consumption(demand: GangDemand, offer: PoolOffer, cost_per_hour: float) -> Consumption:
    """What the whole gang would take from its queue on that pool."""
    need = demand.on(offer).times(demand.workers)
    return Consumption(
        offer.cluster,
        offer.accelerator,
        need.milli_cpu,
        need.memory,
        need.gpus,
        round(cost_per_hour * 1000),
    )


def rejection(demand: GangDemand, offer: PoolOffer, book: QuotaBook | None) -> Rejection | None:
    """Why the pool cannot take the gang now: never, then its queue's quota, then the filters."""
    never = fits_when_empty(demand, offer)
    if never is not None:
        return never
    if book is not None and demand.queue is not None:
        over = book.check(demand.queue, consumption(demand, offer, gang_cost(demand, offer)))
        if over is not None:
            return over
    return first_rejection(demand, offer)


def gpu_prices(offers: Iterable[PoolOffer]) -> dict[str, float]:
    """Each accelerator's cheapest price per GPU-hour over the cheapest accelerator's."""
    per_gpu: dict[str, float] = {}
    for o in offers:
        gpus = max((n.gpus for n in o.node_allocatable), default=0)
        if o.accelerator and gpus and o.cost_per_hour > 0:
            price = o.cost_per_hour / gpus
            per_gpu[o.accelerator] = min(per_gpu.get(o.accelerator, price), price)
    cheapest = min(per_gpu.values(), default=0.0)
    return {a: p / cheapest for a, p in per_gpu.items()} if cheapest else {}
