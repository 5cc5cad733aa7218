"""The operator's Prometheus metrics (`kaon_` prefix, base units, `_total` counters).

Events that happen once (a placement, an admission, a reconcile error) are counted or observed
where they happen; states (jobs by phase, member health, pool capacity) are read from the
operator's caches when Prometheus scrapes, so they cost nothing between scrapes. Queues'
gauges are the exception: set with each Queue status pass (every 2 s), which computes them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import Counter as CounterMetric
from prometheus_client import Gauge as GaugeMetric
from prometheus_client import Histogram as HistogramMetric
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kaon.clusters.client import Obj
from kaon.placement import Placed, Unplaceable, Waiting

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry(auto_describe=True)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

PLACEMENTS = CounterMetric(
    "kaon_placement_decisions_total",
    "Placement decisions, by cluster, pool and outcome (placed, waiting, unplaceable).",
    ["kind", "cluster", "pool", "outcome"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = CounterMetric(
    "kaon_reconcile_errors_total",
    "Reconciles that raised, by resource kind and error type (retried with backoff).",
    ["kind", "reason"],
    registry=REGISTRY,
)
ADMISSION_WAIT = HistogramMetric(
    "kaon_admission_wait_seconds",
    "Time from a TrainingJob's creation to its admission to a pool.",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
FAILOVERS = CounterMetric(
    "kaon_trainingjob_failovers_total",
    "TrainingJob gangs moved off a member cluster that stopped answering.",
    ["cluster"],
    registry=REGISTRY,
)
PREEMPTIONS = CounterMetric(
    "kaon_queue_preemptions_total",
    "TrainingJob gangs preempted, by the victim's queue and reason (Reclaimed, "
    "PreemptedByPriority).",
    ["queue", "reason"],
    registry=REGISTRY,
)
QUOTA_LABELS = ("queue", "resource", "accelerator", "cluster")
QUEUE_USAGE = GaugeMetric(
    "kaon_queue_usage",
    "What a queue's admitted workloads use of each quota (cores, bytes, devices, cost/h).",
    QUOTA_LABELS,
    registry=REGISTRY,
)
QUEUE_NOMINAL = GaugeMetric(
    "kaon_queue_nominal_quota",
    "A queue's nominal quota of each resource (cores, bytes, devices, cost/h).",
    QUOTA_LABELS,
    registry=REGISTRY,
)
QUEUE_WORKLOADS = GaugeMetric(
    "kaon_queue_workloads",
    "A queue's workloads, admitted or pending (by the reason they wait).",
    ["queue", "state", "reason"],
    registry=REGISTRY,
)
QUEUE_COST = GaugeMetric(
    "kaon_queue_cost_per_hour",
    "What a queue's admitted gangs cost per hour, in the pools' cost units.",
    ["queue"],
    registry=REGISTRY,
)
TIME_TO_RUNNING = HistogramMetric(
    "kaon_time_to_running_seconds",
    "Time from a TrainingJob's admission to all its workers running.",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)


def placement(kind: str, outcome: Placed | Waiting | Unplaceable) -> None:
    if isinstance(outcome, Placed):
        PLACEMENTS.labels(kind, outcome.cluster, outcome.pool, "placed").inc()
    else:
        PLACEMENTS.labels(kind, "", "", type(outcome).__name__.lower()).inc()


def reconcile_error(kind: str) -> Callable[[Exception], None]:
    def count(exc: Exception) -> None:
        RECONCILE_ERRORS.labels(kind, type(exc).__name__).inc()

    return count


class StateCollector(Collector):
    """Gauges computed at scrape time from the operator's caches."""

    def __init__(
        self,
        jobs: Callable[[], Iterator[tuple[tuple[str, str], Obj]]],
        services: Callable[[], Iterator[tuple[tuple[str, str], Obj]]],
        clusters: Callable[[], Iterator[tuple[str, bool, list[tuple[str, dict[str, float]]]]]],
    ) -> None:
        self.jobs = jobs
        self.services = services
        self.clusters = clusters

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._services()
        yield from self._clusters()

    def _jobs(self) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily(
            "kaon_trainingjobs", "TrainingJobs known to the operator, by phase.", labels=["phase"]
        )
        progress = GaugeMetricFamily(
            "kaon_trainingjob_progress_ratio",
            "Share of its steps a running TrainingJob has done (0-1).",
            labels=["namespace", "name"],
        )
        phases: Counter[str] = Counter()
        for (ns, name), body in self.jobs():
            status = body.get("status") or {}
            phase = str(status.get("state") or "Pending")
            phases[phase] += 1
            if phase == "Running":
                percent = (status.get("progress") or {}).get("percent", 0)
                progress.add_metric([ns, name], float(percent) / 100)
        for phase in ("Pending", "Waiting", "Admitted", "Running", "Succeeded", "Failed"):
            phases.setdefault(phase, 0)
        for phase, n in sorted(phases.items()):
            by_phase.add_metric([phase], n)
        yield by_phase
        yield progress

    def _services(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "kaon_inferenceservices", "InferenceServices by state.", labels=["state"]
        )
        ready = GaugeMetricFamily(
            "kaon_inferenceservice_ready_replicas",
            "Ready server replicas of an InferenceService, over all clusters.",
            labels=["namespace", "name"],
        )
        states: Counter[str] = Counter()
        for (ns, name), body in self.services():
            status = body.get("status") or {}
            states[str(status.get("state") or "Pending")] += 1
            ready.add_metric([ns, name], float(status.get("readyReplicas") or 0))
        for state, n in sorted(states.items()):
            by_state.add_metric([state], n)
        yield by_state
        yield ready

    def _clusters(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "kaon_member_cluster_up", "1 when the member's API server answers.", labels=["cluster"]
        )
        labels = ["cluster", "pool", "resource"]
        capacity = GaugeMetricFamily(
            "kaon_pool_capacity",
            "Allocatable of a pool's usable nodes (cores, bytes, GPUs).",
            labels=labels,
        )
        free = GaugeMetricFamily(
            "kaon_pool_free",
            "Allocatable minus requested in a pool (cores, bytes, GPUs).",
            labels=labels,
        )
        for cluster, ready, pools in self.clusters():
            up.add_metric([cluster], 1.0 if ready else 0.0)
            for pool, amounts in pools:
                for resource in ("cpu", "memory", "gpu"):
                    capacity.add_metric([cluster, pool, resource], amounts[f"{resource}_capacity"])
                    free.add_metric([cluster, pool, resource], amounts[f"{resource}_free"])
        yield up
        yield capacity
        yield free


def serve(port: int, collector: StateCollector) -> None:
    """Expose /metrics on `port` (0: off). A port in use is logged, not fatal."""
    REGISTRY.register(collector)
    if port <= 0:
        return
    try:
        start_http_server(port, registry=REGISTRY)
        log.info("metrics on :%d/metrics", port)
    except OSError as exc:
        log.warning("metrics: port %d: %s (metrics not served)", port, exc)
