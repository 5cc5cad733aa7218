"""Training jobs on a lost member: grace, failover to another member, fencing of the old
attempt, the sweep when the member is back, and guarded status writes (two operators)."""

from __future__ import annotations

from kaon.api.names import ATTEMPT_LABEL, HEARTBEAT_LEASE, HEARTBEAT_LEASE_NAMESPACE, JOB_LABEL
from kaon.clusters import paths
from kaon.clusters.client import Obj
from kaon.controllers.trainingjob import UNREACHABLE_RETRY_S
from kaon.manager import Manager

import apidouble
from enginekit import (
    NS,
    MemberSpec,
    World,
    cluster_path,
    compute_cluster,
    job_path,
    on_loop,
    trainingjob,
    until,
)

GRACE = {"runPolicy": {"failover": {"graceSeconds": 15}}}


def condition(status: Obj, type_: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


async def running_on_west(world: World, name: str = "j1", spec: Obj | None = None) -> list[str]:
    world.apply(trainingjob(name, spec or GRACE))
    await world.reconcile_job(name)
    await world.place()
    assert world.job_status(name)["placement"]["cluster"] == "west"
    await world.reconcile_job(name)
    await world.settle()
    workers = sorted(world.pods("west", f"{JOB_LABEL}={name}"))
    world.run_pods(workers)
    await world.settle()
    await world.reconcile_job(name)
    assert world.job_status(name)["state"] == "Running"
    return workers


@on_loop
async def test_a_lost_member_moves_its_gang_after_the_grace_and_says_so(world2: World) -> None:
    old = await running_on_west(world2)
    await world2.lose("west")
    world2.clock.advance(5)
    wait = await world2.reconcile_job("j1")
    assert wait is not None and abs(wait - 10.05) < 1e-6  # the grace left, not a poll
    assert world2.job_status("j1")["state"] == "Running"  # within the grace nothing moves

    world2.clock.advance(10)
    assert await world2.reconcile_job("j1") is None
    status = world2.job_status("j1")
    assert status["state"] == "Waiting" and status.get("placement") is None
    assert (status["attempt"], status["failovers"], status["failedOverFrom"]) == (1, 1, "west")
    assert status["restarts"] == 0  # not charged to backoffLimit
    admitted = condition(status, "Admitted")
    assert admitted is not None and admitted["reason"] == "ClusterLost"
    (lost,) = world2.events("j1", "ClusterLost")
    assert "west has not answered for 15s" in lost["message"] and "attempt 1" in lost["message"]

    await world2.place()
    status = world2.job_status("j1")
    assert status["placement"]["cluster"] == "east" and status["state"] == "Admitted"
    assert "failedOverFrom" not in status or status["failedOverFrom"] is None
    failed_over = condition(status, "FailedOver")
    assert failed_over is not None and failed_over["status"] == "True"
    assert "from cluster west (lost) to cluster east" in failed_over["message"]
    (event,) = world2.events("j1", "FailedOver")
    assert event["message"] == failed_over["message"]

    await world2.reconcile_job("j1")
    await world2.settle()
    moved = world2.pods("east", f"{JOB_LABEL}=j1")
    assert len(moved) == 2
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in moved.values()} == {"1"}
    container = next(iter(moved.values()))["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KAON_ATTEMPT"] == "1"
    assert set(world2.pods("west", f"{JOB_LABEL}=j1")) == set(old)  # out of reach meanwhile


@on_loop
async def test_a_member_back_loses_the_fenced_pods_before_it_takes_new_work(
    world2: World,
) -> None:
    old = await running_on_west(world2)
    await world2.lose("west")
    world2.clock.advance(15)
    await world2.reconcile_job("j1")
    await world2.place()
    assert world2.job_status("j1")["placement"]["cluster"] == "east"

    world2.members["west"].unreachable = False
    await world2.regain("west")  # ready and swept
    world2.members["west"].finish_pod_deletions()
    await world2.settle()
    assert world2.pods("west", f"{JOB_LABEL}=j1") == {}
    deleted = {p.rsplit("/", 1)[1] for m, p in world2.members["west"].writes if m == "DELETE"}
    assert set(old) <= deleted
    offers = {(o.cluster, o.pool): o.available for o in world2.manager.admission.offers()}
    assert offers[("west", "cpu")]


