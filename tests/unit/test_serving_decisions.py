"""The pure InferenceService decisions: placement over clusters, replicas, canary, status."""

import json

import pytest

from kaon.api.computecluster import PoolSpec
from kaon.api.inferenceservice import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    Replicas,
    ResolvedModel,
)
from kaon.api.resources import Resources
from kaon.api.settings import Settings
from kaon.builders.server import ServiceRef, deployment, service
from kaon.lifecycle import serving
from kaon.placement import Placed, PoolOffer, Waiting, place_service, replica_demand

CPU_NODE = Resources.of(cpu=8, memory="32Gi", pods=110)
GPU_NODE = Resources.of(cpu=8, memory="32Gi", gpus=4, pods=110)
NOW = 1_000_000.0


def offer(
    cluster: str, pool: str, node: Resources, *, gpu: bool = False, cost: float = 1.0, free=None
) -> PoolOffer:
    return PoolOffer(
        cluster=cluster,
        pool=pool,
        accelerator="nvidia-t4" if gpu else None,
        cost_per_hour=cost,
        cluster_labels={"region": cluster},
        available=True,
        node_free=(free if free is not None else node,),
        node_allocatable=(node,),
    )


def spec(**fields: object) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/digits"}, **fields})


FLEET = [
    offer("east", "cpu", CPU_NODE, cost=2.0),
    offer("east", "t4", GPU_NODE, gpu=True, cost=5.0),
    offer("west", "cpu", CPU_NODE, cost=1.0),
    offer("south", "cpu", CPU_NODE, cost=3.0),
]


def test_replicas_spread_over_the_cheapest_clusters_one_pool_each() -> None:
    demand = replica_demand("ns/digits", spec(placement={"clusters": 2}))
    plan = place_service(demand, 2, FLEET, [])
    assert [(s.cluster, s.pool) for s in plan.slots] == [("west", "cpu"), ("east", "cpu")]
    assert plan.shortfall is None


def test_gpu_replicas_fall_back_to_cpu_pools_when_the_gpu_pool_is_full() -> None:
    s = spec(
        resources={"gpus": 1},
        placement={"poolPreferences": [{"type": "gpu"}, {"type": "cpu"}]},
    )
    full_gpu = [offer("east", "t4", GPU_NODE, gpu=True, free=Resources()), *FLEET[2:]]
    plan = place_service(replica_demand("ns/digits", s), 1, full_gpu, [])
    assert [(p.cluster, p.pool, p.gpus_per_worker) for p in plan.slots] == [("west", "cpu", 0)]
    plan = place_service(replica_demand("ns/digits", s), 1, FLEET, [])
    assert [(p.cluster, p.pool, p.gpus_per_worker) for p in plan.slots] == [("east", "t4", 1)]


def test_a_placement_is_sticky_and_a_lost_cluster_is_replaced() -> None:
    demand = replica_demand("ns/digits", spec())
    current = [Placed("south", "cpu", None, 0)]
    assert place_service(demand, 1, FLEET, current).slots == tuple(current)
    moved = place_service(demand, 1, FLEET, current, lost={"south"})
    assert [s.cluster for s in moved.slots] == ["west"]


def test_too_few_clusters_for_the_spread_says_so_and_keeps_what_it_has() -> None:
    demand = replica_demand("ns/digits", spec())
    plan = place_service(demand, 3, FLEET[2:], [])
    assert [s.cluster for s in plan.slots] == ["west", "south"]
    assert isinstance(plan.shortfall, Waiting) and plan.shortfall.reason == "SpreadIncomplete"
    assert "2 of 3 clusters" in plan.shortfall.message


def test_no_room_anywhere_is_a_reason_not_a_placement() -> None:
    demand = replica_demand("ns/digits", spec(resources={"cpu": 4}))
    busy = [offer("west", "cpu", CPU_NODE, free=Resources.of(cpu=1, memory="1Gi", pods=5))]
    plan = place_service(demand, 1, busy, [])
    assert plan.slots == () and plan.shortfall is not None
    assert plan.shortfall.reason == "InsufficientCPU"


def load(inflight: float, age_s: float = 0.0) -> str:
    return json.dumps({"ts": NOW - age_s, "inflight": inflight, "rps": 10.0})


def test_load_reports_are_read_leniently_and_stale_ones_ignored() -> None:
    assert serving.parse_load(load(3.5), NOW) == serving.Load(3.5, 10.0, NOW)
    assert serving.parse_load(load(3.5, age_s=60), NOW) is None
    for bad in ("", "{", "[]", '{"ts": 1}', json.dumps({"ts": NOW, "inflight": -1})):
        assert serving.parse_load(bad, NOW) is None


def test_a_load_report_carries_its_drift_when_measured_and_bad_drift_is_dropped() -> None:
    record = {"ts": NOW, "inflight": 1.0, "rps": 2.0}
    raw = json.dumps(record | {"drift": 0.7, "driftFeature": 12})
    assert serving.parse_load(raw, NOW) == serving.Load(1.0, 2.0, NOW, 0.7, 12)
    for bad in ("x", -1, float("nan"), None, True):
        parsed = serving.parse_load(json.dumps(record | {"drift": bad}), NOW)
        assert parsed == serving.Load(1.0, 2.0, NOW), bad  # the load still counts


