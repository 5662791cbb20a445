"""The generated dataset (data=mnist8m): Spark executors write exactly what the numpy generator
makes, in the preprocessing layout, with the real val/gate/test next to it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.deform import DeformSettings, generate_range
from mnist_mlops.data.generate import Mnist8mSource
from mnist_mlops.data.manifest import split_content_hash, streamed_split_summary
from mnist_mlops.data.splits import PARQUET_SCHEMA, load_split
from mnist_mlops.generate import generate


@pytest.fixture(scope="module")
def generated(spark_session, preprocessed, tmp_path_factory) -> tuple[Path, dict, Path]:
    """1,234 images in chunks of 100 over 3 tasks (ragged last chunk, several files)."""
    source_dir, _ = preprocessed
    out = tmp_path_factory.mktemp("gen") / "mnist8m"
    source = Mnist8mSource(
        source_dir=str(source_dir), size=1234, seed=5, chunk_size=100, row_group_rows=250
    )
    manifest = source.run(spark_session, str(out), partitions=3)
    return out, manifest, source_dir


def test_spark_output_equals_the_numpy_generator(generated) -> None:
    out, manifest, source_dir = generated
    real = load_split(source_dir / "train")
    train = load_split(out / "train")
    images, labels = generate_range(real.images, real.labels, 5, 0, 1234, DeformSettings())
    assert len(train) == 1234 == manifest["splits"]["train"]["rows"]
    assert train.images.tobytes() == images.tobytes()
    np.testing.assert_array_equal(train.labels, labels)
    assert train.image_ids[0] == "mnist8m-0000000000" and train.image_ids[-1].endswith("1233")


def test_layout_schema_and_row_groups(generated) -> None:
    out, manifest, _ = generated
    files = sorted((out / "train").glob("*.parquet"))
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    for path in files:
        schema = pq.read_schema(path)
        assert schema.names == PARQUET_SCHEMA.names
        assert str(schema.field("label").type) == "int8"
    # rows are in index order across the sorted files, and row groups stay small
    first_ids = [pq.read_table(f, columns=["image_id"])["image_id"][0].as_py() for f in files]
    assert first_ids == sorted(first_ids)
    # row groups near row_group_rows=250 (parquet-mr checks its size budget every ~100 rows):
    # the streaming loader's unit of reading
    for path in files:
        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert len(sizes) >= 2 and max(sizes) <= 2 * 250, sizes
    assert manifest["splits"]["train"]["files"] == 3


def test_evaluation_splits_and_baseline_are_the_real_ones(generated) -> None:
    out, manifest, source_dir = generated
    real_manifest = json.loads((source_dir / "manifest.json").read_text())
    for split in ("val", "gate", "test"):
        assert (
            manifest["splits"][split]["content_hash"]
            == (real_manifest["splits"][split]["content_hash"])
        )
    assert (out / "baseline.json").read_bytes() == (source_dir / "baseline.json").read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_streamed_hash_equals_the_loaded_hash(generated) -> None:
    out, manifest, _ = generated
    train = load_split(out / "train")
    rows, digest, counts = streamed_split_summary(out / "train")
    assert rows == len(train)
    assert digest == split_content_hash(train) == manifest["splits"]["train"]["content_hash"]
    assert counts == np.bincount(train.labels, minlength=10).tolist()


def test_entrypoint_config_composes_and_runs(spark_session, preprocessed, tmp_path) -> None:
    source_dir, _ = preprocessed
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="generate",
            overrides=[
                f"data.generator.source_dir={source_dir}",
                f"data.processed_dir={tmp_path / 'gen'}",
                "data.generator.size=150",
                "data.generator.chunk_size=64",
            ],
        )
    # train composes with the same data group: the loader keys are mnist.yaml's
    assert OmegaConf.select(cfg, "data.batch_size") == 128
    manifest = generate(cfg, spark=spark_session)
    assert manifest["splits"]["train"]["rows"] == 150
    assert manifest["config"]["generator"]["size"] == 150


def test_bad_generator_settings_are_named(preprocessed, tmp_path) -> None:
    source_dir, _ = preprocessed
    with pytest.raises(ValueError, match="size=0"):
        Mnist8mSource(source_dir=str(source_dir), size=0)
    with pytest.raises(ValueError, match="source_dir"):
        Mnist8mSource(source_dir=str(tmp_path / "nowhere"))


def test_entrypoint_names_a_bad_size(preprocessed) -> None:
    source_dir, _ = preprocessed
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="generate",
            overrides=[f"data.generator.source_dir={source_dir}", "data.generator.size=-3"],
        )
    with pytest.raises(ValueError, match=r"data.generator.size=-3"):
        generate(cfg, spark=object())  # fails before Spark is touched
