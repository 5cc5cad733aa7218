"""The ComputeCluster controller on in-memory API servers: members registered from their
Secrets, and their reachability and pool inventory published in status when it changes."""

from __future__ import annotations

import base64

import pytest

from kaon.clusters import paths
from kaon.clusters.client import ApiError, Obj

from apidouble import ApiDouble
from enginekit import (
    OPERATOR_NS,
    MemberSpec,
    World,
    cluster_path,
    compute_cluster,
    on_loop,
    trainingjob,
    until,
)

GIB = 1 << 30


def status_writes(world: World, name: str) -> int:
    return world.hub.writes.count(("PATCH", cluster_path(name) + "/status"))


def ready_condition(world: World, name: str) -> Obj:
    body = world.hub.peek(cluster_path(name))
    assert body is not None
    ready: Obj
    (ready,) = body["status"]["conditions"]
    assert ready["type"] == "Ready"
    return ready


async def register(world: World, body: Obj) -> None:
    world.hub.put(body)
    stored = world.hub.peek(cluster_path(body["metadata"]["name"]))
    assert stored is not None
    await world.manager.clusters.object_event("ADDED", stored)


@on_loop
async def test_a_reachable_member_publishes_its_pools_capacity(world: World) -> None:
    await world.manager.clusters.publish()
    body = world.hub.peek(cluster_path("west"))
    assert body is not None
    status = body["status"]
    ready = ready_condition(world, "west")
    assert (ready["status"], ready["reason"]) == ("True", "Reachable")
    assert ready["message"] == "3 nodes watched"
    assert status["server"] == world.members["west"].server
    assert status["kubernetesVersion"] == "v1.31.0" and status["observedGeneration"] == 1
    cpu, gpu = status["pools"]
    assert (cpu["name"], cpu["nodes"]) == ("cpu", 2)
    assert cpu["allocatable"] == {"cpu": 16.0, "memory": 64 * GIB, "gpus": 0}
    assert cpu["free"] == cpu["allocatable"]
    assert (gpu["name"], gpu["nodes"], gpu["allocatable"]["gpus"]) == ("gpu", 1, 4)


@on_loop
async def test_bound_pods_show_as_requested_in_the_pool(world: World) -> None:
    world.apply(trainingjob("j1"))
    await world.reconcile_job("j1")
    await world.place()
    await world.reconcile_job("j1")
    await world.settle()
    world.run_pods(sorted(world.pods()))
    await world.settle()
    await world.manager.clusters.publish()
    body = world.hub.peek(cluster_path("west"))
    assert body is not None
    cpu = body["status"]["pools"][0]
    assert cpu["requested"]["cpu"] == 12.0 and cpu["free"]["cpu"] == 4.0


@on_loop
async def test_an_unchanged_status_is_written_once(world: World) -> None:
    await world.manager.clusters.publish()
    await world.manager.clusters.publish()
    assert status_writes(world, "west") == 1
    world.members["west"].add_node("west-cpu-9", cpu="8", labels={"kaon.dev/pool": "cpu"})
    await world.settle()
    await world.manager.clusters.publish()
    assert status_writes(world, "west") == 2


@on_loop
async def test_an_unreachable_member_is_not_ready(world: World) -> None:
    await world.manager.clusters.publish()
    await world.lose("west")
    await world.manager.clusters.publish()
    ready = ready_condition(world, "west")
    assert (ready["status"], ready["reason"]) == ("False", "Unreachable")
    offers = world.manager.admission.offers()
    assert offers and not any(o.available for o in offers)

    await world.regain("west")
    await world.manager.clusters.publish()
    assert ready_condition(world, "west")["status"] == "True"


@on_loop
async def test_refused_credentials_are_reported(world: World) -> None:
    world.members["west"].refuse_credentials = True
    world.members["west"].end_watches()
    await until(lambda: world.member().health.reason == "BadCredentials", "credentials refused")
    await world.manager.clusters.publish()
    assert ready_condition(world, "west")["reason"] == "BadCredentials"


def secret_without_key() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "north-kubeconfig", "namespace": OPERATOR_NS},
        "data": {"other": "eA=="},
    }


def secret_of(text: str) -> Obj:
    secret = secret_without_key()
    secret["data"] = {"kubeconfig": base64.b64encode(text.encode()).decode()}
    return secret