@on_loop
async def test_a_blip_shorter_than_the_grace_moves_nothing(world2: World) -> None:
    workers = await running_on_west(world2)
    await world2.lose("west")
    world2.clock.advance(14)
    await world2.reconcile_job("j1")
    await world2.regain("west")
    world2.clock.advance(30)
    await world2.reconcile_job("j1")
    status = world2.job_status("j1")
    assert (status["state"], status["attempt"], status.get("failovers", 0)) == ("Running", 0, 0)
    assert sorted(world2.pods("west", f"{JOB_LABEL}=j1")) == workers
    assert world2.events("j1", "ClusterLost") == []


@on_loop
async def test_failover_never_waits_for_the_cluster(world2: World) -> None:
    await running_on_west(world2, spec={"runPolicy": {"failover": {"mode": "Never"}}})
    await world2.lose("west")
    world2.clock.advance(3600)
    assert await world2.reconcile_job("j1") == UNREACHABLE_RETRY_S
    status = world2.job_status("j1")
    assert status["placement"]["cluster"] == "west" and status["attempt"] == 0


@on_loop
async def test_a_job_whose_cluster_is_unregistered_moves_at_once(world2: World) -> None:
    await running_on_west(world2)
    await world2.manager.clusters.object_event(
        "DELETED", world2.hub.peek("/apis/kaon.dev/v1alpha1/computeclusters/west") or {}
    )
    await world2.reconcile_job("j1")
    status = world2.job_status("j1")
    assert status["state"] == "Waiting" and status["failedOverFrom"] == "west"


async def second_operator(world: World) -> Manager:
    """Another operator on the same hub and members (its own caches), already acting."""
    other = Manager(
        world.hub,
        world.hub.kubeconfig(),
        world.settings,
        clock=world.clock,
        connect=apidouble.connect,
    )
    await other.clusters.activate()
    return other


async def successor_with_job(world: World, name: str) -> Manager:
    """A second operator that has seen the job but no ComputeCluster yet."""
    successor = await second_operator(world)
    body = world.hub.peek(job_path(name))
    assert body is not None
    successor.jobs.object_event("ADDED", body)
    return successor


@on_loop
async def test_an_operator_that_has_not_listed_the_cluster_yet_does_not_move_its_gang(
    world2: World,
) -> None:
    """A successor (restart or takeover) may reconcile a job before the ComputeCluster event
    arrives: not being listed yet is not being gone, so the grace counts from its start."""
    workers = await running_on_west(world2)
    successor = await successor_with_job(world2, "j1")
    try:
        wait = await successor.jobs.reconcile((NS, "j1"))
        assert wait is not None and world2.job_status("j1")["attempt"] == 0
        west = world2.hub.peek(cluster_path("west"))
        assert west is not None
        await successor.clusters.object_event("ADDED", west)
        await _ready(successor, "west")
        world2.clock.advance(60)
        await successor.jobs.reconcile((NS, "j1"))
    finally:
        await successor.stop()
    status = world2.job_status("j1")
    assert (status["state"], status["attempt"], status.get("failovers", 0)) == ("Running", 0, 0)
    assert sorted(world2.pods("west", f"{JOB_LABEL}=j1")) == workers


@on_loop
async def test_a_cluster_never_listed_after_a_start_moves_its_gang_after_the_grace(
    world2: World,
) -> None:
    await running_on_west(world2)
    successor = await successor_with_job(world2, "j1")
    try:
        world2.clock.advance(15)
        assert await successor.jobs.reconcile((NS, "j1")) is None
    finally:
        await successor.stop()
    status = world2.job_status("j1")
    assert status["state"] == "Waiting" and status["failedOverFrom"] == "west"


@on_loop
async def test_the_heartbeat_renews_a_lease_in_each_member(world2: World) -> None:
    lease = world2.members["west"].peek(paths.lease(HEARTBEAT_LEASE_NAMESPACE, HEARTBEAT_LEASE))
    assert lease is not None
    assert lease["spec"]["holderIdentity"] and lease["spec"]["renewTime"].endswith("Z")


