"""Helpers for the registry tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mnist_mlops.config import CONFIG_DIR


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
