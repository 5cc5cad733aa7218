from dataclasses import replace

from kaon.api.common import LabelSelector
from kaon.api.resources import Resources
from kaon.api.trainingjob import TrainingJobSpec
from kaon.placement import (
    GangDemand,
    Placed,
    PoolOffer,
    Preference,
    Unplaceable,
    Waiting,
    decide,
    gang_demand,
    plan,
    preferences,
)

NOTHING = Resources()
GPU_NODE = Resources.of(cpu=64, memory="512Gi", gpus=8, pods=110)
CPU_NODE = Resources.of(cpu=32, memory="128Gi", pods=110)


def offer(
    cluster: str,
    pool: str,
    node: Resources,
    nodes: int,
    *,
    accelerator: str | None = None,
    cost: float = 1.0,
    used: Resources = NOTHING,
    available: bool = True,
    labels: dict[str, str] | None = None,
) -> PoolOffer:
    return PoolOffer(
        cluster=cluster,
        pool=pool,
        accelerator=accelerator,
        cost_per_hour=cost,
        cluster_labels=labels or {"region": cluster},
        available=available,
        node_free=tuple(node - used for _ in range(nodes)),
        node_allocatable=tuple(node for _ in range(nodes)),
    )


def demand(
    *,
    workers: int = 2,
    gpus: int = 0,
    prefs: tuple[Preference, ...] = (Preference("cpu"),),
    key: str = "ns/job",
    priority: int = 0,
    created: str = "",
    selector: LabelSelector | None = None,
) -> GangDemand:
    return GangDemand(
        key, workers, Resources.of(4, "8Gi", gpus, 1), prefs, selector, priority, created
    )


A100 = offer("east", "gpu-a100", GPU_NODE, 2, accelerator="nvidia-a100", cost=30)
T4 = offer("west", "gpu-t4", GPU_NODE, 1, accelerator="nvidia-t4", cost=5)
EAST_CPU = offer("east", "cpu", CPU_NODE, 4, cost=2)
WEST_CPU = offer("west", "cpu", CPU_NODE, 4, cost=1)
ALL = [A100, T4, EAST_CPU, WEST_CPU]
FALLBACK = (Preference("gpu", "nvidia-a100"), Preference("gpu"), Preference("cpu"))


def test_gang_goes_to_the_first_preference_that_fits() -> None:
    got = decide(demand(workers=2, gpus=4, prefs=FALLBACK), ALL)
    assert got == Placed(  # a node-worth
        "east",
        "gpu-a100",
        "nvidia-a100",
        4,
        (2, 0),
        30.0,
        "preference 1 (nvidia-a100 GPU pools): 30/h, the only pool with room",
    )


def test_gpu_then_cpu_fallback_when_gpu_pools_are_full() -> None:
    full = [
        offer("east", "gpu-a100", GPU_NODE, 2, accelerator="nvidia-a100", used=Resources(gpus=8)),
        offer("west", "gpu-t4", GPU_NODE, 1, accelerator="nvidia-t4", used=Resources(gpus=8)),
        WEST_CPU,
    ]
    got = decide(demand(workers=2, gpus=4, prefs=FALLBACK), full)
    assert isinstance(got, Placed)
    assert (got.cluster, got.pool, got.gpus_per_worker) == ("west", "cpu", 0)


def test_cheapest_pool_wins_among_those_of_the_same_preference() -> None:
    got = decide(demand(workers=2), ALL)
    assert isinstance(got, Placed) and (got.cluster, got.pool) == ("west", "cpu")


def test_cluster_selector_narrows_the_clusters() -> None:
    east_only = LabelSelector(match_labels={"region": "east"})
    got = decide(demand(selector=east_only), ALL)
    assert isinstance(got, Placed) and got.cluster == "east"


