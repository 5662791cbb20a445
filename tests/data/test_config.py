"""The preprocess config tree: defaults, the spark groups, and clear errors for bad overrides."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import InterpolationResolutionError

from mnist_mlops.config import CONFIG_DIR
from mnist_mlops.preprocess import settings_from_config


def compose_preprocess(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="preprocess", overrides=list(overrides))


def test_defaults_read_by_the_job(monkeypatch) -> None:
    monkeypatch.delenv("MNIST_RAW_DIR", raising=False)
    cfg = compose_preprocess()
    settings = settings_from_config(cfg)
    assert settings.raw_dir.endswith("data/raw")  # torchvision downloads there when missing
    assert settings.processed_dir.endswith("data/processed")
    assert (settings.val_size, settings.split_seed, settings.partitions) == (5000, 42, 2)
    assert (settings.mean, settings.std) == (0.1307, 0.3081)
    assert cfg.spark.master == "local[*]"


def test_raw_dir_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MNIST_RAW_DIR", "/somewhere/raw")
    assert settings_from_config(compose_preprocess()).raw_dir == "/somewhere/raw"


def test_cluster_group_needs_a_master_url(monkeypatch) -> None:
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    cfg = compose_preprocess("spark=cluster")
    with pytest.raises(InterpolationResolutionError, match="SPARK_MASTER"):
        _ = cfg.spark.master
    monkeypatch.setenv("SPARK_MASTER", "yarn")
    assert compose_preprocess("spark=cluster").spark.master == "yarn"
    cfg = compose_preprocess("spark=cluster", "spark.master=spark://head:7077")
    assert cfg.spark.master == "spark://head:7077"
    assert cfg.spark.num_executors == 2 and cfg.spark.executor_memory == "4g"
    assert cfg.spark._target_ == "mnist_mlops.data.spark.build_spark_session"


def test_bad_override_is_a_clear_error() -> None:
    with pytest.raises(ConfigCompositionException, match="spark"):
        compose_preprocess("spark=nonexistent")


def test_session_uses_the_group_settings(spark_session) -> None:
    conf = spark_session.conf
    assert conf.get("spark.sql.shuffle.partitions") == "2"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark_session.sparkContext.master == "local[2]"


def test_damaged_class_data_archive_only_costs_speed(tmp_path) -> None:
    """The JVM options used with the CDS archive must refuse a bad file, not crash on it."""
    import os
    import subprocess

    from mnist_mlops.data.spark import _cds_use_options
    from mnist_mlops.utils.runtime import require_java

    damaged = tmp_path / "spark.jsa"
    damaged.write_bytes(os.urandom(1 << 16))
    java = require_java()
    proc = subprocess.run(
        [java, *_cds_use_options(damaged).split(), "-version"], capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.val_size=many", "data.val_size='many' is not a valid int"),
        ("data.download=maybe", "data.download='maybe' is not a valid bool"),
        ("spark.partitions=0", "spark.partitions=0 must be at least 1"),
        ("data.std=-1", "data.std=-1.0 must be positive"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        settings_from_config(compose_preprocess(override))


def test_cli_names_the_missing_raw_file(tmp_path) -> None:
    """The entrypoint fails before starting Spark, with one line naming file and checksum."""
    import os
    import subprocess
    import sys

    from mnist_mlops.data.idx import MNIST_FILES

    env = {**os.environ, "MNIST_RAW_DIR": str(tmp_path / "empty")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_mlops.preprocess",
            "data.download=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"data.processed_dir={tmp_path / 'out'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    name, md5 = MNIST_FILES["train_images"]
    assert f"preprocess: missing MNIST file {tmp_path / 'empty' / name}" in proc.stderr
    assert md5 in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
