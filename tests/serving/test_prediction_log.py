"""The prediction log round-trips, rotates within its budget, joins feedback and survives tears."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np

from mnist_mlops.serving.prediction_log import (
    HEADER_BYTES,
    PREDICTION_DTYPE,
    PredictionLogWriter,
    new_prediction_id,
    prediction_exists,
    read_prediction_log,
)


def _batch(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    return [new_prediction_id() for _ in range(n)], images, probs


def test_round_trip_with_feedback(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    ids, images, probs = _batch(5)
    writer.log_predictions(ids, images, probs, model_version="3")
    writer.log_feedback(ids[1], 7)
    writer.log_feedback(ids[1], 4)  # a correction: the latest label wins
    writer.close()

    window = read_prediction_log(tmp_path)
    assert list(window.ids) == ids
    np.testing.assert_array_equal(window.images, images)
    np.testing.assert_allclose(window.probabilities, probs)
    np.testing.assert_array_equal(window.predicted, probs.argmax(axis=1))
    assert list(window.model_versions) == ["3"] * 5
    assert window.labels.tolist() == [-1, 4, -1, -1, -1]
    assert window.images.dtype == np.uint8 and window.predicted.dtype == np.int64
    assert window.timestamps.dtype == np.dtype("datetime64[us]")
    assert prediction_exists(tmp_path, ids[0]) and not prediction_exists(tmp_path, "0" * 32)


def test_last_n_and_since(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for k in range(4):
        ids, images, probs = _batch(3, seed=k)
        stamp = int((start + timedelta(hours=k)).timestamp() * 1e6)
        writer.log_predictions(ids, images, probs, model_version=str(k), timestamp_us=stamp)
        writer.flush()
    writer.close()
    assert len(read_prediction_log(tmp_path)) == 12
    assert list(read_prediction_log(tmp_path, last_n=4).model_versions) == ["2", "3", "3", "3"]
    recent = read_prediction_log(tmp_path, since=start + timedelta(hours=2))
    assert set(recent.model_versions) == {"2", "3"} and len(recent) == 6
    both = read_prediction_log(tmp_path, last_n=2, since=start + timedelta(hours=1))
    assert len(both) == 2
    assert len(read_prediction_log(tmp_path / "missing")) == 0


def test_rotation_keeps_total_within_budget(tmp_path):
    record = PREDICTION_DTYPE.itemsize
    writer = PredictionLogWriter(
        tmp_path,
        max_segment_bytes=HEADER_BYTES + 10 * record,
        max_total_bytes=3 * (HEADER_BYTES + 10 * record),
        flush_interval_s=60,
    )
    all_ids = []
    for k in range(10):
        ids, images, probs = _batch(7, seed=k)
        all_ids += ids
        writer.log_predictions(ids, images, probs, model_version="1")
        writer.flush()
    writer.close()
    segments = list(tmp_path.glob("predictions-*.bin"))
    assert sum(p.stat().st_size for p in segments) <= 3 * (HEADER_BYTES + 10 * record)
    window = read_prediction_log(tmp_path)
    assert 20 <= len(window) <= 30
    assert list(window.ids) == all_ids[-len(window) :]  # the newest survive, in order


def test_torn_trailing_record_is_ignored(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    ids, images, probs = _batch(3)
    writer.log_predictions(ids, images, probs, model_version="1")
    writer.close()
    (segment,) = tmp_path.glob("predictions-*.bin")
    with open(segment, "ab") as handle:
        handle.write(b"\x01" * (PREDICTION_DTYPE.itemsize // 2))
    assert list(read_prediction_log(tmp_path).ids) == ids


def test_background_flush_and_concurrent_writers(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=0.05)

    def work(seed: int) -> None:
        for k in range(20):
            writer.log_predictions(*_batch(2, seed=seed * 100 + k), model_version="1")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = datetime.now() + timedelta(seconds=5)
    while len(read_prediction_log(tmp_path)) < 160 and datetime.now() < deadline:
        threading.Event().wait(0.05)
    assert len(read_prediction_log(tmp_path)) == 160  # flushed without close()
    writer.close()
