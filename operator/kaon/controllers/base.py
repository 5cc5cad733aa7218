"""What every controller of a hub kind does the same way: its finalizer, status writes that
are skipped when nothing changed, and Events."""

from __future__ import annotations

from pydantic import BaseModel

from kaon.api.names import FINALIZER, ObjectKey, key_of
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.engine import hubio
from kaon.engine.cache import ObjectCache
from kaon.engine.clock import Clock, rfc3339
from kaon.engine.workqueue import WorkQueue


class StaleView(Exception):  # noqa: N818  (not an error: the decision was made on old news)
    """A guarded write was refused: the object changed since it was read. The cache holds the
    hub's current body now and the object is queued again; the decision is made anew."""

    def __init__(self, current: Obj | None) -> None:
        super().__init__("the object changed since it was read")
        self.current = current


class Reconciler:
    queue: WorkQueue[ObjectKey]  # made by each controller, with its own reconcile and workers
    # Status writes only onto the resourceVersion they were decided from: a controller whose
    # status says where pods run must never write from a stale view.
    guarded_writes = False

    def __init__(self, hub: KubeClient, plural: str, kind: str, clock: Clock) -> None:
        self.hub = hub
        self.plural = plural
        self.kind = kind
        self.clock = clock
        self.cache = ObjectCache()

    def now(self) -> str:
        return rfc3339(self.clock)

    def pods_changed(self, key: ObjectKey) -> None:
        """A member's pods of the object changed: look at it again (if it is still known)."""
        if key in self.cache:
            self.queue.add(key)

    def saved(self, answer: Obj) -> Obj | None:
        """Our write's answer into the cache; the cached body (None if deleted meanwhile)."""
        return self.cache.written(answer)

    async def add_finalizer(self, body: Obj) -> Obj | None:
        """The body with kaon's finalizer (written if missing); None if it is gone meanwhile."""
        finalizers = body["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            return body
        answer = await hubio.set_finalizers(self.hub, self.plural, body, [*finalizers, FINALIZER])
        return self.saved(answer)

    async def remove_finalizer(self, body: Obj) -> None:
        finalizers = body["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            kept = [f for f in finalizers if f != FINALIZER]
            self.saved(await hubio.set_finalizers(self.hub, self.plural, body, kept))

    async def write_status(
        self, body: Obj, new: BaseModel, old: BaseModel | None = None
    ) -> Obj | None:
        """Patch status to `new`, unless it equals `old`; the cached body after the write."""
        if old is not None and new == old:
            return body
        dumped = new.model_dump(mode="json", by_alias=True)
        try:
            answer = await hubio.patch_status(
                self.hub, self.plural, body, dumped, guarded=self.guarded_writes
            )
        except ApiError as exc:
            if not (exc.conflict and self.guarded_writes):
                raise
            raise StaleView(await self.refresh(body)) from exc
        return self.saved(answer)

    async def refresh(self, body: Obj, requeue: bool = True) -> Obj | None:
        """The object as the hub has it now, into the cache (and queued again when
        `requeue`); None if it is gone."""
        try:
            fresh = await hubio.get(self.hub, self.plural, body)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        self.cache.observed(fresh)
        if requeue:
            self.queue.add(key_of(fresh))
        return self.cache.get(key_of(fresh))

    async def event(self, body: Obj, type_: str, reason: str, message: str) -> None:
        now = rfc3339(self.clock)
        await hubio.post_event(self.hub, self.kind, body, type_, reason, message, now)

    async def delete(self, body: Obj) -> None:
        await hubio.delete(self.hub, self.plural, body)
