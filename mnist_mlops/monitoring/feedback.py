"""Feedback-labelled production data as Parquet splits the trainer and the gate can read.

The newest ``eval_fraction`` of labelled predictions is held out as ``recent_eval`` (the gate's
"recent labelled data"); the older rest becomes ``train``, folded into training through
``data.extra_train_dirs``. Holding out by time means the challenger is never judged on data
it trained on, and is judged on the traffic it will actually serve next.

Writes are all-or-nothing: a new snapshot is built in a temp directory and swapped in by
renames, so a killed retrain leaves the previous snapshot intact. The snapshot gets a
manifest (rows, label counts, content hashes, like the data manifest's split entries) and is
versioned with ``dvc add`` when the project is a DVC repository.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.manifest import split_content_hash, write_json
from mnist_mlops.data.splits import MnistArrays, arrays_to_table, load_split

log = logging.getLogger(__name__)

TRAIN = "train"
RECENT_EVAL = "recent_eval"


@dataclass(frozen=True)
class FeedbackSnapshot:
    """Where the feedback splits are and what they hold (``None`` = that split is empty)."""

    root: Path
    train_dir: Path | None
    eval_dir: Path | None
    manifest: dict

    def eval_arrays(self) -> MnistArrays | None:
        return load_split(self.eval_dir) if self.eval_dir is not None else None


def _split_entry(arrays: MnistArrays) -> dict:
    return {
        "rows": len(arrays),
        "content_hash": split_content_hash(arrays),
        "label_counts": np.bincount(arrays.labels, minlength=NUM_CLASSES).tolist(),
    }


def _write_split(directory: Path, arrays: MnistArrays) -> None:
    directory.mkdir(parents=True)
    table = arrays_to_table(arrays.images, arrays.labels, [str(i) for i in arrays.image_ids])
    pq.write_table(table, directory / "part-00000.parquet")


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames only (never a half-written target)."""
    retired = target.with_name(f".{target.name}.retired")
    if retired.exists():
        shutil.rmtree(retired)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    if retired.exists():
        shutil.rmtree(retired)


def collect_feedback(
    log_dir: str | Path, feedback_dir: str | Path, eval_fraction: float, min_eval: int
) -> FeedbackSnapshot | None:
    """Snapshot every labelled prediction in the log; None when there is no feedback at all."""
    from mnist_mlops.serving.prediction_log import read_prediction_log

    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"feedback.eval_fraction must be in [0, 1), got {eval_fraction}")
    window = read_prediction_log(log_dir)
    labelled = np.flatnonzero(window.has_label)
    if labelled.size == 0:
        log.info("no feedback-labelled predictions in %s", log_dir)
        return None
    labelled = labelled[np.argsort(window.timestamps[labelled], kind="stable")]
    n_eval = int(np.ceil(eval_fraction * labelled.size))
    if n_eval < min_eval:
        n_eval = 0  # too few to judge a model on: use everything for training instead
    parts = {
        TRAIN: labelled[: labelled.size - n_eval],
        RECENT_EVAL: labelled[labelled.size - n_eval :],
    }

    feedback_dir = Path(feedback_dir)
    staging = feedback_dir.with_name(f".{feedback_dir.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    manifest: dict = {
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"prediction_log": str(log_dir), "labelled_predictions": int(labelled.size)},
        "eval_fraction": eval_fraction,
        "splits": {},
    }
    for name, idx in parts.items():
        if idx.size == 0:
            continue
        arrays = MnistArrays(window.images[idx], window.labels[idx], window.ids[idx])
        _write_split(staging / name, arrays)
        entry = _split_entry(arrays)
        entry["newest"] = str(window.timestamps[idx].max())
        manifest["splits"][name] = entry
    write_json(staging / "manifest.json", manifest)
    _swap_in(staging, feedback_dir)
    log.info(
        "feedback snapshot in %s: %s",
        feedback_dir,
        {k: v["rows"] for k, v in manifest["splits"].items()},
    )
    return FeedbackSnapshot(
        root=feedback_dir,
        train_dir=feedback_dir / TRAIN if TRAIN in manifest["splits"] else None,
        eval_dir=feedback_dir / RECENT_EVAL if RECENT_EVAL in manifest["splits"] else None,
        manifest=manifest,
    )


def dvc_version(path: Path, repo_root: Path) -> str | None:
    """``dvc add`` the snapshot when ``repo_root`` is a DVC repo; returns the .dvc file or None."""
    if not (repo_root / ".dvc").is_dir():
        log.info("%s is not a DVC repository: feedback snapshot not versioned", repo_root)
        return None
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc) if dvc.exists() else "dvc", "add", str(path.relative_to(repo_root))]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-2000:]}")
    return str(path.with_name(path.name + ".dvc"))
