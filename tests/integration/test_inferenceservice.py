"""InferenceServices placed, scaled, split and cleaned up by the operator, on the rig's members.

The members' pools are kwok nodes here: server pods are scheduled and become Ready as kwok
says, and the servers' load reports are written by the test, as a server would write them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kaon_rig import rig

from kaonrig import Jobs, Rig, bound_claim, condition, kubectl, state, wait_event, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

ISVC = "kaon.dev/inferenceservice"
LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
CPU = {"poolPreferences": [{"type": "cpu"}]}


@pytest.fixture
def services(kaon_rig: Rig) -> Jobs:
    return Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")


@pytest.fixture
def models(kaon_rig: Rig, namespace: str, tmp_path: Path) -> str:
    """A claim named `models` in both members (servers mount it; kwok does not look inside)."""
    for cluster in ("east", "west"):
        bound_claim(kaon_rig, cluster, namespace, "models", tmp_path / cluster)
    return "pvc://models/digits"


def isvc(uri: str, **more: Any) -> dict[str, Any]:
    return {"model": {"uri": uri}, "resources": {"cpu": 1, "memory": "1Gi"}, **more}


def server_pods(core: client.CoreV1Api, ns: str, name: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=f"{ISVC}={name}").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def deployments(kaon_rig: Rig, cluster: str, ns: str) -> dict[str, client.V1Deployment]:
    apps = client.AppsV1Api(kaon_rig.api(cluster))
    return {d.metadata.name: d for d in apps.list_namespaced_deployment(ns).items}


def report_load(kaon_rig: Rig, cluster: str, ns: str, name: str, inflight: float) -> None:
    """What each server does every few seconds: its load, on its own pod."""
    core = kaon_rig.core(cluster)
    record = json.dumps({"ts": time.time(), "inflight": inflight, "rps": inflight * 10})
    for pod in server_pods(core, ns, name):
        patch = {"metadata": {"annotations": {"kaon.dev/load": record}}}
        core.patch_namespaced_pod(pod.metadata.name, ns, patch)


def test_replicas_spread_over_two_clusters_with_the_server_injected(
    kaon_rig: Rig, services: Jobs, namespace: str, models: str, kaon_router: str
) -> None:
    spec = isvc(models, replicas={"min": 3, "max": 3}, placement=CPU | {"clusters": 2})
    services.create(namespace, "digits", spec)
    svc = services.wait(
        namespace,
        "digits",
        lambda s: state(s) == "Ready" and s["status"]["readyReplicas"] == 3,
        "all 3 replicas ready",
        90,
    )
    status = svc["status"]
    placed = sorted((c["cluster"], c["pool"], c["replicas"]) for c in status["clusters"])
    # Two clusters, each on its CPU pool; the first one placed gets the odd replica.
    assert [(c, p) for c, p, _ in placed] == [("east", "cpu"), ("west", "cpu")]
    assert sorted(n for _, _, n in placed) == [1, 2]
    assert status["readyReplicas"] == 3 and status["replicas"] == 3
    assert status["url"] == f"{kaon_router}/serving/{namespace}/digits"  # one address for both
    assert {c["url"] for c in status["clusters"]} == {
        f"http://digits.{namespace}.svc.cluster.local"
    }
    assert sum(len(c["endpoints"]) for c in status["clusters"]) == 3  # the router's replicas
    assert condition(svc, "Ready")["status"] == "True"
    for cluster, _, replicas in placed:
        core = kaon_rig.core(cluster)
        pods = server_pods(core, namespace, "digits")
        assert len(pods) == replicas
        for pod in pods:
            assert core.read_node(pod.spec.node_name).metadata.labels["kaon.dev/pool"] == "cpu"
            container = pod.spec.containers[0]
            assert container.command == ["python", "-m", "kaon_kernels.serve"]
            assert container.readiness_probe.http_get.path == "/v2/health/ready"
        service = core.read_namespaced_service("digits", namespace)
        assert service.spec.selector == {ISVC: "digits"} and service.spec.ports[0].port == 80
    header, row = kubectl(kaon_rig, "get", "isvc", "digits", "-n", namespace).splitlines()
    assert header.split()[:6] == ["NAME", "STATE", "URL", "READY", "REPLICAS", "POOLS"]
    assert row.split()[1:6] == ["Ready", status["url"], "3", "3", status["pools"]]
    assert sorted(status["pools"].split(",")) == ["east/cpu", "west/cpu"]


def test_replicas_follow_the_servers_load_reports(
    kaon_rig: Rig, services: Jobs, namespace: str, models: str
) -> None:
    west = {"clusterSelector": {"matchLabels": {"region": "eu-west"}}}
    spec = isvc(
        models,
        replicas={"min": 1, "max": 4},
        autoscaling={"targetConcurrency": 2, "scaleDownDelaySeconds": 0},
        placement=CPU | west,
    )
    services.create(namespace, "elastic", spec)
    services.wait(namespace, "elastic", lambda s: state(s) == "Ready", "ready", 90)
    core = kaon_rig.core("west")
    assert len(server_pods(core, namespace, "elastic")) == 1

    report_load(kaon_rig, "west", namespace, "elastic", inflight=7.0)  # 7 / 2 -> 4 replicas
    svc = services.wait(
        namespace, "elastic", lambda s: s["status"].get("desiredReplicas") == 4, "scaled up", 60
    )
    assert svc["status"]["lastScaleTime"]
    wait_for(
        lambda: deployments(kaon_rig, "west", namespace)["elastic-stable"].spec.replicas,
        lambda n: n == 4,
        "the Deployment scaled to 4",
    )
    services.wait(namespace, "elastic", lambda s: s["status"]["readyReplicas"] == 4, "4 ready")

    report_load(kaon_rig, "west", namespace, "elastic", inflight=0.0)  # idle -> min
    services.wait(
        namespace, "elastic", lambda s: s["status"]["desiredReplicas"] == 1, "scaled down", 60
    )
    wait_for(
        lambda: server_pods(core, namespace, "elastic"), lambda p: len(p) == 1, "one replica left"
    )


def test_a_canary_gets_its_share_of_replicas_behind_the_one_service(
    kaon_rig: Rig, services: Jobs, namespace: str, models: str
) -> None:
    east = {"clusterSelector": {"matchLabels": {"region": "us-east"}}}
    canary = {"model": {"uri": "pvc://models/digits-v2"}, "trafficPercent": 25}
    spec = isvc(models, replicas={"min": 4, "max": 4}, placement=CPU | east, canary=canary)
    services.create(namespace, "split", spec)
    svc = services.wait(namespace, "split", lambda s: state(s) == "Ready", "ready", 90)
    assert svc["status"]["canary"] == {
        "requestedPercent": 25,
        "effectivePercent": 25,
        "replicas": 1,
    }
    assert condition(svc, "CanaryShare")["status"] == "True"
    made = deployments(kaon_rig, "east", namespace)
    assert {n: d.spec.replicas for n, d in made.items()} == {"split-stable": 3, "split-canary": 1}
    args = made["split-canary"].spec.template.spec.containers[0].args
    assert args[args.index("--model-dir") + 1] == "/var/lib/kaon/models/digits-v2"

    # 10% of 4 replicas cannot be had as a replica ratio, but the router splits requests:
    # the share in effect is the requested one (behind the Services alone it would be 25%).
    services.patch_spec(namespace, "split", {"canary": canary | {"trafficPercent": 10}})
    svc = services.wait(
        namespace,
        "split",
        lambda s: (s["status"].get("canary") or {}).get("requestedPercent") == 10,
        "the new share reported",
    )
    assert svc["status"]["canary"]["effectivePercent"] == 10
    assert condition(svc, "CanaryShare")["reason"] == "Exact"
    assert "split by the router" in condition(svc, "CanaryShare")["message"]

    services.patch_spec(namespace, "split", {"canary": None})
    wait_for(
        lambda: sorted(deployments(kaon_rig, "east", namespace)),
        lambda names: names == ["split-stable"],
        "the canary removed",
    )
    svc = services.wait(namespace, "split", lambda s: not s["status"].get("canary"), "no canary")
    assert svc["status"]["replicas"] == 4


def test_a_trainingjob_artifact_is_served_once_the_job_has_succeeded(
    kaon_rig: Rig, services: Jobs, jobs: Jobs, namespace: str, models: str
) -> None:
    node_local = {"model": {"family": "cnn"}, "workers": 1}
    jobs.create(namespace, "scratch", node_local, {"kaon.dev/sim-exit-code": "0"})
    services.create(namespace, "nowhere", {"model": {"trainingJobRef": {"name": "scratch"}}})
    svc = services.wait(
        namespace,
        "nowhere",
        lambda s: condition(s, "Ready").get("reason") == "ModelNotServable",
        "refused: the artifact is node-local",
    )
    assert "claimName" in condition(svc, "Ready")["message"]

    trained = node_local | {
        "checkpoint": {"claimName": "models"},
        "placement": {"clusterSelector": {"matchLabels": {"region": "us-east"}}},
    }
    sim = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "8s"}
    jobs.create(namespace, "trained", trained, sim)
    services.create(namespace, "served", {"model": {"trainingJobRef": {"name": "trained"}}})
    svc = services.wait(
        namespace,
        "served",
        lambda s: condition(s, "Ready").get("reason") == "ModelNotReady",
        "waiting for the job",
    )
    assert (
        state(svc) == "Waiting" and "TrainingJob trained is" in condition(svc, "Ready")["message"]
    )
    job = jobs.wait_state(namespace, "trained", "Succeeded", timeout_s=90)
    assert job["status"]["artifact"] == "pvc://models/jobs/trained/output"
    svc = services.wait(namespace, "served", lambda s: state(s) == "Ready", "ready", 90)
    # Served where the claim with the artifact is: the job's cluster.
    assert [c["cluster"] for c in svc["status"]["clusters"]] == ["east"]
    assert svc["status"]["model"] == {"claim": "models", "path": "jobs/trained/output"}


def test_deleting_a_service_removes_its_objects_from_every_member(
    kaon_rig: Rig, services: Jobs, namespace: str, models: str
) -> None:
    services.create(namespace, "brief", isvc(models, placement=CPU | {"clusters": 2}))
    services.wait(namespace, "brief", lambda s: state(s) == "Ready", "ready", 90)
    services.delete(namespace, "brief")
    wait_for(lambda: services.exists(namespace, "brief"), lambda e: not e, "service deleted", 60)
    for cluster in ("east", "west"):
        assert deployments(kaon_rig, cluster, namespace) == {}
        names = [
            s.metadata.name for s in kaon_rig.core(cluster).list_namespaced_service(namespace).items
        ]
        assert names == []


def test_replicas_move_to_another_cluster_when_theirs_stops_answering(
    kaon_rig: Rig, services: Jobs, namespace: str, models: str
) -> None:
    services.create(namespace, "steady", isvc(models, placement=CPU))
    svc = services.wait(namespace, "steady", lambda s: state(s) == "Ready", "ready", 90)
    assert [c["cluster"] for c in svc["status"]["clusters"]] == ["west"]
    rig.stop_cluster("west")
    try:
        svc = services.wait(
            namespace,
            "steady",
            lambda s: (
                [c["cluster"] for c in s["status"]["clusters"]] == ["east"] and state(s) == "Ready"
            ),
            "failed over to east",
            90,
        )
    finally:
        rig.start_cluster("west")
    assert len(server_pods(kaon_rig.core("east"), namespace, "steady")) == 1
    seen = wait_event(kaon_rig, namespace, "InferenceService", "steady", "FailedOver")
    ((type_, _, message),) = [e for e in seen if e[1] == "FailedOver"]
    assert type_ == "Warning" and message.startswith("cluster west unreachable for 10s")
    assert message.endswith("replicas now in east/cpu")
    # Back again, west loses what it ran: the service lives in east now.
    wait_for(
        lambda: deployments(kaon_rig, "west", namespace),
        lambda d: d == {},
        "the stale Deployment removed from west",
        90,
    )
