"""Small helpers over the kubernetes client for the rig (not the operator's cluster layer).

Objects are handled as plain JSON dicts: the rig only needs a few fields of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]


def api_client(kubeconfig: Path) -> client.ApiClient:
    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return cast(client.ApiClient, api)


def is_reachable(kubeconfig: Path, timeout: float = 3.0) -> bool:
    if not kubeconfig.exists():
        return False
    try:
        with api_client(kubeconfig) as api:
            client.VersionApi(api).get_code(_request_timeout=timeout)
        return True
    except Exception:  # any failure to talk to it counts as unreachable
        return False


def is_ready(kubeconfig: Path, timeout: float = 3.0) -> bool:
    """/readyz passes: the API server answers and has synced what it authorizes with (a
    restarted one answers /version before its RBAC is loaded, refusing every request)."""
    if not kubeconfig.exists():
        return False
    try:
        with api_client(kubeconfig) as api:
            conf = api.configuration
            auth = [a for a in conf.auth_settings().values() if a.get("in") == "header"]
            headers = {a["key"]: a["value"] for a in auth}
            answer = api.call_api(
                "GET", f"{conf.host}/readyz", header_params=headers, _request_timeout=timeout
            )
        return bool(answer.status == 200)
    except Exception:  # not ready, or not answering at all
        return False


def list_nodes(api: client.ApiClient, label_selector: str = "") -> list[Obj]:
    resp: Any = client.CoreV1Api(api).list_node(
        label_selector=label_selector, _preload_content=False
    )
    return cast(list[Obj], json.loads(resp.data)["items"])


def create_node(api: client.ApiClient, manifest: Obj) -> None:
    """Create a node with its status (the API server keeps a new Node's status); ok if present."""
    try:
        client.CoreV1Api(api).create_node(cast(client.V1Node, manifest))
    except ApiException as exc:
        if exc.status != 409:
            raise


def node_is_ready(node: Obj) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def reclaim_kwok_leases(api: client.ApiClient) -> int:
    """Let a restarted kwok manage its nodes again; returns how many nodes were handed over.

    kwok holds a Lease per node under an id that is new on every start. A restarted kwok finds
    the old leases, fails to create its own, and does not try again until the node changes:
    its pods would stay Pending. Deleting the stale leases and touching the nodes hands them
    over at once.
    """
    core, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
    nodes = [n for n in list_nodes(api) if _annotations(n).get(KWOK_NODE_ANNOTATION) == "fake"]
    for node in nodes:
        name = node["metadata"]["name"]
        try:
            coordination.delete_namespaced_lease(name, "kube-node-lease")
        except ApiException as exc:
            if exc.status != 404:
                raise
        touch = {"metadata": {"annotations": {"kaon.dev/kwok-restarted": str(time.time())}}}
        core.patch_node(name, touch)
    return len(nodes)


def _annotations(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}
