"""`kaon router`: watch the hub's InferenceServices and serve their one address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from kaon.api.common import API_VERSION
from kaon.clusters import paths
from kaon.clusters.client import KubeClient
from kaon.clusters.informer import run_informer
from kaon.lifecycle.routing import HoldLimits
from kaon.router.proxy import Router, upstream_session
from kaon.router.table import RouteTable
from kaon.router.waker import Waker

log = logging.getLogger(__name__)


async def serve(kubeconfig: Mapping[str, Any], host: str, port: int, limits: HoldLimits) -> None:
    """Until SIGTERM or SIGINT: the hub watch and the HTTP server."""
    hub = KubeClient(kubeconfig)
    table = RouteTable()
    watch = asyncio.create_task(
        run_informer(hub, paths.custom(API_VERSION, "inferenceservices"), table.reset, table.event)
    )
    session = upstream_session()
    router = Router(table, Waker(hub), limits, session)
    runner = web.AppRunner(router.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    log.info("kaon router on %s:%d, hub %s", host, port, hub.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()  # answers what is in flight, then closes
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    await session.close()
    await hub.close()
