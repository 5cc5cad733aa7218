"""ComputeCluster registration, status and inventory, and what kubectl shows of kaon's objects."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from kubernetes import client

from kaonrig import GROUP, VERSION, Jobs, Rig, kubectl, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")


def get_cc(kaon_rig: Rig, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    return api.get_cluster_custom_object(GROUP, VERSION, "computeclusters", name)  # type: ignore[no-any-return]


def ready(cc: dict[str, Any]) -> dict[str, Any]:
    conditions = (cc.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_members_report_ready_and_their_pool_inventory(kaon_rig: Rig) -> None:
    east = get_cc(kaon_rig, "east")
    assert ready(east)["status"] == "True" and ready(east)["reason"] == "Reachable"
    assert east["status"]["kubernetesVersion"] == "v1.36.3"
    pools = {p["name"]: p for p in east["status"]["pools"]}
    assert pools["gpu-a100"]["nodes"] == 2
    assert pools["gpu-a100"]["allocatable"]["gpus"] == 16
    assert pools["cpu"]["allocatable"]["cpu"] == 128


def test_inventory_follows_pods_through_watches(kaon_rig: Rig, jobs: Jobs, namespace: str) -> None:
    east_only = {"clusterSelector": {"matchLabels": {"region": "us-east"}}}
    spec = {
        "model": {"family": "cnn"},
        "workers": 2,
        "resources": {"cpu": 2, "memory": "1Gi", "gpus": 3},
        "placement": east_only | {"poolPreferences": [{"type": "gpu"}]},
    }
    jobs.create(
        namespace, "counted", spec, {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
    )
    jobs.wait_state(namespace, "counted", "Running")

    def a100(cc: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in cc["status"]["pools"] if p["name"] == "gpu-a100")

    pool = wait_for(
        lambda: a100(get_cc(kaon_rig, "east")),
        lambda p: p["requested"]["gpus"] == 6,
        "6 GPUs requested",
    )
    assert pool["free"]["gpus"] == 10


def member_manifest(name: str, secret: str, pool: str) -> dict[str, Any]:
    """A ComputeCluster with one pool (named after the nodes' kaon.dev/pool label)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ComputeCluster",
        "metadata": {"name": name},
        "spec": {
            "kubeconfigSecretRef": {"name": secret, "namespace": "kaon-system"},
            "pools": [{"name": pool, "nodeSelector": {"kaon.dev/pool": pool}}],
        },
    }


def test_a_member_whose_secret_is_missing_says_so(kaon_rig: Rig) -> None:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    body = member_manifest("nowhere", "no-such-secret", "cpu")
    api.create_cluster_custom_object(GROUP, VERSION, "computeclusters", body)
    try:
        cc = wait_for(
            lambda: get_cc(kaon_rig, "nowhere"), lambda c: bool(ready(c)), "a Ready condition"
        )
        assert ready(cc)["status"] == "False" and ready(cc)["reason"] == "SecretNotFound"
        assert "kaon-system/no-such-secret" in ready(cc)["message"]
    finally:
        api.delete_cluster_custom_object(GROUP, VERSION, "computeclusters", "nowhere")


def test_a_member_deleted_and_registered_again_reports_ready_again(kaon_rig: Rig) -> None:
    manifest = member_manifest("west-again", "rig-west-kubeconfig", "no-such-pool")
    for attempt in range(2):
        kubectl(kaon_rig, "apply", "-f", "-", stdin=json.dumps(manifest))
        cc = wait_for(
            lambda: get_cc(kaon_rig, "west-again"),
            lambda c: ready(c).get("status") == "True",
            f"west-again Ready (registration {attempt + 1})",
        )
        assert [(p["name"], p["nodes"]) for p in cc["status"]["pools"]] == [("no-such-pool", 0)]
        kubectl(kaon_rig, "delete", "computecluster", "west-again", "--wait=true")


def test_a_refused_member_recovers_when_its_secret_gets_a_good_kubeconfig(kaon_rig: Rig) -> None:
    core = kaon_rig.core("hub")
    good = core.read_namespaced_secret("rig-west-kubeconfig", "kaon-system").data["kubeconfig"]
    config = yaml.safe_load(base64.b64decode(good))
    for user in config["users"]:
        user["user"] = {"token": "expired-or-revoked"}
    bad = base64.b64encode(yaml.safe_dump(config).encode()).decode()
    secret = {"metadata": {"name": "west-rotating"}, "data": {"kubeconfig": bad}}
    core.create_namespaced_secret("kaon-system", secret)
    manifest = member_manifest("west-rotating", "west-rotating", "no-such-pool")
    try:
        kubectl(kaon_rig, "apply", "-f", "-", stdin=json.dumps(manifest))
        cc = wait_for(
            lambda: get_cc(kaon_rig, "west-rotating"),
            lambda c: ready(c).get("reason") == "BadCredentials",
            "the member refusing the token",
        )
        assert ready(cc)["status"] == "False" and "401" in ready(cc)["message"]
        core.patch_namespaced_secret("west-rotating", "kaon-system", {"data": {"kubeconfig": good}})
        wait_for(
            lambda: get_cc(kaon_rig, "west-rotating"),
            lambda c: ready(c).get("status") == "True",
            "Ready with the kubeconfig now in the Secret",
        )
    finally:
        kubectl(kaon_rig, "delete", "computecluster", "west-rotating", "--ignore-not-found")
        core.delete_namespaced_secret("west-rotating", "kaon-system")


def test_kubectl_get_tj_shows_state_cluster_pool_and_workers(
    kaon_rig: Rig, jobs: Jobs, namespace: str
) -> None:
    east_only = {"clusterSelector": {"matchLabels": {"region": "us-east"}}}
    spec = {"model": {"family": "rnn"}, "workers": 3, "placement": east_only}
    jobs.create(
        namespace, "shown", spec, {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
    )
    jobs.wait_state(namespace, "shown", "Running")
    wait_for(
        lambda: jobs.get(namespace, "shown")["status"]["workers"]["ready"],
        lambda n: n == 3,
        "3 ready",
    )
    header, row = kubectl(kaon_rig, "get", "tj", "-n", namespace).splitlines()
    assert header.split()[:6] == ["NAME", "STATE", "CLUSTER", "POOL", "READY", "WORKERS"]
    assert row.split()[:6] == ["shown", "Running", "east", "cpu", "3", "3"]
    assert "shown" in kubectl(kaon_rig, "get", "kaon", "-n", namespace)  # the kaon category
    explained = kubectl(kaon_rig, "explain", "trainingjob.spec.workers")
    assert "Workers in the gang" in explained
