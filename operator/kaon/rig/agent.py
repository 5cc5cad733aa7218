"""The rig's process agent: a kubelet stand-in that runs pods as local processes.

A development tool for the rig, not for production. It registers one Node that kwok does not
manage (no `kwok.x-k8s.io/node: fake` annotation), keeps its Lease and Ready condition fresh,
watches the pods bound to it and runs each pod's single container as a process of this machine
with the environment, arguments and working directory the pod asks for (see `podrun` for the
path, DNS and port mapping). The container's output goes to `<pod dir>/<container>.log`; its
exit code and termination message end up in the pod's status, as a kubelet would report them.
Deleting the pod sends SIGTERM to the process group, then SIGKILL after the grace period.
Images, probes, resource limits and `kubectl logs` are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.informer import run_informer
from kaon.rig import podrun
from kaon.rig.config import POOL_LABEL, RigPool

log = logging.getLogger("kaon.rig.agent")

AGENT_LABEL = "kaon.dev/agent"
AGENT_TAINT = {"key": AGENT_LABEL, "value": "true", "effect": "NoSchedule"}
HEARTBEAT_S = 10.0
LEASE_S = 40
MAX_MESSAGE = 4096
LOG_TAIL_LINES = 80
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


def pod_dir(work_dir: Path, meta: Obj) -> Path:
    """Where the agent keeps one pod's volumes, log, pid and termination message."""
    return work_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"


def agent_node(node: str, pool: RigPool) -> Obj:
    capacity = _capacity(pool)
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
        "spec": {"taints": [AGENT_TAINT]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def _node_status(pool: RigPool) -> Obj:
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
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "kaon-agent", "operatingSystem": "linux"},
        }
    }


def exit_code(returncode: int) -> int:
    """A signal death as a shell (and a kubelet) reports it: 128 + signal number."""
    return 128 - returncode if returncode < 0 else returncode


def termination_message(run: podrun.LocalRun, log_file: Path, code: int) -> str:
    try:
        message = run.termination_log.read_text(errors="replace")[:MAX_MESSAGE]
    except OSError:
        message = ""
    if not message.strip() and run.fallback_to_logs and code != 0:
        with contextlib.suppress(OSError):
            lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            message = "\n".join(lines)[-2048:]
    return message


