"""List-then-watch loops that keep a local view of a resource current (like client-go informers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kaon.clusters.client import ApiError, KubeClient, Obj, WatchExpiredError, sleep_backoff

log = logging.getLogger(__name__)

OnReset = Callable[[list[Obj]], Awaitable[None] | None]
OnEvent = Callable[[str, Obj], Awaitable[None] | None]
OnHealth = Callable[[ApiError | None], Awaitable[None] | None]


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if asyncio.iscoroutine(result):
        await result


async def run_informer(
    client: KubeClient,
    path: str,
    on_reset: OnReset,
    on_event: OnEvent,
    on_health: OnHealth | None = None,
    label_selector: str = "",
) -> None:
    """Forever: list (reset the view), then apply watch events; relist after 410 or errors."""
    failures = 0
    params = {"labelSelector": label_selector} if label_selector else {}
    while True:
        try:
            listing = await client.get(path, **params)
            await _call(on_reset, listing.get("items", []))
            if on_health:
                await _call(on_health, None)
            failures = 0
            rv = listing["metadata"]["resourceVersion"]
            while True:
                async for kind, obj in client.watch(path, rv, params):
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        await _call(on_event, kind, obj)
        except WatchExpiredError:
            continue
        except ApiError as exc:
            failures += 1
            if on_health:
                await _call(on_health, exc)
            log.debug("informer %s%s: %s", client.server, path, exc)
            await sleep_backoff(failures)
