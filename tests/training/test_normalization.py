"""Normalisation has one home, the data manifest: training batches and the logged model read it.

The bug this pins: the logged model used to be built with the constant defaults while the
batches used ``data.mean``/``data.std``, so overriding them trained one normalisation and
served another.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from omegaconf import DictConfig, open_dict

from mnist_mlops.data.constants import MNIST_MEAN, MNIST_STD
from mnist_mlops.data.manifest import build_manifest, data_normalization, write_json
from mnist_mlops.models.inference import InferenceModel
from mnist_mlops.train import train
from mnist_mlops.training.callbacks import Callback

MEAN, STD = 0.5, 0.25  # far from MNIST's 0.1307 / 0.3081


def _with_manifest(source: Path, target: Path, mean: float, std: float) -> Path:
    shutil.copytree(source, target)
    write_json(target / "manifest.json", build_manifest({}, "n/a", {"mean": mean, "std": std}, {}))
    return target


class _KeepModule(Callback):
    """Keeps the trained network and the data module the run used."""

    def on_test_end(self, trainer: Any, module: Any, metrics: dict[str, float]) -> None:
        self.net = copy.deepcopy(module.net).cpu().eval()
        self.datamodule = trainer.datamodule


def test_a_model_trained_under_another_normalisation_serves_with_it(
    cfg_train: DictConfig, mlflow_db: str, synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    processed = _with_manifest(synthetic_processed_dir, tmp_path / "processed", MEAN, STD)
    with open_dict(cfg_train):
        cfg_train.data.processed_dir = str(processed)
        cfg_train.data.mean, cfg_train.data.std = MEAN, STD
    kept = _KeepModule()
    metrics = train(cfg_train, callbacks=[kept])
    assert (kept.datamodule.mean, kept.datamodule.std) == (MEAN, STD)

    mlflow.set_tracking_uri(mlflow_db)
    served = mlflow.pytorch.load_model(metrics["model_uri"], map_location="cpu").eval()
    assert isinstance(served, InferenceModel)
    assert (float(served.mean), float(served.std)) == (MEAN, STD)

    split = kept.datamodule.splits["test"]
    idx = torch.arange(len(split))
    batch, _ = kept.datamodule.make_batch(split, idx, train=False)
    raw = split.images[idx].float().div(255).unsqueeze(1)
    with torch.no_grad():
        in_process = kept.net(batch)
        from_mlflow = served(raw)
        with_constants = InferenceModel(kept.net)(raw)
    torch.testing.assert_close(from_mlflow, in_process, atol=1e-5, rtol=1e-5)
    # what the old code served: the same weights behind MNIST's constants answer differently
    assert (with_constants - in_process).abs().max() > 1e-2


def test_a_config_that_contradicts_the_manifest_is_refused(
    cfg_train: DictConfig, synthetic_processed_dir: Path, tmp_path: Path
) -> None:
    processed = _with_manifest(synthetic_processed_dir, tmp_path / "processed", MEAN, STD)
    with open_dict(cfg_train):
        cfg_train.data.processed_dir = str(processed)
        cfg_train.data.mean = 0.2
    with pytest.raises(ValueError, match=r"data.mean=0.2 but .*manifest.json records mean=0.5"):
        train(cfg_train)


def test_data_normalization_reads_the_manifest(tmp_path: Path) -> None:
    assert data_normalization(tmp_path) == (MNIST_MEAN, MNIST_STD)  # no manifest
    assert data_normalization(tmp_path, 0.3, 0.4) == (0.3, 0.4)
    write_json(tmp_path / "manifest.json", {"normalization": {"mean": MEAN, "std": STD}})
    assert data_normalization(tmp_path) == (MEAN, STD)
    assert data_normalization(tmp_path, MEAN, STD) == (MEAN, STD)
    with pytest.raises(ValueError, match="data.std=0.3081 but"):
        data_normalization(tmp_path, MEAN, MNIST_STD)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the normalisation from"):
        data_normalization(tmp_path)
    write_json(tmp_path / "manifest.json", {"normalization": {"mean": MEAN}})
    with pytest.raises(ValueError, match="no valid normalization"):
        data_normalization(tmp_path)
