"""The latest known body of each kaon object of one kind, fed by hub watch events and by our
own writes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kaon.api.names import ObjectKey, key_of
from kaon.clusters.client import Obj

KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "annotations",
)


def slim(body: Obj) -> Obj:
    """What kaon reads of an object (no managedFields): small at thousands of objects."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


def _rv(body: Obj) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except ValueError:
        return 0


class ObjectCache:
    """Newest resourceVersion wins; only a watch event may add an object.

    The answer to our own write can arrive after the watch's DELETED event for the same object
    (the last finalizer removed deletes it at once). Letting that answer add it back would
    leave a ghost that holds a reservation on its pool forever.
    """

    def __init__(self) -> None:
        self._objects: dict[ObjectKey, Obj] = {}

    def observed(self, body: Obj) -> bool:
        """A watch event (ADDED/MODIFIED) for the object; False when the cache held this
        version already (the echo of our own write, whose answer was stored): nothing new."""
        return self._store(body, add=True)

    def written(self, body: Obj) -> Obj | None:
        """The answer to our write; the cached body, or None if the object is gone meanwhile."""
        self._store(body, add=False)
        return self._objects.get(key_of(body))

    def deleted(self, key: ObjectKey) -> None:
        self._objects.pop(key, None)

    def get(self, key: ObjectKey) -> Obj | None:
        return self._objects.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def items(self) -> Iterator[tuple[ObjectKey, Obj]]:
        return iter(list(self._objects.items()))

    def _store(self, body: Obj, add: bool) -> bool:
        """Keep `body` if it is newer; whether it may be (a version already held is not: it
        is not slimmed and stored again). Without a resourceVersion nothing can be told."""
        key = key_of(body)
        known = self._objects.get(key)
        if known is None and not add:
            return False
        rv, known_rv = _rv(body), -1 if known is None else _rv(known)
        if rv > known_rv or rv == known_rv == 0:
            self._objects[key] = slim(body)
        return rv > known_rv or rv == 0


M = TypeVar("M")


class Memory(Generic[M]):
    """What the operator remembers about each object beyond its body: one record per object,
    made on first use and forgotten in one step when the object goes."""

    def __init__(self, make: Callable[[], M]) -> None:
        self._make = make
        self._records: dict[ObjectKey, M] = {}

    def of(self, key: ObjectKey) -> M:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = self._make()
        return record

    def peek(self, key: ObjectKey) -> M | None:
        return self._records.get(key)

    def forget(self, key: ObjectKey) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)
