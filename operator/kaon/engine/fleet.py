"""The registered member clusters: one Member (client + watches) per ComputeCluster, and the
pools they offer to admission."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kaon.api.computecluster import ComputeClusterSpec, PoolSpec
from kaon.api.names import ObjectKey
from kaon.api.resources import Resources
from kaon.api.settings import Settings
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.member import Member
from kaon.placement import PoolOffer, Reservation
from kaon.placement.filters import gang_assignment

log = logging.getLogger(__name__)
# Connections to one member: each open TLS connection holds a 256 KiB read buffer, and on this
# machine kind 32 at once already keep a member's API server busy (tests/bench/controlplane.py).
MEMBER_CONNECTIONS = 32


@dataclass
class Registered:
    name: str
    spec: ComputeClusterSpec
    labels: dict[str, str]
    fingerprint: str = ""
    member: Member | None = None
    problem: tuple[str, str] | None = None  # (reason, message) when no member could be made
    body: Obj = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.body.get("metadata", {}).get("uid", ""))

    def pool(self, name: str) -> PoolSpec | None:
        return next((p for p in self.spec.pools if p.name == name), None)


@dataclass
class Fleet:
    hub: KubeClient
    hub_kubeconfig: Mapping[str, Any]
    settings: Settings
    on_job_pods: Callable[[ObjectKey], None]
    on_capacity: Callable[[str], None]
    on_service_pods: Callable[[ObjectKey], None] = lambda key: None
    connect: Callable[..., KubeClient] = KubeClient  # a member's client (kubeconfig, **options)
    clusters: dict[str, Registered] = field(default_factory=dict)
    on_health: Callable[[str], None] = lambda name: None
    monotonic: Callable[[], float] = time.monotonic
    holder: str = "kaon"  # the heartbeat Lease's holderIdentity
    removed: set[str] = field(default_factory=set)  # ComputeClusters seen deleted
    activated_at: float | None = None  # monotonic: when this operator began to act

    def activate(self) -> None:
        self.activated_at = self.monotonic()

    def absent_for(self, name: str) -> float:
        """Seconds an unregistered cluster is known to be gone. One seen deleted is gone for
        good; one never seen may only not be listed yet (an operator that has just started or
        taken over), so it counts from when this operator began to act."""
        if name in self.removed:
            return float("inf")
        if self.activated_at is None:
            return 0.0
        return max(self.monotonic() - self.activated_at, 0.0)

    async def upsert(self, body: Obj) -> None:
        name = body["metadata"]["name"]
        spec = ComputeClusterSpec.model_validate(body.get("spec") or {})
        labels = dict(body["metadata"].get("labels") or {})
        self.removed.discard(name)
        reg = self.clusters.get(name)
        if reg is None:
            reg = self.clusters[name] = Registered(name, spec, labels)
        reg.spec, reg.labels, reg.body = spec, labels, body
        kubeconfig, problem = await self._kubeconfig(spec)
        reg.problem = problem
        fingerprint = hashlib.sha256(json.dumps(kubeconfig, sort_keys=True).encode()).hexdigest()
        if kubeconfig is None:
            await self._stop(reg)
            return
        if reg.member is not None and fingerprint == reg.fingerprint:
            return
        await self._stop(reg)
        try:
            client = self.connect(kubeconfig, max_connections=MEMBER_CONNECTIONS)
            heartbeat = self.connect(kubeconfig, max_connections=1)
        except Exception as exc:  # a kubeconfig the client library cannot use
            reg.problem = ("BadCredentials", f"the kubeconfig cannot be used: {exc}")
            return
        reg.member = Member(
            name,
            client,
            on_job_pods=self.on_job_pods,
            on_service_pods=self.on_service_pods,
            on_capacity=self.on_capacity,
            on_health=self._health,
            heartbeat_client=heartbeat,
            holder=self.holder,
            monotonic=self.monotonic,
        )
        reg.fingerprint = fingerprint
        reg.member.start()
        log.info("member %s: watching %s", name, client.server)

    def _health(self, name: str) -> None:
        self.on_health(name)
        self.on_capacity(name)

    async def retry_problems(self) -> None:
        """Read the Secret again where the kubeconfig was missing or unusable (e.g. the Secret
        came later) or the member refuses it (an expired token, replaced in the Secret)."""
        for reg in list(self.clusters.values()):
            refused = reg.member is not None and reg.member.health.reason == "BadCredentials"
            if reg.problem or refused:
                await self.upsert(reg.body)

    async def remove(self, name: str) -> None:
        reg = self.clusters.pop(name, None)
        self.removed.add(name)
        if reg:
            await self._stop(reg)

    async def stop(self) -> None:
        for reg in list(self.clusters.values()):
            await self._stop(reg)

    async def _stop(self, reg: Registered) -> None:
        if reg.member is not None:
            await reg.member.stop()
            reg.member = None
            reg.fingerprint = ""

    async def _kubeconfig(
        self, spec: ComputeClusterSpec
    ) -> tuple[Mapping[str, Any] | None, tuple[str, str] | None]:
        if spec.hub:
            return self.hub_kubeconfig, None
        ref = spec.kubeconfig_secret_ref
        assert ref is not None  # the CRD's CEL rule requires hub or a Secret reference
        ns = ref.namespace or self.settings.namespace
        try:
            secret = await self.hub.get(paths.secret(ns, ref.name))
        except ApiError as exc:
            if exc.not_found:
                return None, ("SecretNotFound", f"Secret {ns}/{ref.name} does not exist")
            return None, ("SecretUnreadable", f"Secret {ns}/{ref.name}: {exc}")
        data = (secret.get("data") or {}).get(ref.key)
        if not data:
            return None, ("SecretNotFound", f"Secret {ns}/{ref.name} has no key {ref.key!r}")
        try:
            config = yaml.safe_load(base64.b64decode(data))
        except (ValueError, yaml.YAMLError) as exc:
            return None, ("BadCredentials", f"Secret {ns}/{ref.name}: not a kubeconfig: {exc}")
        if not isinstance(config, dict) or not config.get("clusters"):
            return None, ("BadCredentials", f"Secret {ns}/{ref.name}: not a kubeconfig")
        return config, None

    def member(self, name: str) -> Member | None:
        reg = self.clusters.get(name)
        return reg.member if reg else None

    def same_cluster(self, a: str, b: str) -> bool:
        """Whether two ComputeClusters reach the same API server (pools of one cluster may be
        registered as several ComputeClusters, as the rig's west and west-local are)."""
        if a == b:
            return True
        ma, mb = self.member(a), self.member(b)
        return ma is not None and mb is not None and ma.client.server == mb.client.server

    def cleanup_member(self, cluster: str) -> tuple[Member | None, bool]:
        """(the member to remove objects from, or None; if None: whether that is done).

        An unregistered cluster holds nothing kaon can reach: done. A registered one that does
        not answer now is tried again later: not done.
        """
        member = self.member(cluster)
        if member is None or not member.ready:
            return None, member is None and cluster not in self.clusters
        return member, False

    def pool(self, cluster: str, pool: str) -> PoolSpec | None:
        reg = self.clusters.get(cluster)
        return reg.pool(pool) if reg else None

    def offers(self, reservations: Iterable[Reservation]) -> list[PoolOffer]:
        held: dict[tuple[str, str], list[Reservation]] = {}
        for r in reservations:
            held.setdefault((r.cluster, r.pool), []).append(r)
        offers = []
        for reg in self.clusters.values():
            member = reg.member
            for pool in reg.spec.pools:
                nodes = member.inventory.nodes_matching(pool.node_selector) if member else []
                usable = sorted((n for n in nodes if n.usable), key=lambda n: n.name)
                free = [member.inventory.free(n.name) for n in usable] if member else []
                for r in held.get((reg.name, pool.name), []):
                    _reserve(free, r.per_pod, r.count)
                offers.append(
                    PoolOffer(
                        cluster=reg.name,
                        pool=pool.name,
                        accelerator=pool.accelerator.type if pool.accelerator else None,
                        cost_per_hour=pool.cost_per_hour,
                        cluster_labels=reg.labels,
                        # A member back from a loss takes nothing new until the pods of
                        # attempts fenced off meanwhile are gone from it.
                        available=bool(member and member.ready and member.swept)
                        and not reg.spec.suspend,
                        node_free=tuple(free),
                        node_allocatable=tuple(n.allocatable for n in nodes),
                        node_names=tuple(n.name for n in usable) if member else (),
                        spot=pool.spot,
                    )
                )
        return offers


def _reserve(free: list[Resources], per_worker: Resources, count: int) -> None:
    """Take `count` workers out of the nodes' free resources, first fit (as placement does)."""
    counts = gang_assignment(per_worker, count, free)
    if counts is None:  # the scheduler placed things otherwise: take what fits, in order
        counts = []
        left = count
        for f in free:
            n = min(per_worker.copies_in(f), left)
            counts.append(n)
            left -= n
    for i, n in enumerate(counts):
        free[i] = free[i] - per_worker.times(n)