class PodProcess:
    """One pod's container, run as a local process from start to its final status."""

    def __init__(self, agent: Agent, pod: Obj) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = pod_dir(agent.work_dir, meta)
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.deleting = False
        self.grace_s = podrun.DEFAULT_GRACE_S
        self.task = asyncio.create_task(self._run(), name=f"pod-{self.ns}/{self.name}")

    async def _run(self) -> None:
        started = _now()
        try:
            run = await self._plan()
        except podrun.PodRunError as err:
            await self._finish(None, err.reason, str(err), started)
            return
        except ApiError as err:
            await self._finish(None, "CreateContainerConfigError", str(err), started)
            return
        self.grace_s = run.grace_s
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        while not self.deleting:
            code, message = await self._execute(run)
            again = policy == "Always" or (policy == "OnFailure" and code != 0)
            if self.deleting or not again:
                await self._finish(code, "Completed" if code == 0 else "Error", message, started)
                return
            self.restarts += 1
            await asyncio.sleep(min(30.0, 2.0**self.restarts))
        await self._finish(None, "Killed", "pod deleted before its container started", started)

    async def _plan(self) -> podrun.LocalRun:
        self.dir.mkdir(parents=True, exist_ok=True)
        volumes = await self.agent.volume_dirs(self.pod, self.dir)
        lookup = await self.agent.prefetch(self.pod)
        key = podrun.rendezvous_key(self.pod)
        port = self.agent.ports.setdefault(key, free_port()) if key else None
        machine = podrun.Machine(
            pod_dir=self.dir,
            python=sys.executable,
            api_host=self.agent.api_host,
            api_port=self.agent.api_port,
            base_env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")},
        )
        return podrun.plan(self.pod, machine, volumes, lookup, port)

    async def _execute(self, run: podrun.LocalRun) -> tuple[int, str]:
        cname = podrun.container(self.pod)["name"]
        log_file = self.dir / f"{cname}.log"
        run.termination_log.write_text("")
        with log_file.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *run.argv,
                cwd=run.cwd,
                env=run.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.dir / "pid").write_text(f"{self.proc.pid}\n")
        if self.deleting:
            self.signal(signal.SIGTERM)
        await self.agent.patch_status(self.pod, self._running(cname))
        code = exit_code(await self.proc.wait())
        return code, termination_message(run, log_file, code)

    def _running(self, cname: str) -> Obj:
        now = _now()
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        return {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": cname,
                    "ready": True,
                    "started": True,
                    "restartCount": self.restarts,
                    "image": podrun.container(self.pod).get("image", ""),
                    "imageID": "",
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }

    async def _finish(self, code: int | None, reason: str, message: str, started: str) -> None:
        containers = (self.pod.get("spec") or {}).get("containers") or [{}]
        cname = containers[0].get("name", "")
        terminated = {
            "exitCode": 128 + signal.SIGKILL if code is None else code,
            "reason": reason,
            "message": message,
            "startedAt": started,
            "finishedAt": _now(),
        }
        phase = "Succeeded" if code == 0 else "Failed"
        status = {
            "phase": phase,
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": _now(),
                }
                for t in ("ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": cname,
                    "ready": False,
                    "restartCount": self.restarts,
                    "image": "",
                    "imageID": "",
                    "state": {"terminated": terminated},
                }
            ],
        }
        if code is None and reason != "Killed":
            status["reason"], status["message"] = reason, message
        await self.agent.patch_status(self.pod, status)
        log.info("pod %s/%s ended: %s (exit %s)", self.ns, self.name, reason, code)
        if self.deleting:
            await self.agent.remove(self.pod)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    async def stop(self) -> None:
        """The pod is being deleted: SIGTERM, then SIGKILL once the grace period is over."""
        if self.deleting:
            return
        self.deleting = True
        self.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), self.grace_s)
        self.signal(signal.SIGKILL)


class Agent:
    def __init__(
        self, client: KubeClient, node: str, pool: RigPool, work_dir: Path, ca_data: bytes
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
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the node -------------------------------------------------------------------------

    async def register(self) -> None:
        await self.client.create_or_get(paths.nodes(), agent_node(self.node, self.pool))
        await self.client.merge_patch(
            f"{paths.nodes()}/{self.node}/status", _node_status(self.pool)
        )

    async def heartbeat(self) -> None:
        while True:
            try:
                await self._renew_lease()
                await self.client.merge_patch(
                    f"{paths.nodes()}/{self.node}/status", _node_status(self.pool)
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
                proc.signal(signal.SIGKILL)
                self.pods.pop(uid, None)
        for pod in items:
            self.on_event("ADDED", pod)

    def on_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        running = self.pods.get(uid)
        if kind == "DELETED":
            if running is not None:
                running.signal(signal.SIGKILL)
                self.pods.pop(uid, None)
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if pod["metadata"].get("deletionTimestamp"):
            if running is not None:
                self._spawn(running.stop())
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

    async def volume_dirs(self, pod: Obj, pod_dir: Path) -> dict[str, Path]:
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
                await self._materialize(pod, vol, out[name])
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

    async def _materialize(self, pod: Obj, vol: Obj, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        sources: list[Obj] = (vol.get("projected") or {}).get("sources") or [vol]
        for src in sources:
            for path, data in (await self._source_files(pod, src)).items():
                file = target / path
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(data)

    async def _source_files(self, pod: Obj, src: Obj) -> dict[str, bytes]:
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
                    pod, item["fieldRef"]["fieldPath"], "127.0.0.1"
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
                proc.signal(signal.SIGKILL)


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
    agent = Agent(client, node, pool, work_dir, ca)
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


def _kubeconfig_ca(kubeconfig: Path) -> bytes:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    if cluster.get("certificate-authority-data"):
        return base64.b64decode(cluster["certificate-authority-data"])
    ca = cluster.get("certificate-authority")
    return (kubeconfig.parent / ca).read_bytes() if ca else b""
