"""The serving server's Prometheus metrics (the dashboards read them; the operator's autoscaler
reads the in-flight gauge)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
REQUESTS = Counter("distml_serve_requests", "Inference requests answered", ["code"])
REQUEST_SECONDS = Histogram(
    "distml_serve_request_duration_seconds",
    "From a request's arrival to its answer, queueing included",
    buckets=_LATENCY,
)
BATCH_ROWS = Histogram(
    "distml_serve_batch_size", "Rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
INFERENCE_SECONDS = Histogram(
    "distml_serve_inference_duration_seconds", "One batched forward pass", buckets=_LATENCY
)
QUEUE_DEPTH = Gauge("distml_serve_queue_depth", "Requests waiting for the batcher")
IN_FLIGHT = Gauge("distml_serve_inflight_requests", "Inference requests being answered now")
READY = Gauge("distml_serve_ready", "1 while the server answers ready (model loaded, warmed up)")
