"""The preprocessing job: raw IDX -> Spark -> train/val/gate/test Parquet, baseline, manifest.

The driver never holds the images: its memory does not grow with the dataset.

* The driver checks the four files (MD5s, IDX headers) and inflates each ``.gz`` once, in
  4 MiB pieces, into the staging directory: gzip cannot be read from the middle, a plain IDX
  file can. Executors then decode byte ranges of it (:mod:`mnist_mlops.data.idx_ranges`):
  the labels for the split assignment, the pixels for the write.
* Two stratified hold-outs of the training images are chosen in Spark: within each label,
  rows are ranked by a seeded hash of their id; the first ``val`` quota go to ``val`` (epoch
  selection and recipe decisions), the next ``gate`` quota to ``gate`` (the promotion gate's
  paired test, read by no other decision). Quotas by largest remainder over the label counts
  (a Spark ``groupBy``), so sizes are exact and every class keeps its share; ``test`` stays
  the untouched 10k for the final report.
* One Spark write with ``partitionBy("split")`` produces all four splits, at most
  ``partitions`` files each, into a staging directory next to the target. Rows reach the
  writer in the tasks and order the former driver-side decode gave them, so the 70k output
  is byte-identical to it.
* Content hashes and label counts are streamed from the written files a row group at a time
  (a sha256 is sequential: one reader, bounded memory); the drift baseline is computed by
  Spark aggregations over the written train split (:mod:`mnist_mlops.data.spark_baseline`),
  equal to the in-memory :func:`~mnist_mlops.data.baseline.compute_baseline`. Only then is
  the staging directory renamed into place, so a failure at any step leaves the previous
  output intact.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD, NUM_CLASSES, SPLITS
from mnist_mlops.data.idx import RawDataError, ensure_raw_files
from mnist_mlops.data.idx_ranges import (
    IdxHeader,
    IdxSource,
    check_headers,
    inflate_sources,
    source_frames,
)
from mnist_mlops.data.manifest import build_manifest, streamed_split_summary, write_json
from mnist_mlops.data.spark_baseline import spark_baseline
from mnist_mlops.utils.atomic import atomic_directory  # re-exported: generate uses it too

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.json"
MANIFEST_FILE = "manifest.json"
_SPARK_OUTPUT = "_spark_output"
_RAW_SCRATCH = "_raw"  # the inflated IDX files, inside staging, removed before publishing
# parquet-mr lists each column chunk's encodings from a HashSet whose order changes from one
# JVM to the next, so files differ byte-wise between identical runs (and DVC would see new
# data). With v2 pages and no dictionary every chunk has exactly one encoding: same rows,
# same bytes.
_REPRODUCIBLE_PARQUET = {"parquet.writer.version": "v2", "parquet.enable.dictionary": "false"}
# Row groups of at most ~16 MB as parquet-mr counts them (compressed pages once flushed:
# ~65k MNIST rows) instead of its 128 MB default. Readers hold a row group's column chunk:
# the driver's streamed hash, a baseline task, a training rank. At 70k every file is one
# group either way (the largest is ~6 MB), so the files are the same bytes as before.
_ROW_GROUP_BYTES = str(16 << 20)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything the job reads from the ``data`` and ``spark`` config groups."""

    raw_dir: str
    processed_dir: str
    download: bool = False
    verify_checksums: bool = True
    val_size: int = 5000
    gate_size: int = 5000
    split_seed: int = 42
    partitions: int = 2
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"spark.partitions={self.partitions} must be at least 1")
        if self.val_size < 1:
            raise ValueError(f"data.val_size={self.val_size} must be at least 1")
        if self.gate_size < 1:
            raise ValueError(f"data.gate_size={self.gate_size} must be at least 1")
        if self.std <= 0:
            raise ValueError(f"data.std={self.std} must be positive")


@contextlib.contextmanager
def timed_step(key: str, description: str) -> Iterator[None]:
    """Log the start and duration of one long step: the job's progress report.

    The duration record carries ``step``/``seconds`` attributes so the benchmark can collect
    phase timings from the same log lines a user sees.
    """
    log.info("%s ...", description)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    log.info(
        "%s done in %.2f s (driver max RSS so far %.0f MB)",
        description,
        seconds,
        peak_mb,
        extra={"step": key, "seconds": seconds},
    )


