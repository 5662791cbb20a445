"""Which prediction ids (and trusted feedback ids) the log holds, kept current cheaply.

The server answers ``/feedback`` with this: each lookup reads only the bytes appended to each
segment since the last one, so an unknown id costs a directory listing, not a rescan.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mnist_mlops.predictions.format import (
    SCHEMAS,
    EventHook,
    list_segments,
    no_event,
    parse_segment,
    schema_end,
)


@dataclass
class _Tail:
    """How far one segment has been read, and the ids found so far (sorted)."""

    offset: int = 0  # 0 = schema not read yet
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, "S32"))
    trusted_ids: np.ndarray = field(default_factory=lambda: np.empty(0, "S32"))
    bad: bool = False


class IdIndex:
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

    def refresh(self, on_event: EventHook = no_event) -> None:
        with self._lock:
            present = {seg.path for seg in list_segments(self.log_dir, self.kind)}
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
            start = schema_end(data, self.schema)
            if start is None:
                if len(data) >= self._schema_size:  # not a writer still creating it
                    tail.bad = True
                    on_event("corrupt", self.kind, "bad_segment", 1)
                return
        batches, end, damage = parse_segment(data, self.schema, start, final=False)
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
    index = IdIndex(Path(log_dir), "predictions")
    index.refresh()
    return index.contains(prediction_id)
