"""Member health over time: when an unreachable cluster counts as lost.

One rule for every workload: a cluster that has not been ready for `grace_s` is lost, and what
ran there is placed elsewhere (services now; training jobs' failover builds on the same rule).
A cluster that is merely not ready yet keeps its workloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class HealthHistory:
    """Since when each cluster has been not ready (absent: ready at the last look)."""

    unready_since: dict[str, float] = field(default_factory=dict)

    def observe(self, ready: Mapping[str, bool], now: float) -> None:
        for cluster, is_ready in ready.items():
            if is_ready:
                self.unready_since.pop(cluster, None)
            else:
                self.unready_since.setdefault(cluster, now)

    def lost(self, clusters: Mapping[str, bool], now: float, grace_s: float) -> set[str]:
        """Of these clusters (name -> ready now), those not ready for at least `grace_s`."""
        self.observe(clusters, now)
        return {
            c
            for c in clusters
            if c in self.unready_since and now - self.unready_since[c] >= grace_s
        }

    def forget(self, cluster: str) -> None:
        self.unready_since.pop(cluster, None)


def failover_wait(mode: str, grace_s: float, unready_for_s: float) -> float | None:
    """Seconds until a gang on a cluster that has not been ready for `unready_for_s` moves
    elsewhere: 0 means now, None means never (the job waits for its cluster)."""
    if mode == "Never":
        return None
    return max(grace_s - unready_for_s, 0.0)
