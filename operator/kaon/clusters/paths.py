"""REST paths of the objects kaon reads and writes."""

from __future__ import annotations


def pods(namespace: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def pod(namespace: str, name: str) -> str:
    return f"{pods(namespace)}/{name}"


def services(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services"


def collection(api_version: str, plural: str, namespace: str) -> str:
    """Any namespaced collection: `v1` for the core group, `group/version` otherwise."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}"


def namespaces() -> str:
    return "/api/v1/namespaces"


def nodes() -> str:
    return "/api/v1/nodes"


def secrets(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets"


def secret(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def events(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def custom(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    base = f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


def lease(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base
