"""Feedback-labelled production data as Parquet splits the trainer and the gate can read.

The newest ``eval_fraction`` of labelled predictions is held out as ``recent_eval`` (the gate's
"recent labelled data"); the older rest becomes ``train``, folded into training through
``data.extra_train_dirs``. Holding out by time means the challenger is never judged on data
it trained on, and is judged on the traffic it will actually serve next.

Versioning is content addressing, not ``dvc add`` (``data/`` is git-ignored, so DVC cannot
track anything under it): each snapshot lives in ``<feedback.dir>/snapshots/<id>/``, where the
id is the sha256 of its content (per split: rows and the row content hash of the data
manifest), next to a manifest with the sha256 of every Parquet file. The same feedback always
gives the same folder, a snapshot is never rewritten once it exists, and the challenger's MLflow
run names it (tag ``feedback.snapshot``, and the splits as MLflow input datasets whose digest is
that id), so every model can be traced to the exact feedback it saw.

Writes are all-or-nothing: a snapshot is built in a staging directory and renamed into place,
so a killed retrain leaves no half-written snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.manifest import json_hash, split_content_hash, write_json
from mnist_mlops.data.splits import MnistArrays, arrays_to_table, load_split
from mnist_mlops.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TRAIN = "train"
RECENT_EVAL = "recent_eval"
SNAPSHOTS = "snapshots"
# ``<feedback.dir>/latest.json`` names the newest snapshot (for operators; runs name their own)
LATEST = "latest.json"
# folder names and MLflow dataset digests use a prefix of the sha256 (64 bits: no collisions
# among the snapshots one project makes); the full id is in the manifest and the run's tag
SNAPSHOT_DIR_CHARS = 16
DIGEST_CHARS = 16


@dataclass(frozen=True)
class FeedbackSnapshot:
    """Where the feedback splits are and what they hold (``None`` = that split is empty)."""

    root: Path
    train_dir: Path | None
    eval_dir: Path | None
    manifest: dict

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])

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


def _select_untrusted(
    untrusted: np.ndarray, n_trusted_train: int, max_fraction: float
) -> np.ndarray:
    """The newest untrusted labels, capped so they are at most ``max_fraction`` of the train
    split they join (so a flood of anonymous labels cannot outweigh the trusted ones)."""
    if not 0.0 <= max_fraction < 1.0:
        raise ValueError(f"feedback.max_untrusted_fraction must be in [0, 1), got {max_fraction}")
    cap = int(np.floor(max_fraction / (1.0 - max_fraction) * n_trusted_train + 1e-9))
    return untrusted[untrusted.size - min(cap, untrusted.size) :]


def collect_feedback(
    log_dir: str | Path,
    feedback_dir: str | Path,
    eval_fraction: float,
    min_eval: int,
    allow_untrusted: bool = False,
    max_untrusted_fraction: float = 0.0,
) -> FeedbackSnapshot | None:
    """Snapshot the feedback-labelled predictions in the log; None when there is none to use.

    Only *trusted* labels (sent with the prediction's feedback token) are used by default.
    With ``allow_untrusted`` the newest untrusted labels join the train split, capped at
    ``max_untrusted_fraction`` of it; they never enter ``recent_eval``, the gate's evidence."""
    from mnist_mlops.predictions import read_prediction_log

    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"feedback.eval_fraction must be in [0, 1), got {eval_fraction}")
    window = read_prediction_log(log_dir)
    if window.damage.any:
        log.warning("prediction log %s: skipped damaged data %s", log_dir, window.damage)
    by_time = np.argsort(window.timestamps, kind="stable")
    labelled = by_time[window.has_label[by_time]]
    trusted = labelled[window.label_trusted[labelled]]
    untrusted = labelled[~window.label_trusted[labelled]]
    n_eval = int(np.ceil(eval_fraction * trusted.size))
    if n_eval < min_eval:
        n_eval = 0  # too few to judge a model on: use everything for training instead
    train = trusted[: trusted.size - n_eval]
    used_untrusted = (
        _select_untrusted(untrusted, train.size, max_untrusted_fraction)
        if allow_untrusted
        else untrusted[:0]
    )
    train = np.concatenate([train, used_untrusted])
    train = train[np.argsort(window.timestamps[train], kind="stable")]
    if trusted.size + used_untrusted.size == 0:
        log.info(
            "no usable feedback in %s (%d untrusted labels ignored: feedback.allow_untrusted=%s)",
            log_dir,
            untrusted.size,
            allow_untrusted,
        )
        return None
    parts = {TRAIN: train, RECENT_EVAL: trusted[trusted.size - n_eval :]}
    labelled = np.concatenate([trusted, used_untrusted])

    feedback_dir = Path(feedback_dir)
    staging = feedback_dir / f".staging-{uuid.uuid4().hex[:8]}"
    manifest: dict = {
        "schema_version": 2,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"prediction_log": str(log_dir), "labelled_predictions": int(labelled.size)},
        "eval_fraction": eval_fraction,
        "trust": {
            "trusted": int(trusted.size),
            "untrusted_available": int(untrusted.size),
            "untrusted_used": int(used_untrusted.size),
            "allow_untrusted": bool(allow_untrusted),
            "max_untrusted_fraction": float(max_untrusted_fraction),
        },
        "splits": {},
    }
    try:
        for name, idx in parts.items():
            if idx.size == 0:
                continue
            arrays = MnistArrays(window.images[idx], window.labels[idx], window.ids[idx])
            _write_split(staging / name, arrays)
            entry = _split_entry(arrays)
            entry["newest"] = str(window.timestamps[idx].max())
            manifest["splits"][name] = entry
        manifest["snapshot_id"] = snapshot_id(manifest["splits"])
        manifest["files"] = {
            str(f.relative_to(staging)): _file_sha256(f) for f in sorted(staging.rglob("*.parquet"))
        }
        write_json(staging / "manifest.json", manifest)
        root = feedback_dir / SNAPSHOTS / manifest["snapshot_id"][:SNAPSHOT_DIR_CHARS]
        if root.exists():  # the same feedback as an earlier snapshot: keep that one as it is
            manifest = json.loads((root / "manifest.json").read_text())
        else:
            root.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(feedback_dir / LATEST, json.dumps({"snapshot": str(root)}) + "\n")
    log.info(
        "feedback snapshot %s in %s: %s",
        manifest["snapshot_id"][:12],
        root,
        {k: v["rows"] for k, v in manifest["splits"].items()},
    )
    return FeedbackSnapshot(
        root=root,
        train_dir=root / TRAIN if TRAIN in manifest["splits"] else None,
        eval_dir=root / RECENT_EVAL if RECENT_EVAL in manifest["splits"] else None,
        manifest=manifest,
    )


