"""The drift baseline from Spark aggregations: the same ``baseline.json`` as
:func:`~mnist_mlops.data.baseline.compute_baseline`, byte for byte, without loading the split.

Executors read the written train split one Parquet row group per task, compute each image's
features and pixel-bin counts with the very functions the in-memory baseline uses, and Spark
keeps the result (a few dozen bytes per image) for the aggregations below. The driver receives
only numbers whose count does not grow with the dataset:

* label counts, pixel-bin counts, min and max: ``groupBy``/``sum``/``min``/``max`` (exact);
* the seeded reference sample: the same ``default_rng(seed).choice`` positions as the
  in-memory code (drawn on the driver: 5,000 numbers), joined against the features;
* mean and std: numpy sums a float64 array pairwise (blocks of 8 accumulators up to 128
  values, halves rounded to a multiple of 8 above), so its result depends on a fixed tree of
  ranges over ``[0, n)``. Each task sums the tree's nodes that lie inside its rows with
  numpy itself and sends the few values at the edge of its range; the driver completes the
  tree (:func:`combine_pairwise`). Same tree, same additions: the same bits as ``values.mean()``
  and ``values.std()`` (two passes, as numpy's own std);
* quantiles: numpy's ``linear`` rule needs two order statistics per quantile. A first
  aggregation counts values per bucket (the top 24 bits of an order-preserving integer key),
  a second counts the distinct values inside the few buckets that hold the wanted ranks
  (at most 2^11 distinct float32 values per bucket), and the driver interpolates exactly as
  ``np.quantile`` does (:func:`linear_quantiles`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mnist_mlops.data.baseline import BASELINE_SCHEMA_VERSION, QUANTILES, REFERENCE_SAMPLE_SIZE
from mnist_mlops.data.constants import NUM_CLASSES
from mnist_mlops.data.features import FEATURE_NAMES, PIXEL_BIN_EDGES, image_features
from mnist_mlops.data.splits import pixels_to_images

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE
_BUCKET_SHIFT = 40  # 64 - 40 = 24 key bits per bucket: sign, exponent, 12 mantissa bits
_FEATURE_BATCH = 10_000  # images per feature computation inside a task
_N_BINS = len(PIXEL_BIN_EDGES) - 1
# the bin of every uint8 value, computed as pixel_histogram does (float32 x/255 vs float64 edges)
_BIN_OF_VALUE = np.minimum(
    np.searchsorted(
        PIXEL_BIN_EDGES, (np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0), side="right"
    )
    - 1,
    _N_BINS - 1,
)


# --- numpy's pairwise summation, split over tasks ------------------------------------------


def pairwise_sum(values: Sequence[float]) -> float:
    """numpy's ``pairwise_sum`` for float64 in Python (for the few edge leaves on the driver)."""
    n = len(values)
    if n < 8:
        total = 0.0
        for value in values:
            total += value
        return total
    if n <= _PW_BLOCK:
        acc = [float(v) for v in values[:8]]
        i = 8
        while i < n - n % 8:
            for j in range(8):
                acc[j] += values[i + j]
            i += 8
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        for value in values[i:]:
            total += value
        return total
    half = n // 2
    half -= half % 8
    return pairwise_sum(values[:half]) + pairwise_sum(values[half:])


def _split(lo: int, hi: int) -> int:
    half = (hi - lo) // 2
    return lo + half - half % 8


