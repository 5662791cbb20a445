"""The Spark job on synthetic IDX: splits, schema, determinism, baseline, manifest, atomicity."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_raw_fixtures import (
    SYNTHETIC_GATE_SIZE,
    SYNTHETIC_TEST_SIZE,
    SYNTHETIC_TRAIN_COUNTS,
    SYNTHETIC_VAL_SIZE,
)

from mnist_mlops.data import spark_preprocess as job
from mnist_mlops.data.baseline import QUANTILES
from mnist_mlops.data.constants import SPLITS
from mnist_mlops.data.features import (
    FEATURE_NAMES,
    PIXEL_BIN_EDGES,
    image_features,
    pixel_histogram,
)
from mnist_mlops.data.idx import RawDataError, load_raw_mnist
from mnist_mlops.data.manifest import split_content_hash
from mnist_mlops.data.spark_preprocess import atomic_directory, class_quotas, run_preprocessing
from mnist_mlops.data.splits import load_split


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- quotas -------------------------------------------------------------------------------


def test_quotas_are_exact_and_proportional() -> None:
    quotas = class_quotas(SYNTHETIC_TRAIN_COUNTS, SYNTHETIC_VAL_SIZE)
    assert quotas.sum() == SYNTHETIC_VAL_SIZE
    exact = SYNTHETIC_TRAIN_COUNTS * SYNTHETIC_VAL_SIZE / SYNTHETIC_TRAIN_COUNTS.sum()
    assert np.all(np.abs(quotas - exact) < 1)
    # largest remainders get the leftover units
    floors = np.floor(exact)
    bumped = np.flatnonzero(quotas > floors)
    assert (exact - floors)[bumped].min() >= (exact - floors)[quotas == floors].max()


def test_quotas_break_ties_towards_lower_class() -> None:
    assert class_quotas(np.array([10, 10, 10, 10]), 2).tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("val_size", [0, -1, 640])
def test_quotas_reject_impossible_val_size(val_size: int) -> None:
    with pytest.raises(ValueError, match=f"data.val_size={val_size} must be between 1 and"):
        class_quotas(SYNTHETIC_TRAIN_COUNTS, val_size)


# --- one run ------------------------------------------------------------------------------


def test_split_sizes_and_stratification(preprocessed, base_settings) -> None:
    """Train shrinks by both hold-outs (val AND gate), each stratified by its own quotas."""
    out, manifest = preprocessed
    n_train = int(SYNTHETIC_TRAIN_COUNTS.sum())
    rows = {split: manifest["splits"][split]["rows"] for split in SPLITS}
    assert rows == {
        "train": n_train - SYNTHETIC_VAL_SIZE - SYNTHETIC_GATE_SIZE,
        "val": SYNTHETIC_VAL_SIZE,
        "gate": SYNTHETIC_GATE_SIZE,
        "test": SYNTHETIC_TEST_SIZE,
    }
    val, gate = load_split(out / "val"), load_split(out / "gate")
    train = load_split(out / "train")
    val_quotas = class_quotas(SYNTHETIC_TRAIN_COUNTS, SYNTHETIC_VAL_SIZE)
    gate_quotas = class_quotas(SYNTHETIC_TRAIN_COUNTS, SYNTHETIC_GATE_SIZE)
    np.testing.assert_array_equal(np.bincount(val.labels, minlength=10), val_quotas)
    np.testing.assert_array_equal(np.bincount(gate.labels, minlength=10), gate_quotas)
    np.testing.assert_array_equal(
        np.bincount(train.labels, minlength=10) + val_quotas + gate_quotas, SYNTHETIC_TRAIN_COUNTS
    )
    # hold-outs of the training source: pairwise disjoint, together exactly the 60k-equivalent
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert set(train.image_ids).isdisjoint(gate.image_ids)
    assert set(val.image_ids).isdisjoint(gate.image_ids)
    all_ids = set(train.image_ids) | set(val.image_ids) | set(gate.image_ids)
    assert all_ids == {f"train-{i:05d}" for i in range(n_train)}
    # recorded in the manifest with its hash, like every split
    assert manifest["splits"]["gate"]["label_counts"] == gate_quotas.tolist()
    assert manifest["config"]["settings"]["gate_size"] == SYNTHETIC_GATE_SIZE


def test_val_does_not_depend_on_the_gate_size(
    spark_session, preprocessed, base_settings, tmp_path
) -> None:
    """The gate takes the ranks after val's, so resizing it never reshuffles val."""
    out1, _ = preprocessed
    settings = replace(base_settings, processed_dir=str(tmp_path / "p"), gate_size=40)
    manifest = run_preprocessing(spark_session, settings)
    assert manifest["splits"]["gate"]["rows"] == 40
    np.testing.assert_array_equal(
        load_split(tmp_path / "p" / "val").image_ids, load_split(out1 / "val").image_ids
    )
    assert set(load_split(tmp_path / "p" / "gate").image_ids) < set(
        load_split(out1 / "gate").image_ids
    )


