"""Preemption as placement decides it: reclaiming lent quota, priority within a queue, one
cluster only, fewest victims, minimum runtime, and victims already leaving."""

from __future__ import annotations

from dataclasses import replace

from kaon.api.resources import Resources
from kaon.placement import PoolOffer, Preference, Waiting
from kaon.placement.decide import plan_pass
from kaon.placement.model import GangDemand
from kaon.placement.preempt import RunningGang, find_preemption
from kaon.placement.quota import Consumption, Limit, QueueQuota, QuotaBook, QuotaKey

NODE = Resources.of(cpu=64, memory="512Gi", gpus=8, pods=110)
A100 = QuotaKey("gpus", "nvidia-a100")
PER_WORKER = Resources.of(4, "8Gi", 4, 1)


def pool(cluster: str, nodes: int = 2) -> PoolOffer:
    names = tuple(f"{cluster}-n{i}" for i in range(nodes))
    return PoolOffer(
        cluster=cluster,
        pool="gpu",
        accelerator="nvidia-a100",
        cost_per_hour=10.0,
        cluster_labels={},
        available=True,
        node_free=(NODE,) * nodes,
        node_allocatable=(NODE,) * nodes,
        node_names=names,
    )


def gang(key: str, queue: str | None, priority: int = 0, workers: int = 1) -> GangDemand:
    return GangDemand(
        key, workers, PER_WORKER, (Preference("gpu"),), priority=priority, queue=queue
    )


def running(
    key: str,
    queue: str | None,
    nodes: dict[str, int],
    priority: int = 0,
    running_s: float = 600.0,
    **kw: object,
) -> RunningGang:
    """A gang with `n` workers of PER_WORKER on each named node."""
    gpus = 4 * sum(nodes.values())
    cluster = next(iter(nodes)).split("-")[0]
    return RunningGang(
        key=key,
        queue=queue,
        priority=priority,
        cluster=cluster,
        pool="gpu",
        consumption=Consumption(cluster, "nvidia-a100", 4000, 8 << 30, gpus, 0),
        on_nodes={n: PER_WORKER.times(c) for n, c in nodes.items()},
        running_s=running_s,
        **kw,  # type: ignore[arg-type]
    )


def occupied(offer: PoolOffer, gangs: list[RunningGang]) -> PoolOffer:
    free = list(offer.node_free)
    for g in gangs:
        for node, held in g.on_nodes.items():
            if node in offer.node_names:
                i = offer.node_names.index(node)
                free[i] = free[i] - held
    return replace(offer, node_free=tuple(free))


def cohort(nominal_a: int = 8, nominal_b: int = 8) -> QuotaBook:
    return QuotaBook(
        [
            QueueQuota("team-a", "lab", limits={A100: Limit(nominal_a)}),
            QueueQuota("team-b", "lab", limits={A100: Limit(nominal_b)}),
        ]
    )


def with_usage(book: QuotaBook, gangs: list[RunningGang]) -> QuotaBook:
    for g in gangs:
        if g.queue:
            book.take(g.queue, g.consumption)
    return book


def test_a_queue_reclaims_its_lent_quota_by_preempting_the_borrower_only() -> None:
    # team-b uses all 16 GPUs of the cohort: 8 of its own, 8 borrowed from team-a.
    own = [running("b/own1", "team-b", {"east-n0": 1}), running("b/own2", "team-b", {"east-n0": 1})]
    lent = [
        running("b/lent1", "team-b", {"east-n1": 1}, running_s=100),
        running("b/lent2", "team-b", {"east-n1": 1}, running_s=50),
    ]
    everyone = own + lent
    book = with_usage(cohort(), everyone)
    offer = occupied(pool("east"), everyone)
    found = find_preemption(gang("a/1", "team-a"), [offer], book, everyone)
    assert found is not None and found.kind == "Reclaim"
    # One gang frees what team-a needs; the newest goes (the least work lost).
    assert [v.key for v in found.victims] == ["b/lent2"]


def test_reclaim_needs_the_reclaiming_queue_to_stay_within_its_nominal() -> None:
    gangs = [running(f"b/{i}", "team-b", {f"east-n{i // 2}": 1}) for i in range(4)]
    book = with_usage(cohort(nominal_a=4, nominal_b=12), gangs)
    offer = occupied(pool("east"), gangs)
    # team-a asks for 8 GPUs with a nominal of 4, and team-b borrows nothing: no victim.
    assert find_preemption(gang("a/1", "team-a", workers=2), [offer], book, gangs) is None


def test_a_queue_within_its_nominal_is_never_preempted_by_another_queue() -> None:
    gangs = [running(f"b/{i}", "team-b", {f"east-n{i // 2}": 1}) for i in range(2)]
    # team-b holds 8 of its nominal 8; team-a's nominal 8 is free, but the pool is small.
    book = with_usage(cohort(), gangs)
    offer = occupied(pool("east", nodes=1), gangs)
    assert find_preemption(gang("a/1", "team-a"), [offer], book, gangs) is None


