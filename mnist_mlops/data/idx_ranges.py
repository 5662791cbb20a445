"""Decoding the IDX files on Spark executors, by byte range, so the driver never holds them.

An IDX file is a fixed-size header and then one flat uint8 array, so image ``i`` of a file
is the ``784`` bytes at ``header + 784 * i`` and its label the byte at ``header + i`` of the
label file: any range of images can be read by any task without reading the rest.

The files ship gzipped, and gzip is not splittable (a reader must inflate from the start to
find byte ``k``). So the driver streams each ``.gz`` once, in 4 MiB pieces, into a plain
file next to the output (:func:`inflate_idx`, constant memory, checking the length against
the header) and the executors read byte ranges of that file. On a cluster the file lies in
the output's staging directory, which already has to be storage every executor reaches.

Two frames come out of :func:`source_frames`:

* ``keys`` (``image_id``, ``label``, ``split``, ``position``): from the label files alone, one
  byte per image. The split assignment's window and the label counts run on it.
* ``frame`` (``image_id``, ``label``, ``pixels``, ``split``): ``keys`` plus a column of pixels
  read by a vectorised UDF. Spark prunes that column from any plan that does not use it, so
  the ranking reads no pixels and the write reads them once.

Rows come in the order and partitions the old driver-side decode handed to Spark (the train
source then the test source, cut into ``block_rows`` blocks, contiguous runs of blocks per
partition as ``SparkContext.parallelize`` slices them): the same rows in the same tasks give
byte-identical Parquet files.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd  # module level: pyspark resolves the UDF's pd.Series hints from here
import pyarrow as pa

from mnist_mlops.data.constants import NUM_PIXELS
from mnist_mlops.data.idx import IMAGES_MAGIC, LABELS_MAGIC, MNIST_FILES, RawDataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_PIECE = 4 << 20  # bytes inflated per read: the driver's whole buffer
SOURCES = ("train", "test")


@dataclass(frozen=True)
class IdxHeader:
    """The parsed header of one IDX file: its shape and where the payload starts."""

    shape: tuple[int, ...]
    offset: int

    @property
    def payload_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_idx_header(path: str | Path, expected_magic: int, expected_md5: str = "") -> IdxHeader:
    """The header of a gzipped IDX file (a few bytes inflated); malformed -> RawDataError."""
    path = Path(path)
    hint = f" (expected md5 {expected_md5})" if expected_md5 else ""
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4:
                raise RawDataError(f"{path} is too short to be an IDX file{hint}")
            magic = int.from_bytes(head, "big")
            if magic != expected_magic:
                raise RawDataError(
                    f"{path} has IDX magic {magic:#010x}, expected {expected_magic:#010x}{hint}: "
                    "wrong file (images vs labels?) or corrupt"
                )
            ndim = magic & 0xFF
            dims = handle.read(4 * ndim)
    except FileNotFoundError as err:
        raise RawDataError(f"missing MNIST file {path}{hint}") from err
    except (OSError, EOFError, zlib.error) as err:
        raise RawDataError(f"{path} is truncated or not gzip data{hint}: {err}") from err
    if len(dims) < 4 * ndim:
        raise RawDataError(f"{path} has a truncated IDX header{hint}")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    return IdxHeader(shape=shape, offset=4 + 4 * ndim)


def inflate_idx(
    gz_path: str | Path, out_path: str | Path, header: IdxHeader, md5: str = ""
) -> None:
    """Stream ``gz_path`` into ``out_path`` (header included) and check its exact length.

    Memory is one 4 MiB piece whatever the file's size; a truncated or over-long file is a
    :class:`RawDataError` naming it, as the in-memory reader reports it.
    """
    hint = f" (expected md5 {md5})" if md5 else ""
    expected = header.offset + header.payload_bytes
    written = 0
    try:
        with gzip.open(gz_path, "rb") as source, open(out_path, "wb") as target:
            while piece := source.read(_PIECE):
                written += len(piece)
                if written > expected:
                    break
                target.write(piece)
    except (OSError, EOFError, zlib.error) as err:
        raise RawDataError(f"{gz_path} is truncated or not gzip data{hint}: {err}") from err
    if written != expected:
        raise RawDataError(
            f"{gz_path} holds {'more than ' if written > expected else ''}"
            f"{written - header.offset} data bytes but its header {header.shape} needs "
            f"{header.payload_bytes}: truncated or corrupt{hint}"
        )


@dataclass(frozen=True)
class IdxSource:
    """One source (``train`` or ``test``): its two inflated files and their payload offsets."""

    name: str
    images_path: str
    images_offset: int
    labels_path: str
    labels_offset: int
    count: int

    @property
    def id_width(self) -> int:
        """Digits of the zero-padded index in ``<source>-<index>``: 5 for MNIST (as ever), more
        only when a source holds 100,000+ images, so ids always sort in index order."""
        return max(5, len(str(max(self.count - 1, 0))))

    def image_ids(self, start: int, stop: int) -> list[str]:
        width = self.id_width
        return [f"{self.name}-{i:0{width}d}" for i in range(start, stop)]


def check_headers(raw_paths: dict[str, Path]) -> dict[str, tuple[IdxHeader, IdxHeader]]:
    """(images, labels) headers per source, checked for shape and agreement (driver, cheap)."""
    headers = {}
    for source in SOURCES:
        images_role, labels_role = f"{source}_images", f"{source}_labels"
        images = read_idx_header(raw_paths[images_role], IMAGES_MAGIC, MNIST_FILES[images_role][1])
        labels = read_idx_header(raw_paths[labels_role], LABELS_MAGIC, MNIST_FILES[labels_role][1])
        if len(images.shape) != 3 or images.shape[1:] != (28, 28):
            raise RawDataError(
                f"{raw_paths[images_role]}: expected images of shape (N, 28, 28), "
                f"got {images.shape}"
            )
        if len(labels.shape) != 1 or labels.shape[0] != images.shape[0]:
            raise RawDataError(
                f"{raw_paths[labels_role]} holds {labels.shape[0]} labels for {images.shape[0]} "
                f"images in {raw_paths[images_role]}"
            )
        headers[source] = (images, labels)
    return headers


def inflate_sources(
    raw_paths: dict[str, Path],
    headers: dict[str, tuple[IdxHeader, IdxHeader]],
    scratch: Path,
) -> list[IdxSource]:
    """Inflate the four files into ``scratch`` (one streamed pass each) and describe them."""
    scratch.mkdir(parents=True, exist_ok=True)
    sources = []
    for source in SOURCES:
        paths = {}
        for kind, header in zip(("images", "labels"), headers[source], strict=True):
            role = f"{source}_{kind}"
            target = scratch / MNIST_FILES[role][0].removesuffix(".gz")
            inflate_idx(raw_paths[role], target, header, MNIST_FILES[role][1])
            paths[kind] = (str(target), header.offset)
        sources.append(
            IdxSource(
                name=source,
                images_path=paths["images"][0],
                images_offset=paths["images"][1],
                labels_path=paths["labels"][0],
                labels_offset=paths["labels"][1],
                count=headers[source][0].shape[0],
            )
        )
    return sources


# --- the plan: which rows each task decodes -------------------------------------------------

Piece = tuple[int, int, int]  # (source index, first row, end row) within one source


def slice_plan(counts: list[int], block_rows: int, slices: int) -> list[list[Piece]]:
    """Per task, the source row ranges it decodes, in order.

    The sources are concatenated, cut into blocks of ``block_rows`` rows (a block may span two
    sources), and task ``i`` gets blocks ``[i*B/slices, (i+1)*B/slices)`` -- Spark's
    ``ParallelCollectionRDD`` slicing, which is how ``createDataFrame`` spread the driver's
    Arrow batches (one per ``arrow_batch_size`` rows) over ``defaultParallelism`` partitions.
    """
    if block_rows < 1 or slices < 1:
        raise ValueError(f"block_rows={block_rows} and slices={slices} must be positive")
    total = sum(counts)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    blocks = [(b, min(b + block_rows, total)) for b in range(0, total, block_rows)]
    plan: list[list[Piece]] = []
    for i in range(slices):
        first, last = (i * len(blocks)) // slices, ((i + 1) * len(blocks)) // slices
        pieces: list[Piece] = []
        for lo, hi in blocks[first:last]:
            for s, count in enumerate(counts):
                a, b = max(lo, int(starts[s])), min(hi, int(starts[s]) + count)
                if a < b:
                    pieces.append((s, a - int(starts[s]), b - int(starts[s])))
        plan.append(pieces)
    return plan


def read_range(path: str, offset: int, start: int, stop: int, width: int) -> np.ndarray:
    """Records ``start..stop-1`` of ``width`` bytes each, read from their byte range."""
    with open(path, "rb") as handle:
        handle.seek(offset + start * width)
        data = handle.read((stop - start) * width)
    if len(data) != (stop - start) * width:
        raise RawDataError(f"{path}: short read of records {start}..{stop - 1}")
    return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, width)


def decode_keys(source: IdxSource, start: int, stop: int) -> pa.RecordBatch:
    """Ids, labels, source name and row position of one range (labels: one byte per image)."""
    labels = read_range(source.labels_path, source.labels_offset, start, stop, 1)[:, 0]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(source.image_ids(start, stop), pa.string()),
            pa.array(labels.astype(np.int8)),
            pa.array([source.name] * (stop - start), pa.string()),
            pa.array(np.arange(start, stop, dtype=np.int64)),
        ],
        names=["image_id", "label", "split", "position"],
    )


def decode_pixels(source: IdxSource, start: int, stop: int) -> list[bytes]:
    """The 784-byte rows ``start..stop-1`` of a source's image file."""
    flat = read_range(source.images_path, source.images_offset, start, stop, NUM_PIXELS)
    data = flat.tobytes()
    return [data[i * NUM_PIXELS : (i + 1) * NUM_PIXELS] for i in range(stop - start)]


