"""A service with spec.tls and spec.auth on the process-agent pool: its replica serves HTTPS with
the hub Secret's certificate, and every request but the health checks needs a bearer token — a
token of the Secret named in spec.auth, or a ServiceAccount token of the member issued for the
service's audience (checked with the member API server's TokenReview). tritonclient (HTTPS,
verified) and KServe's client drive it, directly and through the router."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gevent.ssl as gevent_ssl
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from kubernetes import client
from test_router import IMAGES, artifacts, service, store_secret  # noqa: F401 (a fixture)

from kaon.builders.server import GRPC_PORT

from kaonrig import Jobs, Rig, condition, kserve_client, state
from tlskit import Issued, issue

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STATIC_TOKEN = "kaon-e2e-static-token-7c1f0e"
TIMEOUT_S = 240.0


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def status_of(url: str, token: str | None, context: ssl.SSLContext | None = None) -> int:
    """The status of a V2 JSON infer of IMAGES[:1] at `url` (the model `secure`)."""
    doc = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}
    doc["inputs"][0]["data"] = IMAGES[:1].reshape(-1).tolist()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"{url}/v2/models/secure/infer", json.dumps(doc).encode(), headers
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=60) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def member_token(kaon_rig: Rig, namespace: str, audience: str) -> str:
    """A token of ServiceAccount `client` of west (made if missing), issued for `audience`."""
    core = kaon_rig.core("west")
    meta = client.V1ObjectMeta(name="client")
    try:
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=meta))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    spec = client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
    answer = core.create_namespaced_service_account_token(
        "client", namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    token: str = answer.status.token
    return token


def create_secured(
    kaon_rig: Rig,
    namespace: str,
    artifacts: dict[str, Any],  # noqa: F811
    issued: Issued,
) -> dict[str, Any]:
    """The certificate and tokens Secrets on the hub, then the service, once it has a ready
    replica."""
    store_secret(kaon_rig, namespace, artifacts["secret"])
    hub = kaon_rig.core("hub")
    tls_data = {
        "tls.crt": b64(issued.cert.read_bytes()),
        "tls.key": b64(issued.key.read_bytes()),
        "ca.crt": b64(issued.ca.read_bytes()),
    }
    meta = client.V1ObjectMeta(name="secure-tls")
    secret = client.V1Secret(metadata=meta, type="kubernetes.io/tls", data=tls_data)
    hub.create_namespaced_secret(namespace, secret)
    meta = client.V1ObjectMeta(name="api-tokens")
    secret = client.V1Secret(metadata=meta, data={"team-a": b64(STATIC_TOKEN)})
    hub.create_namespaced_secret(namespace, secret)
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    secured = {"tls": {"secretName": "secure-tls"}, "auth": {"tokensSecretName": "api-tokens"}}
    services.create(namespace, "secure", service(artifacts["stable"][0], **secured))
    return services.wait(
        namespace,
        "secure",
        lambda s: state(s) == "Ready" and s["status"].get("readyReplicas") == 1,
        "one ready replica",
        TIMEOUT_S,
    )


def check_the_replicas_certificate(address: str, issued: Issued, dns: str) -> None:
    """HTTPS with the hub's certificate (verified against its CA, for the service's name),
    and no plain HTTP on the port."""
    host, port = address.rsplit(":", 1)
    verified = ssl.create_default_context(cafile=str(issued.ca))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        verified.wrap_socket(raw, server_hostname=dns) as tls,
    ):
        peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    assert ssl.DER_cert_to_PEM_cert(peer).strip() == issued.cert.read_text().strip()
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # a TLS port closes on it
        DIRECT.open(f"http://{address}/v2/health/live", timeout=10).read()


def check_tritonclient(address: str, issued: Issued, token: str, labels: list[Any]) -> None:
    """tritonclient over HTTPS (the CA's), with a token, and refused without one."""
    bearer = {"Authorization": f"Bearer {token}"}

    def chain_only(**_: Any) -> gevent_ssl.SSLContext:
        # A pod IP: the chain is verified, the name is the service's (every geventhttpclient
        # version: older ones pass the IP as server_hostname whatever `insecure` says).
        context = gevent_ssl.create_default_context(cafile=str(issued.ca))
        context.check_hostname = False
        return context

    triton_client = triton.InferenceServerClient(
        url=address, ssl=True, insecure=True, ssl_context_factory=chain_only
    )
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("secure", headers=bearer)
    tensor = triton.InferInput("input", list(IMAGES.shape), "FP32")
    tensor.set_data_from_numpy(IMAGES)
    found = triton_client.infer("secure", [tensor], headers=bearer).as_numpy("label")
    assert found is not None and found.tolist() == labels
    with pytest.raises(triton.InferenceServerException) as refused:
        triton_client.infer("secure", [tensor])
    assert refused.value.status() == "401"


def check_tritonclient_grpc(
    address: str, issued: Issued, dns: str, token: str, labels: list[Any]
) -> None:
    """tritonclient over gRPC-TLS on the replica's second port (verified for the service's
    name), with a token in the metadata, and refused without one."""
    host = address.rsplit(":", 1)[0]
    client = triton_grpc.InferenceServerClient(
        url=f"{host}:{GRPC_PORT}",
        ssl=True,
        root_certificates=str(issued.ca),
        channel_args=[("grpc.ssl_target_name_override", dns)],
    )
    bearer = {"authorization": f"Bearer {token}"}
    assert client.is_server_live() and client.is_model_ready("secure", headers=bearer)
    tensor = triton_grpc.InferInput("input", list(IMAGES.shape), "FP32")
    tensor.set_data_from_numpy(IMAGES)
    found = client.infer("secure", [tensor], headers=bearer).as_numpy("label")
    assert found is not None and found.tolist() == labels
    with pytest.raises(triton_grpc.InferenceServerException) as refused:
        client.infer("secure", [tensor])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"


def test_a_secured_service_answers_https_with_a_valid_token_only(
    kaon_rig: Rig,
    kaon_router: str,
    namespace: str,
    local_pool: str,
    artifacts: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    dns = f"secure.{namespace}.svc"
    issued = issue(tmp_path / "tls", [dns, f"{dns}.cluster.local"])
    svc = create_secured(kaon_rig, namespace, artifacts, issued)
    labels = artifacts["stable"][1]
    (endpoint,) = svc["status"]["clusters"][0]["endpoints"]
    check_the_replicas_certificate(endpoint["address"], issued, dns)

    # Tokens: none 401, the Secret's 200, a member ServiceAccount's for the service's audience
    # (NAME.NAMESPACE by default) 200, for another audience 403; health needs none.
    direct = f"https://{endpoint['address']}"
    pinned = ssl.create_default_context(cafile=str(issued.ca))
    pinned.check_hostname = False  # a pod IP: the chain is verified, the name is the service's
    audience_token = member_token(kaon_rig, namespace, f"secure.{namespace}")
    other_token = member_token(kaon_rig, namespace, "another-service")
    assert status_of(direct, None, pinned) == 401
    assert status_of(direct, "not-a-token", pinned) == 401
    assert status_of(direct, STATIC_TOKEN, pinned) == 200
    assert status_of(direct, audience_token, pinned) == 200
    assert status_of(direct, other_token, pinned) == 403
    ready = urllib.request.build_opener(urllib.request.HTTPSHandler(context=pinned))
    with ready.open(f"{direct}/v2/health/ready", timeout=10) as answer:
        assert answer.status == 200
    check_tritonclient(endpoint["address"], issued, audience_token, labels)
    check_tritonclient_grpc(endpoint["address"], issued, dns, audience_token, labels)

    # Through the router (which dials the replica over TLS): the same answers, the same checks.
    url = svc["status"]["url"]
    assert url == f"{kaon_router}/serving/{namespace}/secure"
    assert status_of(url, None) == 401 and status_of(url, other_token) == 403
    kserve = kserve_client(url, "secure", IMAGES[:8], tmp_path, token=STATIC_TOKEN)
    assert kserve["ready"] == [True, True, True]
    assert kserve["json"]["outputs"]["label"] == labels[:8]
    assert kserve["binary"]["outputs"]["label"] == labels[:8]

    # No token anywhere in what the service says.
    svc = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices").get(
        namespace, "secure"
    )
    events = kaon_rig.core("hub").list_namespaced_event(namespace).items
    said = json.dumps(svc) + " ".join(str(e.message) for e in events)
    for token in (STATIC_TOKEN, audience_token, other_token):
        assert token not in said
    assert condition(svc, "Ready")["status"] == "True"
