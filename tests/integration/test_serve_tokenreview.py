"""The server's ServiceAccount tokens, judged by a real member API server's TokenReview.

As in a pod: the reviewer is a ServiceAccount whose token and the cluster's CA sit in a
directory (`KAON_SERVICEACCOUNT_DIR`), and `KUBERNETES_SERVICE_HOST`/`_PORT` name the API
server (here the member's from its kubeconfig). Without the ClusterRole `system:auth-delegator`
its reviews are refused (503); with it, a client's token is allowed for the audience it was
issued for, refused (403) for another and 401 once its ServiceAccount is gone.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon_kernels.serve.app import App
from kaon_kernels.serve.auth import Authenticator, Verdict
from kaon_kernels.serve.http11 import Request
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.tokenreview import TokenReviewer
from kaon_rig.rig import inline_kubeconfig

from kaonrig import Rig

CLUSTER = "east"
AUD = "digits.kaon-test"


@pytest.fixture
def member_namespace(kaon_rig: Rig) -> Iterator[str]:
    """A namespace of the member alone (the test needs neither the hub nor kaon's CRDs)."""
    core = kaon_rig.core(CLUSTER)
    name = f"serve-tokenreview-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kaon.dev/test": "true"}}})
    yield name
    core.delete_namespace(name)


def token_of(core: client.CoreV1Api, ns: str, account: str, audiences: list[str]) -> str:
    body: dict[str, Any] = {"spec": {"audiences": audiences, "expirationSeconds": 3600}}
    answer = core.create_namespaced_service_account_token(account, ns, body)
    return str(answer.status.token)


def pod_credentials(kaon_rig: Rig, token: str, sa_dir: Path) -> dict[str, str]:
    """The reviewer's token and the CA where a pod has them; the environment that finds them."""
    admin = inline_kubeconfig(kaon_rig.kubeconfig(CLUSTER))
    cluster = admin["clusters"][0]["cluster"]
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    server = urlparse(cluster["server"])
    assert server.hostname and server.port
    return {
        "KUBERNETES_SERVICE_HOST": server.hostname,
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "KAON_SERVICEACCOUNT_DIR": str(sa_dir),
    }


async def verdict_of(auth: Authenticator, token: str | None) -> Verdict:
    verdict = auth.check(None if token is None else f"Bearer {token}")
    return verdict if isinstance(verdict, Verdict) else await verdict


async def until(auth: Authenticator, token: str, status: int, timeout_s: float = 30.0) -> None:
    """Ask again (past the remembered verdict) until the verdict is `status`."""
    deadline = time.monotonic() + timeout_s
    while (verdict := await verdict_of(auth, token)).status != status:
        assert time.monotonic() < deadline, f"still {verdict} after {timeout_s} s"
        await asyncio.sleep(auth.allow_ttl_s + 0.1)


def test_service_account_tokens_are_judged_by_the_member_api_servers_token_review(
    kaon_rig: Rig, member_namespace: str, tmp_path: Path
) -> None:
    namespace = member_namespace
    core = kaon_rig.core(CLUSTER)
    rbac = client.RbacAuthorizationV1Api(kaon_rig.api(CLUSTER))
    for account in ("reviewer", "client"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    env = pod_credentials(kaon_rig, token_of(core, namespace, "reviewer", []), tmp_path / "sa")
    allowed = token_of(core, namespace, "client", [AUD])
    foreign = token_of(core, namespace, "client", ["someone-else"])
    head, payload, signature = allowed.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    said: list[str] = []
    auth = Authenticator(
        None, TokenReviewer.from_env(env), AUD, said.append, allow_ttl_s=1.0, deny_ttl_s=1.0
    )
    binding = f"{namespace}-token-reviewer"

    async def scenario() -> None:
        assert (await verdict_of(auth, allowed)).status == 503  # not yet a reviewer
        assert "system:auth-delegator" in said[0] and "403" in said[0]
        await asyncio.to_thread(
            rbac.create_cluster_role_binding,
            {
                "metadata": {"name": binding, "labels": {"kaon.dev/test": "true"}},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:auth-delegator",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "reviewer", "namespace": namespace}
                ],
            },
        )
        await until(auth, allowed, 200)
        assert (await verdict_of(auth, foreign)).status == 403
        assert (await verdict_of(auth, forged)).status == 401
        assert (await verdict_of(auth, "garbage")).status == 401
        assert (await verdict_of(auth, None)).status == 401

        app = App("digits", ServeMetrics("digits"), auth=auth)
        answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        headers = {"authorization": f"Bearer {allowed}"}
        app.handle(
            Request("GET", "/v2", headers, b"", True),
            lambda status, *_: answered.set_result(status),
        )
        assert await answered == 200

        await asyncio.to_thread(core.delete_namespaced_service_account, "client", namespace)
        await until(auth, allowed, 401)  # the API server may remember it a few seconds
        await auth.close()

    try:
        asyncio.run(scenario())
    finally:
        try:
            rbac.delete_cluster_role_binding(binding)
        except ApiException as exc:
            if exc.status != 404:
                raise
    assert said[1:] == ["auth: the API server reviews tokens again"]
    assert not any(t in line for line in said for t in (allowed, foreign, forged))
