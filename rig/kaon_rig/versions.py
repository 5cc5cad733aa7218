"""Pinned versions of everything the local rig builds from the Go module proxy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RigVersions:
    kubernetes: str = "1.36.3"
    etcd: str = "3.6.10"
    kwok: str = "0.8.0"
    helm: str = "3.22.0"
    # The rig's S3 server; the module proxy knows SeaweedFS by pseudo-version only. Out of the
    # repr, which the clusters' configuration digest hashes: a new S3 server is no new cluster.
    seaweedfs: str = field(default="v0.0.0-20261109003541-7506e5f91cd6", repr=False)
    # Kubeflow training-operator: only the control-plane bench runs it (a baseline), built on
    # demand; out of the repr like the S3 server.
    training_operator: str = field(default="1.8.1", repr=False)

    @property
    def kubernetes_minor(self) -> str:
        return self.kubernetes.split(".")[1]

    @property
    def staging(self) -> str:
        """Staging modules (k8s.io/api, client-go, …) are tagged v0.<minor>.<patch>."""
        _, minor, patch = self.kubernetes.split(".")
        return f"v0.{minor}.{patch}"


VERSIONS = RigVersions()

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