def drift_of(*drifts: float | None, threshold: float = 0.25) -> tuple[str, str, str]:
    reports = [
        serving.Report(f"c{i}", "canary" if i else "stable", serving.Load(1, 1, NOW, d, 3))
        for i, d in enumerate(drifts)
    ]
    status = serving.with_drift(InferenceServiceStatus(), reports, threshold, 1, "t")
    (c,) = [c for c in status.conditions if c.type == "Drift"]
    return c.status, c.reason, c.message


def test_drift_is_raised_by_any_replica_past_the_threshold_and_named() -> None:
    status, reason, message = drift_of(0.05, 0.9)
    assert (status, reason) == ("True", "InputDrift")
    assert "canary replica in c1" in message and "feature 3" in message
    assert drift_of(0.05, 0.2)[:2] == ("False", "NoDrift")
    assert drift_of(0.3, threshold=0.5)[:2] == ("False", "NoDrift")
    assert drift_of(None, None)[:2] == ("Unknown", "NotMeasured")  # too few samples yet
    assert drift_of()[:2] == ("Unknown", "NotMeasured")
    # The message holds no measured value: a new report with another score writes nothing.
    assert drift_of(0.4, 0.9) == drift_of(0.3, 5.0)


@pytest.mark.parametrize(
    ("inflights", "expected"),
    [([0.0, 0.0], 1), ([8.0], 1), ([8.1], 2), ([20.0, 20.0], 5), ([500.0], 6)],
)
def test_replicas_follow_in_flight_requests_within_bounds(
    inflights: list[float], expected: int
) -> None:
    loads = [serving.Load(i, 0.0, NOW) for i in inflights]
    assert serving.recommend(loads, 8.0, Replicas(min=1, max=6)) == expected


def test_scaling_up_is_immediate_and_down_waits_for_the_delay() -> None:
    bounds = Replicas(min=1, max=10)
    assert serving.recommend([], 8.0, bounds) is None
    assert serving.next_desired(2, None, bounds, 5.0, 60) == 2
    assert serving.next_desired(2, 5, bounds, 1.0, 60) == 5
    assert serving.next_desired(5, 2, bounds, 30.0, 60) == 5
    assert serving.next_desired(5, 2, bounds, 61.0, 60) == 2
    assert serving.next_desired(0, None, Replicas(min=3, max=4), None, 60) == 3


def test_replicas_split_over_clusters_with_at_least_one_each() -> None:
    assert serving.split_over(5, 2) == [3, 2]
    assert serving.split_over(1, 3) == [1, 1, 1]
    assert serving.split_over(4, 1) == [4]


@pytest.mark.parametrize(
    ("replicas", "percent", "split"),
    [
        (4, 0, (4, 0)),
        (4, 100, (0, 4)),
        (4, 25, (3, 1)),
        (10, 10, (9, 1)),
        (1, 50, (1, 1)),
        (3, 1, (2, 1)),
        (3, 99, (1, 2)),
    ],
)
def test_a_canary_share_is_a_replica_ratio_with_one_of_each_revision(
    replicas: int, percent: int, split: tuple[int, int]
) -> None:
    assert serving.canary_split(replicas, percent) == split


def view(cluster: str, stable: int, canary: int, ready_s: int, ready_c: int) -> serving.ClusterView:
    slot = serving.Slot(cluster, "cpu")
    return serving.ClusterView(
        slot, f"http://digits.ns.svc ({cluster})", stable, canary, ready_s, ready_c
    )


MODEL = ResolvedModel(claim="models", path="digits")


def test_status_is_ready_only_when_every_cluster_serves_every_revision() -> None:
    s = InferenceServiceStatus()
    ready = serving.serving(
        s, 3, "t1", MODEL, [view("west", 2, 0, 1, 0), view("east", 1, 0, 1, 0)], None, 3, "t0", None
    )
    assert ready.state == "Ready" and ready.ready_replicas == 2 and ready.replicas == 3
    assert [c.cluster for c in ready.clusters] == ["west", "east"]
    assert ready.url == "http://digits.ns.svc (west)" and ready.observed_generation == 3
    cond = {c.type: c for c in ready.conditions}
    assert cond["Ready"].status == "True" and "west: 1/2 ready" in cond["Ready"].message

    half = serving.serving(
        s, 3, "t1", MODEL, [view("west", 2, 0, 1, 0), view("east", 1, 0, 0, 0)], None, 3, "t0", None
    )
    assert half.state == "Degraded"
    assert {c.type: c.reason for c in half.conditions}["Ready"] == "ClusterNotReady"
    none = serving.serving(s, 3, "t1", MODEL, [view("west", 2, 0, 0, 0)], None, 2, "t0", None)
    assert none.state == "Deploying"


