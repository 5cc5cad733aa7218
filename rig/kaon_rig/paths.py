"""Where the rig keeps its cached binaries and its running clusters (always outside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

from kaon_rig.versions import VERSIONS, RigVersions


def cache_dir() -> Path:
    return Path(os.environ.get("KAON_CACHE") or Path.home() / ".cache" / "kaon")


def rig_dir() -> Path:
    """The rig's work directory: kwokctl state, kubeconfigs, logs."""
    return Path(os.environ.get("KAON_RIG_DIR") or cache_dir() / "rig")


def kube_bin_dir(v: RigVersions = VERSIONS) -> Path:
    return cache_dir() / "bin" / f"kubernetes-v{v.kubernetes}"


def etcd_binary(v: RigVersions = VERSIONS) -> Path:
    return cache_dir() / "bin" / f"etcd-v{v.etcd}" / "etcd"


def kwok_bin_dir(v: RigVersions = VERSIONS) -> Path:
    return cache_dir() / "bin" / f"kwok-v{v.kwok}"


def helm_binary(v: RigVersions = VERSIONS) -> Path:
    return cache_dir() / "bin" / f"helm-v{v.helm}" / "helm"


def seaweedfs_binary(v: RigVersions = VERSIONS) -> Path:
    return cache_dir() / "bin" / f"seaweedfs-{v.seaweedfs}" / "weed"


def training_operator_binary(v: RigVersions = VERSIONS) -> Path:
    """Kubeflow training-operator (`go install` names the binary after its package)."""
    return (
        cache_dir() / "bin" / f"training-operator-v{v.training_operator}" / "training-operator.v1"
    )


def s3_dir() -> Path:
    """The rig's S3 server: its data, credentials, pid file and log."""
    return rig_dir() / "s3"


def kubectl_binary(v: RigVersions = VERSIONS) -> Path:
    return kube_bin_dir(v) / "kubectl"


def kwokctl_binary(v: RigVersions = VERSIONS) -> Path:
    return kwok_bin_dir(v) / "kwokctl"


def kubeconfig_path(cluster: str) -> Path:
    return rig_dir() / "clusters" / cluster / "kubeconfig.yaml"


def agent_dir(node: str) -> Path:
    """The process agent of a node: its log, pid file and the working directories of its pods."""
    return rig_dir() / "agents" / node
