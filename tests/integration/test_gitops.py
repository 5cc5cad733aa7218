"""GitOps safety, with the operator running: what a GitOps tool applies stays the tool's alone.

The jobs of examples/gitops/jobs are applied with server-side apply (as Argo CD and Flux do);
once kaon has reconciled them, no field manager but kubectl's owns a spec field, applying the
same manifests again changes nothing, and `kubectl diff` against the live objects is empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kaon_rig import paths

from kaonrig import CHART, GROUP, REPO, VERSION, Rig, helm, state, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

JOBS = REPO / "examples" / "gitops" / "jobs"
PLURALS = {"TrainingJob": "trainingjobs", "InferenceService": "inferenceservices"}
MANAGER = "kubectl"  # kubectl's field manager for server-side apply


def kubectl(kaon_rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(paths.kubectl_binary()), "--kubeconfig", str(kaon_rig.kubeconfig("hub")), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def apply(kaon_rig: Rig, ns: str) -> list[dict[str, Any]]:
    """Server-side apply of the jobs; the objects as the API server answered."""
    done = kubectl(kaon_rig, "apply", "--server-side", "-k", str(JOBS), "-n", ns, "-o", "json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return list(answer["items"]) if answer.get("kind") == "List" else [answer]


def live(kaon_rig: Rig, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    objects = {}
    for kind, plural in PLURALS.items():
        for obj in api.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
            objects[(kind, obj["metadata"]["name"])] = obj
    return objects


def reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration") == obj["metadata"]["generation"]
    if obj["kind"] == "TrainingJob":
        return observed and state(obj) in ("Succeeded", "Failed")  # settled: no more writes
    return observed and bool(status.get("conditions"))


def versions(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {
        k: (o["metadata"]["resourceVersion"], o["metadata"]["generation"])
        for k, o in objects.items()
    }


def settled(kaon_rig: Rig, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object reconciled, and no write to any of them for 3 s."""
    expected = {(d["kind"], d["metadata"]["name"]) for d in rendered_jobs(kaon_rig)}

    def fetch() -> tuple[dict[tuple[str, str], dict[str, Any]], bool]:
        before = live(kaon_rig, ns)
        time.sleep(3)
        after = live(kaon_rig, ns)
        return after, versions(before) == versions(after)

    objects, _ = wait_for(
        fetch,
        lambda got: set(got[0]) == expected and got[1] and all(map(reconciled, got[0].values())),
        "the GitOps jobs reconciled and quiet",
        timeout_s=120,
    )
    return objects


def rendered_jobs(kaon_rig: Rig) -> list[dict[str, Any]]:
    done = kubectl(kaon_rig, "kustomize", str(JOBS))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def spec_owners(obj: dict[str, Any]) -> set[str]:
    """Field managers that own any field under spec."""
    return {
        entry["manager"]
        for entry in obj["metadata"].get("managedFields") or []
        if "f:spec" in (entry.get("fieldsV1") or {})
    }


def test_kaon_never_owns_spec_and_reapplying_is_a_no_op(kaon_rig: Rig, namespace: str) -> None:
    applied = apply(kaon_rig, namespace)
    assert {o["kind"] for o in applied} == set(PLURALS)
    objects = settled(kaon_rig, namespace)

    for key, obj in objects.items():
        assert spec_owners(obj) == {MANAGER}, (key, obj["metadata"]["managedFields"])
        others = [e for e in obj["metadata"]["managedFields"] if e["manager"] != MANAGER]
        # The operator's writes are there, and they are status and its finalizer only.
        assert any(e.get("subresource") == "status" for e in others), key
        for entry in others:
            fields = entry.get("fieldsV1") or {}
            if entry.get("subresource") == "status":
                assert set(fields) == {"f:status"}, (key, entry)
            else:
                assert set(fields) == {"f:metadata"}, (key, entry)
                assert set(fields["f:metadata"]) == {"f:finalizers"}, (key, entry)

    again = {(o["kind"], o["metadata"]["name"]): o for o in apply(kaon_rig, namespace)}
    assert versions(again) == versions(objects)  # the answer to the apply: nothing written
    assert versions(live(kaon_rig, namespace)) == versions(objects)


def test_kaon_status_shows_the_reconciled_jobs(kaon_rig: Rig, namespace: str) -> None:
    apply(kaon_rig, namespace)
    settled(kaon_rig, namespace)
    hub = str(kaon_rig.kubeconfig("hub"))
    done = subprocess.run(
        [sys.executable, "-m", "kaon.cli", "status", "--kubeconfig", hub, "-n", namespace],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert rows[f"{namespace}/gitops-lstm"][1:2] == ["Succeeded"]
    assert rows[f"{namespace}/gitops-cnn"][1:2] == ["Succeeded"]
    assert rows[f"{namespace}/gitops-digits"][1] in ("Deploying", "Waiting")
    assert "TRAININGJOBS (2 Succeeded)" in done.stdout


def test_kubectl_diff_of_the_examples_against_live_objects_is_empty(
    kaon_rig: Rig, namespace: str
) -> None:
    apply(kaon_rig, namespace)
    settled(kaon_rig, namespace)
    done = kubectl(kaon_rig, "diff", "--server-side", "-k", str(JOBS), "-n", namespace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    # A change by someone else is seen: the check is not blind.
    patch = {"metadata": {"labels": {"app.kubernetes.io/part-of": "hand-edited"}}}
    api = client.CustomObjectsApi(kaon_rig.api("hub"))
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", "gitops-lstm", patch
    )
    # A field another manager took: plain apply would conflict; a forced one puts it back.
    diff = ("diff", "--server-side", "--force-conflicts", "-k", str(JOBS), "-n", namespace)
    done = kubectl(kaon_rig, *diff)
    assert done.returncode == 1 and "hand-edited" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    "manifest", ["argocd/kaon.yaml", "flux/release/helmrelease.yaml"], ids=["argocd", "flux"]
)
def test_the_gitops_values_pass_the_chart_schema(
    kaon_rig: Rig, manifest: str, tmp_path: Path
) -> None:
    """The values Argo CD and Flux hand to Helm render (their CRDs are not on the rig)."""
    docs = yaml.safe_load_all((REPO / "examples" / "gitops" / manifest).read_text())
    first = next(d for d in docs if d)
    spec = first["spec"]
    values = spec["source"]["helm"]["valuesObject"] if "source" in spec else spec["values"]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm(kaon_rig, "template", "kaon", str(CHART), "-n", "kaon-system", "-f", str(path))
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == values["operator"]["replicas"]
