"""Reading the Parquet splits written by preprocessing.

Layout contract (written by ``mnist_mlops.data.spark_preprocess``)::

    <processed_dir>/<split>/part-*.parquet   image_id string, label int8, pixels 784-byte binary
    <processed_dir>/baseline.json            training-set statistics for drift monitoring
    <processed_dir>/manifest.json            row counts and content hashes per split

Pixels are raw uint8 in row-major 28x28 order, 0 = background, 255 = ink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_PIXELS

PARQUET_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("pixels", pa.binary(NUM_PIXELS), nullable=False),
    ]
)


@dataclass(frozen=True)
class MnistArrays:
    """One split in memory: uint8 images (N, 28, 28), int64 labels (N,), string ids (N,)."""

    images: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def pixels_to_images(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Zero-copy-ish view of a ``binary(784)`` column as uint8 (N, 28, 28)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.empty((0, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    if not pa.types.is_fixed_size_binary(column.type):
        column = column.cast(pa.binary(NUM_PIXELS))
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    start = column.offset * NUM_PIXELS
    flat = data[start : start + len(column) * NUM_PIXELS]
    return flat.reshape(len(column), IMAGE_SIDE, IMAGE_SIDE)


def split_dir(processed_dir: str | Path, split: str) -> Path:
    return Path(processed_dir) / split


def load_split(path: str | Path, limit: int | None = None) -> MnistArrays:
    """Read one split directory (or file) into memory, sorted by image id for determinism."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Parquet split not found: {path} (run `python -m mnist_mlops.preprocess` first)"
        )
    table = pq.read_table(path, columns=["image_id", "label", "pixels"])
    table = table.sort_by("image_id")
    if limit is not None:
        table = table.slice(0, limit)
    images = pixels_to_images(table.column("pixels")).copy()
    labels = table.column("label").to_numpy().astype(np.int64)
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    return MnistArrays(images=images, labels=labels, image_ids=ids)


def arrays_to_table(images: np.ndarray, labels: np.ndarray, image_ids: list[str]) -> pa.Table:
    """The Parquet table for uint8 images (N, 28, 28); the inverse of :func:`load_split`."""
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), NUM_PIXELS)
    pixels = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(NUM_PIXELS), len(labels), [None, pa.py_buffer(images.tobytes())]
    )
    return pa.Table.from_arrays(
        [pa.array(image_ids, pa.string()), pa.array(np.asarray(labels, dtype=np.int8)), pixels],
        schema=PARQUET_SCHEMA,
    )
