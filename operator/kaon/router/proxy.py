"""The router's HTTP side (aiohttp): /serving/NAMESPACE/NAME/... goes to a ready replica of
that InferenceService, chosen by the service's revision weights; with none ready, the request
is held (a bounded number, for a bounded time) while the operator is asked for a replica."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as CounterMetric
from prometheus_client import Gauge as GaugeMetric
from prometheus_client import Histogram as HistogramMetric

from kaon.api.names import ROUTER_PATH_PREFIX, ObjectKey
from kaon.lifecycle.routing import HoldLimits, weights
from kaon.router.table import RouteTable
from kaon.router.waker import WAKE_INTERVAL_S, Waker

REVISION_HEADER = "X-Kaon-Revision"  # on each answer: the revision that gave it
# Per RFC 9110 §7.6.1, plus what aiohttp sets itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)


# Refused or reset connections (a replica stopped or killed, a lost machine's), and keep-alive
# connections a draining server closed: V2 inference changes nothing, so another replica may
# answer the same request.
class ReplicaLeftError(Exception):
    """The replica a request went to left the service's route before it answered."""


RETRIABLE = (
    aiohttp.ClientOSError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ServerTimeoutError,
    ReplicaLeftError,
)
MAX_HOLDS = 3  # a request whose replicas become ready and go again, again, gets 503


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_labels: dict[ObjectKey, set[tuple[str, str]]] = {}  # (revision, code)
        labels = ("namespace", "service")
        self.requests = CounterMetric(
            "kaon_router_requests",
            "Requests the router answered, by revision and status code.",
            (*labels, "revision", "code"),
            registry=self.registry,
        )
        self.held = GaugeMetric(
            "kaon_router_held_requests",
            "Requests held now for want of a ready replica.",
            labels,
            registry=self.registry,
        )
        self.hold_seconds = HistogramMetric(
            "kaon_router_hold_seconds",
            "How long requests were held before a replica was ready (or they gave up).",
            labels,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )

    def answered(self, key: ObjectKey, revision: str, code: int) -> None:
        self._request_labels.setdefault(key, set()).add((revision, str(code)))
        self.requests.labels(*key, revision, str(code)).inc()

    def forget(self, key: ObjectKey) -> None:
        """A deleted service's series go (else every service ever seen stays in /metrics)."""
        for revision, code in self._request_labels.pop(key, ()):
            self.requests.remove(*key, revision, code)
        for metric in (self.held, self.hold_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(*key)


def _unavailable(why: str, limits: HoldLimits) -> web.Response:
    return web.json_response(
        {"error": why}, status=503, headers={"Retry-After": str(limits.retry_after_s)}
    )


class Router:
    def __init__(
        self,
        table: RouteTable,
        waker: Waker,
        limits: HoldLimits,
        session: aiohttp.ClientSession,
        replica_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.table = table
        self.waker = waker
        self.limits = limits
        self.session = session
        # Verifies a replica's certificate (as issued for NAME.NAMESPACE.svc) when given;
        # else the hop is encrypted but the replica unauthenticated.
        self.replica_tls = replica_tls
        self.metrics = Metrics()
        self.held: Counter[ObjectKey] = Counter()
        table.on_deleted.append(self.metrics.forget)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.scrape)
        app.router.add_route("*", ROUTER_PATH_PREFIX + "/{namespace}/{name}/{tail:.*}", self.route)
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        if not self.table.listed:
            return web.Response(status=503, text="no InferenceService listed yet\n")
        return web.Response(text="ok\n")

    async def scrape(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def route(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["namespace"], request.match_info["name"])
        if not self.table.listed:
            return _unavailable("the router has not listed the InferenceServices yet", self.limits)
        if key not in self.table.routes:
            return web.json_response(
                {"error": f"no InferenceService {key[0]}/{key[1]}"}, status=404
            )
        body = await request.read()
        tried: set[str] = set()
        holds = 0
        while True:
            picked = self.table.pick(key)
            if picked is None:
                if tried or holds == MAX_HOLDS:
                    break  # its replicas refused the connection, or keep going away
                holds += 1
                problem = await self._hold(key)
                if problem:
                    return self._count(key, "", _unavailable(problem, self.limits))
                continue
            revision, address = picked
            if address in tried:
                if self._all_tried(key, tried):
                    break
                continue  # the round robin's next turn is another replica
            try:
                answer = await self._forward_while_listed(key, request, body, address, revision)
                return self._count(key, revision, answer)
            except RETRIABLE:
                tried.add(address)
                if self._all_tried(key, tried):
                    break
        why = f"no replica of {key[0]}/{key[1]} answered"
        return self._count(key, "", _unavailable(why, self.limits))

    def _all_tried(self, key: ObjectKey, tried: set[str]) -> bool:
        """Every replica the service would send to has failed this request."""
        route = self.table.routes.get(key)
        if route is None:
            return True
        return {a for revision in weights(route) for a in route.endpoints[revision]} <= tried

    async def _hold(self, key: ObjectKey) -> str:
        """Wait for a ready replica (asking the operator for one meanwhile); why not, if not."""
        if key not in self.table.routes:
            return f"InferenceService {key[0]}/{key[1]} was deleted"
        if self.held[key] >= self.limits.max_held:
            return f"{self.limits.max_held} requests of {key[0]}/{key[1]} are held already"
        self.held[key] += 1
        gauge = self.metrics.held.labels(*key)
        gauge.inc()
        start = time.monotonic()
        try:
            deadline = start + self.limits.timeout_s
            while (left := deadline - time.monotonic()) > 0:
                route = self.table.routes.get(key)
                if route is None:
                    return f"InferenceService {key[0]}/{key[1]} was deleted"
                if route.may_wake:
                    await self.waker.want(key)
                if await self.table.wait_ready(key, min(left, WAKE_INTERVAL_S)):
                    return ""
            return f"no replica of {key[0]}/{key[1]} became ready in {self.limits.timeout_s:g}s"
        finally:
            self.held[key] -= 1
            if not self.held[key]:
                del self.held[key]
            gauge.dec()
            if key in self.table.routes:  # a deleted service's series are gone for good
                self.metrics.hold_seconds.labels(*key).observe(time.monotonic() - start)

    async def _forward_while_listed(
        self, key: ObjectKey, request: web.Request, body: bytes, address: str, revision: str
    ) -> web.Response:
        """The replica's answer; ReplicaLeftError if it leaves the route first (its machine
        may be gone without a word: no reset ever comes)."""
        route = self.table.routes.get(key)
        tls = route is not None and route.tls
        forward = asyncio.ensure_future(self._forward(key, request, body, address, revision, tls))
        left = asyncio.ensure_future(self.table.left(key, address).wait())
        try:
            await asyncio.wait((forward, left), return_when=asyncio.FIRST_COMPLETED)
            if not forward.done():
                raise ReplicaLeftError(address)
            return forward.result()
        finally:
            left.cancel()
            if not forward.done():
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forward

    async def _forward(
        self,
        key: ObjectKey,
        request: web.Request,
        body: bytes,
        address: str,
        revision: str,
        tls: bool,
    ) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = f"{'https' if tls else 'http'}://{address}/{request.match_info['tail']}"
        secure: dict[str, Any] = {}
        if tls:
            secure["ssl"] = self.replica_tls or False
            if self.replica_tls:
                secure["server_hostname"] = f"{key[1]}.{key[0]}.svc"
        async with self.session.request(
            request.method,
            url,
            params=request.rel_url.query,
            data=body,
            headers=headers,
            **secure,
        ) as answer:
            payload = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            out[REVISION_HEADER] = revision
            return web.Response(status=answer.status, body=payload, headers=out)

    def _count(self, key: ObjectKey, revision: str, response: web.Response) -> web.Response:
        if key in self.table.routes:
            self.metrics.answered(key, revision, response.status)
        return response


def upstream_session(answer_timeout_s: float = 30.0) -> aiohttp.ClientSession:
    """Keep-alive connections to the replicas; bodies passed through as they come. A replica
    silent for `answer_timeout_s` (one on a machine that froze or vanished) counts as gone."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=30),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=answer_timeout_s),
    )
