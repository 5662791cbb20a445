"""The prediction log's on-disk format, shared by its writer and its readers.

One place for what a segment is: the two Arrow schemas, the file names
(``<kind>-<start_ns>-<writer>.arrows``) and writer lock files, the liveness probe on those
locks, and the IPC stream framing with its resynchronising parser (used by the full reader and
by the incremental id index alike). Nothing here writes.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES

SUFFIX = ".arrows"
PIXELS = IMAGE_SIDE * IMAGE_SIDE
TIMESTAMP = pa.timestamp("us", tz="UTC")
PREDICTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("timestamp", TIMESTAMP),
        ("model_version", pa.string()),
        ("predicted", pa.int16()),
        ("probabilities", pa.list_(pa.float32(), NUM_CLASSES)),
        ("image", pa.binary(PIXELS)),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("timestamp", TIMESTAMP),
        ("label", pa.int8()),
        ("trusted", pa.bool_()),
        ("client", pa.string()),
    ]
)
SCHEMAS = {"predictions": PREDICTION_SCHEMA, "feedback": FEEDBACK_SCHEMA}
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
CONTINUATION = b"\xff\xff\xff\xff"

# on_event(event, kind, reason, count): the serving app forwards these to Prometheus
EventHook = Callable[[str, str, str, int], None]


def no_event(event: str, kind: str, reason: str, count: int) -> None:
    return None


def new_prediction_id() -> str:
    """A fresh prediction id (32 hex characters), unique across workers and restarts."""
    return os.urandom(16).hex()


def now_us() -> int:
    return time.time_ns() // 1000


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


# --------------------------------------------------------------------------- segment names


@dataclass(frozen=True, order=True)
class Segment:
    start_ns: int
    writer: str
    kind: str
    path: Path = field(compare=False)


def list_segments(log_dir: Path, kind: str) -> list[Segment]:
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
        found.append(Segment(int(parts[1]), parts[2], kind, log_dir / name))
    return sorted(found)


def lock_path(log_dir: Path, writer: str) -> Path:
    return log_dir / f".writer-{writer}.lock"


def writer_alive(log_dir: Path, writer: str) -> bool:
    """Whether ``writer`` still holds its lock (a crashed or stopped writer's lock is free)."""
    try:
        fd = os.open(lock_path(log_dir, writer), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases a probe lock we got
    return False


# --------------------------------------------------------------------------- segment framing


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


def parse_segment(
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
        if data[pos : pos + 8] == EOS:
            end = pos + 8
            break
        batch, length = _try_batch(buffer.slice(pos), schema)
        if batch is not None:
            batches.append(batch)
            pos = end = pos + length
            continue
        # resynchronise: the next 8-aligned continuation marker that starts a valid batch
        nxt = data.find(CONTINUATION, pos + 8)
        while nxt != -1:
            if nxt % 8 == 0 and _try_batch(buffer.slice(nxt), schema)[0] is not None:
                break
            nxt = data.find(CONTINUATION, nxt + 1)
        if nxt == -1:
            if final:
                damage.torn_tails += 1
                damage.skipped_bytes += size - pos
            break
        damage.corrupt_spans += 1
        damage.skipped_bytes += nxt - pos
        pos = nxt
    return batches, end, damage


def schema_end(data: bytes, schema: pa.Schema) -> int | None:
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
    start = schema_end(data, schema)
    if start is None:
        return [], LogDamage(bad_segments=1, skipped_bytes=len(data))
    batches, _, damage = parse_segment(data, schema, start)
    return batches, damage
