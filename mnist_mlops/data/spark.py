"""SparkSession construction from the ``spark`` config group (``conf/spark/*.yaml``).

The config is instantiated with ``hydra.utils.instantiate(cfg.spark)``; a new deployment
(local, standalone cluster, YARN, ...) is a new YAML file with its own master URL and
executor settings, never a new branch here.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_mlops.utils.atomic import atomic_path
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
    class_data_sharing: bool = False,
    extra_conf: Mapping[str, Any] | None = None,
) -> SparkSession:
    """A session for ``master``; ``partitions`` also sizes shuffles and default parallelism.

    The preprocessing job reads ``partitions`` from the same config node to cap the number
    of Parquet files per split, so one knob sizes both. ``class_data_sharing`` starts the
    driver JVM from the archive built by :func:`build_class_data_archive` when there is one.
    """
    set_spark_env_defaults()
    java = require_java()
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

    archive = class_data_archive(java)
    if class_data_sharing and archive.is_file():
        options = conf.get("spark.driver.extraJavaOptions", "")
        conf["spark.driver.extraJavaOptions"] = f"{options} {_cds_use_options(archive)}".strip()

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.info("starting Spark (master=%s, partitions=%d)", master, partitions)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(log_level)
    return session


# --- JVM class-data sharing ------------------------------------------------------------------
# A cold JVM spends a large share of a short Spark job loading and verifying ~10k classes. A
# dynamic AppCDS archive (JDK 13+) of the classes this job uses cuts JVM start and first-job
# CPU time by about a third; it is built once (``make install`` runs the builder) and a
# missing, stale or corrupt archive only means the JVM starts the slow way.


def class_data_archive(java: str) -> Path:
    """Archive path, keyed by the Spark version and the Java runtime it was dumped with."""
    import pyspark

    runtime = hashlib.sha256(os.path.realpath(java).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mnist-mlops" / f"spark-{pyspark.__version__}-{runtime}.jsa"


def _cds_use_options(archive: Path) -> str:
    # VerifySharedSpaces checks the archive's CRC, so a damaged file is refused, not mapped.
    return f"-XX:SharedArchiveFile={archive} -XX:+VerifySharedSpaces -Xshare:auto -Xlog:cds=off"


def build_class_data_archive() -> Path:
    """Dump the archive from a real (tiny, synthetic) preprocessing run in a child process."""
    archive = class_data_archive(require_java())
    with atomic_path(archive) as staging:
        subprocess.run(
            [sys.executable, "-m", "mnist_mlops.data.spark", "--dump-to", str(staging)],
            check=True,
            timeout=600,
        )
        if not staging.is_file() or staging.stat().st_size == 0:
            raise RuntimeError(f"the JVM wrote no class-data archive to {staging}")
    log.info("class-data archive ready: %s (%.0f MB)", archive, archive.stat().st_size / 1e6)
    return archive


def _dump_class_data_archive(target: Path) -> None:
    """Run the job's code paths on synthetic data; the JVM writes the archive as it exits."""
    from mnist_mlops.data.idx import write_synthetic_raw
    from mnist_mlops.data.spark_preprocess import PreprocessSettings, run_preprocessing
    from mnist_mlops.data.synthetic import synthetic_digits

    options = f"-XX:ArchiveClassesAtExit={target} -XX:+VerifySharedSpaces -Xlog:cds=off"
    spark = build_spark_session(
        master="local[2]",
        app_name="mnist-mlops-cds",
        extra_conf={"spark.ui.enabled": False, "spark.driver.extraJavaOptions": options},
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = write_synthetic_raw(
            Path(tmp) / "raw", [synthetic_digits(300, seed=0), synthetic_digits(60, seed=1)]
        )
        settings = PreprocessSettings(
            raw_dir=str(raw_dir),
            processed_dir=str(Path(tmp) / "processed"),
            verify_checksums=False,
            val_size=50,
            gate_size=50,
        )
        run_preprocessing(spark, settings)
    gateway_process = spark.sparkContext._gateway.proc  # the JVM (spark-submit execs java)
    spark.stop()
    gateway_process.stdin.close()  # the JVM exits on EOF and dumps the archive on the way out
    gateway_process.wait(timeout=300)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the Spark JVM class-data archive.")
    parser.add_argument("--dump-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.dump_to:
        _dump_class_data_archive(args.dump_to)
    else:
        print(build_class_data_archive())
