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
from mnist_mlops.exit_codes import bad_input_exits

if TYPE_CHECKING:  # the Spark job (numpy, pandas, pyarrow) loads after argv is read
    from pyspark.sql import SparkSession

    from mnist_mlops.data.spark_preprocess import PreprocessSettings

log = logging.getLogger(__name__)


def _typed(cfg: DictConfig, key: str, kind: type) -> Any:
    """``cfg[key]`` as ``kind``, or an error naming the key and the bad value."""
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is not bool and not isinstance(value, bool):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{key}={value!r} is not a valid {kind.__name__}")


def settings_from_config(cfg: DictConfig) -> PreprocessSettings:
    """The keys the job reads (and that ``dvc.yaml`` lists as its params)."""
    from mnist_mlops.data.spark_preprocess import PreprocessSettings

    return PreprocessSettings(
        raw_dir=_typed(cfg, "data.raw_dir", str),
        processed_dir=_typed(cfg, "data.processed_dir", str),
        download=_typed(cfg, "data.download", bool),
        verify_checksums=_typed(cfg, "data.verify_checksums", bool),
        val_size=_typed(cfg, "data.val_size", int),
        gate_size=_typed(cfg, "data.gate_size", int),
        split_seed=_typed(cfg, "data.split_seed", int),
        partitions=_typed(cfg, "spark.partitions", int),
        mean=_typed(cfg, "data.mean", float),
        std=_typed(cfg, "data.std", float),
    )


def preprocess(cfg: DictConfig, spark: SparkSession | None = None) -> dict[str, Any]:
    """Run preprocessing for a composed config; returns the manifest.

    Pass ``spark`` to reuse a live session (tests, retraining); otherwise one is built from
    ``cfg.spark`` and stopped afterwards.
    """
    from mnist_mlops.data.spark_preprocess import read_raw, run_preprocessing, timed_step

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
    from mnist_mlops.data.idx import RawDataError

    with bad_input_exits("preprocess", extra=(RawDataError,)):  # a bad value or raw file
        manifest = preprocess(cfg)
    log.info("dataset_hash=%s", manifest["dataset_hash"])


if __name__ == "__main__":
    main()
