"""Live inventory of one member cluster, fed by node and pod watch events (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaon.api.resources import Resources

Obj = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: dict[str, str]
    allocatable: Resources
    ready: bool
    schedulable: bool

    @classmethod
    def from_k8s(cls, obj: Obj) -> Node:
        status = obj.get("status") or {}
        conditions = status.get("conditions") or []
        return cls(
            name=obj["metadata"]["name"],
            labels=dict(obj["metadata"].get("labels") or {}),
            allocatable=Resources.from_k8s(status.get("allocatable")),
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
            schedulable=not (obj.get("spec") or {}).get("unschedulable", False),
        )

    @property
    def usable(self) -> bool:
        return self.ready and self.schedulable


def pod_request(pod: Obj) -> Resources:
    """What the scheduler charges a pod: sum of containers (init containers' max ignored)."""
    total = Resources(pods=1)
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total = total + Resources.from_k8s(res.get("requests") or res.get("limits"))
    return total


@dataclass(frozen=True, slots=True)
class PodUse:
    node: str
    request: Resources


@dataclass
class ClusterInventory:
    """Nodes and the resources that bound, non-terminal pods take on each."""

    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[str, PodUse] = field(default_factory=dict)  # key: namespace/name
    used: dict[str, Resources] = field(default_factory=dict)  # node -> requested

    def apply_node(self, event: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if event == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = Node.from_k8s(obj)

    def apply_pod(self, event: str, obj: Obj) -> None:
        meta = obj["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        old = self.pods.pop(key, None)
        if old:
            self.used[old.node] = self.used.get(old.node, Resources()) - old.request
        node = (obj.get("spec") or {}).get("nodeName")
        phase = (obj.get("status") or {}).get("phase")
        if event != "DELETED" and node and phase not in TERMINAL_PHASES:
            use = PodUse(node, pod_request(obj))
            self.pods[key] = use
            self.used[node] = self.used.get(node, Resources()) + use.request

    def free(self, node: str) -> Resources:
        return self.nodes[node].allocatable - self.used.get(node, Resources())

    def nodes_matching(self, selector: dict[str, str]) -> list[Node]:
        return [
            n for n in self.nodes.values() if all(n.labels.get(k) == v for k, v in selector.items())
        ]
