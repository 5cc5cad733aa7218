"""ComputeCluster: a member cluster kaon may place workloads on, and its node pools."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from kaon.api.common import (
    Condition,
    DNSLabel,
    ShortString,
    Toleration,
    conditions_field,
)
from kaon_kernels.config import Spec, cel


class SecretKeyRef(Spec):
    """A key of a Secret in the operator's namespace."""

    name: DNSLabel = Field(description="Name of the Secret.")
    namespace: DNSLabel | None = Field(
        default=None, description="Namespace of the Secret; the operator's namespace when omitted."
    )
    key: ShortString = Field(
        default="kubeconfig", description="Key of the Secret's data holding the kubeconfig."
    )


class Accelerator(Spec):
    """The accelerators each node of a pool carries."""

    type: DNSLabel = Field(description="Accelerator type, e.g. nvidia-a100 or nvidia-t4.")
    count_per_node: int = Field(ge=1, le=64, description="Accelerators (nvidia.com/gpu) per node.")


class PoolSpec(Spec):
    """A node pool of the member: the nodes its selector matches."""

    name: DNSLabel = Field(description="Pool name, unique within the cluster.")
    node_selector: dict[str, ShortString] = Field(
        min_length=1,
        description="Labels that select the pool's nodes; also set on the pods placed there.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=16,
        description="Tolerations the pool's pods need (e.g. for a GPU taint).",
    )
    accelerator: Accelerator | None = Field(
        default=None, description="Accelerators of the pool's nodes; absent for a CPU pool."
    )
    cost_per_hour: float = Field(
        default=0.0, ge=0.0, description="Cost of one node-hour; the tie-break between pools."
    )


class ComputeClusterSpec(Spec):
    """How to reach a member cluster and which node pools it offers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.hub != has(self.kubeconfigSecretRef)",
                    "set exactly one of hub (this is the hub cluster) and kubeconfigSecretRef",
                    ".kubeconfigSecretRef",
                ),
                cel(
                    "self.pools.all(p, self.pools.exists_one(q, q.name == p.name))",
                    "pool names must be unique",
                    ".pools",
                ),
            ]
        }
    )

    hub: bool = Field(default=False, description="The member is the hub cluster itself.")
    kubeconfig_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding the member's kubeconfig."
    )
    pools: list[PoolSpec] = Field(
        min_length=1, max_length=32, description="Node pools kaon may place workloads on."
    )
    suspend: bool = Field(
        default=False, description="No new workloads are placed here while true (cordon)."
    )


class ResourceAmounts(Spec):
    """Amounts of cpu (cores), memory (bytes) and GPUs."""

    cpu: float = Field(default=0.0, description="CPU cores.")
    memory: int = Field(default=0, description="Memory in bytes.")
    gpus: int = Field(default=0, description="nvidia.com/gpu devices.")


class PoolStatus(Spec):
    """Live inventory of one pool."""

    name: DNSLabel = Field(description="Pool name.")
    nodes: int = Field(default=0, description="Ready, schedulable nodes in the pool.")
    allocatable: ResourceAmounts = Field(
        default_factory=ResourceAmounts, description="Sum of the nodes' allocatable resources."
    )
    requested: ResourceAmounts = Field(
        default_factory=ResourceAmounts, description="Requested by pods bound to the nodes."
    )
    free: ResourceAmounts = Field(
        default_factory=ResourceAmounts, description="Allocatable minus requested."
    )


class ComputeClusterStatus(Spec):
    """Reachability of the member and the inventory of its pools."""

    observed_generation: int = Field(default=0, description="The generation last acted on.")
    conditions: list[Condition] = conditions_field("Ready: the member is reachable.")
    pools: list[PoolStatus] = Field(
        default_factory=list, max_length=32, description="Inventory of each pool."
    )
    server: ShortString = Field(default="", description="The member's API server URL.")
    kubernetes_version: ShortString = Field(
        default="", description="The member's Kubernetes version."
    )
