"""The prediction log: every served prediction, kept for drift monitoring and feedback.

Storage is a directory of append-only segment files of fixed-size binary records, so a write
is one ``file.write`` of a packed numpy array and a read is ``np.fromfile``: no parsing, no
per-row objects. Layout::

    <log_dir>/predictions-<start_ns>-<pid>.bin   header + records of PREDICTION_DTYPE
    <log_dir>/feedback-<start_ns>-<pid>.bin      header + records of FEEDBACK_DTYPE

Each writer (one per serving worker process) owns its own segments, so workers never
interleave bytes. A segment is closed after ``max_segment_bytes``; the oldest segments of a
kind are deleted once the kind's total exceeds its budget, which bounds the disk used. A
record torn by a crash (a trailing partial record) is ignored by the reader.

Requests only append to an in-memory buffer under a lock; a background thread writes the
buffer out every ``flush_interval_s`` seconds, so logging costs a request microseconds.
Feedback (the true label of a prediction id) is stored separately and joined at read time;
the latest label given for an id wins.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES

MAGIC = b"MNISTPL1"
ID_BYTES = 32  # uuid4 hex
VERSION_BYTES = 32
PREDICTION_DTYPE = np.dtype(
    [
        ("id", f"S{ID_BYTES}"),
        ("timestamp_us", "<i8"),
        ("model_version", f"S{VERSION_BYTES}"),
        ("predicted", "<i2"),
        ("probabilities", "<f4", (NUM_CLASSES,)),
        ("image", "u1", (IMAGE_SIDE, IMAGE_SIDE)),
    ]
)
FEEDBACK_DTYPE = np.dtype([("id", f"S{ID_BYTES}"), ("timestamp_us", "<i8"), ("label", "<i2")])
_KINDS = {"predictions": PREDICTION_DTYPE, "feedback": FEEDBACK_DTYPE}
_log = logging.getLogger(__name__)
HEADER_BYTES = 16  # MAGIC + uint32 record size + 4 reserved bytes


def _header(dtype: np.dtype) -> bytes:
    return MAGIC + np.uint32(dtype.itemsize).tobytes() + b"\0" * 4


def new_prediction_id() -> str:
    """A fresh prediction id (32 hex characters), unique across workers and restarts."""
    return os.urandom(16).hex()


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_us(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


@dataclass(frozen=True)
class PredictionWindow:
    """A window of logged predictions, oldest first, with feedback labels joined in.

    ``timestamps`` are numpy ``datetime64[us]`` in UTC; ``labels`` is -1 where no feedback
    was given; ``images`` are uint8 (N, 28, 28), 0 background, 255 ink (as served).
    """

    ids: np.ndarray  # str objects (N,)
    timestamps: np.ndarray  # datetime64[us] (N,)
    images: np.ndarray  # uint8 (N, 28, 28)
    probabilities: np.ndarray  # float32 (N, 10)
    predicted: np.ndarray  # int64 (N,)
    model_versions: np.ndarray  # str objects (N,)
    labels: np.ndarray  # int64 (N,), -1 = no feedback

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def has_label(self) -> np.ndarray:
        """Boolean mask of predictions whose true label is known."""
        return self.labels >= 0


class _SegmentedAppender:
    """Appends packed records of one kind to rotated, size-bounded segment files."""

    def __init__(
        self, log_dir: Path, kind: str, max_segment_bytes: int, max_total_bytes: int
    ) -> None:
        self.log_dir = log_dir
        self.kind = kind
        self.dtype = _KINDS[kind]
        self.max_segment_bytes = max(max_segment_bytes, HEADER_BYTES + self.dtype.itemsize)
        self.max_total_bytes = max(max_total_bytes, self.max_segment_bytes)
        self._file = None
        self._written = 0

    def _open_new_segment(self) -> None:
        self.close()
        name = f"{self.kind}-{time.time_ns():020d}-{os.getpid()}.bin"
        self._file = open(self.log_dir / name, "ab", buffering=0)  # noqa: SIM115 (kept open)
        self._file.write(_header(self.dtype))
        self._written = HEADER_BYTES

    def write(self, records: np.ndarray) -> None:
        """Write records, starting new segments at the size limit, then enforce the budget."""
        per_segment = (self.max_segment_bytes - HEADER_BYTES) // self.dtype.itemsize
        start = 0
        while start < len(records):
            if self._file is None or self._written + self.dtype.itemsize > self.max_segment_bytes:
                self._open_new_segment()
            room = per_segment - (self._written - HEADER_BYTES) // self.dtype.itemsize
            chunk = records[start : start + room]
            self._file.write(chunk.tobytes())
            self._written += chunk.nbytes
            start += len(chunk)
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        """Delete this kind's oldest segments (any worker's) until the total fits the budget."""
        segments = _segments(self.log_dir, self.kind)
        sizes = []
        for path in segments:
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:  # another worker removed it first
                sizes.append(0)
        total = sum(sizes)
        current = Path(self._file.name) if self._file is not None else None
        for path, size in zip(segments, sizes, strict=True):
            if total <= self.max_total_bytes:
                break
            if path == current:
                continue
            path.unlink(missing_ok=True)
            total -= size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PredictionLogWriter:
    """Buffered, thread-safe writer; a daemon thread flushes to disk in the background."""

    def __init__(
        self,
        log_dir: str | Path,
        max_segment_bytes: int = 16 * 1024 * 1024,
        max_total_bytes: int = 512 * 1024 * 1024,
        max_feedback_bytes: int = 32 * 1024 * 1024,
        flush_interval_s: float = 0.5,
        max_buffered_records: int = 50_000,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        feedback_segment = min(max_segment_bytes, max_feedback_bytes)
        self._appenders = {
            "predictions": _SegmentedAppender(
                self.log_dir, "predictions", max_segment_bytes, max_total_bytes
            ),
            "feedback": _SegmentedAppender(
                self.log_dir, "feedback", feedback_segment, max_feedback_bytes
            ),
        }
        self._buffers: dict[str, list[np.ndarray]] = {"predictions": [], "feedback": []}
        self._buffered = 0
        self.max_buffered_records = max_buffered_records
        self.dropped = 0  # records shed because the disk could not keep up
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.flush_interval_s = flush_interval_s
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def log_predictions(
        self,
        ids: Sequence[str],
        images: np.ndarray,
        probabilities: np.ndarray,
        model_version: str,
        timestamp_us: int | None = None,
    ) -> None:
        """Queue predictions: ids (N,), uint8 images (N,28,28), probabilities (N,10)."""
        n = len(ids)
        records = np.empty(n, dtype=PREDICTION_DTYPE)
        records["id"] = ids
        records["timestamp_us"] = timestamp_us if timestamp_us is not None else _now_us()
        records["model_version"] = str(model_version).encode()[:VERSION_BYTES]
        records["probabilities"] = probabilities
        records["predicted"] = np.argmax(probabilities, axis=1)
        records["image"] = images
        self._enqueue("predictions", records)

    def log_feedback(self, prediction_id: str, label: int) -> None:
        """Queue the true label for one prediction id."""
        record = np.empty(1, dtype=FEEDBACK_DTYPE)
        record["id"] = prediction_id
        record["timestamp_us"] = _now_us()
        record["label"] = label
        self._enqueue("feedback", record)

    def _enqueue(self, kind: str, records: np.ndarray) -> None:
        with self._lock:
            if kind == "predictions" and self._buffered >= self.max_buffered_records:
                # Never let a slow disk grow memory without bound or stall requests.
                self.dropped += len(records)
                return
            self._buffers[kind].append(records)
            self._buffered += len(records)

    def flush(self) -> None:
        """Write everything buffered so far (called by the thread, on close, and by tests)."""
        with self._io_lock:
            with self._lock:
                buffers, self._buffers = self._buffers, {"predictions": [], "feedback": []}
                self._buffered = 0
            for kind, chunks in buffers.items():
                if chunks:
                    self._appenders[kind].write(np.concatenate(chunks))

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # a full disk must not kill the flusher: lose records, not requests
                _log.exception("prediction log flush failed in %s", self.log_dir)

    def close(self) -> None:
        """Stop the flusher and write out the remaining buffer."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
        for appender in self._appenders.values():
            appender.close()


