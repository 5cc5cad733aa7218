"""The Helm chart against the rig's real API servers: lint, schema, server-side dry runs, and its
RBAC proven with real identities (impersonation and ServiceAccount tokens), not assumed."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kaon_rig import identity, paths
from kaon_rig.rig import inline_kubeconfig

from kaonrig import (
    CHART,
    GROUP,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    VERSION,
    Jobs,
    OperatorProcess,
    Rig,
    bound_claim,
    helm,
    install_chart,
    run_kubectl,
    state,
    wait_for,
)

SA_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
RBAC_KINDS = {"Role", "ClusterRole"}
PEERING = ("peering.enabled=true", "leaderElection.enabled=false")
STANDALONE = ("leaderElection.enabled=false",)  # and peering off, its default


def template(kaon_rig: Rig, *sets: str, namespace: str = RELEASE_NAMESPACE) -> str:
    values = [arg for s in sets for arg in ("--set", s)]
    return helm(kaon_rig, "template", RELEASE, str(CHART), "--namespace", namespace, *values)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    )


def can_i(kaon_rig: Rig, user: str, *args: str) -> bool:
    done = run_kubectl(kaon_rig, "auth", "can-i", "--as", user, *args)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


# Rendered variants: every RBAC object the chart can produce is in one of them.
VARIANTS = {
    "hub": (),
    "hub-is-member": ("rbac.hubIsMember=true", "rbac.userRole.aggregateToEdit=true"),
    "hub-named-secrets": ("rbac.memberSecretNames={rig-east-kubeconfig,rig-west-kubeconfig}",),
    "standalone": STANDALONE,
    "peering": PEERING,
    "member": ("role=member",),
}


def test_helm_lint_is_clean(kaon_rig: Rig) -> None:
    out = helm(kaon_rig, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_chart_passes_a_server_side_dry_run(
    kaon_rig: Rig, operator_kubeconfig: Path, variant: str
) -> None:
    rendered = template(kaon_rig, *VARIANTS[variant])
    done = run_kubectl(kaon_rig, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert done.returncode == 0, done.stderr
    kinds = {d["kind"] for d in documents(rendered)}
    assert len(done.stdout.strip().splitlines()) == len(documents(rendered))
    if variant == "member":  # the Role: the hub's heartbeat Lease in kube-node-lease
        assert kinds == {
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        }
    else:
        assert {"Deployment", "Service", "Role", "RoleBinding"} <= kinds


def test_images_and_settings_are_wired_into_the_deployment(kaon_rig: Rig) -> None:
    docs = documents(
        template(
            kaon_rig,
            "operator.image.tag=1.2.3",
            "runtime.image.repository=registry.example/ml/runtime",
            "runtime.image.tag=1.2.3-cuda",
            "runtime.image.pullPolicy=Always",
            namespace="kaon-ops",
        )
    )
    deployment = operator_deployment(docs)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "ghcr.io/kaon-dev/kaon-operator:1.2.3"
    assert env["KAON_RUNTIME_IMAGE"] == "registry.example/ml/runtime:1.2.3-cuda"
    assert env["KAON_IMAGE_PULL_POLICY"] == "Always"
    assert env["KAON_NAMESPACE"] == "kaon-ops"
    # Leader election, kaon run's default: no flag.
    assert container["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_metrics_service_and_an_optional_service_monitor(kaon_rig: Rig) -> None:
    default = documents(template(kaon_rig))
    assert "ServiceMonitor" not in {d["kind"] for d in default}
    docs = documents(template(kaon_rig, "metrics.serviceMonitor.enabled=true", "metrics.port=9100"))
    service = next(d for d in docs if d["metadata"]["name"] == f"{RELEASE}-metrics")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    deployment = operator_deployment(docs)
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "KAON_METRICS_PORT", "value": "9100"} in container["env"]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]


def test_the_grafana_dashboard_ships_as_a_configmap_behind_a_value(kaon_rig: Rig) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents(template(kaon_rig))}
    assert ("ConfigMap", "kaon-dashboard") not in kinds
    docs = documents(template(kaon_rig, "metrics.dashboard.enabled=true"))
    (board,) = [d for d in docs if d["metadata"]["name"] == "kaon-dashboard"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(board["data"]["kaon.json"])
    assert shipped == json.loads((CHART / "dashboards" / "kaon.json").read_text())


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("role=spoke", "/role"),
        ("operator.image.tag=latest", "/operator/image/tag"),
        ("operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy"),
        ("metrics.port=http", "/metrics/port"),
        ("metrics.port=80", "/metrics/port"),
        ("operator.replicas=-1", "/operator/replicas"),
        ("peering.name=Kaon_Peers", "/peering/name"),
        ("leaderElection.enabled=yes", "/leaderElection/enabled"),
        ("leaderElection.lease=other", "/leaderElection"),
        ("rbac.memberSecretNames[0]=*", "/rbac/memberSecretNames/0"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_bad_values_are_refused_by_the_schema(kaon_rig: Rig, setting: str, complaint: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        template(kaon_rig, setting)
    assert "values don't meet the specifications of the schema" in failed.value.stderr
    assert complaint in failed.value.stderr


def mechanism(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """How a rendering picks its acting operator: the flags, the rollout, the rules for it."""
    deployment = operator_deployment(docs)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    rules = [r for d in docs if d["kind"] in RBAC_KINDS for r in d["rules"]]
    return {
        "flags": [a for a in args if a.startswith(("--peering", "--standalone"))],
        "strategy": deployment["spec"]["strategy"],
        "leases": [r for r in rules if "leases" in r["resources"]],
        "peerings": [r for r in rules if "clusterkopfpeerings" in r["resources"]],
        "peering objects": [
            d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"
        ],
    }


ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["kaon-operator"],
        "verbs": ["get", "update"],
    },
]


def test_leader_election_is_the_default_mechanism(kaon_rig: Rig) -> None:
    assert mechanism(documents(template(kaon_rig))) == {
        "flags": [],
        "strategy": ROLLING,
        "leases": LEASE_RULES,
        "peerings": [],
        "peering objects": [],
    }


def test_kopf_peering_is_the_alternative(kaon_rig: Rig) -> None:
    seen = mechanism(documents(template(kaon_rig, *PEERING)))
    assert seen["flags"] == ["--peering=kaon"]
    assert seen["strategy"] == ROLLING
    assert seen["leases"] == []
    assert [r.get("resourceNames") for r in seen["peerings"]] == [None, ["kaon"]]
    assert seen["peering objects"] == ["kaon"]


def test_without_either_the_operator_runs_standalone(kaon_rig: Rig) -> None:
    assert mechanism(documents(template(kaon_rig, *STANDALONE))) == {
        "flags": ["--standalone"],
        "strategy": {"type": "Recreate"},
        "leases": [],
        "peerings": [],
        "peering objects": [],
    }


def test_leader_election_and_peering_at_once_are_refused(kaon_rig: Rig) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        template(kaon_rig, "peering.enabled=true")
    assert "values don't meet the specifications of the schema" in failed.value.stderr
    assert "/peering/enabled" in failed.value.stderr


def test_two_replicas_need_leader_election_or_peering(kaon_rig: Rig) -> None:
    template(kaon_rig, "operator.replicas=2")  # leader election: an active/standby pair
    template(kaon_rig, "operator.replicas=2", *PEERING)
    template(kaon_rig, "operator.replicas=1", *STANDALONE)
    with pytest.raises(subprocess.CalledProcessError) as failed:
        template(kaon_rig, "operator.replicas=2", *STANDALONE)
    assert "/operator/replicas" in failed.value.stderr


def test_every_template_renders_one_resource_and_no_comments(kaon_rig: Rig) -> None:
    for variant, sets in VARIANTS.items():
        rendered = template(kaon_rig, *sets)
        sources = [line for line in rendered.splitlines() if line.startswith("# Source: ")]
        assert len(sources) == len(set(sources)) == len(documents(rendered)), variant
        comments = [
            line
            for line in rendered.splitlines()
            if line.lstrip().startswith("#") and not line.startswith("# Source: ")
        ]
        assert not comments, (variant, comments)


def test_without_its_own_identity_and_rbac_the_chart_uses_the_named_account(
    kaon_rig: Rig,
) -> None:
    sets = ("serviceAccount.create=false", "rbac.create=false", "serviceAccount.name=kaon-ops")
    docs = documents(template(kaon_rig, *sets))
    assert {d["kind"] for d in docs} == {"ConfigMap", "Service", "Deployment"}
    deployment = operator_deployment(docs)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "kaon-ops"
    (router,) = [
        d
        for d in docs
        if d["metadata"]["name"] == f"{RELEASE}-router" and d["kind"] == "Deployment"
    ]
    assert router["spec"]["template"]["spec"]["serviceAccountName"] == "kaon-ops"
    (config,) = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-kubeconfig"]
    assert yaml.safe_load(config["data"]["kubeconfig"])["users"][0]["name"] == "kaon-ops"
    # Each switch alone: the ServiceAccount without RBAC, RBAC bound to an existing account.
    kinds = {d["kind"] for d in documents(template(kaon_rig, "rbac.create=false"))}
    assert "ServiceAccount" in kinds
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    docs = documents(template(kaon_rig, "serviceAccount.create=false"))
    assert "ServiceAccount" not in {d["kind"] for d in docs}
    bindings = [d for d in docs if d["kind"].endswith("Binding")]
    assert bindings and all(b["subjects"][0]["name"] == RELEASE for b in bindings)
    assert not documents(template(kaon_rig, "role=member", *sets))


def test_no_wildcards_and_no_builtin_admin_roles(kaon_rig: Rig) -> None:
    seen_rules = 0
    for variant, sets in VARIANTS.items():
        for doc in documents(template(kaon_rig, *sets)):
            if doc["kind"] in RBAC_KINDS:
                for rule in doc["rules"]:
                    seen_rules += 1
                    for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                        assert "*" not in str(rule.get(key, [])), (variant, doc["kind"], rule)
                    assert "nonResourceURLs" not in rule
            if doc["kind"].endswith("Binding"):
                assert doc["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"), doc
    assert seen_rules > 10


def test_secrets_are_readable_only_in_the_release_namespace(kaon_rig: Rig) -> None:
    sets = ("rbac.memberSecretNames={rig-east-kubeconfig}", "rbac.checkpointStoreSecrets=false")
    docs = documents(template(kaon_rig, *sets))
    rules = [(d["kind"], r) for d in docs if d["kind"] in RBAC_KINDS for r in d["rules"]]
    secret_rules = [(kind, r) for kind, r in rules if "secrets" in r["resources"]]
    only = {"resourceNames": ["rig-east-kubeconfig"], "verbs": ["get"]}
    assert secret_rules == [("Role", {"apiGroups": [""], "resources": ["secrets"], **only})]


def test_the_operator_identity_has_what_it_needs_and_nothing_more(
    kaon_rig: Rig, operator_kubeconfig: Path
) -> None:
    sa = SA_USER
    for allowed in (
        ("list", "trainingjobs.kaon.dev", "-A"),
        ("watch", "inferenceservices.kaon.dev", "-A"),
        ("patch", "trainingjobs.kaon.dev", "--subresource=status", "-n", "team-x"),
        ("patch", "computeclusters.kaon.dev", "--subresource=status"),
        ("create", "events", "-n", "team-x"),
        ("get", "secrets/rig-east-kubeconfig", "-n", RELEASE_NAMESPACE),
        ("get", "secrets", "-n", "team-x"),  # a job's checkpoint-store Secret, by name
        ("get", "trainingjobs.kaon.dev", "-n", "team-x"),  # read fresh before a launch
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "leases.coordination.k8s.io", "-n", RELEASE_NAMESPACE),
        ("get", "leases.coordination.k8s.io/kaon-operator", "-n", RELEASE_NAMESPACE),
        ("update", "leases.coordination.k8s.io/kaon-operator", "-n", RELEASE_NAMESPACE),
    ):
        assert can_i(kaon_rig, sa, *allowed), allowed
    for denied in (
        ("update", "trainingjobs.kaon.dev", "-n", "team-x"),  # spec belongs to GitOps
        ("create", "trainingjobs.kaon.dev", "-n", "team-x"),
        ("patch", "computeclusters.kaon.dev"),
        ("delete", "inferenceservices.kaon.dev", "-n", "team-x"),
        ("list", "secrets", "-n", RELEASE_NAMESPACE),
        ("list", "secrets", "-n", "team-x"),
        ("create", "pods", "-n", "team-x"),  # workloads go to members, never the hub
        ("patch", "clusterkopfpeerings.kopf.dev/someone-else"),
        ("patch", "clusterkopfpeerings.kopf.dev/kaon"),  # leader election, not peering
        ("update", "leases.coordination.k8s.io/someone-else", "-n", RELEASE_NAMESPACE),
        ("delete", "leases.coordination.k8s.io/kaon-operator", "-n", RELEASE_NAMESPACE),
        ("list", "leases.coordination.k8s.io", "-n", RELEASE_NAMESPACE),
        ("get", "leases.coordination.k8s.io/kaon-operator", "-n", "default"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("delete", "events", "-n", "team-x"),
    ):
        assert not can_i(kaon_rig, sa, *denied), denied


def test_the_router_identity_reads_services_and_asks_for_replicas_only(
    kaon_rig: Rig, operator_kubeconfig: Path
) -> None:
    sa = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-router"
    for allowed in (
        ("list", "inferenceservices.kaon.dev", "-A"),
        ("watch", "inferenceservices.kaon.dev", "-A"),
        ("patch", "inferenceservices.kaon.dev", "-n", "team-x"),  # kaon.dev/wanted-at
    ):
        assert can_i(kaon_rig, sa, *allowed), allowed
    for denied in (
        ("patch", "inferenceservices.kaon.dev", "--subresource=status", "-n", "team-x"),
        ("delete", "inferenceservices.kaon.dev", "-n", "team-x"),
        ("list", "trainingjobs.kaon.dev", "-A"),
        ("get", "secrets", "-n", RELEASE_NAMESPACE),
        ("get", "secrets", "-n", "team-x"),
        ("create", "pods", "-n", "team-x"),
        ("create", "events", "-n", "team-x"),
    ):
        assert not can_i(kaon_rig, sa, *denied), denied
    rendered = documents(template(kaon_rig))
    routers = {d["kind"] for d in rendered if d["metadata"]["name"] == f"{RELEASE}-router"}
    assert routers == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    env = operator_deployment(rendered)["spec"]["template"]["spec"]["containers"][0]["env"]
    url = f"http://{RELEASE}-router.{RELEASE_NAMESPACE}.svc:8090"
    assert {"name": "KAON_ROUTER_URL", "value": url} in env
    without = documents(template(kaon_rig, "router.enabled=false"))
    assert not [d for d in without if d["metadata"]["name"].endswith("-router")]
    env = operator_deployment(without)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "KAON_ROUTER_URL" not in {e["name"] for e in env}


def test_the_operator_pod_meets_the_restricted_pod_security_standard(kaon_rig: Rig) -> None:
    ns = f"kaon-pss-{uuid.uuid4().hex[:6]}"
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
    kaon_rig.core("hub").create_namespace({"metadata": {"name": ns, "labels": labels}})
    try:
        rendered = template(kaon_rig, "operator.replicas=1", namespace=ns)
        deployment = [d for d in documents(rendered) if d["kind"] == "Deployment"]
        assert len(deployment) == 2  # the operator's and the router's
        for each in deployment:
            done = run_kubectl(
                kaon_rig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(each)
            )
            assert done.returncode == 0, done.stderr
            assert "PodSecurity" not in done.stderr, done.stderr
        # The same check on a pod without a security context does warn: the check is live.
        plain = json.loads(json.dumps(deployment[0]))
        pod = plain["spec"]["template"]["spec"]
        del pod["securityContext"], pod["containers"][0]["securityContext"]
        done = run_kubectl(
            kaon_rig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(plain)
        )
        assert 'would violate PodSecurity "restricted' in done.stderr, done.stderr
    finally:
        kaon_rig.core("hub").delete_namespace(ns)


# --- the namespaced user role ---------------------------------------------------------------


@pytest.fixture
def other_namespace(kaon_rig: Rig) -> Iterator[str]:
    name = f"kaon-other-{uuid.uuid4().hex[:6]}"
    kaon_rig.core("hub").create_namespace({"metadata": {"name": name}})
    yield name
    kaon_rig.core("hub").delete_namespace(name)


def test_a_kaon_user_works_in_their_namespace_only(
    kaon_rig: Rig, operator_kubeconfig: Path, namespace: str, other_namespace: str
) -> None:
    user = f"alice-{uuid.uuid4().hex[:6]}"
    rbac = client.RbacAuthorizationV1Api(kaon_rig.api("hub"))
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "kaon-user"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{RELEASE}-user",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )
    job = REPO / "examples" / "trainingjobs" / "lstm-cpu.yaml"
    service = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": "served"},
        "spec": {"model": {"uri": "pvc://models/digits"}},
    }
    as_user = ("--as", user)
    # RBAC bindings take effect at once, but give the authorizer's cache a moment.
    wait_for(
        lambda: can_i(kaon_rig, user, "create", "trainingjobs.kaon.dev", "-n", namespace),
        bool,
        "the RoleBinding in effect",
        timeout_s=10,
    )
    created = run_kubectl(kaon_rig, *as_user, "-n", namespace, "apply", "-f", str(job))
    assert created.returncode == 0, created.stderr
    created = run_kubectl(
        kaon_rig, *as_user, "-n", namespace, "create", "-f", "-", stdin=json.dumps(service)
    )
    assert created.returncode == 0, created.stderr
    listed = run_kubectl(kaon_rig, *as_user, "-n", namespace, "get", "tj,isvc", "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "trainingjob.kaon.dev/lstm-cpu",
        "inferenceservice.kaon.dev/served",
    }
    status = run_kubectl(
        kaon_rig, *as_user, "-n", namespace, "get", "tj/lstm-cpu", "--subresource=status"
    )
    assert status.returncode == 0, status.stderr

    # Another namespace's jobs, the member kubeconfigs, and anything but kaon's kinds: forbidden.
    Jobs(kaon_rig.api("hub")).create(other_namespace, "theirs", {"model": {"family": "cnn"}})
    for forbidden in (
        ("-n", other_namespace, "get", "tj", "theirs"),
        ("-n", other_namespace, "get", "tj"),
        ("get", "tj", "-A"),
        ("-n", RELEASE_NAMESPACE, "get", "secret", "rig-east-kubeconfig"),
        ("-n", namespace, "get", "secrets"),
        ("-n", namespace, "get", "pods"),
        ("get", "computeclusters"),
    ):
        done = run_kubectl(kaon_rig, *as_user, *forbidden)
        assert done.returncode != 0 and "Forbidden" in done.stderr, (forbidden, done.stdout)
    assert not can_i(kaon_rig, user, "patch", "trainingjobs.kaon.dev", "--subresource=status")


# --- kopf peering under the operator's identity ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peers(kaon_rig: Rig) -> dict[str, Any]:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    body = api.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "kaon")
    return dict(body.get("status") or {})


def set_peer(kaon_rig: Rig, ident: str, entry: dict[str, Any] | None) -> None:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    api.patch_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "kaon", {"status": {ident: entry}}
    )


@pytest.fixture
def peering_release(kaon_rig: Rig, operator_kubeconfig: Path) -> Iterator[None]:
    """The chart's peering variant installed beside the session's release (whose default is
    leader election): ClusterKopfPeering `kaon` and the peering rules, bound to the same
    ServiceAccount. The session's release is left as it is: an operator running under it keeps
    its Lease rules."""
    release = f"{RELEASE}-peering"
    sets = (
        *PEERING,
        "operator.replicas=0",
        "serviceAccount.create=false",
        f"serviceAccount.name={RELEASE}",
        "rbac.userRole.create=false",
    )
    values = [arg for s in sets for arg in ("--set", s)]
    install = ("upgrade", "--install", release, str(CHART), "-n", RELEASE_NAMESPACE, "--skip-crds")
    helm(kaon_rig, *install, *values)
    try:
        wait_for(
            lambda: can_i(kaon_rig, SA_USER, "patch", "clusterkopfpeerings.kopf.dev/kaon"),
            bool,
            "the peering rules in effect",
            timeout_s=10,
        )
        yield
    finally:
        helm(kaon_rig, "uninstall", release, "--namespace", RELEASE_NAMESPACE)


def test_a_standby_replica_keeps_its_peering_entry_and_takes_over(
    kaon_rig: Rig, operator_kubeconfig: Path, peering_release: None, tmp_path: Path
) -> None:
    """Two replicas: a (fake) active one with a higher priority, and a real `kaon run --peering`
    as the chart's ServiceAccount, which stands by, then takes over once the active one is gone.
    With --peering the Lease is not used."""
    active = "active-replica@test"
    lastseen = datetime.now(UTC).isoformat()
    set_peer(kaon_rig, active, {"priority": 1000, "lifetime": 300, "lastseen": lastseen})
    health = f"http://127.0.0.1:{free_port()}/healthz"
    args = ("--peering", "kaon", "--priority", "7", "--liveness", health)
    no_metrics = {"KAON_METRICS_PORT": "0"}  # the session's operator serves them
    standby = OperatorProcess(operator_kubeconfig, tmp_path / "standby.log", args, no_metrics)
    standby.start()
    try:
        entries = wait_for(
            lambda: peers(kaon_rig),
            lambda p: any(v.get("priority") == 7 for v in p.values()),
            "the standby's keep-alive in ClusterKopfPeering kaon",
            timeout_s=30,
        )
        mine = next(k for k, v in entries.items() if v.get("priority") == 7)
        assert "Resuming" not in standby.log_path.read_text()
        # The probes of the chart's Deployment pass while it stands by: it is not restarted.
        with urllib.request.urlopen(health, timeout=5) as answer:
            assert answer.status == 200
        set_peer(kaon_rig, active, None)  # the active replica is gone
        wait_for(
            standby.log_path.read_text,
            lambda log: "Resuming operations after the pause" in log,
            "the standby taking over",
            timeout_s=30,
        )
    finally:
        standby.stop()
        set_peer(kaon_rig, active, None)
    assert not standby.rbac_denials()
    assert "leader election" not in standby.log_path.read_text()
    wait_for(lambda: peers(kaon_rig), lambda p: mine not in p, "its entry removed on exit", 15)


# --- the member role, used for real ------------------------------------------------------------


@pytest.fixture
def least_privileged_member(kaon_rig: Rig, kaon_operator: OperatorProcess) -> Iterator[str]:
    """West registered a second time, as ComputeCluster `west-least`, through the chart's member
    identity (role=member on west, a TokenRequest token) instead of west's admin kubeconfig."""
    name, secret = "west-least", "test-west-least-kubeconfig"
    install_chart(kaon_rig, "role=member", cluster="west")
    path = identity.write_kubeconfig("west", RELEASE_NAMESPACE, RELEASE, duration_s=3600)
    kubeconfig = yaml.safe_dump(yaml.safe_load(path.read_text()))
    core, objects = kaon_rig.core("hub"), client.CustomObjectsApi(kaon_rig.api("hub"))
    core.create_namespaced_secret(
        RELEASE_NAMESPACE,
        {
            "metadata": {"name": secret},
            "data": {"kubeconfig": base64.b64encode(kubeconfig.encode()).decode()},
        },
    )
    cluster = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ComputeCluster",
        "metadata": {"name": name, "labels": {"kaon.dev/test-identity": "member-role"}},
        "spec": {
            "kubeconfigSecretRef": {"name": secret, "namespace": RELEASE_NAMESPACE},
            # The most expensive pool of the rig: other tests' workloads never come here.
            "pools": [{"name": "cpu", "nodeSelector": {"kaon.dev/pool": "cpu"}, "costPerHour": 99}],
        },
    }
    objects.create_cluster_custom_object(GROUP, VERSION, "computeclusters", cluster)
    try:
        yield name
    finally:
        objects.delete_cluster_custom_object(GROUP, VERSION, "computeclusters", name)
        core.delete_namespaced_secret(secret, RELEASE_NAMESPACE)
        helm(kaon_rig, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, cluster="west")


