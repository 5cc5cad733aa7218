"""Queues' quotas as placement sees them: nominal amounts, borrowing in a cohort and its limits,
per-cluster scopes, and the reason a waiting gang shows (quota before capacity)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import cast

from kaon.api.names import QUEUE_LABEL
from kaon.api.resources import Resources
from kaon.clusters.client import KubeClient
from kaon.controllers.queue import QueueController, export_gauges
from kaon.engine.metrics import REGISTRY
from kaon.placement import Placed, PoolOffer, Preference, Waiting, decide, plan
from kaon.placement.model import GangDemand
from kaon.placement.quota import (
    Consumption,
    Limit,
    QueueQuota,
    QuotaBook,
    QuotaKey,
    gpu_prices,
)
from kaon.placement.serving import replicas_within_quota

GPU_NODE = Resources.of(cpu=64, memory="512Gi", gpus=8, pods=110)
CPU_NODE = Resources.of(cpu=32, memory="128Gi", pods=110)
A100 = QuotaKey("gpus", "nvidia-a100")


def pool(
    cluster: str, name: str, node: Resources, nodes: int, accel: str | None = None
) -> PoolOffer:
    return PoolOffer(
        cluster=cluster,
        pool=name,
        accelerator=accel,
        cost_per_hour=10.0 if accel else 1.0,
        cluster_labels={},
        available=True,
        node_free=(node,) * nodes,
        node_allocatable=(node,) * nodes,
    )


EAST_A100 = pool("east", "gpu-a100", GPU_NODE, 4, "nvidia-a100")
EAST_CPU = pool("east", "cpu", CPU_NODE, 4)


def gang(
    key: str, queue: str | None, gpus: int = 4, workers: int = 1, created: str = ""
) -> GangDemand:
    prefs = (Preference("gpu"),) if gpus else (Preference("cpu"),)
    per = Resources.of(4, "8Gi", gpus, 1)
    return GangDemand(key, workers, per, prefs, created=created, queue=queue)


def book(*queues: QueueQuota) -> QuotaBook:
    return QuotaBook(queues)


def gpus(n: int, cluster: str = "east") -> Consumption:
    return Consumption(cluster, "nvidia-a100", 4000, 8 << 30, n, 0)


def test_a_queue_admits_up_to_its_nominal_quota_then_waits_saying_how_much_is_missing() -> None:
    quotas = book(QueueQuota("team-a", limits={A100: Limit(8)}))
    got = plan([gang(f"a/{i}", "team-a", created=f"{i}") for i in range(3)], [EAST_A100], quotas)
    assert [type(got[f"a/{i}"]) for i in range(3)] == [Placed, Placed, Waiting]
    waiting = got["a/2"]
    assert isinstance(waiting, Waiting) and waiting.reason == "WaitingForQuota"
    assert waiting.message == ("queue team-a: needs 4 nvidia-a100 GPUs, 0 of 8 free (8 in use)")


def test_a_gang_bigger_than_its_queue_can_ever_hold_says_quota_exceeded() -> None:
    quotas = book(QueueQuota("team-a", limits={A100: Limit(8)}))
    got = decide(gang("a/big", "team-a", gpus=8, workers=2), [EAST_A100], quotas)
    assert isinstance(got, Waiting) and got.reason == "QuotaExceeded"
    assert "needs 16 nvidia-a100 GPUs at once, more than the queue can ever hold (8" in got.message


def test_quota_is_told_before_capacity_when_both_stop_a_gang() -> None:
    full = replace(EAST_A100, node_free=(GPU_NODE - Resources(gpus=8),) * 4)
    quotas = book(QueueQuota("team-a", limits={A100: Limit(4)}))
    quotas.take("team-a", gpus(4))
    got = decide(gang("a/1", "team-a"), [full], quotas)
    assert isinstance(got, Waiting) and got.reason == "WaitingForQuota"
    assert decide(gang("a/1", None), [full], quotas) == Waiting(
        "InsufficientGPU", "pool gpu-a100 in cluster east has 0 of 4 GPUs free for 1 workers"
    )


def test_an_unqueued_gang_and_an_unlisted_resource_are_not_limited() -> None:
    quotas = book(QueueQuota("team-a", limits={A100: Limit(0)}))
    assert isinstance(decide(gang("x/1", None), [EAST_A100], quotas), Placed)
    assert isinstance(decide(gang("a/cpu", "team-a", gpus=0), [EAST_CPU], quotas), Placed)


def test_a_queue_borrows_its_cohorts_unused_quota_up_to_its_borrowing_limit() -> None:
    a = QueueQuota("team-a", "research", limits={A100: Limit(4, borrowing_limit=4)})
    b = QueueQuota("team-b", "research", limits={A100: Limit(8)})
    quotas = book(a, b)
    got = plan([gang(f"a/{i}", "team-a", created=f"{i}") for i in range(3)], [EAST_A100], quotas)
    assert [type(got[f"a/{i}"]) for i in range(3)] == [Placed, Placed, Waiting]
    assert [(u.used, u.borrowed) for u in quotas.usage("team-a")] == [(8, 4)]
    over = got["a/2"]
    assert isinstance(over, Waiting) and over.message.startswith("queue team-a: needs 4")


def test_a_queue_whose_nominal_is_lent_out_waits_naming_the_cohort() -> None:
    a = QueueQuota("team-a", "research", limits={A100: Limit(4)})
    b = QueueQuota("team-b", "research", limits={A100: Limit(4)})
    quotas = book(a, b)
    quotas.take("team-b", gpus(8))  # team-b borrowed all of team-a's idle GPUs
    got = decide(gang("a/1", "team-a"), [EAST_A100], quotas)
    assert isinstance(got, Waiting) and got.reason == "WaitingForQuota"
    assert "lent to other queues of cohort research" in got.message
    b_more = decide(gang("b/1", "team-b"), [EAST_A100], quotas)
    assert isinstance(b_more, Waiting) and b_more.message.startswith("queue team-b: needs 4")


def test_a_quota_scoped_to_a_cluster_counts_only_what_runs_there() -> None:
    west_a100 = pool("west", "gpu-a100", GPU_NODE, 4, "nvidia-a100")
    east_only = QuotaKey("gpus", "nvidia-a100", "east")
    quotas = book(QueueQuota("team-a", limits={east_only: Limit(4)}))
    quotas.take("team-a", gpus(4, "east"))
    got = decide(gang("a/1", "team-a"), [EAST_A100, west_a100], quotas)
    assert isinstance(got, Placed) and got.cluster == "west"


def test_a_budget_in_cost_per_hour_limits_what_a_queue_runs() -> None:
    # One A100 worker of 4 GPUs takes half a node: 5 of the pool's 10 per node-hour.
    budget = QuotaKey("costPerHour")
    quotas = book(QueueQuota("team-a", limits={budget: Limit(12_000)}))
    got = plan([gang(f"a/{i}", "team-a", created=f"{i}") for i in range(3)], [EAST_A100], quotas)
    assert [type(got[f"a/{i}"]) for i in range(3)] == [Placed, Placed, Waiting]
    first = got["a/0"]
    assert isinstance(first, Placed) and first.cost_per_hour == 5.0
    assert "needs 5 cost per hour, 2 of 12 free (10 in use)" in got["a/2"].message  # type: ignore[union-attr]


def test_a_gang_falls_back_to_a_pool_its_quota_allows() -> None:
    quotas = book(QueueQuota("team-a", limits={A100: Limit(0)}))
    prefs = (Preference("gpu", "nvidia-a100"), Preference("cpu"))
    wanted = GangDemand("a/1", 1, Resources.of(4, "8Gi", 4, 1), prefs, queue="team-a")
    got = decide(wanted, [EAST_A100, EAST_CPU], quotas)
    assert isinstance(got, Placed) and got.pool == "cpu" and got.gpus_per_worker == 0


def test_quota_freed_in_a_cohort_goes_to_its_lender_before_an_older_borrower() -> None:
    a = QueueQuota("team-a", "research", limits={A100: Limit(4)})
    b = QueueQuota("team-b", "research", limits={A100: Limit(4)})
    quotas = book(a, b)
    quotas.take("team-a", gpus(4))  # team-a at its nominal; team-b's 4 are idle again
    borrower = gang("a/older", "team-a", created="1")
    lender = gang("b/newer", "team-b", created="2")
    got = plan([borrower, lender], [EAST_A100], quotas)
    assert isinstance(got["b/newer"], Placed)
    waiting = got["a/older"]
    assert isinstance(waiting, Waiting) and waiting.reason == "WaitingForQuota"
    again = book(a, b)
    again.take("team-a", gpus(4))
    alone = plan([gang("a/older", "team-a", created="1")], [EAST_A100], again)
    assert isinstance(alone["a/older"], Placed)  # with nobody else asking, it may borrow


def test_borrowing_follows_weighted_fair_shares_oldest_first_among_equals() -> None:
    # A lender's 16 idle GPUs; team-b weighs three times team-a, and team-a's gangs are older.
    quotas = book(
        QueueQuota("lender", "lab", limits={A100: Limit(16)}),
        QueueQuota("team-a", "lab", weight=1.0, limits={A100: Limit(0)}),
        QueueQuota("team-b", "lab", weight=3.0, limits={A100: Limit(0)}),
    )
    demands = [gang(f"a/{i}", "team-a", created=f"0{i}") for i in range(4)]
    demands += [gang(f"b/{i}", "team-b", created=f"1{i}") for i in range(4)]
    got = plan(demands, [EAST_A100], quotas)
    placed = sorted(k for k, o in got.items() if isinstance(o, Placed))
    assert placed == ["a/0", "b/0", "b/1", "b/2"]


def test_expensive_gpus_weigh_more_in_a_queues_share() -> None:
    t4 = QuotaKey("gpus", "nvidia-t4")
    queues = [
        QueueQuota("team-a", "lab", limits={A100: Limit(8), t4: Limit(8)}),
        QueueQuota("team-b", "lab", limits={A100: Limit(8), t4: Limit(8)}),
    ]
    quotas = book(*queues)
    quotas.take("team-a", Consumption("east", "nvidia-a100", 0, 0, 4, 0))  # 1/4 of the A100s
    quotas.take("team-b", Consumption("east", "nvidia-t4", 0, 0, 8, 0))  # 1/2 of the T4s
    assert quotas.share("team-b") > quotas.share("team-a")
    t4_pool = replace(pool("east", "gpu-t4", GPU_NODE, 1, "nvidia-t4"), cost_per_hour=2.5)
    quotas.prices = gpu_prices([EAST_A100, t4_pool])
    assert quotas.prices == {"nvidia-a100": 4.0, "nvidia-t4": 1.0}
    assert quotas.share("team-a") > quotas.share("team-b")


def test_queue_gauges_follow_usage_and_drop_what_is_gone() -> None:
    quotas = book(QueueQuota("gauged", limits={A100: Limit(8)}))
    quotas.take("gauged", gpus(4))
    exported: set[tuple[str, ...]] = set()
    waiting = Counter({("gauged", "WaitingForQuota"): 2})
    export_gauges(quotas, Counter({"gauged": 1}), waiting, Counter({"gauged": 2500}), exported)
    labels = {"queue": "gauged", "resource": "gpus", "accelerator": "nvidia-a100", "cluster": ""}
    assert REGISTRY.get_sample_value("kaon_queue_usage", labels) == 4
    assert REGISTRY.get_sample_value("kaon_queue_nominal_quota", labels) == 8
    pending = {"queue": "gauged", "state": "pending", "reason": "WaitingForQuota"}
    assert REGISTRY.get_sample_value("kaon_queue_workloads", pending) == 2
    assert REGISTRY.get_sample_value("kaon_queue_cost_per_hour", {"queue": "gauged"}) == 2.5
    export_gauges(quotas, Counter(), Counter(), Counter(), exported)  # nobody waits any more
    assert REGISTRY.get_sample_value("kaon_queue_workloads", pending) is None


def test_a_service_runs_as_many_replicas_as_its_queue_allows_over_its_clusters() -> None:
    def split(total: int, clusters: int) -> list[int]:
        base, extra = divmod(total, clusters)
        return [base + (1 if i < extra else 0) for i in range(clusters)]

    west = replace(EAST_A100, cluster="west")
    replica = replace(gang("ns/svc", "team-a"), workers=1)  # 4 A100s each
    quotas = book(QueueQuota("team-a", limits={A100: Limit(12)}))
    quotas.take("team-a", gpus(4))  # a job of the queue holds 4
    fit = replicas_within_quota(replica, [EAST_A100, west], 4, quotas, split)
    assert (fit.replicas, fit.clusters) == (2, 2)
    assert [c.cluster for c in fit.used] == ["east", "west"]
    assert fit.problem is not None and fit.problem.reason == "WaitingForQuota"
    quotas.take("team-a", gpus(8))
    none = replicas_within_quota(replica, [EAST_A100, west], 4, quotas, split)
    assert (none.replicas, none.used) == (0, ())
    assert none.problem is not None and "0 of 12 free" in none.problem.message


def test_a_startup_listing_of_queues_and_namespaces_yields_to_what_the_watches_said() -> None:
    queues = QueueController(cast(KubeClient, None))
    ns = {"metadata": {"name": "team", "labels": {QUEUE_LABEL: "q"}}}
    gone = {"metadata": {"name": "old", "generation": 1}, "spec": {}}
    queues.queue_event("DELETED", gone)  # the watch saw it go after the LIST
    queues.namespace_event("ADDED", {"metadata": {"name": "team", "labels": {}}})  # newer
    q = {"metadata": {"name": "q", "generation": 1}, "spec": {}}
    queues.listed([q, gone], [ns, {"metadata": {"name": "other"}}])
    assert set(queues.specs) == {"q"}
    assert queues.namespaces == {"team": {}, "other": {}}
    assert queues.resolve("team", None) == (None, None)
