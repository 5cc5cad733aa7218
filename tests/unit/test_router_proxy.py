"""kaon's router over real HTTP: replicas are small aiohttp servers, the hub the API double."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from kaon.api.common import API_VERSION
from kaon.api.names import WANTED_ANNOTATION
from kaon.clusters import paths
from kaon.clusters.client import Obj
from kaon.lifecycle.routing import HoldLimits
from kaon.router.main import RouterTLS
from kaon.router.proxy import REVISION_HEADER, Router, upstream_session
from kaon.router.table import RouteTable
from kaon.router.waker import Waker

from apidouble import ApiDouble
from tlskit import Issued, issue

NS, NAME = "team", "digits"
PATH = f"/serving/{NS}/{NAME}/v2/models/{NAME}/infer"


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


def isvc(
    endpoints: list[tuple[str, str]], percent: int | None = None, min_: int = 0, tls: bool = False
) -> Obj:
    spec: Obj = {"model": {"uri": "pvc://m/digits"}, "replicas": {"min": min_, "max": 2}}
    if tls:
        spec["tls"] = {"secretName": "digits-tls"}
    if percent is not None:
        spec["canary"] = {"model": {"uri": "pvc://m/digits2"}, "trafficPercent": percent}
    listed = [{"address": a, "revision": r} for a, r in endpoints]
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {"namespace": NS, "name": NAME},
        "spec": spec,
        "status": {"clusters": [{"cluster": "west", "endpoints": listed}]},
    }


@dataclass
class Replica:
    """A V2 server stand-in: echoes what it got and who it is."""

    name: str
    seen: list[Obj] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)
    address: str = ""

    async def infer(self, request: web.Request) -> web.Response:
        self.seen.append(
            {"path": request.path, "query": dict(request.query), "body": await request.read()}
        )
        self.authorization.append(request.headers.get("Authorization", ""))
        return web.json_response({"replica": self.name}, headers={"X-Model": "digits"})


@asynccontextmanager
async def serving(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def replica(name: str, tls: ssl.SSLContext | None = None) -> AsyncIterator[Replica]:
    r = Replica(name)
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", r.infer)
    async with serving(app, tls) as address:
        r.address = address
        yield r


@asynccontextmanager
async def router(
    hub: ApiDouble, limits: HoldLimits | None = None, tls: RouterTLS | None = None
) -> AsyncIterator[tuple[Router, str, aiohttp.ClientSession]]:
    table = RouteTable()
    upstream = upstream_session()
    tls = tls or RouterTLS()
    r = Router(table, Waker(hub), limits or HoldLimits(), upstream, tls.replica_context())
    own = tls.server_context()
    async with serving(r.app(), own) as address, aiohttp.ClientSession() as client:
        yield r, f"{'https' if own else 'http'}://{address}", client
    await upstream.close()


async def held_one(r: Router) -> None:
    """Until the router holds a request of the service (it answers nothing before)."""
    for _ in range(500):
        if r.held[(NS, NAME)]:
            return
        await asyncio.sleep(0.01)  # the router has no event for it
    raise AssertionError("no request was held")


async def post(client: aiohttp.ClientSession, url: str) -> tuple[int, str, Obj]:
    async with client.post(url, params={"trace": "1"}, data=b'{"inputs": []}') as answer:
        return answer.status, answer.headers.get(REVISION_HEADER, ""), await answer.json()


@run
async def test_requests_reach_a_ready_replica_as_sent_and_say_which_revision_answered() -> None:
    hub = ApiDouble("hub")
    async with replica("a") as a, router(hub) as (r, base, client):
        r.table.reset([isvc([(a.address, "stable")])])
        status, revision, doc = await post(client, base + PATH)
        assert (status, revision, doc) == (200, "stable", {"replica": "a"})
        assert a.seen == [
            {"path": f"/v2/models/{NAME}/infer", "query": {"trace": "1"}, "body": b'{"inputs": []}'}
        ]
        async with client.get(f"{base}/serving/{NS}/nope/v2/models/x/infer") as missing:
            assert missing.status == 404 and "no InferenceService team/nope" in await missing.text()


@run
async def test_the_canary_gets_exactly_its_share_of_two_thousand_requests() -> None:
    hub = ApiDouble("hub")
    async with replica("s") as s, replica("c") as c, router(hub) as (r, base, client):
        r.table.reset([isvc([(s.address, "stable"), (c.address, "canary")], percent=10)])
        answers = Counter()
        for _ in range(2000):
            status, revision, doc = await post(client, base + PATH)
            assert status == 200 and doc["replica"] == revision[0]
            answers[revision] += 1
        assert answers == {"stable": 1800, "canary": 200}


@run
async def test_a_request_to_a_service_at_zero_is_held_until_a_replica_is_ready() -> None:
    hub = ApiDouble("hub")
    hub.put(isvc([]))
    async with replica("a") as a, router(hub) as (r, base, client):
        r.table.reset([isvc([])])
        held = asyncio.create_task(post(client, base + PATH))
        await held_one(r)
        stored = hub.peek(paths.custom(API_VERSION, "inferenceservices", NS, NAME))
        assert stored is not None and WANTED_ANNOTATION in stored["metadata"]["annotations"]
        assert not held.done()
        r.table.event("MODIFIED", isvc([(a.address, "stable")]))
        assert await held == (200, "stable", {"replica": "a"})
        assert r.held[(NS, NAME)] == 0


@run
async def test_a_deleted_service_wakes_its_held_requests_and_leaves_nothing_behind() -> None:
    hub = ApiDouble("hub")
    hub.put(isvc([]))
    async with replica("a") as a, router(hub) as (r, base, client):
        r.table.reset([isvc([(a.address, "stable")], min_=1)])
        assert (await post(client, base + PATH))[0] == 200
        r.table.event("MODIFIED", isvc([], min_=1))
        held = asyncio.create_task(client.post(base + PATH, data=b"{}"))
        await held_one(r)
        r.table.event("DELETED", isvc([]))
        async with await held as answer:
            assert answer.status == 503 and "was deleted" in await answer.text()
        assert (NS, NAME) not in r.held
        scraped = generate_latest(r.metrics.registry).decode()
        assert f'service="{NAME}"' not in scraped, scraped


@run
async def test_a_held_request_gets_503_with_retry_after_when_no_replica_comes() -> None:
    hub = ApiDouble("hub")
    hub.put(isvc([]))
    limits = HoldLimits(timeout_s=0.3, max_held=1, retry_after_s=7)
    async with router(hub, limits) as (r, base, client):
        r.table.reset([isvc([])])
        first = asyncio.create_task(client.post(base + PATH, data=b"{}"))
        await held_one(r)
        async with client.post(base + PATH, data=b"{}") as over:  # beyond max_held: at once
            assert over.status == 503 and over.headers["Retry-After"] == "7"
            assert "1 requests of team/digits are held already" in await over.text()
        async with await first as late:
            assert late.status == 503 and late.headers["Retry-After"] == "7"
            assert "no replica of team/digits became ready in 0.3s" in await late.text()


@run
async def test_a_replica_that_refuses_connections_is_passed_over() -> None:
    hub = ApiDouble("hub")
    async with replica("a") as a, router(hub) as (r, base, client):
        async with serving(web.Application()) as gone:
            pass  # its port is closed now
        r.table.reset([isvc([(gone, "stable"), (a.address, "stable")], min_=1)])
        for _ in range(4):
            assert (await post(client, base + PATH))[2] == {"replica": "a"}


@run
async def test_a_request_held_by_a_replica_that_leaves_the_route_goes_to_another() -> None:
    """A replica whose machine vanished never answers and never resets: once the operator
    takes it out of the service's endpoints, its request is sent again elsewhere."""
    hub = ApiDouble("hub")
    silent = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await silent.wait()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", hang)
    async with serving(app) as frozen, replica("a") as a, router(hub) as (r, base, client):
        r.table.reset([isvc([(frozen, "stable")], min_=1)])
        asked = asyncio.create_task(post(client, base + PATH))
        await asyncio.sleep(0.3)
        assert not asked.done()
        r.table.event("MODIFIED", isvc([(a.address, "stable")], min_=1))
        assert await asked == (200, "stable", {"replica": "a"})
        silent.set()