def test_whole_gang_or_nothing_waits_with_the_gpu_shortage_named() -> None:
    busy = offer("east", "gpu-a100", GPU_NODE, 2, accelerator="nvidia-a100", used=Resources(gpus=5))
    got = decide(demand(workers=4, gpus=4, prefs=(Preference("gpu", "nvidia-a100"),)), [busy])
    assert isinstance(got, Waiting)
    assert got.reason == "InsufficientGPU"
    assert got.message.startswith("pool gpu-a100 in cluster east has 6 of 16 GPUs free")


def test_fragmented_capacity_is_not_enough_for_a_gang() -> None:
    # 3 + 3 GPUs free, but each worker needs 4 on one node.
    frag = offer("east", "gpu-a100", GPU_NODE, 2, accelerator="nvidia-a100", used=Resources(gpus=5))
    got = decide(demand(workers=1, gpus=4, prefs=(Preference("gpu"),)), [frag])
    assert isinstance(got, Waiting) and got.reason == "InsufficientNodeCapacity"


def test_a_gang_that_can_never_fit_is_unplaceable() -> None:
    got = decide(demand(workers=1, gpus=16, prefs=(Preference("gpu"),)), ALL)
    assert isinstance(got, Unplaceable) and got.reason == "NoPoolFits"
    got = decide(demand(workers=3, gpus=8, prefs=(Preference("gpu", "nvidia-t4"),)), ALL)
    assert isinstance(got, Unplaceable)


def test_unreachable_cluster_makes_the_job_wait_not_fail() -> None:
    down = offer("east", "cpu", CPU_NODE, 4, available=False)
    got = decide(demand(), [down])
    assert isinstance(got, Waiting) and got.reason == "ClusterUnavailable"


def test_a_cluster_not_ready_with_no_nodes_listed_yet_makes_the_job_wait_not_fail() -> None:
    """An operator just started (or a member just back) has not listed the member's nodes: its
    pools look empty, which must not read as "can never hold the gang"."""
    unlisted = offer("east", "cpu", CPU_NODE, 0, available=False)
    got = decide(demand(), [unlisted])
    assert isinstance(got, Waiting) and got.reason == "ClusterUnavailable"
    empty_but_ready = offer("east", "cpu", CPU_NODE, 0)
    assert isinstance(decide(demand(), [empty_but_ready]), Unplaceable)


def test_no_clusters_waits_and_a_selector_matching_none_fails() -> None:
    assert isinstance(decide(demand(), []), Waiting)
    nowhere = LabelSelector(match_labels={"region": "mars"})
    assert isinstance(decide(demand(selector=nowhere), ALL), Unplaceable)


def test_plan_counts_what_it_just_placed_no_double_booking() -> None:
    one_node = [offer("east", "cpu", CPU_NODE, 1)]
    jobs = [demand(workers=4, key=f"ns/j{i}", created=f"2026-01-0{i}") for i in (1, 2)]
    got = plan(jobs, one_node)
    assert isinstance(got["ns/j1"], Placed)  # 4 x 4 CPU = 16 of 32
    assert isinstance(got["ns/j2"], Placed)  # the other 16
    third = demand(workers=1, key="ns/j3", created="2026-01-03")
    assert isinstance(plan([*jobs, third], one_node)["ns/j3"], Waiting)


def test_plan_orders_by_priority_then_fifo() -> None:
    one_node = [offer("east", "cpu", CPU_NODE, 1)]
    old = demand(workers=8, key="ns/old", created="2026-01-01")
    new = demand(workers=8, key="ns/new", created="2026-01-02")
    urgent = demand(workers=8, key="ns/urgent", created="2026-01-03", priority=10)
    got = plan([new, old], one_node)
    assert isinstance(got["ns/old"], Placed) and isinstance(got["ns/new"], Waiting)
    got = plan([new, old, urgent], one_node)
    assert isinstance(got["ns/urgent"], Placed) and isinstance(got["ns/old"], Waiting)


