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

from kaon.placement.filters import GIB, Rejection
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

    def lends(self) -> bool:
        """Whether any queue is in a cohort (so borrowing can happen at all)."""
        return bool(self._cohorts)

    def take(self, queue: str, used: Consumption) -> None:
        quota = self.queues.get(queue)
        if quota is None:
            return
        for key in quota.limits:
            self._used[queue][key] += used.amount(key)

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
                f"queue {quota.name}: the gang needs {key.fmt(need)} {what}, more than the "
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
