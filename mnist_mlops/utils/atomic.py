"""Atomic file and directory writes: a reader sees the old content or the new, never half.

Every report, marker, cache and state file of the project is written through here. A file is
written to a temporary sibling (same directory, so same filesystem), flushed and fsynced, then
renamed over the target with ``os.replace``; the directory entry is fsynced after the rename, so
after a crash (of the process or the machine) the path holds either the complete old file or
the complete new one. A failure before the rename removes the temporary file and leaves the
target untouched. Directories are published the same way (:func:`atomic_directory`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

log = logging.getLogger(__name__)


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> tuple[Path, int]:
    """A new, exclusive temp file next to ``path``; mode 0666 minus umask, like a plain open."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """A handle whose content replaces ``path`` only when the ``with`` block succeeds.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). Parents are created. For writers that want
    a handle (``csv.writer``, ``np.savez``) rather than a finished string.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temp_sibling(path)
    try:
        text = mode == "w"
        with os.fdopen(
            fd,
            mode,
            encoding=encoding if text else None,
            newline=newline if text else None,
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically and durably; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | Path,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
    trailing_newline: bool = True,
) -> Path:
    """Replace ``path`` with ``obj`` as JSON; the object is serialised before anything is
    written, so an unserialisable value leaves the old file as it was."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    return atomic_write_text(path, text + ("\n" if trailing_newline else ""))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path next to ``path`` for a writer that only takes a file name (a child process,
    a library); what it wrote there replaces ``path`` when the block succeeds.

    The block must create the file; a block that ends without it raises ``FileNotFoundError``
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temp_sibling(path)
    os.close(fd)
    tmp.unlink()  # the writer creates it; some refuse an existing file
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a staging directory that replaces ``target`` only if the block succeeds.

    Staging lives next to the target (same filesystem, so renames are atomic). A lock file
    serialises concurrent runs; leftovers of a killed run are cleaned (or restored) first, so
    ``target`` is either the complete old directory or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        _recover_interrupted_swap(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp's 0700 would hide data from others
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        backup = staging.with_name(staging.name.replace(".tmp-", ".old-"))
        if target.exists():
            os.rename(target, backup)
        try:
            os.rename(staging, target)
        except BaseException:
            if backup.exists():
                os.rename(backup, target)
            raise
        _fsync_directory(target.parent)
        shutil.rmtree(backup, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _recover_interrupted_swap(target: Path) -> None:
    """Drop staging dirs of killed runs; put back a previous output caught mid-swap."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for backup in sorted(target.parent.glob(f".{target.name}.old-*")):
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            log.warning("restoring %s from interrupted run (%s)", target, backup.name)
            os.rename(backup, target)