def test_priority_preempts_within_one_queue_the_lowest_priority_first() -> None:
    gangs = [
        running("a/low", "team-a", {"east-n0": 2}, priority=1),
        running("a/lowest", "team-a", {"east-n1": 2}, priority=0),
    ]
    book = with_usage(QuotaBook([QueueQuota("team-a", limits={A100: Limit(32)})]), gangs)
    offer = occupied(pool("east"), gangs)
    found = find_preemption(gang("a/urgent", "team-a", priority=5, workers=2), [offer], book, gangs)
    assert found is not None and found.kind == "Priority"
    assert [v.key for v in found.victims] == ["a/lowest"]
    # Equal priority preempts nothing.
    assert find_preemption(gang("a/peer", "team-a", priority=0), [offer], book, gangs) is None


def test_victims_are_taken_in_one_cluster_only() -> None:
    # Two gangs of 4 GPUs, one per cluster, each cluster with one node holding 4 more.
    gangs = [
        running("x/east", "team-x", {"east-n0": 1}),
        running("x/west", "team-x", {"west-n0": 1}),
    ]
    book = QuotaBook([QueueQuota("team-x")])
    offers = [occupied(pool(c, nodes=1), gangs) for c in ("east", "west")]
    offers = [replace(o, node_free=(o.node_free[0] - PER_WORKER,)) for o in offers]
    need_two = gang("x/urgent", "team-x", priority=9, workers=2)
    found = find_preemption(need_two, offers, book, gangs)
    # 8 GPUs in one cluster need both workers' room there: one victim in one cluster cannot
    # give it, and victims in two clusters are never combined.
    assert found is None
    need_one = gang("x/urgent", "team-x", priority=9)
    found = find_preemption(need_one, offers, book, gangs)
    assert found is not None and len(found.victims) == 1
    assert found.victims[0].cluster == found.cluster
    # Gangs of no queue never preempt.
    unqueued = [replace(g, queue=None) for g in gangs]
    assert find_preemption(replace(need_one, queue=None), offers, book, unqueued) is None


def test_a_queue_whose_policy_says_never_does_not_preempt() -> None:
    gangs = [running(f"b/{i}", "team-b", {f"east-n{i // 2}": 1}) for i in range(4)]
    quotas = cohort(nominal_a=8, nominal_b=8)
    quotas.queues["team-a"] = replace(quotas.queues["team-a"], reclaim=False)
    book = with_usage(quotas, gangs)
    offer = occupied(pool("east"), gangs)
    assert find_preemption(gang("a/1", "team-a"), [offer], book, gangs) is None


def test_a_gang_inside_its_minimum_runtime_or_already_leaving_is_never_a_victim() -> None:
    gangs = [
        running("a/fresh", "team-a", {"east-n0": 2}, protected=True),
        running("a/going", "team-a", {"east-n1": 2}, leaving_for="a/other"),
    ]
    book = with_usage(QuotaBook([QueueQuota("team-a", limits={A100: Limit(32)})]), gangs)
    offer = occupied(pool("east"), gangs)
    assert find_preemption(gang("a/urgent", "team-a", priority=5), [offer], book, gangs) is None


def test_the_fewest_victims_are_chosen() -> None:
    small = [running(f"a/s{i}", "team-a", {"east-n0": 1}, running_s=10) for i in range(2)]
    big = running("a/big", "team-a", {"east-n1": 2}, running_s=1000)
    gangs = [*small, big]
    book = with_usage(QuotaBook([QueueQuota("team-a", limits={A100: Limit(32)})]), gangs)
    offer = occupied(pool("east"), gangs)
    found = find_preemption(gang("a/urgent", "team-a", priority=5, workers=2), [offer], book, gangs)
    assert found is not None and [v.key for v in found.victims] == ["a/big"]


def test_a_pass_preempts_once_and_then_waits_for_its_victims_to_leave() -> None:
    gangs = [
        running("a/low", "team-a", {"east-n0": 2}),
        running("a/low2", "team-a", {"east-n1": 2}),
    ]
    book = with_usage(QuotaBook([QueueQuota("team-a", limits={A100: Limit(32)})]), gangs)
    offer = occupied(pool("east"), gangs)
    urgent = [gang("a/u1", "team-a", priority=5, workers=2), gang("a/u2", "team-a", 5, 2)]
    result = plan_pass(urgent, [offer], book, gangs)
    # Each urgent gang gets its own victim; neither counts on the other's.
    assert sorted(v.key for p in result.preemptions for v in p.victims) == ["a/low", "a/low2"]
    assert all(
        isinstance(o, Waiting) and o.reason == "PreemptionPending" for o in result.outcomes.values()
    )
    leaving = [replace(g, leaving_for=f"a/u{i + 1}") for i, g in enumerate(gangs)]
    again = plan_pass(urgent, [offer], with_usage(QuotaBook(book.queues.values()), gangs), leaving)
    assert again.preemptions == []
    assert again.outcomes["a/u1"] == Waiting(
        "PreemptionPending", "waiting for preempted a/low to save and stop"
    )
