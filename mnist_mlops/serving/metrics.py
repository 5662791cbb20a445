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

_DIGIT_COUNTERS = [PREDICTIONS.labels(digit=str(d)) for d in range(10)]


def count_predictions(predicted_counts) -> None:
    """Add per-class counts (a length-10 sequence) to the predictions counter."""
    for digit, count in enumerate(predicted_counts):
        if count:
            _DIGIT_COUNTERS[digit].inc(int(count))


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
