"""Queues: which queue a job is admitted through, the quota book for an admission pass, and
each Queue's status (usage per quota, admitted and pending counts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from kaon.api.common import API_VERSION, LabelSelector
from kaon.api.names import QUEUE_LABEL
from kaon.api.queue import QueueSpec, QueueStatus, QuotaUsage
from kaon.api.resources import parse
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.engine import metrics
from kaon.placement import Waiting
from kaon.placement.quota import Consumption, KeyUsage, Limit, QueueQuota, QuotaBook, QuotaKey

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 2.0
# What the queue's amounts are counted in: millicores, bytes, devices, thousandths of a unit.
SCALE = {"cpu": 1000, "memory": 1, "gpus": 1, "costPerHour": 1000}


def queue_quota(name: str, spec: QueueSpec) -> QueueQuota:
    limits = {}
    for q in spec.quotas:
        scale = SCALE[q.resource]
        borrow = None if q.borrowing_limit is None else int(parse(q.borrowing_limit) * scale)
        limits[QuotaKey(q.resource, q.accelerator, q.cluster)] = Limit(
            int(parse(q.nominal) * scale), borrow
        )
    policy = spec.preemption
    return QueueQuota(
        name,
        spec.cohort,
        spec.weight,
        limits,
        reclaim=policy.reclaim_within_cohort == "Any",
        within_queue=policy.within_queue == "LowerPriority",
    )


@dataclass(frozen=True)
class Use:
    """The queue workloads are admitted through, and whether their pods hold quota now."""

    queue: str
    consumption: Consumption | None  # None: waiting
    reason: str = ""  # why it waits
    more: tuple[Consumption, ...] = ()  # in its other clusters (a service's replicas)
    owner: tuple[str, str, str] | None = None  # (kind, namespace, name)

    def all(self) -> tuple[Consumption, ...]:
        return () if self.consumption is None else (self.consumption, *self.more)


Uses = Callable[[], Iterable[Use]]


class QueueController:
    def __init__(self, hub: KubeClient) -> None:
        self.hub = hub
        self.specs: dict[str, tuple[int, QueueSpec]] = {}  # name -> (generation, spec)
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self._deleted: set[tuple[str, str]] = set()  # (kind, name) the watches showed deleted
        self._published: dict[str, QueueStatus] = {}
        self._uses: list[Uses] = []
        self._exported: set[tuple[str, ...]] = set()  # metric label sets, to drop stale ones

    def register(self, uses: Uses) -> None:
        self._uses.append(uses)

    def queue_event(self, event: str, body: Obj) -> None:
        name = body["metadata"]["name"]
        self._seen("Queue", name, event)
        if event == "DELETED":
            self.specs.pop(name, None)
            self._published.pop(name, None)
            return
        try:
            spec = QueueSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            log.warning("queue %s: spec not understood; its jobs wait", name)
            self.specs.pop(name, None)
            return
        self.specs[name] = (int(body["metadata"].get("generation", 0)), spec)

    def namespace_event(self, event: str, body: Obj) -> None:
        name = body["metadata"]["name"]
        self._seen("Namespace", name, event)
        if event == "DELETED":
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = dict(body["metadata"].get("labels") or {})

    def _seen(self, kind: str, name: str, event: str) -> None:
        if event == "DELETED":
            self._deleted.add((kind, name))
        else:
            self._deleted.discard((kind, name))

    def listed(self, queues: list[Obj], namespaces: list[Obj]) -> None:
        """What LISTs found as this operator began to act, before its first admission: a
        namespace's default queue unknown then would admit its jobs past their quota. What the
        watches have delivered (or shown deleted) meanwhile is newer and stays."""
        for kind, items, known, take in (
            ("Queue", queues, self.specs, self.queue_event),
            ("Namespace", namespaces, self.namespaces, self.namespace_event),
        ):
            for body in items:
                name = body["metadata"]["name"]
                if name not in known and (kind, name) not in self._deleted:
                    take("ADDED", body)

    def resolve(self, namespace: str, named: str | None) -> tuple[str | None, Waiting | None]:
        """The queue a workload of this namespace is admitted through (None: no quota
        applies), or why it cannot be admitted through any."""
        labels = self.namespaces.get(namespace, {})
        default = labels.get(QUEUE_LABEL)
        name = named or default
        if name is None:
            return None, None
        found = self.specs.get(name)
        if found is None:
            source = "spec.queue" if named else f"namespace {namespace}'s label {QUEUE_LABEL}"
            return None, Waiting("QueueNotFound", f"queue {name} ({source}) does not exist")
        if named and named != default and not _allows(found[1].namespace_selector, labels):
            return None, Waiting(
                "QueueNotAllowed",
                f"queue {name}'s namespaceSelector does not allow namespace {namespace}",
            )
        return name, None

    def book(self, exclude: tuple[str, str, str] | None = None) -> QuotaBook:
        """Every queue's quota with what its admitted workloads hold now (but `exclude`'s)."""
        book = QuotaBook(queue_quota(name, spec) for name, (_, spec) in self.specs.items())
        for uses in self._uses:
            for use in uses():
                if exclude is None or use.owner != exclude:
                    for used in use.all():
                        book.take(use.queue, used)
        return book

    async def publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            try:
                await self.publish()
            except Exception:
                log.exception("queue status")

    async def publish(self) -> None:
        book = self.book()
        admitted: Counter[str] = Counter()
        pending: Counter[str] = Counter()
        waiting: Counter[tuple[str, str]] = Counter()
        cost: Counter[str] = Counter()
        for uses in self._uses:
            for use in uses():
                (pending if use.consumption is None else admitted)[use.queue] += 1
                if use.consumption is None:
                    waiting[use.queue, use.reason] += 1
                cost[use.queue] += sum(c.milli_cost for c in use.all())
        export_gauges(book, admitted, waiting, cost, self._exported)
        for name, (gen, _) in list(self.specs.items()):
            usage = book.usage(name)
            status = QueueStatus(
                observed_generation=gen,
                admitted=admitted[name],
                pending=pending[name],
                usage=[_usage(u) for u in usage],
                summary=", ".join(_brief(u) for u in usage)[:253],
            )
            if self._published.get(name) == status:
                continue
            with contextlib.suppress(ApiError):
                await self.hub.merge_patch(
                    paths.custom(API_VERSION, "queues", None, name) + "/status",
                    {"status": status.model_dump(mode="json", by_alias=True)},
                )
                self._published[name] = status


def export_gauges(
    book: QuotaBook,
    admitted: Counter[str],
    waiting: Counter[tuple[str, str]],
    cost: Counter[str],
    exported: set[tuple[str, ...]],
) -> None:
    """The queues' Prometheus gauges; label sets no longer seen are removed."""
    seen: set[tuple[str, ...]] = set()
    for name in book.queues:
        for u in book.usage(name):
            labels = (name, u.key.resource, u.key.accelerator or "", u.key.cluster or "")
            scale = SCALE[u.key.resource]
            metrics.QUEUE_USAGE.labels(*labels).set(u.used / scale)
            metrics.QUEUE_NOMINAL.labels(*labels).set(u.nominal / scale)
            seen.add(("usage", *labels))
        metrics.QUEUE_WORKLOADS.labels(name, "admitted", "").set(admitted[name])
        metrics.QUEUE_COST.labels(name).set(cost[name] / 1000)
        seen |= {("workloads", name, "admitted", ""), ("cost", name)}
    for (name, reason), n in waiting.items():
        metrics.QUEUE_WORKLOADS.labels(name, "pending", reason).set(n)
        seen.add(("workloads", name, "pending", reason))
    gauges = {
        "usage": (metrics.QUEUE_USAGE, metrics.QUEUE_NOMINAL),
        "workloads": (metrics.QUEUE_WORKLOADS,),
        "cost": (metrics.QUEUE_COST,),
    }
    for stale in exported - seen:
        for gauge in gauges[stale[0]]:
            with contextlib.suppress(KeyError):
                gauge.remove(*stale[1:])
    exported.clear()
    exported |= seen


def _allows(selector: LabelSelector | None, labels: dict[str, str]) -> bool:
    return selector is not None and selector.matches(labels)


def _amount(key: QuotaKey, value: int) -> str:
    if key.resource == "memory":
        return f"{value / (1 << 30):.4g}Gi"
    return f"{value / SCALE[key.resource]:.6g}"


def _usage(u: KeyUsage) -> QuotaUsage:
    return QuotaUsage(
        resource=u.key.resource,
        accelerator=u.key.accelerator or "",
        cluster=u.key.cluster or "",
        nominal=_amount(u.key, u.nominal),
        used=_amount(u.key, u.used),
        borrowed=_amount(u.key, u.borrowed),
    )


def _brief(u: KeyUsage) -> str:
    name = u.key.accelerator or u.key.resource
    if u.key.cluster:
        name += f"@{u.key.cluster}"
    return f"{name} {_amount(u.key, u.used)}/{_amount(u.key, u.nominal)}"
