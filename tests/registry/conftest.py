"""Registry fixtures: one template MLflow store with a good and a worse stand-in run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR


@pytest.fixture
def store(standin_store, tmp_path) -> Path:
    """A private copy of the template store for one test."""
    return standin_store.copy_to(tmp_path / "store")


def register_config(store: Path, processed_dir: Path, reports: Path, *extra: str) -> DictConfig:
    """``conf/register.yaml`` composed against a test store and the synthetic splits."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="register",
            overrides=[
                f"registry.tracking_uri=sqlite:///{store}/mlflow.db",
                f"registry.artifact_location={store}/artifacts",
                f"data.processed_dir={processed_dir}",
                f"paths.reports_dir={reports}",
                *extra,
            ],
        )