@on_loop
async def test_a_status_write_from_a_stale_view_is_refused_and_decided_again(
    world: World,
) -> None:
    world.apply(trainingjob("j1"))
    await world.reconcile_job("j1")
    stale = world.jobs.cache.get((NS, "j1"))
    assert stale is not None
    world.hub.edit(job_path("j1"), {"metadata": {"labels": {"team": "a"}}})  # not fed: unseen
    await world.jobs.place_waiting()  # decided on the old resourceVersion: the hub refuses
    assert world.job_status("j1").get("placement") is None
    cached = world.jobs.cache.get((NS, "j1"))
    hub_now = world.hub.peek(job_path("j1"))
    assert cached is not None and hub_now is not None
    assert cached["metadata"]["resourceVersion"] == hub_now["metadata"]["resourceVersion"]
    assert cached["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
    await world.jobs.place_waiting()  # the next pass decides on the hub's current body
    assert world.job_status("j1")["placement"]["cluster"] == "west"


@on_loop
async def test_two_operators_never_launch_one_job_twice(world2: World) -> None:
    """A second operator (its own caches) against the same hub and members: both place the
    job; only one placement is written, and only that member gets workers."""
    other = await second_operator(world2)
    for name in ("west", "east"):
        body = world2.hub.peek(f"/apis/kaon.dev/v1alpha1/computeclusters/{name}")
        assert body is not None
        await other.clusters.object_event("ADDED", body)
    world2.apply(trainingjob("j1"))
    await world2.reconcile_job("j1")
    body = world2.hub.peek(job_path("j1"))
    assert body is not None
    other.jobs.object_event("ADDED", body)
    try:
        for member in (world2.member("west"), world2.member("east")):
            await _ready(other, member.name)
        # Both decide on the same resourceVersion; the second write is refused.
        await world2.jobs.place_waiting()
        await other.jobs.place_waiting()
        await world2.reconcile_job("j1")
        await other.jobs.reconcile((NS, "j1"))
    finally:
        await other.stop()
    await world2.settle()
    gangs = {m: world2.pods(m, f"{JOB_LABEL}=j1") for m in ("west", "east")}
    assert sorted(len(p) for p in gangs.values()) == [0, 2]
    where = world2.job_status("j1")["placement"]["cluster"]
    assert len(gangs[where]) == 2


async def _ready(manager: Manager, name: str) -> None:
    def ready() -> bool:
        member = manager.fleet.member(name)
        return member is not None and member.ready and member.swept

    await until(ready, f"{name} ready for the second operator")


@on_loop
async def test_a_sweep_keeps_pods_placed_through_another_registration_of_the_same_cluster(
    world: World,
) -> None:
    """One API server registered twice (as the rig's west and west-local are): sweeping the
    one registration must not take the pods the other placed."""
    more = compute_cluster(MemberSpec("west-more", labels={"via": "more"}), "west-kubeconfig")
    world.hub.put(more)
    stored = world.hub.peek(cluster_path("west-more"))
    assert stored is not None
    await world.manager.clusters.object_event("ADDED", stored)
    await until(lambda: world.is_ready("west-more"), "west-more ready")
    via_more = {"placement": {"clusterSelector": {"matchLabels": {"via": "more"}}}}
    world.apply(trainingjob("j1", via_more))
    await world.reconcile_job("j1")
    await world.place()
    assert world.job_status("j1")["placement"]["cluster"] == "west-more"
    await world.reconcile_job("j1")
    seen = world.member("west")
    await until(lambda: len(seen.pods_of((NS, "j1"))) == 2, "the workers seen in west")
    pods = sorted(world.pods("west", f"{JOB_LABEL}=j1"))
    assert len(pods) == 2
    await world.jobs.sweep(world.member("west"))
    assert sorted(world.pods("west", f"{JOB_LABEL}=j1")) == pods
    assert not [p for m, p in world.members["west"].writes if m == "DELETE"]
