"""A long-running operator outlives its token: after a 401 its client reads `tokenFile` again.

In a pod the kubelet rotates the projected ServiceAccount token behind the operator's back. Here
a token bound to a Secret stands in for it: deleting the Secret revokes the token for real.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon.clusters.client import ApiError, KubeClient
from kaon_rig import paths
from kaon_rig.identity import token_kubeconfig
from kaon_rig.rig import inline_kubeconfig

from kaonrig import RELEASE, RELEASE_NAMESPACE, Rig, wait_for

pytestmark = pytest.mark.usefixtures("operator_kubeconfig")
JOBS = "/apis/kaon.dev/v1alpha1/trainingjobs"


def bound_token(core: client.CoreV1Api, secret: str) -> str:
    """A token of the chart's ServiceAccount that is valid while the Secret exists."""
    made = core.create_namespaced_secret(RELEASE_NAMESPACE, {"metadata": {"name": secret}})
    ref = {"kind": "Secret", "apiVersion": "v1", "name": secret, "uid": made.metadata.uid}
    body = {"spec": {"expirationSeconds": 3600, "boundObjectRef": ref}}
    answer = core.create_namespaced_service_account_token(RELEASE, RELEASE_NAMESPACE, body)
    return str(answer.status.token)


def status_with(kubeconfig: dict[str, object]) -> int:
    async def ask() -> int:
        c = KubeClient(kubeconfig)
        try:
            await c.get(JOBS)
            return 200
        except ApiError as exc:
            return exc.status
        finally:
            await c.close()

    return asyncio.run(ask())


def test_a_revoked_token_is_replaced_by_the_one_now_in_the_token_file(
    kaon_rig: Rig, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kaon_rig.api("hub"))
    old_secret, new_secret = (f"token-{uuid.uuid4().hex[:6]}" for _ in range(2))
    admin = inline_kubeconfig(paths.kubeconfig_path("hub"))
    token_file = tmp_path / "token"
    token_file.write_text(bound_token(core, old_secret))
    rotating = token_kubeconfig(admin, "operator", "")
    rotating["users"][0]["user"] = {"tokenFile": str(token_file)}
    pinned = token_kubeconfig(admin, "operator", token_file.read_text())
    # (A hub that has just started may still answer 429 while it initialises the CRDs' storage.)
    wait_for(lambda: status_with(pinned), lambda s: s == 200, "the first token accepted")

    async def scenario() -> None:
        operator = KubeClient(rotating)
        try:
            await operator.get(JOBS)  # with the first token, from the file
            token_file.write_text(bound_token(core, new_secret))
            core.delete_namespaced_secret(old_secret, RELEASE_NAMESPACE)
            await asyncio.to_thread(
                wait_for, lambda: status_with(pinned), lambda s: s == 401, "old token revoked"
            )
            # The same client, whose token was just revoked: a 401 unless it reads the file again.
            assert (await operator.get(JOBS))["kind"] == "TrainingJobList"
        finally:
            await operator.close()

    try:
        asyncio.run(scenario())
    finally:
        for secret in (old_secret, new_secret):
            try:
                core.delete_namespaced_secret(secret, RELEASE_NAMESPACE)
            except ApiException as exc:
                if exc.status != 404:
                    raise
