"""The prediction log round-trips, rotates within its budget, joins feedback, survives tears and
is shared safely by several writers on one folder."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mnist_mlops.predictions import (
    PredictionLogWriter,
    new_prediction_id,
    prediction_exists,
    read_prediction_log,
)

RECORD = 784 + 10 * 4 + 32 + 8 + 2 + 1  # roughly one prediction's bytes in a segment


def _batch(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10), size=n).astype(np.float32)
    return [new_prediction_id() for _ in range(n)], images, probs


def _segment_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.glob("predictions-*.arrows"))


def test_round_trip_with_feedback(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    ids, images, probs = _batch(5)
    writer.log_predictions(ids, images, probs, model_version="3")
    assert writer.log_feedback(ids[1], 7)
    assert writer.log_feedback(ids[1], 4)  # a repeat: stored, but the first label wins
    assert writer.log_feedback(ids[2], 5)
    assert writer.log_feedback(ids[2], 6, trusted=True)  # a trusted label beats an untrusted one
    writer.close()

    window = read_prediction_log(tmp_path)
    assert list(window.ids) == ids
    np.testing.assert_array_equal(window.images, images)
    np.testing.assert_allclose(window.probabilities, probs)
    np.testing.assert_array_equal(window.predicted, probs.argmax(axis=1))
    assert list(window.model_versions) == ["3"] * 5
    assert window.labels.tolist() == [-1, 7, 6, -1, -1]
    assert window.label_trusted.tolist() == [False, False, True, False, False]
    assert window.images.dtype == np.uint8 and window.predicted.dtype == np.int64
    assert window.timestamps.dtype == np.dtype("datetime64[us]")
    assert not window.damage.any
    assert prediction_exists(tmp_path, ids[0]) and not prediction_exists(tmp_path, "0" * 32)


def test_segments_open_with_pandas_and_pyarrow(tmp_path):
    """The documented one-liner works on a live log (no end-of-stream marker yet) too."""
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    ids, images, probs = _batch(4)
    writer.log_predictions(ids, images, probs, model_version="2")
    writer.flush()
    for _ in range(2):  # open, then closed
        frame = pd.concat(
            pa.ipc.open_stream(p).read_pandas() for p in sorted(tmp_path.glob("predictions-*"))
        )
        assert frame["id"].tolist() == ids
        assert frame["predicted"].tolist() == probs.argmax(axis=1).tolist()
        assert bytes(frame["image"].iloc[2]) == images[2].tobytes()
        writer.close()


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
    segment = 10 * RECORD
    writer = PredictionLogWriter(
        tmp_path, max_segment_bytes=segment, max_total_bytes=3 * segment, flush_interval_s=60
    )
    all_ids = []
    for k in range(10):
        ids, images, probs = _batch(7, seed=k)
        all_ids += ids
        writer.log_predictions(ids, images, probs, model_version="1")
        writer.flush()
    writer.close()
    assert _segment_bytes(tmp_path) <= 3 * segment
    window = read_prediction_log(tmp_path)
    assert 14 <= len(window) < 70
    assert list(window.ids) == all_ids[-len(window) :]  # the newest survive, in order


def test_torn_trailing_record_is_ignored(tmp_path):
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    ids, images, probs = _batch(3)
    writer.log_predictions(ids, images, probs, model_version="1")
    writer.flush()
    (segment,) = tmp_path.glob("predictions-*.arrows")
    whole = segment.read_bytes()
    writer.log_predictions(*_batch(2, seed=1), model_version="1")
    writer.flush()
    writer.close()
    tail = segment.read_bytes()[len(whole) :]
    segment.write_bytes(whole + tail[: len(tail) // 2])  # a crash in the middle of a write
    window = read_prediction_log(tmp_path)
    assert list(window.ids) == ids
    assert window.damage.torn_tails == 1 and window.damage.skipped_bytes == len(tail) // 2


def test_background_flush_and_concurrent_threads(tmp_path):
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


def _assert_newest_suffix(window_ids: list[str], written: list[str]) -> int:
    """This writer's surviving ids are exactly its newest ones, none missing in between."""
    kept = [i for i in window_ids if i in set(written)]
    assert kept == written[len(written) - len(kept) :]
    return len(kept)


@pytest.mark.parametrize("flushes", [12])
def test_two_writers_over_budget_delete_only_their_own(tmp_path, flushes):
    """The bug this replaces: a writer deleted the other's open segment and the other kept
    appending to the unlinked file. Now each keeps its own newest records and its share."""
    segment = 10 * RECORD
    budget = 6 * segment
    writers = [
        PredictionLogWriter(
            tmp_path, max_segment_bytes=segment, max_total_bytes=budget, flush_interval_s=60
        )
        for _ in range(2)
    ]
    written: list[list[str]] = [[], []]
    for k in range(flushes):
        for w, writer in enumerate(writers):
            ids, images, probs = _batch(4 + 3 * w, seed=10 * k + w)  # unequal rates
            writer.log_predictions(ids, images, probs, model_version=str(w))
            written[w] += ids
            writer.flush()
            # no segment of the other (live) writer has gone missing, open or closed
    assert sum(writer.lost.get(("predictions", "segment_deleted"), 0) for writer in writers) == 0
    window = list(read_prediction_log(tmp_path).ids)
    kept = [_assert_newest_suffix(window, ids) for ids in written]
    # both writers still hold about their share of the budget (half each, within one segment)
    for count in kept:
        assert count * RECORD >= budget / 2 - 2 * segment, kept
    assert _segment_bytes(tmp_path) <= budget + 2 * segment
    for writer in writers:
        writer.close()


def test_a_dead_writers_segments_are_retired_first(tmp_path):
    segment = 10 * RECORD
    dead = PredictionLogWriter(
        tmp_path, max_segment_bytes=segment, max_total_bytes=4 * segment, flush_interval_s=60
    )
    for k in range(4):
        dead.log_predictions(*_batch(9, seed=k), model_version="old")
        dead.flush()
    dead.close()  # a stopped server (a crashed one leaves its lock unheld the same way)
    live = PredictionLogWriter(
        tmp_path, max_segment_bytes=segment, max_total_bytes=4 * segment, flush_interval_s=60
    )
    events: list[tuple] = []
    live._on_event = lambda *event: events.append(event)
    for k in range(3):
        live.log_predictions(*_batch(9, seed=10 + k), model_version="new")
        live.flush()
    live.close()
    assert ("segment_deleted", "predictions", "orphan", 1) in events
    versions = read_prediction_log(tmp_path).model_versions.tolist()
    assert versions.count("new") == 27 and versions.count("old") < 36


def test_ids_of_any_shape_round_trip(tmp_path):
    """The fast path for 32-character ASCII ids must not mangle other ids."""
    writer = PredictionLogWriter(tmp_path, flush_interval_s=60)
    for ids in (["a" * 32, "b" * 32], ["short", "a-longer-id"], ["ünïcode-ïd", "x" * 10]):
        writer.log_predictions(ids, np.zeros((2, 28, 28), np.uint8), np.full((2, 10), 0.1), "v")
        writer.flush()
    writer.close()
    assert list(read_prediction_log(tmp_path).ids) == [
        "a" * 32,
        "b" * 32,
        "short",
        "a-longer-id",
        "ünïcode-ïd",
        "x" * 10,
    ]
