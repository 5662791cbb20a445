"""Fixtures for the distributed-backend tests: a small REAL MNIST subset."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mnist_mlops.data.splits import arrays_to_table

# first rows of the real training file: train, then val; first rows of the real test file: test
REAL_SUBSET_SIZES = {"train": 4000, "val": 1000, "test": 1000}


@pytest.fixture(scope="session")
def real_raw_dir(request: pytest.FixtureRequest) -> Path:
    """The real MNIST files via tests/conftest.py::real_mnist_raw_dir(); fails in CI, else skips.

    Fetched through the plugin manager because this conftest shadows the module name ``conftest``.
    """
    shared = request.config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))
    raw_dir = shared.real_mnist_raw_dir()
    if raw_dir is None:
        if os.environ.get("CI"):
            pytest.fail("MNIST_RAW_DIR must point at the real MNIST IDX files in CI")
        pytest.skip("set MNIST_RAW_DIR to the real MNIST IDX files to run this test")
    return raw_dir


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
