"""The rig's S3 checkpoint store as tests read it: the Secret copied into a namespace, and a
job's committed manifest."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client

from kaon_rig import s3

from kaonrig import Rig


def store_secret(kaon_rig: Rig, namespace: str) -> dict[str, str]:
    """The rig's Secret kaon-s3, copied into the job's namespace as a user would."""
    core = kaon_rig.core("hub")
    found = core.read_namespaced_secret(s3.SECRET_NAME, s3.SECRET_NAMESPACE)
    copy = client.V1Secret(metadata=client.V1ObjectMeta(name=s3.SECRET_NAME), data=found.data)
    core.create_namespaced_secret(namespace, copy)
    return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}


def manifest(secret: dict[str, str], job: dict[str, Any]) -> dict[str, Any]:
    """The job's committed manifest in the store ({} before the first commit)."""
    meta = job["metadata"]
    return s3.committed_manifest(secret, meta["namespace"], meta["name"], meta["uid"])


def manifest_step(secret: dict[str, str], job: dict[str, Any]) -> int:
    """The step of the job's newest committed checkpoint (0: none yet)."""
    return int(manifest(secret, job).get("step", 0))
