"""The in-memory API double answers as a real API server does where the operator relies on it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import yaml

from kaon.api.names import JOB_LABEL, MANAGED_BY, MANAGER
from kaon.clusters import informer, paths
from kaon.clusters.client import ApiError, Obj, WatchExpiredError
from kaon.clusters.kubeconfig import KubeconfigError
from kaon.clusters.member import Member

from apidouble import ApiDouble, connect, json_merge_patch, label_selector

JOBS = "/apis/kaon.dev/v1alpha1/namespaces/default/trainingjobs"


def on_loop(scenario: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A plain test (fixtures allowed) that runs `scenario` on a fresh event loop."""

    @functools.wraps(scenario)
    def test(*args: Any, **kwargs: Any) -> None:
        asyncio.run(scenario(*args, **kwargs))

    return test


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until `condition` holds (every task here is in memory: no waiting)."""
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def pod(name: str, ns: str = "default", **labels: str) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


def job(name: str, finalizers: tuple[str, ...] = ()) -> Obj:
    meta: Obj = {"name": name, "namespace": "default"}
    if finalizers:
        meta["finalizers"] = list(finalizers)
    return {
        "apiVersion": "kaon.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": meta,
        "spec": {"workers": 2},
    }


async def errors_of(call: Coroutine[Any, Any, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


# Create, read, delete -------------------------------------------------------------------------


@on_loop
async def test_create_assigns_server_fields_and_get_reads_them_back() -> None:
    api = ApiDouble(wall=lambda: 1_700_000_000.0)
    created = await api.create(paths.pods("default"), pod("p1"))
    meta = created["metadata"]
    assert created["apiVersion"] == "v1" and created["kind"] == "Pod"
    assert meta["uid"] and meta["generation"] == 1
    assert meta["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert created["status"] == {"phase": "Pending"}
    got = await api.get(paths.pod("default", "p1"))
    assert got == created
    got["metadata"]["labels"]["changed"] = "by the caller"
    assert "changed" not in (await api.get(paths.pod("default", "p1")))["metadata"]["labels"]


@on_loop
async def test_status_given_on_create_is_dropped() -> None:
    api = ApiDouble()
    body = {**job("j1"), "status": {"phase": "Succeeded"}}
    created = await api.create(JOBS, body)
    assert "status" not in created


@on_loop
async def test_missing_objects_answer_404_and_existing_names_409() -> None:
    api = ApiDouble()
    missing = await errors_of(api.get(paths.pod("default", "nope")))
    assert missing.not_found and missing.reason == "NotFound"
    await api.create(paths.pods("default"), pod("p1"))
    taken = await errors_of(api.create(paths.pods("default"), pod("p1")))
    assert taken.conflict and taken.reason == "AlreadyExists"
    assert (await errors_of(api.merge_patch(paths.pod("default", "nope"), {}))).not_found
    assert (await errors_of(api.delete(paths.pod("default", "nope")))).not_found


@on_loop
async def test_delete_if_present_and_create_or_get_are_idempotent() -> None:
    api = ApiDouble()
    first = await api.create_or_get(paths.pods("default"), pod("p1"))
    again = await api.create_or_get(paths.pods("default"), pod("p1", changed="yes"))
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert "changed" not in again["metadata"]["labels"]
    assert await api.delete_if_present(paths.pod("default", "p1")) is True
    assert await api.delete_if_present(paths.pod("default", "p1")) is False
    assert api.peek(paths.pod("default", "p1")) is None


@on_loop
async def test_generate_name_gives_distinct_names_with_the_prefix() -> None:
    api = ApiDouble()
    body = {"metadata": {"generateName": "job1."}, "reason": "Started"}
    one = await api.create(paths.events("default"), body)
    two = await api.create(paths.events("default"), body)
    names = {one["metadata"]["name"], two["metadata"]["name"]}
    assert len(names) == 2 and all(n.startswith("job1.") and len(n) > 5 for n in names)
    assert one["kind"] == "Event" and one["metadata"]["namespace"] == "default"


@on_loop
async def test_answer_false_returns_nothing_but_creates() -> None:
    api = ApiDouble()
    assert await api.create(paths.pods("default"), pod("p1"), answer=False) == {}
    assert api.peek(paths.pod("default", "p1")) is not None


@on_loop
async def test_namespaced_objects_need_their_namespace() -> None:
    api = ApiDouble()
    absent = await errors_of(api.create(paths.pods("elsewhere"), pod("p1", ns="elsewhere")))
    assert absent.not_found and "elsewhere" in absent.message
    await api.create(paths.namespaces(), {"metadata": {"name": "team"}})
    await api.create(paths.pods("team"), pod("p1", ns="team"))
    assert (await api.get("/api/v1/namespaces/team"))["status"]["phase"] == "Active"


@on_loop
async def test_deleting_a_namespace_removes_its_objects_and_refuses_new_ones() -> None:
    api = ApiDouble()
    await api.create(paths.namespaces(), {"metadata": {"name": "team"}})
    await api.create(paths.pods("team"), pod("plain", ns="team"))
    held = {**pod("held", ns="team")}
    held["metadata"]["finalizers"] = ["example.com/hold"]
    await api.create(paths.pods("team"), held)
    await api.delete("/api/v1/namespaces/team")
    assert api.peek(paths.pod("team", "plain")) is None
    terminating = await api.get("/api/v1/namespaces/team")
    assert terminating["status"]["phase"] == "Terminating"
    refused = await errors_of(api.create(paths.pods("team"), pod("late", ns="team")))
    assert refused.status == 403
    await api.merge_patch(paths.pod("team", "held"), {"metadata": {"finalizers": None}})
    assert api.peek("/api/v1/namespaces/team") is None


# Merge patch, status, generation, concurrency --------------------------------------------------


def test_json_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    patch = {"a": {"b": None, "c": [3], "e": {"f": 1}}, "d": None, "g": 2}
    assert json_merge_patch(target, patch) == {"a": {"c": [3], "e": {"f": 1}}, "g": 2}
    assert json_merge_patch(target, [1]) == [1]
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}


@on_loop
async def test_merge_patch_ignores_status_and_bumps_generation_only_for_spec() -> None:
    api = ApiDouble()
    created = await api.create(JOBS, job("j1"))
    path = f"{JOBS}/j1"
    labelled = await api.merge_patch(path, {"metadata": {"labels": {"a": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )
    changed = await api.merge_patch(path, {"spec": {"workers": 4}, "status": {"phase": "X"}})
    assert changed["metadata"]["generation"] == 2
    assert changed["spec"] == {"workers": 4} and "status" not in changed
    assert changed["metadata"]["uid"] == created["metadata"]["uid"]


@on_loop
async def test_status_subresource_changes_only_status() -> None:
    api = ApiDouble()
    await api.create(JOBS, job("j1"))
    path = f"{JOBS}/j1"
    patched = await api.merge_patch(
        path + "/status", {"status": {"phase": "Running"}, "spec": {"workers": 9}}
    )
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"] == {"workers": 2} and patched["metadata"]["generation"] == 1
    merged = await api.merge_patch(path + "/status", {"status": {"message": "ok"}})
    assert merged["status"] == {"phase": "Running", "message": "ok"}


@on_loop
async def test_an_unchanged_patch_makes_no_new_version() -> None:
    api = ApiDouble()
    await api.create(JOBS, job("j1"))
    before = api.resource_version
    same = await api.merge_patch(f"{JOBS}/j1", {"spec": {"workers": 2}})
    assert api.resource_version == before == same["metadata"]["resourceVersion"]
    assert api.writes[-1] == ("PATCH", f"{JOBS}/j1")  # the write arrived all the same


@on_loop
async def test_a_stale_resource_version_in_a_patch_is_a_conflict() -> None:
    api = ApiDouble()
    created = await api.create(JOBS, job("j1"))
    rv = created["metadata"]["resourceVersion"]
    path = f"{JOBS}/j1"
    ok = await api.merge_patch(path, {"metadata": {"finalizers": ["f"], "resourceVersion": rv}})
    assert ok["metadata"]["finalizers"] == ["f"]
    stale = await errors_of(
        api.merge_patch(path, {"metadata": {"finalizers": [], "resourceVersion": rv}})
    )
    assert stale.conflict and "has been modified" in stale.message
    assert (await api.get(path))["metadata"]["finalizers"] == ["f"]


# Finalizers and deletion ---------------------------------------------------------------------


@on_loop
async def test_finalizers_hold_a_deleted_object_until_the_last_is_removed() -> None:
    api = ApiDouble()
    await api.create(JOBS, job("j1", finalizers=("a", "b")))
    path = f"{JOBS}/j1"
    await api.delete(path)
    held = await api.get(path)
    assert held["metadata"]["deletionTimestamp"]
    again = await api.delete(path)  # a second delete changes nothing
    assert again["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]
    added = await errors_of(api.merge_patch(path, {"metadata": {"finalizers": ["a", "b", "c"]}}))
    assert added.status == 422
    one_left = await api.merge_patch(path, {"metadata": {"finalizers": ["b"]}})
    assert one_left["metadata"]["finalizers"] == ["b"]
    await api.merge_patch(path, {"metadata": {"finalizers": []}})
    assert (await errors_of(api.get(path))).not_found


@on_loop
async def test_bound_pods_deleted_gracefully_linger_until_their_kubelet_is_done() -> None:
    api = ApiDouble(graceful_pods=True)
    for name in ("bound", "forced", "unbound"):
        await api.create(paths.pods("default"), pod(name))
    api.bind("default", "bound", "n1")
    api.bind("default", "forced", "n1")
    await api.delete(paths.pod("default", "bound"))
    await api.delete(paths.pod("default", "forced"), gracePeriodSeconds="0")
    await api.delete(paths.pod("default", "unbound"))
    left = await api.get(paths.pods("default"))
    assert [p["metadata"]["name"] for p in left["items"]] == ["bound"]
    assert left["items"][0]["metadata"]["deletionTimestamp"]
    assert api.finish_pod_deletions() == [paths.pod("default", "bound")]
    assert (await api.get(paths.pods("default")))["items"] == []


# Lists and selectors -------------------------------------------------------------------------


def test_label_selectors_read_every_operator() -> None:
    labelled = {"metadata": {"labels": {"app": "web", "tier": "front"}}}
    for selector, expected in [
        ("app=web", True),
        ("app==web,tier=front", True),
        ("app=web,tier=back", False),
        ("app!=web", False),
        ("tier in (back, front)", True),
        ("tier notin (back,front)", False),
        ("app", True),
        ("!app", False),
        ("!missing,app in (web)", True),
        ("", True),
    ]:
        assert label_selector(selector)(labelled) is expected, selector


@on_loop
async def test_lists_select_by_label_and_span_namespaces_on_the_cluster_path() -> None:
    api = ApiDouble()
    await api.create(paths.namespaces(), {"metadata": {"name": "other"}})
    await api.create(paths.pods("default"), pod("a", **{MANAGED_BY: MANAGER, JOB_LABEL: "j1"}))
    await api.create(paths.pods("default"), pod("b", **{MANAGED_BY: MANAGER, JOB_LABEL: "j2"}))
    await api.create(
        paths.pods("other"), pod("c", ns="other", **{MANAGED_BY: MANAGER, JOB_LABEL: "j1"})
    )
    selector = f"{MANAGED_BY}={MANAGER},{JOB_LABEL}=j1"
    here = await api.get(paths.pods("default"), labelSelector=selector)
    everywhere = await api.get(paths.pods(), labelSelector=selector)
    assert [p["metadata"]["name"] for p in here["items"]] == ["a"]
    assert [p["metadata"]["name"] for p in everywhere["items"]] == ["a", "c"]
    assert everywhere["metadata"]["resourceVersion"] == api.resource_version
    assert "kind" not in here["items"][0]  # typed lists of built-in kinds carry no kind
    named = await api.get(paths.pods(), fieldSelector="metadata.namespace=other")
    assert [p["metadata"]["name"] for p in named["items"]] == ["c"]


@on_loop
async def test_custom_resource_lists_carry_kind_on_items() -> None:
    api = ApiDouble()
    await api.create(JOBS, job("j1"))
    listed = await api.get(JOBS)
    assert listed["kind"] == "TrainingJobList"
    assert listed["items"][0]["kind"] == "TrainingJob"


@on_loop
async def test_delete_by_label_selector_removes_only_the_matches() -> None:
    api = ApiDouble()
    await api.create(paths.pods("default"), pod("a", job="j1", attempt="0"))
    await api.create(paths.pods("default"), pod("b", job="j1", attempt="1"))
    await api.create(paths.pods("default"), pod("c", job="j2", attempt="0"))
    gone = await api.delete(paths.pods("default"), labelSelector="job=j1,attempt=0")
    assert [p["metadata"]["name"] for p in gone["items"]] == ["a"]
    left = await api.get(paths.pods("default"))
    assert [p["metadata"]["name"] for p in left["items"]] == ["b", "c"]


@on_loop
async def test_lists_page_with_limit_and_continue(monkeypatch: pytest.MonkeyPatch) -> None:
    api = ApiDouble()
    for i in range(5):
        api.add_node(f"n{i}")
    first = await api.get(paths.nodes(), limit="2")
    assert len(first["items"]) == 2 and first["metadata"]["continue"]
    monkeypatch.setattr(informer, "PAGE_SIZE", 2)
    items, rv = await informer.list_all(api, paths.nodes(), {})
    assert len(api.requests) == 4  # the first page above, then three pages of two
    assert [n["metadata"]["name"] for n in items] == [f"n{i}" for i in range(5)]
    assert rv == first["metadata"]["resourceVersion"]


# Watches -------------------------------------------------------------------------------------


async def collect(api: ApiDouble, path: str, rv: str, count: int, **params: str) -> list[Any]:
    seen: list[Any] = []
    # The watch's own timeout only bounds a failing test; a passing one never reaches it.
    async with contextlib.aclosing(api.watch(path, rv, params, timeout_s=5)) as events:
        async for kind, obj in events:
            meta = obj["metadata"]
            seen.append((kind, meta.get("name"), meta["resourceVersion"]))
            if len(seen) == count:
                break
    return seen


@on_loop
async def test_a_watch_delivers_the_changes_after_its_resource_version_in_order() -> None:
    api = ApiDouble()
    first = await api.create(paths.pods("default"), pod("a"))
    start = first["metadata"]["resourceVersion"]
    await api.create(paths.pods("default"), pod("b"))
    await api.merge_patch(paths.pod("default", "a"), {"metadata": {"labels": {"x": "1"}}})
    await api.delete(paths.pod("default", "b"))
    seen = await collect(api, paths.pods("default"), start, 3)
    assert [(k, n) for k, n, _ in seen] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(rv) for _, _, rv in seen]
    assert versions == sorted(versions) and versions[-1] == int(api.resource_version)


@on_loop
async def test_a_watch_sees_changes_made_while_it_is_open() -> None:
    api = ApiDouble()
    watching = asyncio.create_task(collect(api, paths.pods(), api.resource_version, 2))
    await until(lambda: api.watching == 1, "the watch is open")
    api.put({"apiVersion": "v1", "kind": "Pod", **pod("a")})
    api.set_phase("default", "a", "Running")
    seen = await watching
    assert [(k, n) for k, n, _ in seen] == [("ADDED", "a"), ("MODIFIED", "a")]
    assert api.watching == 0


@on_loop
async def test_a_filtered_watch_sees_objects_enter_and_leave_its_selection() -> None:
    api = ApiDouble()
    start = api.resource_version
    await api.create(paths.pods("default"), pod("a", job="j1"))
    await api.create(paths.pods("default"), pod("other", job="j2"))
    await api.merge_patch(paths.pod("default", "a"), {"metadata": {"labels": {"job": "j3"}}})
    await api.merge_patch(paths.pod("default", "other"), {"metadata": {"labels": {"job": "j1"}}})
    seen = await collect(api, paths.pods("default"), start, 3, labelSelector="job=j1")
    assert [(k, n) for k, n, _ in seen] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
        ("ADDED", "other"),
    ]


@on_loop
async def test_a_watch_from_version_zero_starts_with_the_current_objects() -> None:
    api = ApiDouble()
    api.add_node("n1")
    api.add_node("n2")
    seen = await collect(api, paths.nodes(), "0", 2)
    assert [(k, n) for k, n, _ in seen] == [("ADDED", "n1"), ("ADDED", "n2")]


@on_loop
async def test_a_watch_from_a_forgotten_version_expires() -> None:
    api = ApiDouble(history=2)
    start = api.resource_version
    for i in range(3):
        api.add_node(f"n{i}")
    with pytest.raises(WatchExpiredError):
        await collect(api, paths.nodes(), start, 1)
    recent = await collect(api, paths.nodes(), str(int(api.resource_version) - 2), 2)
    assert [n for _, n, _ in recent] == ["n1", "n2"]
    api.compact()
    with pytest.raises(WatchExpiredError):
        await collect(api, paths.nodes(), str(int(api.resource_version) - 1), 1)


@on_loop
async def test_end_watches_ends_them_and_unreachable_breaks_them() -> None:
    api = ApiDouble()
    ended = asyncio.create_task(collect(api, paths.nodes(), api.resource_version, 1))
    await until(lambda: api.watching == 1, "the watch is open")
    api.end_watches()
    assert await ended == []
    broken = asyncio.create_task(collect(api, paths.nodes(), api.resource_version, 1))
    await until(lambda: api.watching == 1, "the watch is open")
    api.unreachable = True
    with pytest.raises(ApiError) as caught:
        await broken
    assert caught.value.status == 0


@on_loop
async def test_a_bookmark_carries_the_current_resource_version() -> None:
    api = ApiDouble()
    watching = asyncio.create_task(collect(api, paths.nodes(), api.resource_version, 1))
    await until(lambda: api.watching == 1, "the watch is open")
    api.bookmark()
    assert await watching == [("BOOKMARK", None, api.resource_version)]


# Faults and records --------------------------------------------------------------------------


@on_loop
async def test_an_unreachable_server_refuses_every_call_and_records_none() -> None:
    api = ApiDouble()
    api.unreachable = True
    calls = [
        api.get(paths.nodes()),
        api.create(paths.pods("default"), pod("a")),
        api.merge_patch(paths.pod("default", "a"), {}),
        api.delete(paths.pod("default", "a")),
        api.version(),
        api.text("/metrics"),
    ]
    for call in calls:
        error = await errors_of(call)
        assert error.status == 0 and error.reason == "Unreachable"
    with pytest.raises(ApiError):
        await collect(api, paths.nodes(), "0", 1)
    assert api.requests == [] and api.writes == []
    api.unreachable = False
    assert await api.version() == "v1.31.0"


@on_loop
async def test_refused_credentials_answer_401() -> None:
    api = ApiDouble()
    api.refuse_credentials = True
    error = await errors_of(api.get(paths.nodes()))
    assert error.status == 401 and error.unauthorized


@on_loop
async def test_writes_are_recorded_and_reads_are_not() -> None:
    api = ApiDouble()
    api.put({"apiVersion": "v1", "kind": "Pod", **pod("seeded")})  # the world: not recorded
    await api.get(paths.pods("default"))
    await api.create(paths.pods("default"), pod("a"))
    await api.merge_patch(paths.pod("default", "a"), {"metadata": {"labels": {"x": "1"}}})
    await api.delete(paths.pod("default", "a"))
    assert api.writes == [
        ("POST", paths.pods("default")),
        ("PATCH", paths.pod("default", "a")),
        ("DELETE", paths.pod("default", "a")),
    ]
    assert [r.method for r in api.requests] == ["GET", "POST", "PATCH", "DELETE"]
    assert api.requests[2].body == {"metadata": {"labels": {"x": "1"}}}


@on_loop
async def test_an_injected_fault_answers_the_next_matching_requests() -> None:
    api = ApiDouble()
    quota = ApiError(403, "Forbidden", "exceeded quota")
    api.fail("POST", paths.pods("default"), quota, times=2)
    for name in ("a", "b"):
        assert (await errors_of(api.create(paths.pods("default"), pod(name)))).status == 403
    await api.create(paths.pods("default"), pod("c"))
    assert [p["metadata"]["name"] for p in api.items(paths.pods("default"))] == ["c"]


def test_connect_finds_the_double_that_serves_a_kubeconfig() -> None:
    hub, member = ApiDouble("hub"), ApiDouble("member")
    assert connect(member.kubeconfig()) is member
    assert connect(hub.kubeconfig()) is hub
    stranger = connect(
        {
            **member.kubeconfig(),
            "clusters": [
                {"name": "member", "cluster": {"server": "http://gone.apidouble.invalid"}}
            ],
        }
    )
    assert stranger is not member and stranger.unreachable
    with pytest.raises(KubeconfigError):
        connect({"clusters": [], "contexts": []})
    secret = member.kubeconfig_secret("kaon-system", "west")
    stored = yaml.safe_load(base64.b64decode(secret["data"]["kubeconfig"]))
    assert connect(stored) is member


@on_loop
async def test_the_world_binds_pods_and_reports_their_phase() -> None:
    api = ApiDouble()
    await api.create(paths.pods("default"), pod("a"))
    api.bind("default", "a", "n1")
    api.set_phase("default", "a", "Failed", exit_code=3, message="boom")
    got = await api.get(paths.pod("default", "a"))
    assert got["spec"]["nodeName"] == "n1"
    assert got["status"]["phase"] == "Failed" and got["status"]["message"] == "boom"
    assert got["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "reason" not in got["status"]
    assert api.writes == [("POST", paths.pods("default"))]


# The engine's own loops against the double ---------------------------------------------------


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_wait(attempt: int, cap_s: float = 10.0) -> None:
        await asyncio.sleep(0)

    monkeypatch.setattr(informer, "sleep_backoff", no_wait)


@on_loop
async def test_run_informer_keeps_a_view_across_watch_ends_and_expiry(fast_backoff: None) -> None:
    api = ApiDouble(history=1)
    api.add_node("n1")
    view: dict[str, Obj] = {}
    resets: list[list[str]] = []

    def reset(items: list[Obj]) -> None:
        resets.append([n["metadata"]["name"] for n in items])
        view.clear()
        view.update({n["metadata"]["name"]: n for n in items})

    def event(kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            view.pop(obj["metadata"]["name"])
        else:
            view[obj["metadata"]["name"]] = obj

    task = asyncio.create_task(informer.run_informer(api, paths.nodes(), reset, event))
    try:
        await until(lambda: api.watching == 1, "the informer watches")
        api.add_node("n2")
        await until(lambda: "n2" in view, "n2 arrives")
        api.end_watches()  # the server's timeout: the informer watches on from where it was
        await until(lambda: api.watching == 1, "the informer watches again")
        api.remove(f"{paths.nodes()}/n1")
        await until(lambda: "n1" not in view, "n1 leaves")
        assert resets == [["n1"]]
        api.end_watches()
        api.add_node("n3")
        api.add_node("n4")  # with a history of one, the informer's version is now forgotten
        await until(lambda: len(resets) == 2, "the informer relists")
        assert resets[1] == ["n2", "n3", "n4"] and set(view) == {"n2", "n3", "n4"}
    finally:
        task.cancel()


@on_loop
async def test_a_member_sees_nodes_and_kaon_pods_arrive_and_its_server_go_away(
    fast_backoff: None,
) -> None:
    api = ApiDouble("west")
    api.add_node("n1", cpu="4", gpus=2)
    labels = {MANAGED_BY: MANAGER, JOB_LABEL: "j1"}
    api.put({"apiVersion": "v1", "kind": "Pod", **pod("j1-a0-w0", **labels)})
    capacity: list[str] = []
    job_pods: list[tuple[str, str]] = []
    member = Member("west", api, on_job_pods=job_pods.append, on_capacity=capacity.append)
    member.start()
    try:
        await until(lambda: member.ready, "the member is ready")
        assert set(member.inventory.nodes) == {"n1"}
        assert set(member.pods_of(("default", "j1"))) == {"j1-a0-w0"}
        assert member.health.reason == "Reachable" and capacity

        await api.create(paths.pods("default"), pod("j1-a0-w1", **labels))
        api.bind("default", "j1-a0-w1", "n1")
        api.set_phase("default", "j1-a0-w1", "Running")
        await until(
            lambda: (
                member.pods_of(("default", "j1")).get("j1-a0-w1", {}).get("status", {}).get("phase")
                == "Running"
            ),
            "the new pod runs",
        )
        assert member.inventory.used["n1"].pods == 1
        api.add_node("n2")
        await until(lambda: "n2" in member.inventory.nodes, "n2 arrives")

        api.unreachable = True
        await until(lambda: not member.health.reachable, "the member is lost")
        assert member.health.reason == "Unreachable" and not member.ready
        api.remove(paths.pod("default", "j1-a0-w0"))  # while the member cannot see it
        api.unreachable = False
        await until(lambda: member.ready, "the member is back")
        assert set(member.pods_of(("default", "j1"))) == {"j1-a0-w1"}
        assert ("default", "j1") in job_pods

        api.refuse_credentials = True
        api.end_watches()
        await until(lambda: member.health.reason == "BadCredentials", "credentials refused")
    finally:
        await member.stop()
    assert api.closed == 1
