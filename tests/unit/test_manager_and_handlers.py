"""The Manager's loops end to end on in-memory API servers, and the kopf handlers that hand
events to it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from kaon import handlers
from kaon.api.common import API_VERSION
from kaon.api.names import LEADER_LEASE, QUEUE_LABEL
from kaon.clusters import paths
from kaon.clusters.client import ApiError
from kaon.controllers import inferenceservice as inferenceservice_controller
from kaon.engine import metrics
from kaon.manager import Manager

import apidouble
from apidouble import ApiDouble
from enginekit import (
    NS,
    World,
    cluster_path,
    inferenceservice,
    on_loop,
    trainingjob,
    until,
)

NAMESPACE_KAON = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kaon-system"}}


def kopf_handler(fn: object) -> Any:
    """A registered handler, called as kopf would (its typed signature wants every kwarg)."""
    return fn


def samples(manager: Manager) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in manager.metrics_collector().collect()
        for s in family.samples
    }


@on_loop
async def test_started_loops_take_a_job_from_its_event_to_running(world: World) -> None:
    world.manager.start(trim_heap=False)
    body = world.hub.put(trainingjob("j1"))
    world.jobs.object_event("ADDED", body)  # kopf's event; the queue and placement loop do the rest
    await until(lambda: len(world.pods()) == 2, "the workers created")
    world.run_pods(sorted(world.pods()))  # member events reach the job through the fleet
    await until(
        lambda: (world.job("j1") or {}).get("status", {}).get("state") == "Running", "running"
    )
    got = samples(world.manager)
    assert got[("kaon_trainingjobs", ("Running",))] == 1
    assert got[("kaon_member_cluster_up", ("west",))] == 1
    assert got[("kaon_pool_free", ("west", "cpu", "cpu"))] == 4

    tasks = list(world.manager._tasks)
    await world.manager.stop()
    assert tasks and all(t.done() for t in tasks)
    assert world.manager.fleet.member("west") is None
    assert world.members["west"].closed == 1 and world.members["west"].watching == 0


@on_loop
async def test_the_first_decisions_wait_for_the_listed_clusters_queues_and_namespaces(
    fast_backoff: None,
) -> None:
    """kopf has delivered no ComputeCluster, Queue or Namespace yet (its first listing may come
    after the operator starts acting): the manager lists them itself before deciding."""
    world = World()  # not started: nothing registered
    world.hub.put(
        {
            "apiVersion": API_VERSION,
            "kind": "Queue",
            "metadata": {"name": "small"},
            "spec": {"quotas": [{"resource": "cpu", "nominal": "1"}]},
        }
    )
    labelled = {"name": NS, "labels": {QUEUE_LABEL: "small"}}
    world.hub.put({"apiVersion": "v1", "kind": "Namespace", "metadata": labelled})
    anywhere = {"workers": 1, "resources": {"cpu": "2"}}
    named = {**anywhere, "placement": {"clusterSelector": {"matchLabels": {"zone": "w"}}}}
    west = world.hub.peek(cluster_path("west"))
    assert west is not None
    west["metadata"]["labels"] = {"zone": "w"}
    world.hub.put(west)
    world.jobs.object_event("ADDED", world.hub.put(trainingjob("over-quota", anywhere)))
    world.jobs.object_event("ADDED", world.hub.put(trainingjob("selects-west", named, "other")))
    world.manager.start(trim_heap=False)

    await until(lambda: world.job_status("over-quota").get("state") == "Waiting", "it waits")
    admitted = world.job_status("over-quota")["conditions"][0]
    assert admitted["reason"] == "QuotaExceeded" and "queue small" in admitted["message"]
    await until(lambda: bool(world.job_status("selects-west", "other").get("placement")), "placed")
    assert world.job_status("selects-west", "other")["placement"]["cluster"] == "west"
    await world.manager.stop()


@on_loop
async def test_a_hub_without_the_queue_crd_has_no_queues_and_the_manager_acts(
    fast_backoff: None,
) -> None:
    world = World()  # not started
    missing = ApiError(404, "NotFound", "the server could not find the requested resource")
    world.hub.fail("GET", paths.custom(API_VERSION, "queues"), missing, times=1000)
    world.jobs.object_event("ADDED", world.hub.put(trainingjob("j1", {"workers": 1})))
    world.manager.start(trim_heap=False)
    await until(lambda: bool(world.job_status("j1").get("placement")), "placed")
    assert world.manager.queues.specs == {}
    await world.manager.stop()


@on_loop
async def test_a_job_that_succeeds_sends_the_services_serving_it_to_work(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inferenceservice_controller, "RESYNC_S", 3600.0)  # no resync meanwhile
    world.manager.start(trim_heap=False)
    spec = {"workers": 1, "resources": {"cpu": "1"}, "checkpoint": {"claimName": "models"}}
    world.jobs.object_event("ADDED", world.hub.put(trainingjob("trainer", spec)))
    served = {"model": {"uri": None, "trainingJobRef": {"name": "trainer"}}}
    world.services.object_event("ADDED", world.hub.put(inferenceservice("svc", served)))
    await until(lambda: world.service_status("svc").get("state") == "Waiting", "svc waits")
    await until(lambda: len(world.pods()) == 1, "the worker created")
    world.run_pods(list(world.pods()), phase="Succeeded")
    await until(lambda: world.job_status("trainer").get("state") == "Succeeded", "succeeded")
    assert world.service_status("svc")["state"] == "Waiting"  # nothing told it yet
    job = world.job("trainer")
    assert job is not None
    world.jobs.object_event("MODIFIED", job)  # kopf's event for the job's new status
    await until(lambda: world.service_status("svc").get("state") == "Deploying", "svc deploys")
    assert world.service_status("svc")["model"]["path"] == "jobs/trainer/output"


@on_loop
async def test_the_kopf_handlers_hand_events_to_the_manager(world: World) -> None:
    memo = kopf.Memo()
    memo.manager = world.manager
    job = world.hub.put(trainingjob("j1"))
    await kopf_handler(handlers.trainingjob_event)(event={"type": None, "object": job}, memo=memo)
    assert world.jobs.cache.get((NS, "j1")) is not None  # a listing's object counts as ADDED
    svc = world.hub.put(inferenceservice("svc"))
    await kopf_handler(handlers.inferenceservice_event)(
        event={"type": "ADDED", "object": svc}, memo=memo
    )
    assert world.services.cache.get((NS, "svc")) is not None
    await kopf_handler(handlers.trainingjob_event)(
        event={"type": "DELETED", "object": job}, memo=memo
    )
    await kopf_handler(handlers.inferenceservice_event)(
        event={"type": "DELETED", "object": svc}, memo=memo
    )
    assert len(world.jobs.cache) == 0 and len(world.services.cache) == 0

    west = world.hub.peek(cluster_path("west"))
    assert west is not None
    await kopf_handler(handlers.computecluster_event)(
        event={"type": "DELETED", "object": west}, memo=memo
    )
    assert world.manager.fleet.member("west") is None
    await kopf_handler(handlers.computecluster_event)(
        event={"type": None, "object": west}, memo=memo
    )
    await until(lambda: world.member("west").ready, "west registered again")


@pytest.fixture
def hub_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ApiDouble:
    hub = ApiDouble("hub")
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(hub.kubeconfig()))
    monkeypatch.setenv("KUBECONFIG", f"{config}:{tmp_path / 'second-is-ignored.yaml'}")
    monkeypatch.setenv("KAON_METRICS_PORT", "0")
    return hub


def test_the_hub_kubeconfig_is_the_first_file_of_kubeconfig(hub_kubeconfig: ApiDouble) -> None:
    assert handlers.hub_kubeconfig()["clusters"][0]["cluster"]["server"] == hub_kubeconfig.server


@on_loop
async def test_startup_builds_and_starts_the_manager_and_cleanup_stops_it(
    hub_kubeconfig: ApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[int, Any]] = []
    monkeypatch.setattr(handlers, "KubeClient", apidouble.connect)
    monkeypatch.setattr(metrics, "serve", lambda port, c: served.append((port, c)))
    hub_kubeconfig.put(NAMESPACE_KAON)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    await kopf_handler(handlers.startup)(settings=settings, memo=memo)
    manager = memo.manager
    assert isinstance(manager, Manager) and manager.hub is hub_kubeconfig
    assert settings.posting.level == logging.WARNING
    assert settings.watching.server_timeout == 300
    assert [port for port, _ in served] == [0]
    await until(lambda: manager.started, "the manager started once the Lease is held")
    lease = hub_kubeconfig.peek(paths.lease("kaon-system", LEADER_LEASE))
    assert lease is not None and lease["spec"]["holderIdentity"]
    await until(lambda: len(manager._tasks) == 7, "the manager listed, then started its loops")
    tasks = list(manager._tasks)
    assert {t.get_name() for t in tasks} == {
        "start",
        "members",
        "placement",
        "services-resync",
        "cluster-status",
        "queue-status",
        "heap-trim",
    }
    await kopf_handler(handlers.cleanup)(memo=memo)
    assert all(t.done() for t in tasks) and hub_kubeconfig.closed == 1
    released = hub_kubeconfig.peek(paths.lease("kaon-system", LEADER_LEASE))
    assert released is not None and released["spec"]["holderIdentity"] == ""


async def started_operator(monkeypatch: pytest.MonkeyPatch) -> kopf.Memo:
    """kopf's startup, with the hub's client on the double and no metrics server."""
    monkeypatch.setattr(handlers, "KubeClient", apidouble.connect)
    monkeypatch.setattr(metrics, "serve", lambda port, c: None)
    memo = kopf.Memo()
    await kopf_handler(handlers.startup)(settings=kopf.OperatorSettings(), memo=memo)
    return memo


@on_loop
async def test_a_standby_takes_in_events_but_acts_on_nothing(
    hub_kubeconfig: ApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_kubeconfig.put(NAMESPACE_KAON)
    hub_kubeconfig.put(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEADER_LEASE, "namespace": "kaon-system"},
            "spec": {"holderIdentity": "the-leader", "leaseDurationSeconds": 15},
        }
    )
    memo = await started_operator(monkeypatch)
    job = hub_kubeconfig.put(trainingjob("j1"))
    await kopf_handler(handlers.trainingjob_event)(event={"type": None, "object": job}, memo=memo)
    await asyncio.sleep(0.05)
    manager = memo.manager
    assert not manager.started and (NS, "j1") in manager.jobs.cache
    assert hub_kubeconfig.writes == []  # no finalizer, no status, no placement
    await kopf_handler(handlers.cleanup)(memo=memo)
    lease = hub_kubeconfig.peek(paths.lease("kaon-system", LEADER_LEASE))
    assert lease is not None and lease["spec"]["holderIdentity"] == "the-leader"


@on_loop
async def test_standalone_starts_at_once(
    hub_kubeconfig: ApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAON_LEADER_ELECTION", "false")
    memo = await started_operator(monkeypatch)
    assert memo.manager.started and memo.election is None
    await kopf_handler(handlers.cleanup)(memo=memo)
