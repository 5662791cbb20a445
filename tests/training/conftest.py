"""Training test config: compose ``train.yaml`` once per session, shrink it per test.

As in lightning-hydra-template: the compose API builds the real config; each test gets a copy
that trains 1 epoch on the tiny synthetic splits on the CPU, with its own output directory and
its own MLflow SQLite store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_mlops.config import CONFIG_DIR

_MIGRATED_DB: dict[str, Path] = {}


@pytest.fixture(scope="session")
def cfg_train_global(synthetic_processed_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=["callbacks=none"])
    with open_dict(cfg):
        cfg.data.processed_dir = str(synthetic_processed_dir)
        cfg.data.batch_size = 64
        cfg.data.eval_batch_size = 100
        cfg.trainer.epochs = 1
        cfg.trainer.device = "cpu"
        cfg.trainer.limit_train_batches = 4
        cfg.backend.num_threads = 1
    return cfg


@pytest.fixture
def cfg_train(cfg_train_global: DictConfig, tmp_path: Path) -> DictConfig:
    """A private copy: outputs and MLflow store under this test's tmp dir."""
    cfg = cfg_train_global.copy()
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "outputs")
        cfg.paths.output_dir = str(tmp_path / "outputs" / "run")
        cfg.paths.mlflow_dir = str(tmp_path / "mlruns")
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        cfg.registry.tracking_uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    HydraConfig().set_config(cfg)
    yield cfg
    GlobalHydra.instance().clear()


@pytest.fixture
def mlflow_db(cfg_train: DictConfig, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Copy one migrated SQLite store into the test's MLflow dir instead of migrating per test."""
    if "db" not in _MIGRATED_DB:
        import mlflow

        source = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{source}").search_experiments()
        _MIGRATED_DB["db"] = source
    target = Path(cfg_train.paths.mlflow_dir) / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_MIGRATED_DB["db"], target)
    return OmegaConf.select(cfg_train, "registry.tracking_uri")
