"""Fixtures for the data tests: small synthetic raw IDX files and a preprocessing run on them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from data_raw_fixtures import SYNTHETIC_GATE_SIZE, SYNTHETIC_VAL_SIZE, synthetic_raw

from mnist_mlops.data.spark_preprocess import PreprocessSettings, run_preprocessing


@pytest.fixture(scope="session")
def synthetic_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def base_settings(synthetic_raw_dir: Path) -> PreprocessSettings:
    """Settings for the synthetic files (they cannot match the real MD5s, so no verification)."""
    return PreprocessSettings(
        raw_dir=str(synthetic_raw_dir),
        processed_dir="unset",
        download=False,
        verify_checksums=False,
        val_size=SYNTHETIC_VAL_SIZE,
        gate_size=SYNTHETIC_GATE_SIZE,
        split_seed=42,
        partitions=2,
    )


@pytest.fixture(scope="session")
def preprocessed(spark_session, base_settings, tmp_path_factory) -> tuple[Path, dict]:
    """One preprocessing run shared by the read-only checks: (processed_dir, manifest)."""
    out = tmp_path_factory.mktemp("run1") / "processed"
    manifest = run_preprocessing(spark_session, replace(base_settings, processed_dir=str(out)))
    return out, manifest
