"""examples/gitops: the Argo CD and Flux objects are well-formed and point at what exists here.

Their CRDs are not on the rig; the fields checked are the ones each controller requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "examples" / "gitops"
KAON_KINDS = {"TrainingJob", "InferenceService"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(GITOPS.rglob("*.yaml")) for d in docs(p)]


def of_kind(api_group: str, kind: str) -> list[dict[str, Any]]:
    return [
        d for d in all_docs() if d["kind"] == kind and d["apiVersion"].startswith(api_group + "/")
    ]


def repo_path(path: str) -> Path:
    return REPO / path.removeprefix("./")


def test_every_document_has_api_version_kind_and_name() -> None:
    found = all_docs()
    assert len(found) >= 10
    for d in found:
        assert d.get("apiVersion") and d.get("kind"), d
        if d["kind"] != "Kustomization" or "toolkit" in d["apiVersion"]:
            assert d["metadata"]["name"], d


def test_argo_cd_applications_deploy_the_chart_and_the_jobs_server_side() -> None:
    apps = {a["metadata"]["name"]: a for a in of_kind("argoproj.io", "Application")}
    assert set(apps) == {"kaon", "kaon-jobs-team-a"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1"
        spec = app["spec"]
        assert spec["project"]
        source, destination = spec["source"], spec["destination"]
        assert source["repoURL"] and source["targetRevision"]
        assert repo_path(source["path"]).is_dir(), source["path"]
        assert destination["server"] and destination["namespace"]
        assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
        assert "ignoreDifferences" not in spec  # kaon never writes spec: nothing to ignore
    assert apps["kaon"]["spec"]["source"]["path"] == "charts/kaon"
    assert apps["kaon"]["spec"]["destination"]["namespace"] == "kaon-system"
    assert apps["kaon-jobs-team-a"]["spec"]["source"]["path"] == "examples/gitops/jobs"
    waves = {
        n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for n, a in apps.items()
    }
    assert waves["kaon"] < waves["kaon-jobs-team-a"]


def test_flux_syncs_the_chart_before_the_jobs_from_one_source() -> None:
    (source,) = of_kind("source.toolkit.fluxcd.io", "GitRepository")
    assert source["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert source["spec"]["url"] and source["spec"]["interval"] and source["spec"]["ref"]
    layers = {
        k["metadata"]["name"]: k for k in of_kind("kustomize.toolkit.fluxcd.io", "Kustomization")
    }
    assert set(layers) == {"kaon", "kaon-jobs"}
    for layer in layers.values():
        spec = layer["spec"]
        assert spec["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"]}
        assert spec["interval"] and isinstance(spec["prune"], bool)
        assert (repo_path(spec["path"]) / "kustomization.yaml").is_file(), spec["path"]
    assert layers["kaon-jobs"]["spec"]["dependsOn"] == [{"name": "kaon"}]
    assert layers["kaon"]["spec"]["wait"] is True
    assert layers["kaon-jobs"]["spec"]["targetNamespace"]


def test_flux_helm_release_installs_the_chart_with_its_crds() -> None:
    (release,) = of_kind("helm.toolkit.fluxcd.io", "HelmRelease")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert (repo_path(chart["chart"]) / "Chart.yaml").is_file()
    (source,) = of_kind("source.toolkit.fluxcd.io", "GitRepository")
    assert chart["sourceRef"] == {
        "kind": "GitRepository",
        "name": source["metadata"]["name"],
        "namespace": source["metadata"]["namespace"],
    }
    assert (
        release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    )
    assert release["spec"]["interval"]


@pytest.mark.parametrize(
    "directory", [GITOPS / "jobs", GITOPS / "flux" / "release"], ids=lambda p: p.name
)
def test_kustomizations_list_files_that_exist(directory: Path) -> None:
    kustomization = docs(directory / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    for resource in kustomization["resources"]:
        assert (directory / resource).is_file(), resource


def test_the_jobs_are_kaon_workloads_without_a_namespace() -> None:
    """The GitOps tool sets the namespace (Argo CD's destination, Flux's targetNamespace)."""
    directory = GITOPS / "jobs"
    resources = docs(directory / "kustomization.yaml")[0]["resources"]
    workloads = [d for r in resources for d in docs(directory / r)]
    assert {d["kind"] for d in workloads} == KAON_KINDS
    for d in workloads:
        assert d["apiVersion"] == "kaon.dev/v1alpha1"
        assert "namespace" not in d["metadata"] and "status" not in d
