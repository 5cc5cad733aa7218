"""The rig's process agent: a kubelet stand-in that runs pods as local processes.

A development tool for the rig, not for production. It registers one Node that kwok does not
manage (no `kwok.x-k8s.io/node: fake` annotation), keeps its Lease and Ready condition fresh,
watches the pods bound to it and runs each pod's single container as a process of this machine
with the environment, arguments and working directory the pod asks for (see `podrun` for the
path, DNS and port mapping), on an IP address of its own (`podnet`). Its startup, readiness and
liveness probes run as a kubelet runs them (`probes`, `prober`): the pod is Ready, and so listed
as ready in its Services' EndpointSlices, when they say so, and a container that fails liveness
is restarted. The container's output goes to `<pod dir>/<container>.log`; its exit code and
termination message end up in the pod's status (`podproc`, `podstatus`). Deleting the pod sends
SIGTERM to the process group, then SIGKILL after the grace period. Images, gRPC probes, resource
limits, `kubectl logs`/`exec` and pods of several containers are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.informer import run_informer
from kaon_rig import podnet, podrun, prober
from kaon_rig.config import POOL_LABEL, RigPool
from kaon_rig.podproc import PodProcess, pod_dir

log = logging.getLogger("kaon_rig.agent")

AGENT_LABEL = "kaon.dev/agent"
AGENT_TAINT = {"key": AGENT_LABEL, "value": "true", "effect": "NoSchedule"}
HEARTBEAT_S = 10.0
LEASE_S = 40
TERMINAL = ("Succeeded", "Failed")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _capacity(pool: RigPool) -> dict[str, str]:
    return {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}


def _addresses(node: str) -> list[Obj]:
    return [
        {"type": "InternalIP", "address": podnet.NODE_IP},
        {"type": "Hostname", "address": node},
    ]


def agent_node(node: str, pool: RigPool, pod_cidr: IPv4Network | None = None) -> Obj:
    capacity = _capacity(pool)
    spec: Obj = {"taints": [AGENT_TAINT]}
    if pod_cidr is not None:
        spec |= {"podCIDR": str(pod_cidr), "podCIDRs": [str(pod_cidr)]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                POOL_LABEL: pool.name,
                AGENT_LABEL: "true",
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": _addresses(node),
        },
    }


def _node_status(node: str, pool: RigPool) -> Obj:
    now = _now()
    capacity = _capacity(pool)
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kaon rig process agent is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    return {
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [ready],
            "addresses": _addresses(node),
            "nodeInfo": {"kubeletVersion": "kaon-agent", "operatingSystem": "linux"},
        }
    }


class Agent:
    def __init__(
        self,
        client: KubeClient,
        node: str,
        pool: RigPool,
        work_dir: Path,
        ca_data: bytes,
        pod_subnet: IPv4Network | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.pool = pool
        self.work_dir = work_dir
        self.ca_data = ca_data
        server = client.server.split("://", 1)[-1]
        self.api_host, _, self.api_port = server.rpartition(":")
        self.pods: dict[str, PodProcess] = {}
        self.ports: dict[tuple[str, str, str], int] = {}
        self.addresses = podnet.AddressPool(pod_subnet or podnet.node_subnet(node))
        self._http: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the node -------------------------------------------------------------------------

    async def register(self) -> None:
        subnet = self.addresses.subnet
        node = await self.client.create_or_get(
            paths.nodes(), agent_node(self.node, self.pool, subnet)
        )
        if not (node.get("spec") or {}).get("podCIDR"):  # registered by an older agent
            with contextlib.suppress(ApiError):
                await self.client.merge_patch(
                    f"{paths.nodes()}/{self.node}",
                    {"spec": {"podCIDR": str(subnet), "podCIDRs": [str(subnet)]}},
                )
        await self.client.merge_patch(
            f"{paths.nodes()}/{self.node}/status", _node_status(self.node, self.pool)
        )

    async def heartbeat(self) -> None:
        while True:
            try:
                await self._renew_lease()
                await self.client.merge_patch(
                    f"{paths.nodes()}/{self.node}/status", _node_status(self.node, self.pool)
                )
            except ApiError as exc:
                if exc.not_found:
                    with contextlib.suppress(ApiError):
                        await self.register()
                else:
                    log.debug("heartbeat: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def _renew_lease(self) -> None:
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_S,
            "renewTime": _now_micro(),
        }
        try:
            await self.client.merge_patch(f"{path}/{self.node}", {"spec": spec})
        except ApiError as exc:
            if not exc.not_found:
                raise
            await self.client.create(path, {"metadata": {"name": self.node}, "spec": spec})

    # --- pods -----------------------------------------------------------------------------

    def on_reset(self, items: list[Obj]) -> None:
        seen = {p["metadata"]["uid"] for p in items}
        for uid, proc in list(self.pods.items()):
            if uid not in seen:
                proc.kill()
                self.pods.pop(uid, None)
        for pod in items:
            self.on_event("ADDED", pod)

    def on_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        running = self.pods.get(uid)
        if kind == "DELETED":
            if running is not None:
                running.kill()
                self.pods.pop(uid, None)
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if pod["metadata"].get("deletionTimestamp"):
            if running is not None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                self._spawn(running.stop(None if grace is None else float(grace)))
            elif phase in TERMINAL or phase == "Pending":
                self._spawn(self.remove(pod))
            return
        if running is not None or phase in TERMINAL:
            return
        if phase == "Running":  # started by an earlier agent process: cannot be re-attached
            self._spawn(self._orphaned(pod))
            return
        self.pods[uid] = PodProcess(self, pod)

    async def _orphaned(self, pod: Obj) -> None:
        pid_file = pod_dir(self.work_dir, pod["metadata"]) / "pid"
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        await self.patch_status(
            pod,
            {
                "phase": "Failed",
                "reason": "NodeShutdown",
                "message": "the rig's process agent restarted while the pod ran",
            },
        )

    async def patch_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.merge_patch(
                f"{paths.pod(meta['namespace'], meta['name'])}/status", {"status": status}
            )
        except ApiError as exc:
            if not exc.not_found:
                log.warning("status of %s/%s: %s", meta["namespace"], meta["name"], exc)

    def pod_ip(self, pod: Obj) -> str:
        """The pod's own address (the node's, for a pod on the host's network)."""
        if (pod.get("spec") or {}).get("hostNetwork"):
            return podnet.NODE_IP
        try:
            return self.addresses.allocate(pod["metadata"]["uid"])
        except RuntimeError as err:
            raise podrun.PodRunError("PodIPExhausted", str(err)) from err

    def release_ip(self, uid: str) -> None:
        self.addresses.release(uid)

    def rendezvous_port(self, key: tuple[str, str, str]) -> int:
        return self.ports.setdefault(key, free_port())

    def http_session(self) -> aiohttp.ClientSession:
        """The probes' HTTP client, shared by every pod of the agent."""
        if self._http is None:
            self._http = prober.http_session()
        return self._http

    async def remove(self, pod: Obj) -> None:
        """Finish a deletion the way a kubelet does once the containers have stopped."""
        meta = pod["metadata"]
        self.pods.pop(meta["uid"], None)
        with contextlib.suppress(ApiError):
            await self.client.request(
                "DELETE",
                paths.pod(meta["namespace"], meta["name"]),
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    # --- what a pod's container sees ------------------------------------------------------

    async def volume_dirs(self, pod: Obj, pod_dir: Path, pod_ip: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        ns = pod["metadata"]["namespace"]
        for name, vol in podrun.volume_sources(pod).items():
            if "emptyDir" in vol:
                out[name] = pod_dir / "volumes" / name
            elif "persistentVolumeClaim" in vol:
                out[name] = await self._claim_dir(ns, vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                out[name] = Path(vol["hostPath"]["path"])
            elif {"projected", "configMap", "secret", "downwardAPI"} & vol.keys():
                out[name] = pod_dir / "volumes" / name
                await self._materialize(pod, vol, out[name], pod_ip)
            else:
                kinds = ", ".join(k for k in vol if k != "name")
                raise podrun.PodRunError("UnsupportedVolume", f"volume {name}: {kinds}")
            out[name].mkdir(parents=True, exist_ok=True)
        return out

    async def _claim_dir(self, ns: str, claim: str) -> Path:
        """The bound PersistentVolume's hostPath/local path, else a directory per claim."""
        pvc = await self.client.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        volume = (pvc.get("spec") or {}).get("volumeName")
        if volume:
            pv = await self.client.get(f"/api/v1/persistentvolumes/{volume}")
            spec = pv.get("spec") or {}
            for kind in ("hostPath", "local"):
                if kind in spec:
                    return Path(spec[kind]["path"])
        return self.work_dir / "claims" / ns / claim

    async def _materialize(self, pod: Obj, vol: Obj, target: Path, pod_ip: str) -> None:
        sources: list[Obj] = (vol.get("projected") or {}).get("sources") or [vol]
        files: dict[str, bytes] = {}
        for src in sources:
            files |= await self._source_files(pod, src, pod_ip)
        _write_files(target, files)  # a few small local files: not worth a thread

    async def _source_files(self, pod: Obj, src: Obj, pod_ip: str) -> dict[str, bytes]:
        ns = pod["metadata"]["namespace"]
        if "serviceAccountToken" in src:
            return {src["serviceAccountToken"]["path"]: (await self._token(pod, src)).encode()}
        if "configMap" in src:
            ref = src["configMap"]
            data = await self._object_data("configmaps", ns, ref["name"])
            if data is None and ref["name"] == "kube-root-ca.crt":
                data = {"ca.crt": self.ca_data.decode()}
            return _items(ref, data, lambda v: v.encode())
        if "secret" in src:
            ref = dict(src["secret"])
            ref.setdefault("name", ref.get("secretName", ""))
            data = await self._object_data("secrets", ns, ref["name"])
            return _items(ref, data, base64.b64decode)
        if "downwardAPI" in src:
            return {
                item["path"]: podrun.field_value(
                    pod, item["fieldRef"]["fieldPath"], podnet.NODE_IP, pod_ip
                ).encode()
                for item in src["downwardAPI"].get("items") or []
                if "fieldRef" in item
            }
        raise podrun.PodRunError("UnsupportedVolume", f"projected source {sorted(src)}")

    async def _token(self, pod: Obj, src: Obj) -> str:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        sa = spec.get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [src["serviceAccountToken"]["audience"]]
                if src["serviceAccountToken"].get("audience")
                else None,
                "expirationSeconds": src["serviceAccountToken"].get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        answer = await self.client.create(path, request)
        return str(answer["status"]["token"])

    async def _object_data(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        try:
            obj = await self.client.get(f"/api/v1/namespaces/{ns}/{kind}/{name}")
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return dict(obj.get("data") or {})

    async def prefetch(self, pod: Obj) -> podrun.Lookup:
        """The ConfigMaps and Secrets the container's environment names, read once."""
        c = podrun.container(pod)
        wanted: set[tuple[str, str]] = set()
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                wanted.add(("configmaps", src["configMapRef"]["name"]))
            if "secretRef" in src:
                wanted.add(("secrets", src["secretRef"]["name"]))
        for item in c.get("env") or []:
            frm = item.get("valueFrom") or {}
            if "configMapKeyRef" in frm:
                wanted.add(("configmaps", frm["configMapKeyRef"]["name"]))
            if "secretKeyRef" in frm:
                wanted.add(("secrets", frm["secretKeyRef"]["name"]))
        ns = pod["metadata"]["namespace"]
        found: dict[tuple[str, str], dict[str, str] | None] = {}
        for kind, name in wanted:
            data = await self._object_data(kind, ns, name)
            if data is not None and kind == "secrets":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            found[(kind, name)] = data
        return lambda kind, name: found.get((kind, name))

    # --- running --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.register()
        log.info("node %s registered; watching its pods", self.node)
        beat = asyncio.create_task(self.heartbeat(), name="heartbeat")
        try:
            await run_informer(
                self.client,
                paths.pods(),
                self.on_reset,
                self.on_event,
                field_selector=f"spec.nodeName={self.node}",
            )
        finally:
            beat.cancel()
            for proc in list(self.pods.values()):
                proc.kill()
            if self._http is not None:
                await self._http.close()


def _write_files(target: Path, files: dict[str, bytes]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        file = target / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)


def _items(ref: Obj, data: dict[str, str] | None, decode: Any) -> dict[str, bytes]:
    if data is None:
        if ref.get("optional"):
            return {}
        raise podrun.PodRunError("CreateContainerConfigError", f"{ref['name']} not found")
    items = ref.get("items") or [{"key": k, "path": k} for k in data]
    return {i["path"]: decode(data[i["key"]]) for i in items if i["key"] in data}


async def serve(kubeconfig: Path, node: str, pool: RigPool, work_dir: Path) -> None:
    """Run the agent until SIGTERM/SIGINT; its pods' processes are killed on the way out."""
    client = KubeClient.from_file(kubeconfig)
    ca = _kubeconfig_ca(kubeconfig)
    subnet, routed = podnet.claim_subnet(node)
    log.info("pods of %s get addresses from %s", node, subnet)
    agent = Agent(client, node, pool, work_dir, ca, subnet)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await client.close()
        if routed:
            podnet.release_subnet(subnet)


def _kubeconfig_ca(kubeconfig: Path) -> bytes:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    if cluster.get("certificate-authority-data"):
        return base64.b64decode(cluster["certificate-authority-data"])
    ca = cluster.get("certificate-authority")
    return (kubeconfig.parent / ca).read_bytes() if ca else b""
