"""An in-memory Kubernetes API server for the fast test tier: a `KubeClient` without a network.

`ApiDouble` subclasses the real client and replaces only its transport (`request`, `watch`,
`text`, `close`), so `get`, `create`, `merge_patch`, `delete`, `delete_if_present`,
`create_or_get` and `version` are the product's own code. Behind it sits one API server's
state: objects by path, a resourceVersion counter, a bounded history of changes for watches.
Semantics follow the real server where the operator relies on them: 404/409 answers, merge
patch (RFC 7386) with the status subresource, generation, finalizers and deletionTimestamp,
label and field selectors, paginated lists, watches after a resourceVersion (410 when too old).

The methods that are not the client's (`put`, `edit`, `remove`, `add_node`, `bind`,
`set_phase`, ...) are the outside world: a user, the scheduler, a kubelet. They are neither
refused when the double is unreachable nor recorded in `writes`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn, cast

import yaml
from pydantic_core import from_json, to_json

from kaon.clusters.client import MERGE_PATCH, ApiError, KubeClient, Obj, WatchExpiredError
from kaon.clusters.kubeconfig import credentials

KIND_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "Namespace": "namespaces",
    "Node": "nodes",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Event": "events",
    "Deployment": "deployments",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "TrainingJob": "trainingjobs",
    "InferenceService": "inferenceservices",
    "ComputeCluster": "computeclusters",
}
PLURAL_KINDS = {plural: kind for kind, plural in KIND_PLURALS.items()}
CLUSTER_SCOPED = frozenset(
    {"namespaces", "nodes", "computeclusters", "clusterroles", "clusterrolebindings"}
)
# Typed lists of built-in groups carry no apiVersion/kind on their items; custom resources do.
BUILT_IN_GROUPS = frozenset({"", "apps", "batch", "rbac.authorization.k8s.io", "policy"})
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_OWNED = ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp")
TERMINAL_PHASES = ("Succeeded", "Failed")
POD_GRACE_S = 30
NAME_LETTERS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server draws generated suffixes from

Key = tuple[str, str, str, str]  # (apiVersion, plural, namespace or "", name)
WatchItem = tuple[str, Obj] | BaseException | None  # an event, an error to raise, or the end


def wire(value: Any) -> Any:
    """What the other side of a connection sees: a fresh copy, encoded as the client does."""
    return from_json(to_json(value))


def _copy(obj: Obj) -> Obj:
    return cast(Obj, wire(obj))


def _decoded(body: Any) -> Any:
    """A request body as the server decodes it (a string that is not JSON stays as it is)."""
    if not isinstance(body, str | bytes):
        return wire(body)
    try:
        return from_json(body)
    except ValueError:
        return body


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _not_found(what: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{what} "{name}" not found')


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# Selectors --------------------------------------------------------------------------------


def _split_requirements(selector: str) -> list[str]:
    """Comma-separated requirements; commas inside `in (a,b)` belong to the requirement."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _requirement(text: str) -> Callable[[Mapping[str, str]], bool]:
    for word, wanted in ((" notin ", False), (" in ", True)):
        if word in text:
            key, values = text.split(word, 1)
            options = {v.strip() for v in values.strip().strip("()").split(",")}
            k = key.strip()
            if wanted:
                return lambda labels: labels.get(k) in options
            return lambda labels: labels.get(k) not in options
    for op in ("!=", "==", "="):
        if op in text:
            key, value = (s.strip() for s in text.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if text.startswith("!"):
        return lambda labels: text[1:].strip() not in labels
    if not text.replace("/", "").replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise _bad_request(f"unable to parse requirement: {text!r}")
    return lambda labels: text in labels


def label_selector(selector: str) -> Callable[[Obj], bool]:
    """A `labelSelector` as the API server reads it: =, ==, !=, in, notin, exists, !exists."""
    requirements = [_requirement(r) for r in _split_requirements(selector)]

    def matches(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r(labels) for r in requirements)

    return matches


def field_selector(selector: str) -> Callable[[Obj], bool]:
    """A `fieldSelector` of dotted paths with =, == or != (e.g. spec.nodeName=n1)."""
    tests: list[tuple[list[str], str, bool]] = []
    for req in _split_requirements(selector):
        op = next((o for o in ("!=", "==", "=") if o in req), None)
        if op is None:
            raise _bad_request(f"invalid field selector: {req!r}")
        path, value = (s.strip() for s in req.split(op, 1))
        tests.append((path.split("."), value, op != "!="))

    def lookup(obj: Obj, path: list[str]) -> str:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return "" if value is None else str(value)

    return lambda obj: all((lookup(obj, p) == v) is eq for p, v, eq in tests)


def _selection(params: Mapping[str, str]) -> Callable[[Obj], bool]:
    labels = label_selector(params.get("labelSelector", ""))
    fields = field_selector(params.get("fieldSelector", ""))
    return lambda obj: labels(obj) and fields(obj)


# Paths ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    api_version: str  # "v1" for the core group, "group/version" otherwise
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    @property
    def namespaced(self) -> bool:
        return self.plural not in CLUSTER_SCOPED

    @property
    def kind(self) -> str:
        return PLURAL_KINDS.get(self.plural) or self.plural.removesuffix("s").capitalize()

    @property
    def qualified(self) -> str:
        """How the API server names the resource in messages: `pods`, `trainingjobs.kaon.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Target:
    resource: Resource
    namespace: str | None  # None: cluster-scoped, or a namespaced resource across namespaces
    name: str | None  # None: the collection
    subresource: str | None = None

    def key(self, name: str | None = None) -> Key:
        return (
            self.resource.api_version,
            self.resource.plural,
            self.namespace or "",
            name or self.name or "",
        )


def parse_path(path: str) -> Target:
    """/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]] or /apis/GROUP/VERSION/..."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
    namespace = None
    # namespaces/NS/PLURAL...: a namespaced path; namespaces/NS[/status]: the Namespace itself.
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
    resource = Resource(api_version, rest[0])
    if namespace and not resource.namespaced:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
    name = rest[1] if len(rest) > 1 else None
    return Target(resource, namespace, name, rest[2] if len(rest) > 2 else None)


