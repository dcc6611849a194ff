"""The tail server's Prometheus metrics, in its own ``CollectorRegistry`` (never the global one).

Names follow Prometheus conventions: ``splitinf_`` prefix, base units (``_seconds``, ``_bytes``),
``_total`` for counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["INFERENCE_BUCKETS_S", "ModelSeries", "ServerMetrics"]

# Tail inference is sub-millisecond for small tails and ~100 ms for big ones on CPU.
INFERENCE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The tail server's metrics, in a registry of its own (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "splitinf_requests",
            "Inference requests answered, by model and gRPC status code",
            ["model", "code"],
            registry=self.registry,
        )
        self.failures = Counter(
            "splitinf_request_failures",
            "Inference requests answered with an error, by model and gRPC status code",
            ["model", "code"],
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "splitinf_queue_seconds",
            "Time a request waited for an execution slot or a batch",
            ["model"],
            buckets=INFERENCE_BUCKETS_S,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "splitinf_compute_seconds",
            "onnxruntime time per execution (one batch when batching)",
            ["model"],
            buckets=INFERENCE_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "splitinf_batch_size",
            "Samples (first dimension) per onnxruntime execution",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.request_bytes = Counter(
            "splitinf_request_bytes", "Tensor bytes received in inference requests", ["model"], registry=self.registry
        )
        self.response_bytes = Counter(
            "splitinf_response_bytes", "Tensor bytes sent in inference responses", ["model"], registry=self.registry
        )
        self.dropped = Counter(
            "splitinf_requests_dropped",
            "Requests dropped unrun: their deadline passed, their client left, or they could not finish in time",
            ["model", "reason"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "splitinf_inflight_requests", "Inference requests admitted and not yet answered", registry=self.registry
        )
        self.typical_compute_seconds = Gauge(
            "splitinf_typical_compute_seconds",
            "Median onnxruntime time of a model's recent executions, timed from load on (what deadlines are judged by)",
            ["model", "version"],
            registry=self.registry,
        )
        self._by_model: dict[str, ModelSeries] = {}

    def model(self, name: str) -> ModelSeries:
        """``name``'s metric children; pass only names of served models (clients choose the others)."""
        series = self._by_model.get(name)
        if series is None:
            series = self._by_model[name] = ModelSeries(self, name)
        return series

    def record_request(self, model: str, code: str) -> None:
        self.requests.labels(model=model, code=code).inc()
        if code != "OK":
            self.failures.labels(model=model, code=code).inc()


class ModelSeries:
    """One model's metric children, looked up once: ``labels()`` costs about a microsecond per call."""

    def __init__(self, metrics: ServerMetrics, model: str):
        self.queue_seconds = metrics.queue_seconds.labels(model=model)
        self.compute_seconds = metrics.compute_seconds.labels(model=model)
        self.batch_size = metrics.batch_size.labels(model=model)
        self.request_bytes = metrics.request_bytes.labels(model=model)
        self.response_bytes = metrics.response_bytes.labels(model=model)
        self.requests_ok = metrics.requests.labels(model=model, code="OK")
