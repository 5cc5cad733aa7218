"""Leader election on an in-memory hub: one holder, take-over after the Lease lapses by the
candidate's own clock, guarded writes, a leader that cannot renew stops."""

from __future__ import annotations

import asyncio

import pytest

from kaon.clusters import paths
from kaon.clusters.client import ApiError
from kaon.engine.leader import LeaderElection, Timing, next_step

from apidouble import ApiDouble
from enginekit import FakeClock, on_loop

NS, NAME = "kaon-system", "kaon-operator"
FAST = Timing(lease_s=15, renew_deadline_s=10, retry_s=0.01)


def election(hub: ApiDouble, who: str, clock: FakeClock) -> LeaderElection:
    return LeaderElection(hub, NS, NAME, who, clock, FAST)


def lease(holder: str, duration: int = 15) -> dict[str, object]:
    return {
        "metadata": {"resourceVersion": "1"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration},
    }


def test_the_next_step_of_a_candidate() -> None:
    assert next_step(None, "a", 0, 15) == "create"
    assert next_step(lease("a"), "a", 99, 15) == "renew"
    assert next_step(lease("b"), "a", 14.9, 15) == "wait"
    assert next_step(lease("b"), "a", 15, 15) == "take"
    assert next_step(lease("b", duration=30), "a", 20, 15) == "wait"  # the holder's duration
    assert next_step(lease(""), "a", 0, 15) == "take"  # released on a clean stop


def hub_with_namespace() -> ApiDouble:
    hub = ApiDouble("hub")
    hub.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return hub


@on_loop
async def test_one_candidate_leads_and_the_other_stands_by_until_the_lease_lapses() -> None:
    hub, clock = hub_with_namespace(), FakeClock()
    a, b = election(hub, "a", clock), election(hub, "b", clock)
    assert await a.try_once()
    assert not await b.try_once()
    clock.advance(10)
    assert await a.try_once()  # renewed: b's view of the record changes, its wait starts over
    clock.advance(10)
    assert not await b.try_once()
    clock.advance(16)  # a renews no more
    assert await b.try_once()
    stored = hub.peek(paths.lease(NS, NAME))
    assert stored is not None
    assert stored["spec"]["holderIdentity"] == "b" and stored["spec"]["leaseTransitions"] == 1
    assert not await a.try_once()  # a sees b's fresh record: it waits now


@on_loop
async def test_two_candidates_taking_over_at_once_cannot_both_win() -> None:
    hub, clock = hub_with_namespace(), FakeClock()
    assert await election(hub, "old", clock).try_once()
    b, c = election(hub, "b", clock), election(hub, "c", clock)
    assert not await b.try_once() and not await c.try_once()
    clock.advance(15)
    # Both read the same lapsed record; the second write carries a stale resourceVersion.
    b_read, c_read = await b._get(), await c._get()
    assert b_read == c_read
    wins = [await b.try_once(), await c.try_once()]
    assert wins == [True, False]


@on_loop
async def test_a_missing_namespace_is_named_in_the_error() -> None:
    hub, clock = ApiDouble("hub"), FakeClock()
    with pytest.raises(ApiError, match=r"namespace .kaon-system.*--standalone"):
        await election(hub, "a", clock).try_once()


@on_loop
async def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    hub, clock = hub_with_namespace(), FakeClock()
    a = election(hub, "a", clock)
    assert await a.try_once()
    stored = hub.peek(paths.lease(NS, NAME))
    assert stored is not None
    hub.edit(paths.lease(NS, NAME), {"spec": {"holderIdentity": "intruder"}})
    lost: list[bool] = []
    await a.keep(lambda: lost.append(True))
    assert lost == [True]


@on_loop
async def test_a_leader_that_cannot_renew_stops_after_the_deadline_not_before() -> None:
    hub, clock = hub_with_namespace(), FakeClock()
    a = election(hub, "a", clock)
    assert await a.try_once()
    hub.unreachable = True
    lost: list[float] = []
    task = asyncio.create_task(a.keep(lambda: lost.append(clock.monotonic())))
    clock.advance(9)
    await asyncio.sleep(0.05)  # several failed renewals within the deadline: no loss
    assert not lost and not task.done()
    clock.advance(1)
    await asyncio.wait_for(task, 5)
    assert lost == [clock.monotonic()]


@on_loop
async def test_release_hands_the_lease_over_at_once() -> None:
    hub, clock = hub_with_namespace(), FakeClock()
    a, b = election(hub, "a", clock), election(hub, "b", clock)
    assert await a.try_once()
    await a.release()
    assert await b.try_once()  # no wait for the lease to lapse
