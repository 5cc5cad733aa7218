"""Operator settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

PullPolicy = Literal["Always", "IfNotPresent", "Never"]


@dataclass(frozen=True)
class Settings:
    namespace: str = "kaon-system"  # where member kubeconfig Secrets live
    runtime_image: str = "ghcr.io/kaon-dev/kaon-runtime:0.1.0"
    image_pull_policy: PullPolicy = "IfNotPresent"
    master_port: int = 29500
    placement_interval_s: float = 0.5
    metrics_port: int = 8081  # Prometheus /metrics; 0: off
    failover_grace_s: float = 10.0  # a member not ready this long loses its workloads
    leader_election: bool = True  # act only while holding the hub's Lease (LEADER_LEASE)
    router_url: str = ""  # kaon's router (http://HOST:PORT): services' status.url goes through it

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        policy = env.get("KAON_IMAGE_PULL_POLICY", cls.image_pull_policy)
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"KAON_IMAGE_PULL_POLICY: {policy!r} is not Always/IfNotPresent/Never")
        return cls(
            namespace=env.get("KAON_NAMESPACE", cls.namespace),
            runtime_image=env.get("KAON_RUNTIME_IMAGE", cls.runtime_image),
            image_pull_policy=policy,  # type: ignore[arg-type]
            metrics_port=int(env.get("KAON_METRICS_PORT", cls.metrics_port)),
            failover_grace_s=float(env.get("KAON_FAILOVER_GRACE_SECONDS", cls.failover_grace_s)),
            leader_election=_flag(env.get("KAON_LEADER_ELECTION", "true"), "KAON_LEADER_ELECTION"),
            router_url=env.get("KAON_ROUTER_URL", cls.router_url).rstrip("/"),
        )


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}: {value!r} is not true or false")
