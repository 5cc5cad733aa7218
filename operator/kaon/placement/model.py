"""The inputs and outcomes of placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kaon.api.common import LabelSelector
from kaon.api.resources import Resources


@dataclass(frozen=True, slots=True)
class Preference:
    type: Literal["gpu", "cpu"]
    accelerator: str | None = None
    pool: str | None = None

    def describe(self) -> str:
        parts = [self.accelerator or self.type]
        if self.pool:
            parts.append(f"pool {self.pool}")
        return " ".join(parts) + (" GPU pools" if self.type == "gpu" and not self.pool else "")


@dataclass(frozen=True)
class PoolOffer:
    """A pool as placement sees it: free resources per usable node, and per-node allocatable."""

    cluster: str
    pool: str
    accelerator: str | None
    cost_per_hour: float
    cluster_labels: Mapping[str, str]
    available: bool
    node_free: tuple[Resources, ...]
    node_allocatable: tuple[Resources, ...]
    node_names: tuple[str, ...] = ()  # of node_free's nodes, in the same order
    spot: bool = False  # cheaper nodes that may vanish: only gangs that opt in

    @property
    def is_gpu(self) -> bool:
        return self.accelerator is not None

    def matches(self, pref: Preference) -> bool:
        if pref.pool and pref.pool != self.pool:
            return False
        if pref.type == "cpu":
            return not self.is_gpu
        return self.is_gpu and (pref.accelerator is None or pref.accelerator == self.accelerator)

    def where(self) -> str:
        return f"pool {self.pool} in cluster {self.cluster}"


@dataclass(frozen=True)
class GangDemand:
    key: str
    workers: int
    per_worker: Resources  # with the GPUs asked for on GPU pools
    preferences: tuple[Preference, ...]
    cluster_selector: LabelSelector | None = None
    priority: int = 0
    created: str = ""
    queue: str | None = None  # admitted within this queue's quota; None: no quota applies
    spot: bool = False  # may run on spot pools

    def on(self, offer: PoolOffer) -> Resources:
        """Per-worker demand on that pool: GPUs only on GPU pools, one pod slot each."""
        gpus = self.per_worker.gpus if offer.is_gpu else 0
        return Resources(self.per_worker.milli_cpu, self.per_worker.memory, gpus, 1)


@dataclass(frozen=True)
class Placed:
    cluster: str
    pool: str
    accelerator: str | None
    gpus_per_worker: int
    workers_per_node: tuple[int, ...] = field(default=())
    cost_per_hour: float = 0.0  # of the whole gang there
    why: str = ""  # the choice in a sentence: the rule that chose it, the best alternative
    nodes: tuple[str, ...] = ()  # per rank: the node of workers_per_node's assignment


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str


@dataclass(frozen=True)
class Unplaceable:
    reason: str
    message: str


Outcome = Placed | Waiting | Unplaceable


@dataclass(frozen=True)
class Reservation:
    """Capacity a decided workload holds on a pool beyond its pods already bound to nodes:
    counted from the moment of the decision, so the next decision cannot give it away."""

    cluster: str
    pool: str
    per_pod: Resources
    count: int
