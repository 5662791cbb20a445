"""Reading the prediction log: a window of predictions with their feedback labels joined in.

Segments are read newest first (stopping once ``last_n`` records are found), damage is skipped
and counted, never raised, and feedback is joined by prediction id: a trusted label beats an
untrusted one, and among labels of equal trust the *first* wins, so repeats cannot replace
legitimate feedback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES
from mnist_mlops.predictions.format import (
    PIXELS,
    SCHEMAS,
    LogDamage,
    list_segments,
    read_segment,
    to_us,
)

_log = logging.getLogger(__name__)


def _read_kind(
    log_dir: Path, kind: str, min_timestamp_us: int | None, need: int | None, damage: LogDamage
) -> pa.Table:
    """Records of one kind, oldest first; reads newest segments first and stops early."""
    schema = SCHEMAS[kind]
    tables: list[pa.Table] = []
    count = 0
    for seg in reversed(list_segments(log_dir, kind)):
        batches, seen = read_segment(seg.path, schema)
        damage.add(seen)
        if seen.any:
            _log.warning("prediction log: skipped damage in %s: %s", seg.path.name, seen)
        table = pa.Table.from_batches(batches, schema=schema)
        if min_timestamp_us is not None and table.num_rows:
            stamps = table.column("timestamp").cast(pa.int64()).to_numpy()
            table = table.filter(pa.array(stamps >= min_timestamp_us))
        tables.append(table)
        count += table.num_rows
        if need is not None and count >= need and min_timestamp_us is None:
            break
    merged = pa.concat_tables(tables[::-1]) if tables else schema.empty_table()
    if merged.num_rows:
        stamps = merged.column("timestamp").cast(pa.int64()).to_numpy()
        merged = merged.take(pa.array(np.argsort(stamps, kind="stable")))
    return merged.combine_chunks()


@dataclass(frozen=True)
class PredictionWindow:
    """A window of logged predictions, oldest first, with feedback labels joined in.

    ``timestamps`` are numpy ``datetime64[us]`` in UTC; ``labels`` is -1 where no feedback
    was given, and ``label_trusted`` says whether the winning label came with a valid
    feedback token; ``images`` are uint8 (N, 28, 28), 0 background, 255 ink (as served).
    """

    ids: np.ndarray  # str objects (N,)
    timestamps: np.ndarray  # datetime64[us] (N,)
    images: np.ndarray  # uint8 (N, 28, 28)
    probabilities: np.ndarray  # float32 (N, 10)
    predicted: np.ndarray  # int64 (N,)
    model_versions: np.ndarray  # str objects (N,)
    labels: np.ndarray  # int64 (N,), -1 = no feedback
    label_trusted: np.ndarray  # bool (N,)
    damage: LogDamage = field(default_factory=LogDamage)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def has_label(self) -> np.ndarray:
        """Boolean mask of predictions whose true label is known."""
        return self.labels >= 0


def _fixed_column(table: pa.Table, name: str, dtype: np.dtype, width: int) -> np.ndarray:
    """A fixed-width column as an (N, width) numpy array, one copy."""
    n = table.num_rows
    if n == 0:
        return np.empty((0, width), dtype)
    array = table.column(name).combine_chunks()
    if isinstance(array, pa.FixedSizeListArray):
        array = array.flatten()
        return array.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, width)
    raw = np.frombuffer(array.buffers()[1], dtype=dtype)
    return raw[array.offset * width : (array.offset + n) * width].reshape(n, width).copy()


def feedback_winners(feedback: pa.Table) -> dict[str, tuple[int, bool]]:
    """id -> (label, trusted): a trusted label beats an untrusted one, then the first wins."""
    if feedback.num_rows == 0:
        return {}
    ids = feedback.column("id").to_pylist()
    labels = feedback.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    trusted = feedback.column("trusted").to_numpy(zero_copy_only=False).astype(bool)
    stamps = feedback.column("timestamp").cast(pa.int64()).to_numpy()
    order = np.lexsort((stamps, ~trusted))  # trusted first, then oldest first
    winners: dict[str, tuple[int, bool]] = {}
    for i in order.tolist():
        winners.setdefault(ids[i], (int(labels[i]), bool(trusted[i])))
    return winners


def read_prediction_log(
    log_dir: str | Path, last_n: int | None = None, since: datetime | None = None
) -> PredictionWindow:
    """The logged predictions (optionally only the newest ``last_n`` and/or those at or after
    ``since``), oldest first, with feedback labels joined by prediction id. Damage in the
    log is skipped and reported in ``window.damage``, never raised."""
    log_dir = Path(log_dir)
    damage = LogDamage()
    min_us = to_us(since) if since is not None else None
    records = _read_kind(log_dir, "predictions", min_us, last_n, damage)
    if last_n is not None:
        records = records.slice(max(0, records.num_rows - last_n)) if last_n > 0 else records[:0]
    n = records.num_rows
    ids = np.array(records.column("id").to_pylist(), dtype=object)
    labels = np.full(n, -1, dtype=np.int64)
    trusted = np.zeros(n, dtype=bool)
    if n:
        winners = feedback_winners(_read_kind(log_dir, "feedback", None, None, damage))
        for row, prediction_id in enumerate(ids.tolist()):
            if (hit := winners.get(prediction_id)) is not None:
                labels[row], trusted[row] = hit
    stamps = records.column("timestamp").cast(pa.int64()).to_numpy().astype("datetime64[us]")
    return PredictionWindow(
        ids=ids,
        timestamps=stamps,
        images=_fixed_column(records, "image", np.dtype(np.uint8), PIXELS).reshape(
            n, IMAGE_SIDE, IMAGE_SIDE
        ),
        probabilities=_fixed_column(records, "probabilities", np.dtype(np.float32), NUM_CLASSES),
        predicted=records.column("predicted").to_numpy(zero_copy_only=False).astype(np.int64),
        model_versions=np.array(records.column("model_version").to_pylist(), dtype=object),
        labels=labels,
        label_trusted=trusted,
        damage=damage,
    )
