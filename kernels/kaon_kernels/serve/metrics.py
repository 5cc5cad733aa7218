"""The server's Prometheus metrics, in a registry of its own (served at `GET /metrics`).

- `kaon_serve_requests_total{model,endpoint,code}` and `kaon_serve_request_errors_total{...}`
  (every answer with a code of 400 or more);
- `kaon_serve_request_duration_seconds{model}`: infer requests, body read to answer written;
- `kaon_serve_queue_duration_seconds{model}`: infer requests, arrival to their batch's start;
- `kaon_serve_compute_duration_seconds{model}`: one forward pass (a batch) on the worker;
- `kaon_serve_batch_size{model}`: samples per forward pass;
- `kaon_serve_inflight_requests{model}` and `kaon_serve_ready{model}` gauges;
- `kaon_serve_auth_denied_total{model,code}`: requests refused by authentication (`auth.py`):
  401, 403, 503 (they also count in the requests' totals);
- model quality, per model and revision, computed at each scrape (`watch_quality`):
  `kaon_model_drift_score` (the largest per-feature PSI of the recent inputs against the
  artifact's reference), `kaon_model_feature_psi{feature}`, `kaon_model_prediction_share{class}`
  (recent predictions) beside `kaon_model_reference_prediction_share{class}`,
  `kaon_model_drift_window_samples`, and from true labels sent back (`/feedback`)
  `kaon_model_live_accuracy`, `kaon_model_live_macro_recall`, `kaon_model_live_macro_f1` over
  the last pairs (`kaon_model_live_feedback_pairs`);
- the request log (`requestlog.py`), per model and revision: `kaon_request_log_records_total`
  (sampled requests written to the store) and `kaon_request_log_dropped_total{reason}` (sampled
  but not written: `buffer_full`, `upload_failed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.0,
    2.0,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    def __init__(self, model: str, revision: str = "") -> None:
        self.model = model
        self.revision = revision
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "kaon_serve_requests",
            "Requests answered, by endpoint and status code.",
            ["model", "endpoint", "code"],
            registry=r,
        )
        self._errors = Counter(
            "kaon_serve_request_errors",
            "Requests answered with a status code of 400 or more.",
            ["model", "endpoint", "code"],
            registry=r,
        )
        latency = Histogram(
            "kaon_serve_request_duration_seconds",
            "Infer requests: from the complete request to its answer.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        queue = Histogram(
            "kaon_serve_queue_duration_seconds",
            "Infer requests: waiting for a batch to start.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        compute = Histogram(
            "kaon_serve_compute_duration_seconds",
            "One batched forward pass.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        batch = Histogram(
            "kaon_serve_batch_size",
            "Samples per batched forward pass.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        inflight = Gauge(
            "kaon_serve_inflight_requests", "Infer requests being answered.", ["model"], registry=r
        )
        ready = Gauge(
            "kaon_serve_ready", "1 once the model is loaded and warm.", ["model"], registry=r
        )
        # Children bound once: a labels() lookup per request costs more than the observation.
        self.latency = latency.labels(model)
        self.queue = queue.labels(model)
        self.compute = compute.labels(model)
        self.batch_size = batch.labels(model)
        self.inflight = inflight.labels(model)
        self.ready = ready.labels(model)
        self._answers: dict[tuple[str, int], tuple[Counter, Counter | None]] = {}
        self._denied = Counter(
            "kaon_serve_auth_denied",
            "Requests refused by authentication, by status code.",
            ["model", "code"],
            registry=r,
        )
        self._log_records = Counter(
            "kaon_request_log_records",
            "Sampled infer requests written to the request log's store.",
            ["model", "revision"],
            registry=r,
        ).labels(model, revision)
        self._log_dropped = Counter(
            "kaon_request_log_dropped",
            "Sampled infer requests not written to the request log's store, by reason.",
            ["model", "revision", "reason"],
            registry=r,
        )

    def answered(self, endpoint: str, code: int) -> None:
        key = (endpoint, code)
        children = self._answers.get(key)
        if children is None:
            labels = (self.model, endpoint, str(code))
            err = self._errors.labels(*labels) if code >= 400 else None
            children = self._answers[key] = (self._requests.labels(*labels), err)
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    def auth_denied(self, code: int) -> None:
        self._denied.labels(self.model, str(code)).inc()

    def observe_batch(self, size: int, compute_s: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(compute_s)

    def request_log_written(self, records: int) -> None:
        self._log_records.inc(records)

    def request_log_dropped(self, reason: str, records: int) -> None:
        self._log_dropped.labels(self.model, self.revision, reason).inc(records)

    def watch_quality(self, source: Callable[[], tuple[Any, Any]]) -> None:
        """Export `source()`'s (DriftSnapshot | None, Quality | None) at every scrape."""
        self.registry.register(QualityCollector(self.model, self.revision, source))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class QualityCollector(Collector):
    def __init__(self, model: str, revision: str, source: Callable[[], tuple[Any, Any]]) -> None:
        self.labels = [model, revision]
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drift, quality = self.source()
        names = ["model", "revision"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(self.labels, value)
            return family

        if drift is not None:
            yield gauge(
                "kaon_model_drift_window_samples",
                "Recent inputs in the drift window.",
                drift.samples,
            )
            if drift.score is not None:
                yield gauge(
                    "kaon_model_drift_score",
                    "Largest per-feature PSI of the recent inputs against the reference.",
                    drift.score,
                )
                per_feature = GaugeMetricFamily(
                    "kaon_model_feature_psi",
                    "PSI of one input feature's recent values against the reference.",
                    labels=[*names, "feature"],
                )
                for f, value in enumerate(drift.feature_psi):
                    per_feature.add_metric([*self.labels, str(f)], value)
                yield per_feature
            for name, shares, doc in (
                ("kaon_model_prediction_share", drift.class_shares, "recent predictions"),
                (
                    "kaon_model_reference_prediction_share",
                    drift.reference_class_shares,
                    "predictions on the validation samples at training",
                ),
            ):
                family = GaugeMetricFamily(
                    name, f"Share of each class among the {doc}.", labels=[*names, "class"]
                )
                for c, share in enumerate(shares):
                    family.add_metric([*self.labels, str(c)], share)
                yield family
        if quality is not None:
            yield gauge(
                "kaon_model_live_feedback_pairs", "Labelled answers in the window.", quality.pairs
            )
            yield gauge(
                "kaon_model_live_accuracy", "Accuracy over the labelled answers.", quality.accuracy
            )
            yield gauge(
                "kaon_model_live_macro_recall",
                "Macro recall over the labelled answers.",
                quality.macro_recall,
            )
            yield gauge(
                "kaon_model_live_macro_f1", "Macro F1 over the labelled answers.", quality.macro_f1
            )