def test_hold_outs_that_leave_no_training_images_are_refused(base_settings, tmp_path) -> None:
    n_train = int(SYNTHETIC_TRAIN_COUNTS.sum())
    settings = replace(
        base_settings, processed_dir=str(tmp_path / "p"), val_size=300, gate_size=n_train - 300
    )
    with pytest.raises(ValueError, match=r"data.val_size=300 \+ data.gate_size=300 leave no"):
        run_preprocessing(None, settings)
    assert not (tmp_path / "p").exists()


def test_rows_match_the_raw_images_by_id(preprocessed, base_settings) -> None:
    out, _ = preprocessed
    raw = load_raw_mnist(base_settings.raw_dir, verify_checksums=False)
    for split in SPLITS:
        arrays = load_split(out / split)
        source = "test" if split == "test" else "train"
        index = np.array([int(i.split("-")[1]) for i in arrays.image_ids])
        assert all(i.startswith(f"{source}-") for i in arrays.image_ids)
        np.testing.assert_array_equal(arrays.images, raw[source].images[index])
        np.testing.assert_array_equal(arrays.labels, raw[source].labels[index])


def test_parquet_schema_and_file_count(preprocessed, base_settings) -> None:
    out, _ = preprocessed
    for split in SPLITS:
        files = sorted((out / split).iterdir())
        assert files and len(files) <= base_settings.partitions
        assert all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files)
        for file in files:
            parquet = pq.ParquetFile(file)
            schema = parquet.schema_arrow
            assert schema.names == ["image_id", "label", "pixels"]
            assert schema.field("image_id").type == pa.string()
            assert schema.field("label").type == pa.int8()
            assert schema.field("pixels").type == pa.binary()
            lengths = pc_binary_lengths(parquet.read().column("pixels"))
            assert set(lengths) == {784}
            spark_schema = json.loads(
                parquet.metadata.metadata[b"org.apache.spark.sql.parquet.row.metadata"]
            )
            pixel_meta = next(f for f in spark_schema["fields"] if f["name"] == "pixels")[
                "metadata"
            ]
            assert pixel_meta["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["baseline.json", "manifest.json", *SPLITS]
    )


def pc_binary_lengths(column: pa.ChunkedArray) -> list[int]:
    import pyarrow.compute as pc

    return pc.binary_length(column).to_pylist()


def test_pixels_are_raw_uint8_not_normalised(preprocessed) -> None:
    out, _ = preprocessed
    images = load_split(out / "train").images
    assert images.dtype == np.uint8 and images.max() > 200 and images.min() == 0


