"""A generated dataset (``data=mnist8m``): deformed training digits written by Spark executors.

``python -m mnist_mlops.generate data=mnist8m data.generator.size=1000000`` writes a processed
directory in the preprocessing layout (``mnist_mlops.data.splits``), so
``python -m mnist_mlops.train data=mnist8m`` trains on it unchanged:

* ``train/``: ``size`` images of :mod:`mnist_mlops.data.deform`, made on the executors. The
  driver only broadcasts the real training digits (47 MB at 55k) and a range of chunk numbers;
  each task turns its chunks into Arrow batches of ``chunk_size`` rows, so no generated pixel
  ever passes through the driver and executor memory is bounded by one chunk, not the dataset.
* ``val/``, ``gate/``, ``test/`` and ``baseline.json``: copied from the real processed
  directory. Generated digits go to training only: epoch selection, the promotion gate and the
  reported accuracy must measure real handwriting (a model could learn the generator's
  artefacts and look better on generated held-out images than on real ones), and the drift
  baseline describes what production traffic should look like, i.e. real digits.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mnist_mlops.data.constants import SPLITS
from mnist_mlops.data.deform import DeformSettings, generate_range, generated_ids
from mnist_mlops.data.manifest import (
    build_manifest,
    data_normalization,
    streamed_split_summary,
    write_json,
)
from mnist_mlops.data.spark_preprocess import (
    _REPRODUCIBLE_PARQUET,
    BASELINE_FILE,
    MANIFEST_FILE,
    atomic_directory,
    timed_step,
)
from mnist_mlops.data.splits import arrays_to_table, load_split

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_SPARK_OUTPUT = "_spark_output"


def chunk_table(
    images: np.ndarray, labels: np.ndarray, seed: int, start: int, stop: int, deform: DeformSettings
) -> pa.Table:
    """Generated rows ``start..stop-1`` as a table in the Parquet split schema."""
    out, out_labels = generate_range(images, labels, seed, start, stop, deform)
    return arrays_to_table(out, out_labels, generated_ids(start, stop))


@dataclass(frozen=True)
class Mnist8mSource:
    """``size`` deformed copies of the real training digits in ``source_dir`` (seeded)."""

    source_dir: str
    size: int = 1_000_000
    seed: int = 0
    chunk_size: int = 10_000
    # rows per Parquet row group: the streaming loader's unit of reading and sharding
    row_group_rows: int = 10_000
    deform: DeformSettings = field(default_factory=DeformSettings)

    def __post_init__(self) -> None:
        for name in ("size", "chunk_size", "row_group_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.generator.{name}={value!r} must be a positive integer")
        if not (Path(self.source_dir) / "train").is_dir():
            raise ValueError(
                f"data.generator.source_dir={self.source_dir!r} has no train/ split "
                "(run `python -m mnist_mlops.preprocess` first)"
            )

    def write_train(self, spark: SparkSession, out_dir: Path, partitions: int) -> int:
        """Generate on the executors and write ``out_dir/train/part-NNNNN.parquet`` in index
        order (one file per task); returns the number of files."""
        from pyspark.sql import types as T

        source = load_split(Path(self.source_dir) / "train")
        shared = spark.sparkContext.broadcast((source.images, source.labels))
        size, chunk, seed, deform = self.size, self.chunk_size, self.seed, self.deform
        n_chunks = -(-size // chunk)

        def make(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            images, labels = shared.value
            for batch in batches:
                for number in batch.column("id").to_pylist():
                    start = number * chunk
                    table = chunk_table(
                        images, labels, seed, start, min(start + chunk, size), deform
                    )
                    # Spark reads binary, not fixed_size_binary(784), from Arrow
                    yield pa.RecordBatch.from_arrays(
                        [
                            table.column("image_id").combine_chunks(),
                            table.column("label").combine_chunks(),
                            table.column("pixels").combine_chunks().cast(pa.binary()),
                        ],
                        names=["image_id", "label", "pixels"],
                    )

        schema = T.StructType(
            [
                T.StructField("image_id", T.StringType(), False),
                T.StructField("label", T.ByteType(), False),
                T.StructField("pixels", T.BinaryType(), False),
            ]
        )
        spark_out = out_dir / _SPARK_OUTPUT
        tasks = max(1, min(partitions, n_chunks))
        # parquet-mr closes a row group on its buffered size, which counts pages compressed once
        # they are flushed: ~350 B per generated row with snappy (800 B raw). At 800 B/row the
        # groups came out ~2.5x row_group_rows (measured at 70k), so budget 400 B/row.
        block = str(self.row_group_rows * 400)
        (
            spark.range(0, n_chunks, numPartitions=tasks)
            .mapInArrow(make, schema)
            .write.mode("errorifexists")
            .options(**_REPRODUCIBLE_PARQUET, **{"parquet.block.size": block})
            .parquet(str(spark_out))
        )
        shared.unpersist()
        written = sorted(spark_out.glob("part-*.parquet"))  # part-<task>-...: index order
        target = out_dir / "train"
        target.mkdir()
        for index, part in enumerate(written):
            part.rename(target / f"part-{index:05d}.parquet")
        shutil.rmtree(spark_out)
        return len(written)

    def run(self, spark: SparkSession, processed_dir: str, partitions: int) -> dict[str, Any]:
        """Write the whole dataset atomically (like preprocessing); returns the manifest."""
        source_dir = Path(self.source_dir)
        with atomic_directory(Path(processed_dir)) as staging:
            with timed_step("spark_generate", f"Spark: generating {self.size} deformed images"):
                files = self.write_train(spark, staging, partitions)
            for split in SPLITS:
                if split != "train":
                    shutil.copytree(source_dir / split, staging / split)
            shutil.copy2(source_dir / BASELINE_FILE, staging / BASELINE_FILE)
            splits: dict[str, dict[str, Any]] = {}
            with timed_step("hash", "hashing the splits (streamed)"):
                for split in SPLITS:
                    rows, digest, counts = streamed_split_summary(staging / split)
                    splits[split] = {
                        "rows": rows,
                        "files": len(list((staging / split).glob("*.parquet"))),
                        "content_hash": digest,
                        "label_counts": counts,
                    }
            if splits["train"]["files"] != files or splits["train"]["rows"] != self.size:
                raise RuntimeError(f"generated train split is incomplete: {splits['train']}")
            baseline_hash = hashlib.sha256((staging / BASELINE_FILE).read_bytes()).hexdigest()
            normalization = _source_normalization(source_dir)
            config = {
                "generator": {"size": self.size, "seed": self.seed, "deform": vars(self.deform)},
                "source_dataset_hash": _source_manifest(source_dir).get("dataset_hash"),
            }
            manifest = build_manifest(splits, baseline_hash, normalization, config)
            write_json(staging / MANIFEST_FILE, manifest)
        log.info("wrote %s: dataset_hash %s", processed_dir, manifest["dataset_hash"][:12])
        return manifest


def _source_manifest(source_dir: Path) -> dict[str, Any]:
    import json

    path = source_dir / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _source_normalization(source_dir: Path) -> dict[str, float]:
    mean, std = data_normalization(source_dir)  # the real data's, else MNIST's constants
    return {"mean": mean, "std": std}
