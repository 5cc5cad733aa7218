"""`kaon router`: watch the hub's InferenceServices and serve their one address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RouterTLS:
    """The router's own certificate (HTTPS to clients) and the CA its replicas' come from."""

    cert_file: str | None = None
    key_file: str | None = None
    replica_ca_file: str | None = None

    def server_context(self) -> ssl.SSLContext | None:
        if not self.cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def replica_context(self) -> ssl.SSLContext | None:
        if not self.replica_ca_file:
            return None
        return ssl.create_default_context(cafile=self.replica_ca_file)


async def serve(
    kubeconfig: Mapping[str, Any],
    host: str,
    port: int,
    limits: HoldLimits,
    tls: RouterTLS | None = None,
) -> None:
    """Until SIGTERM or SIGINT: the hub watch and the HTTP(S) server."""
    tls = tls or RouterTLS()
    hub = KubeClient(kubeconfig)
    table = RouteTable()
    watch = asyncio.create_task(
        run_informer(hub, paths.custom(API_VERSION, "inferenceservices"), table.reset, table.event)
    )
    session = upstream_session()
    router = Router(table, Waker(hub), limits, session, tls.replica_context())
    runner = web.AppRunner(router.app(), access_log=None, handle_signals=False)
    await runner.setup()
    context = tls.server_context()
    await web.TCPSite(runner, host, port, backlog=1024, ssl_context=context).start()
    scheme = "https" if context else "http"
    log.info("kaon router on %s://%s:%d, hub %s", scheme, host, port, hub.server)
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
