"""Fixtures for the distributed-backend tests: a small REAL MNIST subset."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mnist_mlops.data.splits import arrays_to_table

# first rows of the real training file: train, then val; first rows of the real test file: test
REAL_SUBSET_SIZES = {"train": 4000, "val": 1000, "test": 1000}


@pytest.fixture(scope="session")
def real_subset_dir(real_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parquet splits (preprocessing layout) from the first rows of the real IDX files."""
    from mnist_mlops.data.idx import load_raw_mnist

    raw = load_raw_mnist(real_raw_dir, download=False)
    n_train, n_val, n_test = (REAL_SUBSET_SIZES[s] for s in ("train", "val", "test"))
    train_images, train_labels = raw["train"].images, raw["train"].labels
    parts = {
        "train": (train_images[:n_train], train_labels[:n_train]),
        "val": (train_images[n_train : n_train + n_val], train_labels[n_train : n_train + n_val]),
        "test": (raw["test"].images[:n_test], raw["test"].labels[:n_test]),
    }
    root = tmp_path_factory.mktemp("real-subset")
    for split, (images, labels) in parts.items():
        (root / split).mkdir()
        ids = [f"{split}-{i:05d}" for i in range(len(labels))]
        pq.write_table(arrays_to_table(images, labels, ids), root / split / "part-00000.parquet")
    return root
