"""One pod of the rig's process agent: its container run as a local process, as a kubelet would.

The container starts with the pod's own IP, environment and directories (`podrun`), its probes
run against it (`prober`), and its status follows (`podstatus`): Running with Ready as the probes
say, a restart after an exit or a failed liveness probe as the restartPolicy says (CrashLoopBackOff
while it waits), and finally Succeeded or Failed with the exit code and termination message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from kaon.clusters.client import ApiError
from kaon_rig import podnet, podrun, podstatus, prober, probes

log = logging.getLogger("kaon_rig.agent")

Obj = dict[str, Any]
MAX_MESSAGE = 4096
LOG_TAIL_LINES = 80


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_dir(work_dir: Path, meta: Obj) -> Path:
    """Where the agent keeps one pod's volumes, log, pid and termination message."""
    return work_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"


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


class PodHost(Protocol):
    """What a pod's process needs from the node it runs on (the agent, in the rig)."""

    work_dir: Path
    api_host: str  # the API server, as the pod's in-cluster environment names it
    api_port: str

    def pod_ip(self, pod: Obj) -> str: ...
    def release_ip(self, uid: str) -> None: ...
    def rendezvous_port(self, key: tuple[str, str, str]) -> int: ...
    def http_session(self) -> aiohttp.ClientSession: ...
    async def volume_dirs(self, pod: Obj, pod_dir: Path, pod_ip: str) -> dict[str, Path]: ...
    async def prefetch(self, pod: Obj) -> podrun.Lookup: ...
    async def patch_status(self, pod: Obj, status: Obj) -> None: ...
    async def remove(self, pod: Obj) -> None: ...


