"""Small helpers over the kubernetes client for the rig (not the operator's cluster layer).

Objects are handled as plain JSON dicts: the rig only needs a few fields of them.
"""

from __future__ import annotations

import json
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