def test_default_preferences_follow_the_gpu_request() -> None:
    gpu = TrainingJobSpec.model_validate(
        {"model": {"family": "cnn"}, "resources": {"gpus": 2, "gpuType": "nvidia-t4"}}
    )
    assert preferences(gpu) == (Preference("gpu", "nvidia-t4"),)
    cpu = TrainingJobSpec.model_validate({"model": {"family": "rnn"}})
    assert preferences(cpu) == (Preference("cpu"),)
    d = gang_demand("ns/x", gpu)
    assert d.per_worker == Resources.of(1, "2Gi", 2, 1)


def test_the_gangs_cost_then_free_capacity_choose_and_the_why_names_the_runner_up() -> None:
    # Equal node prices, but west's bigger nodes make the same gang cheaper there.
    big = Resources.of(cpu=64, memory="256Gi", pods=110)
    east, west = offer("east", "cpu", CPU_NODE, 4), offer("west", "cpu", big, 4)
    got = decide(demand(workers=2), [east, west])
    assert isinstance(got, Placed) and got.cluster == "west"
    assert got.why == (
        "preference 1 (cpu): 0.125/h, the cheapest of 2 pools with room; "
        "next pool cpu in cluster east at 0.25/h"
    )
    # At the same gang cost, the pool left with more free capacity wins.
    busy = offer("east", "cpu", CPU_NODE, 4, used=Resources.of(cpu=16))
    idle = offer("west", "cpu", CPU_NODE, 4)
    got = decide(demand(workers=2), [busy, idle])
    assert isinstance(got, Placed) and got.cluster == "west"
    assert "as cheap as the next of 2 pools with room, with more free" in got.why


def test_the_why_names_the_preferred_pool_that_was_rejected() -> None:
    full = offer("east", "gpu-a100", GPU_NODE, 2, accelerator="nvidia-a100", used=Resources(gpus=8))
    got = decide(demand(workers=1, gpus=4, prefs=FALLBACK), [full, T4])
    assert isinstance(got, Placed) and got.pool == "gpu-t4"
    assert got.why.startswith("preference 2 (gpu GPU pools): ")
    assert got.why.endswith("; preferred pool gpu-a100 in cluster east rejected: InsufficientGPU")


def test_spot_pools_take_only_gangs_that_opt_in() -> None:
    spot = replace(offer("east", "cpu-spot", CPU_NODE, 4, cost=0.3), spot=True)
    got = decide(demand(workers=1), [spot, EAST_CPU])
    assert isinstance(got, Placed) and got.pool == "cpu"
    opted = replace(demand(workers=1), spot=True)
    got = decide(opted, [spot, EAST_CPU])
    assert isinstance(got, Placed) and got.pool == "cpu-spot"
    only_spot = decide(demand(workers=1), [spot])
    assert isinstance(only_spot, Unplaceable) and only_spot.reason == "NoPoolFits"


def test_a_gang_is_packed_into_the_fullest_nodes_that_still_hold_a_worker() -> None:
    # Free GPUs per node 8, 2, 4, 0: two-GPU workers fill the 2, then the 4, and the whole
    # 8-GPU node stays free for a gang that needs one.
    node = Resources.of(cpu=64, memory="512Gi", gpus=8, pods=110)
    used = [Resources(), Resources(gpus=6), Resources(gpus=4), node]
    pool = replace(
        offer("east", "gpu", node, 4, accelerator="nvidia-a100"),
        node_free=tuple(node - u for u in used),
        node_names=("n0", "n1", "n2", "n3"),
    )
    got = decide(demand(workers=3, gpus=2, prefs=(Preference("gpu"),)), [pool])
    assert isinstance(got, Placed)
    assert got.workers_per_node == (0, 1, 2, 0)
    assert got.nodes == ("n1", "n2", "n2")  # rank 0 on n1, ranks 1 and 2 on n2


def test_without_the_nodes_names_a_placement_names_no_nodes() -> None:
    got = decide(demand(workers=2, gpus=4, prefs=FALLBACK), ALL)
    assert isinstance(got, Placed) and got.workers_per_node == (2, 0) and got.nodes == ()