class PodProcess:
    """One pod's container, run as a local process from start to its final status."""

    def __init__(self, agent: PodHost, pod: Obj) -> None:
        self.agent = agent
        self.pod = pod
        meta, spec = pod["metadata"], pod.get("spec") or {}
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec_container: Obj = (spec.get("containers") or [{}])[0]
        self.dir = pod_dir(agent.work_dir, meta)
        self.ip = ""
        self.restarts = 0
        self.started = now()
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.health: probes.ContainerHealth | None = None
        self.probes: dict[probes.Kind, probes.Probe] = {}
        self.container_id = ""
        self.conditions: list[Obj] = list((pod.get("status") or {}).get("conditions") or [])
        self.published: Obj | None = None
        self.final = False  # the terminal status is written: nothing after it
        self.proc: asyncio.subprocess.Process | None = None
        self.deleting = False
        self.deleted = asyncio.Event()
        self.grace_s = podrun.DEFAULT_GRACE_S
        self._write = asyncio.Lock()
        self.task = asyncio.create_task(self._run(), name=f"pod-{self.ns}/{self.name}")

    # --- the container's life -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            run = await self._plan()
        except podrun.PodRunError as err:
            await self._refused(err.reason, str(err))
            return
        except ApiError as err:
            await self._refused("CreateContainerConfigError", str(err))
            return
        self.grace_s = run.grace_s
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        terminated: Obj | None = None
        while not self.deleting:
            terminated = await self._execute(run)
            if self.deleting or not podstatus.restarts_after(policy, terminated["exitCode"]):
                break
            await self._back_off(terminated)
        await self._finish(terminated or self._never_started())

    async def _plan(self) -> podrun.LocalRun:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ip = self.agent.pod_ip(self.pod)
        try:
            self.probes = probes.container_probes(podrun.container(self.pod))
        except probes.ProbeError as err:
            raise podrun.PodRunError("UnsupportedProbe", str(err)) from err
        volumes = await self.agent.volume_dirs(self.pod, self.dir, self.ip)
        lookup = await self.agent.prefetch(self.pod)
        key = podrun.rendezvous_key(self.pod)
        port = self.agent.rendezvous_port(key) if key else None
        machine = podrun.Machine(
            pod_dir=self.dir,
            python=sys.executable,
            api_host=self.agent.api_host,
            api_port=self.agent.api_port,
            base_env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")},
            node_ip=podnet.NODE_IP,
            pod_ip=self.ip,
        )
        return podrun.plan(self.pod, machine, volumes, lookup, port)

    async def _execute(self, run: podrun.LocalRun) -> Obj:
        """Start the container, probe it while it runs; its `terminated` state."""
        log_file = self.dir / f"{self.spec_container.get('name', '')}.log"
        run.termination_log.write_text("")
        started = now()
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
        self.container_id = f"kaon-agent://{self.proc.pid}"
        self.health = probes.ContainerHealth(self.probes)
        self.state = {"running": {"startedAt": started}}
        await self.publish()
        code = podstatus.exit_code(await self._supervised(run, self.proc))
        self.health = None
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": termination_message(run, log_file, code),
            "startedAt": started,
            "finishedAt": now(),
            "containerID": self.container_id,
        }

    async def _supervised(self, run: podrun.LocalRun, proc: asyncio.subprocess.Process) -> int:
        """Wait for the process while its probes run; kill it when liveness or startup gives up."""
        assert self.health is not None
        session = self.agent.http_session()

        async def probe_once(probe: probes.Probe) -> bool:
            return await prober.check(probe, self.ip, run, session)

        watch = asyncio.create_task(prober.supervise(self.health, probe_once, self.publish))
        exited = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({watch, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done() and watch.exception() is not None:
                log.error("probes of %s/%s stopped", self.ns, self.name, exc_info=watch.exception())
            elif not exited.done():
                failed = self.probes[watch.result()]
                log.info(
                    "pod %s/%s: %s failed; killing the container", self.ns, self.name, failed.kind
                )
                await self._kill(exited, self.grace_s if failed.grace_s is None else failed.grace_s)
            return await exited
        finally:
            watch.cancel()
            await asyncio.wait({watch})  # no probe writes a status after this

    async def _kill(self, exited: asyncio.Future[int], grace_s: float) -> None:
        self.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), grace_s)
        self.signal(signal.SIGKILL)

    async def _back_off(self, terminated: Obj) -> None:
        """Wait before the next start, in CrashLoopBackOff; restartCount counts the starts."""
        delay = podstatus.backoff_s(self.restarts + 1)
        self.last_state = {"terminated": terminated}
        self.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container",
            }
        }
        await self.publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.deleted.wait(), delay)
        if not self.deleting:
            self.restarts += 1

    def _never_started(self) -> Obj:
        return {
            "exitCode": 128 + signal.SIGKILL,
            "reason": "Killed",
            "message": "pod deleted before its container started",
            "startedAt": self.started,
            "finishedAt": now(),
        }

    async def _refused(self, reason: str, message: str) -> None:
        """The pod cannot run here: Failed, with the reason in the pod's status."""
        terminated = self._never_started() | {"reason": reason, "message": message}
        await self._finish(terminated, {"reason": reason, "message": message})

    async def _finish(self, terminated: Obj, extra: Obj | None = None) -> None:
        self.state = {"terminated": terminated}
        phase = "Succeeded" if terminated["exitCode"] == 0 else "Failed"
        await self.publish(phase, extra or {})
        self.agent.release_ip(self.uid)
        log.info(
            "pod %s/%s ended: %s (exit %s)",
            self.ns,
            self.name,
            terminated["reason"],
            terminated["exitCode"],
        )
        if self.deleting:
            await self.agent.remove(self.pod)

    # --- its status -----------------------------------------------------------------------

    async def publish(self, phase: str = "Running", extra: Obj | None = None) -> None:
        """Write the pod's status if it changed since the last write."""
        async with self._write:
            if self.final:
                return
            status = self.status(phase) | (extra or {})
            if status != self.published:
                await self.agent.patch_status(self.pod, status)
                self.published = status
            self.final = phase != "Running"

    def status(self, phase: str) -> Obj:
        running = "running" in self.state
        health = self.health
        ready = running and health is not None and health.ready
        started = running and health is not None and health.started
        terminal = phase != "Running"
        wanted = podstatus.kubelet_conditions(ready=ready, terminal=terminal)
        self.conditions = podstatus.conditions(self.conditions, wanted, now())
        status: Obj = {
            "phase": phase,
            "hostIP": podnet.NODE_IP,
            "hostIPs": [{"ip": podnet.NODE_IP}],
            "startTime": self.started,
            "conditions": self.conditions,
            "containerStatuses": [
                podstatus.container_status(
                    self.spec_container,
                    state=self.state,
                    last_state=self.last_state,
                    restarts=self.restarts,
                    ready=ready,
                    started=started,
                    container_id=self.container_id,
                )
            ],
        }
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        return status

    # --- deletion -------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """The pod is gone from the API: no grace, and no restart."""
        self.deleting = True
        self.deleted.set()
        self.signal(signal.SIGKILL)

    async def stop(self, grace_s: float | None = None) -> None:
        """The pod is being deleted: SIGTERM, then SIGKILL once the grace period is over."""
        if self.deleting:
            return
        self.deleting = True
        self.deleted.set()
        self.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(self.task), self.grace_s if grace_s is None else grace_s
            )
        self.signal(signal.SIGKILL)
