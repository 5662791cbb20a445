"""Fixtures shared by every test area. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mnist_mlops.data.splits import arrays_to_table
from mnist_mlops.data.synthetic import synthetic_digits

REPO_ROOT = Path(__file__).resolve().parent.parent
# gate last, so the other splits keep the seeds (100 + position) they always had
SYNTHETIC_SPLIT_SIZES = {"train": 600, "val": 200, "test": 200, "gate": 200}


def real_mnist_raw_dir() -> Path | None:
    """The real MNIST IDX files when this machine has them ($MNIST_RAW_DIR), else None."""
    raw = os.environ.get("MNIST_RAW_DIR")
    return Path(raw) if raw and (Path(raw) / "train-images-idx3-ubyte.gz").is_file() else None


@pytest.fixture(scope="session")
def synthetic_processed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Parquet splits in the preprocessing layout (no Spark needed to build them)."""
    root = tmp_path_factory.mktemp("processed")
    for offset, (split, size) in enumerate(SYNTHETIC_SPLIT_SIZES.items()):
        images, labels = synthetic_digits(size, seed=100 + offset)
        ids = [f"{split}-{i:05d}" for i in range(size)]
        (root / split).mkdir()
        pq.write_table(arrays_to_table(images, labels, ids), root / split / "part-00000.parquet")
    return root


@pytest.fixture(scope="session")
def real_raw_dir() -> Path:
    """The real MNIST IDX files for slow tests: fails in CI (CI=true) when absent, else skips."""
    raw_dir = real_mnist_raw_dir()
    if raw_dir is None:
        if os.environ.get("CI"):
            pytest.fail("MNIST_RAW_DIR must point at the real MNIST IDX files in CI")
        pytest.skip("set MNIST_RAW_DIR to the real MNIST IDX files to run this test")
    return raw_dir


@pytest.fixture(scope="session")
def spark_session():
    """ONE real SparkSession for the whole test run, built from the shipped conf/spark/local.yaml
    (local[2], 2 shuffle partitions, no UI): the JVM start costs seconds, so never per test."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    spark_cfg = OmegaConf.load(REPO_ROOT / "conf" / "spark" / "local.yaml")
    spark = instantiate(
        spark_cfg, master="local[2]", app_name="mnist-mlops-tests", partitions=2, driver_memory="1g"
    )
    yield spark
    spark.stop()


@pytest.fixture(scope="session")
def standin_store(tmp_path_factory: pytest.TempPathFactory, synthetic_processed_dir: Path):
    """An MLflow store with a good and a worse stand-in training run (tests/model_standins.py)."""
    from model_standins import build_standin_store  # lazy: only registry/serving tests pay for it

    return build_standin_store(tmp_path_factory.mktemp("template-store"), synthetic_processed_dir)
