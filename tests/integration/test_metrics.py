"""The operator's Prometheus metrics, scraped from the running operator, and the dashboard's
every query naming a metric that exists (the operator's, or the V2 server's)."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaon_kernels.serve.feedback import Quality
from kaon_kernels.serve.metrics import ServeMetrics
from kaon_kernels.serve.monitor import DriftSnapshot

from kaonrig import REPO, Jobs, wait_for

pytestmark = pytest.mark.usefixtures("kaon_operator")

METRICS_URL = "http://127.0.0.1:8081/metrics"  # KAON_METRICS_PORT's default
DASHBOARD = REPO / "charts" / "kaon" / "dashboards" / "kaon.json"
LONG_RUN = {"kaon.dev/sim-exit-code": "0", "kaon.dev/sim-duration": "600s"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape() -> tuple[set[str], Samples]:
    """Metric family names and every sample of the operator's /metrics."""
    with urllib.request.urlopen(METRICS_URL, timeout=10) as answer:
        text = answer.read().decode()
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_the_operator_counts_decisions_and_reports_clusters_pools_and_jobs(
    jobs: Jobs, namespace: str
) -> None:
    east = {"clusterSelector": {"matchLabels": {"region": "us-east"}}}
    spec = {"model": {"family": "cnn"}, "workers": 2, "resources": {"cpu": 1}, "placement": east}
    jobs.create(namespace, "counted", spec, LONG_RUN)
    jobs.wait_state(namespace, "counted", "Running")

    _, samples = wait_for(
        scrape,
        lambda got: (value(got[1], "kaon_time_to_running_seconds_count") or 0) >= 1,
        "the operator's metrics to show a job running",
        30,
    )
    assert value(samples, "kaon_member_cluster_up", cluster="east") == 1.0
    assert value(samples, "kaon_member_cluster_up", cluster="west") == 1.0
    assert (value(samples, "kaon_trainingjobs", phase="Running") or 0) >= 1
    placed = value(
        samples,
        "kaon_placement_decisions_total",
        kind="trainingjob",
        cluster="east",
        pool="cpu",
        outcome="placed",
    )
    assert placed is not None and placed >= 1
    assert (value(samples, "kaon_admission_wait_seconds_count") or 0) >= 1
    # The rig's east has two A100 nodes of 8 GPUs each (rig/kaon_rig/pools.yaml).
    gpus = value(samples, "kaon_pool_capacity", cluster="east", pool="gpu-a100", resource="gpu")
    assert gpus == 16.0
    cpu_free = value(samples, "kaon_pool_free", cluster="east", pool="cpu", resource="cpu")
    cpu_all = value(samples, "kaon_pool_capacity", cluster="east", pool="cpu", resource="cpu")
    assert cpu_free is not None and cpu_all is not None and cpu_free <= cpu_all - 2


def _families_of_server() -> set[str]:
    """Every family a server exports, its quality ones included (measured drift, feedback)."""
    metrics = ServeMetrics("digits", "stable")
    drift = DriftSnapshot(300, 0.4, 2, (0.1, 0.2, 0.4), (0.5, 0.5), (0.4, 0.6))
    metrics.watch_quality(lambda: (drift, Quality(10, 0.9, 0.85, 0.8)))
    text = metrics.exposition().decode()
    return {f.name for f in text_string_to_metric_families(text)}


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, with histogram/summary suffixes removed."""
    names = set(re.findall(r"\bkaon_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


def test_every_dashboard_panel_queries_metrics_that_exist() -> None:
    operator_families, _ = scrape()
    known = {re.sub(r"_total$", "", f) for f in operator_families | _families_of_server()}
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 10
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            names = _metric_names(expr)
            assert names, (panel["title"], expr)
            assert names <= known, (panel["title"], names - known)
