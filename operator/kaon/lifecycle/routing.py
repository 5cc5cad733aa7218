"""Where kaon's router sends a request: the service's ready replicas, split between its
revisions by weight, exactly.

A weighted random choice would only approach `trafficPercent` on average (±2 points over 2,000
requests is one standard deviation at 10%); smooth weighted round robin (as nginx balances
upstreams) gives every window of 100 requests exactly the requested share, whatever the replica
counts, and spreads the canary's turns evenly instead of in bursts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REVISIONS = ("stable", "canary")


@dataclass(frozen=True)
class HoldLimits:
    """How the router holds requests of a service without a ready replica."""

    timeout_s: float = 60.0  # a held request gets 503 after this long without a replica
    max_held: int = 1000  # per service; more get 503 at once
    retry_after_s: int = 5


@dataclass(frozen=True)
class Route:
    """One InferenceService as the router sees it."""

    endpoints: Mapping[str, tuple[str, ...]]  # revision -> HOST:PORT of its ready replicas
    canary_percent: int = 0
    may_wake: bool = False  # replicas.min is 0: a held request asks for a replica
    tls: bool = False  # the replicas serve HTTPS (spec.tls)

    @property
    def ready(self) -> bool:
        return any(self.endpoints.values())


def route_of(body: Mapping[str, Any]) -> Route:
    """The route of an InferenceService from its spec (weights) and status (ready replicas)."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    found: dict[str, list[str]] = {r: [] for r in REVISIONS}
    for cluster in status.get("clusters") or []:
        for endpoint in cluster.get("endpoints") or []:
            revision, address = endpoint.get("revision"), endpoint.get("address")
            if revision in found and isinstance(address, str) and address:
                found[revision].append(address)
    canary = spec.get("canary") or {}
    percent = canary.get("trafficPercent", 0) if canary else 0
    minimum = (spec.get("replicas") or {}).get("min", 1)
    return Route(
        {r: tuple(a) for r, a in found.items()},
        percent if isinstance(percent, int) else 0,
        minimum == 0,
        bool(spec.get("tls")),
    )


def weights(route: Route) -> dict[str, int]:
    """Each revision's weight among those with a ready replica: a revision with none gives its
    share to the other (only ready replicas get traffic)."""
    wanted = {"stable": 100 - route.canary_percent, "canary": route.canary_percent}
    ready = {r: w for r, w in wanted.items() if route.endpoints.get(r) and w > 0}
    if ready:
        return ready
    return {r: 1 for r in REVISIONS if route.endpoints.get(r)}


@dataclass
class Splitter:
    """Smooth weighted round robin over a service's revisions, then round robin over each
    revision's replicas. One per service; its state is only the running credits."""

    credits: dict[str, int] = field(default_factory=dict)
    turns: dict[str, int] = field(default_factory=dict)

    def pick(self, route: Route) -> tuple[str, str] | None:
        """(revision, HOST:PORT) for the next request, or None when no replica is ready."""
        shares = weights(route)
        if not shares:
            return None
        total = sum(shares.values())
        for revision, weight in shares.items():
            self.credits[revision] = self.credits.get(revision, 0) + weight
        chosen = max(shares, key=lambda r: (self.credits[r], r == "stable"))
        self.credits[chosen] -= total
        for revision in list(self.credits):
            if revision not in shares:
                del self.credits[revision]
        return chosen, self.next_replica(route, chosen)

    def next_replica(self, route: Route, revision: str) -> str:
        addresses = route.endpoints[revision]
        turn = self.turns.get(revision, 0)
        self.turns[revision] = turn + 1
        return addresses[turn % len(addresses)]
