"""The one atomic-write helper: a failure part-way leaves the old content, success fsyncs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.utils import atomic
from mnist_mlops.utils.atomic import (
    atomic_directory,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_writes_replace_the_content_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "report.json"
    atomic_write_text(target, "old")
    assert target.read_text() == "old"
    atomic_write_json(target, {"b": 1, "a": [1.5]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    atomic_write_bytes(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert _siblings(target) == ["report.json"]


def test_new_files_get_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    made = atomic_write_text(tmp_path / "atomic", "x")
    assert stat.S_IMODE(made.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_an_exception_mid_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert _siblings(target) == ["metrics.csv"]


def test_an_unserialisable_object_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text('{"ok": true}')
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert _siblings(target) == ["state.json"]


def test_a_killed_process_leaves_the_old_content(tmp_path: Path) -> None:
    """A process that dies (os._exit: no cleanup, no finally) after writing half the new bytes."""
    target = tmp_path / "marker.json"
    target.write_text("old")
    script = textwrap.dedent(
        f"""
        import os
        from mnist_mlops.utils.atomic import atomic_open
        with atomic_open({str(target)!r}) as handle:
            handle.write("new, but only half")
            handle.flush()
            os._exit(9)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    assert target.read_text() == "old"
    # the orphaned temp file is a hidden sibling, never the target
    leftovers = [n for n in _siblings(target) if n != "marker.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".marker.json.")


def test_the_data_is_fsynced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "replace", "fsync dir"]


def test_a_failed_rename_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def broken_replace(src: str | Path, dst: str | Path) -> None:
        raise OSError("EXDEV")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="EXDEV"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert _siblings(target) == ["a.txt"]


def test_atomic_path_publishes_what_a_name_taking_writer_wrote(tmp_path: Path) -> None:
    target = tmp_path / "cache.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        with open(tmp, "wb") as handle:
            np.savez(handle, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert _siblings(target) == ["cache.npz"]

    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("writer failed")
    assert target.read_bytes() == b"old"
    assert _siblings(target) == ["cache.npz"]


def test_atomic_directory_swaps_whole_directories(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "b").write_text("2")
        raise RuntimeError("job failed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_directory(target) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".processed.lock", "processed"]


def test_atomic_directory_restores_an_output_caught_mid_swap(tmp_path: Path) -> None:
    target = tmp_path / "processed"
    backup = tmp_path / ".processed.old-abc"
    backup.mkdir()
    (backup / "manifest.json").write_text("{}")
    with atomic_directory(target):
        assert (target / "manifest.json").read_text() == "{}"
    assert not backup.exists()
