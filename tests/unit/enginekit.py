"""A kaon engine on in-memory API servers, for controller tests that run in milliseconds.

`World` is a hub `ApiDouble` with the ComputeClusters and their kubeconfig Secrets, member
doubles with nodes in a CPU pool and a tainted GPU pool, a `FakeClock` and a `Manager` wired to
them (members made with `apidouble.connect`). The Manager's loops are not started: a test feeds
hub objects to the controllers as kopf's watch would (`feed`) and drives reconciles and
admission passes itself, so every step happens when the test says. The members' informers are
real tasks; `settle` lets them catch up with their server.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

from kaon.api.common import API_VERSION
from kaon.api.names import FINALIZER, ObjectKey
from kaon.api.settings import Settings
from kaon.builders.server import Revision, deployment_name
from kaon.clusters import paths
from kaon.clusters.client import Obj
from kaon.clusters.inventory import pod_request
from kaon.clusters.member import Member
from kaon.controllers.inferenceservice import InferenceServiceController
from kaon.controllers.trainingjob import TrainingJobController
from kaon.manager import Manager

import apidouble
from apidouble import ApiDouble

NS = "team"  # the namespace of the tests' TrainingJobs and InferenceServices
OPERATOR_NS = "kaon-system"
POOL_LABEL = "kaon.dev/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
START_WALL = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@dataclass
class FakeClock:
    """`kaon.engine.clock.Clock` that moves only when a test moves it."""

    mono: float = 1_000.0
    now: float = START_WALL

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Both clocks move on, as time passing does."""
        self.mono += seconds
        self.now += seconds


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until `condition` holds (everything here is in memory: no waiting)."""
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def on_loop(scenario: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A plain test (fixtures allowed) that runs `scenario` on a fresh event loop; a `World`
    among its arguments is started before and stopped after."""

    @functools.wraps(scenario)
    def test(*args: Any, **kwargs: Any) -> None:
        async def run() -> None:
            worlds = [v for v in kwargs.values() if isinstance(v, World)]
            for w in worlds:
                await w.start()
            try:
                await scenario(*args, **kwargs)
            finally:
                for w in worlds:
                    await w.stop()

        asyncio.run(run())

    return test  # pytest reads the scenario's signature (through __wrapped__) for fixtures


# Objects ------------------------------------------------------------------------------------


def merged(base: Obj, extra: Obj) -> Obj:
    return cast(Obj, apidouble.json_merge_patch(base, extra))


def trainingjob(name: str, spec: Obj | None = None, ns: str = NS) -> Obj:
    """A TrainingJob of 2 CPU workers of 6 cores (two fill the default world's CPU pool)."""
    base: Obj = {
        "model": {"family": "cnn"},
        "workers": 2,
        "resources": {"cpu": "6", "memory": "4Gi"},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": merged(base, spec or {}),
    }


def inferenceservice(name: str, spec: Obj | None = None, ns: str = NS) -> Obj:
    base: Obj = {
        "model": {"uri": "pvc://models/digits"},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "replicas": {"min": 1, "max": 3},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns},
        "spec": merged(base, spec or {}),
    }


def job_path(name: str, ns: str = NS) -> str:
    return paths.custom(API_VERSION, "trainingjobs", ns, name)


def isvc_path(name: str, ns: str = NS) -> str:
    return paths.custom(API_VERSION, "inferenceservices", ns, name)


def cluster_path(name: str) -> str:
    return paths.custom(API_VERSION, "computeclusters", None, name)


def deployment_path(service: str, revision: Revision, ns: str = NS) -> str:
    return f"{paths.collection('apps/v1', 'deployments', ns)}/{deployment_name(service, revision)}"


@dataclass
class MemberSpec:
    """A member cluster of the world: its nodes and how its ComputeCluster describes it."""

    name: str
    cpu_nodes: int = 2  # 8 cores, 32Gi each
    gpu_nodes: int = 1  # 16 cores, 64Gi, 4 GPUs each, tainted
    cpu_cost: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)


