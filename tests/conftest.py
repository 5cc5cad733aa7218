"""Session-wide fixtures: the local rig (brought up once, or reused) and a namespace per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon.api.common import GROUP, VERSION
from kaon_rig import identity, rig
from kaon_rig.config import load_config

from kaonrig import (
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    Jobs,
    OperatorProcess,
    Rig,
    free_port,
    http_status,
    install_chart,
    register_cluster,
    wait_for,
    wait_members_ready,
)

MARKERS_BY_DIR = {"integration": "integration", "e2e": "e2e", "bench": "bench", "chaos": "chaos"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for part in Path(str(item.fspath)).parts:
            if part in MARKERS_BY_DIR:
                item.add_marker(getattr(pytest.mark, MARKERS_BY_DIR[part]))
    # The chaos suite last: it kills the session's operator and stops the hub.
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


@pytest.fixture(scope="session")
def kaon_rig() -> Iterator[Rig]:
    """Bring the rig up once per run, or reuse a running one (left running afterwards).

    A rig this fixture started is removed at the end unless KAON_KEEP_RIG=1.
    """
    config = load_config()
    already_running = all(s.state == "running" for s in rig.status(config))
    rig.up(config)
    handle = Rig(config)
    yield handle
    for api in handle.clients.values():
        api.close()
    if not already_running and os.environ.get("KAON_KEEP_RIG") != "1":
        rig.down()


@pytest.fixture
def namespace(kaon_rig: Rig, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace of the same name in every cluster of the rig, deleted afterwards."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    body = {"metadata": {"name": name, "labels": {"kaon.dev/test": "true"}}}
    for cluster in kaon_rig.names:
        kaon_rig.core(cluster).create_namespace(body)
    yield name
    for cluster in kaon_rig.names:
        core = kaon_rig.core(cluster)
        core.delete_namespace(name)
        for pv in core.list_persistent_volume(label_selector="kaon.dev/test=true").items:
            if pv.spec.claim_ref and pv.spec.claim_ref.namespace == name:
                core.delete_persistent_volume(pv.metadata.name)
    # The hub's workloads first: until the operator has released them it may still launch
    # pods (and make the namespace again) in a member. Then the members' pods, so the next test
    # finds the pools' capacity free again.
    _wait_workloads_released(kaon_rig, name)
    for cluster in kaon_rig.names:
        _wait_pods_gone(kaon_rig.core(cluster), name)


def _wait_workloads_released(kaon_rig: Rig, ns: str, timeout_s: float = 30.0) -> None:
    """Bounded and forgiving: a test that stopped the operator leaves them to the next one."""
    custom = client.CustomObjectsApi(kaon_rig.api("hub"))

    def left() -> int:
        return sum(
            len(custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"])
            for plural in ("trainingjobs", "inferenceservices")
        )

    with contextlib.suppress(AssertionError):
        wait_for(left, lambda n: n == 0, f"workloads of {ns} released", timeout_s)


def _wait_pods_gone(core: client.CoreV1Api, ns: str) -> None:
    try:
        wait_for(lambda: core.list_namespaced_pod(ns).items, lambda p: not p, "", 15)
    except AssertionError:
        # kwok misses pods that were Terminating when its controller restarted: finish them.
        for pod in core.list_namespaced_pod(ns).items:
            core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
        wait_for(
            lambda: core.list_namespaced_pod(ns).items,
            lambda pods: not pods,
            f"pods of namespace {ns} deleted",
            timeout_s=60,
        )


def _create_or_replace_crd(ext: client.ApiextensionsV1Api, body: dict[str, Any]) -> None:
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)


@pytest.fixture(scope="session")
def kaon_crds(kaon_rig: Rig) -> None:
    """The generated CRDs from crds/, and kopf's peering CRD, applied to the hub as a user would."""
    ext = client.ApiextensionsV1Api(kaon_rig.api("hub"))
    kopf_crds = sorted((CHART / "crds" / "kopf").glob("*.yaml"))
    for path in [*sorted((REPO / "crds").glob("*.yaml")), *kopf_crds]:
        body = yaml.safe_load(path.read_text())
        _create_or_replace_crd(ext, body)
        wait_for(
            lambda n=body["metadata"]["name"]: ext.read_custom_resource_definition(n),
            lambda crd: any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            ),
            f"{path.name} established",
        )


@pytest.fixture(scope="session")
def operator_kubeconfig(kaon_rig: Rig, kaon_crds: None) -> Path:
    """The chart installed on the hub, and a kubeconfig of its ServiceAccount (a token from the
    TokenRequest API): the operator's least-privilege identity."""
    install_chart(kaon_rig)
    return identity.write_kubeconfig("hub", RELEASE_NAMESPACE, RELEASE)


@pytest.fixture(scope="session")
def kaon_router(
    kaon_rig: Rig, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`kaon router` on a free local port as the chart's router ServiceAccount; its URL."""
    kubeconfig = identity.write_kubeconfig("hub", RELEASE_NAMESPACE, f"{RELEASE}-router")
    port = free_port()
    router = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("router") / "log",
        ("--host", "127.0.0.1", "--port", str(port), "--hold-timeout-seconds", "120"),
        command="router",
    )
    router.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_status(f"{url}/healthz"), lambda s: s == 200, "the router listed", 30)
    yield url
    router.stop()
    denials = router.rbac_denials()
    assert not denials, f"the chart's RBAC refused the router: {denials[:5]}"


@pytest.fixture(scope="session")
def kaon_operator(
    kaon_rig: Rig,
    operator_kubeconfig: Path,
    kaon_router: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """`kaon run` against the hub as the chart's ServiceAccount (not the rig's admin), with the
    rig's kwok members east and west registered, and services' addresses through the router.

    The process-agent pool (examples/clusters/local.yaml) is registered by the e2e tests only.
    """
    for name in ("east", "west"):
        register_cluster(kaon_rig, REPO / "examples" / "clusters" / f"{name}.yaml")
    op = OperatorProcess(
        operator_kubeconfig,
        tmp_path_factory.mktemp("operator") / "log",
        env={"KAON_ROUTER_URL": kaon_router},
    )
    op.start()
    wait_members_ready(kaon_rig)
    yield op
    op.stop()
    denials = op.rbac_denials()
    assert not denials, f"the chart's RBAC refused the operator: {denials[:5]}"


@pytest.fixture
def jobs(kaon_rig: Rig) -> Jobs:
    return Jobs(kaon_rig.api("hub"))
