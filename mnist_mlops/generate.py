"""Entry point: ``python -m mnist_mlops.generate data=mnist8m [data.generator.size=1000000]``.

Writes a generated dataset (``conf/data/mnist8m.yaml``) into ``data.processed_dir`` with Spark
executors; ``python -m mnist_mlops.train data=mnist8m`` then trains on it. The real processed
data (``python -m mnist_mlops.preprocess``) must exist first: it supplies the source digits and
the real val/gate/test splits.
"""

from __future__ import annotations

import logging

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.exit_codes import bad_input_exits

log = logging.getLogger(__name__)


def generate(cfg: DictConfig, spark=None) -> dict:  # noqa: ANN001 - SparkSession, lazily imported
    """Instantiate ``data.generator`` and run it; ``spark`` reuses a live session."""
    if cfg.data.get("generator") is None:
        raise ValueError("data.generator is not set: pick a generated dataset, e.g. data=mnist8m")
    try:
        source = instantiate(cfg.data.generator, _convert_="object")
    except InstantiationException as err:  # Hydra wraps the setting's own error message
        raise ValueError(str(err.__cause__ or err)) from err
    partitions = int(cfg.spark.partitions)
    if partitions < 1:
        raise ValueError(f"spark.partitions={partitions} must be at least 1")
    own_session = spark is None
    if own_session:
        from mnist_mlops.data.spark_preprocess import timed_step  # after argv is read

        with timed_step("spark_start", f"starting Spark ({cfg.spark.master})"):
            spark = instantiate(cfg.spark)
    try:
        return source.run(spark, str(cfg.data.processed_dir), partitions)
    finally:
        if own_session:
            spark.stop()


@hydra.main(config_path=CONFIG_DIR, config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with bad_input_exits("generate"):  # a bad config value: say which, no traceback
        manifest = generate(cfg)
    log.info("dataset_hash=%s", manifest["dataset_hash"])


if __name__ == "__main__":
    main()
