"""End to end on the real 70k MNIST files (slow; CI sets MNIST_RAW_DIR and must not skip)."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_mlops.data.spark_preprocess import PreprocessSettings, run_preprocessing
from mnist_mlops.data.splits import load_split

TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_real_mnist_preprocessing(spark_session, real_raw_dir, tmp_path) -> None:
    settings = PreprocessSettings(
        raw_dir=str(real_raw_dir), processed_dir=str(tmp_path / "processed")
    )
    manifest = run_preprocessing(spark_session, settings)  # verifies torchvision's MD5s too

    splits = manifest["splits"]
    assert {name: info["rows"] for name, info in splits.items()} == {
        "train": 50_000,
        "val": 5_000,
        "gate": 5_000,
        "test": 10_000,
    }
    train_val = np.sum([splits[k]["label_counts"] for k in ("train", "val", "gate")], axis=0)
    assert train_val.tolist() == TRAIN_HISTOGRAM
    assert splits["test"]["label_counts"] == TEST_HISTOGRAM
    for name in ("train", "val", "gate", "test"):
        assert splits[name]["files"] <= settings.partitions
        arrays = load_split(tmp_path / "processed" / name)
        assert np.bincount(arrays.labels, minlength=10).tolist() == splits[name]["label_counts"]
    # the hold-out keeps every class's share to within one image
    expected_val = np.array(TRAIN_HISTOGRAM) * 5_000 / 60_000
    assert np.all(np.abs(np.array(splits["val"]["label_counts"]) - expected_val) < 1)
    assert np.all(np.abs(np.array(splits["gate"]["label_counts"]) - expected_val) < 1)