def tree_pieces(n: int, start: int, stop: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Nodes of the summation tree over ``[0, n)`` lying inside ``[start, stop)`` (maximal
    ones), and the positions of this range that sit in leaves it only partly covers."""
    nodes: list[tuple[int, int]] = []
    loose: list[int] = []
    stack = [(0, n)]
    while stack:
        lo, hi = stack.pop()
        if hi <= start or lo >= stop or lo >= hi:
            continue
        if start <= lo and hi <= stop:
            nodes.append((lo, hi))
        elif hi - lo <= _PW_BLOCK:
            loose.extend(range(max(lo, start), min(hi, stop)))
        else:
            mid = _split(lo, hi)
            stack.extend([(mid, hi), (lo, mid)])
    return nodes, loose


def combine_pairwise(n: int, nodes: dict[tuple[int, int], float], loose: dict[int, float]) -> float:
    """The pairwise sum over ``[0, n)`` from the tasks' node sums and edge values."""

    def node(lo: int, hi: int) -> float:
        if (lo, hi) in nodes:
            return nodes[(lo, hi)]
        if hi - lo <= _PW_BLOCK:
            return pairwise_sum([loose[i] for i in range(lo, hi)])
        mid = _split(lo, hi)
        return node(lo, mid) + node(mid, hi)

    return node(0, n) if n else 0.0


# --- numpy's linear quantile from two order statistics --------------------------------------


def quantile_ranks(n: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(previous, next, gamma)`` as ``np.quantile(..., method="linear")`` computes them."""
    virtual = (n - 1) * np.asarray(quantiles, dtype=np.float64)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = n - 1
    following[above] = n - 1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    gamma = virtual - np.where(above, -1, previous)  # numpy subtracts its index -1 there
    return previous.astype(np.int64), following.astype(np.int64), gamma


def linear_quantiles(
    n: int, quantiles: Sequence[float], value_at: Callable[[int], float]
) -> np.ndarray:
    """``np.quantile(values, quantiles)`` given the sorted values' ``value_at(rank)``."""
    previous, following, gamma = quantile_ranks(n, quantiles)
    a = np.array([value_at(int(r)) for r in previous], dtype=np.float64)
    b = np.array([value_at(int(r)) for r in following], dtype=np.float64)
    diff = b - a
    result = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=result, where=gamma >= 0.5)
    return result


def order_key(values: np.ndarray) -> np.ndarray:
    """int64 keys that sort as the float64 values do (sign-magnitude to two's complement)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return bits ^ ((bits >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF))


# --- per-task work ---------------------------------------------------------------------------

_COLUMNS = [f"f{i}" for i in range(len(FEATURE_NAMES))]
_BINS = [f"h{i}" for i in range(_N_BINS)]


def row_groups(directory: Path) -> list[tuple[str, int, int, int]]:
    """``(file, row group, first position, rows)`` of a split in file order (footers only)."""
    groups, offset = [], 0
    for path in sorted(directory.glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            groups.append((str(path), g, offset, rows))
            offset += rows
    return groups


def features_batch(images: np.ndarray, labels: np.ndarray, first: int) -> pa.RecordBatch:
    """Position, label, the six features (float64) and per-image pixel-bin counts."""
    features = image_features(images)
    n = len(labels)
    bins = _BIN_OF_VALUE[images.reshape(n, -1)]
    flat = (np.arange(n, dtype=np.int64)[:, None] * _N_BINS + bins).ravel()
    counts = np.bincount(flat, minlength=n * _N_BINS).reshape(n, _N_BINS).astype(np.int32)
    arrays = [pa.array(np.arange(first, first + n, dtype=np.int64)), pa.array(labels)]
    arrays += [pa.array(features[name].astype(np.float64)) for name in FEATURE_NAMES]
    arrays += [pa.array(counts[:, i]) for i in range(_N_BINS)]
    return pa.RecordBatch.from_arrays(arrays, names=["position", "label", *_COLUMNS, *_BINS])


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges of consecutive positions (a task's rows are one run; be general anyway)."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    edges = np.concatenate([[0], breaks, [len(positions)]])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _collect(batches: Iterator[pa.RecordBatch], columns: list[str]) -> dict[str, np.ndarray]:
    """One task's rows (a row group's features: a few MB), sorted by position."""
    table = pa.Table.from_batches(list(batches))
    if table.num_rows == 0:
        return {}
    order = np.argsort(table.column("position").to_numpy(), kind="stable")
    return {c: table.column(c).to_numpy()[order] for c in ["position", *columns]}


# --- the job ---------------------------------------------------------------------------------


def spark_baseline(
    spark: SparkSession,
    train_dir: Path,
    content_hash: str,
    seed: int,
    split: str = "train",
    sample_size: int = REFERENCE_SAMPLE_SIZE,
) -> dict[str, Any]:
    """``compute_baseline(load_split(train_dir), ...)`` computed by Spark (module docstring).

    The split's rows must be in ``image_id`` order across its sorted files (preprocessing's
    layout, checked by the streamed hash before this runs): positions are that order.
    """
    from pyspark import StorageLevel
    from pyspark.sql import types as T

    groups = row_groups(train_dir)
    n_images = sum(rows for *_, rows in groups)
    if n_images == 0:
        raise ValueError(f"cannot build a drift baseline from an empty {split!r} split")

    def features_of(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column("id").to_pylist():
                path, group, first, _ = groups[task]
                parquet = pq.ParquetFile(path)
                for part in parquet.iter_batches(
                    batch_size=_FEATURE_BATCH, row_groups=[group], columns=["label", "pixels"]
                ):
                    images = pixels_to_images(part.column("pixels"))
                    labels = part.column("label").to_numpy(zero_copy_only=False)
                    yield features_batch(images, labels.astype(np.int8), first)
                    first += len(labels)

    schema = T.StructType(
        [T.StructField("position", T.LongType(), False), T.StructField("label", T.ByteType())]
        + [T.StructField(c, T.DoubleType(), False) for c in _COLUMNS]
        + [T.StructField(c, T.IntegerType(), False) for c in _BINS]
    )
    features = (
        spark.range(0, len(groups), numPartitions=len(groups))
        .mapInArrow(features_of, schema)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        return _summarise(spark, features, n_images, content_hash, seed, split, sample_size)
    finally:
        features.unpersist()


def _summarise(
    spark: SparkSession,
    features: DataFrame,
    n: int,
    content_hash: str,
    seed: int,
    split: str,
    sample_size: int,
) -> dict[str, Any]:
    from pyspark.sql import functions as F

    # labels, pixel bins, min, max: one grouped aggregation (ten rows back)
    per_label = features.groupBy("label").agg(
        F.count(F.lit(1)).alias("n"),
        *[F.sum(c).alias(c) for c in _BINS],
        *[F.min(c).alias(f"min_{c}") for c in _COLUMNS],
        *[F.max(c).alias(f"max_{c}") for c in _COLUMNS],
    )
    rows = per_label.collect()
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for row in rows:
        if not 0 <= row["label"] < NUM_CLASSES:
            raise ValueError(f"label {row['label']} in the {split!r} split is outside 0..9")
        counts[row["label"]] = row["n"]
    bins = np.array([sum(int(row[c]) for row in rows) for c in _BINS], dtype=np.int64)
    total = bins.sum()
    histogram = bins / total if total else bins.astype(np.float64)
    lows = {c: min(row[f"min_{c}"] for row in rows) for c in _COLUMNS}
    highs = {c: max(row[f"max_{c}"] for row in rows) for c in _COLUMNS}

    # the reference sample: the in-memory code's positions, the features at them
    rng = np.random.default_rng(seed)
    sample_index = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    wanted = spark.createDataFrame([(int(i),) for i in sample_index], "position long")
    picked = features.join(F.broadcast(wanted), "position").select("position", *_COLUMNS)
    sample = sorted(picked.collect(), key=lambda row: row["position"])
    if [row["position"] for row in sample] != sample_index.tolist():
        raise RuntimeError("the reference sample's positions are missing from the features")

    means = [s / n for s in _pairwise_sums(features, n, None)]
    squares = _pairwise_sums(features, n, means)
    stds = [float(np.sqrt(s / n)) for s in squares]
    quantiles = _quantiles(features, n)

    stats = {}
    for i, (name, column) in enumerate(zip(FEATURE_NAMES, _COLUMNS, strict=True)):
        stats[name] = {
            "mean": float(means[i]),
            "std": stds[i],
            "min": float(lows[column]),
            "max": float(highs[column]),
            "quantiles": {q: float(v) for q, v in zip(QUANTILES, quantiles[i], strict=True)},
            "reference_sample": [float(row[column]) for row in sample],
        }
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "source": {"split": split, "n_images": n, "content_hash": content_hash},
        "labels": {"counts": counts.tolist(), "fractions": (counts / n).tolist()},
        "pixel_histogram": {
            "bin_edges": PIXEL_BIN_EDGES.tolist(),
            "fractions": histogram.tolist(),
        },
        "features": stats,
    }


def _pairwise_sums(features: DataFrame, n: int, means: list[float] | None) -> list[float]:
    """Per feature, numpy's pairwise sum of the values (or of their squared deviations)."""
    out_schema = "feature int, kind int, lo long, hi long, value double"

    def pieces(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        data = _collect(batches, _COLUMNS)
        if not data:
            return
        positions = data["position"]
        rows: dict[str, list] = {k: [] for k in ("feature", "kind", "lo", "hi", "value")}
        for a, b in _runs(positions):
            start, stop = int(positions[a]), int(positions[b - 1]) + 1
            nodes, loose = tree_pieces(n, start, stop)
            for f, column in enumerate(_COLUMNS):
                values = data[column][a:b]
                if means is not None:
                    values = values - np.array([means[f]])
                    values = values * values
                for lo, hi in nodes:
                    rows["feature"].append(f)
                    rows["kind"].append(0)
                    rows["lo"].append(lo)
                    rows["hi"].append(hi)
                    rows["value"].append(float(np.add.reduce(values[lo - start : hi - start])))
                for pos in loose:
                    rows["feature"].append(f)
                    rows["kind"].append(1)
                    rows["lo"].append(pos)
                    rows["hi"].append(pos + 1)
                    rows["value"].append(float(values[pos - start]))
        yield pa.RecordBatch.from_pydict(
            rows,
            schema=pa.schema(
                [
                    ("feature", pa.int32()),
                    ("kind", pa.int32()),
                    ("lo", pa.int64()),
                    ("hi", pa.int64()),
                    ("value", pa.float64()),
                ]
            ),  # fmt: skip
        )

    # through Arrow, as columns: no Row object per value on the driver
    collected = features.mapInArrow(pieces, out_schema).toPandas()
    sums = []
    for f in range(len(_COLUMNS)):
        mine = collected[collected["feature"] == f]
        kind, lo, hi = mine["kind"].to_numpy(), mine["lo"].to_numpy(), mine["hi"].to_numpy()
        value = mine["value"].to_numpy()
        nodes = {
            (int(a), int(b)): float(v)
            for a, b, v in zip(lo[kind == 0], hi[kind == 0], value[kind == 0], strict=True)
        }
        loose = {int(a): float(v) for a, v in zip(lo[kind == 1], value[kind == 1], strict=True)}
        sums.append(combine_pairwise(n, nodes, loose))
    return sums


def _quantiles(features: DataFrame, n: int) -> list[np.ndarray]:
    """Per feature, ``np.quantile(values, QUANTILES)`` from two bounded aggregations."""
    from pyspark.sql import functions as F

    previous, following, _ = quantile_ranks(n, list(QUANTILES.values()))
    ranks = sorted(set(previous.tolist()) | set(following.tolist()))

    def bucket_counts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        data = _collect(batches, _COLUMNS)
        for f, column in enumerate(_COLUMNS):
            if not data:
                break
            buckets, count = np.unique(order_key(data[column]) >> _BUCKET_SHIFT, return_counts=True)
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.full(len(buckets), f, np.int32)), pa.array(buckets),
                 pa.array(count.astype(np.int64))],
                names=["feature", "key", "n"],
            )  # fmt: skip

    schema = "feature int, key long, n long"
    coarse = (
        features.mapInArrow(bucket_counts, schema)
        .groupBy("feature", "key")
        .agg(F.sum("n").alias("n"))
        .toPandas()  # through Arrow: a few thousand buckets per feature, as columns
    )
    # for each feature, the bucket holding each wanted rank and the rank inside the bucket
    targets: dict[int, dict[int, int]] = {}  # feature -> {bucket: rows before it}
    where: dict[tuple[int, int], tuple[int, int]] = {}  # (feature, rank) -> (bucket, offset)
    for f in range(len(_COLUMNS)):
        table = coarse[coarse["feature"] == f].sort_values("key")
        keys = table["key"].to_numpy(dtype=np.int64)
        ends = np.cumsum(table["n"].to_numpy(dtype=np.int64))
        for rank in ranks:
            b = int(np.searchsorted(ends, rank, side="right"))
            before = int(ends[b - 1]) if b else 0
            targets.setdefault(f, {})[int(keys[b])] = before
            where[(f, rank)] = (int(keys[b]), rank - before)

    def value_counts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        data = _collect(batches, _COLUMNS)
        for f, column in enumerate(_COLUMNS):
            if not data:
                break
            values = data[column]
            keep = np.isin(order_key(values) >> _BUCKET_SHIFT, list(targets[f]))
            unique, count = np.unique(values[keep], return_counts=True)
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.full(len(unique), f, np.int32)), pa.array(unique),
                 pa.array(count.astype(np.int64))],
                names=["feature", "value", "n"],
            )  # fmt: skip

    fine = (
        features.mapInArrow(value_counts, "feature int, value double, n long")
        .groupBy("feature", "value")
        .agg(F.sum("n").alias("n"))
        .toPandas()
    )
    result = []
    for f in range(len(_COLUMNS)):
        mine = fine[fine["feature"] == f]
        values = mine["value"].to_numpy(dtype=np.float64)
        counts = mine["n"].to_numpy(dtype=np.int64)
        buckets = order_key(values) >> _BUCKET_SHIFT
        by_bucket: dict[int, list[tuple[float, int]]] = {}
        rows = zip(buckets.tolist(), values.tolist(), counts.tolist(), strict=True)
        for key, value, count in rows:
            by_bucket.setdefault(key, []).append((value, count))

        def value_at(rank: int, f: int = f, by_bucket: dict = by_bucket) -> float:
            bucket, offset = where[(f, rank)]
            seen = 0
            for value, count in sorted(by_bucket[bucket]):
                seen += count
                if offset < seen:
                    return value
            raise RuntimeError(f"rank {rank} of feature {FEATURE_NAMES[f]} not found")

        result.append(linear_quantiles(n, list(QUANTILES.values()), value_at))
    return result