def _segments(log_dir: Path, kind: str) -> list[Path]:
    """Segments of one kind, oldest first (names start with the creation time)."""
    return sorted(log_dir.glob(f"{kind}-*.bin"))


def _read_segment(path: Path, dtype: np.dtype) -> np.ndarray:
    """The whole records of one segment; a torn trailing record or a foreign file is skipped."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:  # rotated away while we listed
        return np.empty(0, dtype=dtype)
    if raw.size < HEADER_BYTES or raw[:8].tobytes() != MAGIC:
        return np.empty(0, dtype=dtype)
    if int(raw[8:12].view("<u4")[0]) != dtype.itemsize:
        return np.empty(0, dtype=dtype)
    body = raw[HEADER_BYTES:]
    whole = body.size // dtype.itemsize * dtype.itemsize
    return body[:whole].view(dtype)


def _read_kind(
    log_dir: Path, kind: str, min_timestamp_us: int | None, need: int | None
) -> np.ndarray:
    """Records of one kind, oldest first; reads newest segments first and stops early."""
    dtype = _KINDS[kind]
    chunks: list[np.ndarray] = []
    count = 0
    for path in reversed(_segments(log_dir, kind)):
        records = _read_segment(path, dtype)
        if min_timestamp_us is not None:
            records = records[records["timestamp_us"] >= min_timestamp_us]
        chunks.append(records)
        count += len(records)
        if need is not None and count >= need and min_timestamp_us is None:
            break
    if not chunks:
        return np.empty(0, dtype=dtype)
    merged = np.concatenate(chunks[::-1])
    return merged[np.argsort(merged["timestamp_us"], kind="stable")]


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() for v in values], dtype=object)


def read_prediction_log(
    log_dir: str | Path, last_n: int | None = None, since: datetime | None = None
) -> PredictionWindow:
    """The logged predictions (optionally only the newest ``last_n`` and/or those at or after
    ``since``), oldest first, with feedback labels joined by prediction id."""
    log_dir = Path(log_dir)
    min_us = _to_us(since) if since is not None else None
    records = _read_kind(log_dir, "predictions", min_us, last_n) if log_dir.is_dir() else None
    if records is None:
        records = np.empty(0, dtype=PREDICTION_DTYPE)
    if last_n is not None:
        records = records[-last_n:] if last_n > 0 else records[:0]
    labels = np.full(len(records), -1, dtype=np.int64)
    if len(records):
        feedback = _read_kind(log_dir, "feedback", None, None)
        if len(feedback):
            # Later feedback overrides earlier: keep the last occurrence of each id.
            latest: dict[bytes, int] = dict(
                zip(feedback["id"].tolist(), feedback["label"].tolist(), strict=True)
            )
            ids = records["id"].tolist()
            labels = np.fromiter((latest.get(i, -1) for i in ids), np.int64, count=len(ids))
    return PredictionWindow(
        ids=_decode(records["id"]),
        timestamps=records["timestamp_us"].astype("datetime64[us]"),
        images=np.ascontiguousarray(records["image"]),
        probabilities=np.ascontiguousarray(records["probabilities"], dtype=np.float32),
        predicted=records["predicted"].astype(np.int64),
        model_versions=_decode(records["model_version"]),
        labels=labels,
    )


def prediction_exists(log_dir: str | Path, prediction_id: str) -> bool:
    """Whether ``prediction_id`` is in the on-disk log (used to validate feedback)."""
    needle = prediction_id.encode()
    return any(
        bool((_read_segment(path, PREDICTION_DTYPE)["id"] == needle).any())
        for path in reversed(_segments(Path(log_dir), "predictions"))
    )
