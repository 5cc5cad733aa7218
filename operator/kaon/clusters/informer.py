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


PAGE_SIZE = 500


async def list_all(client: KubeClient, path: str, params: dict[str, str]) -> tuple[list[Obj], str]:
    """List in pages (bounded responses), returning the items and the list's resourceVersion."""
    items: list[Obj] = []
    query = {**params, "limit": str(PAGE_SIZE)}
    while True:
        page = await client.get(path, **query)
        items.extend(page.get("items", []))
        token = page["metadata"].get("continue")
        if not token:
            return items, page["metadata"]["resourceVersion"]
        query["continue"] = token


async def run_informer(
    client: KubeClient,
    path: str,
    on_reset: OnReset,
    on_event: OnEvent,
    on_health: OnHealth | None = None,
    label_selector: str = "",
    field_selector: str = "",
) -> None:
    """Forever: list (reset the view), then apply watch events; relist after 410 or errors."""
    failures = 0
    params = {"labelSelector": label_selector} if label_selector else {}
    if field_selector:
        params["fieldSelector"] = field_selector
    while True:
        try:
            items, rv = await list_all(client, path, params)
            await _call(on_reset, items)
            if on_health:
                await _call(on_health, None)
            failures = 0
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
        except Exception:
            # A bug in a handler or a malformed event must not end the view for good: relist.
            failures += 1
            log.exception("informer %s%s failed; relisting", client.server, path)
            await sleep_backoff(failures)
