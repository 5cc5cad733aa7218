"""ComputeCluster status: reachability and live pool inventory, published when it changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from kaon.api.common import API_VERSION, Condition, now_rfc3339
from kaon.api.computecluster import ComputeClusterStatus, PoolStatus, ResourceAmounts
from kaon.api.resources import Resources
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient
from kaon.handlers.fleet import Fleet, Registered
from kaon.lifecycle.conditions import set_condition

log = logging.getLogger(__name__)
PUBLISH_INTERVAL_S = 2.0


def _amounts(r: Resources) -> ResourceAmounts:
    return ResourceAmounts(cpu=r.milli_cpu / 1000, memory=r.memory, gpus=r.gpus)


def cluster_status(
    reg: Registered, old: list[Condition], gen: int, now: str
) -> ComputeClusterStatus:
    member = reg.member
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
        self, regs: list[Registered], generations: dict[str, int], now: str
    ) -> list[tuple[Registered, ComputeClusterStatus]]:
        for gone in self._by_uid.keys() - {reg.uid for reg in regs}:
            del self._by_uid[gone]
        out = []
        for reg in regs:
            old = self._by_uid.get(reg.uid)
            status = cluster_status(
                reg, old.conditions if old else [], generations.get(reg.name, 0), now
            )
            if old != status:
                out.append((reg, status))
        return out

    def mark(self, reg: Registered, status: ComputeClusterStatus) -> None:
        self._by_uid[reg.uid] = status


async def publish_loop(hub: KubeClient, fleet: Fleet, generations: dict[str, int]) -> None:
    published = Published()
    while True:
        await asyncio.sleep(PUBLISH_INTERVAL_S)
        await fleet.retry_problems()
        regs = list(fleet.clusters.values())
        for reg in regs:
            if reg.member and not reg.member.health.version and reg.member.health.reachable:
                await reg.member.probe_version()
        for reg, status in published.changed(regs, generations, now_rfc3339()):
            try:
                await hub.merge_patch(
                    paths.custom(API_VERSION, "computeclusters", None, reg.name) + "/status",
                    {"status": status.model_dump(mode="json", by_alias=True)},
                )
                published.mark(reg, status)
            except ApiError as exc:
                log.info("status of ComputeCluster %s: %s", reg.name, exc)