def compute_cluster(spec: MemberSpec, secret: str) -> Obj:
    pools: list[Obj] = [
        {"name": "cpu", "nodeSelector": {POOL_LABEL: "cpu"}, "costPerHour": spec.cpu_cost}
    ]
    if spec.gpu_nodes:
        pools.append(
            {
                "name": "gpu",
                "nodeSelector": {POOL_LABEL: "gpu"},
                "tolerations": [GPU_TOLERATION],
                "accelerator": {"type": "nvidia-t4", "countPerNode": 4},
                "costPerHour": 3.0,
            }
        )
    return {
        "apiVersion": API_VERSION,
        "kind": "ComputeCluster",
        "metadata": {"name": spec.name, "labels": dict(spec.labels)},
        "spec": {
            "kubeconfigSecretRef": {"name": secret, "namespace": OPERATOR_NS},
            "pools": pools,
        },
    }


# The world ----------------------------------------------------------------------------------


class World:
    """A hub, its members and a Manager on a fake clock. `start` registers the members and
    waits until their views are synced; `stop` stops the Manager's members."""

    def __init__(
        self, members: Iterable[MemberSpec] = (MemberSpec("west"),), **settings: Any
    ) -> None:
        self.clock = FakeClock()
        self.hub = ApiDouble("hub", wall=self.clock.wall)
        self.specs = {m.name: m for m in members}
        self.members: dict[str, ApiDouble] = {}
        for spec in self.specs.values():
            api = self.members[spec.name] = ApiDouble(spec.name, wall=self.clock.wall)
            for i in range(spec.cpu_nodes):
                api.add_node(f"{spec.name}-cpu-{i}", cpu="8", labels={POOL_LABEL: "cpu"})
            for i in range(spec.gpu_nodes):
                api.add_node(
                    f"{spec.name}-gpu-{i}",
                    cpu="16",
                    memory="64Gi",
                    gpus=4,
                    labels={POOL_LABEL: "gpu"},
                    taints=[GPU_TAINT],
                )
            secret = f"{spec.name}-kubeconfig"
            self.hub.put(api.kubeconfig_secret(OPERATOR_NS, secret))
            self.hub.put(compute_cluster(spec, secret))
        self.settings = Settings(
            namespace=OPERATOR_NS, metrics_port=0, placement_interval_s=0.0, **settings
        )
        self.manager = Manager(
            self.hub,
            self.hub.kubeconfig(),
            self.settings,
            clock=self.clock,
            connect=apidouble.connect,
        )

    @property
    def jobs(self) -> TrainingJobController:
        return self.manager.jobs

    @property
    def services(self) -> InferenceServiceController:
        return self.manager.services

    async def start(self) -> None:
        await self.manager.clusters.activate()  # the tests drive a leader's controllers
        for name in self.specs:
            body = self.hub.peek(cluster_path(name))
            assert body is not None
            await self.manager.clusters.object_event("ADDED", body)
        for name in self.specs:
            await until(functools.partial(self.is_ready, name), f"member {name} ready")

    async def stop(self) -> None:
        await self.manager.stop()

    async def __aenter__(self) -> World:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def is_ready(self, name: str) -> bool:
        """Ready and swept: offered to admission."""
        member = self.manager.fleet.member(name)
        return member is not None and member.ready and member.swept

    def member(self, name: str = "west") -> Member:
        member = self.manager.fleet.member(name)
        assert member is not None, f"member {name} is not registered"
        return member

    # Hub objects as kopf delivers them --------------------------------------------------------

    def feed(self) -> None:
        """Hand the controllers the hub's TrainingJobs and InferenceServices as watch events:
        what is stored (ADDED/MODIFIED) and what is gone (DELETED)."""
        for plural, controller in (
            ("trainingjobs", self.manager.jobs),
            ("inferenceservices", self.manager.services),
        ):
            stored = self.hub.items(paths.custom(API_VERSION, plural))
            present = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in stored}
            for key, body in controller.cache.items():
                if key not in present:
                    controller.object_event("DELETED", body)
            for body in stored:
                known = (body["metadata"]["namespace"], body["metadata"]["name"]) in (
                    controller.cache
                )
                controller.object_event("MODIFIED" if known else "ADDED", body)

    def apply(self, body: Obj) -> ObjectKey:
        """Create or replace an object on the hub as a user would, and feed it."""
        self.hub.put(body)
        self.feed()
        return body["metadata"]["namespace"], body["metadata"]["name"]

    def edit(self, path: str, patch: Obj) -> None:
        self.hub.edit(path, patch)
        self.feed()

    def delete(self, path: str) -> None:
        """`kubectl delete`: finalizers hold the object until kaon removes its own."""
        self.hub.remove(path)
        self.feed()

    # Driving the controllers -------------------------------------------------------------------

    async def reconcile_job(self, name: str, ns: str = NS) -> float | None:
        self.feed()
        delay: float | None = await self.manager.jobs.reconcile((ns, name))
        self.feed()
        return delay

    async def reconcile_service(self, name: str, ns: str = NS) -> float | None:
        self.feed()
        delay: float | None = await self.manager.services.reconcile((ns, name))
        self.feed()
        return delay

    async def place(self) -> None:
        """One admission pass over the waiting jobs."""
        self.feed()
        await self.manager.jobs.place_waiting()
        self.feed()

    async def settle(self) -> None:
        """Let every reachable member's informers take in all their server's changes."""

        def caught_up() -> bool:
            return all(
                api.watching == 2 and api.delivered
                for api in self.members.values()
                if not api.unreachable
            )

        await until(caught_up, "the members' informers caught up")

    async def lose(self, member: str) -> None:
        self.members[member].unreachable = True
        await until(lambda: not self.member(member).ready, f"{member} seen unreachable")

    async def regain(self, member: str) -> None:
        self.members[member].unreachable = False
        await until(lambda: self.is_ready(member), f"{member} ready again")
        await self.settle()

    # Reading the hub ----------------------------------------------------------------------------

    def job(self, name: str, ns: str = NS) -> Obj | None:
        return self.hub.peek(job_path(name, ns))

    def job_status(self, name: str, ns: str = NS) -> Obj:
        body = self.job(name, ns)
        assert body is not None, f"TrainingJob {name} is gone"
        return body.get("status") or {}

    def service_status(self, name: str, ns: str = NS) -> Obj:
        body = self.hub.peek(isvc_path(name, ns))
        assert body is not None, f"InferenceService {name} is gone"
        return body.get("status") or {}

    def events(self, name: str, reason: str | None = None, ns: str = NS) -> list[Obj]:
        """Events on the hub about object `name` (of the given reason), oldest first."""
        return [
            e
            for e in self.hub.items(paths.events(ns))
            if e["involvedObject"]["name"] == name and reason in (None, e["reason"])
        ]

    def hub_writes(self) -> int:
        """Writes that reached the hub, Events aside."""
        return sum(1 for _, path in self.hub.writes if "/events" not in path)

    # The member's world: the scheduler, kubelets, a Deployment controller -----------------------

    def pods(self, member: str = "west", selector: str = "", ns: str = NS) -> dict[str, Obj]:
        items = self.members[member].items(paths.pods(ns), selector)
        return {p["metadata"]["name"]: p for p in items}

    def run_pods(
        self, names: Iterable[str], member: str = "west", phase: str = "Running", **kw: Any
    ) -> None:
        """Bind each pod to a node of its pool (the scheduler) and report `phase` (the kubelet)."""
        api = self.members[member]
        for name in names:
            pod = api.peek(paths.pod(NS, name))
            assert pod is not None, f"pod {name} does not exist in {member}"
            if not pod["spec"].get("nodeName"):
                api.bind(NS, name, self._node_for(member, pod))
            api.set_phase(NS, name, phase, **kw)

    def _node_for(self, member: str, pod: Obj) -> str:
        """The first node of the pod's pool with room for it (first fit, as the tests count)."""
        selector = pod["spec"].get("nodeSelector") or {}
        inventory = self.member(member).inventory
        need = pod_request(pod)
        for node in sorted(inventory.nodes_matching(selector), key=lambda n: n.name):
            if need.fits_in(inventory.free(node.name)):
                return node.name
        raise AssertionError(f"no node of {selector} in {member} has room for the pod")

    def spawn_replicas(
        self, service: str, revision: Revision = "stable", member: str = "west", count: int = 1
    ) -> list[str]:
        """Pods of a Deployment the operator applied, made as its ReplicaSet would."""
        api = self.members[member]
        dep = api.peek(deployment_path(service, revision))
        assert dep is not None, f"no Deployment of {service}/{revision} in {member}"
        template = dep["spec"]["template"]
        labels = template["metadata"]["labels"]
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        names = []
        existing = len(api.items(paths.pods(NS), selector))
        for i in range(existing, existing + count):
            name = f"{dep['metadata']['name']}-{i}"
            api.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": NS, "labels": labels},
                    "spec": template["spec"],
                }
            )
            names.append(name)
        return names


def has_finalizer(body: Obj | None) -> bool:
    return body is not None and FINALIZER in (body["metadata"].get("finalizers") or [])
