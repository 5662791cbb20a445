"""Prometheus metrics of the serving app (latency, predictions per class, model version).

With several uvicorn workers, ``mnist_mlops.serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and
/metrics aggregates all workers; with one worker the default registry is used as is.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUEST_LATENCY = Histogram(
    "mnist_request_latency_seconds",
    "Time spent handling a request, by endpoint",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "mnist_predictions_total", "Predictions served, by predicted class", ["digit"]
)
REJECTED = Counter(
    "mnist_rejected_requests_total", "Requests refused with a 4xx/503, by status", ["status"]
)
MODEL_CALL_SIZE = Histogram(
    "mnist_model_call_images",
    "Images per model call (micro-batching coalesces concurrent requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
MODEL_VERSION = Gauge(
    "mnist_model_version",
    "Registry version of the served model (-1: run fallback, 0: none)",
    multiprocess_mode="liveall",
)
MODEL_INFO = Gauge(
    "mnist_model_info",
    "The served model (value 1) with its name, version and source as labels",
    ["name", "version", "source"],
    multiprocess_mode="liveall",
)
MODEL_RELOADS = Counter("mnist_model_reloads_total", "Times a new model was swapped in")
LOG_DROPPED = Gauge(
    "mnist_prediction_log_dropped",
    "Predictions not logged because the disk fell behind",
    multiprocess_mode="liveall",
)

LOG_WRITE_FAILURES = Counter(
    "mnist_prediction_log_write_failures_total",
    "Writes the disk refused (truncated back to the last whole record), by kind and reason",
    ["kind", "reason"],
)
LOG_RECORDS_LOST = Counter(
    "mnist_prediction_log_records_lost_total",
    "Records that never reached the log or vanished from it, by kind and reason",
    ["kind", "reason"],
)
LOG_RECREATED = Counter(
    "mnist_prediction_log_recreated_total",
    "Times the log folder (or this writer's lock in it) was found deleted and recreated",
    ["kind"],
)
LOG_SEGMENTS_DELETED = Counter(
    "mnist_prediction_log_segments_deleted_total",
    "Segments retired to keep the size budget (budget: own, over its share; orphan: dead writer)",
    ["kind", "reason"],
)
LOG_CORRUPT = Counter(
    "mnist_prediction_log_corrupt_total",
    "Damaged segments or spans the reader skipped while indexing, by kind and reason",
    ["kind", "reason"],
)
FEEDBACK = Counter(
    "mnist_feedback_total",
    "Feedback requests by outcome (recorded_trusted, recorded_untrusted, duplicate, "
    "unknown_id, bad_token, rate_limited, invalid, storage_failed)",
    ["outcome"],
)

_LOG_EVENTS = {
    "write_failed": LOG_WRITE_FAILURES,
    "lost": LOG_RECORDS_LOST,
    "segment_deleted": LOG_SEGMENTS_DELETED,
    "corrupt": LOG_CORRUPT,
}

_DIGIT_COUNTERS = [PREDICTIONS.labels(digit=str(d)) for d in range(10)]


def count_predictions(predicted_counts) -> None:
    """Add per-class counts (a length-10 sequence) to the predictions counter."""
    for digit, count in enumerate(predicted_counts):
        if count:
            _DIGIT_COUNTERS[digit].inc(int(count))


def log_event(event: str, kind: str, reason: str, count: int) -> None:
    """The prediction log's event hook: every failure it survives becomes a counter."""
    if count <= 0:
        return
    if event == "recreated":
        LOG_RECREATED.labels(kind=kind).inc(count)
    elif (counter := _LOG_EVENTS.get(event)) is not None:
        counter.labels(kind=kind, reason=reason).inc(count)


def set_model(name: str, version: str | None, source: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(name=name, version=version or "none", source=source).set(1)
    MODEL_VERSION.set(int(version) if version and version.isdigit() else -1)
    MODEL_RELOADS.inc()


def render() -> tuple[bytes, str]:
    """The exposition text (all workers' values when running multi-process)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
