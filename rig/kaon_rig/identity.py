"""Kubeconfigs of ServiceAccounts on rig clusters, with tokens from the TokenRequest API.

The operator runs on this machine (kwok nodes run no containers), but as the chart's
ServiceAccount rather than the rig's admin: the same server and CA, a token instead of the
admin's client certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kaon_rig import paths
from kaon_rig.kube import api_client
from kaon_rig.rig import inline_kubeconfig

DEFAULT_NAMESPACE = "kaon-system"
DEFAULT_SERVICE_ACCOUNT = "kaon"  # the chart's full name for a release named kaon
DEFAULT_DURATION_S = 24 * 3600


def request_token(
    kubeconfig: Path, namespace: str, service_account: str, duration_s: int = DEFAULT_DURATION_S
) -> str:
    """A bound token of the ServiceAccount (TokenRequest), valid for duration_s."""
    body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=duration_s)
    )
    with api_client(kubeconfig) as api:
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(
            service_account, namespace, body
        )
    if answer.status is None or not answer.status.token:
        raise RuntimeError(f"TokenRequest for {namespace}/{service_account}: no token returned")
    return str(answer.status.token)


def token_kubeconfig(admin: dict[str, Any], user: str, token: str) -> dict[str, Any]:
    """The admin kubeconfig's current cluster (server, CA) with a token user instead."""
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster_name = current["context"]["cluster"]
    cluster = next(c for c in admin["clusters"] if c["name"] == cluster_name)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": user,
    }


def kubeconfig_path(cluster: str, namespace: str, service_account: str) -> Path:
    return paths.rig_dir() / "identities" / f"{cluster}-{namespace}-{service_account}.yaml"


def write_kubeconfig(
    cluster: str = "hub",
    namespace: str = DEFAULT_NAMESPACE,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    duration_s: int = DEFAULT_DURATION_S,
) -> Path:
    """Write a kubeconfig of the ServiceAccount on a rig cluster (mode 0600); its path."""
    admin_path = paths.kubeconfig_path(cluster)
    token = request_token(admin_path, namespace, service_account, duration_s)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = token_kubeconfig(inline_kubeconfig(admin_path), user, token)
    path = kubeconfig_path(cluster, namespace, service_account)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # a token: private before it is written
    path.write_text(yaml.safe_dump(config))
    return path