def path_of(obj: Obj) -> str:
    """The REST path of an object, from its apiVersion, kind, namespace and name."""
    kind = obj["kind"]
    plural = KIND_PLURALS.get(kind) or f"{kind.lower()}s"
    resource = Resource(obj["apiVersion"], plural)
    meta = obj["metadata"]
    ns = f"/namespaces/{meta.get('namespace') or 'default'}" if resource.namespaced else ""
    return f"{resource.prefix}{ns}/{plural}/{meta['name']}"


# The server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    rv: int
    key: Key
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


class Request(NamedTuple):
    method: str  # GET, POST, PATCH, PUT, DELETE, WATCH
    path: str
    params: dict[str, str]
    body: Any


def _in_collection(target: Target, key: Key) -> bool:
    api_version, plural, ns, _ = key
    r = target.resource
    same = (api_version, plural) == (r.api_version, r.plural)
    return same and (target.namespace is None or target.namespace == ns)


@dataclass(eq=False)
class _Watch:
    target: Target
    selected: Callable[[Obj], bool]
    queue: asyncio.Queue[WatchItem] = field(default_factory=asyncio.Queue)

    def offer(self, change: Change) -> None:
        """Queue the change as this watch's selection sees it (label changes move objects in
        and out of a filtered watch as ADDED and DELETED, as on the real server)."""
        if not _in_collection(self.target, change.key):
            return
        now = self.selected(change.obj)
        before = change.old is not None and self.selected(change.old)
        if change.type == "MODIFIED" and now != before:
            kind = "ADDED" if now else "DELETED"
        else:
            kind = change.type
        if now or (before and kind == "DELETED"):
            self.queue.put_nowait((kind, wire(change.obj)))


_SERVERS: weakref.WeakValueDictionary[str, ApiDouble] = weakref.WeakValueDictionary()
_SERIAL = itertools.count(1)