def test_canary_share_in_effect_is_reported_and_flagged_when_approximated() -> None:
    s = InferenceServiceStatus()
    exact = serving.serving(s, 1, "t", MODEL, [view("west", 3, 1, 3, 1)], None, 4, None, 25)
    assert exact.canary is not None and exact.canary.effective_percent == 25
    assert {c.type: c.status for c in exact.conditions}["CanaryShare"] == "True"
    approx = serving.serving(s, 1, "t", MODEL, [view("west", 1, 1, 1, 0)], None, 2, None, 10)
    assert approx.canary is not None and approx.canary.effective_percent == 50
    cond = {c.type: c for c in approx.conditions}["CanaryShare"]
    assert cond.status == "False" and cond.reason == "Approximated"
    assert "requested 10%" in cond.message
    assert approx.state == "Deploying"  # the canary revision has no ready replica yet
    gone = serving.serving(approx, 1, "t", MODEL, [view("west", 2, 0, 2, 0)], None, 2, None, None)
    assert gone.canary is None and "CanaryShare" not in {c.type for c in gone.conditions}


def test_through_the_router_the_share_is_exact_once_both_revisions_are_ready() -> None:
    s = InferenceServiceStatus()
    router = "http://router:8090/serving/ns/digits"
    both = serving.serving(s, 1, "t", MODEL, [view("west", 1, 1, 1, 1)], None, 2, None, 10, router)
    assert both.url == router and both.canary is not None and both.canary.effective_percent == 10
    cond = {c.type: c for c in both.conditions}["CanaryShare"]
    assert (cond.status, cond.reason) == ("True", "Exact") and "split by the router" in cond.message
    early = serving.serving(s, 1, "t", MODEL, [view("west", 1, 1, 1, 0)], None, 2, None, 10, router)
    assert early.canary is not None and early.canary.effective_percent == 0  # all to stable
    assert {c.type: c.status for c in early.conditions}["CanaryShare"] == "False"


def test_a_service_at_zero_is_ready_through_the_router_and_says_it_is_scaled_to_zero() -> None:
    s = InferenceServiceStatus()
    zero = serving.serving(
        s, 1, "t", MODEL, [view("west", 0, 0, 0, 0)], None, 0, None, None, "u", True
    )
    cond = {c.type: c for c in zero.conditions}
    assert zero.state == "ScaledToZero" and zero.replicas == 0
    assert (cond["Ready"].status, cond["Ready"].reason) == ("True", "ScaledToZero")
    assert cond["ScaledToZero"].status == "True"
    back = serving.serving(
        zero, 1, "t", MODEL, [view("west", 1, 0, 0, 0)], None, 1, None, None, "u", True
    )
    assert back.state == "Deploying"
    assert {c.type: c.status for c in back.conditions}["ScaledToZero"] == "False"


def test_the_server_deployment_injects_the_runtime_with_probes_and_the_pool() -> None:
    pool = PoolSpec.model_validate(
        {
            "name": "t4",
            "nodeSelector": {"kaon.dev/pool": "t4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
    )
    s = spec(resources={"cpu": 2, "memory": "4Gi", "gpus": 1}, batching={"maxBatchSize": 64})
    ref = ServiceRef("team", "digits", "uid-1")
    dep = deployment(ref, "canary", s, MODEL, pool, 1, 3, Settings())
    assert dep["metadata"]["name"] == "digits-canary" and dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kaon.dev/pool": "t4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "kaon_kernels.serve"]
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--model-dir"] == "/var/lib/kaon/models/digits"
    assert args["--name"] == "digits" and args["--host"] == "$(POD_IP)"
    assert args["--max-batch-size"] == "64" and args["--grpc-port"] == "8001"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "grpc": 8001}
    ready = {"path": "/v2/health/ready", "port": "http", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == ready
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = service(ref)
    # One Service selects both revisions: the replica ratio is the traffic share.
    assert set(svc["spec"]["selector"].items()) <= set(labels.items())
    assert "kaon.dev/revision" not in svc["spec"]["selector"]


def test_a_service_that_may_scale_to_zero_runs_none_only_after_its_idle_period() -> None:
    assert serving.at_zero_or_not(0, True, 59.9, 60) == 1  # at least one until idle
    assert serving.at_zero_or_not(3, True, 59.9, 60) == 3
    assert serving.at_zero_or_not(3, True, 60.0, 60) == 0
    assert serving.at_zero_or_not(1, False, 1e9, 60) == 1  # replicas.min above 0: never


def test_a_replica_is_busy_while_it_answers_or_holds_a_request() -> None:
    assert not serving.busy([serving.Load(0.0, 0.0, 0.0)])
    assert serving.busy([serving.Load(0.0, 0.0, 0.0), serving.Load(0.0, 0.2, 0.0)])
    assert serving.busy([serving.Load(0.01, 0.0, 0.0)])
    assert not serving.busy([])


def test_no_replicas_split_into_none_anywhere() -> None:
    assert serving.split_over(0, 2) == [0, 0]
    assert serving.canary_split(0, 10) == (0, 0)
    assert serving.canary_split(1, 10) == (1, 1)  # a share between 0 and 100 needs both
