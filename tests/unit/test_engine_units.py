"""The engine's parts on their own: work queue, admission ledger, memory, hub writes, metrics,
heap trimming and the clock."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from kaon.api.names import ObjectKey
from kaon.api.resources import Resources
from kaon.api.settings import Settings
from kaon.builders.worker import worker_identity
from kaon.clusters import paths
from kaon.clusters.client import ApiError, Obj
from kaon.clusters.member import Member
from kaon.controllers.workers import WorkerOps
from kaon.engine import heap, hubio, metrics
from kaon.engine.admission import Admission
from kaon.engine.cache import Memory
from kaon.engine.clock import SystemClock, age, rfc3339, rfc3339_micro, seconds_since
from kaon.engine.fleet import Fleet
from kaon.engine.workqueue import WorkQueue
from kaon.placement import Placed, PoolOffer, Reservation, Unplaceable, Waiting

from apidouble import ApiDouble
from enginekit import FakeClock, on_loop, until


async def spin(turns: int = 50) -> None:
    """Give every task a few turns (to show that something does not happen)."""
    for _ in range(turns):
        await asyncio.sleep(0)


# WorkQueue --------------------------------------------------------------------------------------


@on_loop
async def test_adds_of_a_key_that_waits_are_coalesced() -> None:
    seen: list[str] = []

    async def handle(key: str) -> float | None:
        seen.append(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handle, workers=2)
    for key in ("a", "a", "b", "a"):
        queue.add(key)
    queue.start()
    await until(lambda: len(seen) == 2, "both keys handled")
    await spin()
    assert sorted(seen) == ["a", "b"]
    await queue.stop()


@on_loop
async def test_a_key_added_while_handled_runs_once_more_never_at_once() -> None:
    release = asyncio.Event()
    running: list[str] = []
    calls: list[str] = []
    overlap = False

    async def handle(key: str) -> float | None:
        nonlocal overlap
        overlap = overlap or key in running
        running.append(key)
        calls.append(key)
        if len(calls) == 1:
            await release.wait()
        running.remove(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handle, workers=4)
    queue.start()
    queue.add("a")
    await until(lambda: calls == ["a"], "a handled")
    queue.add("a")
    queue.add("a")
    await spin()
    assert calls == ["a"]  # not while the first is running
    release.set()
    await until(lambda: len(calls) == 2, "a handled again")
    await spin()
    assert calls == ["a", "a"] and not overlap
    await queue.stop()


@on_loop
async def test_urgent_keys_are_handled_before_the_others_and_once() -> None:
    seen: list[str] = []

    async def handle(key: str) -> float | None:
        seen.append(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handle, workers=1)
    for key in ("a", "b", "c"):
        queue.add(key)
    queue.add("c", urgent=True)  # already waiting: moves ahead, still handled once
    queue.add("d", urgent=True)
    queue.add("d")  # waiting in the urgent lane: stays there
    queue.start()
    await until(lambda: len(seen) == 4, "every key handled")
    await spin()
    assert seen == ["c", "d", "a", "b"]
    await queue.stop()


@on_loop
async def test_an_urgent_add_while_handled_runs_it_again_ahead_of_the_others() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def handle(key: str) -> float | None:
        seen.append(key)
        if len(seen) == 1:
            await release.wait()
        return None

    queue: WorkQueue[str] = WorkQueue(handle, workers=1)
    queue.start()
    queue.add("a")
    await until(lambda: seen == ["a"], "a handled")
    queue.add("b")
    queue.add("a", urgent=True)
    release.set()
    await until(lambda: len(seen) == 3, "a again, then b")
    await spin()
    assert seen == ["a", "a", "b"]
    await queue.stop()


def calls_made(outcomes: list[BaseException | float | None], n: int) -> Callable[[], bool]:
    return lambda: len(outcomes) == 5 - n


@on_loop
async def test_failures_are_counted_and_retried_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes: list[BaseException | float | None] = [
        RuntimeError("1"),
        RuntimeError("2"),
        None,
        RuntimeError("3"),
        7.0,
    ]
    errors: list[str] = []
    later: list[tuple[str, float]] = []

    async def handle(key: str) -> float | None:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    queue: WorkQueue[str] = WorkQueue(handle, workers=1, on_error=lambda e: errors.append(str(e)))
    monkeypatch.setattr(queue, "add_after", lambda key, delay: later.append((key, delay)))
    queue.start()
    for n in range(1, 6):
        queue.add("k")
        await until(calls_made(outcomes, n), f"call {n}")
        await spin(5)
    assert errors == ["1", "2", "3"]
    # 1 s, then 2 s; a success resets the count; a returned delay is taken as asked.
    assert later == [("k", 1.0), ("k", 2.0), ("k", 1.0), ("k", 7.0)]
    await queue.stop()


@on_loop
async def test_add_after_adds_the_key_once_the_delay_passed() -> None:
    seen: list[str] = []

    async def handle(key: str) -> float | None:
        seen.append(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handle, workers=1)
    queue.start()
    queue.add_after("late", -3.0)  # a delay already past counts as none
    await until(lambda: seen == ["late"], "the key added after its delay")
    await queue.stop()
    assert all(t.done() for t in queue._tasks)


# Admission ---------------------------------------------------------------------------------------


class RecordingFleet:
    def __init__(self) -> None:
        self.given: list[list[Reservation]] = []

    def offers(self, reservations: list[Reservation]) -> list[PoolOffer]:
        self.given.append(list(reservations))
        return []


def reservation(count: int) -> Reservation:
    return Reservation("west", "cpu", Resources.of("1", "1Gi", 0, 1), count)


def test_admission_counts_every_holder_but_the_one_excluded() -> None:
    fleet = RecordingFleet()
    admission = Admission(cast(Fleet, fleet))
    job, svc_a, svc_b = reservation(1), reservation(2), reservation(3)
    a: ObjectKey = ("ns", "a")
    admission.register("TrainingJob", lambda: [(a, job)])
    admission.register("InferenceService", lambda: [(a, svc_a), (("ns", "b"), svc_b)])
    assert admission.reservations() == [job, svc_a, svc_b]
    # The same name of another kind is another object: only the service a is left out.
    assert admission.reservations(("InferenceService", a)) == [job, svc_b]
    admission.offers(("InferenceService", a))
    admission.offers()
    assert fleet.given == [[job, svc_b], [job, svc_a, svc_b]]


# Memory -----------------------------------------------------------------------------------------


def test_memory_keeps_one_record_per_object_until_forgotten() -> None:
    made: list[dict[str, int]] = []

    def make() -> dict[str, int]:
        made.append({})
        return made[-1]

    memory: Memory[dict[str, int]] = Memory(make)
    assert memory.peek(("ns", "a")) is None and len(memory) == 0
    record = memory.of(("ns", "a"))
    record["n"] = 1
    assert memory.of(("ns", "a")) is record and memory.peek(("ns", "a")) is record
    memory.of(("ns", "b"))
    assert len(memory) == 2 and len(made) == 2
    memory.forget(("ns", "a"))
    memory.forget(("ns", "gone"))
    assert memory.peek(("ns", "a")) is None and len(memory) == 1
    assert memory.of(("ns", "a")) == {}  # a new record, not the old one


# hubio -------------------------------------------------------------------------------------------


def job_on(hub: ApiDouble) -> Obj:
    return hub.put(
        {
            "apiVersion": "kaon.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "j1", "namespace": "team"},
            "spec": {},
        }
    )


@on_loop
async def test_an_event_names_its_object_and_is_truncated() -> None:
    hub = ApiDouble("hub")
    body = job_on(hub)
    now = "2027-01-15T08:00:00Z"
    await hubio.post_event(hub, "TrainingJob", body, "Warning", "GangRollback", "x" * 2000, now)
    (event,) = hub.items(paths.events("team"))
    assert event["metadata"]["name"].startswith("j1.")
    assert event["involvedObject"] == {
        "apiVersion": "kaon.dev/v1alpha1",
        "kind": "TrainingJob",
        "name": "j1",
        "namespace": "team",
        "uid": body["metadata"]["uid"],
        "resourceVersion": body["metadata"]["resourceVersion"],
    }
    assert (event["type"], event["reason"], len(event["message"])) == (
        "Warning",
        "GangRollback",
        1024,
    )
    assert event["firstTimestamp"] == event["lastTimestamp"] == now and event["count"] == 1
    assert event["source"] == {"component": "kaon-operator"}
    assert event["reportingComponent"] == "kaon.dev/operator"


@on_loop
async def test_an_event_the_hub_refuses_is_not_an_error() -> None:
    hub = ApiDouble("hub")
    body = job_on(hub)
    hub.fail("POST", paths.events("team"), ApiError(403, "Forbidden", "events is forbidden"))
    await hubio.post_event(hub, "TrainingJob", body, "Normal", "Placed", "where", "t")
    assert hub.items(paths.events("team")) == []


@on_loop
async def test_hub_writes_touch_status_and_finalizers_only() -> None:
    hub = ApiDouble("hub")
    body = job_on(hub)
    path = paths.custom("kaon.dev/v1alpha1", "trainingjobs", "team", "j1")
    answer = await hubio.patch_status(hub, "trainingjobs", body, {"state": "Waiting"})
    assert answer["status"] == {"state": "Waiting"} and answer["spec"] == {}
    kept = await hubio.set_finalizers(hub, "trainingjobs", answer, ["kaon.dev/cleanup"])
    assert kept["metadata"]["finalizers"] == ["kaon.dev/cleanup"]
    with pytest.raises(ApiError) as stale:  # guarded by the resourceVersion it was read at
        await hubio.set_finalizers(hub, "trainingjobs", answer, [])
    assert stale.value.conflict
    assert [m for m, _ in hub.writes] == ["PATCH", "PATCH", "PATCH"]  # never a PUT of spec

    await hubio.delete(hub, "trainingjobs", kept)
    held = hub.peek(path)
    assert held is not None and held["metadata"]["deletionTimestamp"]  # the finalizer holds it
    await hubio.set_finalizers(hub, "trainingjobs", held, [])
    assert hub.peek(path) is None
    await hubio.delete(hub, "trainingjobs", kept)  # already gone: nothing to do, no error


# Metrics -----------------------------------------------------------------------------------------


def samples(collector: metrics.StateCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_state_gauges_are_read_from_the_caches_at_scrape_time() -> None:
    jobs: dict[tuple[str, str], Obj] = {
        ("ns", "a"): {"status": {"state": "Running", "progress": {"percent": 40}}},
        ("ns", "b"): {"status": {}},
    }
    services: dict[tuple[str, str], Obj] = {
        ("ns", "s"): {"status": {"state": "Ready", "readyReplicas": 2}},
    }
    amounts = {
        "cpu_capacity": 16.0,
        "cpu_free": 4.0,
        "memory_capacity": 64.0,
        "memory_free": 8.0,
        "gpu_capacity": 0.0,
        "gpu_free": 0.0,
    }

    def clusters() -> Iterator[tuple[str, bool, list[tuple[str, dict[str, float]]]]]:
        yield "west", True, [("cpu", amounts)]
        yield "east", False, []

    collector = metrics.StateCollector(
        lambda: iter(jobs.items()), lambda: iter(services.items()), clusters
    )
    got = samples(collector)
    assert got[("kaon_trainingjobs", ("Running",))] == 1
    assert got[("kaon_trainingjobs", ("Pending",))] == 1
    assert got[("kaon_trainingjobs", ("Failed",))] == 0  # every phase is there, zero or not
    assert got[("kaon_trainingjob_progress_ratio", ("ns", "a"))] == 0.4
    assert got[("kaon_inferenceservices", ("Ready",))] == 1
    assert got[("kaon_inferenceservice_ready_replicas", ("ns", "s"))] == 2
    assert got[("kaon_member_cluster_up", ("west",))] == 1
    assert got[("kaon_member_cluster_up", ("east",))] == 0
    assert got[("kaon_pool_capacity", ("west", "cpu", "cpu"))] == 16
    assert got[("kaon_pool_free", ("west", "cpu", "memory"))] == 8
    jobs[("ns", "b")] = {"status": {"state": "Running"}}  # read again at the next scrape
    assert samples(collector)[("kaon_trainingjobs", ("Running",))] == 2


def test_decisions_and_errors_are_counted() -> None:
    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    placed = {"kind": "trainingjob", "cluster": "west", "pool": "cpu", "outcome": "placed"}
    waiting = {"kind": "trainingjob", "cluster": "", "pool": "", "outcome": "waiting"}
    unplaceable = {**waiting, "outcome": "unplaceable"}
    before = [value("kaon_placement_decisions_total", **x) for x in (placed, waiting, unplaceable)]
    metrics.placement("trainingjob", Placed("west", "cpu", None, 0))
    metrics.placement("trainingjob", Waiting("InsufficientCPU", ""))
    metrics.placement("trainingjob", Waiting("InsufficientGPU", ""))
    metrics.placement("trainingjob", Unplaceable("NoPoolFits", ""))
    after = [value("kaon_placement_decisions_total", **x) for x in (placed, waiting, unplaceable)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 2, 1]

    errors = {"kind": "trainingjob", "reason": "KeyError"}
    was = value("kaon_reconcile_errors_total", **errors)
    metrics.reconcile_error("trainingjob")(KeyError("x"))
    assert value("kaon_reconcile_errors_total", **errors) == was + 1


def test_serve_registers_the_collector_and_survives_a_taken_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = metrics.StateCollector(lambda: iter(()), lambda: iter(()), lambda: iter(()))
    metrics.serve(0, collector)
    try:
        assert metrics.REGISTRY.get_sample_value("kaon_trainingjobs", {"phase": "Running"}) == 0
    finally:
        metrics.REGISTRY.unregister(collector)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger=metrics.log.name):
            metrics.serve(port, collector)
        metrics.REGISTRY.unregister(collector)
    assert f"port {port}" in caplog.text and "not served" in caplog.text


# Heap --------------------------------------------------------------------------------------------


@on_loop
async def test_the_trim_loop_trims_each_interval_and_leaves_cycles_to_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[int] = []
    collections: list[int] = []

    def collect(generation: int = 2) -> int:
        collections.append(generation)
        return 0

    monkeypatch.setattr(heap, "_malloc_trim", lambda: lambda: trims.append(1))
    monkeypatch.setattr(gc, "collect", collect)
    task = asyncio.create_task(heap.trim_loop(interval_s=0.0))
    await until(lambda: len(trims) >= 2, "two trims")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert collections == []  # a full collection each interval cost 8% of the CPU


@on_loop
async def test_without_malloc_trim_the_loop_ends_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    await asyncio.wait_for(heap.trim_loop(interval_s=0.0), timeout=5)


def test_malloc_trim_is_found_on_glibc_and_callable() -> None:
    trim = heap._malloc_trim()
    if trim is not None:  # glibc (the images, CI); other C libraries have no malloc_trim
        assert trim() is None


# Clock -------------------------------------------------------------------------------------------


def test_timestamps_are_written_and_read_on_the_injected_clock() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    assert rfc3339(clock) == "2027-01-15T08:00:00Z"
    clock.advance(90)
    assert seconds_since(clock, "2027-01-15T08:00:00Z") == 90
    assert seconds_since(clock, "2030-01-01T00:00:00Z") == 0  # a clock behind: never negative
    assert seconds_since(clock, None) is None and seconds_since(clock, "") is None
    clock.advance(0.25)
    assert rfc3339_micro(clock) == "2027-01-15T08:01:30.250000Z"
    assert seconds_since(clock, "2027-01-15T08:01:30.000000Z") == 0.25
    assert age(clock.wall(), "2027-01-15T08:01:29.750000Z") == 0.5
    system = SystemClock()
    assert system.monotonic() <= system.monotonic() and system.wall() > 1_700_000_000


@on_loop
async def test_gangs_launched_at_once_into_a_new_namespace_make_it_once() -> None:
    west = ApiDouble("west")
    member = Member("west", west)
    ops = WorkerOps(cast(Fleet, None), Settings())
    await asyncio.gather(*(ops.ensure_namespace(member, "team-a") for _ in range(8)))
    made = [path for method, path in west.writes if method == "POST"]
    assert made == [
        paths.namespaces(),
        *(paths.collection(v, plural, "team-a") for v, plural, _ in worker_identity("team-a")),
    ]
    assert west.peek(f"{paths.namespaces()}/team-a") is not None
    await ops.ensure_namespace(member, "team-a")  # known now: no request at all
    assert len([m for m, _ in west.writes if m == "POST"]) == 4
