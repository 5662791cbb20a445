"""The prediction log: every served prediction, kept for drift monitoring and feedback.

Storage is a directory of Arrow IPC *stream* segments, readable by any Arrow tool::

    <log_dir>/predictions-<start_ns>-<writer>.arrows   id, timestamp, model_version, predicted,
                                                      probabilities[10], image (784 bytes)
    <log_dir>/feedback-<start_ns>-<writer>.arrows      id, timestamp, label, trusted, client
    <log_dir>/.writer-<writer>.lock                    flock held while the writer is alive

    # an operator's one-liner (pandas + pyarrow):
    pd.concat(pa.ipc.open_stream(p).read_pandas() for p in sorted(Path(d).glob("predictions-*")))

Why it is safe with any number of writers (uvicorn workers, several servers on one folder):

- Each writer (one per process, or per ``PredictionLogWriter`` object) appends only to segments
  carrying its own id and holds an exclusive ``flock`` on its lock file while alive.
- Size budget: each writer keeps its own segments within its share of the budget
  (``max_total_bytes / live writers``) by deleting its *own* oldest closed segments, and, while
  the folder is over ``max_total_bytes``, retires the oldest segments among its own closed ones
  and those of *dead* writers (lock not held: crashed or stopped servers). The check runs after
  every write and on every flusher tick, so an idle writer also yields to a newcomer. A live
  writer's segments are never deleted by anyone else, so nothing is ever appended to an
  unlinked file. The folder can exceed the budget by about one open segment per live writer.
- A record batch is written whole or not at all: on a short write, ``ENOSPC`` or ``EFBIG`` the
  segment is truncated back to the end of the last whole batch and the failure is counted.
- A deleted folder (or segment, or lock file) is recreated on the next write, and counted.
- The reader resynchronises past damage: a torn tail is skipped; a corrupt batch in the middle
  is skipped up to the next batch that parses and validates; a segment whose schema cannot be
  read is skipped whole. Damage is counted in :class:`LogDamage`, never raised.

Requests only append to an in-memory buffer under a lock; a background thread writes the
buffer out every ``flush_interval_s`` seconds, so logging costs a request microseconds.
Feedback (the true label of a prediction id) is written synchronously (it is rare, and the
client must learn whether it was stored) and joined at read time: per prediction id a trusted
label beats an untrusted one, and among labels of equal trust the *first* wins, so repeats
cannot replace legitimate feedback.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES

SUFFIX = ".arrows"
PIXELS = IMAGE_SIDE * IMAGE_SIDE
_TIMESTAMP = pa.timestamp("us", tz="UTC")
PREDICTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("timestamp", _TIMESTAMP),
        ("model_version", pa.string()),
        ("predicted", pa.int16()),
        ("probabilities", pa.list_(pa.float32(), NUM_CLASSES)),
        ("image", pa.binary(PIXELS)),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("timestamp", _TIMESTAMP),
        ("label", pa.int8()),
        ("trusted", pa.bool_()),
        ("client", pa.string()),
    ]
)
SCHEMAS = {"predictions": PREDICTION_SCHEMA, "feedback": FEEDBACK_SCHEMA}
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_CONTINUATION = b"\xff\xff\xff\xff"
_log = logging.getLogger(__name__)

# on_event(event, kind, reason, count): the serving app forwards these to Prometheus
EventHook = Callable[[str, str, str, int], None]


def _no_event(event: str, kind: str, reason: str, count: int) -> None:
    return None


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


def _reason(exc: OSError) -> str:
    return {errno.ENOSPC: "disk_full", errno.EFBIG: "file_too_large", errno.EDQUOT: "quota"}.get(
        exc.errno or 0, "io_error"
    )


# --------------------------------------------------------------------------- segment names


@dataclass(frozen=True, order=True)
class _Segment:
    start_ns: int
    writer: str
    kind: str
    path: Path = field(compare=False)


def _segments(log_dir: Path, kind: str) -> list[_Segment]:
    """Segments of one kind, oldest first (names start with the creation time)."""
    found = []
    try:
        names = os.listdir(log_dir)
    except OSError:  # missing, not a folder, unreadable: nothing to list (writes recreate it)
        return []
    for name in names:
        if not (name.startswith(kind + "-") and name.endswith(SUFFIX)):
            continue
        parts = name[: -len(SUFFIX)].split("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        found.append(_Segment(int(parts[1]), parts[2], kind, log_dir / name))
    return sorted(found)


def _lock_path(log_dir: Path, writer: str) -> Path:
    return log_dir / f".writer-{writer}.lock"


def _writer_alive(log_dir: Path, writer: str) -> bool:
    """Whether ``writer`` still holds its lock (a crashed or stopped writer's lock is free)."""
    try:
        fd = os.open(_lock_path(log_dir, writer), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases a probe lock we got
    return False


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
            if writer not in owners and not _writer_alive(log_dir, writer):
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
        path = _lock_path(self.log_dir, self.writer)
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
            _lock_path(self.log_dir, self.writer).unlink(missing_ok=True)
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
            _write_all(self._fd, _EOS)
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
                    self._rows and self._good + message.size + len(_EOS) > self.max_segment_bytes
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
        segments = _segments(self.log_dir, self.kind)
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
        alive = {w: w == self.writer or _writer_alive(self.log_dir, w) for w in writers}
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
            pa.array(stamps, pa.int64()).cast(_TIMESTAMP),
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
        self._on_event = on_event or _no_event
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
        self._predictions_index = _IdIndex(self.log_dir, "predictions")
        self._feedback_index = _IdIndex(self.log_dir, "feedback")
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
            timestamp_us=timestamp_us if timestamp_us is not None else _now_us(),
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
                pa.array([_now_us()], pa.int64()).cast(_TIMESTAMP),
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


# --------------------------------------------------------------------------- reading


@dataclass
class LogDamage:
    """What the reader skipped: whole segments, corrupt spans inside one, and torn tails."""

    bad_segments: int = 0
    corrupt_spans: int = 0
    torn_tails: int = 0
    skipped_bytes: int = 0

    def add(self, other: LogDamage) -> None:
        self.bad_segments += other.bad_segments
        self.corrupt_spans += other.corrupt_spans
        self.torn_tails += other.torn_tails
        self.skipped_bytes += other.skipped_bytes

    @property
    def any(self) -> bool:
        return bool(self.bad_segments or self.corrupt_spans or self.torn_tails)


def _try_batch(buffer: pa.Buffer, schema: pa.Schema) -> tuple[pa.RecordBatch | None, int]:
    """The record batch at the start of ``buffer`` and its size, or (None, 0) if it is not one."""
    reader = pa.BufferReader(buffer)
    try:
        message = pa.ipc.read_message(reader)
        if message.type != "record batch":
            return None, 0
        batch = pa.ipc.read_record_batch(message, schema)
        batch.validate(full=True)
    except (OSError, EOFError, pa.ArrowException, ValueError):
        return None, 0
    return batch, reader.tell()


def _parse_segment(
    data: bytes, schema: pa.Schema, start: int = 0, final: bool = True
) -> tuple[list[pa.RecordBatch], int, LogDamage]:
    """Batches of one segment's bytes from ``start`` (past the schema message).

    Returns the batches, the offset just past the last whole batch, and the damage skipped. With
    ``final=False`` (tailing a live segment) an incomplete last message is not damage: it is
    left for the next read."""
    buffer = pa.py_buffer(data)
    damage = LogDamage()
    batches: list[pa.RecordBatch] = []
    pos = end = start
    size = len(data)
    while pos < size:
        if data[pos : pos + 8] == _EOS:
            end = pos + 8
            break
        batch, length = _try_batch(buffer.slice(pos), schema)
        if batch is not None:
            batches.append(batch)
            pos = end = pos + length
            continue
        # resynchronise: the next 8-aligned continuation marker that starts a valid batch
        nxt = data.find(_CONTINUATION, pos + 8)
        while nxt != -1:
            if nxt % 8 == 0 and _try_batch(buffer.slice(nxt), schema)[0] is not None:
                break
            nxt = data.find(_CONTINUATION, nxt + 1)
        if nxt == -1:
            if final:
                damage.torn_tails += 1
                damage.skipped_bytes += size - pos
            break
        damage.corrupt_spans += 1
        damage.skipped_bytes += nxt - pos
        pos = nxt
    return batches, end, damage


def _schema_end(data: bytes, schema: pa.Schema) -> int | None:
    """Offset past the segment's schema message, or None when it is not our schema."""
    reader = pa.BufferReader(pa.py_buffer(data))
    try:
        found = pa.ipc.read_schema(pa.ipc.read_message(reader))
    except (OSError, EOFError, pa.ArrowException, ValueError):
        return None
    return reader.tell() if found.equals(schema, check_metadata=False) else None


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # retired while we listed
        return None


def read_segment(path: Path, schema: pa.Schema) -> tuple[list[pa.RecordBatch], LogDamage]:
    """The whole batches of one segment file, skipping (and counting) damage."""
    data = _read_file(path)
    if data is None:
        return [], LogDamage()
    start = _schema_end(data, schema)
    if start is None:
        return [], LogDamage(bad_segments=1, skipped_bytes=len(data))
    batches, _, damage = _parse_segment(data, schema, start)
    return batches, damage


def _read_kind(
    log_dir: Path, kind: str, min_timestamp_us: int | None, need: int | None, damage: LogDamage
) -> pa.Table:
    """Records of one kind, oldest first; reads newest segments first and stops early."""
    schema = SCHEMAS[kind]
    tables: list[pa.Table] = []
    count = 0
    for seg in reversed(_segments(log_dir, kind)):
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
    min_us = _to_us(since) if since is not None else None
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


# --------------------------------------------------------------------------- the id index


@dataclass
class _Tail:
    """How far one segment has been read, and the ids found so far (sorted)."""

    offset: int = 0  # 0 = schema not read yet
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, "S32"))
    trusted_ids: np.ndarray = field(default_factory=lambda: np.empty(0, "S32"))
    bad: bool = False


