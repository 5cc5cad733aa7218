"""What a gang costs per hour on a pool: the pool's costPerHour per node, times the nodes'
worth of capacity the gang takes (each worker counted by its dominant share of a node)."""

from __future__ import annotations

from kaon.api.resources import Resources
from kaon.placement.model import GangDemand, PoolOffer


def node_share(need: Resources, node: Resources) -> float:
    """The largest fraction of one node a pod takes over cpu, memory and GPUs."""
    shares = [
        need.milli_cpu / node.milli_cpu if node.milli_cpu else 0.0,
        need.memory / node.memory if node.memory else 0.0,
        need.gpus / node.gpus if node.gpus else 0.0,
    ]
    return min(max(shares), 1.0)


def largest_node(offer: PoolOffer) -> Resources:
    nodes = offer.node_allocatable
    if not nodes:
        return Resources()
    return Resources(
        max(n.milli_cpu for n in nodes),
        max(n.memory for n in nodes),
        max(n.gpus for n in nodes),
        max(n.pods for n in nodes),
    )


def gang_cost(demand: GangDemand, offer: PoolOffer) -> float:
    """The gang's cost per hour on the pool, in the pools' cost units."""
    return offer.cost_per_hour * demand.workers * node_share(demand.on(offer), largest_node(offer))