def source_frames(
    spark: SparkSession, sources: list[IdxSource], block_rows: int, slices: int
) -> tuple[DataFrame, DataFrame]:
    """``(keys, frame)`` over every source row, decoded on the executors (module docstring)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    plan = slice_plan([s.count for s in sources], block_rows, slices)
    by_name = {s.name: s for s in sources}

    def keys_of(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column("id").to_pylist():
                for index, start, stop in plan[task]:
                    yield decode_keys(sources[index], start, stop)

    keys_schema = T.StructType(
        [
            T.StructField("image_id", T.StringType(), False),
            T.StructField("label", T.ByteType(), False),
            T.StructField("split", T.StringType(), False),
            T.StructField("position", T.LongType(), False),
        ]
    )

    @F.pandas_udf(T.BinaryType())  # type: ignore[call-overload]
    def pixels_of(split: pd.Series, position: pd.Series) -> pd.Series:
        # a batch holds consecutive rows of at most a few sources: one range read per run
        out: list[bytes] = []
        names, positions = split.to_numpy(), position.to_numpy()
        breaks = np.flatnonzero((names[1:] != names[:-1]) | (np.diff(positions) != 1)) + 1
        for lo, hi in zip(
            np.concatenate([[0], breaks]), np.concatenate([breaks, [len(names)]]), strict=True
        ):
            if hi > lo:
                start = int(positions[lo])
                out.extend(decode_pixels(by_name[names[lo]], start, start + int(hi - lo)))
        return pd.Series(out, dtype=object)

    keys = spark.range(0, slices, numPartitions=slices).mapInArrow(keys_of, keys_schema)
    # coalesce with a literal only makes the column non-nullable (the UDF never returns null):
    # the Parquet schema says `required binary pixels`, as it always did
    pixels = F.coalesce(pixels_of(F.col("split"), F.col("position")), F.lit(bytearray()))
    frame = keys.select("image_id", "label", pixels.alias("pixels"), "split")
    return keys, frame
