"""Running a container's probes against its local process (the decisions are `probes`').

httpGet: a GET to the pod's IP (or the probe's host) with kubelet's headers; 200-399 is a
success; a redirect to the same host is followed (up to 10), one to another host counts as a
success. tcpSocket: the connection opens. exec: the command (mapped like the container's own,
with its environment and working directory) exits 0. A probe that takes longer than its
timeoutSeconds fails (an exec probe's process group is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import aiohttp
from yarl import URL

from kaon_rig import podrun
from kaon_rig.probes import ContainerHealth, Exec, HttpGet, Kind, Probe, TcpSocket

log = logging.getLogger("kaon_rig.prober")

USER_AGENT = "kube-probe/1.36"
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)

Check = Callable[[Probe], Awaitable[bool]]
Changed = Callable[[], Awaitable[None]]


def http_session() -> aiohttp.ClientSession:
    """One per agent; no keep-alive, as a kubelet's probes."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, ssl=False))


async def check(
    probe: Probe, pod_ip: str, run: podrun.LocalRun, session: aiohttp.ClientSession
) -> bool:
    """One probe, once: whether it succeeded within its timeout."""
    try:
        return await asyncio.wait_for(_attempt(probe, pod_ip, run, session), probe.timeout_s)
    except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
        log.debug("%s of %s failed: %r", probe.kind, pod_ip, exc)
        return False


async def _attempt(
    probe: Probe, pod_ip: str, run: podrun.LocalRun, session: aiohttp.ClientSession
) -> bool:
    action = probe.action
    if isinstance(action, HttpGet):
        return await http_get(session, action, action.host or pod_ip)
    if isinstance(action, TcpSocket):
        return await tcp_open(action.host or pod_ip, action.port)
    return await exec_ok(action, run)


async def http_get(session: aiohttp.ClientSession, get: HttpGet, host: str) -> bool:
    path = get.path if get.path.startswith("/") else "/" + get.path
    url = URL(f"{get.scheme.lower()}://{host}:{get.port}{path}", encoded=True)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"} | dict(get.headers)
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                return 200 <= resp.status < 400
            target = url.join(URL(location))
            if target.host != url.host:
                return True
            url = target
    return False


async def tcp_open(host: str, port: int) -> bool:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def exec_ok(action: Exec, run: podrun.LocalRun) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *run.local_argv(list(action.command)),
        cwd=run.cwd,
        env=run.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return await proc.wait() == 0
    finally:
        if proc.returncode is None:  # timed out: the whole group goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def supervise(health: ContainerHealth, probe_once: Check, changed: Changed) -> Kind:
    """Probe one container run until liveness or startup gives up; the kind that gave up.

    While the probes pass it never returns: the caller cancels it when the container exits.
    `changed` is awaited after every change of the container's started/ready state.
    """
    started = asyncio.Event()
    verdict: asyncio.Future[Kind] = asyncio.get_running_loop().create_future()

    async def loop(probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay_s)
        if probe.kind is not Kind.STARTUP:
            await started.wait()
        while health.wants(probe.kind):
            ok = await probe_once(probe)
            if health.record(probe.kind, ok):
                if health.started:
                    started.set()
                await changed()
                if health.failed is not None and not verdict.done():
                    verdict.set_result(health.failed)
            if health.wants(probe.kind):
                await asyncio.sleep(probe.period_s)

    if health.started:
        started.set()
    tasks = [asyncio.create_task(loop(p), name=str(p.kind)) for p in health.probes.values()]
    try:
        return await verdict
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s stopped", task.get_name(), exc_info=task.exception())
