"""Writes of an InferenceService's objects to members: apply when changed, remove everywhere."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import get_args

from kaon.api.names import ObjectKey
from kaon.builders.names import (
    auth_tokens_secret_name,
    model_secret_name,
    request_log_secret_name,
    service_selector,
    tls_secret_name,
)
from kaon.builders.server import Revision, token_reviewer
from kaon.clusters import paths
from kaon.clusters.client import ApiError, Obj
from kaon.clusters.member import Member
from kaon.controllers.stores import copy_store_secret
from kaon.engine.fleet import Fleet

log = logging.getLogger(__name__)
DEPLOYMENTS = ("apps/v1", "deployments")
PLURALS = {"Deployment": "deployments", "Service": "services", "Secret": "secrets"}
COPIED = "copied"  # what `Applied` records for a Secret copy (its data is the hub's)


def _path(obj: Obj) -> str:
    meta = obj["metadata"]
    plural = PLURALS[obj["kind"]]
    return f"{paths.collection(obj['apiVersion'], plural, meta['namespace'])}/{meta['name']}"


def _digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


Applied = dict[tuple[str, str], str]  # (cluster, path) -> digest of what was last applied


class ServerOps:
    """Applies objects only when they differ from what this operator last applied (each
    service's `Applied` record lives in its memory)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._reviewers: set[tuple[str, str]] = set()  # (cluster, namespace) bound already

    async def ensure_token_reviewer(self, member: Member, namespace: str) -> None:
        """The namespace's servers may ask for TokenReviews in the member (once per run)."""
        if (member.name, namespace) in self._reviewers:
            return
        obj = token_reviewer(namespace)
        await member.client.create_or_get(f"/apis/{obj['apiVersion']}/clusterrolebindings", obj)
        self._reviewers.add((member.name, namespace))

    async def apply(self, member: Member, applied: Applied, obj: Obj) -> None:
        path = _path(obj)
        digest = _digest(obj)
        if applied.get((member.name, path)) == digest:
            return
        try:
            await member.client.merge_patch(path, obj)
        except ApiError as exc:
            if not exc.not_found:
                raise
            await member.client.create(path.rsplit("/", 1)[0], obj)
        applied[(member.name, path)] = digest

    async def delete(self, member: Member, applied: Applied, obj: Obj) -> None:
        path = _path(obj)
        await member.client.delete_if_present(path)
        applied.pop((member.name, path), None)

    async def copy_secret(
        self,
        member: Member,
        applied: Applied,
        source: str,
        where: str,
        build: Callable[[dict[str, str]], Obj],
        user: Obj,
    ) -> str | None:
        """Copy the hub's Secret `source` into the member as `build(data)` for the Deployment
        `user`: when this operator has not copied it there yet, or before `user` changes (so a
        rollout also takes in new credentials); why not, if it cannot be."""
        copy = build({})
        where_copy = (member.name, _path(copy))
        if where_copy in applied and applied.get((member.name, _path(user))) == _digest(user):
            return None
        namespace = copy["metadata"]["namespace"]
        problem = await copy_store_secret(self.fleet.hub, member, namespace, source, where, build)
        if problem is None:
            applied[where_copy] = COPIED
        return problem

    async def mirror_secret(
        self,
        member: Member,
        applied: Applied,
        source: str,
        where: str,
        build: Callable[[dict[str, str]], Obj],
        required: tuple[str, ...] = (),
    ) -> str | None:
        """Keep the member's copy `build(data)` equal to the hub's Secret `source` (named by the
        field `where`), replaced whole so a key removed on the hub (a revoked token) goes
        too, and a renewed certificate reaches the servers; why not, if it cannot be."""
        copy = build({})
        namespace = copy["metadata"]["namespace"]
        what = f"Secret {namespace}/{source} ({where})"
        try:
            secret = await self.fleet.hub.get(paths.secret(namespace, source))
        except ApiError as exc:
            return f"{what} does not exist" if exc.not_found else f"{what}: {exc}"
        data = secret.get("data") or {}
        missing = [k for k in required if not data.get(k)]
        if missing:
            return f"{what} has no {' and no '.join(missing)}"
        if not data:
            return f"{what} has no data"
        copy = build(dict(data))
        path = _path(copy)
        digest = _digest(copy)
        if applied.get((member.name, path)) == digest:
            return None
        try:
            await member.client.request("PUT", path, body=copy, answer=False)
        except ApiError as exc:
            if not exc.not_found:
                raise
            await member.client.create(path.rsplit("/", 1)[0], copy, answer=False)
        applied[(member.name, path)] = digest
        return None

    @staticmethod
    def has(member: Member, applied: Applied, obj: Obj) -> bool:
        """Whether this operator applied that object in the member (and has not deleted it)."""
        return (member.name, _path(obj)) in applied

    @staticmethod
    def applied_in(applied: Applied) -> set[str]:
        """Clusters where this operator has applied objects of the service."""
        return {cluster for cluster, _ in applied}

    async def remove_all(self, key: ObjectKey, cluster: str, applied: Applied) -> bool:
        """Delete the service's Deployments, Service and Secret copies in the cluster; False if
        not yet done."""
        member, done = self.fleet.cleanup_member(cluster)
        if member is None:
            return done
        ns, name = key
        selector = service_selector(name)
        deployments = paths.collection(*DEPLOYMENTS, ns)
        try:
            await member.client.delete(deployments, labelSelector=selector)
            await member.client.delete_if_present(f"{paths.services(ns)}/{name}")
            for revision in get_args(Revision):
                for copy in (model_secret_name, request_log_secret_name):
                    await member.client.delete_if_present(paths.secret(ns, copy(name, revision)))
            for secret in (tls_secret_name(name), auth_tokens_secret_name(name)):
                await member.client.delete_if_present(paths.secret(ns, secret))
            left = await member.client.get(deployments, labelSelector=selector)
        except ApiError as exc:
            log.info("cleanup of service %s/%s in %s: %s", ns, name, cluster, exc)
            return False
        for where in [w for w in applied if w[0] == cluster]:
            del applied[where]
        return all(d["metadata"].get("deletionTimestamp") for d in left.get("items", []))
