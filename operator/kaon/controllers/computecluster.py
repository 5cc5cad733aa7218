"""The ComputeCluster controller: registers members with the fleet, and publishes each one's
reachability and live pool inventory in its status when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from kaon.api.common import API_VERSION, Condition
from kaon.api.computecluster import ComputeClusterStatus, PoolStatus, ResourceAmounts
from kaon.api.resources import Resources
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.engine.clock import RFC3339, Clock, rfc3339
from kaon.engine.fleet import Fleet, Registered
from kaon.lifecycle.conditions import set_condition

log = logging.getLogger(__name__)
PUBLISH_INTERVAL_S = 2.0


def _amounts(r: Resources) -> ResourceAmounts:
    return ResourceAmounts(cpu=r.milli_cpu / 1000, memory=r.memory, gpus=r.gpus)


def cluster_status(
    reg: Registered, old: list[Condition], gen: int, now: str, wall: float | None = None
) -> ComputeClusterStatus:
    """The status to publish; with `wall` (unix seconds now), a member that stopped answering
    has Ready=False since its last answer, not since this look."""
    member = reg.member
    if wall is not None and member is not None and member.unready_for() > 0:
        now = datetime.fromtimestamp(wall - member.unready_for(), UTC).strftime(RFC3339)
    if reg.problem:
        ready, (reason, message) = False, reg.problem
    elif member is None:
        ready, reason, message = False, "Connecting", "no client yet"
    elif member.ready:
        ready, reason, message = True, "Reachable", f"{len(member.inventory.nodes)} nodes watched"
    else:
        ready, reason, message = False, member.health.reason, member.health.message
    pools = []
    for pool in reg.spec.pools:
        nodes = (
            [n for n in member.inventory.nodes_matching(pool.node_selector) if n.usable]
            if member
            else []
        )
        alloc = sum((n.allocatable for n in nodes), Resources())
        used = (
            sum((member.inventory.used.get(n.name, Resources()) for n in nodes), Resources())
            if member
            else Resources()
        )
        pools.append(
            PoolStatus(
                name=pool.name,
                nodes=len(nodes),
                allocatable=_amounts(alloc),
                requested=_amounts(used),
                free=_amounts(alloc - used),
            )
        )
    return ComputeClusterStatus(
        observed_generation=gen,
        conditions=set_condition(old, "Ready", ready, reason, message, gen, now),
        pools=pools,
        server=member.client.server if member else "",
        kubernetes_version=member.health.version if member else "",
    )


def pool_inventory(fleet: Fleet) -> Iterator[tuple[str, bool, list[tuple[str, dict[str, float]]]]]:
    """(cluster, ready, [(pool, amounts)]) for the metrics: capacity and free per resource."""
    for name, reg in list(fleet.clusters.items()):
        status = cluster_status(reg, [], 0, "")
        pools = [
            (
                p.name,
                {
                    "cpu_capacity": p.allocatable.cpu,
                    "cpu_free": p.free.cpu,
                    "memory_capacity": float(p.allocatable.memory),
                    "memory_free": float(p.free.memory),
                    "gpu_capacity": float(p.allocatable.gpus),
                    "gpu_free": float(p.free.gpus),
                },
            )
            for p in status.pools
        ]
        yield name, status.conditions[0].status == "True", pools


class Published:
    """What was last written to each ComputeCluster's status, to write only what changed.

    Keyed by uid: a ComputeCluster deleted and created again under its name starts with no
    status, so what was published for the old object must not count for the new one.
    """

    def __init__(self) -> None:
        self._by_uid: dict[str, ComputeClusterStatus] = {}

    def changed(
        self,
        regs: list[Registered],
        generations: dict[str, int],
        now: str,
        wall: float | None = None,
    ) -> list[tuple[Registered, ComputeClusterStatus]]:
        for gone in self._by_uid.keys() - {reg.uid for reg in regs}:
            del self._by_uid[gone]
        out = []
        for reg in regs:
            old = self._by_uid.get(reg.uid)
            status = cluster_status(
                reg, old.conditions if old else [], generations.get(reg.name, 0), now, wall
            )
            if old != status:
                out.append((reg, status))
        return out

    def mark(self, reg: Registered, status: ComputeClusterStatus) -> None:
        self._by_uid[reg.uid] = status


class ComputeClusterController:
    def __init__(
        self, hub: KubeClient, fleet: Fleet, clock: Clock, on_change: Callable[[], None]
    ) -> None:
        self.hub = hub
        self.fleet = fleet
        self.clock = clock
        self.on_change = on_change  # capacity may have come or gone: admission looks again
        self.generations: dict[str, int] = {}
        self.bodies: dict[str, Obj] = {}
        self.deleted: set[str] = set()  # names the watch has shown deleted
        self.active = False
        self.published = Published()
        self._health_changed = asyncio.Event()

    def health_changed(self, _cluster: str) -> None:
        """A member became ready or stopped being: published now, not at the next interval."""
        self._health_changed.set()

    async def object_event(self, kind: str, body: Obj) -> None:
        name = body["metadata"]["name"]
        if kind == "DELETED":
            self.bodies.pop(name, None)
            self.generations.pop(name, None)
            self.deleted.add(name)
            if self.active:
                await self.fleet.remove(name)
        else:
            self.deleted.discard(name)
            self.bodies[name] = body
            self.generations[name] = int(body["metadata"].get("generation", 0))
            if self.active:
                await self.fleet.upsert(body)
        self.on_change()

    def listed(self, items: list[Obj]) -> None:
        """The ComputeClusters a LIST found as this operator began to act: those its watch has
        not delivered yet (kopf's first listing may come later) count from now. One the watch
        has shown deleted meanwhile stays deleted."""
        for body in items:
            name = body["metadata"]["name"]
            if name not in self.bodies and name not in self.deleted:
                self.bodies[name] = body
                self.generations[name] = int(body["metadata"].get("generation", 0))

    async def activate(self) -> None:
        """Connect to the members known so far; from now on each event is acted on at once.
        (A standby operator only remembers ComputeClusters: it must not touch members.)"""
        self.active = True
        self.fleet.activate()
        for body in list(self.bodies.values()):
            await self.fleet.upsert(body)
        self.on_change()

    async def publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_changed.wait(), PUBLISH_INTERVAL_S)
            self._health_changed.clear()
            await self.publish()

    async def publish(self) -> None:
        await self.fleet.retry_problems()
        regs = list(self.fleet.clusters.values())
        for reg in regs:
            if reg.member and not reg.member.health.version and reg.member.health.reachable:
                await reg.member.probe_version()
        now, wall = rfc3339(self.clock), self.clock.wall()
        for reg, status in self.published.changed(regs, self.generations, now, wall):
            try:
                await self.hub.merge_patch(
                    paths.custom(API_VERSION, "computeclusters", None, reg.name) + "/status",
                    {"status": status.model_dump(mode="json", by_alias=True)},
                )
                self.published.mark(reg, status)
            except ApiError as exc:
                log.info("status of ComputeCluster %s: %s", reg.name, exc)
