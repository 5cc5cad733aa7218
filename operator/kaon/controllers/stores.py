"""Member copies of the hub Secrets that hold S3 store credentials: a TrainingJob's for its
workers (spec.checkpoint.secretRef), an InferenceService's for its servers (the model's)."""

from __future__ import annotations

from collections.abc import Callable

from kaon.builders.worker import STORE_ENV
from kaon.clusters import paths
from kaon.clusters.client import ApiError, KubeClient, Obj
from kaon.clusters.member import Member


async def copy_store_secret(
    hub: KubeClient,
    member: Member,
    namespace: str,
    source: str,
    where: str,
    build: Callable[[dict[str, str]], Obj],
) -> str | None:
    """The hub's Secret `source` (named by the field `where`), copied into the member as
    `build(data)` with only the keys the runtime reads; why not, if it cannot be."""
    what = f"Secret {namespace}/{source} ({where})"
    try:
        secret = await hub.get(paths.secret(namespace, source))
    except ApiError as exc:
        return f"{what} does not exist" if exc.not_found else f"{what}: {exc}"
    data = secret.get("data") or {}
    missing = [k for _, k, optional in STORE_ENV if not optional and not data.get(k)]
    if missing:
        return f"{what} has no {' and no '.join(missing)}"
    copy = build({k: data[k] for _, k, _ in STORE_ENV if data.get(k)})
    path = paths.secret(namespace, copy["metadata"]["name"])
    try:
        await member.client.request("PUT", path, body=copy, answer=False)
    except ApiError as exc:
        if not exc.not_found:
            raise
        await member.client.create(paths.secrets(namespace), copy, answer=False)
    return None
