"""Writing the prediction log: buffered predictions, synchronous feedback, budgets and leases.

Requests only append to an in-memory buffer under a lock; a background thread writes the
buffer out every ``flush_interval_s`` seconds, so logging costs a request microseconds.
Feedback is written synchronously (it is rare, and the client must learn whether it was
stored). Each writer appends only to its own segments, holds an exclusive ``flock`` on its
lock file while alive, and deletes only its own or dead writers' segments (see the package
docstring for the whole safety argument).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.predictions.format import (
    EOS,
    FEEDBACK_SCHEMA,
    PIXELS,
    PREDICTION_SCHEMA,
    SCHEMAS,
    SUFFIX,
    TIMESTAMP,
    EventHook,
    list_segments,
    lock_path,
    no_event,
    now_us,
    writer_alive,
)
from mnist_mlops.predictions.index import IdIndex

_log = logging.getLogger(__name__)


def _reason(exc: OSError) -> str:
    return {errno.ENOSPC: "disk_full", errno.EFBIG: "file_too_large", errno.EDQUOT: "quota"}.get(
        exc.errno or 0, "io_error"
    )


def _sweep_dead_locks(log_dir: Path) -> None:
    """Remove lock files of dead writers that own no segment any more (one per past worker
    would otherwise pile up across restarts)."""
    try:
        names = os.listdir(log_dir)
    except OSError:
        return
    owners = {n[: -len(SUFFIX)].split("-", 2)[-1] for n in names if n.endswith(SUFFIX)}
    for name in names:
        if name.startswith(".writer-") and name.endswith(".lock"):
            writer = name[len(".writer-") : -len(".lock")]
            if writer not in owners and not writer_alive(log_dir, writer):
                (log_dir / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte or raise (a zero-length write counts as a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


class _Lease:
    """This writer's lock file: exclusive flock while alive, recreated if someone deletes it."""

    def __init__(self, log_dir: Path, writer: str) -> None:
        self.log_dir = log_dir
        self.writer = writer
        self._fd: int | None = None

    def ensure(self) -> bool:
        """(Re)create the folder and the lock; True when the folder had to be recreated."""
        path = lock_path(self.log_dir, self.writer)
        recreated = False
        if self._fd is not None:
            try:
                if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                    return False
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        if not self.log_dir.is_dir():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            recreated = True
        # Lock a temp file, then rename it into place: a prober never sees it unlocked.
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, path)
        self._fd = fd
        return recreated

    def release(self) -> None:
        if self._fd is not None:
            lock_path(self.log_dir, self.writer).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class _SegmentAppender:
    """Appends whole record batches of one kind to this writer's rotated segments."""

    def __init__(
        self,
        log_dir: Path,
        kind: str,
        writer: str,
        lease: _Lease,
        max_segment_bytes: int,
        max_total_bytes: int,
        on_event: EventHook,
    ) -> None:
        self.log_dir = log_dir
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self.writer = writer
        self.lease = lease
        self._schema_bytes = self.schema.serialize().to_pybytes()
        self.max_segment_bytes = max(max_segment_bytes, 4096)
        self.max_total_bytes = max(max_total_bytes, self.max_segment_bytes)
        self.on_event = on_event
        self._fd: int | None = None
        self._path: Path | None = None
        self._good = 0  # bytes up to the end of the last whole batch
        self._rows = 0  # rows in the open segment

    # -- segment lifecycle
    def _open_new_segment(self) -> None:
        self.close()
        path = self.log_dir / f"{self.kind}-{time.time_ns():020d}-{self.writer}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, self._schema_bytes)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._path = fd, path
        self._good, self._rows = len(self._schema_bytes), 0

    def close(self) -> None:
        """Finish the open segment with the end-of-stream marker (best effort)."""
        if self._fd is None:
            return
        try:
            _write_all(self._fd, EOS)
        except OSError:
            os.ftruncate(self._fd, self._good)
        finally:
            os.close(self._fd)
            self._fd, self._path = None, None

    def _check_open_segment(self) -> None:
        """Start over if our folder, lock or open segment was deleted under us."""
        if self.lease.ensure():
            self.on_event("recreated", self.kind, "folder_deleted", 1)
            _log.warning("prediction log folder %s was deleted: recreated it", self.log_dir)
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self.on_event("lost", self.kind, "segment_deleted", self._rows)
            _log.warning("%s was deleted while open: %d rows lost", self._path, self._rows)
            os.close(self._fd)
            self._fd, self._path = None, None

    # -- writing
    def _pieces(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """Slices small enough for one segment each."""
        per_row = max(1, batch.nbytes // max(1, batch.num_rows))
        rows = max(1, (self.max_segment_bytes - len(self._schema_bytes) - 1024) // per_row)
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)

    def write(self, batch: pa.RecordBatch) -> int:
        """Append ``batch``; returns the rows written (failures are counted, never raised)."""
        written = 0
        for piece in self._pieces(batch):
            message = piece.serialize()
            try:
                self._check_open_segment()
                if self._fd is None or (
                    self._rows and self._good + message.size + len(EOS) > self.max_segment_bytes
                ):
                    self._open_new_segment()
                assert self._fd is not None
                try:
                    os.lseek(self._fd, self._good, os.SEEK_SET)
                    _write_all(self._fd, message)
                except OSError:
                    os.ftruncate(self._fd, self._good)  # nothing torn stays behind
                    raise
            except OSError as exc:
                self.on_event("write_failed", self.kind, _reason(exc), 1)
                self.on_event("lost", self.kind, "write_failed", batch.num_rows - written)
                _log.warning("prediction log: %s write failed (%s)", self.kind, exc)
                return written
            self._good += message.size
            self._rows += piece.num_rows
            written += piece.num_rows
        self.enforce_budget()
        return written

    def enforce_budget(self) -> None:
        """Keep our own segments within our share of the budget (oldest closed ones go first),
        and retire dead writers' segments, oldest first, while the folder is over budget. A
        live writer's segments belong to it alone."""
        segments = list_segments(self.log_dir, self.kind)
        sizes: dict[Path, int] = {}
        for seg in segments:
            try:
                sizes[seg.path] = seg.path.stat().st_size
            except FileNotFoundError:
                sizes[seg.path] = 0
        total = sum(sizes.values())
        own_total = sum(sizes[s.path] for s in segments if s.writer == self.writer)
        writers = {s.writer for s in segments} | {self.writer}
        if total <= self.max_total_bytes and own_total <= self.max_total_bytes // len(writers):
            return  # cheap exit: no liveness probes needed
        alive = {w: w == self.writer or writer_alive(self.log_dir, w) for w in writers}
        share = self.max_total_bytes // sum(alive.values())
        for seg in segments:  # oldest first
            if own_total <= share:
                break
            if seg.writer == self.writer and seg.path != self._path:
                self._delete(seg.path, "budget")
                own_total -= sizes[seg.path]
                total -= sizes[seg.path]
        for seg in segments:  # still over: the oldest of what is ours or nobody's goes
            if total <= self.max_total_bytes:
                break
            if not alive[seg.writer]:
                self._delete(seg.path, "orphan")
                total -= sizes[seg.path]
            elif seg.writer == self.writer and seg.path != self._path and seg.path.exists():
                self._delete(seg.path, "budget")
                total -= sizes[seg.path]

    def _delete(self, path: Path, reason: str) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self.on_event("segment_deleted", self.kind, reason, 1)


@dataclass(frozen=True)
class _Pending:
    """Predictions queued by a request, not yet written."""

    ids: list[str]
    pixels: np.ndarray  # uint8 (n, 784)
    probabilities: np.ndarray  # float32 (n, 10)
    model_version: str
    timestamp_us: int


def _string_column(values: list[str]) -> pa.Array:
    """Strings as Arrow; 32-character ASCII ids (the common case) straight from one buffer,
    ~100x faster than converting a long list of Python strings one by one."""
    widths = set(map(len, values))
    if len(widths) == 1 and (width := widths.pop()) > 0:
        try:
            data = "".join(values).encode("ascii")
        except UnicodeEncodeError:
            return pa.array(values, pa.string())
        offsets = np.arange(0, width * (len(values) + 1), width, dtype=np.int32)
        return pa.Array.from_buffers(
            pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
    return pa.array(values, pa.string())


def _prediction_batch(chunks: Sequence[_Pending]) -> pa.RecordBatch:
    """One Arrow batch from queued predictions (built on the flusher thread)."""
    ids = [i for c in chunks for i in c.ids]
    n = len(ids)
    pixels = np.concatenate([c.pixels for c in chunks]).reshape(-1)
    probabilities = np.concatenate([c.probabilities for c in chunks])
    counts = [len(c.ids) for c in chunks]
    stamps = np.repeat(np.array([c.timestamp_us for c in chunks], np.int64), counts)
    names = sorted({c.model_version for c in chunks})
    which = np.repeat(np.array([names.index(c.model_version) for c in chunks], np.int32), counts)
    return pa.record_batch(
        [
            _string_column(ids),
            pa.array(stamps, pa.int64()).cast(TIMESTAMP),
            pa.array(names, pa.string()).take(pa.array(which)),
            pa.array(probabilities.argmax(axis=1).astype(np.int16)),
            pa.FixedSizeListArray.from_arrays(pa.array(probabilities.reshape(-1)), NUM_CLASSES),
            pa.Array.from_buffers(pa.binary(PIXELS), n, [None, pa.py_buffer(pixels)]),
        ],
        schema=PREDICTION_SCHEMA,
    )


class PredictionLogWriter:
    """Buffered, thread-safe writer; a daemon thread flushes predictions in the background."""

    def __init__(
        self,
        log_dir: str | Path,
        max_segment_bytes: int = 16 * 1024 * 1024,
        max_total_bytes: int = 512 * 1024 * 1024,
        max_feedback_bytes: int = 32 * 1024 * 1024,
        flush_interval_s: float = 0.5,
        max_buffered_records: int = 50_000,
        on_event: EventHook | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.writer_id = f"{os.getpid()}_{os.urandom(4).hex()}"
        self._on_event = on_event or no_event
        self.lost: dict[tuple[str, str], int] = {}
        self._lease = _Lease(self.log_dir, self.writer_id)
        try:
            self._lease.ensure()
        except OSError as exc:  # never stop the server from starting: retried on each write
            _log.error("prediction log folder %s is not writable yet: %s", self.log_dir, exc)
        _sweep_dead_locks(self.log_dir)
        # small feedback segments: retiring one drops a sliver of old labels, not half of them
        feedback_segment = min(max_segment_bytes, max(65536, max_feedback_bytes // 16))
        self._appenders = {
            "predictions": _SegmentAppender(
                self.log_dir,
                "predictions",
                self.writer_id,
                self._lease,
                max_segment_bytes,
                max_total_bytes,
                self._event,
            ),
            "feedback": _SegmentAppender(
                self.log_dir,
                "feedback",
                self.writer_id,
                self._lease,
                feedback_segment,
                max_feedback_bytes,
                self._event,
            ),
        }
        self._buffer: list[_Pending] = []
        self._inflight: list[_Pending] = []  # being written: still findable by contains
        self._buffered = 0
        self.max_buffered_records = max_buffered_records
        self.dropped = 0  # records shed because the disk could not keep up
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.flush_interval_s = flush_interval_s
        self._predictions_index = IdIndex(self.log_dir, "predictions")
        self._feedback_index = IdIndex(self.log_dir, "feedback")
        self._own_feedback: dict[str, bool] = {}  # id -> trusted, given through this writer
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _event(self, event: str, kind: str, reason: str, count: int) -> None:
        if event == "lost":
            self.lost[(kind, reason)] = self.lost.get((kind, reason), 0) + count
        self._on_event(event, kind, reason, count)

    # -- predictions
    def log_predictions(
        self,
        ids: Sequence[str],
        images: np.ndarray,
        probabilities: np.ndarray,
        model_version: str,
        timestamp_us: int | None = None,
    ) -> None:
        """Queue predictions: ids (N,), uint8 images (N,28,28), probabilities (N,10).

        Only numpy copies happen here (microseconds); Arrow batches are built by the flusher."""
        n = len(ids)
        chunk = _Pending(
            ids=list(ids),
            pixels=np.ascontiguousarray(images, dtype=np.uint8).reshape(n, PIXELS),
            probabilities=np.ascontiguousarray(probabilities, dtype=np.float32).reshape(n, -1),
            model_version=str(model_version),
            timestamp_us=timestamp_us if timestamp_us is not None else now_us(),
        )
        with self._lock:
            if self._buffered >= self.max_buffered_records:
                # Never let a slow disk grow memory without bound or stall requests.
                self.dropped += n
                self._event("lost", "predictions", "buffer_full", n)
                return
            self._buffer.append(chunk)
            self._buffered += n

    def flush(self) -> None:
        """Write everything buffered so far (called by the thread, on close, and by tests)."""
        with self._io_lock:
            with self._lock:
                self._inflight, self._buffer = self._buffer, []
                self._buffered = 0
            try:
                if self._inflight:
                    self._appenders["predictions"].write(_prediction_batch(self._inflight))
                for appender in self._appenders.values():
                    appender.enforce_budget()  # also when idle: a new writer shrank our share
            finally:
                with self._lock:
                    self._inflight = []  # on disk now (or counted as lost)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the flusher must survive anything: lose records, not requests
                _log.exception("prediction log flush failed in %s", self.log_dir)

    def close(self) -> None:
        """Stop the flusher, write out the remaining buffer and release the lock."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
        with self._io_lock:
            for appender in self._appenders.values():
                appender.close()
            self._lease.release()

    # -- lookups for /feedback
    def contains(self, prediction_id: str) -> bool:
        """Whether any writer on this folder logged ``prediction_id`` (buffer, then disk).

        The on-disk index is read incrementally (only bytes appended since the last lookup),
        so an unknown id costs a directory listing, not a rescan of the log."""
        with self._lock:
            for chunk in (*self._buffer, *self._inflight):
                if prediction_id in chunk.ids:
                    return True
        if self._predictions_index.contains(prediction_id):
            return True
        self._predictions_index.refresh(self._event)
        return self._predictions_index.contains(prediction_id)

    def feedback_given(self, prediction_id: str) -> bool | None:
        """None if ``prediction_id`` has no feedback yet, else whether the stored one is trusted."""
        with self._lock:
            if prediction_id in self._own_feedback:
                return self._own_feedback[prediction_id]
        self._feedback_index.refresh(self._event)
        return self._feedback_index.trusted(prediction_id)

    # -- feedback
    def log_feedback(
        self, prediction_id: str, label: int, trusted: bool = False, client: str = ""
    ) -> bool:
        """Write one label now; False (counted) when the disk refused it."""
        batch = pa.record_batch(
            [
                pa.array([prediction_id], pa.string()),
                pa.array([now_us()], pa.int64()).cast(TIMESTAMP),
                pa.array([label], pa.int8()),
                pa.array([trusted]),
                pa.array([client[:64]], pa.string()),
            ],
            schema=FEEDBACK_SCHEMA,
        )
        with self._io_lock:
            ok = self._appenders["feedback"].write(batch) == 1
        if ok:
            with self._lock:
                previous = self._own_feedback.get(prediction_id, False)
                self._own_feedback[prediction_id] = previous or trusted
                if len(self._own_feedback) > 100_000:  # the disk index knows the rest
                    self._own_feedback.pop(next(iter(self._own_feedback)))
        return ok
