"""Pinned versions of everything the local rig builds from the Go module proxy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RigVersions:
    kubernetes: str = "1.36.3"
    etcd: str = "3.6.10"
    kwok: str = "0.8.0"
    helm: str = "3.22.0"

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
