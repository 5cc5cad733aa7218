"""The rig is real: a real kube-scheduler binds, kwok stages drive phases, CEL rules refuse."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kaon.api.names import ATTEMPT_LABEL, GPU_RESOURCE, RANK_LABEL
from kaon_rig import paths, rig
from kaon_rig.config import POOL_LABEL, SIM_FAIL
from kaon_rig.versions import VERSIONS

from kaonrig import Rig, sim_pod, wait_for


def read_pod(core: client.CoreV1Api, name: str, ns: str) -> client.V1Pod:
    return core.read_namespaced_pod(name, ns)


def phase(pod: client.V1Pod) -> str:
    return str(pod.status.phase)


def test_every_member_runs_its_pools_with_ready_nodes(kaon_rig: Rig) -> None:
    for cluster in kaon_rig.config.clusters:
        nodes = kaon_rig.core(cluster.name).list_node(label_selector="kaon.dev/rig-node=true").items
        by_pool: dict[str, int] = {}
        for n in nodes:
            assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
            by_pool[n.metadata.labels[POOL_LABEL]] = (
                by_pool.get(n.metadata.labels[POOL_LABEL], 0) + 1
            )
        assert by_pool == {p.name: p.nodes for p in cluster.pools if p.nodes and not p.agent}
        # Pools served by the process agent: their nodes are registered and kept Ready by it.
        served = kaon_rig.core(cluster.name).list_node(label_selector="kaon.dev/agent=true").items
        assert sorted(n.metadata.name for n in served) == sorted(
            p.node_name(cluster.name, i) for p in cluster.pools if p.agent for i in range(p.nodes)
        )
        for n in served:
            assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
            assert (
                n.metadata.annotations is None or "kwok.x-k8s.io/node" not in n.metadata.annotations
            )


def test_gpu_pod_is_bound_to_a_gpu_node_runs_and_succeeds_with_its_message(
    kaon_rig: Rig, namespace: str
) -> None:
    core = kaon_rig.core("east")
    core.create_namespaced_pod(
        namespace,
        sim_pod(
            "trainer", pool="gpu-a100", gpus=2, exit_code=0, duration="2s", message="loss=0.01"
        ),
    )
    running = wait_for(
        lambda: read_pod(core, "trainer", namespace),
        lambda p: phase(p) in ("Running", "Succeeded"),
        "the GPU pod to run",
    )
    node = core.read_node(running.spec.node_name)
    assert node.metadata.labels[POOL_LABEL] == "gpu-a100"
    assert node.status.allocatable[GPU_RESOURCE] == "8"
    scheduled = [c for c in running.status.conditions if c.type == "PodScheduled"]
    assert scheduled and scheduled[0].status == "True"

    done = wait_for(
        lambda: read_pod(core, "trainer", namespace),
        lambda p: phase(p) in ("Succeeded", "Failed"),
        "the GPU pod to finish",
    )
    assert phase(done) == "Succeeded"
    terminated = done.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.message == "loss=0.01"


def test_pod_asking_more_gpus_than_any_node_has_stays_unschedulable(
    kaon_rig: Rig, namespace: str
) -> None:
    core = kaon_rig.core("east")
    core.create_namespaced_pod(namespace, sim_pod("too-big", pool="gpu-a100", gpus=16))

    def unschedulable(p: client.V1Pod) -> bool:
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in (p.status.conditions or [])
        )

    pod = wait_for(lambda: read_pod(core, "too-big", namespace), unschedulable, "Unschedulable")
    assert phase(pod) == "Pending"
    assert pod.spec.node_name is None
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert "nvidia.com/gpu" in message


def test_pod_told_to_fail_ends_failed_with_its_exit_code(kaon_rig: Rig, namespace: str) -> None:
    core = kaon_rig.core("west")
    core.create_namespaced_pod(namespace, sim_pod("crasher", pool="cpu", exit_code=3))
    pod = wait_for(
        lambda: read_pod(core, "crasher", namespace),
        lambda p: phase(p) in ("Succeeded", "Failed"),
        "the failing pod to end",
    )
    assert phase(pod) == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"
    assert terminated.message == "simulated exit 3"


def test_sim_fail_ends_only_the_worker_its_attempt_and_rank_labels_name(
    kaon_rig: Rig, namespace: str
) -> None:
    # As kaon creates them: every worker of the job carries the job's annotations unchanged.
    core = kaon_rig.core("west")
    names = {(0, 0): "w-a0-r0", (0, 1): "w-a0-r1", (1, 1): "w-a1-r1"}
    for (attempt, rank), name in names.items():
        pod = sim_pod(name, pool="cpu", exit_code=0)
        pod["metadata"]["labels"] = {ATTEMPT_LABEL: str(attempt), RANK_LABEL: str(rank)}
        pod["metadata"]["annotations"][SIM_FAIL] = "0:1:3, 2:0:9"
        core.create_namespaced_pod(namespace, pod)
    ended = {
        key: wait_for(
            lambda n=name: read_pod(core, n, namespace),
            lambda p: phase(p) in ("Succeeded", "Failed"),
            f"{name} to end",
        )
        for key, name in names.items()
    }
    codes = {k: p.status.container_statuses[0].state.terminated.exit_code for k, p in ended.items()}
    assert codes == {(0, 0): 0, (0, 1): 3, (1, 1): 0}
    assert {k: phase(p) for k, p in ended.items()} == {
        (0, 0): "Succeeded",
        (0, 1): "Failed",
        (1, 1): "Succeeded",
    }


def test_sim_fail_alone_ends_its_worker_and_leaves_the_others_running(
    kaon_rig: Rig, namespace: str
) -> None:
    core = kaon_rig.core("west")
    for rank in (0, 1):
        pod = sim_pod(f"w{rank}", pool="cpu")
        pod["metadata"]["labels"] = {ATTEMPT_LABEL: "0", RANK_LABEL: str(rank)}
        pod["metadata"]["annotations"] = {SIM_FAIL: "0:1:4"}
        core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: read_pod(core, "w0", namespace), lambda p: phase(p) == "Running", "Running")
    failed = wait_for(
        lambda: read_pod(core, "w1", namespace), lambda p: phase(p) == "Failed", "w1 to fail"
    )
    assert failed.status.container_statuses[0].state.terminated.exit_code == 4
    assert phase(read_pod(core, "w0", namespace)) == "Running"


def test_pod_without_sim_annotations_keeps_running(kaon_rig: Rig, namespace: str) -> None:
    core = kaon_rig.core("west")
    core.create_namespaced_pod(namespace, sim_pod("server", pool="gpu-t4", gpus=1))
    wait_for(
        lambda: read_pod(core, "server", namespace), lambda p: phase(p) == "Running", "Running"
    )
    time.sleep(2)  # longer than the default sim-exit delay: nothing must end it
    assert phase(read_pod(core, "server", namespace)) == "Running"


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.rigtest.kaon.dev"},
    "spec": {
        "group": "rigtest.kaon.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "gpus": {"type": "integer", "minimum": 0},
                                    "gpuType": {"type": "string"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.gpuType) || self.gpus > 0",
                                        "message": "gpuType requires gpus > 0",
                                        "fieldPath": ".gpuType",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def widget_crd(kaon_rig: Rig) -> Any:
    ext = client.ApiextensionsV1Api(kaon_rig.api("hub"))
    name = WIDGET_CRD["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(
        lambda: ext.read_custom_resource_definition(name),
        lambda crd: any(
            c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])
        ),
        "the CRD to be established",
    )
    yield client.CustomObjectsApi(kaon_rig.api("hub"))
    ext.delete_custom_resource_definition(name)


def test_cel_rule_refuses_an_invalid_object_naming_the_field(
    widget_crd: client.CustomObjectsApi, namespace: str
) -> None:
    def create(spec: dict[str, Any], name: str) -> Any:
        body = {"apiVersion": "rigtest.kaon.dev/v1", "kind": "Widget", "metadata": {"name": name}}
        return widget_crd.create_namespaced_custom_object(
            "rigtest.kaon.dev", "v1", namespace, "widgets", body | {"spec": spec}
        )

    # The CRD may be served a moment after Established: retry the valid create briefly.
    wait_for(lambda: _try(lambda: create({"gpus": 2, "gpuType": "a100"}, "good")), bool, "a create")
    with pytest.raises(ApiException) as refused:
        create({"gpus": 0, "gpuType": "a100"}, "bad")
    assert refused.value.status == 422
    status = json.loads(refused.value.body)
    assert "spec.gpuType: Invalid value" in status["message"]
    assert "gpuType requires gpus > 0" in status["message"]
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.gpuType"]


def _try(fn: Any) -> bool:
    try:
        fn()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def test_built_kubectl_lists_the_pools_of_a_member(kaon_rig: Rig) -> None:
    out = subprocess.run(
        [
            str(paths.kubectl_binary()),
            "--kubeconfig",
            str(kaon_rig.kubeconfig("east")),
            "get",
            "nodes",
            "-L",
            POOL_LABEL,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "gpu-a100" in out and " cpu" in out
    version = subprocess.run(
        [str(paths.kubectl_binary()), "version", "--client", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f'"gitVersion": "v{VERSIONS.kubernetes}"' in version


def test_a_second_rig_up_reuses_the_running_clusters(kaon_rig: Rig) -> None:
    actions = rig.up(kaon_rig.config)
    assert actions == {name: "reused" for name in kaon_rig.names}