def test_manifest_hashes_match_the_data(preprocessed) -> None:
    out, manifest = preprocessed
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for split in SPLITS:
        assert manifest["splits"][split]["content_hash"] == split_content_hash(
            load_split(out / split)
        )
    assert manifest["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert len(manifest["dataset_hash"]) == 64
    import hashlib

    assert (
        manifest["baseline_hash"]
        == hashlib.sha256((out / "baseline.json").read_bytes()).hexdigest()
    )


# --- baseline ----------------------------------------------------------------------------


def test_baseline_structure_and_statistics(preprocessed) -> None:
    out, manifest = preprocessed
    baseline = json.loads((out / "baseline.json").read_text())
    train = load_split(out / "train")
    n = len(train)
    assert baseline["schema_version"] == 2
    assert baseline["source"] == {
        "split": "train",
        "n_images": n,
        "content_hash": manifest["splits"]["train"]["content_hash"],
    }
    counts = np.bincount(train.labels, minlength=10)
    assert baseline["labels"]["counts"] == counts.tolist()
    np.testing.assert_allclose(baseline["labels"]["fractions"], counts / n)
    assert baseline["pixel_histogram"]["bin_edges"] == PIXEL_BIN_EDGES.tolist()
    np.testing.assert_allclose(
        baseline["pixel_histogram"]["fractions"], pixel_histogram(train.images)
    )
    assert sum(baseline["pixel_histogram"]["fractions"]) == pytest.approx(1.0)

    features = image_features(train.images)
    assert sorted(baseline["features"]) == sorted(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        stats, values = baseline["features"][name], features[name].astype(np.float64)
        assert set(stats) == {"mean", "std", "min", "max", "quantiles", "reference_sample"}
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std())
        assert (stats["min"], stats["max"]) == (
            pytest.approx(values.min()),
            pytest.approx(values.max()),
        )
        assert list(stats["quantiles"]) == list(QUANTILES)
        quantiles = list(stats["quantiles"].values())
        assert quantiles == sorted(quantiles)
        assert quantiles[3] == pytest.approx(np.median(values))
        sample = np.array(stats["reference_sample"])
        assert len(sample) == min(5000, n)  # the synthetic split is smaller than the cap
        assert np.all(np.isin(sample, values))  # full precision: the very feature values


# --- determinism -------------------------------------------------------------------------


def test_two_runs_give_identical_hashes_and_rows(
    spark_session, preprocessed, base_settings, tmp_path
) -> None:
    out1, manifest1 = preprocessed
    manifest2 = run_preprocessing(
        spark_session, replace(base_settings, processed_dir=str(tmp_path / "p"))
    )
    assert manifest2["dataset_hash"] == manifest1["dataset_hash"]
    assert manifest2["splits"] == manifest1["splits"]
    assert (tmp_path / "p" / "baseline.json").read_bytes() == (out1 / "baseline.json").read_bytes()
    np.testing.assert_array_equal(
        load_split(tmp_path / "p" / "val").image_ids, load_split(out1 / "val").image_ids
    )


def test_another_seed_picks_another_stratified_val_set(
    spark_session, preprocessed, base_settings, tmp_path
) -> None:
    out1, manifest1 = preprocessed
    settings = replace(base_settings, processed_dir=str(tmp_path / "p"), split_seed=7)
    manifest2 = run_preprocessing(spark_session, settings)
    val1, val2 = load_split(out1 / "val"), load_split(tmp_path / "p" / "val")
    assert set(val1.image_ids) != set(val2.image_ids)
    np.testing.assert_array_equal(
        np.bincount(val1.labels, minlength=10), np.bincount(val2.labels, minlength=10)
    )
    assert manifest2["dataset_hash"] != manifest1["dataset_hash"]
    assert (
        manifest2["splits"]["test"]["content_hash"] == manifest1["splits"]["test"]["content_hash"]
    )


# --- atomic output -----------------------------------------------------------------------


@pytest.fixture
def previous_output(preprocessed, tmp_path) -> Path:
    """A copy of a finished run that a failing run must leave untouched."""
    import shutil

    target = tmp_path / "processed"
    shutil.copytree(preprocessed[0], target)
    return target


def test_failure_midway_keeps_previous_output(
    spark_session, base_settings, previous_output, monkeypatch
) -> None:
    """Spark has written every split into staging when the baseline step blows up."""
    before = tree_snapshot(previous_output)
    written = []

    def failing_baseline(*args, **kwargs):
        staging = next(previous_output.parent.glob(".processed.tmp-*"))
        written.extend(sorted(p.name for p in staging.iterdir()))
        raise RuntimeError("injected failure after the Spark write")

    monkeypatch.setattr(job, "spark_baseline", failing_baseline)
    settings = replace(base_settings, processed_dir=str(previous_output), split_seed=3)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_preprocessing(spark_session, settings)
    assert written == sorted(SPLITS)  # the failure really came midway
    assert tree_snapshot(previous_output) == before
    assert sorted(p.name for p in previous_output.parent.iterdir()) == [
        ".processed.lock",
        "processed",
    ]


def test_failure_inside_spark_keeps_previous_output(
    spark_session, base_settings, previous_output, monkeypatch
) -> None:
    """A Spark task dies mid-write on one bad row: no partial Parquet may reach the target."""
    from pyspark.sql import functions as F

    real_assign = job.assign_splits

    def poisoned_assign(frame, quotas, seed, gate_quotas=None):
        bad_row = F.col("image_id") == "train-00500"
        split = F.when(bad_row, F.raise_error(F.lit("injected task failure"))).otherwise("split")
        return real_assign(frame, quotas, seed, gate_quotas).withColumn("split", split)

    monkeypatch.setattr(job, "assign_splits", poisoned_assign)
    before = tree_snapshot(previous_output)
    settings = replace(base_settings, processed_dir=str(previous_output), split_seed=5)
    with pytest.raises(Exception, match="injected task failure"):
        run_preprocessing(spark_session, settings)
    assert tree_snapshot(previous_output) == before
    assert sorted(p.name for p in previous_output.parent.iterdir()) == [
        ".processed.lock",
        "processed",
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("partitions", 0, "spark.partitions=0"),
        ("val_size", 0, "data.val_size=0"),
        ("gate_size", 0, "data.gate_size=0"),
    ],
)
def test_bad_settings_are_named(base_settings, field: str, value: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(base_settings, **{field: value})


def test_bad_raw_file_fails_before_touching_output(
    base_settings, previous_output, tmp_path
) -> None:
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(base_settings.raw_dir, raw)
    corrupt = raw / "train-images-idx3-ubyte.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    before = tree_snapshot(previous_output)
    settings = replace(base_settings, raw_dir=str(raw), processed_dir=str(previous_output))
    with pytest.raises(RawDataError, match="train-images-idx3-ubyte.gz"):
        run_preprocessing(None, settings)  # fails while reading raw data, before Spark is used
    assert tree_snapshot(previous_output) == before


def test_interrupted_swap_is_recovered(tmp_path) -> None:
    """A run killed between its two renames left only the backup: the next run restores it."""
    target = tmp_path / "processed"
    backup = tmp_path / ".processed.old-abc"
    backup.mkdir()
    (backup / "manifest.json").write_text("{}")
    (tmp_path / ".processed.tmp-dead").mkdir()
    with pytest.raises(RuntimeError), atomic_directory(target):
        assert (target / "manifest.json").read_text() == "{}"
        raise RuntimeError("stop")
    assert (target / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".processed.lock", "processed"]
