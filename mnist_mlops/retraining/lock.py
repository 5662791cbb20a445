"""One retrain at a time: an exclusive, non-blocking file lock with a readable owner record.

``filelock`` uses ``flock``, so the lock dies with its process (a SIGKILLed retrain never
leaves a stale lock); the owner file only makes the refusal message useful.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout


class RetrainLocked(RuntimeError):
    """Another retrain holds the lock."""


@contextmanager
def exclusive_lock(lock_path: str | Path, purpose: str) -> Iterator[Path]:
    """Hold ``lock_path`` for the block, or raise :class:`RetrainLocked` naming its owner."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    owner_path = lock_path.with_name(lock_path.name + ".owner.json")
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        owner = owner_path.read_text() if owner_path.is_file() else "{}"
        raise RetrainLocked(
            f"another {purpose} is already running (lock {lock_path} held by {owner.strip()}); "
            "refusing to start a second one"
        ) from exc
    try:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        owner_path.write_text(json.dumps(owner))
        yield lock_path
    finally:
        owner_path.unlink(missing_ok=True)
        lock.release()
