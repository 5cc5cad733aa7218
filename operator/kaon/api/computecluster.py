"""ComputeCluster: a member cluster kaon may place workloads on, and its node pools."""

from __future__ import annotations

from pydantic import Field

from kaon.api.common import (
    MAX_LABELS,
    Condition,
    DNSLabel,
    ShortString,
    Toleration,
    conditions_field,
)
from kaon_kernels.config import Spec, rule

# Of one node-hour, in whatever currency the pools share: only the order matters to kaon.
MAX_COST_PER_HOUR = 1_000_000.0


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
        max_length=MAX_LABELS,
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
        default=0.0,
        ge=0.0,
        le=MAX_COST_PER_HOUR,
        description="Cost of one node-hour (0 to 1e6): a gang's cost per hour is this times "
        "the nodes' worth it takes, and the cheapest fitting pool wins.",
    )
    spot: bool = Field(
        default=False,
        description="Spot or preemptible nodes: cheaper, and they may vanish. Only workloads "
        "with spec.placement.spot take them.",
    )


class ComputeClusterSpec(Spec):
    """How to reach a member cluster and which node pools it offers."""

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

    @rule(
        "self.hub != has(self.kubeconfigSecretRef)",
        "set exactly one of hub (this is the hub cluster) and kubeconfigSecretRef",
        ".kubeconfigSecretRef",
    )
    def _hub_or_secret(self) -> bool:
        return self.hub != (self.kubeconfig_secret_ref is not None)

    @rule(
        "self.pools.all(p, self.pools.exists_one(q, q.name == p.name))",
        "pool names must be unique",
        ".pools",
    )
    def _unique_pool_names(self) -> bool:
        return len({p.name for p in self.pools}) == len(self.pools)


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
