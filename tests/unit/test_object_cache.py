"""The operator's object cache: newest wins, and our writes never bring back a deleted job."""

from __future__ import annotations

from typing import Any

from kaon.engine.cache import ObjectCache


def body(rv: int, **status: Any) -> dict[str, Any]:
    meta = {"namespace": "ns", "name": "j", "resourceVersion": str(rv), "managedFields": []}
    return {
        "metadata": meta,
        "spec": {"workers": 2},
        "status": status,
    }


def test_newest_resource_version_wins_and_managed_fields_are_dropped() -> None:
    cache = ObjectCache()
    cache.observed(body(5, state="Running"))
    cache.observed(body(4, state="Waiting"))
    kept = cache.get(("ns", "j"))
    assert kept is not None and kept["status"]["state"] == "Running"
    assert "managedFields" not in kept["metadata"]


def test_the_answer_to_a_write_updates_a_known_job() -> None:
    cache = ObjectCache()
    cache.observed(body(5, state="Waiting"))
    saved = cache.written(body(6, state="Running"))
    assert saved is not None and saved["status"]["state"] == "Running"


def test_the_answer_to_a_write_after_the_delete_event_does_not_bring_the_job_back() -> None:
    cache = ObjectCache()
    cache.observed(body(5, state="Running"))
    cache.deleted(("ns", "j"))
    assert cache.written(body(7, state="Running")) is None
    assert ("ns", "j") not in cache and len(cache) == 0


def test_a_watch_event_is_new_unless_the_cache_held_its_version_already() -> None:
    cache = ObjectCache()
    assert cache.observed(body(5, state="Waiting"))  # first seen
    cache.written(body(6, state="Running"))  # the answer to kaon's own write
    assert not cache.observed(body(6, state="Running"))  # its watch echo: nothing new
    assert not cache.observed(body(4, state="Waiting"))  # older: nothing new either
    assert cache.observed(body(7, state="Succeeded"))  # another writer's change
    assert cache.observed({**body(0), "metadata": {"namespace": "ns", "name": "j"}})  # no rv