def class_quotas(label_counts: np.ndarray, val_size: int, key: str = "data.val_size") -> np.ndarray:
    """Per-class hold-out sizes summing exactly to ``val_size``, proportional to the counts.

    Largest-remainder apportionment in integer arithmetic; ties go to the lower class.
    ``key`` names the setting in the error message.
    """
    counts = np.asarray(label_counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 < val_size < total:
        raise ValueError(f"{key}={val_size} must be between 1 and {total - 1} (training images)")
    quotas, remainders = np.divmod(counts * val_size, total)
    missing = val_size - int(quotas.sum())
    order = np.lexsort((np.arange(len(counts)), -remainders))
    quotas[order[:missing]] += 1
    return quotas


def image_ids(source: str, n: int) -> list[str]:
    """Stable ids ``<source>-<index>`` tied to the position in the original IDX file (what the
    executors write: :meth:`~mnist_mlops.data.idx_ranges.IdxSource.image_ids`)."""
    return IdxSource(source, "", 0, "", 0, n).image_ids(0, n)


def assign_splits(
    frame: DataFrame, quotas: np.ndarray, seed: int, gate_quotas: np.ndarray | None = None
) -> DataFrame:
    """Move seeded, stratified samples of training rows per class: the first ``quotas[c]`` by
    rank to ``val``, the next ``gate_quotas[c]`` to ``gate`` (so ``val`` does not depend on
    the gate's size, and the two are disjoint by construction)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    gate_quotas = np.zeros_like(quotas) if gate_quotas is None else np.asarray(gate_quotas)
    rank_key = F.xxhash64(F.lit(int(seed)), F.col("image_id"))
    by_label = Window.partitionBy("label").orderBy(rank_key, F.col("image_id"))
    label = F.col("label").cast("int")
    val_quota = F.array(*[F.lit(int(q)) for q in quotas])[label]
    held_quota = F.array(*[F.lit(int(q + g)) for q, g in zip(quotas, gate_quotas, strict=True)])[
        label
    ]
    held_ids = (
        frame.where(F.col("split") == "train")
        .select("image_id", "label")
        .withColumn("rank", F.row_number().over(by_label))
        .where(F.col("rank") <= held_quota)
        .select(
            "image_id",
            F.when(F.col("rank") <= val_quota, F.lit("val"))
            .otherwise(F.lit("gate"))
            .alias("held_as"),
        )
    )
    return (
        frame.join(F.broadcast(held_ids), on="image_id", how="left")
        .withColumn("split", F.coalesce(F.col("held_as"), F.col("split")))
        .select("image_id", "label", "pixels", "split")
    )


def write_splits(frame: DataFrame, out_dir: Path, partitions: int, normalization: dict) -> None:
    """One Spark write of all splits, then ``<out_dir>/<split>/part-NNNNN.parquet``.

    Part files get stable names (Spark's contain a random job id) so two runs produce
    byte-identical directories. The normalisation is stored in the pixel column's metadata.
    """
    from pyspark.sql import functions as F

    pixel_meta = {"encoding": "uint8 row-major 28x28, 0=background", "normalization": normalization}
    spark_out = out_dir / _SPARK_OUTPUT
    (
        frame.select(
            "image_id", "label", F.col("pixels").alias("pixels", metadata=pixel_meta), "split"
        )
        .coalesce(partitions)
        # the order the writer needs (by split) plus image_id: rows already come so in each
        # task (the same bytes at 70k), and a task that Spark handed two ranges still writes
        # its file in id order
        .sortWithinPartitions("split", "image_id")
        .write.mode("errorifexists")
        .options(**_REPRODUCIBLE_PARQUET, **{"parquet.block.size": _ROW_GROUP_BYTES})
        .partitionBy("split")
        .parquet(str(spark_out))
    )
    for split in SPLITS:
        # numbered by their first image_id: Spark's task number is not always the order of the
        # rows (on a standalone cluster coalesce may hand the second half to task 0), and the
        # streamed hash, the baseline and the loaders read the files in name order
        written = sorted((spark_out / f"split={split}").glob("part-*.parquet"), key=_first_image_id)
        if not written:
            raise RuntimeError(f"Spark wrote no rows for split {split!r} into {spark_out}")
        if len(written) > partitions:
            raise RuntimeError(
                f"split {split!r} has {len(written)} files, more than spark.partitions={partitions}"
            )
        target = out_dir / split
        target.mkdir()
        for index, part in enumerate(written):
            part.rename(target / f"part-{index:05d}.parquet")
    shutil.rmtree(spark_out)


def _first_image_id(path: Path) -> str:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1, columns=["image_id"]):
        if batch.num_rows:
            return str(batch.column(0)[0].as_py())
    return ""


@dataclass(frozen=True)
class RawFiles:
    """The four raw files, verified, with their parsed IDX headers (no payload read yet)."""

    paths: dict[str, Path]
    headers: dict[str, tuple[IdxHeader, IdxHeader]]

    @property
    def n_train(self) -> int:
        return self.headers["train"][0].shape[0]

    @property
    def n_images(self) -> int:
        return sum(images.shape[0] for images, _ in self.headers.values())


def read_raw(settings: PreprocessSettings) -> RawFiles:
    """Verified files and headers; done before Spark starts so bad files fail fast."""
    with timed_step("read_raw", f"checking raw MNIST in {settings.raw_dir}"):
        paths = ensure_raw_files(settings.raw_dir, settings.download, settings.verify_checksums)
        return RawFiles(paths=paths, headers=check_headers(paths))


def check_holdouts(settings: PreprocessSettings, n_train: int) -> None:
    """The hold-out sizes against the training images the header announces (before Spark)."""
    for key, size in (("data.val_size", settings.val_size), ("data.gate_size", settings.gate_size)):
        if not 0 < size < n_train:
            raise ValueError(f"{key}={size} must be between 1 and {n_train - 1} (training images)")
    if settings.val_size + settings.gate_size >= n_train:
        raise ValueError(
            f"data.val_size={settings.val_size} + data.gate_size={settings.gate_size} leave no "
            f"training images out of {n_train}"
        )


def train_label_counts(keys: DataFrame) -> np.ndarray:
    """Labels of the training source counted by Spark; a label outside 0..9 is a raw error."""
    from pyspark.sql import functions as F

    rows = keys.where(F.col("split") == "train").groupBy("label").count().collect()
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for row in rows:
        if not 0 <= row["label"] < NUM_CLASSES:
            raise RawDataError(f"train labels: label {row['label']} is outside 0..9")
        counts[row["label"]] = row["count"]
    return counts


def split_summaries(spark: SparkSession, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows, files, content hash and label counts per split, each streamed by one Spark task.

    A sha256 is one sequential pass, so one reader per split; running it in a task keeps the
    reader's buffers (a row group's column chunk) off the driver, and the four splits hash in
    parallel.
    """
    directories = [str(out_dir / split) for split in SPLITS]

    def summarise(directory: str) -> tuple[str, tuple[int, str, list[int]]]:
        return directory, streamed_split_summary(Path(directory), require_order=True)

    results = dict(
        spark.sparkContext.parallelize(directories, len(directories)).map(summarise).collect()
    )
    return {
        split: {
            "rows": results[directory][0],
            "files": len(list(Path(directory).glob("*.parquet"))),
            "content_hash": results[directory][1],
            "label_counts": results[directory][2],
        }
        for split, directory in zip(SPLITS, directories, strict=True)
    }


def run_preprocessing(
    spark: SparkSession,
    settings: PreprocessSettings,
    config: dict[str, Any] | None = None,
    raw: RawFiles | None = None,
) -> dict[str, Any]:
    """Run the whole job; returns the manifest (also written to ``manifest.json``)."""
    processed_dir = Path(settings.processed_dir)
    normalization = {"mean": float(settings.mean), "std": float(settings.std)}
    raw = raw if raw is not None else read_raw(settings)
    check_holdouts(settings, raw.n_train)

    with atomic_directory(processed_dir) as staging:
        scratch = staging / _RAW_SCRATCH
        with timed_step("inflate", "inflating the IDX files (streamed, for ranged reads)"):
            sources = inflate_sources(raw.paths, raw.headers, scratch)
        with timed_step(
            "spark_split_write", f"Spark: decoding, splitting and writing {raw.n_images} images"
        ):
            # the old driver-side decode handed Spark one Arrow batch per arrow_batch_size rows
            # over defaultParallelism partitions; the same cut gives the same files
            block_rows = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
            slices = spark.sparkContext.defaultParallelism
            keys, frame = source_frames(spark, sources, block_rows, slices)
            counts = train_label_counts(keys)
            quotas = class_quotas(counts, settings.val_size)
            gate_quotas = class_quotas(counts, settings.gate_size, "data.gate_size")
            frame = assign_splits(frame, quotas, settings.split_seed, gate_quotas)
            write_splits(frame, staging, settings.partitions, normalization)
        shutil.rmtree(scratch)
        with timed_step("hash", "hashing the written splits (streamed, one task per split)"):
            splits = split_summaries(spark, staging)
        with timed_step("baseline", "Spark: the drift baseline of the train split"):
            baseline = spark_baseline(
                spark,
                staging / "train",
                splits["train"]["content_hash"],
                seed=settings.split_seed,
            )
            baseline_hash = write_json(staging / BASELINE_FILE, baseline)
        manifest = build_manifest(
            splits, baseline_hash, normalization, config or {"settings": asdict(settings)}
        )
        write_json(staging / MANIFEST_FILE, manifest)
    log.info(
        "wrote %s: %s rows, dataset_hash %s",
        processed_dir,
        {name: info["rows"] for name, info in splits.items()},
        manifest["dataset_hash"][:12],
    )
    return manifest