def snapshot_id(splits: dict[str, dict]) -> str:
    """sha256 of what the snapshot holds: per split its rows and row content hash."""
    return json_hash(
        {name: {k: entry[k] for k in ("rows", "content_hash")} for name, entry in splits.items()}
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_snapshot_inputs(client: MlflowClient, run_id: str, snapshot: FeedbackSnapshot) -> None:
    """Record the snapshot on ``run_id``: its splits as MLflow input datasets, its id as tags.

    Each split becomes a dataset named ``feedback-<split>`` whose source is the Parquet folder
    and whose digest is the snapshot id (the same id names the folder), with the context
    ``training`` or ``evaluation``.
    """
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    contexts = {TRAIN: "training", RECENT_EVAL: "evaluation"}
    inputs = []
    for name, directory in ((TRAIN, snapshot.train_dir), (RECENT_EVAL, snapshot.eval_dir)):
        if directory is None:
            continue
        frame = pq.read_table(directory).to_pandas()
        # a local path matches two equivalent source types; labels are never missing
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The specified dataset source")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(
                frame,
                source=str(directory),
                name=f"feedback-{name}",
                digest=snapshot.snapshot_id[:DIGEST_CHARS],
                targets="label",
            )
            entity = dataset._to_mlflow_entity()  # the schema is inferred here
        inputs.append(
            DatasetInput(
                dataset=entity,
                tags=[InputTag(key="mlflow.data.context", value=contexts[name])],
            )
        )
    client.log_inputs(run_id, datasets=inputs)
    client.set_tag(run_id, "feedback.snapshot", snapshot.snapshot_id)
    client.set_tag(run_id, "feedback.snapshot_dir", str(snapshot.root))
