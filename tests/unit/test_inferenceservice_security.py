"""The InferenceService controller with spec.tls and spec.auth, on in-memory API servers: the
member's copies of the certificate and the tokens kept equal to the hub's, the server's
environment, volumes and HTTPS probes, the token reviewer binding, and what a missing Secret
does."""

from __future__ import annotations

import base64

from kaon.clusters import paths
from kaon.clusters.client import Obj

from enginekit import NS, World, deployment_path, inferenceservice, isvc_path, on_loop

PEM = {"tls.crt": "-----BEGIN CERTIFICATE-----", "tls.key": "-----BEGIN PRIVATE KEY-----"}
SECURED: Obj = {"tls": {"secretName": "cert"}, "auth": {"tokensSecretName": "tokens"}}
REVIEWER = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kaon-token-review-team"


def hub_secret(world: World, name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}}
    world.hub.put(secret | {"data": encoded})


def member_secret(world: World, name: str) -> dict[str, str] | None:
    found = world.members["west"].peek(paths.secret(NS, name))
    if found is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in found["data"].items()}


def server(world: World) -> tuple[Obj, Obj]:
    """(pod spec, container) of the stable Deployment in west."""
    dep = world.members["west"].peek(deployment_path("svc", "stable"))
    assert dep is not None, "no Deployment"
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def ready_condition(world: World) -> Obj:
    status = world.service_status("svc")
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@on_loop
async def test_a_secured_service_serves_https_with_the_hubs_certificate_and_tokens(
    world: World,
) -> None:
    hub_secret(world, "cert", PEM | {"ca.crt": "the CA"})
    hub_secret(world, "tokens", {"team-a": "token-a", "team-b": "token-b"})
    world.apply(inferenceservice("svc", SECURED))
    await world.reconcile_service("svc")

    assert member_secret(world, "svc-serving-tls") == PEM | {"ca.crt": "the CA"}
    tls_copy = world.members["west"].peek(paths.secret(NS, "svc-serving-tls"))
    assert tls_copy is not None and tls_copy["type"] == "kubernetes.io/tls"
    assert member_secret(world, "svc-auth-tokens") == {"team-a": "token-a", "team-b": "token-b"}
    pod, container = server(world)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KAON_TLS_CERT_FILE"] == "/etc/kaon/tls/tls.crt"
    assert env["KAON_TLS_KEY_FILE"] == "/etc/kaon/tls/tls.key"
    assert env["KAON_AUTH_TOKENS_DIR"] == "/etc/kaon/auth-tokens"
    assert env["KAON_AUTH_AUDIENCE"] == f"svc.{NS}"  # the default audience: NAME.NAMESPACE
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    assert volumes["tls"] == "svc-serving-tls" and volumes["auth-tokens"] == "svc-auth-tokens"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"]["readOnly"] and mounts["auth-tokens"]["readOnly"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    binding = world.members["west"].peek(REVIEWER)
    assert binding is not None
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kaon-worker", "namespace": NS}
    ]
    assert world.service_status("svc")["url"].startswith("https://")
    # Tokens stay in Secrets: never in the status or an Event.
    said = str(world.service_status("svc")) + str(world.events("svc"))
    assert "token-a" not in said and "BEGIN" not in said


@on_loop
async def test_a_renewed_certificate_and_a_revoked_token_reach_the_member(world: World) -> None:
    hub_secret(world, "cert", PEM)
    hub_secret(world, "tokens", {"team-a": "token-a", "team-b": "token-b"})
    world.apply(inferenceservice("svc", SECURED))
    await world.reconcile_service("svc")
    writes = len(world.members["west"].writes)
    await world.reconcile_service("svc")
    assert len(world.members["west"].writes) == writes  # unchanged: nothing written

    hub_secret(world, "cert", PEM | {"tls.crt": "-----BEGIN CERTIFICATE----- renewed"})
    hub_secret(world, "tokens", {"team-a": "token-a"})
    await world.reconcile_service("svc")
    assert member_secret(world, "svc-serving-tls") == PEM | {
        "tls.crt": "-----BEGIN CERTIFICATE----- renewed"
    }
    assert member_secret(world, "svc-auth-tokens") == {"team-a": "token-a"}  # team-b's gone


@on_loop
async def test_a_missing_certificate_holds_the_replicas_back_and_names_the_field(
    world: World,
) -> None:
    world.apply(inferenceservice("svc", {"tls": {"secretName": "cert"}}))
    await world.reconcile_service("svc")
    said = "cluster west: Secret team/cert (spec.tls.secretName) does not exist"
    assert ready_condition(world)["reason"] == "SecretInvalid"
    assert ready_condition(world)["message"] == said
    assert [e["message"] for e in world.events("svc", "SecretInvalid")] == [said]
    assert world.members["west"].peek(deployment_path("svc", "stable")) is None

    hub_secret(world, "cert", {"tls.crt": "only the certificate"})
    await world.reconcile_service("svc")
    assert ready_condition(world)["message"] == (
        "cluster west: Secret team/cert (spec.tls.secretName) has no tls.key"
    )
    hub_secret(world, "cert", PEM)
    await world.reconcile_service("svc")
    assert ready_condition(world)["reason"] == "ReplicasNotReady"
    assert server(world)[1]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


@on_loop
async def test_service_account_tokens_alone_need_no_tokens_secret_and_tls_off_removes_the_copy(
    world: World,
) -> None:
    hub_secret(world, "cert", PEM)
    spec = {"tls": {"secretName": "cert"}, "auth": {"audience": "digits-api"}}
    world.apply(inferenceservice("svc", spec))
    await world.reconcile_service("svc")
    env = {e["name"]: e.get("value") for e in server(world)[1]["env"]}
    assert env["KAON_AUTH_AUDIENCE"] == "digits-api" and "KAON_AUTH_TOKENS_DIR" not in env
    assert world.members["west"].peek(REVIEWER) is not None
    assert member_secret(world, "svc-serving-tls") is not None

    world.edit(isvc_path("svc"), {"spec": {"tls": None, "auth": None}})
    await world.reconcile_service("svc")
    assert member_secret(world, "svc-serving-tls") is None
    container = server(world)[1]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not {"KAON_TLS_CERT_FILE", "KAON_AUTH_AUDIENCE"} & {e["name"] for e in container["env"]}
    assert world.service_status("svc")["url"].startswith("http://")
