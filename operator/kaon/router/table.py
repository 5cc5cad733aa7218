"""The router's view of the InferenceServices: each one's route, kept current by a hub watch,
a way to wait until a service has a ready replica, and one to learn that a replica left."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from kaon.api.names import ObjectKey, key_of
from kaon.clusters.client import Obj
from kaon.lifecycle.routing import Route, Splitter, route_of


class RouteTable:
    def __init__(self) -> None:
        self.routes: dict[ObjectKey, Route] = {}
        self.splitters: dict[ObjectKey, Splitter] = {}
        self._ready: dict[ObjectKey, asyncio.Event] = {}
        self._left: dict[ObjectKey, dict[str, asyncio.Event]] = {}  # service -> HOST:PORT ->
        self.listed = False  # requests wait for the first listing, not 404 before it
        self.on_deleted: list[Callable[[ObjectKey], None]] = []  # what else forgets a service

    def reset(self, bodies: Iterable[Obj]) -> None:
        """A fresh listing: services not in it are gone."""
        listed = {key_of(b): b for b in bodies}
        self.listed = True
        for key in set(self.routes) - set(listed):
            self.event("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        for body in listed.values():
            self.event("ADDED", body)

    def event(self, kind: str, body: Obj) -> None:
        key = key_of(body)
        if kind == "DELETED":
            self.routes.pop(key, None)
            self.splitters.pop(key, None)
            if key in self._ready:
                self._ready.pop(key).set()  # held requests wake to find it gone
            for forget in self.on_deleted:
                forget(key)
        else:
            route = self.routes[key] = route_of(body)
            self.splitters.setdefault(key, Splitter())
            if route.ready and key in self._ready:
                self._ready.pop(key).set()
        watched = self._left.get(key)
        if not watched:
            return
        current = self.routes.get(key)
        addresses = {a for got in current.endpoints.values() for a in got} if current else set()
        for address in [a for a in watched if a not in addresses]:
            watched.pop(address).set()
        if not watched:
            del self._left[key]

    def left(self, key: ObjectKey, address: str) -> asyncio.Event:
        """Set once the replica at `address` is no longer one of the service's (not ready, or
        its cluster lost): a request it holds may go to another."""
        return self._left.setdefault(key, {}).setdefault(address, asyncio.Event())

    def pick(self, key: ObjectKey) -> tuple[str, str] | None:
        route = self.routes.get(key)
        if route is None:
            return None
        return self.splitters[key].pick(route)

    async def wait_ready(self, key: ObjectKey, timeout_s: float) -> bool:
        """Whether the service got a ready replica within `timeout_s`."""
        route = self.routes.get(key)
        if route is not None and route.ready:
            return True
        event = self._ready.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
