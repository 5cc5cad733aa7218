"""The rig's description (clusters and their kwok node pools) and the Node objects it implies."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from kaon.api.names import GPU_RESOURCE

# How the rig labels and taints its nodes (what a cloud's node pools and the NVIDIA device
# plugin would); kaon itself learns them from each ComputeCluster's pools, never from here.
POOL_LABEL = "kaon.dev/pool"
ACCELERATOR_LABEL = "kaon.dev/accelerator"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
RIG_LABEL = "kaon.dev/rig-node"
GPU_TAINT_KEY = "nvidia.com/gpu"

# The simulated exit of a pod on a kwok node (stages.yaml, which spells them out the same way).
SIM_EXIT_CODE = "kaon.dev/sim-exit-code"
SIM_DURATION = "kaon.dev/sim-duration"
SIM_MESSAGE = "kaon.dev/sim-message"
SIM_FAIL = "kaon.dev/sim-fail"  # "ATTEMPT:RANK:CODE,...": the kaon worker of that attempt and rank


class RigPool(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    nodes: int = Field(ge=0)
    cpu: str = "32"
    memory: str = "128Gi"
    pods: int = Field(default=110, ge=1)
    gpus: int = Field(default=0, ge=0)
    accelerator: str | None = None
    gpu_product: str | None = Field(default=None, alias="gpuProduct")
    agent: bool = False  # nodes served by the rig's process agent (real processes), not kwok

    def node_name(self, cluster: str, index: int) -> str:
        return f"{cluster}-{self.name}-{index}"


class RigCluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = {}
    pools: list[RigPool] = []


class RigConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clusters: list[RigCluster]

    def cluster(self, name: str) -> RigCluster:
        for c in self.clusters:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.clusters)
        raise KeyError(f"no cluster named {name!r} in the rig (known: {known})")


def load_config(path: Path | None = None) -> RigConfig:
    text = (
        path.read_text() if path else resources.files("kaon_rig").joinpath("pools.yaml").read_text()
    )
    return RigConfig.model_validate(yaml.safe_load(text))


def stages_text() -> str:
    return resources.files("kaon_rig").joinpath("stages.yaml").read_text()


def node_manifest(cluster: str, pool: RigPool, index: int) -> dict[str, Any]:
    """A kwok-managed Node with the pool's real capacity, labels and (for GPU pools) taint."""
    name = pool.node_name(cluster, index)
    labels = {
        POOL_LABEL: pool.name,
        RIG_LABEL: "true",
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    capacity: dict[str, str] = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
    taints: list[dict[str, str]] = []
    if pool.gpus:
        capacity[GPU_RESOURCE] = str(pool.gpus)
        taints.append({"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"})
        if pool.accelerator:
            labels[ACCELERATOR_LABEL] = pool.accelerator
        if pool.gpu_product:
            labels[GPU_PRODUCT_LABEL] = pool.gpu_product
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": taints},
        "status": {"allocatable": capacity, "capacity": dict(capacity)},
    }


def node_manifests(cluster: RigCluster) -> list[dict[str, Any]]:
    """The kwok nodes; an agent pool's nodes are registered by their agent."""
    return [
        node_manifest(cluster.name, p, i)
        for p in cluster.pools
        if not p.agent
        for i in range(p.nodes)
    ]