def connect(kubeconfig: Mapping[str, Any], max_connections: int = 64) -> ApiDouble:
    """A stand-in for `KubeClient(kubeconfig)`: the double serving that kubeconfig's server.

    The kubeconfig is read by the real `credentials`, so a broken one raises as it would in
    production; a server no double serves answers like a host that does not exist.
    """
    server = credentials(kubeconfig).server
    found = _SERVERS.get(server)
    if found is None:
        found = ApiDouble(server=server)
        found.unreachable = True
    return found


class ApiDouble(KubeClient):
    """One API server in memory, and a client of it. Several can exist at once."""

    def __init__(
        self,
        name: str = "cluster",
        *,
        server: str | None = None,
        wall: Callable[[], float] = time.time,
        history: int = 1000,
        graceful_pods: bool = False,
        enforce_namespaces: bool = True,
        git_version: str = "v1.31.0",
    ) -> None:
        # The real __init__ reads a kubeconfig and prepares a network session: neither exists.
        self.server = server or f"http://{name}-{next(_SERIAL)}.apidouble.invalid"
        self._session = None
        self.name = name
        self.wall = wall
        self.graceful_pods = graceful_pods
        self.enforce_namespaces = enforce_namespaces
        self.git_version = git_version
        self.refuse_credentials = False
        self.texts: dict[str, str] = {"/metrics": "# HELP apidouble_up 1\napidouble_up 1\n"}
        self.writes: list[tuple[str, str]] = []  # (method, path) of each write that arrived
        self.requests: list[Request] = []  # every request that arrived, reads and watches too
        self.closed = 0  # how often close() was called
        self._unreachable = False
        self._faults: list[tuple[str, str, ApiError, list[int]]] = []
        self._objects: dict[Key, Obj] = {}
        self._rv = 0
        self._history: deque[Change] = deque(maxlen=history)
        self._watches: set[_Watch] = set()
        self._held: list[Change] | None = None  # changes open watches have not been sent yet
        self._names = itertools.count(1)
        self._pod_ips: dict[tuple[str, str], str] = {}  # the kubelet's address of each pod
        _SERVERS[self.server] = self
        for ns in INITIAL_NAMESPACES:
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # Fault injection and inspection ---------------------------------------------------------

    @property
    def unreachable(self) -> bool:
        return self._unreachable

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        """While True every call fails with status 0 and open watches break, as when the
        connection to the server is lost."""
        self._unreachable = value
        if value:
            for w in self._watches:
                w.queue.put_nowait(self._unreachable_error())

    def fail(self, method: str, path_prefix: str, error: ApiError, times: int = 1) -> None:
        """The next `times` requests of `method` to a path starting with `path_prefix` are
        answered with `error` instead (e.g. a 403 quota refusal)."""
        self._faults.append((method, path_prefix, error, [times]))

    def kubeconfig(self, token: str = "apidouble") -> dict[str, Any]:
        """A kubeconfig naming this double's server, for `connect` (e.g. in a Secret)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": self.name,
            "clusters": [{"name": self.name, "cluster": {"server": self.server}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": "u"}}],
            "users": [{"name": "u", "user": {"token": token}}],
        }

    def kubeconfig_secret(self, namespace: str, name: str, key: str = "kubeconfig") -> Obj:
        """A Secret holding `kubeconfig()` under `key`, to `put` on the hub for a
        ComputeCluster's kubeconfigSecretRef."""
        data = base64.b64encode(yaml.safe_dump(self.kubeconfig()).encode()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {key: data},
        }

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    @property
    def watching(self) -> int:
        """How many watches are open."""
        return len(self._watches)

    def hold_watches(self) -> None:
        """Open watches lag: changes are stored (and listed) but sent only on release."""
        if self._held is None:
            self._held = []

    def release_watches(self) -> None:
        """Send open watches every change held back, in order."""
        held, self._held = self._held or [], None
        for change in held:
            for w in self._watches:
                w.offer(change)

    @property
    def delivered(self) -> bool:
        """Every open watch has handed its watcher all changes so far (its queue is empty)."""
        return all(w.queue.empty() for w in self._watches)

    def end_watches(self) -> None:
        """Close every open watch normally, as the server does when timeoutSeconds passes."""
        for w in self._watches:
            w.queue.put_nowait(None)

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to every open watch."""
        for w in self._watches:
            r = w.target.resource
            meta = {"resourceVersion": self.resource_version}
            obj = {"apiVersion": r.api_version, "kind": r.kind, "metadata": meta}
            w.queue.put_nowait(("BOOKMARK", obj))

    def compact(self) -> None:
        """Forget the change history: a watch from any resourceVersion before the current one
        gets 410 (one from the current version is still served, as after etcd compaction)."""
        self._history.clear()

    # The client's transport -----------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        answer: bool = True,
    ) -> Obj:
        await asyncio.sleep(0)  # a real request always lets other tasks run
        query = dict(params or {})
        sent = _decoded(body)
        self._arrive(method, path, query, sent)
        if method == "GET" and path == "/version":
            return {"major": "1", "gitVersion": self.git_version, "platform": "apidouble"}
        result = self._serve(method, parse_path(path), query, sent, content_type)
        return wire(result) if answer else {}

    async def text(self, path: str) -> str:
        await asyncio.sleep(0)
        self._arrive("GET", path, {}, None)
        if path not in self.texts:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return self.texts[path]

    async def watch(
        self,
        path: str,
        resource_version: str,
        params: Mapping[str, str] | None = None,
        timeout_s: int = 300,
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        await asyncio.sleep(0)
        query = dict(params or {})
        self._arrive("WATCH", path, {**query, "resourceVersion": resource_version}, None)
        target = parse_path(path)
        if target.name is not None:
            raise ApiError(405, "MethodNotAllowed", "watch a collection, not one object")
        watch = _Watch(target, _selection(query))
        for change in self._backlog(target, resource_version):
            watch.offer(change)
        self._watches.add(watch)  # in the same step as the backlog: no change falls between
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await watch.queue.get()
                except TimeoutError:
                    return
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._watches.discard(watch)

    async def close(self) -> None:
        self.closed += 1

    @property
    def session(self) -> NoReturn:
        raise AssertionError("an ApiDouble has no network session: a call bypassed it")

    def _unreachable_error(self) -> ApiError:
        return ApiError(0, "Unreachable", f"{self.server}: Cannot connect to host")

    def _arrive(self, method: str, path: str, params: dict[str, str], body: Any) -> None:
        if self._unreachable:
            raise self._unreachable_error()
        if self.refuse_credentials:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        self.requests.append(Request(method, path, params, body))
        if method not in ("GET", "WATCH"):
            self.writes.append((method, path))
        for fault in self._faults:
            fault_method, prefix, error, left = fault
            if fault_method == method and path.startswith(prefix) and left[0] > 0:
                left[0] -= 1
                if not left[0]:
                    self._faults.remove(fault)
                raise error

    def _serve(
        self, method: str, target: Target, params: dict[str, str], body: Any, content_type: str
    ) -> Obj:
        one = target.name is not None
        if method == "GET":
            return self._get(target) if one else self._list(target, params)
        if method == "POST" and not one:
            return self._create(target, body, keep_status=False)
        if method == "PATCH" and one:
            if content_type != MERGE_PATCH:
                raise ApiError(415, "UnsupportedMediaType", f"{content_type} is not supported")
            return self._patch(target, body, replace=False)
        if method == "PUT" and one:
            return self._patch(target, body, replace=True)
        if method == "DELETE":
            if one:
                return self._delete(target, params)
            return self._delete_collection(target, params)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on this path")

    # Reads ----------------------------------------------------------------------------------

    def _stored(self, target: Target) -> Obj:
        if target.subresource not in (None, "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        obj = self._objects.get(target.key())
        if obj is None:
            raise _not_found(target.resource.qualified, target.name or "")
        return obj

    def _get(self, target: Target) -> Obj:
        return self._stored(target)

    def _selected(self, target: Target, params: Mapping[str, str]) -> list[tuple[Key, Obj]]:
        selected = _selection(params)
        found = [
            (k, o) for k, o in self._objects.items() if _in_collection(target, k) and selected(o)
        ]
        return sorted(found, key=lambda item: item[0])  # by key, as the store lists them

    def _list(self, target: Target, params: Mapping[str, str]) -> Obj:
        found = self._selected(target, params)
        rv = self._rv
        if params.get("continue"):
            token = from_json(base64.b64decode(params["continue"]))
            rv, after = int(token["rv"]), tuple(token["after"])
            found = [(k, o) for k, o in found if k > after]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(params.get("limit") or 0)
        if limit and len(found) > limit:
            found = found[:limit]
            token = {"rv": rv, "after": list(found[-1][0])}
            meta["continue"] = base64.b64encode(to_json(token)).decode()
        r = target.resource
        strip = r.group in BUILT_IN_GROUPS
        items = [
            {k: v for k, v in o.items() if k not in ("apiVersion", "kind")} if strip else o
            for _, o in found
        ]
        return {
            "apiVersion": r.api_version,
            "kind": f"{r.kind}List",
            "metadata": meta,
            "items": items,
        }

    def _backlog(self, target: Target, resource_version: str) -> list[Change]:
        if resource_version in ("", "0"):  # "any": the current state as ADDED events
            return [Change(self._rv, k, "ADDED", o, None) for k, o in self._selected(target, {})]
        try:
            since = int(resource_version)
        except ValueError:
            raise _bad_request(f"invalid resourceVersion {resource_version!r}") from None
        oldest = self._history[0].rv if self._history else self._rv + 1
        if since < self._rv and since < oldest - 1:
            raise WatchExpiredError(f"too old resource version: {since} ({oldest - 1})")
        return [c for c in self._history if c.rv > since]

    # Writes ---------------------------------------------------------------------------------

    def _now(self) -> str:
        return datetime.fromtimestamp(self.wall(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _commit(self, key: Key, kind: str, obj: Obj, old: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        change = Change(self._rv, key, kind, obj, old)
        self._history.append(change)
        if self._held is not None:
            self._held.append(change)
        else:
            for w in self._watches:
                w.offer(change)
        if kind == "DELETED" and key[2]:
            self._reap_namespace(key[2])
        return obj

    def _create(self, target: Target, body: Any, keep_status: bool) -> Obj:
        r = target.resource
        if target.namespace is None and r.namespaced:
            raise ApiError(405, "MethodNotAllowed", f"create {r.plural} in a namespace")
        if not isinstance(body, dict):
            raise _bad_request("the body of a create must be an object")
        obj = dict(body)
        if obj.setdefault("apiVersion", r.api_version) != r.api_version or (
            obj.setdefault("kind", r.kind) != r.kind
        ):
            raise _bad_request(f"the object is not a {r.api_version} {r.kind}")
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        if target.namespace:
            if meta.setdefault("namespace", target.namespace) != target.namespace:
                raise _bad_request("the namespace of the object does not match the request")
            self._admit_into(target.namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + self._suffix()
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = target.key(meta["name"])
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{r.qualified} "{meta["name"]}" already exists')
        for owned in SERVER_OWNED:
            meta.pop(owned, None)
        meta.update(uid=self._uid(), creationTimestamp=self._now(), generation=1)
        if not keep_status:
            obj.pop("status", None)
        if r.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        if r.plural == "namespaces":
            obj.setdefault("status", {}).setdefault("phase", "Active")
        return self._commit(key, "ADDED", obj, None)

    def _admit_into(self, namespace: str) -> None:
        if not self.enforce_namespaces:
            return
        ns = self._objects.get(("v1", "namespaces", "", namespace))
        if ns is None:
            raise _not_found("namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} "
                "because it is being terminated",
            )

    def _suffix(self) -> str:
        n, letters = next(self._names), ""
        for _ in range(5):
            n, digit = divmod(n, len(NAME_LETTERS))
            letters += NAME_LETTERS[digit]
        return letters

    def _uid(self) -> str:
        return f"00000000-0000-4000-8000-{next(self._names):012d}"

    def _patch(self, target: Target, body: Any, replace: bool) -> Obj:
        old = self._stored(target)
        if not isinstance(body, dict):
            raise _bad_request("the patch must be an object")
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and str(wanted_rv) != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {target.resource.qualified} "{target.name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        if target.subresource == "status":
            new = dict(wire(old))
            if replace:
                new["status"] = body.get("status")
            elif "status" in body:
                new = json_merge_patch(new, {"status": body["status"]})
            return self._update(target.key(), old, new, check_finalizers=False)
        merged = wire(body) if replace else json_merge_patch(wire(old), body)
        merged.pop("status", None)
        if "status" in old:
            merged["status"] = wire(old["status"])
        return self._update(target.key(), old, merged, check_finalizers=True)

    def _update(self, key: Key, old: Obj, new: Obj, check_finalizers: bool) -> Obj:
        """Store `new` in place of `old`, keeping what only the server sets; no event when
        nothing changed; the object goes away when it is deleted and its finalizers are gone."""
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        meta = new["metadata"] = dict(new.get("metadata") or {})
        for owned in (*SERVER_OWNED, "name", "namespace", "deletionGracePeriodSeconds"):
            meta.pop(owned, None)
            if owned in old["metadata"]:
                meta[owned] = old["metadata"][owned]
        if check_finalizers and meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                raise ApiError(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the "
                    "object is being deleted",
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)

        def body_of(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        if body_of(new) != body_of(old):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return old
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not self._lingers(new):
            return self._commit(key, "DELETED", new, old)
        return self._commit(key, "MODIFIED", new, old)

    def _lingers(self, pod: Obj) -> bool:
        """A pod deleted gracefully stays until its kubelet has stopped it."""
        grace = pod["metadata"].get("deletionGracePeriodSeconds", 0)
        return pod["kind"] == "Pod" and bool(grace) and not pod["metadata"].get("finalizers")

    def _delete(self, target: Target, params: Mapping[str, str]) -> Obj:
        old = self._stored(target)
        key = target.key()
        meta = old["metadata"]
        if target.resource.plural == "namespaces":
            return self._delete_namespace(old)
        graceful = (
            self.graceful_pods
            and target.resource.plural == "pods"
            and (old.get("spec") or {}).get("nodeName")
            and (old.get("status") or {}).get("phase") not in TERMINAL_PHASES
            and params.get("gracePeriodSeconds", str(POD_GRACE_S)) != "0"
        )
        if not meta.get("finalizers") and not graceful:
            return self._commit(key, "DELETED", dict(wire(old)), old)
        if meta.get("deletionTimestamp"):
            return old
        new = wire(old)
        new["metadata"]["deletionTimestamp"] = self._now()
        new["metadata"]["deletionGracePeriodSeconds"] = POD_GRACE_S if graceful else 0
        return self._commit(key, "MODIFIED", new, old)

    def _delete_collection(self, target: Target, params: Mapping[str, str]) -> Obj:
        if target.namespace is None and target.resource.namespaced:
            raise ApiError(405, "MethodNotAllowed", "delete a collection within a namespace")
        deleted = [
            self._delete(Target(target.resource, k[2] or None, k[3]), params)
            for k, _ in self._selected(target, params)
        ]
        r = target.resource
        meta = {"resourceVersion": self.resource_version}
        return {
            "apiVersion": r.api_version,
            "kind": f"{r.kind}List",
            "metadata": meta,
            "items": deleted,
        }

    def _delete_namespace(self, ns: Obj) -> Obj:
        name = ns["metadata"]["name"]
        if not ns["metadata"].get("deletionTimestamp"):
            new = wire(ns)
            new["metadata"]["deletionTimestamp"] = self._now()
            new["status"] = {"phase": "Terminating"}
            ns = self._commit(("v1", "namespaces", "", name), "MODIFIED", new, ns)
        for key in [k for k in self._objects if k[2] == name]:
            if key in self._objects:
                r = Resource(key[0], key[1])
                self._delete(Target(r, name, key[3]), {"gracePeriodSeconds": "0"})
        self._reap_namespace(name)
        return ns

    def _reap_namespace(self, name: str) -> None:
        key = ("v1", "namespaces", "", name)
        ns = self._objects.get(key)
        empty = not any(k[2] == name for k in self._objects)
        if ns is not None and ns["metadata"].get("deletionTimestamp") and empty:
            self._commit(key, "DELETED", wire(ns), ns)

    # The outside world: users, the scheduler, kubelets ------------------------------------------

    def put(self, obj: Obj) -> Obj:
        """Create or replace an object as given, status included (seeding a test's world);
        its namespace is created if missing. Returns the stored object."""
        path = path_of(obj)
        target = parse_path(path)
        if target.namespace and ("v1", "namespaces", "", target.namespace) not in self._objects:
            self.put(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target.namespace}}
            )
        body = wire(obj)
        body["metadata"].setdefault("namespace", target.namespace)
        if not target.namespace:
            body["metadata"].pop("namespace", None)
        old = self._objects.get(target.key())
        if old is None:
            collection = Target(target.resource, target.namespace, None)
            return _copy(self._create(collection, body, keep_status=True))
        return _copy(self._update(target.key(), old, body, check_finalizers=False))

    def peek(self, path: str) -> Obj | None:
        """The stored object at `path` (a copy), or None."""
        obj = self._objects.get(parse_path(path).key())
        return None if obj is None else dict(wire(obj))

    def items(self, path: str, selector: str = "") -> list[Obj]:
        """The stored objects of a collection path (copies), optionally by label selector."""
        params = {"labelSelector": selector} if selector else {}
        return [wire(o) for _, o in self._selected(parse_path(path), params)]

    def edit(self, path: str, patch: Obj) -> Obj:
        """Merge-patch an object as a user or a controller with every right would: metadata,
        spec and status alike; removing the last finalizer of a deleted object removes it."""
        target = parse_path(path)
        old = self._stored(target)
        new = json_merge_patch(wire(old), patch)
        return _copy(self._update(target.key(), old, new, check_finalizers=False))

    def remove(self, path: str, force: bool = False) -> None:
        """Delete as `kubectl delete` would (finalizers hold it); `force` removes it at once."""
        target = parse_path(path)
        if force:
            old = self._stored(target)
            self._commit(target.key(), "DELETED", wire(old), old)
        else:
            self._delete(target, {})

    def finish_pod_deletions(self) -> list[str]:
        """Kubelets finish stopping every pod deleted gracefully; the paths of those removed."""
        done = []
        for key, pod in list(self._objects.items()):
            meta = pod["metadata"]
            if key[1] == "pods" and meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._commit(key, "DELETED", wire(pod), pod)
                done.append(path_of(pod))
        return done

    def add_node(
        self,
        name: str,
        *,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: int = 0,
        pods: int = 110,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[Obj] = (),
        ready: bool = True,
        unschedulable: bool = False,
    ) -> Obj:
        """A node as its kubelet registers it."""
        allocatable = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        spec: Obj = {"taints": list(taints)} if taints else {}
        if unschedulable:
            spec["unschedulable"] = True
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": spec,
                "status": {
                    "capacity": dict(allocatable),
                    "allocatable": allocatable,
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }
        )

    def bind(self, namespace: str, pod: str, node: str) -> Obj:
        """The scheduler binds a pod to a node."""
        return self.edit(f"/api/v1/namespaces/{namespace}/pods/{pod}", {"spec": {"nodeName": node}})

    def set_phase(
        self,
        namespace: str,
        pod: str,
        phase: str,
        *,
        reason: str = "",
        message: str = "",
        exit_code: int | None = None,
        termination_message: str = "",
        conditions: Iterable[Obj] | None = None,
    ) -> Obj:
        """The kubelet reports a pod's phase: Running (Ready), Succeeded (exit 0) or Failed
        (exit 1 unless given), with the matching container state (and, for a terminal phase,
        the container's termination message)."""
        status: Obj = {"phase": phase, "reason": reason or None, "message": message or None}
        if phase == "Running":
            status["conditions"] = [{"type": "Ready", "status": "True"}]
            status["containerStatuses"] = [{"name": "main", "state": {"running": {}}}]
            status["podIP"] = self._pod_ips.setdefault(
                (namespace, pod), f"10.244.0.{len(self._pod_ips) % 250 + 2}"
            )
        if phase in TERMINAL_PHASES:
            code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
            if termination_message:
                terminated["message"] = termination_message
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            status["containerStatuses"] = [{"name": "main", "state": {"terminated": terminated}}]
        if conditions is not None:
            status["conditions"] = list(conditions)
        return self.edit(f"/api/v1/namespaces/{namespace}/pods/{pod}", {"status": status})