class _IdIndex:
    """Ids present in one kind's segments, kept current by reading only appended bytes.

    Memory is bounded by the log's size budget (32 bytes per id); a retired segment's ids
    leave the index on the next refresh."""

    def __init__(self, log_dir: Path, kind: str) -> None:
        self.log_dir = log_dir
        self.kind = kind
        self.schema = SCHEMAS[kind]
        self._schema_size = self.schema.serialize().size
        self._tails: dict[Path, _Tail] = {}
        self._lock = threading.Lock()

    def refresh(self, on_event: EventHook = _no_event) -> None:
        with self._lock:
            present = {seg.path for seg in _segments(self.log_dir, self.kind)}
            for gone in set(self._tails) - present:
                del self._tails[gone]
            for path in sorted(present):
                self._read_new(path, self._tails.setdefault(path, _Tail()), on_event)

    def _read_new(self, path: Path, tail: _Tail, on_event: EventHook) -> None:
        if tail.bad:
            return
        try:
            if os.stat(path).st_size <= tail.offset:
                return  # nothing appended since the last look
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size <= tail.offset:
                    return
                handle.seek(tail.offset)
                data = handle.read(size - tail.offset)
        except FileNotFoundError:
            return
        base, start = tail.offset, 0
        if base == 0:
            start = _schema_end(data, self.schema)
            if start is None:
                if len(data) >= self._schema_size:  # not a writer still creating it
                    tail.bad = True
                    on_event("corrupt", self.kind, "bad_segment", 1)
                return
        batches, end, damage = _parse_segment(data, self.schema, start, final=False)
        if damage.corrupt_spans:
            on_event("corrupt", self.kind, "corrupt_span", damage.corrupt_spans)
        tail.offset = base + end
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        new = np.array(table.column("id").to_pylist(), dtype="S32")
        tail.ids = np.sort(np.concatenate([tail.ids, new]))
        if self.kind == "feedback":
            mask = table.column("trusted").to_numpy(zero_copy_only=False).astype(bool)
            tail.trusted_ids = np.sort(np.concatenate([tail.trusted_ids, new[mask]]))

    @staticmethod
    def _in(sorted_ids: np.ndarray, needle: bytes) -> bool:
        at = int(np.searchsorted(sorted_ids, needle))
        return at < len(sorted_ids) and sorted_ids[at] == needle

    def contains(self, prediction_id: str) -> bool:
        needle = prediction_id.encode()
        with self._lock:
            return any(self._in(t.ids, needle) for t in self._tails.values())

    def trusted(self, prediction_id: str) -> bool | None:
        """None: no record of the id; else whether any record of it is trusted."""
        needle = prediction_id.encode()
        with self._lock:
            tails = list(self._tails.values())
        if any(self._in(t.trusted_ids, needle) for t in tails):
            return True
        return False if any(self._in(t.ids, needle) for t in tails) else None


def prediction_exists(log_dir: str | Path, prediction_id: str) -> bool:
    """Whether ``prediction_id`` is in the on-disk log (a one-off scan; the server uses
    :meth:`PredictionLogWriter.contains`, which reads only what was appended since)."""
    index = _IdIndex(Path(log_dir), "predictions")
    index.refresh()
    return index.contains(prediction_id)