@pytest.mark.parametrize(
    ("secret", "reason", "says"),
    [
        (None, "SecretNotFound", "does not exist"),
        (secret_without_key(), "SecretNotFound", "has no key 'kubeconfig'"),
        (secret_of("just: [a, list"), "BadCredentials", "not a kubeconfig: "),
        (secret_of("apiVersion: v1\nkind: Config\n"), "BadCredentials", "not a kubeconfig"),
        (secret_of("clusters: [{name: c, cluster: {}}]\n"), "BadCredentials", "cannot be used"),
    ],
)
@on_loop
async def test_a_member_without_a_usable_secret_says_why(
    world: World, secret: Obj | None, reason: str, says: str
) -> None:
    if secret is not None:
        world.hub.put(secret)
    await register(world, compute_cluster(MemberSpec("north"), "north-kubeconfig"))
    await world.manager.clusters.publish()
    ready = ready_condition(world, "north")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert says in ready["message"]
    assert world.manager.fleet.member("north") is None


@on_loop
async def test_an_unreadable_secret_is_reported(world: World) -> None:
    secret = paths.secret(OPERATOR_NS, "north-kubeconfig")
    world.hub.fail("GET", secret, ApiError(403, "Forbidden", "secrets is forbidden"), times=2)
    await register(world, compute_cluster(MemberSpec("north"), "north-kubeconfig"))
    await world.manager.clusters.publish()
    assert ready_condition(world, "north")["reason"] == "SecretUnreadable"


@on_loop
async def test_a_secret_that_comes_later_is_picked_up(world: World) -> None:
    await register(world, compute_cluster(MemberSpec("north"), "north-kubeconfig"))
    await world.manager.clusters.publish()
    assert ready_condition(world, "north")["reason"] == "SecretNotFound"

    north = ApiDouble("north", wall=world.clock.wall)
    north.add_node("north-cpu-0", labels={"kaon.dev/pool": "cpu"})
    world.hub.put(north.kubeconfig_secret(OPERATOR_NS, "north-kubeconfig"))
    await world.manager.clusters.publish()  # tries the Secret again
    await until(lambda: world.member("north").ready, "north ready")
    await world.manager.clusters.publish()
    assert ready_condition(world, "north")["reason"] == "Reachable"


@on_loop
async def test_the_hub_itself_can_be_a_member(world: World) -> None:
    world.hub.add_node("hub-cpu-0", labels={"kaon.dev/pool": "cpu"})
    body = compute_cluster(MemberSpec("hub", gpu_nodes=0), "unused")
    body["spec"] = {"hub": True, "pools": body["spec"]["pools"]}
    await register(world, body)
    await until(lambda: world.member("hub").ready, "the hub watched as a member")
    assert world.member("hub").client is world.hub
    await world.manager.clusters.publish()
    assert ready_condition(world, "hub")["message"] == "1 nodes watched"


@on_loop
async def test_a_suspended_cluster_takes_no_new_work(world: World) -> None:
    world.hub.edit(cluster_path("west"), {"spec": {"suspend": True}})
    stored = world.hub.peek(cluster_path("west"))
    assert stored is not None
    await world.manager.clusters.object_event("MODIFIED", stored)
    assert world.member().ready  # the same kubeconfig: the member is kept
    world.apply(trainingjob("j1"))
    await world.reconcile_job("j1")
    await world.place()
    status = world.job_status("j1")
    assert status["state"] == "Waiting"
    assert status["conditions"][0]["reason"] == "ClusterUnavailable"


@on_loop
async def test_a_deleted_cluster_is_let_go(world: World) -> None:
    await world.manager.clusters.publish()
    stored = world.hub.peek(cluster_path("west"))
    assert stored is not None
    await world.manager.clusters.object_event("DELETED", stored)
    assert world.manager.fleet.member("west") is None
    assert world.members["west"].closed == 1 and world.members["west"].watching == 0
    writes = len(world.hub.writes)
    await world.manager.clusters.publish()
    assert len(world.hub.writes) == writes
    assert world.manager.admission.offers() == []


@on_loop
async def test_a_status_write_the_hub_refuses_is_tried_at_the_next_publish(world: World) -> None:
    refusal = ApiError(500, "InternalError", "etcd timeout")
    world.hub.fail("PATCH", cluster_path("west") + "/status", refusal)
    await world.manager.clusters.publish()
    body = world.hub.peek(cluster_path("west"))
    assert body is not None and "status" not in body
    await world.manager.clusters.publish()
    assert ready_condition(world, "west")["reason"] == "Reachable"


@on_loop
async def test_a_startup_listing_adds_what_the_watch_has_not_shown_and_keeps_its_deletions(
    fast_backoff: None,
) -> None:
    world = World([MemberSpec("west"), MemberSpec("east", gpu_nodes=0)])  # not started
    clusters = world.manager.clusters
    west, east = (world.hub.peek(cluster_path(n)) for n in ("west", "east"))
    assert west is not None and east is not None
    await clusters.object_event("DELETED", east)  # the watch saw east go after the LIST
    clusters.listed([west, east])
    assert set(clusters.bodies) == {"west"}
    await clusters.object_event("ADDED", east)  # created again: the watch's word stands
    assert set(clusters.bodies) == {"west", "east"}
