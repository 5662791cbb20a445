"""Content hashes and the ``manifest.json`` that pins what one preprocessing run produced.

Hashes cover the rows in ``image_id`` order, never file names or Parquet bytes, so they
identify the dataset regardless of how Spark chose to cut it into part files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD, NUM_CLASSES
from mnist_mlops.data.splits import MnistArrays, load_split, pixels_to_images

MANIFEST_SCHEMA_VERSION = 1


def split_content_hash(arrays: MnistArrays) -> str:
    """sha256 over ids, labels (int8) and pixels (uint8) of a split sorted by image id.

    Each block is length-prefixed so no two different splits can hash the same bytes.
    """
    order = np.argsort(arrays.image_ids.astype(str), kind="stable")
    ids = "\n".join(str(i) for i in arrays.image_ids[order]).encode("utf-8")
    labels = arrays.labels[order].astype(np.int8).tobytes()
    pixels = np.ascontiguousarray(arrays.images[order], dtype=np.uint8).tobytes()
    digest = hashlib.sha256()
    for block in (ids, labels, pixels):
        digest.update(len(block).to_bytes(8, "big"))
        digest.update(block)
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """The one JSON spelling used for files we hash: sorted keys, fixed indentation."""
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


def json_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def write_json(path: Path, obj: Any) -> str:
    """Write ``obj`` canonically and return the sha256 of the written bytes."""
    text = canonical_json(obj)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_free(config: Any) -> Any:
    """``config`` without the machine's absolute paths (dropped from mappings and lists).

    ``manifest.json`` is a DVC output recorded in ``dvc.lock``: a raw or processed directory
    spelled as this machine's absolute path would give every clone a different file (and a
    dirty ``git status``) for the same rows. Relative values are kept: they mean the same thing
    in every clone.
    """
    if isinstance(config, dict):
        return {k: path_free(v) for k, v in config.items() if not _is_absolute_path(v)}
    if isinstance(config, list):
        return [path_free(v) for v in config if not _is_absolute_path(v)]
    return config


def _is_absolute_path(value: Any) -> bool:
    return isinstance(value, str) and Path(value).is_absolute()


def build_manifest(
    splits: dict[str, dict[str, Any]],
    baseline_hash: str,
    normalization: dict[str, float],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Manifest with one ``dataset_hash`` over everything that defines the data's content.

    ``config`` is recorded for humans and lineage but left out of ``dataset_hash``: paths and
    Spark settings differ between machines without changing a single row. Absolute paths are
    dropped from it (:func:`path_free`), so the file is the same in every clone.
    """
    content = {
        "splits": {
            name: {k: info[k] for k in ("rows", "content_hash")} for name, info in splits.items()
        },
        "baseline_hash": baseline_hash,
        "normalization": normalization,
    }
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "dataset_hash": json_hash(content),
        "splits": splits,
        "baseline_hash": baseline_hash,
        "normalization": normalization,
        "config": path_free(config),
    }


def streamed_split_summary(
    directory: Path, require_order: bool = False
) -> tuple[int, str, list[int]]:
    """Rows, :func:`split_content_hash` and label counts of a split, one row group at a time.

    Equal to hashing the loaded split when the rows are already in id order across the sorted
    part files (the layout of preprocessing and of the generator); otherwise the split is
    loaded whole (a small copied split), or refused with ``require_order`` (a job whose
    driver must not hold a split).
    """
    files = sorted(directory.glob("*.parquet"))
    if not _ids_in_order(files):
        if require_order:
            ranges = [_id_range(path) for path in files]
            raise RuntimeError(
                f"the rows of {directory} are not in image_id order across files: {ranges}"
            )
        arrays = load_split(directory)
        counts = np.bincount(arrays.labels, minlength=NUM_CLASSES).tolist()
        return len(arrays), split_content_hash(arrays), counts
    # three streamed blocks, each length-prefixed, exactly as split_content_hash lays them out
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    digest = hashlib.sha256()
    for column in ("image_id", "label", "pixels"):
        size = sum(len(piece) for piece in _column_bytes(files, column))
        digest.update(size.to_bytes(8, "big"))
        for piece in _column_bytes(files, column):
            digest.update(piece)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["label"]):
            counts += np.bincount(batch.column(0).to_numpy(), minlength=NUM_CLASSES)
    return rows, digest.hexdigest(), counts.tolist()


def _id_range(path: Path) -> tuple[str, str, str]:
    """(file, first id, last id): what a refused order check reports."""
    ids = pq.read_table(path, columns=["image_id"]).column(0)
    return path.name, str(ids[0]) if len(ids) else "", str(ids[-1]) if len(ids) else ""


def _ids_in_order(files: list[Path]) -> bool:
    """Whether ids increase across the sorted files, checked batch by batch (bounded memory)."""
    previous = ""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["image_id"], batch_size=10_000):
            ids = batch.column(0).to_pylist()
            if ids and (ids[0] < previous or ids != sorted(ids)):
                return False
            previous = ids[-1] if ids else previous
    return True


def _column_bytes(files: list[Path], column: str) -> Iterator[bytes]:
    """The bytes one column contributes to the content hash, batch by batch."""
    separator = b""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=10_000):
            values = batch.column(0)
            if not len(values):
                continue
            if column == "image_id":  # ids joined by newlines across every batch
                yield separator + "\n".join(values.to_pylist()).encode("utf-8")
                separator = b"\n"
            elif column == "label":
                yield values.to_numpy().astype(np.int8).tobytes()
            else:
                yield pixels_to_images(values).tobytes()


def recorded_dataset_hash(processed_dir: str | Path) -> str:
    """The ``dataset_hash`` preprocessing wrote to ``manifest.json`` (``unknown`` without one):
    the data lineage tag of a training run."""
    try:
        return str(json.loads((Path(processed_dir) / "manifest.json").read_text())["dataset_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def data_normalization(
    processed_dir: str | Path, mean: float | None = None, std: float | None = None
) -> tuple[float, float]:
    """The (mean, std) to train AND serve with: the one source is the ``normalization`` that
    preprocessing recorded in ``<processed_dir>/manifest.json``.

    ``mean``/``std`` (the ``data`` config) must agree with the manifest when both exist, so a
    run never trains one normalisation while another is recorded for its data; a directory
    without a manifest (hand-made or test data) uses them, or MNIST's constants.
    """
    path = Path(processed_dir) / "manifest.json"
    try:
        recorded = json.loads(path.read_text()).get("normalization")
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"cannot read the normalisation from {path}: {err}") from err
    if recorded is None:
        return (
            float(MNIST_MEAN if mean is None else mean),
            float(MNIST_STD if std is None else std),
        )
    try:
        stored = (float(recorded["mean"]), float(recorded["std"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} has no valid normalization mean/std: {recorded!r}") from err
    for name, given, value in (("mean", mean, stored[0]), ("std", std, stored[1])):
        if given is not None and not math.isclose(float(given), value, rel_tol=1e-9):
            raise ValueError(
                f"data.{name}={given} but {path} records {name}={value} (the normalisation "
                f"preprocessing stored for this data); re-run preprocessing with "
                f"data.{name}={given}, or drop the override"
            )
    return stored
