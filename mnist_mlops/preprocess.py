"""Entry point: ``python -m mnist_mlops.preprocess`` (Hydra config ``conf/preprocess.yaml``).

Turns the raw MNIST IDX files into Parquet splits, the drift baseline and the manifest under
``data.processed_dir``. Other stages (e.g. retraining) call :func:`preprocess` in-process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.data.preprocess import (
    PreprocessSettings,
    read_raw,
    run_preprocessing,
    timed_step,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def settings_from_config(cfg: DictConfig) -> PreprocessSettings:
    """The keys the job reads (and that ``dvc.yaml`` lists as its params)."""
    data = cfg.data
    return PreprocessSettings(
        raw_dir=str(data.raw_dir),
        processed_dir=str(data.processed_dir),
        download=bool(data.download),
        verify_checksums=bool(data.get("verify_checksums", True)),
        val_size=int(data.val_size),
        split_seed=int(data.split_seed),
        partitions=int(cfg.spark.partitions),
        mean=float(data.mean),
        std=float(data.std),
    )


def preprocess(cfg: DictConfig, spark: SparkSession | None = None) -> dict[str, Any]:
    """Run preprocessing for a composed config; returns the manifest.

    Pass ``spark`` to reuse a live session (tests, retraining); otherwise one is built from
    ``cfg.spark`` and stopped afterwards.
    """
    settings = settings_from_config(cfg)
    record = {
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "spark": {"master": cfg.spark.master, "partitions": settings.partitions},
    }
    raw = read_raw(settings)
    own_session = spark is None
    if own_session:
        with timed_step("spark_start", f"starting Spark ({cfg.spark.master})"):
            spark = instantiate(cfg.spark)
    try:
        return run_preprocessing(spark, settings, record, raw=raw)
    finally:
        if own_session:
            spark.stop()


@hydra.main(config_path=CONFIG_DIR, config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    manifest = preprocess(cfg)
    log.info("dataset_hash=%s", manifest["dataset_hash"])


if __name__ == "__main__":
    main()