def server_tls(issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    return context


def test_over_tls_the_router_verifies_the_replica_as_the_service_and_passes_the_token(
    tmp_path: Path,
) -> None:
    replica_cert = issue(tmp_path / "replica", [f"{NAME}.{NS}.svc"])
    router_cert = issue(tmp_path / "router", ["router.kaon.svc"], ("127.0.0.1",))
    stranger = issue(tmp_path / "stranger", [f"{NAME}.{NS}.svc"])  # signed by another CA

    async def scenario() -> None:
        hub = ApiDouble("hub")
        tls = RouterTLS(str(router_cert.cert), str(router_cert.key), str(replica_cert.ca))
        trusted = ssl.create_default_context(cafile=str(router_cert.ca))
        bearer = {"Authorization": "Bearer t0ken"}
        async with (
            replica("a", server_tls(replica_cert)) as a,
            replica("b", server_tls(stranger)) as b,
            router(hub, tls=tls) as (r, base, client),
        ):
            assert base.startswith("https://")
            r.table.reset([isvc([(a.address, "stable")], tls=True)])
            async with client.post(base + PATH, data=b"{}", headers=bearer, ssl=trusted) as answer:
                assert answer.status == 200 and (await answer.json()) == {"replica": "a"}
            assert a.authorization == ["Bearer t0ken"]
            r.table.reset([isvc([(b.address, "stable")], tls=True)])  # not the replicas' CA
            async with client.post(base + PATH, data=b"{}", ssl=trusted) as answer:
                assert answer.status == 503
            assert b.seen == []

    asyncio.run(scenario())
