"""SparkSession construction from the ``spark`` config group (``conf/spark/*.yaml``).

The config is instantiated with ``hydra.utils.instantiate(cfg.spark)``; a new deployment
(local, standalone cluster, YARN, ...) is a new YAML file with its own master URL and
executor settings, never a new branch here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mnist_mlops.utils.runtime import require_java, set_spark_env_defaults

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Settings every session gets: Arrow for driver<->JVM transfer, no _SUCCESS marker or .crc
# side files in the output directories (they would only be noise in DVC's hashes).
_BASE_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.sql.parquet.compression.codec": "snappy",
    "spark.ui.showConsoleProgress": "false",
}


def build_spark_session(
    master: str = "local[*]",
    app_name: str = "mnist-mlops",
    driver_memory: str = "2g",
    partitions: int = 2,
    arrow_batch_size: int = 10_000,
    executor_memory: str | None = None,
    executor_cores: int | None = None,
    num_executors: int | None = None,
    log_level: str = "WARN",
    extra_conf: Mapping[str, Any] | None = None,
) -> SparkSession:
    """A session for ``master``; ``partitions`` also sizes shuffles and default parallelism.

    The preprocessing job reads ``partitions`` from the same config node to cap the number
    of Parquet files per split, so one knob sizes both.
    """
    set_spark_env_defaults()
    require_java()
    from pyspark.sql import SparkSession

    conf: dict[str, str] = dict(_BASE_CONF)
    conf.update(
        {
            "spark.driver.memory": driver_memory,
            "spark.sql.shuffle.partitions": str(partitions),
            "spark.default.parallelism": str(partitions),
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch_size),
        }
    )
    if executor_memory:
        conf["spark.executor.memory"] = executor_memory
    if executor_cores:
        conf["spark.executor.cores"] = str(executor_cores)
    if num_executors:
        conf["spark.executor.instances"] = str(num_executors)
    for key, value in (extra_conf or {}).items():
        conf[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.info("starting Spark (master=%s, partitions=%d)", master, partitions)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(log_level)
    return session