def _deleted(api: Jobs, ns: str, name: str) -> bool:
    try:
        api.get(ns, name)
        return False
    except ApiException as exc:
        return exc.status == 404


def test_the_member_role_suffices_for_jobs_and_services(
    kaon_rig: Rig, least_privileged_member: str, namespace: str, tmp_path: Path
) -> None:
    objects = client.CustomObjectsApi(kaon_rig.api("hub"))
    wait_for(
        lambda: objects.get_cluster_custom_object(
            GROUP, VERSION, "computeclusters", least_privileged_member
        ),
        lambda cc: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (cc.get("status") or {}).get("conditions") or []
        ),
        "the member reachable with its least-privilege identity",
    )
    there = {"clusterSelector": {"matchLabels": {"kaon.dev/test-identity": "member-role"}}}
    jobs = Jobs(kaon_rig.api("hub"))
    services = Jobs(kaon_rig.api("hub"), "InferenceService", "inferenceservices")
    jobs.create(
        namespace,
        "least",
        {"model": {"family": "cnn"}, "workers": 2, "placement": there},
        {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"},
    )
    bound_claim(kaon_rig, "west", namespace, "models", tmp_path / "models")
    services.create(
        namespace,
        "least",
        {
            "model": {"uri": "pvc://models/digits"},
            "resources": {"cpu": 1, "memory": "1Gi"},
            "placement": there,
        },
    )
    job = jobs.wait_state(namespace, "least", "Running", timeout_s=90)
    assert job["status"]["placement"]["cluster"] == least_privileged_member
    svc = services.wait(namespace, "least", lambda s: state(s) == "Ready", "ready", 90)
    assert svc["status"]["clusters"][0]["cluster"] == least_privileged_member

    # Clean-up in the member (collection deletes, Service and Deployment removal) as well.
    jobs.delete(namespace, "least")
    services.delete(namespace, "least")
    wait_for(lambda: _deleted(jobs, namespace, "least"), bool, "the job finalized", 60)
    wait_for(lambda: _deleted(services, namespace, "least"), bool, "the service finalized", 60)
    west = kaon_rig.core("west")
    apps = client.AppsV1Api(kaon_rig.api("west"))
    wait_for(
        lambda: [
            p.metadata.name
            for p in west.list_namespaced_pod(namespace).items
            if not p.metadata.deletion_timestamp
        ],
        lambda pods: not pods,
        "the workers and servers gone from west",
    )
    assert not apps.list_namespaced_deployment(namespace).items
    assert not west.list_namespaced_service(namespace).items


def test_rig_operator_kubeconfig_prints_a_kubeconfig_of_the_chart_identity(
    kaon_rig: Rig, operator_kubeconfig: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kaon.cli", "rig", "operator-kubeconfig"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(done.stdout.strip())
    config = yaml.safe_load(path.read_text())
    hub = inline_kubeconfig(kaon_rig.kubeconfig("hub"))
    assert config["clusters"][0]["cluster"] == hub["clusters"][0]["cluster"]
    assert set(config["users"][0]["user"]) == {"token"}  # not the admin's client certificate
    assert path.stat().st_mode & 0o077 == 0
    who = subprocess.run(
        [str(paths.kubectl_binary()), "--kubeconfig", str(path), "auth", "whoami"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert SA_USER in who.stdout
